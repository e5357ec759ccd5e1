"""The dashboard in a real browser (Debian's Chromium through Playwright) against
``telemetry dashboard`` on loopback, over simulated pings that went through the
real pipeline: fleet -> raw logs -> converter -> importer (which keeps the
aggregates) -> the API.  What the page draws is checked against the API's
answers and an independent computation of the statistics.
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from dataclasses import replace
from urllib.parse import urlencode

import pytest
import requests

from aggregations.importing import AggregatesHook
from converter.process import ConverterConfig, process
from dashboard.screenshots import take, wait_drawn
from fleet.channels import write_revisions
from fleet.population import Fleet
from fleet.rawlogs import write_raw_logs
from fleet.scenario import Scenario
from histogram_reference import ref_mean, ref_percentile
from importer.importer import ImportOptions, import_dataset

PINGS = 700
SCENARIO = replace(Scenario(), malformed=None, histograms_per_ping=12,
                   channels={"release": 0.2, "beta": 0.2, "aurora": 0.1, "nightly": 0.5})
PERCENTILES = (5, 25, 50, 75, 95)

# ``telemetry`` as a subprocess of this interpreter (the package has no __main__).
TELEMETRY = [sys.executable, "-c", "from telemetry.cli import main; main()"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, mongo_url):
    """Simulated pings converted and imported into a database of their own; returns its name and the fleet."""
    base = tmp_path_factory.mktemp("dash")
    fleet = Fleet(PINGS, seed=14, scenario=SCENARIO)
    write_raw_logs(fleet.submissions(), base / "raw")
    hg = base / "hg"
    write_revisions(hg)
    config = ConverterConfig(storage_path=str(base / "layout"), telemetry_schema="", histogram_cache=str(hg),
                             errors_path=str(base / "errors"))
    summary = process(config, [base / "raw"], progress=False)
    assert summary.records_out == PINGS
    database = f"dash_{os.getpid()}"
    import_dataset(base / "layout", mongo_url,
                   ImportOptions(database=database, hook=AggregatesHook(histogram_cache=str(hg))))
    return {"base": base, "database": database, "fleet": fleet}


def start_dashboard(mongo_url: str, database: str, *extra: str) -> tuple[subprocess.Popen, str]:
    """``telemetry dashboard`` on a free loopback port; returns the process and its URL."""
    proc = subprocess.Popen([*TELEMETRY, "dashboard", "--port", "0",
                             "--mongo-url", mongo_url, "-d", database, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        m = re.search(r"(http://[\d.]+:\d+)", line)
        if m:
            return proc, m.group(1)
    proc.wait(10)
    raise AssertionError("telemetry dashboard did not announce its URL:\n" + "".join(seen))


@pytest.fixture(scope="module")
def server(pipeline, mongo_url):
    base = pipeline["base"]
    proc, url = start_dashboard(mongo_url, pipeline["database"], "--raw-logs", str(base / "raw"),
                                "--errors-dir", str(base / "errors"))
    yield url
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def context(browser):
    """One browser context for the module: its cache keeps the chart library compiled between tests."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    ctx.set_default_timeout(90_000)   # a machine shared by many test runs can be very slow
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    """A fresh page that records console errors and uncaught exceptions; the test fails on any."""
    p = context.new_page()
    p.errors = []
    p.allowed_errors = []
    p.on("console", lambda m: m.type == "error" and p.errors.append(m.text))
    p.on("pageerror", lambda e: p.errors.append(f"uncaught: {e}"))
    yield p
    unexpected = [e for e in p.errors if not any(re.search(a, e) for a in p.allowed_errors)]
    p.close()
    assert unexpected == [], unexpected


def api(server, path, **params):
    r = requests.get(server + path, params=params or None, timeout=30)
    r.raise_for_status()
    return r.json()


def nightly_dates(server, by="build_id"):
    dates = api(server, f"/aggregates_by/{by}/channels/nightly/dates/")
    version = max({d["version"] for d in dates}, key=int)
    return version, sorted(d["date"] for d in dates if d["version"] == version)


def api_histogram(server, metric, **filters):
    """The API's aggregates of nightly's newest version, summed over its dates (independently of the page)."""
    version, dates = nightly_dates(server)
    answer = api(server, "/aggregates_by/build_id/channels/nightly/", version=version, dates=",".join(dates),
                 metric=metric, **filters)
    values = [0] * len(answer["buckets"])
    pings = 0
    for entry in answer["data"]:
        pings += entry["count"]
        for i, v in enumerate(entry["histogram"]):
            values[i] += v
    return answer, values, pings


