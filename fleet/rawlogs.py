"""Writing simulated submissions straight into raw logs, as the receiver would have.

The records are encoded by :func:`receiver.rawlog.encode_record` (v2, with
the client's IP) and the files are named as the receiver names them
(``{log_base}.v2.{hostname}.{pid}.{epoch_ms}``), renamed to ``.finished``
when they pass ``max_log_size`` and at the end, so the converter reads them
exactly as it reads received traffic.  A file is written under its
unfinished name first: a crash leaves no ``.finished`` file half written.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from fleet.population import Submission
from receiver.rawlog import FINISHED_SUFFIX, encode_record, log_file_name

DEFAULT_MAX_LOG_SIZE = 500 * 1024 * 1024


@dataclass
class WriteSummary:
    """What :func:`write_raw_logs` wrote."""

    records: int = 0
    bytes: int = 0
    malformed: int = 0
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self) -> str:
        rate = self.records / self.seconds if self.seconds > 0 else 0.0
        return (f"wrote {self.records} submissions ({self.malformed} malformed on purpose), "
                f"{self.bytes:,} bytes in {len(self.files)} finished raw logs, "
                f"{self.seconds:.1f} s ({rate:,.0f} pings/s)")


class RawLogFiles:
    """Appends records to a raw log, rotating at ``max_log_size``; ``close()`` finishes the last one."""

    def __init__(self, directory: str | os.PathLike, log_base: str = "telemetry",
                 max_log_size: int = DEFAULT_MAX_LOG_SIZE, hostname: str | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_base = log_base
        self.max_log_size = max_log_size
        self.hostname = hostname or socket.gethostname()
        self.finished: list[Path] = []
        self._file = None
        self._path: Path | None = None
        self._size = 0
        self._last_ms = 0

    def write(self, record: bytes) -> None:
        if self._file is None:
            self._open()
        self._file.write(record)
        self._size += len(record)
        if self._size >= self.max_log_size:
            self._finish()

    def _open(self) -> None:
        epoch_ms = max(int(time.time() * 1000), self._last_ms + 1)
        while True:
            path = self.directory / log_file_name(self.log_base, 2, self.hostname, os.getpid(), epoch_ms)
            try:
                self._file = open(path, "xb", buffering=1024 * 1024)
                break
            except FileExistsError:
                epoch_ms += 1
        self._last_ms = epoch_ms
        self._path = path
        self._size = 0

    def _finish(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        done = self._path.with_name(self._path.name + FINISHED_SUFFIX)
        os.replace(self._path, done)
        self.finished.append(done)
        self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._finish()

    def __enter__(self) -> "RawLogFiles":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_raw_logs(submissions: Iterable[Submission], directory: str | os.PathLike,
                   log_base: str = "telemetry", max_log_size: int = DEFAULT_MAX_LOG_SIZE,
                   progress: Callable[[int], None] | None = None) -> WriteSummary:
    """Write every submission as a v2 record; returns what was written.

    ``progress`` is called with the number of records written since its last call.
    """
    summary = WriteSummary()
    started = time.monotonic()
    with RawLogFiles(directory, log_base, max_log_size) as files:
        for sub in submissions:
            record = encode_record(sub.path, sub.body, sub.timestamp_ms, sub.client_ip)
            files.write(record)
            summary.records += 1
            summary.bytes += len(record)
            summary.malformed += sub.malformed is not None
            if progress is not None and summary.records % 1000 == 0:
                progress(1000)
    if progress is not None and summary.records % 1000:
        progress(summary.records % 1000)
    summary.files = files.finished
    summary.seconds = time.monotonic() - started
    return summary
