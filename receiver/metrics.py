"""Counters for ``GET /metrics`` (Prometheus text format), summed over all workers.

Each worker counts in plain Python numbers (cheap on the request path) and
publishes them every so often into its own slot of a block of shared memory
that the supervisor created before forking; whichever worker answers
``/metrics`` adds up every slot.  A restarted worker continues from its
slot's values, so counters never go backwards.  A worker killed outright
loses at most the counts since its last publication.
"""

from __future__ import annotations

import bisect
import mmap
import struct

STATUS_CODES = (200, 400, 404, 405, 411, 413, 414, 500, 507)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# Layout of the value vector: one double each.
_REQ = 0                                   # requests by status, then "other"
_BYTES = _REQ + len(STATUS_CODES) + 1      # bytes of records stored
_RECORDS = _BYTES + 1
_ROTATIONS = _RECORDS + 1
_WRITE_ERRORS = _ROTATIONS + 1
_BATCH = _WRITE_ERRORS + 1                 # buckets (+Inf last), sum, count
_LAT = _BATCH + len(BATCH_BUCKETS) + 3
SIZE = _LAT + len(LATENCY_BUCKETS) + 3


class SharedSlots:
    """Anonymous shared memory holding one value vector per worker slot; create before fork."""

    def __init__(self, slots: int):
        self.slots = slots
        self._fmt = struct.Struct(f"<{SIZE}d")
        self._mm = mmap.mmap(-1, max(1, slots) * self._fmt.size)

    def read(self, slot: int) -> list[float]:
        return list(self._fmt.unpack_from(self._mm, slot * self._fmt.size))

    def write(self, slot: int, values: list[float]) -> None:
        self._fmt.pack_into(self._mm, slot * self._fmt.size, *values)


class Metrics:
    """One process's counters; ``shared``/``slot`` make ``render`` cover every worker."""

    def __init__(self, shared: SharedSlots | None = None, slot: int = 0):
        self.shared = shared
        self.slot = slot
        self.values = shared.read(slot) if shared is not None else [0.0] * SIZE
        self._code_index = {c: _REQ + i for i, c in enumerate(STATUS_CODES)}

    def request(self, code: int) -> None:
        self.values[self._code_index.get(code, _REQ + len(STATUS_CODES))] += 1

    def stored(self, records: int, nbytes: int) -> None:
        self.values[_RECORDS] += records
        self.values[_BYTES] += nbytes

    def rotation(self) -> None:
        self.values[_ROTATIONS] += 1

    def write_error(self) -> None:
        self.values[_WRITE_ERRORS] += 1

    def batch(self, size: int, seconds: float) -> None:
        """One group commit: ``size`` records made durable together in ``seconds``."""
        v = self.values
        v[_BATCH + bisect.bisect_left(BATCH_BUCKETS, size)] += 1
        v[_BATCH + len(BATCH_BUCKETS) + 1] += size
        v[_BATCH + len(BATCH_BUCKETS) + 2] += 1
        v[_LAT + bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        v[_LAT + len(LATENCY_BUCKETS) + 1] += seconds
        v[_LAT + len(LATENCY_BUCKETS) + 2] += 1

    def publish(self) -> None:
        if self.shared is not None:
            self.shared.write(self.slot, self.values)

    def totals(self) -> list[float]:
        if self.shared is None:
            return list(self.values)
        self.publish()
        total = [0.0] * SIZE
        for s in range(self.shared.slots):
            for i, x in enumerate(self.shared.read(s)):
                total[i] += x
        return total

    def snapshot(self) -> dict[str, float]:
        """Totals by name, for tests and summaries (``requests_200``, ``records``...)."""
        t = self.totals()
        out = {f"requests_{c}": t[_REQ + i] for i, c in enumerate(STATUS_CODES)}
        out["requests_other"] = t[_REQ + len(STATUS_CODES)]
        out.update(bytes=t[_BYTES], records=t[_RECORDS], rotations=t[_ROTATIONS],
                   write_errors=t[_WRITE_ERRORS], batches=t[_BATCH + len(BATCH_BUCKETS) + 2])
        return out

    def render(self) -> str:
        t = self.totals()
        lines = [
            "# HELP receiver_requests_total HTTP requests answered, by status code.",
            "# TYPE receiver_requests_total counter",
        ]
        for i, c in enumerate(STATUS_CODES):
            lines.append(f'receiver_requests_total{{code="{c}"}} {_num(t[_REQ + i])}')
        lines.append(f'receiver_requests_total{{code="other"}} {_num(t[_REQ + len(STATUS_CODES)])}')
        for name, idx, help_ in (
            ("receiver_stored_bytes_total", _BYTES, "Bytes of raw-log records made durable."),
            ("receiver_stored_records_total", _RECORDS,
             "Raw-log records made durable (acknowledged)."),
            ("receiver_rotations_total", _ROTATIONS,
             "Raw-log files finished (renamed to .finished)."),
            ("receiver_write_errors_total", _WRITE_ERRORS,
             "Failed raw-log writes (file abandoned)."),
        ):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name} {_num(t[idx])}"]
        lines += _histogram("receiver_fsync_batch_records", "Records per group commit.",
                            BATCH_BUCKETS, t, _BATCH)
        lines += _histogram("receiver_fsync_seconds", "Time to write and fsync one group commit.",
                            LATENCY_BUCKETS, t, _LAT)
        return "\n".join(lines) + "\n"


def _histogram(name: str, help_: str, bounds: tuple, t: list[float], base: int) -> list[str]:
    out = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
    running = 0.0
    for i, b in enumerate(bounds):
        running += t[base + i]
        out.append(f'{name}_bucket{{le="{b}"}} {_num(running)}')
    running += t[base + len(bounds)]
    out.append(f'{name}_bucket{{le="+Inf"}} {_num(running)}')
    out.append(f"{name}_sum {t[base + len(bounds) + 1]!r}")
    out.append(f"{name}_count {_num(t[base + len(bounds) + 2])}")
    return out


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else repr(x)
