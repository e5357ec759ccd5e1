"""Run a MapReduce job: the original ``mapreduce/job.py`` interface and its library form.

``run_job(JobConfig(...))`` finds the layout files the filter allows (and,
with a bucket, the matching S3 objects, downloaded into ``{work_dir}/cache``),
splits them among mappers largest-first to the least-loaded, runs the map
and reduce tasks on the chosen engine, and concatenates the reducer outputs
into ``output``.  Intermediate data stays under the work dir in a fixed
layout (``mapper_M/part_R``, ``reducer_R``) so a failed run can be
inspected; it is removed after a successful one unless ``keep_work``.

``python -m mapreduce.job JOB.py --input-filter F --data-dir D --work-dir W
--output O`` is the command line of the original; ``telemetry mapreduce``
is the same command.
"""

from __future__ import annotations

import heapq
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from converter.layout import LayoutError, find_layout_files
from converter.schema import Schema, SchemaError
from mapreduce.errors import ConfigError, JobError
from mapreduce.partition import reducer_output_path
from mapreduce.progress import Progress
from mapreduce.script import ScriptSource, load_script
from mapreduce.task import InputFile, MapResult, MapTask, ReduceResult, ReduceTask

__all__ = ["JobConfig", "JobResult", "JobError", "ConfigError", "run_job", "assign_files", "main"]

ENGINES = ("local", "dask")


@dataclass
class JobConfig:
    """Everything a job run needs; the CLI builds one from its flags, tests build one directly."""

    job_script: Path
    data_dir: Path
    work_dir: Path
    output: Path
    input_filter: Path | None = None
    num_mappers: int = field(default_factory=lambda: os.cpu_count() or 1)
    num_reducers: int = 1
    local_only: bool = False
    bucket: str | None = None
    endpoint_url: str | None = None
    aws_key: str | None = None
    aws_secret_key: str | None = None
    delete_data: bool = False
    profile: bool = False
    engine: str = "local"
    scheduler: str | None = None
    reduce_memory_mb: float = 512.0     # per reducer, before it spills sorted runs to disk
    download_threads: int = 8
    keep_work: bool = False             # keep mapper_*/reducer_* after a successful run
    progress: bool | None = None        # None: a progress bar when stderr is a terminal
    verbose: bool = False


@dataclass
class JobResult:
    output: Path
    files: int = 0
    bytes: int = 0
    records: int = 0
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)
    mappers: int = 0
    reducers: int = 0
    output_records: int = 0
    spills: int = 0
    downloaded: list[str] = field(default_factory=list)   # S3 keys fetched in this run
    cached: list[str] = field(default_factory=list)       # S3 keys already in the cache
    seconds: float = 0.0
    cpu_seconds: float = 0.0                              # used by the map and reduce tasks
    peak_task_rss_mb: float = 0.0                         # the largest task process's peak RSS
    # Wall seconds per phase, in order: setup, inputs, [engine start], map, reduce,
    # [engine stop], output.  What is not map or reduce is the framework's serial cost.
    phases: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        text = (f"{self.records} records from {self.files} files ({self.bytes / 1e6:.1f} MB) "
                f"in {self.seconds:.2f}s ({self.cpu_seconds:.2f}s CPU in tasks, "
                f"peak {self.peak_task_rss_mb:.0f} MB per task) "
                f"with {self.mappers} mappers and {self.reducers} reducers; "
                f"{self.output_records} output records in {self.output}")
        if self.downloaded or self.cached:
            text += f"; {len(self.downloaded)} files downloaded, {len(self.cached)} already cached"
        if self.spills:
            text += f"; reducers spilled {self.spills} runs to disk"
        if self.bad_lines:
            examples = ", ".join(self.bad_examples[:3])
            text += f"; {self.bad_lines} bad lines skipped (e.g. {examples})"
        return text


