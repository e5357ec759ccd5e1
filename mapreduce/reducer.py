"""A reduce task: gather one partition from every mapper, group by key, call ``reduce``.

Grouping happens in memory up to a budget; past it the groups are sorted and
spilled to a run file under ``{work_dir}/reducer_R.spill/``, and the runs are
merged at the end, so a job with tens of millions of distinct keys finishes
in bounded memory.  Keys are ordered by ``repr`` (the same text the partition
hash uses), so the output order does not depend on whether anything spilled.
"""

from __future__ import annotations

import heapq
import itertools
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

from mapreduce.context import COMBINE_SIZE, Collector, ReduceContext
from mapreduce.errors import JobError
from mapreduce.partition import (PICKLE_PROTOCOL, key_token, part_path, read_frames,
                                 reducer_output_path)
from mapreduce.profiling import profiled
from mapreduce.script import load_script
from mapreduce.task import ReduceResult, ReduceTask

# Memory held by grouped data, estimated from what was read: twice its pickled size plus
# a per-pair overhead (dict entry, list, small objects).  Measured on string, tuple and list
# keys and values, this is within about 15% of tracemalloc's count, mostly above it.
BYTES_FACTOR = 2
BYTES_PER_PAIR = 250
SPILL_FRAME_KEYS = 1000


def run_reduce_task(task: ReduceTask, progress: Any = None) -> ReduceResult:
    """Reduce partition ``task.index`` into ``{work_dir}/reducer_{index}``."""
    return profiled(task.profile, task.work_dir, f"reducer_{task.index}", _reduce, task)


def _identity(key: Any, values: list[Any], context: ReduceContext) -> None:
    """A map-only job writes its map output as is."""
    for v in values:
        context.write(key, v)


def _reduce(task: ReduceTask) -> ReduceResult:
    script = load_script(task.script)
    reduce_fn = script.reduce or _identity
    combine = script.combine if script.reduce is not None else None
    spill_dir = Path(task.work_dir) / f"reducer_{task.index}.spill"
    shutil.rmtree(spill_dir, ignore_errors=True)
    groups = Groups(task.memory_bytes, spill_dir, combine)
    result = ReduceResult(task.index)
    try:
        for m in task.mappers:
            path = part_path(task.work_dir, m, task.index)
            if not path.exists():
                raise JobError(f"{task.name}: input {path} is missing (did mapper {m} finish?)")
            frame_no = 0
            try:
                for frame_no, (frame, size) in enumerate(read_frames(path), 1):
                    groups.add_frame(frame, size)
            except JobError:
                raise
            except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as e:
                raise JobError(f"{task.name}: cannot read {path} frame {frame_no + 1}: "
                               f"{type(e).__name__}: {e}") from None
            except Exception as e:
                raise JobError(f"{task.name}: combine failed while reading {path} frame "
                               f"{frame_no}: {type(e).__name__}: {e}") from None
        output = reducer_output_path(task.work_dir, task.index)
        with open(output, "w", encoding="utf-8", newline="") as out:
            context = ReduceContext(out)
            if script.setup_reduce is not None:
                try:
                    script.setup_reduce(context)
                except Exception as e:
                    raise JobError(f"{task.name}: setup_reduce failed: "
                                   f"{type(e).__name__}: {e}") from None
            for key, values in groups.items():
                result.keys += 1
                try:
                    reduce_fn(key, values, context)
                except Exception as e:
                    raise JobError(f"{task.name} failed on key {key!r} (inputs {_inputs(task)}): "
                                   f"{type(e).__name__}: {e}") from None
            result.records = context.records
        result.spills = groups.spills
    finally:
        groups.close()
    shutil.rmtree(spill_dir, ignore_errors=True)
    return result


def _inputs(task: ReduceTask) -> str:
    return f"{task.work_dir}/mapper_*/part_{task.index}"


class Groups:
    """Values grouped by key, spilled to sorted runs on disk past a memory budget."""

    def __init__(self, memory_bytes: int, spill_dir: Path,
                 combine: Callable[..., Any] | None = None):
        self.memory_bytes = memory_bytes
        self.spill_dir = spill_dir
        self.combine = combine
        self.spills = 0
        self._values: dict[Any, list[Any]] = {}
        self._held = 0
        self._runs: list[Path] = []

    def add_frame(self, pairs: list[tuple[Any, Any]], size: int) -> None:
        values = self._values
        combine = self.combine
        for key, value in pairs:
            vs = values.get(key)
            if vs is None:
                values[key] = [value]
            else:
                vs.append(value)
                if combine is not None and len(vs) >= COMBINE_SIZE:
                    collector = Collector()
                    combine(key, vs, collector)
                    values[key] = collector.values
        self._held += size * BYTES_FACTOR + len(pairs) * BYTES_PER_PAIR
        if self._held > self.memory_bytes:
            self._spill()

    def _sorted(self) -> list[tuple[str, Any, list[Any]]]:
        items = [(key_token(k), k, v) for k, v in self._values.items()]
        items.sort(key=lambda item: item[0])
        return items

    def _spill(self) -> None:
        if not self._values:
            return
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"run_{len(self._runs)}"
        items = self._sorted()
        with open(path, "wb") as f:
            for start in range(0, len(items), SPILL_FRAME_KEYS):
                pickle.dump(items[start:start + SPILL_FRAME_KEYS], f, protocol=PICKLE_PROTOCOL)
        self._runs.append(path)
        self.spills += 1
        self._values = {}
        self._held = 0

    def items(self) -> Iterator[tuple[Any, list[Any]]]:
        """Every key with all its values, ordered by ``repr`` of the key."""
        if not self._runs:
            for _, key, values in self._sorted():
                yield key, values
            return
        self._spill()
        merged = heapq.merge(*(_read_run(p) for p in self._runs), key=lambda item: item[0])
        for _, group in itertools.groupby(merged, key=lambda item: item[0]):
            # Keys with the same repr are nearly always equal; keep apart any that are not.
            by_key: dict[Any, list[Any]] = {}
            for _, key, values in group:
                by_key.setdefault(key, []).extend(values)
            yield from by_key.items()

    def close(self) -> None:
        self._values = {}


def _read_run(path: Path) -> Iterator[tuple[str, Any, list[Any]]]:
    for frame, _ in read_frames(path):
        yield from frame
