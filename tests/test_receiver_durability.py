"""Durability and files: every 200 survives a killed worker; shutdown, rotation, failed writes."""

from __future__ import annotations

import asyncio
import http.client
import os
import random
import resource
import signal
import socket
import threading
import time

import pytest

from receiver.config import ReceiverConfig
from receiver.errors import StorageError
from receiver.logwriter import LogWriter, finalize_file, finalize_unfinished
from receiver.rawlog import FINISHED_SUFFIX, RawLogReader, encode_record
from receiver.service import start_receiver

PREFIX = "/submit/telemetry/"
TS = 1_700_000_000_000


def all_records(directory) -> dict[str, bytes]:
    out = {}
    for p in directory.iterdir():
        for rec in RawLogReader(p):
            out[rec.path] = rec.data
    return out


def assert_all_finished(directory):
    names = [p.name for p in directory.iterdir()]
    assert names and all(n.endswith(FINISHED_SUFFIX) for n in names), names
    for p in directory.iterdir():
        reader = RawLogReader(p)
        for _ in reader:
            pass
        assert not reader.stats.errors, reader.stats.errors


class Load:
    """Threads posting unique submissions on keep-alive connections, remembering every 200."""

    def __init__(self, host, port, threads=6):
        self.host, self.port = host, port
        self.acked: dict[str, bytes] = {}
        self.failures = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(threads)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _run(self, tid):
        rnd = random.Random(tid)
        conn = None
        n = 0
        while not self.stop.is_set():
            n += 1
            path = f"doc-{tid}-{n}/saved-session/Firefox/23.0/release/2013"
            body = rnd.randbytes(rnd.randint(1, 3000))
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                conn.request("POST", PREFIX + path, body=body)
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    with self.lock:
                        self.acked[path] = body
                else:
                    self.failures += 1
            except (OSError, http.client.HTTPException):
                self.failures += 1
                if conn is not None:
                    conn.close()
                conn = None


def _busy_worker(r, run):
    """A worker that is writing a file right now (so the kill hits acknowledged work)."""
    pids = r.worker_pids()
    writing = {int(p.name.split(".")[-2]) for p in r.log_path.iterdir()
               if not p.name.endswith(FINISHED_SUFFIX)}
    busy = [p for p in pids if p in writing]
    return (busy or pids)[run % len(busy or pids)]


def _config(tmp_path, **kw):
    return ReceiverConfig(port=0, log_path=str(tmp_path / "logs"), motd="", **kw)


@pytest.mark.parametrize("run, front", [(0, "fast"), (1, "fast"), (2, "fast"), (3, "tornado")])
def test_sigkill_worker_under_load_loses_nothing(tmp_path, run, front):
    with start_receiver(_config(tmp_path, workers=2, http_server=front)) as r:
        with Load(r.host, r.port) as load:
            killed = []
            for _ in range(2):
                time.sleep(0.6)
                victim = _busy_worker(r, run)
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
                r.wait_for_workers(exclude=tuple(killed))
            time.sleep(0.5)
        assert r.stop() == 0
    assert len(load.acked) > 50
    stored = all_records(r.log_path)
    missing = [p for p in load.acked if p not in stored]
    assert not missing, f"{len(missing)} acknowledged submissions missing"
    assert all(stored[p] == body for p, body in load.acked.items())
    assert_all_finished(r.log_path)
    # The killed workers' files were finalized under their own pids.
    pids = {int(p.name.split(".")[-3]) for p in r.log_path.iterdir()}
    assert set(killed) <= pids


@pytest.mark.parametrize("front", ["fast", "tornado"])
def test_sigterm_with_requests_in_flight(tmp_path, front):
    with start_receiver(_config(tmp_path, workers=2, http_server=front)) as r:
        # A request whose body is still coming when SIGTERM arrives.
        slow = socket.create_connection((r.host, r.port), timeout=10)
        slow.sendall(b"POST /submit/telemetry/slow HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 10\r\n\r\n12345")
        with Load(r.host, r.port, threads=4) as load:
            time.sleep(0.7)
            r.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            slow.sendall(b"67890")
            reply = slow.recv(1000)
            assert r.process.wait(30) == 0
        slow.close()
    assert reply.startswith(b"HTTP/1.1 200")
    stored = all_records(r.log_path)
    assert stored["slow"] == b"1234567890"
    assert load.acked and all(stored[p] == b for p, b in load.acked.items())
    assert_all_finished(r.log_path)