def goto(page, server, **state):
    """Open the page with this state in its URL and wait until it has drawn (or said why not)."""
    page.goto(f"{server}/?{urlencode(state)}", wait_until="commit")
    wait_drawn(page, 0)


def change(page, action):
    """Do something to the page and wait for the refresh it causes."""
    n = page.evaluate("window.__dashboard.done")
    action()
    wait_drawn(page, n)


def drawn_bars(page):
    """Each bar trace of the main chart as {name: {bucket lower bound: value}}."""
    traces = page.evaluate("""() => document.getElementById('chart-main').data.map(
        (t) => ({name: t.name, buckets: t.customdata, y: t.y}))""")
    return {t["name"]: dict(zip(t["buckets"], t["y"])) for t in traces}


def summary_table(page):
    rows = page.eval_on_selector_all("#summary-table tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))")
    out = {}
    for name, *cells in rows:
        out[name] = [None if c == "–" else float(c.replace(",", "")) for c in cells]
    return out   # pings, samples, mean, p5, p25, p50, p75, p95


def check_against_api(page, server, metric, **filters):
    answer, values, pings = api_histogram(server, metric, **filters)
    bars = drawn_bars(page)
    assert len(bars) == 1
    [drawn] = bars.values()
    # every non-empty bucket is drawn with the API's count, and nothing else is non-zero
    expected = {b: v for b, v in zip(answer["buckets"], values) if v}
    assert {b: v for b, v in drawn.items() if v} == expected
    [row] = summary_table(page).values()
    buckets, kind = answer["buckets"], answer["kind"]
    assert row[0] == pings and row[1] == sum(values)
    want = [ref_mean(buckets, values, kind)] + [ref_percentile(buckets, values, kind, p) for p in PERCENTILES]
    for got, ref in zip(row[2:], want):
        assert got == pytest.approx(ref, rel=2e-3), (row, want)
    return answer


def test_distribution_filter_and_compare_match_the_api(page, server):
    goto(page, server, metric="GC_MS", channel="nightly", sanitize=0)
    assert page.get_attribute("#status", "data-kind") == "ok"
    check_against_api(page, server, "GC_MS")

    # a filter: one OS (and version) as the API names it
    version, _ = nightly_dates(server)
    oses = api(server, "/filters/", channel="nightly", version=version)["os"]
    name, os_version = sorted(oses)[0].split(",")
    change(page, lambda: page.select_option("#os", f"{name},{os_version}"))
    assert f"os={name}" in page.url
    check_against_api(page, server, "GC_MS", os=name, osVersion=os_version)

    # compare by OS: one series per OS that has data, each the API's
    change(page, lambda: page.select_option("#os", ""))
    change(page, lambda: page.select_option("#compare", "os"))
    bars = drawn_bars(page)
    assert 1 < len(bars) <= len(oses)
    for series, drawn in bars.items():
        os_name, os_ver = series.split(" ", 1)
        answer, values, _ = api_histogram(server, "GC_MS", os=os_name, osVersion=os_ver)
        assert {b: v for b, v in drawn.items() if v} == {b: v for b, v in zip(answer["buckets"], values) if v}


def test_measure_search_permalink_and_csv_export(page, server, tmp_path):
    goto(page, server, channel="nightly", sanitize=0)
    change(page, lambda: (page.fill("#metric", "CYCLE_COLLECTOR"), page.press("#metric", "Enter"),
                          page.dispatch_event("#metric", "change")))
    assert "metric=CYCLE_COLLECTOR" in page.url
    change(page, lambda: page.check("#cumulative"))
    drawn = page.evaluate("window.__dashboard.drawn.json")
    assert drawn["measure"] == "cumulative samples"
    values = drawn["series"][0]["values"]
    assert values == sorted(values) and values[-1] == drawn["series"][0]["summary"]["samples"]

    # the permalink reproduces the view in a fresh page
    again = page.context.new_page()
    again.goto(page.url, wait_until="commit")
    wait_drawn(again)
    assert again.evaluate("window.__dashboard.drawn.json") == drawn
    assert again.is_checked("#cumulative") and again.input_value("#metric") == "CYCLE_COLLECTOR"
    again.close()

    # CSV export: exactly the drawn values
    with page.expect_download() as info:
        page.click("#export-csv")
    path = tmp_path / "export.csv"
    info.value.save_as(path)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [float(r["bucket"]) for r in rows] == drawn["buckets"]
    assert [float(r["cumulative_samples"]) for r in rows] == values
    answer, api_values, _ = api_histogram(server, "CYCLE_COLLECTOR")
    first = answer["buckets"].index(drawn["buckets"][0])
    running = sum(api_values[:first])
    for row, v in zip(rows, api_values[first:]):
        running += v
        assert float(row["cumulative_samples"]) == running

    with page.expect_download() as info:
        page.click("#export-json")
    info.value.save_as(tmp_path / "export.json")
    import json
    assert json.loads((tmp_path / "export.json").read_text()) == drawn


