"""Reliability campaign: every stage killed, starved and fed faults, with the figures in one table.

Each scenario is one small function that runs one trial on loopback and
returns a :class:`Trial`, counted independently of the stage under test:
what the client got a 200 for, what the raw logs hold, what a clean run
produced, what MongoDB and S3 hold.  ``run_scenario`` runs a scenario N times
and folds the trials into one row:

    scenario | trials | acknowledged | stored | lost | duplicated | crashes | recovery

- acknowledged: what the stage promised to keep (200s, records of a clean
  run, files deleted locally after upload, ...), summed over the trials;
- stored: how many of those were found where they belong afterwards;
- lost: acknowledged and not found (must be 0);
- duplicated: stored more than once (judged against the stage's documented
  bound, see docs/reliability.md; ``over`` in the notes counts the excess);
- crashes: a process that died on its own, a traceback, a corrupt file, a
  wrong answer code, or a trial that raised;
- recovery: median / max seconds from the fault until the stage did its
  job again (a replacement worker up, the first 200 after a restart, a
  rerun finished, ...).

Run it:

    .venv/bin/python bench/chaos.py            # the issue's trial counts
    .venv/bin/python bench/chaos.py --quick    # 1-2 trials each, about two minutes
    .venv/bin/python bench/chaos.py --only receiver --trials 3 --json out.json

Adding a scenario is a function ``def my_case(ctx, trial) -> Trial`` and
one line in ``SCENARIOS``.  Scenarios need root for the disk-full case (a
2 MiB tmpfs is mounted and always unmounted in ``finally``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gzip
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before bench/ (whose receiver.py would shadow the package)
sys.path.append(str(ROOT / "bench"))

from faultproxy import FaultProxy  # noqa: E402

from receiver.config import ReceiverConfig  # noqa: E402
from receiver.rawlog import FINISHED_SUFFIX, RawLogReader  # noqa: E402
from receiver.service import start_receiver  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
PREFIX = "/submit/telemetry/"
REPO, REV = "releases/mozilla-release", "a55c55edf302"


@dataclass
class Trial:
    acknowledged: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    over_bound: int = 0  # duplicates beyond what the stage documents
    crashes: int = 0
    recovery: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Row:
    scenario: str
    trials: int = 0
    acknowledged: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    over_bound: int = 0
    crashes: int = 0
    recoveries: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, t: Trial) -> None:
        self.trials += 1
        self.acknowledged += t.acknowledged
        self.stored += t.stored
        self.lost += t.lost
        self.duplicated += t.duplicated
        self.over_bound += t.over_bound
        self.crashes += t.crashes
        if t.recovery is not None:
            self.recoveries.append(t.recovery)
        for n in t.notes:
            if n not in self.notes and len(self.notes) < 6:
                self.notes.append(n)

    def recovery(self) -> str:
        if not self.recoveries:
            return "-"
        return f"{statistics.median(self.recoveries):.2f} / {max(self.recoveries):.2f}"

    def ok(self) -> bool:
        return self.lost == 0 and self.over_bound == 0 and self.crashes == 0


@dataclass
class Context:
    """What trials share: a work directory, the python to run stages with, shared servers."""

    work: Path
    python: str = sys.executable
    rng: random.Random = field(default_factory=lambda: random.Random(16))
    cache: dict = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)
    stage_log: Path | None = None  # where the stages' stderr goes (fd 2 of children)

    def tmp(self, name: str) -> Path:
        d = Path(tempfile.mkdtemp(prefix=name + "-", dir=self.work))
        return d

    def close(self) -> None:
        for c in reversed(self.closers):
            with contextlib.suppress(Exception):
                c()


# --- helpers -----------------------------------------------------------------

def telemetry(ctx: Context, *args: str) -> list[str]:
    return [ctx.python, "-c", "from telemetry.cli import main; main()", *args]


def run_stage(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def crashed(proc: subprocess.CompletedProcess, allowed: tuple[int, ...] = (0,)) -> str | None:
    """Why a finished stage counts as a crash (a traceback, or an exit code not allowed)."""
    if "Traceback (most recent call last)" in (proc.stderr or ""):
        return "traceback: " + proc.stderr.strip().splitlines()[-1][:160]
    if proc.returncode not in allowed:
        return f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-160:]}"
    return None


def kill_group_after(proc: subprocess.Popen, delay: float) -> float | None:
    """SIGKILL the process group of ``proc`` after ``delay`` s, unless it ended first."""
    try:
        proc.wait(delay)
        return None
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    proc.wait()
    return killed


def kill_and_rerun(cmd: list[str], delay: float, t: Trial, what: str) -> None:
    """Start ``cmd``, SIGKILL its process group after ``delay`` s, run it again to the end:
    the recovery time and a crash of the rerun go into ``t``."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    killed = kill_group_after(proc, delay)
    if killed is None:
        t.notes.append(f"{what} ended before the kill")
        killed = time.monotonic()
    rerun = run_stage(cmd)
    t.recovery = time.monotonic() - killed
    if why := crashed(rerun):
        t.crashes += 1
        t.notes.append(why)


