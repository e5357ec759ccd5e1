"""``telemetry aggregates rebuild``: recompute aggregates from the layout as a MapReduce job.

A rebuild covers whole (channel, major version) pairs: the filter picks
files, every file of the same channels and major versions is read with them
(a by-build cell gathers pings of many submission days and a by-day cell of
many builds, so nothing smaller can be replaced exactly), and the result
replaces the stored aggregates of those pairs (:meth:`Store.replace_scope`).
The job is :mod:`aggregations.jobs.aggregates`, run by the MapReduce
framework on local processes or Dask; it uses the same aggregation function
as the importer's hook, so both give identical aggregates.

Killed at any point, a rerun computes everything again from the layout and
replaces it: the result is that of one clean run.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from aggregations.aggregates import Aggregate, major_version
from aggregations.compare import render_script
from aggregations.store import Store, file_entry
from converter.layout import LayoutError, find_layout_files
from converter.schema import Schema, SchemaError
from importer.importer import DEFAULT_SCHEMA, file_digest

JOB = Path(__file__).parent / "jobs" / "aggregates.py"


class RebuildError(Exception):
    """A rebuild that cannot start (bad directory, filter or engine) or whose job failed."""


@dataclass
class RebuildConfig:
    data_dir: Path
    filter: Path | None = None
    engine: str = "local"
    num_mappers: int = field(default_factory=lambda: os.cpu_count() or 1)
    scheduler: str | None = None
    work_dir: Path | None = None
    histogram_cache: str | None = None
    histogram_server: str | None = None
    schema: Path | None = None


@dataclass
class RebuildResult:
    files: int = 0
    scope: list[tuple[str, str]] = field(default_factory=list)
    documents: int = 0
    records: int = 0
    seconds: float = 0.0
    job_seconds: float = 0.0
    stats: Counter = field(default_factory=Counter)

    def describe(self) -> str:
        pairs = ", ".join(f"{c} {v}" for c, v in self.scope) or "nothing"
        left = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(self.stats.items())
                         if k != "pings")
        return (f"rebuilt {pairs}: {self.records} records from {self.files} files, "
                f"{self.stats.get('pings', 0)} pings aggregated into {self.documents} documents "
                f"in {self.seconds:.1f}s (job {self.job_seconds:.1f}s)"
                + (f"; left out: {left}" if left else ""))


def plan(config: RebuildConfig) -> tuple[list[str], Schema | None, list, set[tuple[str, str]]]:
    """(dimension names, scope filter, files, scope) for a rebuild."""
    try:
        schema = Schema.load(config.schema or DEFAULT_SCHEMA)
        chosen_filter = Schema.load(config.filter) if config.filter else None
    except SchemaError as e:
        raise RebuildError(str(e)) from None
    names = schema.names
    if "appUpdateChannel" not in names or "appVersion" not in names:
        raise RebuildError("the schema needs appUpdateChannel and appVersion dimensions")
    if not Path(config.data_dir).is_dir():
        raise RebuildError(f"data dir {config.data_dir} is not a directory")
    try:
        chosen = find_layout_files(config.data_dir, chosen_filter)
        every = find_layout_files(config.data_dir) if chosen_filter else chosen
    except LayoutError as e:
        raise RebuildError(str(e)) from None
    ci, vi = names.index("appUpdateChannel"), names.index("appVersion")

    def pair(lf):
        d = lf.dimensions
        return d[ci], major_version(d[vi]) or ""

    scope = {pair(lf) for lf in chosen}
    files = [lf for lf in every if pair(lf) in scope]
    channels = sorted({lf.dimensions[ci] for lf in files})
    versions = sorted({lf.dimensions[vi] for lf in files})
    scope_filter = {"version": 1, "dimensions": [
        {"field_name": n, "allowed_values": channels if n == "appUpdateChannel"
         else versions if n == "appVersion" else "*"} for n in names]}
    return names, scope_filter, files, scope


def rebuild(config: RebuildConfig, db, log=None) -> RebuildResult:
    """Recompute and replace the aggregates of the (channel, version) pairs the filter touches."""
    import time

    from mapreduce.errors import ConfigError, JobError
    from mapreduce.job import JobConfig, run_job

    log = log or (lambda message: None)
    started = time.monotonic()
    names, scope_filter, files, scope = plan(config)
    result = RebuildResult(files=len(files), scope=sorted(scope))
    if not files:
        log("the filter matched no layout files: nothing to rebuild")
        return result
    with tempfile.TemporaryDirectory(prefix="aggregates-rebuild-", dir=config.work_dir) as tmp:
        tmp = Path(tmp)
        script = render_script(JOB, {
            "histogram_cache": config.histogram_cache,
            "histogram_server": config.histogram_server, "dimensions": names},
            tmp / "aggregates_job.py")
        filter_path = tmp / "filter.json"
        filter_path.write_bytes(orjson.dumps(scope_filter))
        job = JobConfig(job_script=script, data_dir=Path(config.data_dir), work_dir=tmp / "work",
                        output=tmp / "output.txt", input_filter=filter_path,
                        num_mappers=config.num_mappers, num_reducers=1, engine=config.engine,
                        scheduler=config.scheduler, progress=False)
        try:
            job_result = run_job(job, log=log)
        except (ConfigError, JobError) as e:
            raise RebuildError(str(e)) from None
        result.records = job_result.records
        result.job_seconds = job_result.seconds
        agg = Aggregate()
        with open(tmp / "output.txt", "rb") as f:
            for line in f:
                _, _, value = line.partition(b"\t")
                if value.strip():
                    agg.merge(Aggregate.from_json(orjson.loads(value)))
    result.stats = agg.stats
    entries = {}
    for lf in files:
        dims = dict(zip(names, lf.dimensions))
        entries[lf.relpath] = file_entry(dims, file_digest(lf.path), lf.size)
    result.documents = Store(db).replace_scope(agg, scope, entries)
    result.seconds = time.monotonic() - started
    return result
