"""Each stage's health and lag: a small JSON status file per stage, and readers of them.

A following stage (``process --follow``, ``import --follow``) rewrites its
status file whenever its backlog changes and at least every
``HEARTBEAT_SECONDS`` while idle; the file says what it is doing, how many
files wait for it, and since when the oldest of them waits (its lag).  A file
not rewritten for ``STALE_SECONDS`` means the stage is not running, whatever
its last words were.  Files are replaced atomically (write, rename), so a
reader never sees half of one; nothing here is on the data path, so nothing
is fsynced.

``telemetry pipeline status`` and the API server's ``/metrics`` both read
these files through :func:`pipeline_health`; the receiver's state comes from
its raw-log directory (files still open, and since when) and the pipeline
supervisor's own file (pids, restarts).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import orjson

from receiver.rawlog import FINISHED_SUFFIX

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0
_SAVING = threading.Lock()
STALE_SECONDS = 3 * HEARTBEAT_SECONDS


@dataclass
class StageStatus:
    """What one following stage says about itself; rewritten by :meth:`save`."""

    stage: str
    path: Path
    pid: int = field(default_factory=os.getpid)
    state: str = "starting"          # starting | idle | working | draining | stopped | failing
    started_at: float = field(default_factory=time.time)
    updated_at: float = 0.0
    backlog_files: int = 0
    backlog_bytes: int = 0
    oldest_waiting_since: float | None = None  # mtime of the oldest file not yet handled
    units_done: int = 0
    records_done: int = 0
    last_done_at: float | None = None
    errors: int = 0
    last_error: str | None = None
    _saved_at: float = field(default=0.0, repr=False)

    def update(self, **values: Any) -> None:
        for key, value in values.items():
            setattr(self, key, value)

    def save(self, force: bool = True) -> None:
        """Write the file now (``force``), or only if the last write is a heartbeat old."""
        with _SAVING:
            now = time.time()
            if not force and now - self._saved_at < HEARTBEAT_SECONDS:
                return
            self.updated_at = now
            data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_saved_at"}
            data["path"] = str(self.path)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                tmp.write_bytes(orjson.dumps(data))
                os.replace(tmp, self.path)
            except OSError as e:  # health is not worth stopping the data for
                log.warning("cannot write %s: %s", self.path, e)
            self._saved_at = now

    def keep_alive(self) -> None:
        """Rewrite the file every heartbeat from a thread, so a stage deep in a long unit
        (a big file, a slow server) still shows as running."""
        def beat() -> None:
            while True:
                time.sleep(HEARTBEAT_SECONDS / 2)
                if self.state == "stopped":
                    return
                self.save(force=False)

        threading.Thread(target=beat, name=f"{self.stage}-heartbeat", daemon=True).start()


def read_status(path: str | os.PathLike) -> dict[str, Any] | None:
    try:
        data = orjson.loads(Path(path).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def stage_view(status: dict[str, Any] | None, now: float | None = None) -> dict[str, Any]:
    """A status file as health: ``up``, ``lag_seconds`` (0 with no backlog), backlog, counters."""
    now = time.time() if now is None else now
    if status is None:
        return {"up": False, "state": "absent", "lag_seconds": None, "backlog_files": None}
    fresh = now - status.get("updated_at", 0) <= STALE_SECONDS
    state = status.get("state", "unknown")
    up = fresh and state not in ("stopped",)
    since = status.get("oldest_waiting_since")
    lag = max(0.0, now - since) if since and status.get("backlog_files") else 0.0
    return {"up": up, "state": state if fresh or state == "stopped" else "silent",
            "pid": status.get("pid"), "lag_seconds": round(lag, 3),
            "backlog_files": status.get("backlog_files"),
            "backlog_bytes": status.get("backlog_bytes"),
            "units_done": status.get("units_done"), "records_done": status.get("records_done"),
            "last_done_at": status.get("last_done_at"), "errors": status.get("errors"),
            "last_error": status.get("last_error"), "updated_at": status.get("updated_at")}


def receiver_view(log_path: str | os.PathLike, now: float | None = None) -> dict[str, Any]:
    """The receiver's side, from its directory: raw logs still open, and the age of the oldest.

    A raw log's name ends with the epoch milliseconds it was opened at, so the
    oldest open file tells how long a record may wait for rotation.
    """
    now = time.time() if now is None else now
    open_files, oldest = 0, None
    try:
        names = os.listdir(log_path)
    except FileNotFoundError:
        names = []
    for name in names:
        if name.endswith(FINISHED_SUFFIX) or name.startswith("."):
            continue
        stamp = name.rsplit(".", 1)[-1]
        if not stamp.isdigit():
            continue
        open_files += 1
        opened = int(stamp) / 1000.0
        oldest = opened if oldest is None else min(oldest, opened)
    lag = max(0.0, now - oldest) if oldest is not None else 0.0
    return {"open_files": open_files, "lag_seconds": round(lag, 3)}


def pipeline_health(data_dir: str | os.PathLike, now: float | None = None) -> dict[str, Any]:
    """Health and lag of every stage of a ``telemetry pipeline`` data directory."""
    from pipeline.datadir import DataDir

    dirs = DataDir(Path(data_dir))
    now = time.time() if now is None else now
    supervisor = read_status(dirs.supervisor_status) or {}
    running = supervisor.get("stages", {})
    stages: dict[str, dict[str, Any]] = {}
    receiver = receiver_view(dirs.raw, now)
    receiver.update(_supervised(running.get("receiver")))
    receiver["up"] = receiver.get("running", False)
    stages["receiver"] = receiver
    for name, path in (("converter", dirs.converter_status), ("importer", dirs.importer_status)):
        view = stage_view(read_status(path), now)
        view.update(_supervised(running.get(name)))
        stages[name] = view
    if "api" in running:
        api = _supervised(running["api"])
        api["up"] = api.get("running", False)
        stages["api"] = api
    total = sum(s.get("lag_seconds") or 0.0 for s in stages.values())
    state = supervisor.get("state", "absent")
    if state not in ("absent", "stopped") and now - supervisor.get("updated_at", 0) > STALE_SECONDS:
        state = "silent"  # its supervisor is gone without saying so (killed)
    return {"data_dir": str(data_dir), "supervisor_pid": supervisor.get("pid"),
            "supervisor_state": state,
            "stages": stages, "lag_seconds": round(total, 3)}


def _supervised(entry: dict[str, Any] | None) -> dict[str, Any]:
    if not entry:
        return {}
    return {"running": entry.get("running", False), "restarts": entry.get("restarts", 0),
            "supervised_pid": entry.get("pid"), "last_exit": entry.get("last_exit")}


def prometheus_text(health: dict[str, Any]) -> str:
    """Health as Prometheus text: ``telemetry_pipeline_*{stage="..."}`` gauges and counters."""
    lines = ["# HELP telemetry_pipeline_stage_up 1 when the stage runs and reports",
             "# TYPE telemetry_pipeline_stage_up gauge"]
    stages = health["stages"]
    for name, s in stages.items():
        lines.append(f'telemetry_pipeline_stage_up{{stage="{name}"}} {1 if s.get("up") else 0}')
    lines += ["# HELP telemetry_pipeline_stage_lag_seconds how long the oldest waiting input "
              "of the stage has waited",
              "# TYPE telemetry_pipeline_stage_lag_seconds gauge"]
    for name, s in stages.items():
        if s.get("lag_seconds") is not None:
            lines.append(f'telemetry_pipeline_stage_lag_seconds{{stage="{name}"}} '
                         f'{s["lag_seconds"]}')
    lines += ["# HELP telemetry_pipeline_stage_backlog_files files waiting for the stage",
              "# TYPE telemetry_pipeline_stage_backlog_files gauge"]
    for name, s in stages.items():
        value = s.get("backlog_files", s.get("open_files"))
        if value is not None:
            lines.append(f'telemetry_pipeline_stage_backlog_files{{stage="{name}"}} {value}')
    lines += ["# HELP telemetry_pipeline_stage_restarts_total restarts by the supervisor",
              "# TYPE telemetry_pipeline_stage_restarts_total counter"]
    for name, s in stages.items():
        if "restarts" in s:
            lines.append(f'telemetry_pipeline_stage_restarts_total{{stage="{name}"}} '
                         f'{s["restarts"]}')
    lines += ["# HELP telemetry_pipeline_stage_units_total files the stage has finished "
              "since it started", "# TYPE telemetry_pipeline_stage_units_total counter"]
    for name, s in stages.items():
        if s.get("units_done") is not None:
            lines.append(f'telemetry_pipeline_stage_units_total{{stage="{name}"}} '
                         f'{s["units_done"]}')
    return "\n".join(lines) + "\n"


def metrics_source(data_dir: str | os.PathLike) -> Callable[[], str]:
    """For an HTTP server's ``/metrics``: the pipeline's lines, read afresh on every call."""
    return lambda: prometheus_text(pipeline_health(data_dir))