def test_rotation_by_size(tmp_path):
    with start_receiver(_config(tmp_path, workers=1, max_log_size=2000)) as r:
        for i in range(10):
            conn = http.client.HTTPConnection(r.host, r.port, timeout=10)
            conn.request("POST", f"{PREFIX}size-{i}", body=b"x" * 500)
            assert conn.getresponse().status == 200
            conn.close()
        finished = [p for p in r.log_path.iterdir() if p.name.endswith(FINISHED_SUFFIX)]
        assert len(finished) >= 2  # rotated while running, not only at shutdown
        assert all(p.stat().st_size >= 2000 for p in finished)
    assert sorted(all_records(r.log_path)) == sorted(f"size-{i}" for i in range(10))
    assert_all_finished(r.log_path)


def test_rotation_by_age(tmp_path):
    with start_receiver(_config(tmp_path, workers=1, max_log_age_ms=300)) as r:
        conn = http.client.HTTPConnection(r.host, r.port, timeout=10)
        conn.request("POST", PREFIX + "age", body=b"x")
        assert conn.getresponse().status == 200
        deadline = time.time() + 10
        while time.time() < deadline and not any(
                p.name.endswith(FINISHED_SUFFIX) for p in r.log_path.iterdir()):
            time.sleep(0.05)
        assert_all_finished(r.log_path)
        assert all_records(r.log_path) == {"age": b"x"}


def test_dead_receiver_files_finalized_at_start(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    host = socket.gethostname()
    # A pid that cannot be alive: a file left by a receiver killed mid-write.
    orphan = logs / f"telemetry.v1.{host}.4194999.{TS}"
    torn = encode_record("torn", b"x" * 100, TS)[:40]
    orphan.write_bytes(encode_record("left", b"behind", TS) + torn)
    with start_receiver(_config(tmp_path, workers=1)) as r:
        assert (logs / (orphan.name + FINISHED_SUFFIX)).exists()
    assert all_records(logs) == {"left": b"behind"}
    assert_all_finished(logs)


def test_finalize_file(tmp_path):
    good = encode_record("a", b"1", TS) + encode_record("b", b"2", TS)
    p = tmp_path / "t.v1.h.1.2"
    p.write_bytes(good + encode_record("c", b"333", TS)[:-1])
    done = finalize_file(p)
    assert done.name == "t.v1.h.1.2.finished" and done.read_bytes() == good
    empty = tmp_path / "t.v1.h.1.3"
    empty.write_bytes(b"\x1e\x01")
    assert finalize_file(empty) is None and not empty.exists()
    live = tmp_path / f"telemetry.v1.h.{os.getpid()}.5"
    live.write_bytes(good)
    assert finalize_unfinished(tmp_path, "telemetry", "h") == []  # our own pid is alive
    [done] = finalize_unfinished(tmp_path, "telemetry", "h", skip_live=False)
    assert done.name == live.name + FINISHED_SUFFIX


def test_failed_write_abandons_the_file(tmp_path):
    """A real kernel error (file size limit: EFBIG) mid-record: no half record, then good ones."""

    async def scenario():
        w = LogWriter(tmp_path, "telemetry", hostname="h")
        recs = [encode_record(f"r{i}", b"x" * 280, TS) for i in range(4)]  # 300 bytes each
        for rec in recs[:3]:
            await w.append(rec)
        old = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, old[1]))
        try:
            with pytest.raises(StorageError) as err:
                await w.append(recs[3])  # 100 bytes fit, then EFBIG
            assert not err.value.disk_full
            await w.append(encode_record("after", b"ok", TS))  # a fresh file
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old)
        await w.close()
        return recs

    recs = asyncio.run(scenario())
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2 and all(f.name.endswith(FINISHED_SUFFIX) for f in files)
    assert b"".join(recs[:3]) in [f.read_bytes() for f in files]
    expected = {"r0": b"x" * 280, "r1": b"x" * 280, "r2": b"x" * 280, "after": b"ok"}
    assert all_records(tmp_path) == expected
    assert_all_finished(tmp_path)


@pytest.mark.parametrize("errno_name, code",
                         [("ENOSPC", 507), ("EDQUOT", 507), ("EIO", 500), ("EFBIG", 500)])
def test_storage_failure_codes(errno_name, code):
    import errno

    from receiver.app import ReceiverApp

    assert ReceiverApp.storage_failure(StorageError("x", getattr(errno, errno_name))) == code
    assert ReceiverApp.storage_failure(RuntimeError("x")) == 500


