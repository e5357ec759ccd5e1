"""Start the real receiver as a subprocess and get a handle on it.

For tests, the demo, replay and benchmarks: :func:`start_receiver` runs
``python -m receiver`` with a config (``port 0`` by default, so a free port
is chosen), waits until it announces ``listening on http://HOST:PORT`` and
returns a :class:`RunningReceiver`.  Use it as a context manager; leaving the
block stops the receiver with SIGTERM (a clean shutdown that finishes every
raw log).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import orjson

from receiver.config import ReceiverConfig
from receiver.errors import ReceiverError

_LISTENING = re.compile(r"^listening on (http://(.+):(\d+))\s*$")
_WORKER = re.compile(r"^worker (\d+) (started|exited) pid (\d+)\s*$")


class RunningReceiver:
    """A receiver subprocess: ``url``, ``port``, ``stop()``, ``worker_pids()``."""

    def __init__(self, process: subprocess.Popen, config: ReceiverConfig, config_dir: str):
        self.process = process
        self.config = config
        self.url = ""
        self.host = ""
        self.port = 0
        self.output: list[str] = []
        self._workers: dict[int, int] = {}  # slot -> pid
        self._config_dir = config_dir
        self._ready = threading.Event()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read_stdout, name="receiver-stdout",
                                        daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return Path(self.config.log_path)

    def submit_url(self, path: str) -> str:
        """The URL to POST a submission with this path (the part after the prefix)."""
        return f"{self.url}{self.config.url_prefix}{path}"

    def worker_pids(self) -> list[int]:
        """Pids of the workers currently running, by slot."""
        with self._changed:
            return [self._workers[s] for s in sorted(self._workers)]

    def wait_for_workers(self, count: int | None = None, exclude: tuple[int, ...] = (),
                         timeout: float = 30.0) -> list[int]:
        """Wait until ``count`` workers (default: all) run, none of them in ``exclude``."""
        want = count or self.config.worker_count
        with self._changed:
            ok = self._changed.wait_for(
                lambda: len(self._workers) >= want
                and not set(self._workers.values()) & set(exclude)
                or self.process.poll() is not None, timeout)
            if not ok or self.process.poll() is not None:
                raise ReceiverError(f"receiver workers not up after {timeout}s: {self._workers}")
            return [self._workers[s] for s in sorted(self._workers)]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for a clean exit, and return the exit code (SIGKILL after ``timeout``)."""
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise ReceiverError(f"receiver did not stop within {timeout}s; killed it") from None
        self._cleanup()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the supervisor and every worker (no clean shutdown)."""
        for pid in self.worker_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.kill()
        self.process.wait()
        self._cleanup()

    def __enter__(self) -> "RunningReceiver":
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            try:
                self.stop()
            except ReceiverError:
                pass
        self._cleanup()

    def _cleanup(self) -> None:
        self._reader.join(timeout=5)
        try:
            Path(self._config_dir, "receiver.json").unlink(missing_ok=True)
            os.rmdir(self._config_dir)
        except OSError:
            pass

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            line = line.rstrip("\n")
            with self._changed:
                if len(self.output) < 10000:
                    self.output.append(line)
                m = _LISTENING.match(line)
                if m and not self._ready.is_set():
                    self.url, self.host, self.port = m.group(1), m.group(2), int(m.group(3))
                    self._ready.set()
                w = _WORKER.match(line)
                if w:
                    slot, what, pid = int(w.group(1)), w.group(2), int(w.group(3))
                    if what == "started":
                        self._workers[slot] = pid
                    elif self._workers.get(slot) == pid:
                        del self._workers[slot]
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()
        self._ready.set()


def start_receiver(config: ReceiverConfig, *, timeout: float = 30.0, python: str | None = None,
                   env: dict[str, str] | None = None,
                   wait_for_workers: bool = True) -> RunningReceiver:
    """Start ``python -m receiver`` with ``config`` and wait until it listens.

    Raises :class:`ReceiverError` (with the receiver's output) if it exits or
    does not announce its port within ``timeout`` seconds.  Its stderr goes
    to this process's stderr.
    """
    config_dir = tempfile.mkdtemp(prefix="receiver-config-")
    config_file = Path(config_dir, "receiver.json")
    config_file.write_bytes(orjson.dumps(config.to_dict()))
    root = str(Path(__file__).resolve().parent.parent)
    child_env = dict(os.environ if env is None else env)
    extra = child_env.get("PYTHONPATH")
    child_env["PYTHONPATH"] = root + os.pathsep + extra if extra else root
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    process = subprocess.Popen(
        [python or sys.executable, "-m", "receiver", "--config", str(config_file)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, env=child_env, bufsize=1,
    )
    handle = RunningReceiver(process, config, config_dir)
    if not handle._ready.wait(timeout) or not handle.port:
        try:
            process.wait(5)  # it closed stdout: it is exiting
        except subprocess.TimeoutExpired:
            pass
        if process.poll() is None:
            handle.kill()
        else:
            handle._cleanup()
        raise ReceiverError(f"receiver did not start (exit code {process.returncode}): "
                            + " | ".join(handle.output[-20:]))
    if wait_for_workers:
        try:
            handle.wait_for_workers(timeout=timeout)
        except ReceiverError:
            handle.kill()
            raise
    return handle
