"""The operations summary: what the receiver, converter and importer recorded, in one document.

Read from what each stage already writes, nothing new on their side:

- the receiver's stats log (one JSON line per request: url, code, timestamp...)
  gives submissions per minute by channel and the HTTP status codes;
- the receiver's ``GET /metrics`` (when its URL is given) gives the totals
  since it started;
- the converter's error output (``{errors}/{reason}/*.jsonl`` sidecars, one
  line per rejected record) gives rejections by reason;
- the importer's ``imports`` collection (``finished_at`` of each layout file)
  against the newest ``.finished`` raw log gives the import lag.

Each source is optional; one that is not configured or cannot be read is
named in ``problems`` and the rest is still answered.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from converter.errorlog import SIDECAR_SUFFIX
from receiver.rawlog import FINISHED_SUFFIX

STATS_TAIL_BYTES = 16 * 1024 * 1024   # how much of the stats log's end is read
DEFAULT_URL_PREFIX = "/submit/telemetry/"


@dataclass
class OperationsConfig:
    """Where the operations view finds each stage's records (all optional)."""

    stats_log: str | None = None          # the receiver's stats_log_file
    raw_logs: str | None = None           # the receiver's log_path (the .finished files)
    errors_dir: str | None = None         # the converter's error output
    receiver_url: str | None = None       # http://host:port of a receiver, for /metrics
    url_prefix: str = DEFAULT_URL_PREFIX
    window_minutes: int = 60
    imports_collection: str = "imports"


def channel_of(url: str, prefix: str = DEFAULT_URL_PREFIX) -> str:
    """The appUpdateChannel of a submission URL (SPEC 1), or ``"unknown"``."""
    path = url.split("?", 1)[0]
    if not path.startswith(prefix):
        return "other"
    parts = path[len(prefix):].split("/")
    # docId/reason/appName/appVersion/appUpdateChannel/appBuildID
    if len(parts) < 6 or not parts[4]:
        return "unknown"
    return parts[4]


def _parse_time(stamp: str) -> datetime | None:
    try:
        return datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return None


