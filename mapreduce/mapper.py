"""A map task: stream its files through the script's ``map`` into partitioned part files."""

from __future__ import annotations

import shutil
import traceback
from typing import MutableSequence

from converter.layout import LayoutError, LayoutReadStats, read_layout_file
from mapreduce.context import MapContext
from mapreduce.errors import JobError
from mapreduce.partition import PartitionWriter, mapper_dir
from mapreduce.profiling import profiled
from mapreduce.script import load_script
from mapreduce.task import (PROGRESS_FILE, PROGRESS_FILES_DONE, PROGRESS_LINE, PROGRESS_RECORDS,
                            PROGRESS_SLOTS, MapResult, MapTask)


def run_map_task(task: MapTask, progress: MutableSequence[int] | None = None) -> MapResult:
    """Map every record of the task's files; raises :class:`JobError` naming file and line."""
    return profiled(task.profile, task.work_dir, f"mapper_{task.index}", _map, task, progress)


def _map(task: MapTask, progress: MutableSequence[int] | None) -> MapResult:
    if progress is None:
        progress = [0] * PROGRESS_SLOTS
    script = load_script(task.script)
    out = mapper_dir(task.work_dir, task.index)
    # A task may be retried (Dask) or rerun: it always starts from an empty directory.
    shutil.rmtree(out, ignore_errors=True)
    writer = PartitionWriter(out, task.num_reducers)
    # Combining only helps when there is a reduce to combine for; map-only output is kept as is.
    context = MapContext(writer, script.combine if script.reduce is not None else None)
    stats = LayoutReadStats()
    map_fn = script.map
    records_before = 0
    try:
        _hook(task, script.setup_map, context, "setup_map")
        for file_index, f in enumerate(task.files):
            progress[PROGRESS_FILE] = file_index
            progress[PROGRESS_LINE] = 0
            dims = list(f.dimensions)
            line_no = 0
            try:
                for line_no, doc_id, value in read_layout_file(f.path, stats):
                    progress[PROGRESS_LINE] = line_no
                    map_fn(doc_id, dims, value, context)
                    progress[PROGRESS_RECORDS] += 1
            except JobError:
                raise
            except LayoutError as e:
                raise JobError(f"{task.name} cannot read its input {f.path}: {e}") from None
            except (Exception, SystemExit) as e:  # a script's sys.exit() is a failure too
                raise JobError(f"{task.name} failed on {f.path} line {line_no}: "
                               f"{type(e).__name__}: {e}\n{_script_traceback(e)}") from None
            progress[PROGRESS_FILES_DONE] += 1
            records_before = stats.records
        _hook(task, script.finish_map, context, "finish_map")
        try:
            context.finish()
        except Exception as e:
            raise JobError(f"{task.name} could not write its output after {records_before} "
                           f"records (is every key and value picklable?): "
                           f"{type(e).__name__}: {e}") from None
    except BaseException:
        writer.abort()
        raise
    return MapResult(task.index, len(task.files), stats.records, stats.bad_lines,
                     stats.bad_examples, writer.pairs)


def _hook(task: MapTask, fn, context: MapContext, name: str) -> None:
    """The script's ``setup_map`` or ``finish_map``, if it has one; a failure names it."""
    if fn is None:
        return
    try:
        fn(context)
    except (Exception, SystemExit) as e:
        raise JobError(f"{task.name}: {name} failed: {type(e).__name__}: {e}\n"
                       f"{_script_traceback(e)}") from None


def _script_traceback(e: BaseException) -> str:
    """The traceback frames from the job script onwards: what the analyst needs to see."""
    frames = traceback.extract_tb(e.__traceback__)
    frames = [fr for fr in frames if not fr.filename.endswith(("mapreduce/mapper.py",
                                                               "mapreduce/reducer.py"))]
    return "".join(traceback.format_list(frames)).rstrip()
