"""The simulated fleet: determinism, conversion with 0 rejections, effects, scenarios, the CLI."""

from __future__ import annotations

import gzip
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from converter.errorlog import error_files, read_notes
from converter.histograms import Histograms
from converter.layout import find_layout_files, read_layout_file
from converter.process import ConverterConfig, process
from fleet.channels import CHANNELS, histograms_json, write_revisions
from fleet.population import MALFORMED_REASON, Fleet
from fleet.rawlogs import write_raw_logs
from fleet.scenario import Scenario, ScenarioError
from receiver.rawlog import RawLogReader, finished_files
from telemetry.cli import main

CLEAN = replace(Scenario(), malformed=None)


@pytest.fixture(scope="module")
def hg(tmp_path_factory) -> Path:
    """The fleet's revisions laid out as a histogram cache (no server needed)."""
    d = tmp_path_factory.mktemp("hg")
    write_revisions(d)
    return d


def convert(raw: Path, out: Path, hg: Path):
    config = ConverterConfig(storage_path=str(out / "layout"), telemetry_schema="",
                             histogram_cache=str(hg), errors_path=str(out / "errors"))
    return config, process(config, [raw], progress=False)


def converted_docs(layout: Path) -> list[dict]:
    docs = []
    for f in find_layout_files(layout, include_plain=False):
        for _, _, text in read_layout_file(f.path):
            docs.append(orjson.loads(text))
    return docs


# --------------------------------------------------------------------------- determinism

def test_same_seed_same_bytes_different_seed_different():
    a = list(Fleet(60, seed=7).submissions())
    b = list(Fleet(60, seed=7).submissions())
    c = list(Fleet(60, seed=8).submissions())
    assert a == b
    assert [s.body for s in a] != [s.body for s in c]
    assert [s.timestamp_ms for s in a] == sorted(s.timestamp_ms for s in a)
    assert len({s.path.split("/")[0] for s in a}) == 60        # fresh docIds


def test_raw_logs_are_deterministic_and_named_as_the_receiver_names_them(tmp_path):
    s1 = write_raw_logs(Fleet(40, seed=2).submissions(), tmp_path / "one")
    s2 = write_raw_logs(Fleet(40, seed=2).submissions(), tmp_path / "two")
    assert s1.records == s2.records == 40
    [f1], [f2] = s1.files, s2.files
    assert f1.read_bytes() == f2.read_bytes()
    assert f1.name.startswith("telemetry.v2.") and f1.name.endswith(".finished")
    reader = RawLogReader(f1)
    records = list(reader)
    assert reader.stats.skipped_bytes == 0 and len(records) == 40
    assert all(r.ip.startswith("198.1") and r.data[:2] == b"\x1f\x8b" for r in records)


def test_rotation_finishes_every_file(tmp_path):
    summary = write_raw_logs(Fleet(30, seed=1).submissions(), tmp_path, max_log_size=50_000)
    assert len(summary.files) > 1
    assert finished_files(tmp_path) == sorted(summary.files)
    assert sum(1 for f in summary.files for _ in RawLogReader(f)) == 30


# --------------------------------------------------------------------------- conversion

def test_every_ping_converts_against_its_revision(tmp_path, hg):
    fleet = Fleet(240, seed=5, scenario=CLEAN)
    write_raw_logs(fleet.submissions(), tmp_path / "raw")
    _, summary = convert(tmp_path / "raw", tmp_path, hg)
    assert summary.records_in == 240
    assert summary.records_rejected == 0, summary.lines()
    assert summary.records_out == 240
    assert not summary.unknown_histograms          # every histogram is defined in its revision
    docs = converted_docs(tmp_path / "layout")
    assert len(docs) == 240
    for doc in docs:
        channel = CHANNELS[doc["info"]["appUpdateChannel"]]
        assert doc["info"]["revision"] == channel.revision_url
        assert doc["info"]["appVersion"] == channel.version
    kinds = Counter()
    defs = {rev: Histograms.from_bytes(histograms_json(rev)) for rev in {c.rev for c in CHANNELS.values()}}
    for doc in docs[:20]:
        revdefs = defs[doc["info"]["revision"].rsplit("/", 1)[1]]
        kinds.update(revdefs.get(name).kind for name in doc["histograms"])
    assert {"exponential", "linear", "boolean", "flag", "enumerated"} <= set(kinds)