def raw_records(directory: Path) -> tuple[collections.Counter, list[str]]:
    """path -> copies over every raw log of ``directory``, and the read errors (corruption)."""
    seen: collections.Counter = collections.Counter()
    errors = []
    for p in sorted(directory.iterdir()):
        if not p.is_file():
            continue
        reader = RawLogReader(p)
        for rec in reader:
            seen[rec.path] += 1
        errors += [f"{p.name}: {e}" for e in reader.stats.errors]
        if not p.name.endswith(FINISHED_SUFFIX):
            errors.append(f"{p.name}: not finished after shutdown")
    return seen, errors


def compare(acked: dict[str, bytes] | set[str], stored: collections.Counter, t: Trial) -> None:
    t.acknowledged += len(acked)
    t.stored += sum(1 for p in acked if stored.get(p, 0) > 0)
    t.lost += sum(1 for p in acked if stored.get(p, 0) == 0)
    t.duplicated += sum(n - 1 for n in stored.values() if n > 1)


class Load:
    """Threads posting unique submissions on keep-alive connections, remembering each 200.

    ``port`` may change while it runs (a restarted receiver); a refused
    connection is retried after 20 ms, as Firefox would retry later.
    """

    def __init__(self, host: str, port: int, threads: int = 4, tag: str = "t", size=(200, 3000)):
        self.host, self.port = host, port
        self.tag, self.size = tag, size
        self.acked: dict[str, float] = {}
        self.codes: collections.Counter = collections.Counter()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(threads)]

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def first_ack_after(self, moment: float) -> float | None:
        with self.lock:
            after = [t for t in self.acked.values() if t >= moment]
        return min(after) - moment if after else None

    def _run(self, tid: int) -> None:
        rnd = random.Random(tid)
        conn = None
        n = 0
        while not self.stop.is_set():
            n += 1
            path = f"{self.tag}-{tid}-{n}/saved-session/Firefox/23.0/release/2013"
            body = rnd.randbytes(rnd.randint(*self.size))
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                conn.request("POST", PREFIX + path, body=body)
                resp = conn.getresponse()
                resp.read()
                with self.lock:
                    self.codes[resp.status] += 1
                    if resp.status == 200:
                        self.acked[path] = time.monotonic()
            except (OSError, http.client.HTTPException):
                with self.lock:
                    self.codes["conn"] += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.02)


def receiver_config(log_path: Path, **kw) -> ReceiverConfig:
    return ReceiverConfig(port=kw.pop("port", 0), log_path=str(log_path), motd="", **kw)


# --- receiver ------------------------------------------------------------------

def receiver_worker_kill(ctx: Context, trial: int) -> Trial:
    """SIGKILL one busy worker of two while four clients post (each front end in turn)."""
    from receiver.config import HTTP_SERVERS

    t = Trial()
    d = ctx.tmp("recv-worker")
    front = sorted(HTTP_SERVERS)[trial % len(HTTP_SERVERS)]
    with start_receiver(receiver_config(d / "logs", workers=2, http_server=front)) as r:
        with Load(r.host, r.port, tag=f"w{trial}") as load:
            time.sleep(0.5 + ctx.rng.random() * 0.5)
            pids = r.worker_pids()
            writing = {int(p.name.split(".")[-2]) for p in r.log_path.iterdir()
                       if not p.name.endswith(FINISHED_SUFFIX)}
            candidates = [p for p in pids if p in writing] or pids
            victim = candidates[trial % len(candidates)]
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            r.wait_for_workers(exclude=(victim,))
            t.recovery = time.monotonic() - killed
            time.sleep(0.3)
        code = r.stop()
    _check_receiver_trial(d / "logs", load, code, t, allowed={200, "conn"})
    return t


def receiver_service_kill(ctx: Context, trial: int) -> Trial:
    """SIGKILL the supervisor and every worker at once under load, restart on the same port."""
    t = Trial()
    d = ctx.tmp("recv-service")
    r = start_receiver(receiver_config(d / "logs", workers=2))
    port = r.port
    with Load(r.host, port, tag=f"s{trial}") as load:
        try:
            time.sleep(0.5 + ctx.rng.random() * 0.5)
            pids = r.worker_pids() + [r.pid]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            r.process.wait()
            r._cleanup()
            for pid in pids:  # every worker gone before the restart
                while _alive(pid):
                    time.sleep(0.01)
            r = start_receiver(receiver_config(d / "logs", workers=2, port=port))
            deadline = time.monotonic() + 10
            while load.first_ack_after(killed) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            t.recovery = load.first_ack_after(killed)
            time.sleep(0.3)
        finally:
            load.stop.set()
    code = r.stop()
    _check_receiver_trial(d / "logs", load, code, t, allowed={200, "conn"},
                          who="restarted receiver")
    return t


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours is gone for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _unexpected_codes(load: Load, t: Trial, allowed: set) -> None:
    bad = {k: v for k, v in load.codes.items() if k not in allowed}
    if bad:
        t.crashes += 1
        t.notes.append(f"unexpected answers {bad}")