def _check(config: JobConfig) -> None:
    if config.num_mappers <= 0:
        raise ConfigError("the number of mappers must be greater than zero")
    if config.num_reducers <= 0:
        raise ConfigError("the number of reducers must be greater than zero")
    if config.engine not in ENGINES:
        raise ConfigError(f"unknown engine {config.engine!r} (choose from {', '.join(ENGINES)})")
    if config.scheduler and config.engine != "dask":
        raise ConfigError("a scheduler address needs --engine dask")
    if not Path(config.data_dir).is_dir():
        raise ConfigError(f"data dir {config.data_dir} is not a directory")
    if not Path(config.job_script).is_file():
        raise ConfigError(f"job script {config.job_script} is not a file")
    if config.input_filter is not None and not Path(config.input_filter).is_file():
        raise ConfigError(f"input filter {config.input_filter} is not a file")
    if config.reduce_memory_mb <= 0:
        raise ConfigError("the reducer memory budget must be positive")
    if config.bucket and not config.local_only or config.endpoint_url:
        from converter.export import s3_location_problem

        problem = s3_location_problem(config.bucket or None, config.endpoint_url)
        if problem:
            raise ConfigError(problem)
    # The job writes its output and work dir, never directories above them it was not given.
    output_parent = Path(config.output).absolute().parent
    if not output_parent.is_dir():
        raise ConfigError(f"output {config.output}: directory {output_parent} does not exist")
    if Path(config.output).is_dir():
        raise ConfigError(f"output {config.output} is a directory, not a file")
    work_parent = Path(config.work_dir).absolute().parent
    if not Path(config.work_dir).is_dir() and not work_parent.is_dir():
        raise ConfigError(f"work dir {config.work_dir}: directory {work_parent} does not exist")


def _warn_about_filter_levels(filter: Schema, log) -> None:
    """A filter applies by position; say so when its names are not the packaged schema's.

    Only a warning: a dataset may be laid out by another schema, which the job
    does not know.
    """
    import converter

    names = Schema.load(Path(converter.__file__).parent / "telemetry_schema.json").names
    for i, name in enumerate(filter.names):
        if i >= len(names) or name != names[i]:
            log(f"warning: input filter dimension {i + 1} is {name!r}, but the packaged "
                f"schema's is {names[i] if i < len(names) else None!r}; filters apply by "
                f"position ({', '.join(names)})")
            return


def assign_files(files: Sequence[InputFile], mappers: int) -> list[list[InputFile]]:
    """Largest file first, each to the least-loaded mapper: groups of nearly equal size."""
    groups: list[list[InputFile]] = [[] for _ in range(mappers)]
    heap = [(0, i) for i in range(mappers)]
    for f in sorted(files, key=lambda f: (-f.size, f.path)):
        load, i = heapq.heappop(heap)
        groups[i].append(f)
        heapq.heappush(heap, (load + f.size, i))
    return groups


def find_inputs(config: JobConfig, filter: Schema | None, result: JobResult,
                log=print) -> list[InputFile]:
    """Local files under the data dir, plus the matching S3 objects once they are downloaded."""
    try:
        local = find_layout_files(config.data_dir, filter)
    except LayoutError as e:
        raise ConfigError(str(e)) from None
    inputs = [InputFile(os.fspath(f.path), tuple(f.dimensions), f.size) for f in local]
    if config.bucket and not config.local_only:
        from mapreduce.s3 import S3Source

        source = S3Source(config.bucket, endpoint_url=config.endpoint_url, aws_key=config.aws_key,
                          aws_secret_key=config.aws_secret_key, threads=config.download_threads)
        remote = source.list(filter)
        have = {f.relpath for f in local}
        cache = Path(config.work_dir) / "cache"
        # With the cache as data dir, what is already there is read once, not twice.
        local_paths = {os.path.realpath(i.path) for i in inputs}
        remote = [r for r in remote if r.key not in have
                  and os.path.realpath(cache / r.key) not in local_paths]
        fetched = source.download(remote, cache)
        result.downloaded = [d.key for d in fetched if d.fetched]
        result.cached = [d.key for d in fetched if not d.fetched]
        log(f"S3 {config.bucket}: {len(remote)} matching files, "
            f"{len(result.downloaded)} downloaded, {len(result.cached)} already cached")
        inputs += [InputFile(os.fspath(d.path), tuple(d.dimensions), d.size) for d in fetched]
    return inputs


class _Laps:
    """Wall seconds per phase of a run, added up into ``phases`` as each phase ends."""

    def __init__(self, phases: dict[str, float]):
        self.phases = phases
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self._last
        self._last = now


