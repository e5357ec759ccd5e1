"""``telemetry import --follow``: import each published layout file as soon as it appears.

Published files (compressed, named ``{layout file}.{32 hex}.{zst|lzma}``)
appear whole: the converter hard-links or renames them into place, so a
file seen is a file complete.  Plain ``.log`` files may still be growing
and are left alone here.  The loop waits for new files (inotify on the whole
tree, see :mod:`pipeline.watcher`), groups what has arrived into chunks as
:func:`importer.importer.import_dataset` does, and imports each chunk with
:func:`importer.importer.import_files`, whose bookkeeping (the ``imports``
collection: a file marked started before its first record is written and
done after its last is acknowledged) is what a restart relies on: a file
done is skipped, a file started but not done is written again with
replacing writes, so every record is there exactly once.

With the aggregating importer (:mod:`aggregations.importing`) each chunk's
contributions go to the hook's sink, which writes them as soon as the
backlog is empty (so a ping shows in the aggregates at once) and at least
every ``FLUSH_SECONDS`` while a backlog is worked off; a stop writes what it
holds.  A sink that cannot write ends the run with an error: the restart
aggregates the files it held (the aggregates store knows which files it
has applied), so each ping is counted once.

A file that fails (the server is down, the file is corrupt) stays waiting
and is tried again with a growing delay; nothing is dropped, the backlog
only grows on disk.  SIGTERM finishes the chunk in hand; a drain imports
everything present, then returns.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

from pymongo.errors import PyMongoError

from converter.layout import (LayoutError, LayoutFile, dimensions_from_path, find_layout_files,
                              is_layout_file, path_filter)
from importer.errors import ImporterError, MongoUnavailable
from importer.importer import (ChunkResult, ImportOptions, ImportSummary, create_indexes,
                               import_files)
from importer.mongo import connect
from pipeline.datadir import importer_status_file
from pipeline.health import HEARTBEAT_SECONDS, StageStatus
from pipeline.watcher import DirectoryWatcher, Stop

log = logging.getLogger(__name__)

RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
FLUSH_SECONDS = 5.0  # aggregates held at most this long while a backlog is worked off


def follow_dataset(dataset_dir: str | os.PathLike, url: str, options: ImportOptions, stop: Stop,
                   status_file: str | os.PathLike | None = None,
                   on_chunk: Callable[[ChunkResult], None] | None = None,
                   rescan_seconds: float = HEARTBEAT_SECONDS,
                   use_inotify: bool = True) -> ImportSummary:
    """Import every published file under ``dataset_dir``, then each new one, until stopped."""
    dataset = Path(dataset_dir)
    dataset.mkdir(parents=True, exist_ok=True)
    status = StageStatus("importer", Path(status_file or importer_status_file(dataset)))
    summary = ImportSummary()
    started = time.monotonic()
    client = connect(url, options.timeout_ms)
    watcher = DirectoryWatcher([dataset], recursive=True, created=True, use_inotify=use_inotify)
    loop = _Loop(dataset, client[options.database], options, stop, status, summary, on_chunk)
    try:
        loop.open_sink()
        if options.create_indexes:
            try:
                create_indexes(client[options.database][options.collection],
                               options.dimension_names())
            except PyMongoError as e:
                raise MongoUnavailable(f"cannot create the indexes: {e}") from None
        status.update(state="idle")
        status.keep_alive()
        loop.run(watcher, rescan_seconds)
        loop.close_sink()
    finally:
        watcher.close()
        client.close()
        status.update(state="stopped", backlog_files=len(loop.waiting),
                      backlog_bytes=sum(f.size for f in loop.waiting.values()))
        status.save()
    summary.seconds = time.monotonic() - started
    return summary


class _Loop:
    def __init__(self, dataset: Path, db, options: ImportOptions, stop: Stop,
                 status: StageStatus, summary: ImportSummary, on_chunk):
        self.dataset = dataset
        self.db = db
        self.options = options
        self.names = options.dimension_names()
        self.filter = path_filter(options.filter) if options.filter is not None else None
        self.stop = stop
        self.status = status
        self.summary = summary
        self.on_chunk = on_chunk
        self.waiting: dict[str, LayoutFile] = {}
        self.mtimes: dict[str, float] = {}
        self.handled: set[str] = set()
        self.retry_at: dict[str, float] = {}
        self.failures: dict[str, int] = {}
        self.sink = None
        self.flushed_at = time.monotonic()

    def open_sink(self) -> None:
        """The hook's writing side (the aggregates), if the importer has a hook."""
        if self.options.hook is not None:
            self.sink = self.options.hook.sink(self.db)

    def _sink(self, call, *args):
        """A sink failure ends the run (exit 1): a restart aggregates what it held, once."""
        try:
            return call(*args)
        except (PyMongoError, ImporterError) as e:
            self.sink = None
            raise ImporterError(f"cannot write the aggregates: {type(e).__name__}: {e}") from None

    def _flush(self, caught_up: bool) -> None:
        """Write the aggregates as soon as the backlog is empty, else every FLUSH_SECONDS."""
        if self.sink is None:
            return
        if caught_up or time.monotonic() - self.flushed_at >= FLUSH_SECONDS:
            started = time.monotonic()
            written = self._sink(self.sink.flush)
            self.flushed_at = time.monotonic()
            if written:
                log.info("aggregates: %d documents written in %.2fs",
                         written, self.flushed_at - started)

    def close_sink(self) -> None:
        if self.sink is not None:
            stats = self._sink(self.sink.close) or {}
            for key, n in stats.items():
                self.summary.hook_stats[key] = self.summary.hook_stats.get(key, 0) + n
            self.sink = None

    def run(self, watcher: DirectoryWatcher, rescan_seconds: float) -> None:
        self._scan(self.dataset)
        last_scan = time.monotonic()
        full_scan_every = 60.0 if watcher.uses_inotify else 0.0
        drained = False
        while not self.stop.is_set():
            if self.stop.draining and not drained:
                self._scan(self.dataset)
                drained = True
            chunk = self._next_chunk()
            if chunk:
                self._import(chunk)
                changes = watcher.wait(0, self.stop)
            else:
                self._report()
                if drained and not self.waiting:
                    break
                timeout = rescan_seconds
                if self.retry_at:
                    timeout = max(0.0, min(timeout, min(self.retry_at.values()) - time.monotonic()))
                changes = watcher.wait(timeout, self.stop)
                if not changes and time.monotonic() - last_scan >= full_scan_every:
                    self._scan(self.dataset)
                    last_scan = time.monotonic()
            for path in changes.files:
                self._add_path(path)
            for directory in changes.rescan:
                self._scan(directory)
        self._report()

    def _scan(self, directory: Path) -> None:
        try:
            files = find_layout_files(directory, self.options.filter, include_plain=False)
        except (LayoutError, FileNotFoundError, NotADirectoryError):
            return
        prefix = os.path.relpath(directory, self.dataset)
        for lf in files:
            relpath = lf.relpath if prefix == "." else f"{prefix.replace(os.sep, '/')}/{lf.relpath}"
            self._add(LayoutFile(lf.path, relpath, lf.size))

    def _add_path(self, path: Path) -> None:
        if not is_layout_file(path.name, include_plain=False):
            return
        try:
            relpath = path.relative_to(self.dataset).as_posix()
        except ValueError:
            return
        if any(part.startswith(".") for part in relpath.split("/")):
            return
        if self.filter is not None and not self.filter.allows(dimensions_from_path(relpath)):
            return
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        self._add(LayoutFile(path, relpath, size))

    def _add(self, lf: LayoutFile) -> None:
        if lf.relpath in self.handled or lf.relpath in self.waiting:
            return
        try:
            self.mtimes[lf.relpath] = lf.path.stat().st_mtime
        except FileNotFoundError:
            return
        self.waiting[lf.relpath] = lf

    def _next_chunk(self) -> list[LayoutFile]:
        """The oldest waiting files, up to the importer's chunk limits (``chunk_bytes``, ``chunk_files``)."""
        now = time.monotonic()
        chunk, size = [], 0
        for relpath in sorted(self.waiting, key=lambda r: self.mtimes.get(r, 0.0)):
            if self.retry_at.get(relpath, 0) > now:
                continue
            lf = self.waiting[relpath]
            if chunk and (size + lf.size > self.options.chunk_bytes
                          or len(chunk) >= self.options.chunk_files):
                break
            chunk.append(lf)
            size += lf.size
        return chunk

    def _import(self, chunk: list[LayoutFile]) -> None:
        self._report(working=True)
        result = import_files(self.db, chunk, self.names, self.options)
        self.summary.add(result)
        if self.sink is not None and result.hook_output is not None:
            self._sink(self.sink.add, result.hook_output)
            result.hook_output = None
        records = 0
        for lf, fr in zip(chunk, result.files):
            if fr.error is not None and not os.path.exists(lf.path):
                # removed before it was read: nothing of it can be imported
                self.waiting.pop(lf.relpath, None)
                self.handled.add(lf.relpath)
                log.warning("%s disappeared before it was imported", lf.relpath)
                continue
            if fr.error is not None:
                self._failed(lf.relpath, fr.error)
                continue
            self.waiting.pop(lf.relpath, None)
            self.mtimes.pop(lf.relpath, None)
            self.handled.add(lf.relpath)
            self.failures.pop(lf.relpath, None)
            self.retry_at.pop(lf.relpath, None)
            records += fr.records
        imported = [f for f in result.files if f.error is None and not f.skipped]
        if imported:
            log.info("imported %d files, %d records (%d inserted, %d duplicates)",
                     len(imported), result.records, result.inserted, result.duplicates)
        self.status.update(units_done=self.status.units_done + len(imported),
                           records_done=self.status.records_done + records,
                           last_done_at=time.time())
        self._flush(caught_up=not self._next_chunk())
        if self.on_chunk is not None:
            self.on_chunk(result)
        self._report(force=True)

    def _failed(self, relpath: str, message: str) -> None:
        n = self.failures.get(relpath, 0)
        self.failures[relpath] = n + 1
        delay = RETRY_SECONDS[min(n, len(RETRY_SECONDS) - 1)]
        self.retry_at[relpath] = time.monotonic() + delay
        self.status.update(errors=self.status.errors + 1, last_error=message)
        log.error("cannot import %s; trying again in %.0fs", message, delay)

    def _report(self, working: bool = False, force: bool = False) -> None:
        oldest = min((self.mtimes.get(r, time.time()) for r in self.waiting), default=None)
        state = ("stopping" if self.stop.is_set() else "draining" if self.stop.draining
                 else "working" if working else "failing" if self.retry_at else "idle")
        changed = force or state != self.status.state \
            or len(self.waiting) != self.status.backlog_files
        self.status.update(state=state, backlog_files=len(self.waiting),
                           backlog_bytes=sum(f.size for f in self.waiting.values()),
                           oldest_waiting_since=oldest)
        self.status.save(force=changed)
