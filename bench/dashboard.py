#!/usr/bin/env python
"""Benchmark: the dashboard page in headless Chromium over a database of simulated pings.

Builds the database through the real pipeline (fleet -> raw logs -> converter
-> importer with its aggregates; skipped with ``--mongo-url``/``-d`` naming one
already built, or reused from ``--keep DIR``), starts ``telemetry dashboard``
on loopback and measures, in a fresh browser context per run (nothing cached):

- time to first chart: from navigation to the evolution view of GC_MS on
  nightly (every date of the newest version) until it is drawn;
- time to a filter change: from choosing an OS until the view is redrawn.

Baseline, measured in the same run and page: the time the browser takes to
fetch the same API answers the filter change needs (``fetch`` with the cache
off, no drawing); the ratio says what the page adds to waiting for the data.
Prints the median of ``--runs`` runs of each.

    .venv/bin/python bench/dashboard.py [--pings 200000] [--runs 5] [--keep DIR]
    .venv/bin/python bench/dashboard.py --mongo-url mongodb://HOST:PORT -d DB   # a database already built
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dashboard.screenshots import launch  # noqa: E402

# ``telemetry`` as a subprocess of this interpreter (the package has no __main__).
TELEMETRY = [sys.executable, "-c", "from telemetry.cli import main; main()"]


def build(work: Path, pings: int, days: int, workers: int) -> tuple[str, object]:
    """Simulated pings through converter and importer into an embedded server kept in ``work``."""
    from aggregations.importing import AggregatesHook
    from converter.process import ConverterConfig, process
    from fleet.channels import write_revisions
    from fleet.population import Fleet
    from fleet.rawlogs import write_raw_logs
    from fleet.scenario import Scenario
    from importer.importer import ImportOptions, import_dataset
    from importer.mongo import start_embedded

    scenario = replace(Scenario(), malformed=None, histograms_per_ping=20, days=days)
    server = start_embedded(work / "mongo", detach=False, pid_file=False)
    if (work / "imported").exists():
        print(f"reusing the database in {work}")
        return server.url, server
    t0 = time.perf_counter()
    shutil.rmtree(work / "raw", ignore_errors=True)
    write_raw_logs(Fleet(pings, seed=1, scenario=scenario).submissions(), work / "raw")
    t1 = time.perf_counter()
    hg = work / "hg"
    write_revisions(hg)
    shutil.rmtree(work / "layout", ignore_errors=True)
    summary = process(ConverterConfig(storage_path=str(work / "layout"), telemetry_schema="",
                                      histogram_cache=str(hg), errors_path=str(work / "errors"),
                                      workers=workers),
                      [work / "raw"], progress=True)
    t2 = time.perf_counter()
    import_dataset(work / "layout", server.url, ImportOptions(
        database="telemetry", drop=True, workers=workers, hook=AggregatesHook(histogram_cache=str(hg))))
    t3 = time.perf_counter()
    (work / "imported").touch()
    print(f"built {summary.records_out} pings: simulate {t1 - t0:.0f} s, convert {t2 - t1:.0f} s, "
          f"import with aggregates {t3 - t2:.0f} s")
    return server.url, server


def start_dashboard(mongo_url: str, database: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([*TELEMETRY, "dashboard", "--port", "0",
                             "--mongo-url", mongo_url, "-d", database],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        m = re.search(r"(http://[\d.]+:\d+)", line)
        if m:
            return proc, m.group(1)
    raise SystemExit("telemetry dashboard did not start")


def measure(url: str, runs: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {"first_chart": [], "first_draw": [], "filter_change": [], "api_fetch": [],
                                   "draw": [], "dates": []}
    with sync_playwright() as p:
        browser = launch(p)
        for _ in range(runs):
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            t0 = time.perf_counter()
            page.goto(f"{url}/?view=evo&metric=GC_MS&channel=nightly&sanitize=0&stats=p50|mean|p95",
                      wait_until="commit", timeout=120_000)
            page.wait_for_function("window.__dashboard && window.__dashboard.done > 0", timeout=120_000)
            out["first_chart"].append(time.perf_counter() - t0)
            assert page.get_attribute("#status", "data-kind") == "ok", page.inner_text("#status")
            out["first_draw"].append(page.evaluate("window.__dashboard.lastDrawMs") / 1000)
            out["dates"].append(page.evaluate("window.__dashboard.drawn.json.series[0].points.length"))
            os_value = page.eval_on_selector("#os", "s => s.options[1].value")
            n = page.evaluate("window.__dashboard.done")
            t0 = time.perf_counter()
            page.select_option("#os", os_value)
            page.wait_for_function(f"window.__dashboard.done > {n}", timeout=120_000)
            out["filter_change"].append(time.perf_counter() - t0)
            out["draw"].append(page.evaluate("window.__dashboard.lastDrawMs") / 1000)
            # Baseline: the same API answers, fetched by the browser without the page.
            out["api_fetch"].append(page.evaluate("""async () => {
                const s = window.__dashboard.state;
                const dates = (await (await fetch(`/aggregates_by/${s.by}/channels/${s.channel}/dates/`,
                                                  {cache: "no-store"})).json())
                    .filter((d) => d.version === s.version).map((d) => d.date);
                const [os, osVersion] = s.os.split(",");
                const q = new URLSearchParams({version: s.version, dates: dates.join(","), metric: s.metric, os});
                if (osVersion) q.set("osVersion", osVersion);
                const t0 = performance.now();
                const r = await fetch(`/aggregates_by/${s.by}/channels/${s.channel}/?${q}`, {cache: "no-store"});
                await r.json();
                return (performance.now() - t0) / 1000;
            }"""))
            context.close()
        browser.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pings", type=int, default=200_000)
    ap.add_argument("--days", type=int, default=100,
                    help="days the simulated pings span (= nightly build dates drawn)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2, help="converter and importer processes")
    ap.add_argument("--keep", help="build the database here and reuse it on the next run")
    ap.add_argument("--mongo-url", help="a database already built (skips building)")
    ap.add_argument("-d", "--database", default="telemetry")
    args = ap.parse_args()
    server = None
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.mongo_url:
            mongo_url = args.mongo_url
        else:
            mongo_url, server = build(work, args.pings, args.days, args.workers)
        proc, url = start_dashboard(mongo_url, args.database)
        try:
            m = measure(url, args.runs)
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in m.items()}
    print(f"median of {args.runs} runs, headless Chromium, fresh context each run:")
    print(f"  time to first chart (evolution, GC_MS, nightly, {med['dates']:.0f} dates): {med['first_chart']:.2f} s"
          f"  (drawing {med['first_draw'] * 1000:.0f} ms, Plotly's first draw included)")
    print(f"  time to a filter change (one OS):                           {med['filter_change']:.3f} s"
          f"  (drawing {med['draw'] * 1000:.0f} ms)")
    print(f"  baseline, the browser fetching the same API answer:         {med['api_fetch']:.3f} s")
    print(f"  filter change / baseline: {med['filter_change'] / med['api_fetch']:.1f}x")


if __name__ == "__main__":
    main()
