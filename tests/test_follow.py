"""``process --follow`` and ``import --follow``: new files picked up, exact counts after SIGTERM and SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from converter.follow import follow
from converter.layout import find_layout_files, read_layout_file
from converter.process import ConverterConfig
from converter.synthetic import make_records, write_layout
from converter.variations import variations
from importer.follow import follow_dataset
from importer.importer import ImportOptions
from pipeline.health import read_status, stage_view
from pipeline.watcher import DirectoryWatcher, Stop
from waiting import wait_for
from receiver.rawlog import encode_record

TELEMETRY = str(Path(sys.executable).parent / "telemetry")


@pytest.fixture
def config(tmp_path, fixtures_dir, histogram_cache):
    return ConverterConfig(storage_path=str(tmp_path / "layout"),
                           telemetry_schema=str(fixtures_dir / "telemetry_schema.json"),
                           histogram_cache=str(histogram_cache), max_file_size=20_000)


class RawDrop:
    """Writes raw logs the way the receiver does: a working name, then a rename to ``.finished``."""

    def __init__(self, directory: Path, base):
        self.directory = directory
        self.base = base
        self.count = 0
        self.doc_ids: list[str] = []
        directory.mkdir(parents=True, exist_ok=True)

    def add(self, records: int = 5) -> Path:
        self.count += 1
        name = f"telemetry.v1.test.1.{1_700_000_000_000 + self.count}"
        path = self.directory / name
        with open(path, "wb") as f:
            for rec in variations(self.base, records, seed=self.count):
                self.doc_ids.append(rec.path.split("/", 1)[0])
                f.write(encode_record(rec.path, rec.data, rec.timestamp))
        finished = path.with_name(name + ".finished")
        os.rename(path, finished)
        return finished


def layout_ids(root: Path) -> Counter:
    return Counter(doc_id for f in find_layout_files(root, include_plain=False)
                   for _, doc_id, _ in read_layout_file(f.path))


def process_args(config: ConverterConfig, raw: Path) -> list[str]:
    return [TELEMETRY, "process", "--follow", str(raw), "--output", config.storage_path,
            "--schema", config.telemetry_schema, "--histogram-cache", config.histogram_cache,
            "--max-file-size", "20000"]


def status_of(path: Path) -> dict:
    return read_status(path) or {}


# --- the watcher ------------------------------------------------------------

@pytest.mark.parametrize("inotify", [True, False])
def test_watcher_sees_renamed_and_linked_files_and_new_directories(tmp_path, inotify):
    root = tmp_path / "w"
    root.mkdir()
    with DirectoryWatcher([root], recursive=True, created=True, use_inotify=inotify,
                          poll_seconds=0.05) as watcher:
        if inotify:
            assert watcher.uses_inotify
        (root / "a.tmp").write_bytes(b"x")
        os.rename(root / "a.tmp", root / "a.finished")
        (root / "sub").mkdir()
        seen = set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (
                root in seen or root / "a.finished" in seen and root / "sub" in seen):
            changes = watcher.wait(0.5)
            seen.update(changes.files)
            seen.update(changes.rescan)
        assert root / "a.finished" in seen or root in seen
        assert root / "sub" in seen or root in seen
        if inotify:  # the new directory is watched: a link published into it is seen
            os.link(root / "a.finished", root / "sub" / "b.zst")
            changes = watcher.wait(5)
            assert root / "sub" / "b.zst" in changes.files


def test_stop_wakes_a_waiting_watcher(tmp_path):
    stop = Stop()
    with DirectoryWatcher([tmp_path]) as watcher:
        threading.Timer(0.2, stop.set).start()
        started = time.monotonic()
        watcher.wait(30, stop)
        assert time.monotonic() - started < 5
    assert stop.is_set()
    stop.close()


# --- process --follow ----------------------------------------------------------

def test_process_follow_converts_files_as_they_are_finished(config, tmp_path, base):
    raw = RawDrop(tmp_path / "raw", base)
    raw.add(4)  # there before the start
    stop = Stop()
    results = []
    thread = threading.Thread(target=follow, args=(config, [raw.directory], stop),
                              kwargs={"on_unit": results.append})
    thread.start()
    try:
        wait_for(lambda: len(results) == 1, what="the first file")
        (raw.directory / "telemetry.v1.test.1.open").write_bytes(b"")  # unfinished: ignored
        for _ in range(3):
            raw.add(5)
        wait_for(lambda: len(results) == 4, what="three new files")
        status = status_of(Path(config.storage_path) / ".state" / "follow-status.json")
        assert status["backlog_files"] == 0 and status["units_done"] == 4
        assert stage_view(status)["up"]
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    ids = layout_ids(Path(config.storage_path))
    assert ids == Counter(raw.doc_ids) and sum(ids.values()) == 19
    assert status_of(Path(config.storage_path) / ".state" / "follow-status.json")["state"] == "stopped"


def test_process_follow_drain_converts_what_is_there_and_returns(config, tmp_path, base):
    raw = RawDrop(tmp_path / "raw", base)
    for _ in range(3):
        raw.add(3)
    stop = Stop()
    stop.drain()
    summary = follow(config, [raw.directory], stop)
    assert summary.records_out == 9 and summary.files == 3
    again = Stop()
    again.drain()
    summary = follow(config, [raw.directory], again)  # a restart: every file known, none hashed
    assert summary.files_skipped == 3 and summary.records_out == 0
    assert layout_ids(Path(config.storage_path)) == Counter(raw.doc_ids)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_process_follow_resumes_after_a_signal_with_exact_counts(config, tmp_path, base, sig):
    raw = RawDrop(tmp_path / "raw", base)
    for _ in range(12):
        raw.add(15)
    status_file = Path(config.storage_path) / ".state" / "follow-status.json"
    done = Path(config.storage_path) / ".state" / "done"
    proc = subprocess.Popen(process_args(config, raw.directory), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: done.is_dir() and len(list(done.glob("*.json"))) >= 2, what="two units")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 0, err
        assert "records:" in out
        assert status_of(status_file)["state"] == "stopped"
    else:
        assert proc.returncode == -signal.SIGKILL
    converted = len(list(done.glob("*.json")))
    assert 2 <= converted < 12, "stopped mid-way"
    assert not any((Path(config.storage_path) / ".work").iterdir()) or sig == signal.SIGKILL
    for _ in range(2):  # more arrive while it is down
        raw.add(15)
    proc = subprocess.Popen(process_args(config, raw.directory), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(list(done.glob("*.json"))) == 14, what="the rest")
        wait_for(lambda: status_of(status_file).get("backlog_files") == 0
                 and status_of(status_file).get("pid") == proc.pid, what="an empty backlog")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    ids = layout_ids(Path(config.storage_path))
    assert ids == Counter(raw.doc_ids)
    assert sum(ids.values()) == 14 * 15 and max(ids.values()) == 1


def test_process_follow_refuses_files_and_retry(config, tmp_path):
    file = tmp_path / "x.finished"
    file.write_bytes(b"")
    r = subprocess.run(process_args(config, file), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not one" in r.stderr
    r = subprocess.run([TELEMETRY, "process", "--follow", "--retry-errors", str(tmp_path),
                        "--output", str(tmp_path / "o")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "--follow" in r.stderr


# --- import --follow ---------------------------------------------------------

def publish(layout: Path, n: int, seed: int) -> list[str]:
    """Publish ``n`` synthetic records as the converter would: complete files appearing at once."""
    records = make_records(n, seed=seed, payload_kb=1)
    staging = layout.parent / f".staging-{seed}"
    write_layout(staging, records)
    for f in find_layout_files(staging, include_plain=False):
        target = layout / f.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(f.path, target)
    return [r.doc_id for r in records]


def import_args(layout: Path, url: str, db: str) -> list[str]:
    return [TELEMETRY, "import", "--follow", str(layout), "--mongo-url", url, "-d", db]


def test_import_follow_imports_files_as_they_appear(tmp_path, mongo_url, mongo_db):
    layout = tmp_path / "layout"
    ids = publish(layout, 30, seed=1)
    stop = Stop()
    chunks = []
    thread = threading.Thread(target=follow_dataset,
                              args=(layout, mongo_url, ImportOptions(database=mongo_db.name), stop),
                              kwargs={"on_chunk": chunks.append})
    thread.start()
    try:
        wait_for(lambda: mongo_db.payloads.count_documents({}) == 30, what="the first files")
        ids += publish(layout, 40, seed=2)  # new dimension directories appear too
        (layout / "x.v2.log").write_text("half written plain file\n")  # never imported
        wait_for(lambda: mongo_db.payloads.count_documents({}) == 70, what="the new files")
        status = read_status(layout / ".state" / "import-status.json")
        wait_for(lambda: read_status(layout / ".state" / "import-status.json")["backlog_files"] == 0,
                 what="an empty backlog")
        assert stage_view(status)["up"]
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    assert sorted(d["_id"] for d in mongo_db.payloads.find({}, {"_id": 1})) == sorted(ids)
    assert sum(c.inserted for c in chunks) == 70 and sum(c.duplicates for c in chunks) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_import_follow_resumes_after_a_signal_with_exact_counts(tmp_path, mongo_url, mongo_db, sig):
    layout = tmp_path / "layout"
    ids = []
    for seed in range(4):
        ids += publish(layout, 200, seed=seed)
    args = import_args(layout, mongo_url, mongo_db.name) + ["--batch-size", "50"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: mongo_db.payloads.count_documents({}) > 0, what="the first records")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == (0 if sig == signal.SIGTERM else -signal.SIGKILL), err
    if sig == signal.SIGTERM:  # the chunk in hand was finished: no file is left started
        assert mongo_db.imports.count_documents({"state": "started"}) == 0
    ids += publish(layout, 50, seed=99)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: mongo_db.payloads.count_documents({}) == len(ids), timeout=120,
                 what="every record")
        wait_for(lambda: (read_status(layout / ".state" / "import-status.json") or {}).get(
            "backlog_files") == 0, what="an empty backlog")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert sorted(d["_id"] for d in mongo_db.payloads.find({}, {"_id": 1})) == sorted(ids)
    assert mongo_db.imports.count_documents({"state": {"$ne": "done"}}) == 0


def test_process_follow_with_worker_processes(config, tmp_path, base):
    raw = RawDrop(tmp_path / "raw", base)
    for _ in range(4):
        raw.add(4)
    config.workers = 2
    stop = Stop()
    stop.drain()
    summary = follow(config, [raw.directory], stop)
    assert summary.files == 4 and summary.records_out == 16
    assert layout_ids(Path(config.storage_path)) == Counter(raw.doc_ids)


def test_import_follow_keeps_a_bad_file_waiting_and_imports_the_rest(tmp_path, mongo_url,
                                                                     mongo_db):
    layout = tmp_path / "layout"
    ids = publish(layout, 20, seed=3)
    bad = layout / ("saved_session/Firefox/release/23.0.1/x.20131101.v2.log." + "ab" * 16 + ".zst")
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"not zstd at all")
    stop = Stop()
    status_file = layout / ".state" / "import-status.json"
    thread = threading.Thread(target=follow_dataset,
                              args=(layout, mongo_url, ImportOptions(database=mongo_db.name), stop))
    thread.start()
    try:
        wait_for(lambda: mongo_db.payloads.count_documents({}) == 20, what="the good files")
        status = wait_for(lambda: (lambda s: s if s and s.get("errors") else None)(
            read_status(status_file)), what="the error reported")
        assert status["backlog_files"] == 1 and bad.name in status["last_error"]
        assert stage_view(status)["lag_seconds"] > 0
    finally:
        stop.set()
        thread.join(60)
    assert sorted(d["_id"] for d in mongo_db.payloads.find({}, {"_id": 1})) == sorted(ids)
    assert read_status(status_file)["backlog_files"] == 1  # still waiting, never dropped


def test_import_follow_without_a_server_says_so(tmp_path):
    r = subprocess.run([TELEMETRY, "import", "--follow", str(tmp_path / "layout"),
                        "--mongo-url", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
