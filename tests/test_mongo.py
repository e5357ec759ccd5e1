"""The embedded server's life (start, reuse, status, stop) and how a URI is chosen."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pymongo
import pytest
from click.testing import CliRunner

from importer.cli import mongo
from importer.errors import MongoUnavailable
from importer.mongo import (
    PID_FILE,
    MongoConfig,
    connect,
    default_data_dir,
    embedded_status,
    is_local,
    redact,
    resolve_url,
    stop_embedded,
    validate_url,
)


def test_embedded_server_lifecycle_on_disk(tmp_path):
    """start writes a pid file and answers ping; a second start reuses it; stop ends it."""
    data_dir = tmp_path / "mongo"
    run = CliRunner().invoke
    try:
        started = run(mongo, ["start", "--mongo-dir", str(data_dir)])
        assert started.exit_code == 0 and started.output.startswith("started: mongodb://127.0.0.1:")
        info = orjson.loads((data_dir / PID_FILE).read_bytes())
        url = f"mongodb://127.0.0.1:{info['port']}/"
        with pymongo.MongoClient(url) as client:
            client.t.c.insert_one({"_id": 1})
        again = run(mongo, ["start", "--mongo-dir", str(data_dir)])
        assert again.exit_code == 0 and again.output.startswith(f"already running: {url}")
        status = run(mongo, ["status", "--mongo-dir", str(data_dir)])
        assert status.exit_code == 0 and url in status.output
        notes = []
        assert resolve_url(MongoConfig(data_dir=data_dir), notes.append) == url and notes == []
        assert (data_dir / "db").is_dir()
    finally:
        stopped = run(mongo, ["stop", "--mongo-dir", str(data_dir)])
    assert stopped.exit_code == 0 and stopped.output == f"stopped pid {info['pid']}\n"
    with pytest.raises(ProcessLookupError):
        os.kill(info["pid"], 0)
    assert not (data_dir / PID_FILE).exists()
    status = run(mongo, ["status", "--mongo-dir", str(data_dir)])
    assert status.exit_code == 1 and "not running" in status.output
    assert run(mongo, ["stop", "--mongo-dir", str(data_dir)]).output == "not running\n"


def test_stale_or_garbled_pid_file_is_cleared(tmp_path):
    (tmp_path / PID_FILE).write_bytes(orjson.dumps({"pid": 2**22 + 12345, "port": 1}))
    assert embedded_status(tmp_path) is None and not (tmp_path / PID_FILE).exists()
    (tmp_path / PID_FILE).write_text("{not json")
    assert stop_embedded(tmp_path) is None and not (tmp_path / PID_FILE).exists()


def test_given_url_is_used_as_is(mongo_url, tmp_path):
    assert resolve_url(MongoConfig(url=mongo_url, data_dir=tmp_path)) == mongo_url
    assert not any(tmp_path.iterdir())  # nothing started
    client = connect(mongo_url)
    assert client.admin.command("ping")["ok"] == 1
    client.close()


@pytest.mark.parametrize(
    "url, message",
    [
        ("localhost:27017", "bad MongoDB URI"),
        ("mongodb://", "bad MongoDB URI"),
        (
            "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200",
            "cannot reach MongoDB at mongodb://127.0.0.1:1/",
        ),
    ],
)
def test_bad_or_unreachable_url(url, message):
    with pytest.raises(MongoUnavailable, match=message):
        connect(url, timeout_ms=300)


def test_validate_and_redact():
    validate_url("mongodb://a:b@h1:1,h2:2/db?replicaSet=rs")
    with pytest.raises(MongoUnavailable):
        validate_url("mongodb://h:notaport/")
    assert redact("mongodb://alice:s3cret@h:1/db") == "mongodb://alice:***@h:1/db"
    assert redact("mongodb://h:1/db") == "mongodb://h:1/db"


@pytest.mark.parametrize(
    "url, local",
    [
        ("mongodb://127.0.0.1:27017/", True),
        ("mongodb://localhost,127.0.0.2:27018/?replicaSet=rs", True),
        ("mongodb://[::1]:27017/", True),
        ("mongodb://%2Ftmp%2Fmongodb-27017.sock", True),
        ("mongodb://db1.example.com:27017/", False),
        ("mongodb://localhost:1,db2.example.com:2/?replicaSet=rs", False),
        ("mongodb+srv://cluster0.example.com/", False),
        ("not a uri", False),
    ],
)
def test_is_local(url, local):
    assert is_local(url) is local


def test_default_workers_leave_half_the_cpus_to_a_local_server(monkeypatch):
    from importer.importer import default_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert default_workers("mongodb://127.0.0.1:27017/") == 4
    assert default_workers("mongodb://db1.example.com/") == 8
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert default_workers("mongodb://127.0.0.1:27017/") == 1


def test_default_data_dir():
    assert default_data_dir({"XDG_DATA_HOME": "/x"}) == Path("/x/telemetry/mongo")
    assert default_data_dir({"HOME": "/home/u"}) == Path("/home/u/.local/share/telemetry/mongo")


def test_commands_are_in_the_telemetry_group():
    from telemetry.cli import main

    assert {"import", "mongo", "aggregate", "compare"} <= set(main.list_commands(None))
    assert set(main.get_command(None, "mongo").commands) == {"start", "stop", "status"}


def test_stop_never_signals_a_process_that_is_not_our_server(tmp_path):
    """A pid file left by a reboot names a pid now used by something else: it is not killed."""
    import subprocess
    import sys

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / PID_FILE).write_bytes(orjson.dumps({"pid": other.pid, "port": 1}))
        status = CliRunner().invoke(mongo, ["status", "--mongo-dir", str(tmp_path)])
        assert status.exit_code == 1 and "not running" in status.output
        assert "removed the stale pid file" in status.output
        assert not (tmp_path / PID_FILE).exists()

        (tmp_path / PID_FILE).write_bytes(orjson.dumps({"pid": other.pid, "port": 1}))
        stopped = CliRunner().invoke(mongo, ["stop", "--mongo-dir", str(tmp_path)])
        assert stopped.exit_code == 0 and stopped.output.endswith("not running\n")
        assert f"process {other.pid} is not the embedded server" in stopped.output
        assert not (tmp_path / PID_FILE).exists()
        assert other.poll() is None  # still running: never signalled
    finally:
        other.kill()
        other.wait()


def test_mongo_dir_under_a_missing_directory_is_refused(tmp_path):
    from importer.cli import import_

    missing = tmp_path / "nonexistent" / "dir"
    for command, args in ((mongo, ["start"]), (mongo, ["status"]), (import_, [str(tmp_path)])):
        result = CliRunner().invoke(command, [*args, "--mongo-dir", str(missing)])
        assert result.exit_code == 2, result.output
        assert f"directory {missing.parent} does not exist" in result.output
        assert not missing.parent.exists()


def test_relative_mongo_dir_keeps_its_data_where_it_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke
    try:
        started = run(mongo, ["start", "--mongo-dir", "relmongo"])
        assert started.exit_code == 0, started.output
        assert f"data in {tmp_path / 'relmongo' / 'db'}" in started.output
        assert (tmp_path / "relmongo" / "db").is_dir()
        assert not (tmp_path / "relmongo" / "relmongo").exists()
    finally:
        run(mongo, ["stop", "--mongo-dir", "relmongo"])
