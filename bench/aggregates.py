#!/usr/bin/env python
"""Aggregates: the API against raw-document aggregation, import cost, rebuild scaling.

On a simulated fleet (``fleet/``: ``telemetry simulate``, then ``telemetry
process`` with the fleet's Histograms.json revisions), on one embedded
server:

(a) a dashboard query (GC_MS, nightly and its version, every build date;
    then the same with ``os=Windows_NT``) through ``telemetry dashboard``'s
    API, against the same question answered by ``telemetry aggregate
    histogram`` (the ``histogram`` pipeline, by ``appBuildID``) over the raw
    documents: p50/p95 of each, and the ratio of p95s (target >= 100x);
(b) ``python -m importer`` with aggregates against ``--no-aggregates``
    (target <= 1.3x);
(c) ``telemetry aggregates rebuild`` on 1 and 2 local mappers and on Dask
    (2 workers).

    bench/aggregates.py [--pings 200000] [--keep DIR] [--api-runs 20] [--raw-runs 3]
        [--skip-rebuild] [--parts abc] [--workers N]

``--parts`` picks what runs: (a) needs the imports of (b), so ``a`` runs them
too. On the embedded server the raw side of (a) holds the collection in
memory: at 200k pings it was killed for lack of memory (23 GB) before it
answered, so (a) is measured at 50k pings.

``--keep DIR`` keeps the simulated layout there and reuses it on the next run
with the same --pings.  The machine may be shared: read the ratios (measured
in the same run), not the absolute figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pymongo  # noqa: E402
import requests  # noqa: E402

from aggregations.pipelines import build_pipeline  # noqa: E402
from converter.schema import Schema  # noqa: E402
from importer.importer import DEFAULT_SCHEMA  # noqa: E402
from importer.mongo import start_embedded  # noqa: E402

CHANNEL = "nightly"
METRIC = "GC_MS"


def make_layout(pings: int, target: Path) -> tuple[Path, Path]:
    """(layout, histogram cache) of a simulated fleet, made once per --pings in ``target``."""
    from converter.process import ConverterConfig, process
    from fleet.population import Fleet
    from fleet.channels import write_revisions
    from fleet.rawlogs import write_raw_logs

    layout, cache = target / "layout", target / "histograms"
    stamp = target / f".complete-{pings}"
    if stamp.exists():
        return layout, cache
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    write_revisions(cache)
    started = time.monotonic()
    written = write_raw_logs(Fleet(pings, seed=1).submissions(), target / "raw")
    print(f"simulated {written.records} pings in {time.monotonic() - started:.0f}s", flush=True)
    started = time.monotonic()
    config = ConverterConfig.from_dict({"storage_path": str(layout), "histogram_cache": str(cache),
                                        "workers": 2})
    process(config, [target / "raw"], progress=False)
    shutil.rmtree(target / "raw")
    print(f"converted in {time.monotonic() - started:.0f}s", flush=True)
    stamp.touch()
    return layout, cache


def run(args: list[str]) -> float:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{proc.stderr[-2000:]}")
    print("   ", proc.stdout.strip().splitlines()[-1][:300], flush=True)
    return seconds


def percentiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    p95 = times[min(len(times) - 1, max(0, round(0.95 * len(times)) - 1))]
    return statistics.median(times), p95


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pings", type=int, default=200_000)
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the simulated layout here")
    parser.add_argument("--api-runs", type=int, default=20)
    parser.add_argument("--raw-runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="importer worker processes")
    parser.add_argument("--skip-rebuild", action="store_true", help="the same as --parts ab")
    parser.add_argument("--parts", default="abc", help="which of (a), (b), (c) to run [abc]")
    parser.add_argument("--cache-size", default="1G", help="the embedded server's WiredTiger cache")
    opts = parser.parse_args()
    parts = set(opts.parts) - ({"c"} if opts.skip_rebuild else set())
    if not parts or parts - set("abc"):
        parser.error("--parts takes letters among a, b, c")

    tmp = Path(tempfile.mkdtemp(prefix="bench-aggregates-"))
    server = None
    try:
        layout, cache = make_layout(opts.pings, opts.keep or tmp / "data")
        # On disk: an in-memory server runs out of its cache with two imported copies.
        server = start_embedded(tmp / "mongo", detach=False, pid_file=False,
                                cache_size=opts.cache_size)
        url = server.url
        client = pymongo.MongoClient(url)
        common = ["--mongo-url", url, "--histogram-cache", str(cache),
                  "--workers", str(opts.workers)]

        if parts & {"a", "b"}:
            print(f"(b) import of {opts.pings} pings, {opts.workers} worker(s)", flush=True)
            plain = run(["-m", "importer", str(layout), "-d", "plain", "--no-aggregates", *common])
            with_aggs = run(["-m", "importer", str(layout), "-d", "aggs", *common])
            print(f"    --no-aggregates {plain:.1f}s, with aggregates {with_aggs:.1f}s: "
                  f"{with_aggs / plain:.2f}x (target <= 1.3x)", flush=True)
        if "a" in parts:
            api_against_raw(opts, layout, url, client)
        if "c" in parts:
            print("(c) telemetry aggregates rebuild", flush=True)
            rebuild = ["-c", "from telemetry.cli import main; main()", "aggregates", "rebuild",
                       "--data-dir", str(layout), "--mongo-url", url,
                       "--histogram-cache", str(cache)]
            one = run([*rebuild, "-d", "r1", "--num-mappers", "1"])
            two = run([*rebuild, "-d", "r2", "--num-mappers", "2"])
            dask = run([*rebuild, "-d", "rd", "--num-mappers", "2", "--engine", "dask"])
            print(f"    1 mapper {one:.1f}s, 2 mappers {two:.1f}s ({one / two:.2f}x), "
                  f"Dask 2 workers {dask:.1f}s ({one / dask:.2f}x)", flush=True)
        client.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def api_against_raw(opts, layout: Path, url: str, client) -> None:
    """(a): the dashboard query through the API against the raw-document pipeline."""
    print("(a) dashboard query vs telemetry aggregate histogram over the raw documents")
    from dashboard.config import DashboardConfig
    from dashboard.testing import ServiceThread

    with ServiceThread(DashboardConfig(database="aggs"), url) as service:
        dates_by_version: dict[str, list[str]] = {}
        for d in requests.get(f"{service.url}/aggregates_by/build_id/channels/{CHANNEL}/dates/",
                              timeout=60).json():
            dates_by_version.setdefault(d["version"], []).append(d["date"])
        version = max(dates_by_version, key=lambda v: len(dates_by_version[v]))
        dates = dates_by_version[version]
        results = {}
        for label, extra in (("no filter", ""), ("os=Windows_NT", "&os=Windows_NT")):
            query = (f"{service.url}/aggregates_by/build_id/channels/{CHANNEL}/?version="
                     f"{version}&dates={','.join(dates)}&metric={METRIC}{extra}")
            times = []
            for _ in range(opts.api_runs):
                started = time.perf_counter()
                r = requests.get(query, timeout=120)
                times.append(time.perf_counter() - started)
                r.raise_for_status()
            pings = sum(d["count"] for d in r.json()["data"])
            results[label] = (percentiles(times), pings)
    from aggregations.aggregates import major_version
    from converter.layout import find_layout_files

    schema = Schema.load(DEFAULT_SCHEMA)
    ci, vi = schema.names.index("appUpdateChannel"), schema.names.index("appVersion")
    full_versions = sorted({lf.dimensions[vi] for lf in find_layout_files(layout)
                            if lf.dimensions[ci] == CHANNEL
                            and major_version(lf.dimensions[vi]) == version})
    flt = Schema({"version": 1, "dimensions": [
        {"field_name": n, "allowed_values": [CHANNEL] if n == "appUpdateChannel"
         else full_versions if n == "appVersion" else "*"} for n in schema.names]})
    pipeline, _ = build_pipeline("histogram", filter=flt, name=METRIC, by="appBuildID")
    raw = {"no filter": pipeline,
           "os=Windows_NT": [{"$match": {"info.OS": "WINNT"}}, *pipeline]}
    coll = client["plain"]["payloads"]
    for label, pipe in raw.items():
        times = []
        for _ in range(opts.raw_runs):
            started = time.perf_counter()
            rows = list(coll.aggregate(pipe))
            times.append(time.perf_counter() - started)
        raw_pings = sum(r["count"] for r in rows)
        (api50, api95), api_pings = results[label]
        raw50, raw95 = percentiles(times)
        print(f"    {label}: {len(dates)} build dates of {CHANNEL} {version}, "
              f"{api_pings} pings (raw pipeline: {raw_pings} documents)")
        print(f"      API p50 {api50 * 1000:.1f} ms p95 {api95 * 1000:.1f} ms "
              f"({opts.api_runs} runs); "
              f"raw p50 {raw50:.2f} s p95 {raw95:.2f} s ({opts.raw_runs} runs): "
              f"{raw95 / api95:.0f}x at p95 (target >= 100x)", flush=True)



if __name__ == "__main__":
    main()
