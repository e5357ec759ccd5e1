"""``telemetry process --follow``: convert each raw log as soon as it is finished.

The loop waits (inotify, see :mod:`pipeline.watcher`) for ``*.finished``
files to appear in the input directories and converts each one as a unit,
exactly as :func:`converter.process.process` does: same worker code, same
commit protocol, same done markers.  So what a restart promises is what a
rerun of ``telemetry process`` promises: a unit whose done marker exists is
skipped, a unit that committed but was not fully published is completed, and
any other unit is converted again from the start, with the same published
names (nothing twice, nothing skipped).

A restart must not read every raw file again to learn its identity (a
content hash), so the loop keeps a small index of the sources it has
converted, ``{output}/.state/follow-sources.jsonl``: path, size, mtime and
unit id, one line per unit, appended after the unit's done marker.  A source
whose size and mtime still match is known without hashing.  The index is
compacted at start (entries of vanished files are dropped).

Stopping: :class:`pipeline.watcher.Stop` set (SIGTERM, SIGINT) ends the loop
after the units in hand are finished; a drain request converts everything
present, then ends it.  A stage that falls behind only has more ``.finished``
files waiting on disk.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable

import orjson

from converter.errors import ConfigError, ProcessError
from converter.process import (STATE_DIR, ConverterConfig, ProcessSummary, Unit, UnitResult,
                               _init_worker, _RunLock, convert_unit, unit_id)
from converter.schema import Schema, SchemaError
from pipeline.datadir import converter_status_file
from pipeline.health import HEARTBEAT_SECONDS, StageStatus
from pipeline.watcher import DirectoryWatcher, Stop
from receiver.rawlog import FINISHED_SUFFIX, finished_files

log = logging.getLogger(__name__)

SOURCES_INDEX = "follow-sources.jsonl"
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class SourceIndex:
    """Which source files (by path, size and mtime) were converted as which unit."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, tuple[int, int, str]] = {}
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                source, size, mtime, uid = orjson.loads(line)
            except (orjson.JSONDecodeError, ValueError, TypeError):
                continue  # a torn last line after a crash: that unit's marker still decides
            self.entries[source] = (size, mtime, uid)
        self._compact()
        self._file = open(path, "ab")

    def _compact(self) -> None:
        keep = {s: e for s, e in self.entries.items() if os.path.exists(s)}
        if len(keep) == len(self.entries) and self.path.exists():
            return
        self.entries = keep
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(b"".join(orjson.dumps([s, *e]) + b"\n" for s, e in keep.items()))
        os.replace(tmp, self.path)

    def known(self, source: str, stat: os.stat_result) -> str | None:
        entry = self.entries.get(source)
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return entry[2]
        return None

    def add(self, source: str, stat: os.stat_result, uid: str) -> None:
        self.entries[source] = (stat.st_size, stat.st_mtime_ns, uid)
        self._file.write(orjson.dumps([source, stat.st_size, stat.st_mtime_ns, uid]) + b"\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class _Inline:
    """A one-worker "pool" that converts in this process when a unit is submitted."""

    def submit(self, fn: Callable, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # handed to the caller through the future, as a pool does
            future.set_exception(e)
        return future

    def shutdown(self, wait: bool = True) -> None:
        pass


def _init_follow_worker(config: ConverterConfig) -> None:
    # The stage's own process decides when to stop; a Ctrl-C in a terminal reaches the
    # whole process group and must not kill a unit half-way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _init_worker(config)


def follow(config: ConverterConfig, inputs: Iterable[str | os.PathLike], stop: Stop,
           status_file: str | os.PathLike | None = None,
           on_unit: Callable[[UnitResult], None] | None = None,
           rescan_seconds: float = HEARTBEAT_SECONDS, use_inotify: bool = True) -> ProcessSummary:
    """Convert every finished raw log of the ``inputs`` directories, then each new one, until stopped.

    Returns the summary of what this run did (units skipped because an
    earlier run converted them are counted as ``files_skipped``).
    """
    config.check()
    try:
        Schema.load(config.telemetry_schema)
    except SchemaError as e:
        raise ConfigError(str(e)) from None
    dirs = [Path(p).absolute() for p in inputs]
    if not dirs:
        raise ProcessError("name the directories to follow")
    for d in dirs:
        if d.exists() and not d.is_dir():
            raise ProcessError(f"--follow takes directories; {d} is not one")
        d.mkdir(parents=True, exist_ok=True)
    output = config.output
    lock = _RunLock(output)
    status = StageStatus("converter", Path(status_file or converter_status_file(output)))
    summary = ProcessSummary()
    started = time.perf_counter()
    index = SourceIndex(output / STATE_DIR / SOURCES_INDEX)
    watcher = DirectoryWatcher(dirs, created=False, use_inotify=use_inotify)
    pool = (_Inline() if config.workers <= 1 else
            _process_pool(config))
    if config.workers <= 1:
        _init_worker(config)
    loop = _Loop(config, dirs, stop, status, summary, index, pool, on_unit)
    try:
        status.update(state="idle")
        status.keep_alive()
        loop.run(watcher, rescan_seconds)
    finally:
        pool.shutdown(wait=True)
        watcher.close()
        index.close()
        lock.release()
        status.update(state="stopped", backlog_files=len(loop.waiting),
                      backlog_bytes=loop.waiting_bytes())
        status.save()
    summary.seconds = time.perf_counter() - started
    return summary


def _process_pool(config: ConverterConfig) -> ProcessPoolExecutor:
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["converter.process"])
    return ProcessPoolExecutor(config.workers, mp_context=ctx, initializer=_init_follow_worker,
                               initargs=(config,))


class _Loop:
    def __init__(self, config: ConverterConfig, dirs: list[Path], stop: Stop, status: StageStatus,
                 summary: ProcessSummary, index: SourceIndex, pool, on_unit):
        self.config = config
        self.dirs = dirs
        self.stop = stop
        self.status = status
        self.summary = summary
        self.index = index
        self.pool = pool
        self.on_unit = on_unit
        self.waiting: dict[str, os.stat_result] = {}  # finished files not yet converted
        self.handled: set[str] = set()                 # converted (or known done) in this run
        self.running: dict[Future, tuple[str, os.stat_result]] = {}
        self.retry_at: dict[str, float] = {}
        self.failures: dict[str, int] = {}

    def run(self, watcher: DirectoryWatcher, rescan_seconds: float) -> None:
        self._scan(self.dirs)
        last_scan = time.monotonic()
        # With inotify a full look is only a safety net for a lost event; polling, it is the way.
        full_scan_every = 60.0 if watcher.uses_inotify else 0.0
        drained = False
        while not self.stop.is_set():
            if self.stop.draining and not drained:
                self._scan(self.dirs)  # what is there now is what a drain must finish
                drained = True
            self._start_units()
            self._report()
            if drained and not self.waiting and not self.running:
                break
            if self.running:
                self._collect(timeout=None if isinstance(self.pool, _Inline) else 0.5)
                changes = watcher.wait(0, self.stop)  # what appeared meanwhile
            else:
                timeout = rescan_seconds
                if self.retry_at:
                    timeout = max(0.0, min(timeout, min(self.retry_at.values()) - time.monotonic()))
                changes = watcher.wait(timeout, self.stop)
                if not changes and time.monotonic() - last_scan >= full_scan_every:
                    self._scan(self.dirs)
                    last_scan = time.monotonic()
            self._add(p for p in changes.files if p.name.endswith(FINISHED_SUFFIX))
            self._scan(changes.rescan)
        # Stopping: the units in hand are finished, the others wait for the next run.
        while self.running:
            self._collect(timeout=None)
        self._report()

    def _scan(self, dirs: Iterable[Path]) -> None:
        for d in dirs:
            try:
                self._add(finished_files(d))
            except FileNotFoundError:
                continue

    def _add(self, paths: Iterable[Path]) -> None:
        for p in paths:
            source = str(p)
            if source in self.handled or source in self.waiting or any(
                    source == s for s, _ in self.running.values()):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            self.waiting[source] = st

    def waiting_bytes(self) -> int:
        return sum(st.st_size for st in self.waiting.values())

    def _start_units(self) -> None:
        limit = max(1, self.config.workers)
        now = time.monotonic()
        # oldest first: the order the receiver finished them in
        for source, st in sorted(self.waiting.items(), key=lambda kv: kv[1].st_mtime_ns):
            if self.stop.is_set() or len(self.running) >= limit:
                return
            if self.retry_at.get(source, 0) > now:
                continue
            del self.waiting[source]
            uid = self.index.known(source, st)
            if uid is not None:  # converted by an earlier run: its done marker says so
                self.handled.add(source)
                self.summary.add(UnitResult(source, uid, status="skipped"))
                continue
            try:
                uid = unit_id(Path(source))
            except ProcessError as e:
                if not os.path.exists(source):
                    continue  # removed before we got to it: nothing to convert
                self._failed(source, st, str(e))
                continue
            self.status.update(state="working")
            self.running[self.pool.submit(convert_unit, Unit(source, uid))] = (source, st)
            if isinstance(self.pool, _Inline):
                return  # converted already; collect it before starting another

    def _collect(self, timeout: float | None) -> None:
        done, _ = wait(list(self.running), timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            source, st = self.running.pop(future)
            try:
                result = future.result()
            except Exception as e:  # a disk error, a dead worker: this file waits and is retried
                self._failed(source, st, f"{type(e).__name__}: {e}")
                continue
            self.index.add(source, st, result.unit_id)
            self.handled.add(source)
            self.failures.pop(source, None)
            self.retry_at.pop(source, None)
            self.summary.add(result)
            self.status.update(units_done=self.status.units_done + 1,
                               records_done=self.status.records_done + result.records_in,
                               last_done_at=time.time())
            if result.status != "skipped":
                log.info("converted %s: %d records in, %d out, %d rejected, %d files published",
                         source, result.records_in, result.records_out,
                         sum(result.rejected.values()), len(result.published))
            if self.on_unit is not None:
                self.on_unit(result)
        self._report()

    def _failed(self, source: str, st: os.stat_result, message: str) -> None:
        n = self.failures.get(source, 0)
        self.failures[source] = n + 1
        delay = RETRY_SECONDS[min(n, len(RETRY_SECONDS) - 1)]
        self.retry_at[source] = time.monotonic() + delay
        self.waiting[source] = st
        self.status.update(errors=self.status.errors + 1, last_error=f"{source}: {message}",
                           state="failing")
        log.error("cannot convert %s (%s); trying again in %.0fs", source, message, delay)

    def _report(self) -> None:
        oldest = min((st.st_mtime for st in self.waiting.values()), default=None)
        for _, st in self.running.values():
            oldest = st.st_mtime if oldest is None else min(oldest, st.st_mtime)
        state = ("draining" if self.stop.draining else "working" if self.running
                 else "failing" if self.retry_at else "idle")
        if self.stop.is_set():
            state = "stopping"
        changed = (state != self.status.state
                   or len(self.waiting) + len(self.running) != self.status.backlog_files)
        self.status.update(state=state, backlog_files=len(self.waiting) + len(self.running),
                           backlog_bytes=self.waiting_bytes()
                           + sum(st.st_size for _, st in self.running.values()),
                           oldest_waiting_since=oldest)
        self.status.save(force=changed)
