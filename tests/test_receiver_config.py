"""Receiver configuration and the serve command's error handling."""

from __future__ import annotations

import socket
import subprocess
import sys

import orjson
import pytest
from click.testing import CliRunner

from receiver.cli import serve_command
from receiver.config import ReceiverConfig
from receiver.errors import ConfigError, ReceiverError
from receiver.service import start_receiver

ORIGINAL = {  # the Node.js server's receiver.json keys
    "motd": "Hello", "max_data_length": 204800, "max_path_length": 10240, "port": 8080,
    "log_path": "/tmp/telemetry", "log_base": "telemetry", "max_log_age_ms": 300000,
    "max_log_size": 524288000, "include_request_ip": True, "stats_log_file": "/tmp/stats.log",
    "url_prefix": "/submit/telemetry/",
}


def test_original_config_loads(tmp_path):
    p = tmp_path / "receiver.json"
    p.write_bytes(orjson.dumps(ORIGINAL))
    c = ReceiverConfig.load(p)
    assert {k: getattr(c, k) for k in ORIGINAL} == ORIGINAL
    assert c.log_version == 2 and c.durability == "fsync" and c.host == "127.0.0.1"


def test_defaults_follow_the_spec():
    c = ReceiverConfig()
    assert (c.max_data_length, c.max_path_length, c.max_log_size, c.max_log_age_ms) == (
        200 * 1024, 10 * 1024, 500 * 1024 * 1024, 5 * 60 * 1000)
    assert c.url_prefix == "/submit/telemetry/" and c.log_version == 1
    assert c.worker_count >= 1


@pytest.mark.parametrize("values, words", [
    ({"max_log_sise": 5}, "max_log_sise"),
    ({"port": "8080"}, "port"),
    ({"port": 70000}, "port"),
    ({"include_request_ip": 1}, "include_request_ip"),
    ({"max_data_length": True}, "max_data_length"),
    ({"max_data_length": 0}, "max_data_length"),
    ({"durability": "maybe"}, "durability"),
    ({"http_server": "nginx"}, "http_server"),
    ({"url_prefix": "submit"}, "url_prefix"),
    ({"workers": -1}, "workers"),
    ({"log_base": "a/b"}, "log_base"),
])
def test_bad_values_name_the_key(values, words):
    with pytest.raises(ConfigError, match=words):
        ReceiverConfig.from_dict(values)


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        ReceiverConfig.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ReceiverConfig.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        ReceiverConfig.load(bad)


def test_replace_ignores_none_and_checks():
    c = ReceiverConfig().replace(port=0, workers=None)
    assert c.port == 0 and c.workers == 0
    with pytest.raises(ConfigError):
        c.replace(durability="never")
    assert ReceiverConfig.from_dict(c.to_dict()) == c


def test_serve_reports_bad_config_as_usage_error(tmp_path):
    p = tmp_path / "receiver.json"
    p.write_bytes(orjson.dumps({"prot": 1}))
    res = CliRunner().invoke(serve_command, ["--config", str(p)])
    assert res.exit_code == 2 and "'prot'" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(serve_command, ["--workers", "-3"])
    assert res.exit_code == 2 and "workers" in res.output


def test_port_in_use_is_a_clean_failure(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "receiver", "--port", str(port),
                               "--log-path", str(tmp_path / "logs"), "--workers", "1"],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr


def test_start_receiver_raises_when_it_cannot_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ReceiverError, match="did not start") as err:
        start_receiver(ReceiverConfig(port=0, log_path=str(blocker / "logs"), workers=1),
                       timeout=30)
    assert "exit code 1" in str(err.value)


def test_start_receiver_and_restart_of_dead_worker(tmp_path):
    import os
    import signal

    import requests

    config = ReceiverConfig(port=0, log_path=str(tmp_path / "logs"), workers=1, motd="")
    with start_receiver(config) as r:
        assert r.url == f"http://127.0.0.1:{r.port}"
        assert requests.get(r.url + "/status", timeout=10).text == "OK"
        [old] = r.worker_pids()
        os.kill(old, signal.SIGKILL)
        [new] = r.wait_for_workers(exclude=(old,))
        assert new != old
        resp = requests.post(r.submit_url("after-restart"), data=b"x", timeout=10)
        assert resp.status_code == 200
        code = r.stop()
    assert code == 0
    assert f"worker 0 exited pid {old}" in r.output and f"worker 0 started pid {new}" in r.output


def test_docs_cover_every_key():
    from dataclasses import fields
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "receiver.md").read_text()
    rows = {line.split("|")[1].strip().strip("`")
            for line in doc.splitlines() if line.startswith("| `")}
    assert {f.name for f in fields(ReceiverConfig)} <= rows


def test_every_key_has_a_command_line_option():
    from dataclasses import fields

    options = {p.name for p in serve_command.params}
    assert {f.name for f in fields(ReceiverConfig)} <= options
