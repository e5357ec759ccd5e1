"""``--profile``: cProfile statistics per task, in ``{work_dir}/profile/{task}.prof``.

Read them with ``python -m pstats FILE`` or snakeviz.
"""

from __future__ import annotations

import cProfile
import os
from pathlib import Path
from typing import Any, Callable


def profile_path(work_dir: str | os.PathLike, task_name: str) -> Path:
    return Path(work_dir) / "profile" / f"{task_name}.prof"


def profiled(enabled: bool, work_dir: str, task_name: str, fn: Callable[..., Any], *args: Any) -> Any:
    if not enabled:
        return fn(*args)
    profiler = cProfile.Profile()
    try:
        return profiler.runcall(fn, *args)
    finally:
        path = profile_path(work_dir, task_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(path)
