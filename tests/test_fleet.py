"""The simulated fleet: determinism, conversion with 0 rejections, effects, scenarios, the CLI."""

from __future__ import annotations

import gzip
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