def test_malformed_submissions_end_in_the_error_output_with_their_reasons(tmp_path, hg):
    scenario = replace(Scenario(), malformed=replace(Scenario().malformed, fraction=0.1))
    subs = list(Fleet(150, seed=9, scenario=scenario).submissions())
    bad = Counter(s.malformed for s in subs if s.malformed)
    assert set(bad) == set(MALFORMED_REASON) and sum(bad.values()) >= 6
    write_raw_logs(subs, tmp_path / "raw")
    config, summary = convert(tmp_path / "raw", tmp_path, hg)
    expected = Counter()
    for kind, n in bad.items():
        expected[MALFORMED_REASON[kind]] += n
    assert summary.rejected == expected
    assert summary.records_out == 150 - sum(bad.values())
    noted = Counter()
    bad_ids = {s.path.split("/")[0] for s in subs if s.malformed}
    for f in error_files(config.errors):
        for note in read_notes(f):
            noted[note["reason"]] += 1
            assert note["path"].split("/")[0] in bad_ids
    assert noted == expected


# --------------------------------------------------------------------------- the CLI

def test_cli_raw_log(tmp_path):
    result = CliRunner().invoke(main, ["simulate", "--pings", "25", "--seed", "4",
                                       "--raw-log", str(tmp_path / "raw")])
    assert result.exit_code == 0, result.output
    assert "wrote 25 submissions" in result.output
    [f] = finished_files(tmp_path / "raw")
    records = list(RawLogReader(f))
    subs = list(Fleet(25, seed=4).submissions())
    assert [(r.path, r.data, r.timestamp, r.ip) for r in records] == \
        [(s.path, s.body, s.timestamp_ms, s.client_ip) for s in subs]
    body = orjson.loads(gzip.decompress(records[0].data))
    assert body["ver"] == 1 and body["info"]["appName"] == "Firefox"