@contextlib.contextmanager
def small_disk(path: Path, size: str = "2m"):
    """A real 2 MiB tmpfs at ``path``, unmounted on the way out whatever happens."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def receiver_disk_full(ctx: Context, trial: int) -> Trial:
    """Fill a 2 MiB tmpfs under the receiver: 507, no corrupt file, 200 again once space returns.

    Without the right to mount (not root, or a container without
    CAP_SYS_ADMIN), or with ``--no-tmpfs``, the receiver runs under
    RLIMIT_FSIZE instead: a write past the limit fails with EFBIG, answered
    500, and the next file starts empty, so the "space returns" at once.
    """
    t = Trial()
    d = ctx.tmp("recv-disk")
    disk = d / "disk"
    try:
        if ctx.cache.get("no_tmpfs"):
            raise OSError("--no-tmpfs")
        mounted = small_disk(disk)
        mounted.__enter__()
    except (OSError, subprocess.CalledProcessError) as e:
        t.notes.append(f"RLIMIT_FSIZE 256 KiB (no tmpfs: {str(e)[:60]})")
        return _disk_full_rlimit(ctx, trial, d, t)
    try:
        return _disk_full_tmpfs(ctx, trial, disk, t)
    finally:
        mounted.__exit__(None, None, None)


def _disk_full_tmpfs(ctx: Context, trial: int, disk: Path, t: Trial) -> Trial:
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (1_400_000 + ctx.rng.randrange(200_000)))
    with start_receiver(receiver_config(disk / "logs", workers=1)) as r:
        with Load(r.host, r.port, threads=3, tag=f"d{trial}", size=(2000, 30000)) as load:
            _wait_for_code(load, 507, t)
            full_at = time.monotonic()
            time.sleep(0.3)
            # While full: what is on disk reads back cleanly.
            _, mid_errors = raw_records_unfinished_ok(disk / "logs")
            if mid_errors:
                t.crashes += 1
                t.notes.append("corrupt while full: " + mid_errors[0])
            filler.unlink()
            freed = time.monotonic()
            _wait_for_ack_after(load, freed, t)
            time.sleep(0.3)
        code = r.stop()
    _check_receiver_trial(disk / "logs", load, code, t, allowed={200, 507, "conn"})
    t.notes.append(f"tmpfs 2 MiB: 507s {load.codes.get(507, 0)} in {freed - full_at:.1f}s")
    return t


def _disk_full_rlimit(ctx: Context, trial: int, d: Path, t: Trial) -> Trial:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))  # inherited by the receiver
    try:
        r = start_receiver(receiver_config(d / "logs", workers=1))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    with r:
        with Load(r.host, r.port, threads=3, tag=f"f{trial}", size=(2000, 30000)) as load:
            _wait_for_code(load, 500, t)
            _wait_for_ack_after(load, time.monotonic(), t)
            time.sleep(0.3)
        code = r.stop()
    _check_receiver_trial(d / "logs", load, code, t, allowed={200, 500, "conn"})
    return t


def _wait_for_code(load: Load, code: int, t: Trial) -> None:
    deadline = time.monotonic() + 20
    while not load.codes.get(code) and time.monotonic() < deadline:
        time.sleep(0.02)
    if not load.codes.get(code):
        t.crashes += 1
        t.notes.append(f"no {code} while the disk was full: {dict(load.codes)}")


def _wait_for_ack_after(load: Load, moment: float, t: Trial) -> None:
    deadline = moment + 10
    while load.first_ack_after(moment) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    t.recovery = load.first_ack_after(moment)
    if t.recovery is None:
        t.crashes += 1
        t.notes.append("no 200 after space returned")


def _check_receiver_trial(logs: Path, load: Load, code: int, t: Trial, allowed: set,
                          who: str = "receiver") -> None:
    """A receiver trial's verdict: its exit code, its raw logs against what was acknowledged."""
    if code != 0:
        t.crashes += 1
        t.notes.append(f"{who} exit {code}")
    stored, errors = raw_records(logs)
    t.crashes += bool(errors)
    t.notes += errors[:1]
    compare(load.acked, stored, t)
    _unexpected_codes(load, t, allowed=allowed)


