"""The stats log: one JSON line per request, as the original server wrote.

Lines are buffered in memory and appended to the file with one ``write`` per
flush (every ``stats_flush_ms`` and at shutdown), never opening and closing
the file per request.  The file is opened with O_APPEND, so the workers of
one receiver can share it: each flush lands as whole lines.
"""

from __future__ import annotations

import os
import time

import orjson


class StatsLog:
    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._lines: list[bytes] = []
        self._second = -1
        self._prefix = ""

    def log(self, url: str, duration_ms: float, code: int, size: int, message: str) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # formatting the date costs more than the rest of a line
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        stamp = f"{self._prefix}.{int(now * 1000) % 1000:03d}Z"
        self._lines.append(orjson.dumps({
            "url": url, "duration_ms": round(duration_ms, 3), "code": code,
            "size": size, "message": message, "timestamp": stamp,
        }) + b"\n")

    def flush(self) -> None:
        if not self._lines or self._fd is None:
            return
        data, self._lines = b"".join(self._lines), []
        try:
            os.write(self._fd, data)
        except OSError:
            pass  # the stats log is best effort: never fail a submission over it

    def reopen(self) -> None:
        """Write out what is buffered and open the file again (after logrotate moved it)."""
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