def run_job(config: JobConfig, log=None) -> JobResult:
    """Run a job to completion; raises :class:`ConfigError` or :class:`JobError` on failure."""
    log = log or (lambda message: print(message, file=sys.stderr))
    start = time.perf_counter()
    result = JobResult(Path(config.output))
    laps = _Laps(result.phases)
    _check(config)
    if config.engine == "local":
        from mapreduce import local_engine

        local_engine.start()  # its start-up runs while this process loads the script and lists
    # Absolute paths: tasks may run elsewhere (Dask workers) with another working directory.
    config = replace(config, data_dir=Path(config.data_dir).absolute(),
                     work_dir=Path(config.work_dir).absolute())
    try:
        filter = Schema.load(config.input_filter) if config.input_filter is not None else None
    except SchemaError as e:
        raise ConfigError(f"input filter: {e}") from None
    if filter is not None:
        _warn_about_filter_levels(filter, log)
    script = ScriptSource.read(config.job_script)
    load_script(script)  # a script that does not load fails here, before any process starts
    work_dir = Path(config.work_dir)
    work_dir.mkdir(exist_ok=True)
    _clear_intermediate(work_dir)
    laps.lap("setup")

    inputs = find_inputs(config, filter, result, log)
    result.files = len(inputs)
    result.bytes = sum(f.size for f in inputs)
    output = Path(config.output)
    if not inputs:
        log("the filter matched no input files: the output is empty")
        output.write_bytes(b"")
        laps.lap("output")
        result.seconds = time.perf_counter() - start
        return result

    mappers = min(config.num_mappers, len(inputs))
    if mappers < config.num_mappers:
        log(f"the filter matched only {len(inputs)} files: running {mappers} mappers")
    groups = assign_files(inputs, mappers)
    if config.verbose:
        for i, g in enumerate(groups):
            log(f"mapper {i}: {len(g)} files, {sum(f.size for f in g) / 1e6:.1f} MB")
    memory = int(config.reduce_memory_mb * 1024 * 1024)
    map_tasks = [MapTask(i, tuple(g), os.fspath(work_dir), config.num_reducers, script,
                         config.profile) for i, g in enumerate(groups)]
    reduce_tasks = [ReduceTask(r, tuple(range(mappers)), os.fspath(work_dir), script, memory,
                               config.profile) for r in range(config.num_reducers)]
    laps.lap("inputs")
    progress = Progress(config.progress)
    try:
        if config.engine == "dask":
            from mapreduce.dask_engine import DaskEngine

            with DaskEngine(config.scheduler, mappers) as engine:
                laps.lap("engine start")
                map_results = engine.map(map_tasks, progress)
                laps.lap("map")
                reduce_results = engine.reduce(reduce_tasks, progress)
                laps.lap("reduce")
            laps.lap("engine stop")
        else:
            from mapreduce import local_engine

            progress.phase("map", len(inputs))
            map_results = local_engine.run_map_tasks(map_tasks, progress)
            laps.lap("map")
            progress.phase("reduce", len(reduce_tasks), unit="task")
            reduce_results = local_engine.run_reduce_tasks(reduce_tasks, progress)
            laps.lap("reduce")
    finally:
        progress.close()

    _concatenate([reducer_output_path(work_dir, r) for r in range(config.num_reducers)], output)
    _tally(result, map_results, reduce_results)
    result.mappers, result.reducers = mappers, config.num_reducers
    if config.delete_data:
        for f in inputs:
            Path(f.path).unlink(missing_ok=True)
    if not config.keep_work:
        _clear_intermediate(work_dir)
    laps.lap("output")
    result.seconds = time.perf_counter() - start
    if config.verbose:
        log("phases: " + ", ".join(f"{name} {seconds:.2f}s"
                                   for name, seconds in result.phases.items()))
    return result


def _tally(result: JobResult, maps: list[MapResult], reduces: list[ReduceResult]) -> None:
    result.cpu_seconds = sum(t.cpu_seconds for t in [*maps, *reduces])
    result.peak_task_rss_mb = max(t.peak_rss_mb for t in [*maps, *reduces])
    for m in maps:
        result.records += m.records
        result.bad_lines += m.bad_lines
        result.bad_examples.extend(m.bad_examples[:5 - len(result.bad_examples)])
    for r in reduces:
        result.output_records += r.records
        result.spills += r.spills


def _concatenate(parts: list[Path], output: Path) -> None:
    """Reducer outputs in reducer order, written beside ``output`` then renamed into place."""
    tmp = output.with_name(f".{output.name}.tmp")
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    os.replace(tmp, output)


def _clear_intermediate(work_dir: Path) -> None:
    """Remove what a previous run left (``mapper_*``, ``reducer_*``); the download cache stays."""
    for entry in work_dir.iterdir():
        if entry.name.startswith(("mapper_", "reducer_")):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    """``python -m mapreduce.job``: the same command as ``telemetry mapreduce``."""
    from mapreduce.cli import mapreduce

    mapreduce.main(args=argv, prog_name="python -m mapreduce.job")


if __name__ == "__main__":
    main()