def raw_records_unfinished_ok(directory: Path) -> tuple[collections.Counter, list[str]]:
    seen: collections.Counter = collections.Counter()
    errors = []
    for p in sorted(directory.iterdir()):
        reader = RawLogReader(p)
        for rec in reader:
            seen[rec.path] += 1
        errors += [f"{p.name}: {e}" for e in reader.stats.errors]
    return seen, errors


# --- converter -------------------------------------------------------------------

def _converter_input(ctx: Context) -> tuple[Path, Path, list]:
    """Raw logs of fixture-ping variations, the histogram cache, and a clean run's records."""
    if "converter" not in ctx.cache:
        from converter.process import ConverterConfig, process
        from converter.revisions import write_revision
        from converter.variations import base_record, write_variations

        d = ctx.tmp("convert-input")
        raw, cache = d / "raw", d / "cache"
        raw.mkdir()
        definitions = FIXTURES / "histograms" / f"{REV}.Histograms.json"
        write_revision(cache, REPO, REV, definitions.read_bytes())
        base = base_record(FIXTURES / "raw" / "telemetry1.v1.log")
        for i in range(6):
            write_variations(raw / f"telemetry.v1.chaos.{i}.1.finished", base, 250, seed=i)
        clean = d / "clean"
        process(ConverterConfig(storage_path=str(clean), histogram_cache=str(cache),
                                histogram_server=None, workers=1), [raw], progress=False)
        ctx.cache["converter"] = (raw, cache, layout_records(clean))
    return ctx.cache["converter"]


def layout_records(root: Path) -> collections.Counter:
    """(layout path without its unique suffix, docId, line) -> copies, over published files."""
    from converter.layout import find_layout_files, read_layout_file

    out: collections.Counter = collections.Counter()
    for f in find_layout_files(root, include_plain=False):
        base = f.relpath.split(".v2.log")[0]
        for _, doc_id, text in read_layout_file(f.path):
            out[(base, doc_id, text)] += 1
    return out


def converter_kill(ctx: Context, trial: int) -> Trial:
    """SIGKILL ``telemetry process`` (and its workers) mid-run, rerun: output equals a clean run's."""
    t = Trial()
    raw, cache, clean = _converter_input(ctx)
    out = ctx.tmp("convert") / "out"
    cmd = telemetry(ctx, "process", str(raw), "--output", str(out), "--histogram-cache", str(cache),
                    "--workers", "2", "--max-file-size", "200000", "--no-progress")
    kill_and_rerun(cmd, 0.8 + ctx.rng.random() * 3.0, t, "run")
    got = layout_records(out)
    _compare_counters(clean, got, t)
    return t


def converter_follow_kill(ctx: Context, trial: int) -> Trial:
    """SIGKILL ``telemetry process --follow`` while raw logs arrive, restart it: a clean run's output."""
    t = Trial()
    raw, cache, clean = _converter_input(ctx)
    d = ctx.tmp("follow")
    incoming, out = d / "incoming", d / "out"
    incoming.mkdir()
    sources = sorted(raw.iterdir())

    def deliver(p: Path) -> None:  # as the receiver does: write, then rename to .finished
        tmp = incoming / (p.name[: -len(FINISHED_SUFFIX)])
        shutil.copyfile(p, tmp)
        os.replace(tmp, incoming / p.name)

    cmd = telemetry(ctx, "process", "--follow", str(incoming), "--output", str(out),
                    "--histogram-cache", str(cache), "--no-progress")
    for p in sources[:2]:
        deliver(p)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    kill_at = time.monotonic() + 1.0 + ctx.rng.random() * 4.0
    for p in sources[2:4]:
        time.sleep(0.5)
        deliver(p)
    time.sleep(max(0.0, kill_at - time.monotonic()))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    proc.wait()
    for p in sources[4:]:
        deliver(p)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        got = layout_records(out)
        while sum(got.values()) < sum(clean.values()) and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
            got = layout_records(out)
        t.recovery = time.monotonic() - killed
        time.sleep(0.5)  # anything published twice would show now
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
    if why := crashed(subprocess.CompletedProcess(cmd, proc.returncode, "", err)):
        t.crashes += 1
        t.notes.append("follower after SIGTERM: " + why)
    _compare_counters(clean, layout_records(out), t)
    return t


def _compare_counters(expected: collections.Counter, got: collections.Counter, t: Trial) -> None:
    t.acknowledged += sum(expected.values())
    t.stored += sum(min(n, got.get(k, 0)) for k, n in expected.items())
    t.lost += sum(max(0, n - got.get(k, 0)) for k, n in expected.items())
    extra = sum(max(0, n - expected.get(k, 0)) for k, n in got.items())
    t.duplicated += extra
    t.over_bound += extra  # the converter promises exactly-once output


# --- importer and MongoDB ----------------------------------------------------------

