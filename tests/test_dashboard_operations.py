"""The operations summary, from what a real receiver, converter and importer recorded."""

from __future__ import annotations

import asyncio
import os
import time

import orjson
import pymongo
import pytest
import requests

from converter.process import ConverterConfig, process
from converter.synthetic import make_records, write_layout
from dashboard.operations import Operations, OperationsConfig, channel_of, parse_metrics, read_stats_log
from importer.importer import ImportOptions, import_dataset
from receiver.config import ReceiverConfig
from receiver.service import start_receiver

PREFIX = "/submit/telemetry/"


def _path(doc, channel):
    return f"{PREFIX}{doc}/saved-session/Firefox/26.0a1/{channel}/20131015030204"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, fixtures_dir):
    """A receiver that got submissions for two channels and bad requests, and a converter run over them."""
    base = tmp_path_factory.mktemp("ops")
    config = ReceiverConfig(port=0, workers=1, log_path=str(base / "raw"), stats_log_file=str(base / "stats.log"),
                            stats_flush_ms=100, motd="")
    sent = {"nightly": 3, "beta": 2}
    with start_receiver(config) as r:
        url = f"http://{r.host}:{r.port}"
        metrics_text = None
        for channel, n in sent.items():
            for i in range(n):
                body = b"this is not JSON" if i == 0 else b'{"ver": 1}'
                assert requests.post(url + _path(f"{channel}-{i}", channel), data=body, timeout=10).status_code == 200
        assert requests.post(url + "/elsewhere/x", data=b"{}", timeout=10).status_code == 404
        assert requests.get(url + "/nothing-here", timeout=10).status_code == 404
        metrics_text = requests.get(url + "/metrics", timeout=10).text
    summary = process(ConverterConfig(storage_path=str(base / "layout"), errors_path=str(base / "errors"),
                                      telemetry_schema=str(fixtures_dir / "telemetry_schema.json"),
                                      histogram_cache=str(base / "cache"), histogram_server="127.0.0.1:9"),
                      [base / "raw"])
    assert summary.records_rejected == sum(sent.values())
    return {"base": base, "sent": sent, "metrics": metrics_text, "rejected": dict(summary.rejected)}


def test_stats_log_gives_rates_by_channel_and_status_codes(recorded):
    base = recorded["base"]
    stats = read_stats_log(base / "stats.log", window_minutes=60)
    by_channel = {}
    for p in stats["per_minute"]:
        by_channel[p["channel"]] = by_channel.get(p["channel"], 0) + p["count"]
    assert by_channel == recorded["sent"]
    assert stats["status_codes"]["200"] == sum(recorded["sent"].values()) + 1   # + GET /metrics
    assert stats["status_codes"]["404"] == 2
    assert stats["bad_lines"] == 0
    # A torn last line (the receiver killed mid-write) is counted, never fatal.
    torn = base / "torn.log"
    torn.write_bytes((base / "stats.log").read_bytes() + b'{"url": "/sub')
    assert read_stats_log(torn, 60)["bad_lines"] == 1


def test_channel_of_a_submission_url():
    assert channel_of(_path("d", "aurora")) == "aurora"
    assert channel_of(PREFIX + "docid") == "unknown"
    assert channel_of("/other/x/y/z/w/v/u") == "other"


def test_summary_counts_rejections_and_import_lag(recorded, mongo_url, mongo_db, tmp_path):
    base = recorded["base"]
    layout = tmp_path / "layout"
    write_layout(layout, make_records(30, seed=3))
    import_dataset(layout, mongo_url, ImportOptions(database=mongo_db.name))
    ops = Operations(OperationsConfig(stats_log=str(base / "stats.log"), raw_logs=str(base / "raw"),
                                      errors_dir=str(base / "errors")))

    async def ask(metrics=None):
        client = pymongo.AsyncMongoClient(mongo_url)
        try:
            return await ops.summary_async(client[mongo_db.name], metrics)
        finally:
            await client.close()

    summary = asyncio.run(ask(recorded["metrics"]))
    assert summary["converter"]["rejected"] == recorded["rejected"]
    assert summary["receiver"]["metrics"]['receiver_requests_total{code="200"}'] == sum(recorded["sent"].values())
    imports = summary["imports"]
    assert imports["files_done"] == len(list(layout.rglob("*.zst"))) and imports["files_started"] == 0
    # The raw logs were finished before this import: nothing is waiting.
    assert imports["lag_seconds"] == 0 and imports["raw_files_waiting"] == 0
    assert summary["problems"] == []
    # A raw log finished an hour after the newest import is waiting, and is the lag.
    [raw] = [p for p in (base / "raw").iterdir() if p.name.endswith(".finished")][:1]
    later = time.time() + 3600
    os.utime(raw, (later, later))
    imports = asyncio.run(ask())["imports"]
    assert imports["raw_files_waiting"] == 1
    assert 3500 < imports["lag_seconds"] < 3700
    orjson.dumps(summary)  # the endpoint answers it as JSON


def test_missing_sources_are_named_not_fatal(tmp_path):
    ops = Operations(OperationsConfig(stats_log=str(tmp_path / "none.log"), raw_logs=str(tmp_path / "nope"),
                                      errors_dir=str(tmp_path / "no-errors")))
    summary = ops.summary()
    text = " | ".join(summary["problems"])
    assert "cannot read the stats log" in text and "does not exist" in text
    assert "cannot list the raw logs" in text and "no database" in text
    assert summary["receiver"]["per_minute"] == [] and summary["imports"]["lag_seconds"] is None
    assert len(Operations(OperationsConfig()).summary()["problems"]) == 4


def test_a_database_that_fails_is_a_problem_not_an_error(tmp_path):
    async def ask():
        client = pymongo.AsyncMongoClient("mongodb://127.0.0.1:9/", serverSelectionTimeoutMS=200)
        try:
            return await Operations(OperationsConfig()).summary_async(client["x"])
        finally:
            await client.close()

    problems = asyncio.run(ask())["problems"]
    assert any(p.startswith("cannot read the imports collection: ServerSelectionTimeoutError") for p in problems)
    assert not any(p.startswith("no database") for p in problems)


def test_parse_metrics():
    text = '# HELP x y\n# TYPE x counter\nreceiver_requests_total{code="200"} 5\nreceiver_rotations_total 2\n'
    assert parse_metrics(text) == {'receiver_requests_total{code="200"}': 5.0, "receiver_rotations_total": 2.0}