def test_group_commit_shares_fsyncs(tmp_path):
    async def scenario():
        w = LogWriter(tmp_path, "telemetry", hostname="h")
        await asyncio.gather(*(w.append(encode_record(f"g{i}", b"d", TS)) for i in range(200)))
        await w.close()
        return w.metrics.snapshot()

    snap = asyncio.run(scenario())
    assert snap["records"] == 200
    assert snap["batches"] < 200  # many records per fsync
    assert len(all_records(tmp_path)) == 200


def test_sighup_finishes_files_and_reopens_stats_log(tmp_path):
    stats = tmp_path / "stats.log"
    with start_receiver(_config(tmp_path, workers=2, stats_log_file=str(stats))) as r:
        for i in range(4):
            conn = http.client.HTTPConnection(r.host, r.port, timeout=10)
            conn.request("POST", f"{PREFIX}hup-{i}", body=b"x")
            assert conn.getresponse().status == 200
            conn.close()
        pids = r.worker_pids()
        moved = tmp_path / "stats.log.1"
        stats.rename(moved)
        r.process.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while time.time() < deadline and not (
                stats.exists()
                and all(p.name.endswith(FINISHED_SUFFIX) for p in r.log_path.iterdir())):
            time.sleep(0.05)
        assert_all_finished(r.log_path)  # finished while still running
        assert stats.exists()
        assert len(moved.read_bytes().splitlines()) == 4  # buffered lines went to the old file
        assert r.worker_pids() == pids  # no worker was restarted
        conn = http.client.HTTPConnection(r.host, r.port, timeout=10)
        conn.request("POST", f"{PREFIX}after-hup", body=b"y")
        assert conn.getresponse().status == 200
    assert len(all_records(r.log_path)) == 5
    assert b"after-hup" in stats.read_bytes()


def test_metrics_add_up_over_workers(tmp_path):
    import requests

    with start_receiver(_config(tmp_path, workers=2)) as r:
        for i in range(20):
            assert requests.post(r.submit_url(f"m-{i}"), data=b"abc", timeout=10).status_code == 200
        time.sleep(0.6)  # workers publish every 250 ms
        text = requests.get(r.url + "/metrics", timeout=10).text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert float(values["receiver_stored_records_total"]) == 20
    assert float(values['receiver_requests_total{code="200"}']) == 20
    # Both workers took some.
    assert len({int(p.name.split(".")[-3]) for p in r.log_path.iterdir()}) == 2


def _post(r, path, body=b"x"):
    conn = http.client.HTTPConnection(r.host, r.port, timeout=10)
    try:
        conn.request("POST", PREFIX + path, body=body)
        return conn.getresponse().status
    finally:
        conn.close()


def test_sigint_stops_cleanly(tmp_path):
    with start_receiver(_config(tmp_path, workers=2)) as r:
        assert all(_post(r, f"int-{i}") == 200 for i in range(6))
        r.process.send_signal(signal.SIGINT)
        assert r.process.wait(30) == 0
    assert sorted(all_records(r.log_path)) == sorted(f"int-{i}" for i in range(6))
    assert_all_finished(r.log_path)


def test_sigterm_to_one_worker_recycles_it(tmp_path):
    with start_receiver(_config(tmp_path, workers=1)) as r:
        assert _post(r, "before") == 200
        [old] = r.worker_pids()
        os.kill(old, signal.SIGTERM)
        [new] = r.wait_for_workers(exclude=(old,))
        assert new != old
        # The old worker finished its own file on the way out.
        names = [p.name for p in r.log_path.iterdir()]
        assert len(names) == 1 and names[0].endswith(FINISHED_SUFFIX) and f".{old}." in names[0]
        assert _post(r, "after") == 200
    assert sorted(all_records(r.log_path)) == ["after", "before"]
    assert_all_finished(r.log_path)


def test_unwritable_log_directory_answers_500_then_recovers(tmp_path):
    blocker = tmp_path / "logs"

    async def scenario():
        w = LogWriter(blocker, "telemetry", hostname="h")
        blocker.write_text("a file where the directory should be")
        with pytest.raises(StorageError) as err:
            await w.append(encode_record("a", b"1", TS))
        blocker.unlink()
        await w.append(encode_record("b", b"2", TS))  # the directory is back: writes resume
        await w.close()
        return err.value

    err = asyncio.run(scenario())
    assert not err.disk_full and "logs" in str(err)
    assert all_records(blocker) == {"b": b"2"}