def _import_input(ctx: Context) -> tuple[Path, set[str]]:
    if "import" not in ctx.cache:
        from converter.synthetic import make_records, write_layout

        d = ctx.tmp("import-input")
        records = make_records(3000, seed=16, payload_kb=2)
        write_layout(d / "layout", records, records_per_file=150)
        ctx.cache["import"] = (d / "layout", {r.doc_id for r in records})
    return ctx.cache["import"]


def _import_cmd(ctx: Context, layout: Path, url: str, db: str) -> list[str]:
    """``telemetry import`` with the Histograms.json the synthetic records name, so that the
    aggregates compared hold histograms too, not only simple measures."""
    if "histogram-cache" not in ctx.cache:
        from converter.revisions import write_revision

        cache = ctx.tmp("histogram-cache")
        rev = "a55c55edf302"
        write_revision(cache, "releases/mozilla-release", rev,
                       (ROOT / "tests" / "fixtures" / "histograms" / f"{rev}.Histograms.json")
                       .read_bytes())
        ctx.cache["histogram-cache"] = str(cache)
    return telemetry(ctx, "import", str(layout), "--mongo-url", url, "-d", db, "--workers", "2",
                     "--histogram-cache", ctx.cache["histogram-cache"])


def _shared_mongo(ctx: Context) -> str:
    if "mongo" not in ctx.cache:
        from importer.mongo import start_embedded

        server = start_embedded(ctx.tmp("mongo"), storage_path=":memory:", detach=False,
                                pid_file=False)
        ctx.closers.append(server.stop)
        ctx.cache["mongo"] = server.url
    return ctx.cache["mongo"]


def _aggregates(url: str, db: str) -> dict:
    """The packaged pipelines' rows, to compare a recovered import with a clean one."""
    import pymongo

    from aggregations.pipelines import run_pipeline

    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=10000)
    try:
        coll = client[db]["payloads"]
        out = {"submissions": run_pipeline(coll, "submissions"),
               "os_distribution": run_pipeline(coll, "os_distribution")}
        # The pre-computed aggregates the import keeps (docs/aggregates.md), bookkeeping aside:
        # the write counter and the write units a document lists (random ids, per run).
        for name in ("aggregates", "aggregates_metrics", "aggregates_options", "aggregates_dates"):
            out[name] = sorted(({k: v for k, v in d.items() if k not in ("units", "v")}
                                for d in client[db][name].find()), key=lambda d: str(d["_id"]))
        out["aggregated_files"] = client[db]["aggregates_files"].count_documents({})
        return json.loads(json.dumps(out, sort_keys=True, default=str))
    finally:
        client.close()


def _check_import(ctx: Context, url: str, db: str, expected: set[str], t: Trial,
                  clean_key: str) -> None:
    import pymongo

    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=10000)
    try:
        ids = collections.Counter(d["_id"] for d in client[db]["payloads"].find({}, {"_id": 1}))
    finally:
        client.close()
    t.acknowledged += len(expected)
    t.stored += sum(1 for i in expected if ids.get(i))
    t.lost += sum(1 for i in expected if not ids.get(i))
    extra = sum(n - 1 for n in ids.values() if n > 1) + sum(1 for i in ids if i not in expected)
    t.duplicated += extra
    t.over_bound += extra  # documents are keyed by docId: exactly once
    aggregates = _aggregates(url, db)
    if clean_key not in ctx.cache:
        ctx.cache[clean_key] = _clean_aggregates(ctx)
    if aggregates != ctx.cache[clean_key]:
        t.crashes += 1
        t.notes.append("aggregates differ from a clean run's")


def _clean_aggregates(ctx: Context) -> dict:
    layout, _ = _import_input(ctx)
    url = _shared_mongo(ctx)
    proc = run_stage(_import_cmd(ctx, layout, url, "clean"))
    if proc.returncode:
        raise RuntimeError(f"clean import failed: {proc.stderr}")
    return _aggregates(url, "clean")


def importer_kill(ctx: Context, trial: int) -> Trial:
    """SIGKILL ``telemetry import`` mid-run, rerun: every record once, aggregates as a clean run's."""
    t = Trial()
    layout, expected = _import_input(ctx)
    url = _shared_mongo(ctx)
    db = f"kill{trial}_{os.getpid()}"
    cmd = _import_cmd(ctx, layout, url, db)
    kill_and_rerun(cmd, 0.5 + ctx.rng.random() * 2.5, t, "import")
    _check_import(ctx, url, db, expected, t, "clean_aggregates")
    return t


