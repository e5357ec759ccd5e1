"""Start ``telemetry pipeline`` as a subprocess and get its URLs: for the benchmark, the demo, tests.

The pipeline announces ``receiver at URL``, ``api at URL`` and then
``pipeline ready`` on stdout; :func:`start_pipeline` waits for that and
returns a :class:`RunningPipeline`.  Its stderr (every stage's output) goes
where the caller says: a file, or kept in ``err_lines``.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from typing import IO

from pipeline.errors import PipelineError

_ANNOUNCE = re.compile(r"^(\w+) at (http://\S+)\s*$")


class RunningPipeline:
    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.urls: dict[str, str] = {}
        self.out_lines: list[str] = []
        self.err_lines: list[str] = []
        self._threads: list[threading.Thread] = []

    @property
    def receiver_url(self) -> str:
        return self.urls["receiver"]

    def _keep(self, stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def _follow(self, stream: IO[str] | None, lines: list[str]) -> None:
        if stream is not None:
            t = threading.Thread(target=self._keep, args=(stream, lines), daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float | None = 600) -> int:
        """SIGTERM (the pipeline drains in order) and its exit code; SIGKILL after ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise PipelineError(f"the pipeline did not stop within {timeout}s; killed it") from None
        for t in self._threads:
            t.join(5)
        return self.process.returncode


def start_pipeline(args: list[str], stderr: IO[str] | None = None,
                   new_session: bool = False) -> RunningPipeline:
    """Run ``telemetry pipeline ARGS``; returns once it is ready (or raises, with its last words).

    ``stderr`` None keeps the stages' output in ``err_lines``.  ``new_session``
    keeps a Ctrl-C in the caller's terminal from reaching it (the caller then
    stops it, and it drains).
    """
    process = subprocess.Popen([sys.executable, "-m", "telemetry", "pipeline", *args],
                               stdout=subprocess.PIPE,
                               stderr=stderr if stderr is not None else subprocess.PIPE,
                               text=True, bufsize=1, start_new_session=new_session)
    running = RunningPipeline(process)
    if stderr is None:
        running._follow(process.stderr, running.err_lines)
    for line in process.stdout:
        running.out_lines.append(line.rstrip("\n"))
        m = _ANNOUNCE.match(line)
        if m:
            running.urls[m.group(1)] = m.group(2)
        if line.startswith("pipeline ready"):
            break
    running._follow(process.stdout, running.out_lines)
    if "receiver" not in running.urls:
        process.wait()
        for t in running._threads:
            t.join(5)
        raise PipelineError("the pipeline did not start (exit code "
                            f"{process.returncode}): " + " | ".join(running.err_lines[-10:]))
    return running
