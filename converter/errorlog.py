"""The error output: every rejected record, kept whole, grouped by reason.

Rejected records are written in the raw-log format itself (v2, so the client
IP survives), one file per reason and input unit::

    {errors}/{reason}/{unit_id}.v2.finished   the records, exactly as received
    {errors}/{reason}/{unit_id}.v2.jsonl      one line per record: reason, message,
                                              path, timestamp, ip, source file, offsets

Because the records are a raw log, ``telemetry process --retry-errors DIR``
feeds them back through the converter once the cause is fixed (a missing
revision served, a bug fixed), and any other raw-log tool can read them.
Files are published with the unit's layout files (same manifest), so a crash
never leaves a half error file behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson

from converter.storage import Pending
from receiver.rawlog import FINISHED_SUFFIX, Record, encode_record

SIDECAR_SUFFIX = ".jsonl"
RETRIED_SUFFIX = ".retried"


class _Group:
    """One reason's two work files, written as records come."""

    def __init__(self, work_dir: Path, reason: str):
        self.reason = reason
        self.records_path = work_dir / f"{reason}{FINISHED_SUFFIX}"
        self.notes_path = work_dir / f"{reason}{SIDECAR_SUFFIX}"
        self.records = open(self.records_path, "wb")
        self.notes = open(self.notes_path, "wb")
        self.size = 0
        self.count = 0

    def close(self) -> None:
        self.records.close()
        self.notes.close()


class ErrorWriter:
    """Writes one unit's rejected records into work files; :meth:`finish` makes them pending files.

    Records go to disk as they come: a raw file whose every record is
    rejected (a new revision not served yet) must not be held in memory.
    """

    def __init__(self, errors_dir: str | os.PathLike, unit_id: str, source: str):
        self.errors_dir = Path(errors_dir)
        self.work_dir = self.errors_dir / ".work" / unit_id
        self.unit_id = unit_id
        self.source = source
        self._groups: dict[str, _Group] = {}

    def add(self, record: Record, reason: str, message: str) -> None:
        group = self._groups.get(reason)
        if group is None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            group = self._groups[reason] = _Group(self.work_dir, reason)
        raw = encode_record(record.path, record.data, record.timestamp, record.ip or "")
        note = {"reason": reason, "message": message, "path": record.path,
                "timestamp": record.timestamp, "ip": record.ip or None, "source": self.source,
                "source_offset": record.offset, "offset": group.size, "length": len(raw)}
        group.records.write(raw)
        group.notes.write(orjson.dumps(note) + b"\n")
        group.size += len(raw)
        group.count += 1

    @property
    def count(self) -> int:
        return sum(g.count for g in self._groups.values())

    def finish(self) -> list[Pending]:
        """Close the work files; they are published with the unit's layout files."""
        pending = []
        for reason, group in sorted(self._groups.items()):
            group.close()
            base = self.errors_dir / reason / f"{self.unit_id}.v2"
            pending.append(Pending(str(group.records_path), f"{base}{FINISHED_SUFFIX}"))
            pending.append(Pending(str(group.notes_path), f"{base}{SIDECAR_SUFFIX}"))
        return pending

    def abort(self) -> None:
        for group in self._groups.values():
            group.close()
        shutil.rmtree(self.work_dir, ignore_errors=True)


def error_files(errors_dir: str | os.PathLike) -> list[Path]:
    """The error record files under a directory (any depth, dot directories skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(errors_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath, n) for n in filenames
                     if n.endswith(FINISHED_SUFFIX) and not n.startswith("."))
    return sorted(found)


def read_notes(path: str | os.PathLike) -> list[dict]:
    """The notes of an error file (its ``.jsonl`` sidecar), in record order."""
    path = Path(path)
    sidecar = path.with_name(path.name.removesuffix(FINISHED_SUFFIX).removesuffix(RETRIED_SUFFIX)
                             + SIDECAR_SUFFIX)
    return [orjson.loads(line) for line in sidecar.read_bytes().splitlines() if line.strip()]


def mark_retried(path: Path) -> Path:
    """Rename a retried error file out of the way (``.finished`` -> ``.retried``)."""
    target = path.with_name(path.name.removesuffix(FINISHED_SUFFIX) + RETRIED_SUFFIX)
    os.replace(path, target)
    return target