def mongo_kill(ctx: Context, trial: int) -> Trial:
    """SIGKILL the embedded MongoDB server mid-import, restart it on its files, rerun the import."""
    from importer.mongo import start_embedded

    t = Trial()
    layout, expected = _import_input(ctx)
    d = ctx.tmp("mongo-kill")
    server = start_embedded(d, detach=False, pid_file=False)
    try:
        cmd = _import_cmd(ctx, layout, server.url, "chaos")
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        time.sleep(0.5 + ctx.rng.random() * 2.5)
        if proc.poll() is not None:
            t.notes.append("import ended before the kill")
        server.process.kill()
        killed = time.monotonic()
        server.process.wait()
        _, err = proc.communicate(timeout=120)
        first = subprocess.CompletedProcess(cmd, proc.returncode, "", err)
        if os.environ.get("CHAOS_SHOW_FIRST"):
            print(err, file=sys.stderr)
        # The interrupted import may fail (the server is gone), but with a message.
        if why := crashed(first, allowed=(0, 1, 2)):
            t.crashes += 1
            t.notes.append("first run: " + why)
        server = start_embedded(d, detach=False, pid_file=False)
        cmd[cmd.index("--mongo-url") + 1] = server.url
        rerun = run_stage(cmd)
        t.recovery = time.monotonic() - killed
        if why := crashed(rerun):
            t.crashes += 1
            t.notes.append(why)
        _check_import(ctx, server.url, "chaos", expected, t, "clean_aggregates")
    finally:
        server.stop()
    return t


# --- export ------------------------------------------------------------------------------

def _moto(ctx: Context) -> int:
    if "moto" not in ctx.cache:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)

        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        ctx.closers.append(server.stop)
        ctx.cache["moto"] = server.get_host_and_port()[1]
    return ctx.cache["moto"]


S3_FAULTS = ["error:500:InternalError", "error:503:SlowDown", "reset", "reset-after", "truncate"]


def export_faults(ctx: Context, trial: int) -> Trial:
    """Export with ``--after-upload delete`` through a proxy injecting S3 faults into 35% of requests."""
    import boto3

    from converter.export import ExportConfig, ExportError, export_layout
    from converter.synthetic import make_records, write_layout

    t = Trial()
    port = _moto(ctx)
    d = ctx.tmp("export")
    layout = d / "layout"
    files = write_layout(layout, make_records(400, seed=trial, payload_kb=3), records_per_file=20)
    originals = {str(p.relative_to(layout)): p.read_bytes() for p in files}
    bucket = f"chaos-{trial}-{os.getpid()}"
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
    s3.create_bucket(Bucket=bucket)
    rng = random.Random(trial)

    def decide(method: str, path: str) -> str:
        if path.rstrip("/").count("/") < 2:
            return "pass"  # the bucket check: a failure there ends the pass at once (exit 1)
        if rng.random() < 0.35:
            fault = rng.choice(S3_FAULTS)
            return fault if fault != "truncate" or method == "PUT" else "reset"
        return "pass"

    started = time.monotonic()
    with FaultProxy(port, decide) as proxy:
        config = ExportConfig(layout_dir=layout, bucket=bucket, endpoint_url=proxy.url,
                              after_upload="delete", workers=4, attempts=3, request_attempts=2,
                              backoff=0.02, max_backoff=0.1)
        try:
            summary = export_layout(config)
        except ExportError as e:  # the documented failure (exit 1): the bucket check gave up
            t.notes.append(f"faulty pass stopped: {e}"[:120])
            summary = None
        except Exception as e:  # noqa: BLE001 - anything else out of export is a crash
            t.crashes += 1
            t.notes.append(f"export raised {type(e).__name__}: {e}"[:160])
            summary = None
        faults = dict(proxy.counts)
    deleted = [rel for rel in originals if not (layout / rel).exists()]
    # Files not deleted are retried by the next run (no faults): then all must be there.
    rerun = export_layout(ExportConfig(layout_dir=layout, bucket=bucket,
                                       endpoint_url=f"http://127.0.0.1:{port}",
                                       after_upload="delete"))
    t.recovery = time.monotonic() - started
    if rerun.failed:
        t.crashes += 1
        t.notes.append(f"clean rerun failed {rerun.failed}")
    for rel, data in originals.items():
        from converter.export import object_key

        try:
            body = s3.get_object(Bucket=bucket, Key=object_key("", rel))["Body"].read()
        except s3.exceptions.NoSuchKey:
            body = None
        t.acknowledged += 1
        if body == data:
            t.stored += 1
        elif rel in deleted or not (layout / rel).exists():
            t.lost += 1  # deleted locally, not (or not exactly) in S3
    if summary is not None:
        t.notes.append(f"faulty pass: {summary.uploaded} uploaded, {summary.failed} failed, "
                       f"{summary.retries} retries")
    t.notes.append("faults " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())
                                          if k != "pass"))
    return t


# --- replay ------------------------------------------------------------------------------

