"""``telemetry pipeline``: supervised stages, restarts, ordered drain, a ping from HTTP to MongoDB."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import orjson
import pytest
import requests

from pipeline.cli import status_lines
from pipeline.config import PipelineConfig
from pipeline.errors import PipelineConfigError
from pipeline.health import pipeline_health, prometheus_text, read_status
from pipeline.service import start_pipeline
from pipeline.traffic import FIXTURE_BUILD, fixture_pings
from waiting import wait_for

TELEMETRY = str(Path(sys.executable).parent / "telemetry")


def post(url: str, records) -> list[str]:
    """POST each record; the docIds the receiver acknowledged (200)."""
    acked = []
    for path, body in records:
        for _ in range(50):  # a client retries while a receiver is being restarted
            try:
                r = requests.post(f"{url}/submit/telemetry/{path}", data=body, timeout=30)
            except requests.ConnectionError:
                time.sleep(0.2)
                continue
            if r.status_code == 200:
                acked.append(path.split("/", 1)[0])
            break
    return acked


def api_count(api: str, build_date: str) -> int:
    """Pings of the build date in the aggregates API (SPEC section 7), via a metric every ping has."""
    r = requests.get(f"{api}/aggregates_by/build_id/channels/release/",
                     params={"version": "23", "dates": build_date, "metric": "SIMPLE_MEASURES_UPTIME"},
                     timeout=10)
    if r.status_code != 200:
        return 0
    return sum(d["count"] for d in r.json()["data"])


def aggregate_count(mongo_url: str, db: str, build_date: str) -> int:
    """The same count from a fresh API server over the database, after the pipeline stopped."""
    from dashboard.config import DashboardConfig
    from dashboard.testing import ServiceThread

    with ServiceThread(DashboardConfig(port=0, database=db), mongo_url) as service:
        return api_count(service.url, build_date)


def pipeline_args(data_dir: Path, mongo_url: str, db: str, cache: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--port", "0",
            "--dashboard-port", "0", "--mongo-url", mongo_url, "-d", db,
            "--histogram-cache", str(cache), "--rotation-age-ms", "300", *extra]


def test_config_refuses_unknown_and_owned_keys(tmp_path):
    with pytest.raises(PipelineConfigError, match="unknown configuration key 'prot'"):
        PipelineConfig.from_dict({"data_dir": "d", "prot": 1})
    with pytest.raises(PipelineConfigError, match="log_path"):
        PipelineConfig.from_dict({"data_dir": "d", "receiver": {"log_path": "x"}})
    with pytest.raises(PipelineConfigError, match="rotation_age_ms"):
        PipelineConfig.from_dict({"data_dir": "d", "rotation_age_ms": 0})
    path = tmp_path / "pipeline.json"
    path.write_bytes(orjson.dumps({"data_dir": "d", "port": 9000, "receiver": {"workers": 2}}))
    config = PipelineConfig.load(path, {"port": 9001, "dashboard_port": None})
    assert (config.port, config.dashboard_port, config.receiver) == (9001, 8000, {"workers": 2})
    r = subprocess.run([TELEMETRY, "pipeline", "--config", str(path), "--port", "70000"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "port must be a port number" in r.stderr
    r = subprocess.run([TELEMETRY, "pipeline"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--data-dir" in r.stderr


def test_status_of_a_directory_without_a_pipeline(tmp_path):
    health = pipeline_health(tmp_path)
    assert health["supervisor_state"] == "absent"
    assert not health["stages"]["converter"]["up"]
    assert 'telemetry_pipeline_stage_up{stage="importer"} 0' in prometheus_text(health)
    r = subprocess.run([TELEMETRY, "pipeline", "status", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "converter" in r.stdout and "NO" in r.stdout


def test_pipeline_restarts_a_killed_stage_and_drains_in_order(tmp_path, mongo_url, mongo_db,
                                                            histogram_cache, base):
    data = tmp_path / "data"
    run = start_pipeline(pipeline_args(data, mongo_url, mongo_db.name, histogram_cache))
    try:
        url = run.receiver_url
        api = run.urls["api"]
        # one cell (release, 23, build 20140101): the API counts them under one date
        records = list(islice(fixture_pings(base, seed=7), 60))
        build_date = FIXTURE_BUILD[:8]
        acked = post(url, records[:20])
        wait_for(lambda: mongo_db.payloads.count_documents({}) == 20, what="the first pings")
        # end to end on loopback: posted, then visible in the aggregates API
        wait_for(lambda: api_count(api, build_date) == 20, what="the pings in the API")
        metrics = requests.get(f"{api}/metrics", timeout=10).text
        assert 'telemetry_pipeline_stage_up{stage="importer"} 1' in metrics
        assert 'telemetry_pipeline_stage_lag_seconds{stage="converter"}' in metrics
        # the operations view reads the receiver's stats log the pipeline gave it
        # (which the receiver writes every stats_flush_ms: the pings may show first)
        def operations_200() -> int:
            ops = requests.get(f"{api}/operations/", timeout=10).json()
            return ops["receiver"]["status_codes"].get("200", 0)
        wait_for(lambda: operations_200() >= 20, what="the receiver's stats log")
        operations = requests.get(f"{api}/operations/", timeout=10).json()
        assert not [p for p in operations["problems"] if "--stats-log" in p or "--raw-logs" in p]

        # health while running: every stage up, no backlog
        health = wait_for(lambda: (lambda h: h if all(s["up"] for s in h["stages"].values())
                                   else None)(pipeline_health(data)), what="every stage up")
        assert set(health["stages"]) >= {"receiver", "converter", "importer"}
        status = subprocess.run([TELEMETRY, "pipeline", "status", "--data-dir", str(data)],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout
        second = subprocess.run([TELEMETRY, "pipeline",
                                 *pipeline_args(data, mongo_url, mongo_db.name, histogram_cache)],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "another pipeline runs on" in second.stderr
        assert read_status(data / "pipeline" / "supervisor.json")["state"] == "running"

        # kill the converter and the importer: each is restarted and picks up where it was
        supervisor = read_status(data / "pipeline" / "supervisor.json")
        for stage in ("converter", "importer"):
            os.kill(supervisor["stages"][stage]["pid"], signal.SIGKILL)
        acked += post(url, records[20:40])
        wait_for(lambda: all(read_status(data / "pipeline" / "supervisor.json")["stages"][s]
                             ["restarts"] == 1 for s in ("converter", "importer")),
                 what="both restarted")
        wait_for(lambda: mongo_db.payloads.count_documents({}) == 40, what="pings after restart")
        assert any("converter (pid" in line and "SIGKILL" in line and "restarting in" in line
                   for line in run.err_lines)

        # kill the receiver: restarted on the same port, its acknowledged pings kept
        os.kill(read_status(data / "pipeline" / "supervisor.json")["stages"]["receiver"]["pid"],
                signal.SIGKILL)
        wait_for(lambda: read_status(data / "pipeline" / "supervisor.json")["stages"]["receiver"]
                 ["restarts"] == 1, what="the receiver restarted")
        acked += post(url, records[40:50])

        # the last ones are posted just before SIGTERM: the drain must carry them through
        acked += post(url, records[50:])
        assert run.stop() == 0, "\n".join(run.err_lines[-40:])
    finally:
        if run.process.poll() is None:
            run.process.kill()
    assert len(acked) == 60
    ids = sorted(d["_id"] for d in mongo_db.payloads.find({}, {"_id": 1}))
    assert ids == sorted(acked)
    assert aggregate_count(mongo_url, mongo_db.name, build_date) == 60  # each counted once
    assert mongo_db.imports.count_documents({"state": {"$ne": "done"}}) == 0
    order = [i for i, line in enumerate(run.err_lines)
             if re.search(r"pipeline: (receiver stopped|converter drained|importer drained)", line)]
    said = [re.search(r"(receiver|converter|importer)", run.err_lines[i]).group(1) for i in order]
    assert said == ["receiver", "converter", "importer"], run.err_lines
    assert not [p for p in (data / "raw").iterdir() if not p.name.endswith(".finished")]
    final = pipeline_health(data)
    assert final["supervisor_state"] == "stopped"
    assert final["stages"]["converter"]["backlog_files"] == 0
    assert final["stages"]["importer"]["backlog_files"] == 0
    assert any("stopped" in line for line in status_lines(final))
