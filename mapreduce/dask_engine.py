"""The Dask engine: the same map and reduce tasks, run on a Dask distributed cluster.

Each map task and reduce task is one Dask task calling the very functions the
local engine runs, so the semantics and the output are the same.  Tasks
read inputs and write intermediate files by path: on a real cluster the data
dir and the work dir must be on a file system every worker sees (NFS, a
shared volume).  The job script travels as its text.  Without a scheduler
address a ``LocalCluster`` of one single-threaded worker process per mapper
is started on loopback, with :data:`QUIET_CLUSTER` settings.
"""

from __future__ import annotations

import uuid
from typing import Any, Sequence

from mapreduce.errors import JobError
from mapreduce.mapper import run_map_task
from mapreduce.progress import Progress
from mapreduce.reducer import run_reduce_task
from mapreduce.task import MapResult, MapTask, ReduceResult, ReduceTask

# Dask settings for the cluster this engine starts itself.  It lives for one job and nobody
# watches its dashboard, so what serves the dashboard (the statistical profiler sampling
# every 10 ms, a 20 ms event-loop tick in the scheduler and every worker, memory and system
# monitors every 100 and 500 ms) only takes CPU and the GIL from the tasks.  Measured on a
# busy 2-core machine over a 100,000-record job: 2.5 to 3.7 s of CPU in the workers beyond
# the tasks' own, 2.4 to 3.5 s in the scheduler, against 0.5 to 0.9 s and 0.7 to 1.3 s with
# these (docs/mapreduce.md; measured with the memory monitor at 1 s, kept at 500 ms so that a
# runaway worker is still stopped quickly).  They suit a cluster of one's own too (its config).
QUIET_CLUSTER = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
}


def local_cluster(workers: int) -> Any:
    """A ``LocalCluster`` of single-threaded worker processes on loopback, quiet as above."""
    import dask
    from distributed import LocalCluster

    # The nannies hand the configuration in force when they are made to their workers.
    with dask.config.set(QUIET_CLUSTER):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                            host="127.0.0.1", dashboard_address="127.0.0.1:0")


class DaskEngine:
    def __init__(self, scheduler: str | None, workers: int):
        self.scheduler = scheduler
        self.workers = workers
        self._cluster: Any = None
        self._client: Any = None

    def __enter__(self) -> "DaskEngine":
        try:
            from distributed import Client
        except ImportError:
            raise JobError("the Dask engine needs dask[distributed]: "
                           "pip install 'telemetry-platform[dask]'") from None
        try:
            if self.scheduler:
                _check_reachable(self.scheduler)
                self._client = Client(self.scheduler, timeout=SCHEDULER_TIMEOUT)
            else:
                self._cluster = local_cluster(self.workers)
                self._client = Client(self._cluster)
        except (OSError, TimeoutError) as e:
            self.__exit__(None, None, None)
            raise JobError(f"cannot reach the Dask scheduler {self.scheduler}: {e}") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def run(self, map_tasks: Sequence[MapTask], reduce_tasks: Sequence[ReduceTask],
            progress: Progress) -> tuple[list[MapResult], list[ReduceResult]]:
        return self.map(map_tasks, progress), self.reduce(reduce_tasks, progress)

    def map(self, tasks: Sequence[MapTask], progress: Progress) -> list[MapResult]:
        progress.phase("map", sum(len(t.files) for t in tasks))
        return self._gather(run_map_task, tasks, progress)

    def reduce(self, tasks: Sequence[ReduceTask], progress: Progress) -> list[ReduceResult]:
        progress.phase("reduce", len(tasks), unit="task")
        return self._gather(run_reduce_task, tasks, progress)

    def _gather(self, fn: Any, tasks: Sequence[Any], progress: Progress) -> list[Any]:
        from distributed import as_completed

        # A fresh key per run: a long-lived scheduler must never hand back an older run's result.
        run_id = uuid.uuid4().hex
        futures = {}
        for task in tasks:
            key = f"telemetry-{task.name.replace(' ', '-')}-{run_id}"
            futures[self._client.submit(fn, task, key=key, pure=False)] = task
        results: dict[int, Any] = {}
        try:
            for future in as_completed(futures):
                task = futures[future]
                try:
                    results[task.index] = future.result()
                except JobError:
                    raise
                except Exception as e:  # KilledWorker, CommClosedError, a worker's own failure
                    where = ""
                    if getattr(task, "files", None):
                        where = f" (inputs: {', '.join(f.path for f in task.files[:3])}" \
                                f"{', ...' if len(task.files) > 3 else ''})"
                    raise JobError(f"{task.name} failed on Dask: {type(e).__name__}: {e}{where}"
                                   ) from None
                done = list(results.values())
                progress.update(sum(getattr(r, "files", 1) for r in done),
                                sum(getattr(r, "records", 0) for r in done))
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()
        return [results[t.index] for t in tasks]


# How long a scheduler that accepts connections may take to answer the client.
SCHEDULER_TIMEOUT = "10s"


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once when nothing listens at a tcp:// scheduler address.

    Dask's client retries a refused connection until its timeout; a wrong
    address or a scheduler that is down is known after one connection attempt.
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme != "tcp" or not parts.hostname:
        return  # tls://, inproc://...: left to Dask
    try:
        with socket.create_connection((parts.hostname, parts.port or 8786), timeout=timeout):
            pass
    except OSError as e:
        raise OSError(f"nothing answers at {parts.hostname}:{parts.port or 8786} "
                      f"({e.strerror or e})") from None