def _replay_source(ctx: Context) -> tuple[Path, set[str]]:
    if "replay" not in ctx.cache:
        from receiver.rawlog import Record, write_records

        d = ctx.tmp("replay-input")
        rng = random.Random(7)
        paths = [f"r{i}-{rng.getrandbits(32):08x}/saved-session/Firefox/23.0/release/2013"
                 for i in range(600)]
        records = [Record(p, gzip.compress(rng.randbytes(rng.randint(100, 2000)), mtime=0),
                          1_700_000_000_000) for p in paths]
        write_records(d / "telemetry.v1.src.1.1.finished", records)
        ctx.cache["replay"] = (d / "telemetry.v1.src.1.1.finished", set(paths))
    return ctx.cache["replay"]


def _replay_trial(ctx: Context, trial: int, mode: str) -> Trial:
    from receiver.replay import ReplayConfig, replay_logs

    t = Trial()
    source, paths = _replay_source(ctx)
    d = ctx.tmp(f"replay-{mode}")
    rng = random.Random(trial)
    started = time.monotonic()

    def decide(method: str, path: str) -> str:
        if mode == "flapping":
            up = int((time.monotonic() - started) / 0.3) % 2 == 0
            return "pass" if up else rng.choice(["reset", "reset-after", "error:503"])
        if mode == "5xx":
            x = rng.random()
            return "error:503" if x < 0.25 else "after:500" if x < 0.35 else "pass"
        if mode == "slow":
            return f"slow:{rng.random() * 0.6:.3f}" if rng.random() < 0.3 else "pass"
        return "pass"

    with start_receiver(receiver_config(d / "logs", workers=1, durability="os")) as r:
        port = _free_port()
        summary_box: list = []

        def run() -> None:
            config = ReplayConfig([source], f"http://127.0.0.1:{port}/submit/telemetry/%k",
                                  concurrency=16, attempts=12, backoff=0.05, max_backoff=0.5,
                                  timeout=0.4 if mode == "slow" else 5.0)
            summary_box.append(replay_logs(config))

        runner = threading.Thread(target=run)
        runner.start()
        if mode == "down":
            time.sleep(1.0 + rng.random())  # nobody listens on the port
        came_up = time.monotonic()
        with FaultProxy(r.port, decide, port=port):
            runner.join(120)
        if runner.is_alive():
            t.crashes += 1
            t.notes.append("replay did not finish in 120 s")
        t.recovery = time.monotonic() - came_up
        code = r.stop()
    if code != 0:
        t.crashes += 1
    stored, errors = raw_records(d / "logs")
    t.crashes += bool(errors)
    compare(paths, stored, t)
    summary = summary_box[0] if summary_box else None
    if summary is not None:
        if summary.failed or summary.rejected:
            t.notes.append(f"replay failed {summary.failed}, rejected {summary.rejected}")
        # The documented bound: a record is sent again only when an attempt got no 2xx,
        # so the copies beyond the first are at most the retries.
        t.over_bound += max(0, t.duplicated - summary.retries)
        t.notes.append(f"retries {summary.retries}")
    return t


def replay_kill(ctx: Context, trial: int) -> Trial:
    """SIGKILL ``telemetry replay --state`` mid-run, rerun: nothing lost, resent within the bound."""
    t = Trial()
    source, paths = _replay_source(ctx)
    d = ctx.tmp("replay-kill")
    concurrency, batch = 16, 200  # the CLI's defaults; the bound is batch + 4 x concurrency
    with start_receiver(receiver_config(d / "logs", workers=1, durability="os")) as r:
        cmd = telemetry(ctx, "replay", str(source), "--dest", r.submit_url("%k"),
                        "--state", str(d / "replay.state"), "--rate", "400",
                        "--concurrency", str(concurrency))
        kill_and_rerun(cmd, 0.3 + ctx.rng.random() * 1.2, t, "replay")
        code = r.stop()
    if code != 0:
        t.crashes += 1
    stored, errors = raw_records(d / "logs")
    t.crashes += bool(errors)
    compare(paths, stored, t)
    t.over_bound += max(0, t.duplicated - (batch + 4 * concurrency))
    return t


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replay_down(ctx, trial):
    """The destination is not listening for 1-2 s at the start."""
    return _replay_trial(ctx, trial, "down")


def replay_flapping(ctx, trial):
    """The destination alternates 0.3 s up / 0.3 s resetting or answering 503."""
    return _replay_trial(ctx, trial, "flapping")


def replay_5xx(ctx, trial):
    """25% of requests answered 503 unseen, 10% stored and then answered 500."""
    return _replay_trial(ctx, trial, "5xx")


def replay_slow(ctx, trial):
    """30% of requests held up to 0.6 s against a 0.4 s client timeout (stored, answer lost)."""
    return _replay_trial(ctx, trial, "slow")


# --- the table -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Context, int], Trial]
    trials: int
    quick: int = 1