def read_stats_log(path: str | os.PathLike, window_minutes: int, prefix: str = DEFAULT_URL_PREFIX,
                   tail_bytes: int = STATS_TAIL_BYTES) -> dict[str, Any]:
    """Submissions per minute by channel and status codes over the log's last ``window_minutes``.

    The window ends at the newest line, not at the clock, so a receiver that
    stopped still shows its last hour; ``newest`` says when that was.
    """
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - tail_bytes)
        f.seek(start)
        data = f.read()
    lines = data.split(b"\n")
    if start:
        lines = lines[1:]   # the first line is probably cut
    records = []
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
            when = _parse_time(rec["timestamp"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            bad += 1
            continue
        if when is None:
            bad += 1
            continue
        records.append((when, rec))
    out: dict[str, Any] = {"stats_log": os.fspath(path), "lines_read": len(records), "bad_lines": bad,
                           "newest": None, "per_minute": [], "status_codes": {}}
    if not records:
        return out
    newest = max(w for w, _ in records)
    since = newest - timedelta(minutes=window_minutes)
    per_minute: Counter = Counter()
    codes: Counter = Counter()
    for when, rec in records:
        if when <= since:
            continue
        code = rec.get("code")
        codes[str(code)] += 1
        url = str(rec.get("url", ""))
        if code == 200 and url.startswith(prefix):
            minute = when.replace(second=0).strftime("%Y-%m-%dT%H:%M:00Z")
            per_minute[(minute, channel_of(url, prefix))] += 1
    out["newest"] = newest.strftime("%Y-%m-%dT%H:%M:%SZ")
    out["per_minute"] = [{"minute": m, "channel": ch, "count": n} for (m, ch), n in sorted(per_minute.items())]
    out["status_codes"] = dict(sorted(codes.items()))
    return out


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text into ``{'name{labels}': value}``, comments dropped."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


class _SidecarCounts:
    """Rejections per reason from the error sidecars; published files never change, so counts are kept."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, float, int]] = {}   # path -> (size, mtime, lines)

    def count(self, errors_dir: str | os.PathLike) -> tuple[Counter, int]:
        reasons: Counter = Counter()
        files = 0
        for dirpath, dirnames, filenames in os.walk(errors_dir):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.endswith(SIDECAR_SUFFIX) or name.startswith("."):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                key = (st.st_size, st.st_mtime)
                seen = self._seen.get(path)
                if seen is None or seen[:2] != key:
                    with open(path, "rb") as f:
                        lines = sum(1 for line in f if line.strip())
                    self._seen[path] = seen = (*key, lines)
                reasons[Path(dirpath).name] += seen[2]
                files += 1
        return reasons, files


def newest_finished(raw_logs: str | os.PathLike) -> tuple[float | None, list[float]]:
    """The mtime of the newest finished raw log in a directory, and every finished file's mtime."""
    mtimes = []
    with os.scandir(raw_logs) as it:
        for entry in it:
            if entry.name.endswith(FINISHED_SUFFIX) and entry.is_file():
                mtimes.append(entry.stat().st_mtime)
    return (max(mtimes) if mtimes else None), mtimes


def _iso(ts: float | datetime | None) -> str | None:
    if ts is None:
        return None
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=timezone.utc)
        return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def read_imports(db, collection: str = "imports") -> dict[str, Any]:
    """The importer's progress from its ``imports`` collection (``db`` a PyMongo ``AsyncDatabase``)."""
    coll = db[collection]
    newest = await coll.find_one({"state": "done"}, sort=[("finished_at", -1)], projection={"finished_at": 1})
    return {"files_done": await coll.count_documents({"state": "done"}),
            "files_started": await coll.count_documents({"state": "started"}),
            "newest_finished_at": newest.get("finished_at") if newest else None}


class Operations:
    """Builds the summary; keep one per server so sidecar counts are not re-read."""

    def __init__(self, config: OperationsConfig):
        self.config = config
        self._sidecars = _SidecarCounts()

    async def summary_async(self, db=None, metrics_text: str | None = None) -> dict[str, Any]:
        """:meth:`summary` for a server: files are read in a thread, the database asked asynchronously."""
        import asyncio

        imports = None
        problem = None
        if db is not None:
            try:
                imports = await read_imports(db, self.config.imports_collection)
            except Exception as e:  # noqa: BLE001 - any database failure is reported, never a 500
                problem = f"cannot read the {self.config.imports_collection} collection: {type(e).__name__}: {e}"
        out = await asyncio.get_running_loop().run_in_executor(None, self.summary, imports, metrics_text)
        if problem:
            out["problems"] = [p for p in out["problems"] if not p.startswith("no database")] + [problem]
        return out

    def summary(self, imports_state: dict[str, Any] | None = None,
                metrics_text: str | None = None) -> dict[str, Any]:
        """The whole summary; ``imports_state`` is what :func:`read_imports` found (None: no database)."""
        cfg = self.config
        problems: list[str] = []
        out: dict[str, Any] = {"generated_at": _iso(datetime.now(timezone.utc)),
                               "window_minutes": cfg.window_minutes, "problems": problems}
        receiver: dict[str, Any] = {"stats_log": cfg.stats_log, "per_minute": [], "status_codes": {},
                                    "metrics": None}
        if cfg.stats_log:
            try:
                receiver.update(read_stats_log(cfg.stats_log, cfg.window_minutes, cfg.url_prefix))
            except OSError as e:
                problems.append(f"cannot read the stats log {cfg.stats_log}: {e.strerror or e}")
        else:
            problems.append("no stats log given (--stats-log): no submission rates or status codes")
        if metrics_text is not None:
            receiver["metrics"] = parse_metrics(metrics_text)
        out["receiver"] = receiver

        converter: dict[str, Any] = {"errors_dir": cfg.errors_dir, "rejected": {}, "error_files": 0}
        if cfg.errors_dir:
            if os.path.isdir(cfg.errors_dir):
                reasons, files = self._sidecars.count(cfg.errors_dir)
                converter["rejected"] = dict(reasons.most_common())
                converter["error_files"] = files
            else:
                problems.append(f"the converter error directory {cfg.errors_dir} does not exist")
        else:
            problems.append("no converter error directory given (--errors-dir): no rejections")
        out["converter"] = converter

        imports: dict[str, Any] = {"newest_raw_finished": None, "newest_imported": None, "lag_seconds": None,
                                   "raw_files_waiting": None, "files_done": None, "files_started": None}
        raw_newest, raw_mtimes = None, []
        if cfg.raw_logs:
            try:
                raw_newest, raw_mtimes = newest_finished(cfg.raw_logs)
            except OSError as e:
                problems.append(f"cannot list the raw logs in {cfg.raw_logs}: {e.strerror or e}")
        else:
            problems.append("no raw log directory given (--raw-logs): import lag unknown")
        imports["newest_raw_finished"] = _iso(raw_newest)
        if imports_state is not None:
            imports["files_done"] = imports_state["files_done"]
            imports["files_started"] = imports_state["files_started"]
            finished_at = imports_state["newest_finished_at"]
            imports["newest_imported"] = _iso(finished_at)
            if isinstance(finished_at, datetime):
                if finished_at.tzinfo is None:
                    finished_at = finished_at.replace(tzinfo=timezone.utc)
                done_ts = finished_at.timestamp()
                if raw_newest is not None:
                    imports["lag_seconds"] = max(0.0, raw_newest - done_ts)
                    imports["raw_files_waiting"] = sum(1 for m in raw_mtimes if m > done_ts)
            elif raw_newest is not None:
                imports["raw_files_waiting"] = len(raw_mtimes)
        else:
            problems.append("no database: import progress unknown")
        out["imports"] = imports
        return out