def test_evolution_shows_the_regression_build(page, server, pipeline):
    goto(page, server, view="evo", metric="GC_MS", channel="nightly", sanitize=0, stats="p50|mean")
    drawn = page.evaluate("window.__dashboard.drawn.json")
    version, dates = nightly_dates(server)
    points = drawn["series"][0]["points"]
    assert [p["date"] for p in points] == dates
    answer = api(server, "/aggregates_by/build_id/channels/nightly/", version=version, dates=",".join(dates),
                 metric="GC_MS")
    by_date = {e["date"]: e for e in answer["data"]}
    for p in points:
        e = by_date[p["date"]]
        assert p["pings"] == e["count"] and p["samples"] == sum(e["histogram"])
        assert p["median"] == pytest.approx(ref_percentile(answer["buckets"], e["histogram"], answer["kind"], 50))
    # the build where the simulated regression lands is pointed at on the chart
    build = pipeline["fleet"].regression_build[:8]
    note = page.evaluate("document.getElementById('chart-main').layout.annotations.map(a => a.text)")
    assert any(build in text and "+" in text for text in note), (note, build)
    # second chart: pings and samples per date
    assert page.evaluate("document.getElementById('chart-second').data.length") == 2


def test_empty_states_say_what_is_missing(page, server):
    goto(page, server, metric="GC_MS", channel="nightly", start="20990101", end="20991231")
    status = page.inner_text("#status")
    assert page.get_attribute("#status", "data-kind") == "empty"
    assert "No pings for GC_MS on nightly" in status and "2099-01-01" in status
    assert page.evaluate("document.getElementById('chart-main').data") is None

    goto(page, server, metric="GC_MS", channel="nightly", sanitize=10_000_000)
    assert "fewer than 10000000 pings" in page.inner_text("#status")

    goto(page, server, metric="NO_SUCH_MEASURE", channel="nightly")
    assert "NO_SUCH_MEASURE is not a measure recorded for nightly" in page.inner_text("#status")


def test_an_api_error_is_a_message_and_the_page_recovers(page, server):
    page.allowed_errors.append(r"status of 503")
    page.route(re.compile(r".*/aggregates_by/build_id/channels/nightly/\?.*"),
               lambda route: route.fulfill(status=503, content_type="application/json",
                                           body='{"code": 503, "description": "database unavailable"}'))
    goto(page, server, metric="GC_MS", channel="nightly", sanitize=0)
    status = page.inner_text("#status")
    assert page.get_attribute("#status", "data-kind") == "error"
    assert "503" in status and "database unavailable" in status and "metric=GC_MS" in status
    page.unroute(re.compile(r".*/aggregates_by/build_id/channels/nightly/\?.*"))
    change(page, lambda: page.select_option("#by", "submission_date"))
    assert page.get_attribute("#status", "data-kind") == "ok"
    assert page.evaluate("document.getElementById('chart-main').data.length") == 1


def test_operations_view(page, server, pipeline):
    goto(page, server, view="ops")
    summary = api(server, "/operations/")
    assert summary["imports"]["files_done"] > 0
    cells = page.eval_on_selector_all("#ops-imports td", "cs => cs.map(c => c.textContent)")
    assert summary["imports"]["newest_imported"] in cells


def test_screenshots_of_every_view(context, server, tmp_path):
    written = take(context, server, tmp_path, sanitize=0)
    assert [p.name for p in written] == ["distribution.png", "distribution-table.png", "evolution.png",
                                         "evolution-boolean.png", "operations.png"]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