SCENARIOS = [
    Scenario("receiver: SIGKILL a worker under load", receiver_worker_kill, 20, 2),
    Scenario("receiver: SIGKILL the service, restart", receiver_service_kill, 10, 1),
    Scenario("receiver: disk full -> 507, resumes", receiver_disk_full, 5, 1),
    Scenario("converter: SIGKILL mid-run, rerun", converter_kill, 10, 1),
    Scenario("converter --follow: SIGKILL, restart", converter_follow_kill, 5, 1),
    Scenario("importer: SIGKILL mid-import, rerun", importer_kill, 10, 1),
    Scenario("mongodb: SIGKILL server mid-import, restart", mongo_kill, 5, 1),
    Scenario("export: S3 5xx/SlowDown/reset/truncated", export_faults, 10, 1),
    Scenario("replay: SIGKILL with --state, rerun", replay_kill, 10, 1),
    Scenario("replay: destination down", replay_down, 10, 1),
    Scenario("replay: destination flapping", replay_flapping, 10, 1),
    Scenario("replay: destination 5xx", replay_5xx, 10, 1),
    Scenario("replay: destination slow", replay_slow, 10, 1),
]


def run_scenario(ctx: Context, scenario: Scenario, trials: int, verbose: bool = False) -> Row:
    row = Row(scenario.name)
    started = time.monotonic()
    for i in range(trials):
        log_start = ctx.stage_log.stat().st_size if ctx.stage_log else 0
        try:
            trial = scenario.run(ctx, i)
        except Exception as e:  # noqa: BLE001 - a trial that raises is a crash, and is reported
            trial = Trial(crashes=1, notes=[f"trial raised {type(e).__name__}: {e}"[:200]])
            if verbose:
                traceback.print_exc()
        if ctx.stage_log:  # a traceback from any stage process (their stderr) is a crash
            with open(ctx.stage_log, "rb") as f:
                f.seek(log_start)
                text = f.read().decode(errors="replace")
            if "Traceback (most recent call last)" in text:
                trial.crashes += 1
                trial.notes.append("traceback in a stage's stderr: "
                                   + text.split("Traceback (most recent call last)")[1][-200:])
        row.add(trial)
        if verbose:
            print(f"  {scenario.name} #{i + 1}: acked {trial.acknowledged} stored {trial.stored} "
                  f"lost {trial.lost} dup {trial.duplicated} crashes {trial.crashes} "
                  f"recovery {trial.recovery} {trial.notes}", file=sys.stderr, flush=True)
    row.seconds = time.monotonic() - started
    return row


def table(rows: list[Row]) -> str:
    head = ["scenario", "trials", "acknowledged", "stored", "lost", "duplicated", "crashes",
            "recovery s (median / max)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        dup = f"{r.duplicated}" + (f" ({r.over_bound} over bound)" if r.over_bound else "")
        lines.append(f"| {r.scenario} | {r.trials} | {r.acknowledged} | {r.stored} | {r.lost} | "
                     f"{dup} | {r.crashes} | {r.recovery()} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1-2 trials per scenario")
    ap.add_argument("--trials", type=int, help="trials per scenario (overrides the defaults)")
    ap.add_argument("--only", action="append", default=[],
                    help="run scenarios whose name contains this (repeatable)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--verbose", "-v", action="store_true", help="one line per trial on stderr")
    ap.add_argument("--no-tmpfs", action="store_true",
                    help="fill the disk with RLIMIT_FSIZE instead of a 2 MiB tmpfs")
    ap.add_argument("--stage-log", type=Path,
                    help="keep the stages' stderr in this file [default: a temporary file]")
    args = ap.parse_args(argv)
    chosen = [s for s in SCENARIOS if not args.only or any(o in s.name for o in args.only)]
    if not chosen:
        ap.error("no scenario matches --only")
    # SIGTERM (a timeout, Ctrl-C's cousin) unwinds like an exception: tmpfs unmounted, servers stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    ctx = Context(work, stage_log=args.stage_log or work / "stages.log")
    ctx.cache["no_tmpfs"] = args.no_tmpfs
    # The stages (children) write their stderr to the stage log; this script keeps the terminal.
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    sys.stderr = terminal
    log_fd = os.open(ctx.stage_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    import logging

    logging.basicConfig(stream=open(ctx.stage_log, "a", buffering=1), level=logging.WARNING)
    rows = []
    started = time.monotonic()
    try:
        for s in chosen:
            n = args.trials or (s.quick if args.quick else s.trials)
            print(f"running {s.name} x{n} ...", file=sys.stderr, flush=True)
            rows.append(run_scenario(ctx, s, n, args.verbose))
    finally:
        ctx.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"chaos: {len(rows)} scenarios in {time.monotonic() - started:.0f}s on loopback, "
          f"load average {os.getloadavg()[0]:.1f} at the end\n")
    print(table(rows))
    print()
    for r in rows:
        for n in r.notes:
            print(f"- {r.scenario}: {n}")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1, default=str))
    return 0 if all(r.ok() for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