def test_days_spread_submission_dates(tmp_path):
    subs = list(Fleet(90, seed=1, scenario=CLEAN.with_days(3)).submissions())
    days = Counter(s.timestamp_ms // 86_400_000 for s in subs)
    assert len(days) == 3 and set(days.values()) == {30}
    small = replace(CLEAN, histograms_per_ping=10).with_days(3)
    nightly = {s.path.rsplit("/", 1)[1] for s in Fleet(400, seed=1, scenario=small).submissions()
               if "/nightly/" in s.path}
    assert len(nightly) >= 3          # a new nightly build every day (plus clients lagging behind)


# --------------------------------------------------------------------------- effects in the converted data

def _mean(hist: list) -> float:
    samples = sum(hist[:-5])
    return hist[-5] / samples


def test_proportions_and_effects_in_the_converted_data(tmp_path, hg):
    """Truth a downstream aggregate can be checked against (tolerances for 900 pings)."""
    # The effects are on the live metrics: few other histograms keep the test quick.
    scenario = replace(CLEAN, pings_per_client_day=0.5, histograms_per_ping=20)
    fleet = Fleet(900, seed=11, scenario=scenario)
    write_raw_logs(fleet.submissions(), tmp_path / "raw")
    _, summary = convert(tmp_path / "raw", tmp_path, hg)
    assert summary.records_rejected == 0
    docs = converted_docs(tmp_path / "layout")
    channels = Counter(d["info"]["appUpdateChannel"] for d in docs)
    share = {c: n / len(docs) for c, n in channels.items()}
    assert 0.58 <= share["release"] <= 0.82
    assert share["release"] > share["beta"] > max(share["aurora"], share["nightly"]) > 0
    os_share = Counter(d["info"]["OS"] for d in docs)
    assert os_share["WINNT"] > os_share["Darwin"] > 0 and os_share["Linux"] > 0
    assert Counter(d["info"]["reason"] for d in docs).keys() == {"saved-session", "idle-daily"}

    # The regression: GC_MS on nightly from the named build on is x1.3.
    reg = fleet.regression_build
    before = [_mean(d["histograms"]["GC_MS"]) for d in docs
              if d["info"]["appUpdateChannel"] == "nightly" and d["info"]["appBuildID"] < reg]
    after = [_mean(d["histograms"]["GC_MS"]) for d in docs
             if d["info"]["appUpdateChannel"] == "nightly" and d["info"]["appBuildID"] >= reg]
    assert len(before) >= 10 and len(after) >= 10
    ratio = (sum(after) / len(after)) / (sum(before) / len(before))
    assert 1.12 <= ratio <= 1.5, ratio
    # No such step on release (one build) or between nightly's builds before it.
    # The OS difference: CYCLE_COLLECTOR on Darwin x1.5 (x0.95 baseline) against WINNT.
    by_os = {os_name: [_mean(d["histograms"]["CYCLE_COLLECTOR"]) for d in docs if d["info"]["OS"] == os_name]
             for os_name in ("Darwin", "WINNT")}
    ratio = (sum(by_os["Darwin"]) / len(by_os["Darwin"])) / (sum(by_os["WINNT"]) / len(by_os["WINNT"]))
    assert 1.2 <= ratio <= 1.7, ratio
    # Channel differences at baseline: nightly slower than release on GC_MS before the regression.
    release = [_mean(d["histograms"]["GC_MS"]) for d in docs if d["info"]["appUpdateChannel"] == "release"]
    assert sum(before) / len(before) > sum(release) / len(release)


def test_effects_can_be_turned_off(tmp_path):
    off = Scenario.from_dict({"effects": {"regression": False, "os_difference": {"enabled": False},
                                          "malformed": None}})
    fleet = Fleet(10, seed=1, scenario=off)
    assert fleet.regression_build is None
    assert fleet.describe()[-1] == "no effects are on"
    assert all(s.malformed is None for s in fleet.submissions())


# --------------------------------------------------------------------------- scenarios

@pytest.mark.parametrize("content, key", [
    ('{"dayz": 3}', "'dayz'"),
    ('{"days": "3"}', "'days'"),
    ('{"days": 0}', "'days'"),
    ('{"channels": {"esr": 0.1}}', "'channels.esr'"),
    ('{"channels": {"release": 0, "beta": 0, "aurora": 0, "nightly": 0}}', "'channels'"),
    ('{"os": {"WINNT": -1}}', "'os.WINNT'"),
    ('{"start_date": "2013-13-01"}', "'start_date'"),
    ('{"effects": {"regresion": {}}}', "'effects.regresion'"),
    ('{"effects": {"regression": {"factor": "big"}}}', "'effects.regression.factor'"),
    ('{"effects": {"regression": {"metric": "NO_SUCH"}}}', "'effects.regression.metric'"),
    ('{"effects": {"regression": {"build": "2013"}}}', "'effects.regression.build'"),
    ('{"effects": {"os_difference": {"os": "BeOS"}}}', "'effects.os_difference.os'"),
    ('{"effects": {"malformed": {"kinds": ["nope"]}}}', "'effects.malformed.kinds'"),
    ('{"effects": {"malformed": {"fraction": 2}}}', "'effects.malformed.fraction'"),
    ('{"effects": {"malformed": {"enabled": "no"}}}', "'effects.malformed.enabled'"),
    ('[1, 2]', "(top level)"),
    ('{"days": 3,', "not valid JSON"),
])
def test_bad_scenario_is_an_error_naming_the_key(tmp_path, content, key):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(ScenarioError, match=re.escape(key)):
        Scenario.load(path)
    result = CliRunner().invoke(main, ["simulate", "--scenario", str(path), "--describe"])
    assert result.exit_code == 2
    assert key in result.output and "Traceback" not in result.output


def test_scenario_overrides_and_describe(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"days": 4, "channels": {"nightly": 1, "release": 0}, '
                    '"effects": {"regression": {"factor": 2, "build": "20130902030202"}, "malformed": false}}')
    result = CliRunner().invoke(main, ["simulate", "--scenario", str(path), "--describe", "--pings", "50"])
    assert result.exit_code == 0, result.output
    assert "over 4 days" in result.output
    assert "effect regression: GC_MS x2 on nightly from build 20130902030202 on" in result.output
    assert "effect os_difference: CYCLE_COLLECTOR x1.5 on Darwin" in result.output
    assert "malformed" not in result.output and "release" not in result.output.split("channels:")[1].split("\n")[0]
    result = CliRunner().invoke(main, ["simulate", "--scenario", str(path), "--days", "2", "--describe"])
    assert "over 2 days" in result.output


def test_cli_usage_errors(tmp_path):
    runner = CliRunner()
    for args, message in [([], "give --raw-log DIR or --to URL"),
                          (["--raw-log", str(tmp_path), "--to", "http://x"], "not both"),
                          (["--to", "ftp://x"], "http:// or https://"),
                          (["--scenario", str(tmp_path / "missing.json"), "--describe"], "cannot read scenario")]:
        result = runner.invoke(main, ["simulate", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output


# --------------------------------------------------------------------------- HTTP

@pytest.fixture
def receiver(tmp_path):
    from receiver.config import ReceiverConfig
    from receiver.service import start_receiver

    config = ReceiverConfig(log_path=str(tmp_path / "received"), port=0, workers=1, include_request_ip=True,
                            durability="os")
    with start_receiver(config) as running:
        yield running


def test_http_stores_exactly_the_pings_sent(tmp_path, receiver):
    result = CliRunner().invoke(main, ["simulate", "--pings", "120", "--seed", "6", "--to", receiver.url,
                                       "--concurrency", "4"])
    assert result.exit_code == 0, result.output
    assert "sent 120 submissions" in result.output and "2xx 120, non-2xx none, failed 0" in result.output
    receiver.stop()
    stored = Counter((r.path, r.data, r.ip) for f in finished_files(receiver.log_path)
                     for r in RawLogReader(f))
    assert stored == Counter((s.path, s.body, s.client_ip) for s in Fleet(120, seed=6).submissions())


def test_http_rate_limit(receiver):
    from fleet.sender import SendConfig, send

    summary = send(Fleet(12, seed=1).submissions(), SendConfig(receiver.url, concurrency=4, rate=40))
    assert summary.ok and summary.accepted == 12
    assert summary.seconds >= 11 / 40 * 0.9


def test_http_non_2xx_is_counted_and_exits_non_zero(receiver):
    # A prefix the receiver does not serve: every POST is answered 404, never retried.
    result = CliRunner().invoke(main, ["simulate", "--pings", "5", "--to",
                                                       receiver.url + "/wrong/prefix/"])
    assert result.exit_code == 1
    assert "2xx 0, non-2xx 5 x HTTP 404, failed 0, retries 0" in result.stdout
    assert "HTTP 404" in result.stderr and "Traceback" not in result.stderr


def test_stopped_receiver_is_a_clear_error_and_non_zero_exit(receiver):
    url = receiver.url
    receiver.stop()
    result = CliRunner().invoke(
        main, ["simulate", "--pings", "50", "--to", url, "--retries", "2"])
    assert result.exit_code == 1
    err = result.stderr.strip().splitlines()
    assert any(line.startswith("stopped: no response from") and "after 3 attempts" in line for line in err)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert "failed" in result.stdout and "submissions not sent" in result.stderr


def test_cli_histograms_then_process_converts_everything(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["simulate", "--pings", "30", "--seed", "3", "--raw-log", str(tmp_path / "raw"),
                                  "--histograms", str(tmp_path / "hg"), "--scenario", str(_clean_file(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "4 Histograms.json revisions laid out" in result.output
    result = runner.invoke(main, ["process", str(tmp_path / "raw"), "--output", str(tmp_path / "layout"),
                                  "--histogram-cache", str(tmp_path / "hg"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "records: 30 read, 30 written, 0 rejected" in result.output


def _clean_file(tmp_path: Path) -> Path:
    path = tmp_path / "clean.json"
    path.write_text('{"effects": {"malformed": false}}')
    return path


@pytest.fixture
def flaky_server():
    """A server that answers 503 to the first three POSTs, then 200; yields (url, paths seen)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[tuple[str, int]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, len(body)))
            code = 503 if len(seen) <= 3 else 200
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_http_5xx_is_retried_with_backoff(flaky_server):
    from fleet.sender import SendConfig, send

    url, seen = flaky_server
    subs = list(Fleet(4, seed=1, scenario=CLEAN).submissions())
    summary = send(subs, SendConfig(url, concurrency=1, retries=3, backoff=0.05))
    assert summary.ok and summary.accepted == 4 and summary.retries == 3
    assert summary.seconds >= 0.05 * 0.9   # at least one backoff wait (others may overlap it)
    assert len(seen) == 7 and {p for p, _ in seen} == {"/submit/telemetry/" + s.path for s in subs}


def test_a_submission_unpacks_as_four_fields():
    scenario = replace(Scenario(), malformed=replace(Scenario().malformed, fraction=0.5))
    subs = list(Fleet(10, seed=1, scenario=scenario).submissions())
    for path, body, timestamp_ms, client_ip in subs:
        assert body[:2] == b"\x1f\x8b" and isinstance(timestamp_ms, int) and path.count("/") == 5
    kinds = [s.malformed for s in subs]
    assert None in kinds and set(kinds) - {None} <= set(MALFORMED_REASON)


def test_the_aggregates_model_sees_the_effects(tmp_path, hg):
    """SPEC section 7 as computed downstream: every ping lands in cells, the regression shows by build."""
    from aggregations.aggregates import Aggregate, Definitions
    from converter.revisions import RevisionCache

    scenario = Scenario.from_dict({"pings_per_client_day": 0.5, "histograms_per_ping": 20,
                                   "channels": {"nightly": 0.5}, "effects": {"malformed": False}})
    fleet = Fleet(400, seed=4, scenario=scenario)
    write_raw_logs(fleet.submissions(), tmp_path / "raw")
    convert(tmp_path / "raw", tmp_path, hg)
    aggregate, definitions = Aggregate(), Definitions(RevisionCache(hg, None))
    names = ["reason", "appName", "appUpdateChannel", "appVersion", "appBuildID", "submission_date"]
    for f in find_layout_files(tmp_path / "layout", include_plain=False):
        for _, _, text in read_layout_file(f.path):
            assert aggregate.add_ping(orjson.loads(text), dict(zip(names, f.dimensions)), definitions)
    assert dict(aggregate.stats) == {"pings": 400}        # nothing left out
    options = aggregate.options()
    assert set(options) == {(c, CHANNELS[c].major) for c in CHANNELS}
    assert any(o.startswith("Windows_NT,") for o in options[("release", "23")]["os"])
    assert "SIMPLE_MEASURES_FIRSTPAINT" in options[("release", "23")]["metric"]
    before, after = [0, 0], [0, 0]      # [sum, samples] of GC_MS on nightly by build date
    for (by, channel, version, date, metric), rows in aggregate.data.items():
        if (by, channel, metric) == ("build_id", "nightly", "GC_MS"):
            side = after if date >= fleet.regression_build[:8] else before
            for histogram, total, count in rows.values():
                side[0] += total
                side[1] += sum(histogram)
    ratio = (after[0] / after[1]) / (before[0] / before[1])
    assert 1.15 <= ratio <= 1.45, ratio
