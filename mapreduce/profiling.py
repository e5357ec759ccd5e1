"""Per-task measurements: CPU time and peak memory always; with ``--profile``, cProfile.

The statistics go to ``{work_dir}/profile/{task}.prof``.

Read them with ``python -m pstats FILE`` or snakeviz.
"""

from __future__ import annotations

import cProfile
import os
import resource
import time
from pathlib import Path
from typing import Any, Callable


def profile_path(work_dir: str | os.PathLike, task_name: str) -> Path:
    return Path(work_dir) / "profile" / f"{task_name}.prof"


def profiled(enabled: bool, work_dir: str, task_name: str, fn: Callable[..., Any],
             *args: Any) -> Any:
    """Run a task, profiled if asked, and record its CPU time and peak memory in the result."""
    start = time.thread_time()
    if not enabled:
        result = fn(*args)
    else:
        profiler = cProfile.Profile()
        try:
            result = profiler.runcall(fn, *args)
        finally:
            path = profile_path(work_dir, task_name)
            path.parent.mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(path)
    result.cpu_seconds = time.thread_time() - start
    # The peak of the whole process (a Dask worker runs many tasks): an upper bound per task.
    result.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result
