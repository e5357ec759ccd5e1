"""A job script: the analyst's Python file with ``map`` and optional ``reduce``.

Optional hooks: ``combine``, ``setup_reduce``, and ``setup_map``/``finish_map``
around each map task (a job that sums in memory writes its sums at the end).

SPEC section 5.  Scripts written for the original run unchanged: they are
loaded as the module ``telemetry_job`` (as the original did), with their own
directory on ``sys.path`` so they can import modules that sit next to them.
A script travels to other processes and Dask workers as its path plus its
source text, so a worker without the file on disk can still run it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable

from mapreduce.errors import ConfigError

MODULE_NAME = "telemetry_job"


@dataclass(frozen=True)
class ScriptSource:
    """What a worker needs to load a job script: where it came from and its text."""

    path: str
    text: str
    digest: str = field(default="", compare=False)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ScriptSource":
        path = os.path.abspath(os.fspath(path))
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read job script {path}: {e.strerror or e}") from None
        return cls(path, text, hashlib.sha1(text.encode()).hexdigest())


@dataclass(frozen=True)
class JobScript:
    module: types.ModuleType
    map: Callable[..., Any]
    reduce: Callable[..., Any] | None
    combine: Callable[..., Any] | None
    setup_reduce: Callable[..., Any] | None
    setup_map: Callable[..., Any] | None = None
    finish_map: Callable[..., Any] | None = None


_loaded: dict[tuple[str, str], JobScript] = {}


def load_script(source: ScriptSource) -> JobScript:
    """The job's functions, loaded once per process for a given path and text."""
    cached = _loaded.get((source.path, source.digest))
    if cached is not None:
        sys.modules[MODULE_NAME] = cached.module
        return cached
    directory = os.path.dirname(source.path)
    if directory and directory not in sys.path:
        sys.path.insert(0, directory)
    module = types.ModuleType(MODULE_NAME)
    module.__file__ = source.path
    # Registered before running so that values of classes the script defines pickle and unpickle.
    sys.modules[MODULE_NAME] = module
    try:
        code = compile(source.text, source.path, "exec")
        exec(code, module.__dict__)
    except SyntaxError as e:
        raise ConfigError(f"job script {source.path} line {e.lineno}: syntax error: {e.msg}"
                          ) from None
    except Exception as e:
        raise ConfigError(f"job script {source.path} failed to load: "
                          f"{type(e).__name__}: {e}") from None
    functions = {name: getattr(module, name, None)
                 for name in ("map", "reduce", "combine", "setup_reduce", "setup_map",
                              "finish_map")}
    for name, fn in functions.items():
        if fn is not None and not callable(fn):
            raise ConfigError(f"job script {source.path}: {name} is not a function")
    if functions["map"] is None:
        raise ConfigError(f"job script {source.path} has no "
                          f"map(key, dimensions, value, context) function")
    script = JobScript(module, **functions)
    _loaded[(source.path, source.digest)] = script
    return script
