"""The local engine: one process per map task, then one per reduce task.

Each task runs in its own process with a pipe back to the parent and a small
shared array where it records the file and line it is on.  The parent waits
on the pipes and the process sentinels together, so a task that raises, is
killed by a signal or by the OOM killer, or exits without a result fails the
job at once: the other tasks are terminated, every process is joined, and
the message names the task, its input file and line.  A run never succeeds
with a dead task.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

from mapreduce.errors import JobError
from mapreduce.mapper import run_map_task
from mapreduce.progress import Progress
from mapreduce.reducer import run_reduce_task
from mapreduce.task import (PROGRESS_FILE, PROGRESS_FILES_DONE, PROGRESS_LINE, PROGRESS_RECORDS,
                            PROGRESS_SLOTS, MapResult, MapTask, ReduceResult, ReduceTask)

# forkserver: children start clean (no inherited threads or sockets) yet faster than spawn.
# The server imports, once, everything a task process needs (this module, the mapper and
# reducer, ctypes for the progress array), so a task starts without importing anything of
# ours; what was left for each task to import cost 0.1 s of CPU per task (see docs/mapreduce.md).
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["mapreduce.local_engine", "multiprocessing.sharedctypes"])
POLL_SECONDS = 0.2


def start() -> None:
    """Start the fork server now, so that its start-up overlaps the job's listing of inputs.

    Idempotent: the server lives as long as this process and serves every later job.
    """
    from multiprocessing import forkserver

    forkserver.ensure_running()


def run_map_tasks(tasks: Sequence[MapTask], progress: Progress) -> list[MapResult]:
    return _run_all(run_map_task, tasks, progress)


def run_reduce_tasks(tasks: Sequence[ReduceTask], progress: Progress) -> list[ReduceResult]:
    return _run_all(run_reduce_task, tasks, progress)


def _watch_job(fd: int) -> None:
    """End this task when its job is gone (killed), instead of running on as an orphan.

    The job holds the only read end of the task's result pipe: when the job
    dies, the write end this task holds reports an error.
    """
    poller = select.poll()
    poller.register(fd, 0)  # only POLLERR / POLLHUP / POLLNVAL are reported
    while True:
        for _, events in poller.poll():
            if events & select.POLLNVAL:
                return  # the task closed the pipe itself: it is finishing
            if events & (select.POLLERR | select.POLLHUP):
                os._exit(1)


def _child(fn: Callable[..., Any], task: Any, conn: Connection, progress: Any) -> None:
    threading.Thread(target=_watch_job, args=(conn.fileno(),), daemon=True).start()
    try:
        result = fn(task, progress)
    except JobError as e:
        conn.send(("error", str(e)))
    except BaseException as e:  # noqa: BLE001 - everything must reach the parent as text
        conn.send(("error", f"{task.name} failed: {type(e).__name__}: {e}\n"
                            f"{traceback.format_exc().rstrip()}"))
    else:
        conn.send(("ok", result))
    finally:
        conn.close()


def _run_all(fn: Callable[..., Any], tasks: Sequence[Any], progress: Progress) -> list[Any]:
    running: dict[int, tuple[Any, Any, Connection, Any]] = {}
    results: dict[int, Any] = {}
    try:
        for task in tasks:
            state = _CONTEXT.RawArray("q", PROGRESS_SLOTS)
            parent_end, child_end = _CONTEXT.Pipe(duplex=False)
            proc = _CONTEXT.Process(target=_child, args=(fn, task, child_end, state),
                                    name=f"telemetry-{task.name.replace(' ', '-')}", daemon=True)
            proc.start()
            child_end.close()
            running[task.index] = (task, proc, parent_end, state)
        while running:
            handles = [r[2] for r in running.values()] + [r[1].sentinel for r in running.values()]
            ready = set(wait(handles, timeout=POLL_SECONDS))
            for index, (task, proc, conn, state) in list(running.items()):
                if conn in ready or proc.sentinel in ready:
                    message = _receive(conn)
                    if message is None:
                        proc.join()
                        raise JobError(_death_message(task, proc.exitcode, state))
                    kind, payload = message
                    if kind == "error":
                        raise JobError(payload)
                    results[index] = payload
                    proc.join()
                    conn.close()
                    del running[index]
            # Map tasks count files, reduce tasks count themselves.
            progress.update(
                sum(getattr(r, "files", 1) for r in results.values())
                + sum(r[3][PROGRESS_FILES_DONE] for r in running.values()),
                sum(getattr(r, "records", 0) for r in results.values())
                + sum(r[3][PROGRESS_RECORDS] for r in running.values()))
    finally:
        for task, proc, conn, state in running.values():
            if proc.is_alive():
                proc.terminate()
        for task, proc, conn, state in running.values():
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
    return [results[t.index] for t in tasks]


def _receive(conn: Connection) -> tuple[str, Any] | None:
    try:
        if conn.poll():
            return conn.recv()
    except (EOFError, OSError):
        pass
    return None


def _death_message(task: Any, exitcode: int | None, state: Any) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
        if -exitcode == signal.SIGKILL:
            how += " (out of memory?)"
    else:
        how = f"exited with code {exitcode} without a result"
    where = ""
    files = getattr(task, "files", None)
    if files:
        i = state[PROGRESS_FILE]
        if 0 <= i < len(files):
            where = f" while reading {files[i].path} line {state[PROGRESS_LINE]}"
    return f"{task.name} {how}{where}"
