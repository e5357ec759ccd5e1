"""The durable raw-log writer: group commit, rotation, and abandoning a failed file.

Durability policy (``durability="fsync"``, the default): a submission is
acknowledged only after its record has been written to the raw log and
``fdatasync``'d, so a 200 survives a crash of the receiver and of the machine.
To make that cheap, records are committed in groups: while one batch is being
written and synced by the single writer thread, the event loop keeps accepting
requests and queues their records; the next batch takes everything queued, so
under load one fsync serves many requests.  ``durability="os"`` skips the fsync
(a 200 then survives a crash of the receiver, not of the kernel).

All file state lives on the writer thread; the event loop only queues records
and resolves futures, so there is no locking.  A failed write (ENOSPC, EIO...)
truncates the file back to the end of its last acknowledged record, finishes
it, and the next batch opens a fresh file: no half record is ever followed by
good ones.

Files are named and rotated as SPEC section 2 says: renamed to ``*.finished``
when they pass ``max_log_size``, when ``max_log_age_ms`` has passed since they
were opened (so an idle file is finished at most that long after its last
record), and at shutdown.  A file is only created when its first record comes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from receiver.errors import StorageError
from receiver.metrics import Metrics
from receiver.rawlog import FINISHED_SUFFIX, RawLogReader, log_file_name

log = logging.getLogger(__name__)

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC


class LogWriter:
    """Appends encoded records to this process's current raw log; one per worker."""

    def __init__(
        self,
        directory: str | os.PathLike,
        log_base: str,
        *,
        version: int = 1,
        max_log_size: int = 500 * 1024 * 1024,
        max_log_age_ms: int = 5 * 60 * 1000,
        durability: str = "fsync",
        metrics: Metrics | None = None,
        hostname: str | None = None,
    ):
        self.directory = Path(directory)
        self.log_base = log_base
        self.version = version
        self.max_log_size = max_log_size
        self.max_log_age = max_log_age_ms / 1000.0
        self.sync = durability == "fsync"
        self.metrics = metrics or Metrics()
        self.hostname = hostname or socket.gethostname()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rawlog-writer")
        # Event-loop side.
        self._records: list[bytes] = []
        self._waiters: list = []  # one per record: a future, or a callback taking an exception
        self._flushing: asyncio.Future | None = None
        self._closed = False
        # Writer-thread side.
        self._fd: int | None = None
        self._name: Path | None = None
        self._size = 0
        self._opened_at = 0.0
        self.finished: list[Path] = []

    @property
    def current_file(self) -> Path | None:
        """The file being written (not yet finished), if any."""
        return self._name

    def submit(self, record: bytes) -> asyncio.Future:
        """Queue one encoded record; the future resolves once it is durable (or fails).

        Must be called on the event loop thread.  The future's exception is a
        :class:`StorageError` when the write failed.
        """
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self._closed:
            fut.set_exception(StorageError("the raw-log writer is shut down"))
            return fut
        self._queue(record, fut)
        return fut

    def submit_callback(self, record: bytes, callback) -> None:
        """Queue one encoded record; ``callback(exc)`` runs on the event loop once it is
        durable (``exc`` None) or failed (a :class:`StorageError`).

        The cheaper form of :meth:`submit` for the fast front end: no future
        per request, and the callback runs directly after the batch instead
        of being scheduled as a future's done-callback.
        """
        if self._closed:
            callback(StorageError("the raw-log writer is shut down"))
            return
        self._queue(record, callback)

    def _queue(self, record: bytes, waiter) -> None:
        self._records.append(record)
        self._waiters.append(waiter)
        if self._flushing is None:
            loop = asyncio.get_running_loop()
            self._flushing = loop.create_future()
            loop.create_task(self._flush_loop())

    async def append(self, record: bytes) -> None:
        """Write one encoded record and wait until it is durable."""
        await self.submit(record)

    async def rotate_if_old(self) -> None:
        """Finish the current file if it is older than ``max_log_age_ms``; call periodically."""
        if self._fd is not None and not self._closed:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._rotate_if_old)

    async def rotate(self) -> None:
        """Finish the current file now (the next record opens a new one)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._finish)

    async def close(self) -> None:
        """Commit everything queued, finish the current file and stop the writer thread."""
        self._closed = True
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._finish)
        self._executor.shutdown(wait=True)

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        done = self._flushing
        try:
            while self._records:
                records, waiters = self._records, self._waiters
                self._records, self._waiters = [], []
                data = b"".join(records)
                try:
                    elapsed = await loop.run_in_executor(self._executor, self._write_batch, data)
                except BaseException as e:
                    if not isinstance(e, StorageError):
                        log.exception("unexpected error writing the raw log")
                        e = StorageError(f"unexpected error writing the raw log: {e!r}")
                    self.metrics.write_error()
                    for w in waiters:
                        if not isinstance(w, asyncio.Future):
                            _call(w, e)
                        elif not w.done():
                            w.set_exception(e)
                    continue
                self.metrics.batch(len(records), elapsed)
                self.metrics.stored(len(records), len(data))
                for w in waiters:
                    if not isinstance(w, asyncio.Future):
                        _call(w, None)
                    elif not w.done():
                        w.set_result(None)
        finally:
            self._flushing = None
            done.set_result(None)

    # --- writer thread -------------------------------------------------------

    def _write_batch(self, data: bytes) -> float:
        t0 = time.perf_counter()
        if self._fd is not None and self._too_old():
            try:
                self._finish()
            except OSError as e:
                log.error("cannot finish an old raw log in %s: %s", self.directory, e)
        if self._fd is None:
            self._open()
        good = self._size
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if self.sync:
                os.fdatasync(self._fd)
        except OSError as e:
            name = self._name
            self._abandon(good)
            message = f"writing raw log {name} failed: {e.strerror or e}"
            raise StorageError(message, e.errno) from None
        self._size += len(data)
        if self._size >= self.max_log_size:
            try:
                self._finish()
            except OSError as e:  # the batch is durable already; only the rename failed
                log.error("cannot finish raw log %s: %s", self.directory, e)
        return time.perf_counter() - t0

    def _open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            message = f"cannot create log directory {self.directory}: {e.strerror or e}"
            raise StorageError(message, e.errno) from None
        epoch_ms = int(time.time() * 1000)
        while True:
            name = self.directory / log_file_name(self.log_base, self.version, self.hostname,
                                                  os.getpid(), epoch_ms)
            try:
                fd = os.open(name, _CREATE_FLAGS, 0o644)
            except FileExistsError:
                epoch_ms += 1
                continue
            except OSError as e:
                message = f"cannot create raw log {name}: {e.strerror or e}"
                raise StorageError(message, e.errno) from None
            break
        if self.sync:
            self._sync_directory()
        self._fd, self._name, self._size, self._opened_at = fd, name, 0, time.monotonic()

    def _too_old(self) -> bool:
        return time.monotonic() - self._opened_at >= self.max_log_age

    def _rotate_if_old(self) -> None:
        if self._fd is not None and self._too_old():
            self._finish()

    def _finish(self) -> None:
        """Close the current file and rename it ``*.finished``; it is complete and synced."""
        if self._fd is None:
            return
        fd, name = self._fd, self._name
        self._fd, self._name, self._size = None, None, 0
        try:
            if self.sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        done = name.with_name(name.name + FINISHED_SUFFIX)
        os.rename(name, done)
        if self.sync:
            self._sync_directory()
        self.finished.append(done)
        self.metrics.rotation()

    def _abandon(self, good_size: int) -> None:
        """After a failed write: cut the file back to its acknowledged records and finish it."""
        fd, name = self._fd, self._name
        self._fd, self._name, self._size = None, None, 0
        try:
            os.ftruncate(fd, good_size)
        except OSError as e:
            log.error("cannot truncate %s after a failed write: %s", name, e)
        try:
            os.close(fd)
        except OSError:
            pass
        try:
            if good_size == 0:
                os.unlink(name)
            else:
                done = name.with_name(name.name + FINISHED_SUFFIX)
                os.rename(name, done)
                self.finished.append(done)
                self.metrics.rotation()
        except OSError as e:
            log.error("cannot finish %s after a failed write: %s", name, e)

    def _sync_directory(self) -> None:
        try:
            dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)


def _call(callback, exc: BaseException | None) -> None:
    try:
        callback(exc)
    except Exception:  # one broken waiter must not keep the others from their answers
        log.exception("error in a raw-log callback")


def finalize_file(path: str | os.PathLike) -> Path | None:
    """Finish a raw log left behind by a dead process: cut a torn last record, rename it.

    Returns the ``.finished`` path, or None when the file held no complete
    record (it is then removed).  Everything a dead worker acknowledged was
    synced before its 200, so it is kept; only bytes past the last complete
    record (a write cut short by the kill) are dropped.
    """
    path = Path(path)
    reader = RawLogReader(path)
    end = 0
    for rec in reader:
        end = rec.end
    with open(path, "r+b") as f:
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    if end == 0:
        path.unlink()
        return None
    done = path.with_name(path.name + FINISHED_SUFFIX)
    os.rename(path, done)
    return done


def unfinished_files(directory: str | os.PathLike, log_base: str, hostname: str,
                     pid: int | None = None) -> list[tuple[int, Path]]:
    """(pid, path) of the not-yet-finished raw logs this host's receivers wrote in ``directory``."""
    out = []
    directory = Path(directory)
    if not directory.is_dir():
        return out
    prefixes = {f"{log_base}.v1.{hostname}", f"{log_base}.v2.{hostname}"}
    for p in directory.iterdir():
        if p.name.endswith(FINISHED_SUFFIX):
            continue
        parts = p.name.rsplit(".", 2)
        if len(parts) != 3 or parts[0] not in prefixes:
            continue
        if not parts[1].isdigit() or not parts[2].isdigit():
            continue
        if pid is None or int(parts[1]) == pid:
            out.append((int(parts[1]), p))
    return sorted(out, key=lambda t: t[1].name)


def finalize_unfinished(directory: str | os.PathLike, log_base: str, hostname: str,
                        pid: int | None = None, skip_live: bool = True) -> list[Path]:
    """Finish the raw logs of dead processes (of ``pid`` only, if given); returns finished paths."""
    out = []
    for owner, path in unfinished_files(directory, log_base, hostname, pid):
        if skip_live and _alive(owner):
            continue
        try:
            done = finalize_file(path)
        except OSError as e:
            log.error("cannot finalize %s: %s", path, e)
            continue
        if done is not None:
            out.append(done)
    return out


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as dead.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        return True
