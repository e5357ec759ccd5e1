"""``telemetry pipeline``: receiver, converter, importer and API as supervised child processes.

Each stage is the same command a team would run on its own machine
(``telemetry serve``, ``telemetry process --follow``, ``telemetry import
--follow``, ``telemetry dashboard``), started here as a child process with
arguments derived from one :class:`~pipeline.config.PipelineConfig`.  The
supervisor only starts, watches, restarts and stops them; the data passes
between stages through the directories of :class:`~pipeline.datadir.DataDir`,
so a stage that dies loses nothing: its input waits on disk, and the stage
restarted (after a back-off that doubles up to ``restart_backoff_max`` while
it keeps dying young) resumes where it stopped.

Each child runs in a session of its own (a Ctrl-C in the terminal reaches
the supervisor only, which then stops the stages in order) and is asked by
the kernel to stop if the supervisor dies (``PR_SET_PDEATHSIG``), the way
the receiver's own workers are.

SIGTERM (or SIGINT) drains in order: the receiver stops accepting and
finishes its raw logs; then the converter is asked to convert everything
finished (SIGUSR1, or a restart with ``--drain`` if it was not ready to hear
it) and exits; then the importer likewise; then the API stops.  A second
SIGTERM hurries: each stage still finishes the file in hand, the rest waits
on disk for the next start.  Nothing is ever left half done.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

import orjson

from pipeline.config import PipelineConfig
from pipeline.datadir import DataDir
from pipeline.errors import PipelineError
from pipeline.health import HEARTBEAT_SECONDS, read_status
from receiver.logwriter import finalize_unfinished
from receiver.supervisor import _die_with_parent

POLL_SECONDS = 0.2
START_TIMEOUT = 60.0
HEALTHY_AFTER = 60.0      # a stage that lived this long starts again at the shortest back-off
FIRST_BACKOFF = 1.0
DRAIN_ATTEMPTS = 5
_URL = re.compile(r"(?:listening on|serving|running on|at)\s+(https?://[^\s/]+)")


@dataclass
class Stage:
    """One supervised child: how to start it, and what became of it."""

    name: str
    argv: Callable[[bool], list[str]]  # drain -> command line
    announces_url: bool = False
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    restart_at: float | None = None
    last_exit: str | None = None
    url: str | None = None
    output: list[str] = field(default_factory=list)
    url_seen: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class Pipeline:
    """The supervisor of one pipeline; :meth:`run` returns the exit code."""

    def __init__(self, config: PipelineConfig, out: TextIO | None = None,
                 err: TextIO | None = None, python: str | None = None):
        self.config = config
        self.dirs = DataDir(Path(config.data_dir).absolute())
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.python = python or sys.executable
        self.stages: dict[str, Stage] = {}
        self.mongo_url: str | None = None
        self._embedded = None
        self._lock = threading.Lock()
        self.stop_requested = False
        self.hurry = False
        self.state = "starting"
        self.failed: list[str] = []
        self._locked = False

    # -- the commands ---------------------------------------------------------

    def _telemetry(self, *args: str) -> list[str]:
        return [self.python, "-m", "telemetry", *args]

    def _receiver_argv(self, port: int) -> list[str]:
        c = self.config
        values = {"workers": c.receiver_workers, "stats_log_file": str(self.dirs.stats_log),
                  **c.receiver, "log_path": str(self.dirs.raw),
                  "port": port, "host": c.host, "max_log_age_ms": c.rotation_age_ms}
        path = self.dirs.state / "receiver.json"
        path.write_bytes(orjson.dumps(values, option=orjson.OPT_INDENT_2))
        return self._telemetry("serve", "--config", str(path))

    def _converter_argv(self, drain: bool) -> list[str]:
        c = self.config
        argv = self._telemetry("process", "--follow", str(self.dirs.raw),
                               "--output", str(self.dirs.layout),
                               "--workers", str(c.converter_workers))
        if c.histogram_cache:
            argv += ["--histogram-cache", str(Path(c.histogram_cache).absolute())]
        if c.histogram_server:
            argv += ["--histogram-server", c.histogram_server]
        return argv + (["--drain"] if drain else [])

    def _importer_argv(self, drain: bool) -> list[str]:
        c = self.config
        argv = self._telemetry("import", "--follow", str(self.dirs.layout),
                               "--mongo-url", self.mongo_url, "-d", c.database)
        argv += self._histogram_options()
        return argv + (["--drain"] if drain else [])

    def _api_argv(self, port: int) -> list[str]:
        c = self.config
        # The operations view finds the raw logs and error output under --pipeline-dir; the
        # receiver's stats log is the one given to it above, unless a receiver key names another.
        stats_log = c.receiver.get("stats_log_file") or str(self.dirs.stats_log)
        return self._telemetry("dashboard", "--host", c.host, "--port", str(port),
                               "--mongo-url", self.mongo_url, "-d", c.database,
                               "--pipeline-dir", str(self.dirs.root), "--stats-log", stats_log)

    def _histogram_options(self) -> list[str]:
        """The histogram options of the aggregating importer."""
        argv = []
        if self.config.histogram_cache:
            argv += ["--histogram-cache", str(Path(self.config.histogram_cache).absolute())]
        if self.config.histogram_server:
            argv += ["--histogram-server", self.config.histogram_server]
        return argv

    # -- running --------------------------------------------------------------

    def run(self) -> int:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._prepare()
            self._start_all()
            self.state = "running"
            self._write_status()
            print("pipeline ready", file=self.out, flush=True)
            while not self.stop_requested:
                self._supervise()
                self._write_status()
                time.sleep(POLL_SECONDS)
            self._drain()
        finally:
            self._kill_leftovers()
            self._stop_mongo()
            self.state = "stopped"
            if self._locked:  # never overwrite the status of the pipeline that holds the lock
                self._write_status()
            for s, h in old.items():
                signal.signal(s, h)
        self._say("stopped" + (f" with failures: {'; '.join(self.failed)}" if self.failed else ""))
        return 1 if self.failed else 0

    def _on_signal(self, signum, frame) -> None:
        if self.stop_requested:
            self.hurry = True
        self.stop_requested = True

    def _prepare(self) -> None:
        for d in (self.dirs.raw, self.dirs.layout, self.dirs.state):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise PipelineError(f"cannot create {d}: {e.strerror or e}") from None
        self._lock_data_dir()
        if self.config.mongo_url:
            self.mongo_url = self.config.mongo_url
        else:
            from importer.mongo import MongoConfig, ensure_embedded

            server, started = ensure_embedded(MongoConfig(data_dir=self.dirs.mongo))
            self._embedded = server if started else None
            self.mongo_url = server.url
            self._say(f"{'started' if started else 'using'} the embedded MongoDB server at "
                      f"{server.url} (data in {server.storage_path})")

    def _lock_data_dir(self) -> None:
        import fcntl

        self._lock_file = open(self.dirs.state / "lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(f"another pipeline runs on {self.dirs.root}") from None
        self._locked = True

    def _start_all(self) -> None:
        c = self.config
        ports = {"receiver": c.port, "api": c.dashboard_port}
        # Consumers first, so that the first raw log finds its converter waiting.
        if c.api:
            self.stages["api"] = Stage("api", lambda d: self._api_argv(ports["api"]),
                                       announces_url=True)
        self.stages["importer"] = Stage("importer", self._importer_argv)
        self.stages["converter"] = Stage("converter", self._converter_argv)
        self.stages["receiver"] = Stage("receiver", lambda d: self._receiver_argv(ports["receiver"]),
                                        announces_url=True)
        for stage in self.stages.values():
            self._spawn(stage)
        for name in ("api", "receiver"):
            stage = self.stages.get(name)
            if stage is None:
                continue
            if not stage.url_seen.wait(START_TIMEOUT) or not stage.url:
                raise PipelineError(f"the {name} did not start: "
                                    + " | ".join(stage.output[-10:]))
            ports[name] = int(stage.url.rsplit(":", 1)[1])  # a restart keeps the port
            print(f"{name} at {stage.url}", file=self.out, flush=True)

    def _spawn(self, stage: Stage, drain: bool = False) -> None:
        argv = stage.argv(drain)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        stage.url_seen.clear()
        stage.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1, env=env, start_new_session=True,
            preexec_fn=functools.partial(_die_with_parent, os.getpid()))
        stage.started_at = time.monotonic()
        stage.restart_at = None
        stage.reader = threading.Thread(target=self._forward, args=(stage, stage.process),
                                        name=f"{stage.name}-output", daemon=True)
        stage.reader.start()
        self._say(f"{stage.name} started (pid {stage.process.pid})"
                  + (" to drain" if drain else ""))

    def _forward(self, stage: Stage, process: subprocess.Popen) -> None:
        for line in process.stdout:
            line = line.rstrip("\n")
            stage.output = (stage.output + [line])[-50:]
            if stage.announces_url and not stage.url_seen.is_set():
                m = _URL.search(line)
                if m:
                    stage.url = m.group(1)
                    stage.url_seen.set()
            with self._lock:
                print(f"{stage.name}: {line}", file=self.err, flush=True)
        stage.url_seen.set()  # it ended: nobody should keep waiting for its URL

    def _supervise(self) -> None:
        now = time.monotonic()
        for stage in self.stages.values():
            if stage.process is not None and stage.process.poll() is not None \
                    and stage.restart_at is None:
                self._died(stage, now)
            if stage.restart_at is not None and now >= stage.restart_at:
                stage.restarts += 1
                self._spawn(stage)

    def _died(self, stage: Stage, now: float) -> None:
        stage.last_exit = _describe_exit(stage.process.returncode)
        if stage.process.returncode != 0 and stage.name == "receiver":
            self._finalize_raw_logs()
        lived = now - stage.started_at
        stage.backoff = FIRST_BACKOFF if lived >= HEALTHY_AFTER or not stage.backoff else \
            min(self.config.restart_backoff_max, stage.backoff * 2)
        stage.restart_at = now + stage.backoff
        self._say(f"{stage.name} (pid {stage.process.pid}) {stage.last_exit} after {lived:.1f}s; "
                  f"restarting in {stage.backoff:.1f}s")

    def _finalize_raw_logs(self) -> None:
        """Finish the raw logs a dead receiver left open, so the converter gets them now."""
        log_base = self.config.receiver.get("log_base", "telemetry")
        hostname = self.config.receiver.get("hostname") or socket.gethostname()
        for path in finalize_unfinished(self.dirs.raw, log_base, hostname):
            self._say(f"finalized {path.name} left by a dead receiver")

    # -- stopping -------------------------------------------------------------

    def _drain(self) -> None:
        self.state = "draining"
        self._write_status()
        self._say("draining: receiver first, then converter, importer, API")
        receiver = self.stages.get("receiver")
        if receiver is not None:
            self._stop(receiver)
            self._finalize_raw_logs()
        for name in ("converter", "importer"):
            stage = self.stages[name]
            if self.hurry:
                self._stop(stage)
            else:
                self._drain_stage(stage)
        if "api" in self.stages:
            self._stop(self.stages["api"])

    def _stop(self, stage: Stage) -> None:
        """SIGTERM (the stage finishes the unit in hand), SIGKILL after ``stop_timeout``."""
        stage.restart_at = None
        if not stage.running:
            return
        stage.process.send_signal(signal.SIGTERM)
        try:
            stage.process.wait(self.config.stop_timeout + 30)
        except subprocess.TimeoutExpired:
            self._say(f"{stage.name} (pid {stage.pid}) did not stop in time; killing it")
            stage.process.kill()
            stage.process.wait()
            self.failed.append(f"{stage.name} killed")
        stage.last_exit = _describe_exit(stage.process.returncode)
        if stage.reader is not None:
            stage.reader.join(5)
        self._say(f"{stage.name} stopped ({stage.last_exit})")

    def _drain_stage(self, stage: Stage) -> None:
        """Let the stage finish everything waiting for it, then exit; restart it if it dies."""
        stage.restart_at = None
        if stage.running and self._ready(stage):
            stage.process.send_signal(signal.SIGUSR1)
            self._say(f"{stage.name}: asked to drain")
        else:
            if stage.running:  # still starting: it may not hear SIGUSR1 yet
                self._stop(stage)
            self._spawn(stage, drain=True)
        attempts = 1
        while True:
            code = self._wait(stage)
            if code == 0:
                break
            if code is None:  # hurried: the stage was told to stop
                return
            self._say(f"{stage.name} {_describe_exit(code)} while draining")
            if attempts >= DRAIN_ATTEMPTS:
                self.failed.append(f"{stage.name} could not drain")
                return
            time.sleep(min(self.config.restart_backoff_max, FIRST_BACKOFF * 2 ** attempts))
            attempts += 1
            stage.restarts += 1
            self._spawn(stage, drain=True)
        stage.last_exit = _describe_exit(0)
        if stage.reader is not None:
            stage.reader.join(5)
        self._say(f"{stage.name} drained")

    def _wait(self, stage: Stage) -> int | None:
        while True:
            code = stage.process.poll()
            if code is not None:
                return code
            if self.hurry:
                self._stop(stage)
                return None
            self._write_status()
            time.sleep(POLL_SECONDS)

    def _ready(self, stage: Stage) -> bool:
        """True once the stage's status file shows it running its loop (its handlers are set)."""
        path = {"converter": self.dirs.converter_status,
                "importer": self.dirs.importer_status}[stage.name]
        status = read_status(path) or {}
        return status.get("pid") == stage.pid and status.get("state") not in (None, "starting",
                                                                              "stopped")

    def _kill_leftovers(self) -> None:
        for stage in self.stages.values():
            if stage.running:
                self._stop(stage)

    def _stop_mongo(self) -> None:
        if self._embedded is not None:
            self._embedded.stop()
            self._say("stopped the embedded MongoDB server")
            self._embedded = None

    # -- reporting ------------------------------------------------------------

    def _write_status(self) -> None:
        now = time.time()
        last = getattr(self, "_status_at", 0.0)
        if self.state == "running" and now - last < 1.0:
            return
        self._status_at = now
        stages = {}
        for name, s in self.stages.items():
            stages[name] = {"pid": s.pid, "running": s.running, "restarts": s.restarts,
                            "last_exit": s.last_exit, "url": s.url,
                            "restarting_in": round(s.restart_at - time.monotonic(), 1)
                            if s.restart_at is not None else None}
        data = {"pid": os.getpid(), "state": self.state, "updated_at": now,
                "heartbeat_seconds": HEARTBEAT_SECONDS, "stages": stages,
                "data_dir": str(self.dirs.root)}
        path = self.dirs.supervisor_status
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_bytes(orjson.dumps(data))
            os.replace(tmp, path)
        except OSError as e:
            self._say(f"cannot write {path}: {e.strerror or e}")

    def _say(self, message: str) -> None:
        with self._lock:
            print(f"pipeline: {message}", file=self.err, flush=True)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
