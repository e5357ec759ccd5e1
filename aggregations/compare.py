"""The same question answered twice, by a MapReduce job over the layout and by a Mongo pipeline.

Two independent paths to one figure catch what neither would alone: a lost
or doubled import, a filter that means one thing on disk and another in
MongoDB, a pipeline stage a server evaluates wrongly.  Each named pipeline
has a job script in :mod:`aggregations.jobs`; its output lines are rows of
the pipeline's columns, so both sides are lined up by their key columns and
compared value by value (floats within a relative 1e-9).
"""

from __future__ import annotations

import ast
import inspect
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from aggregations.formats import cell, table
from aggregations.pipelines import PIPELINES, AggregationError, build_pipeline, key_columns
from converter.schema import Schema

JOBS_DIR = Path(__file__).parent / "jobs"
REL_TOL = 1e-9


@dataclass
class Difference:
    key: tuple
    what: str


@dataclass
class Comparison:
    name: str
    columns: list[str]
    keys: list[str]
    mongo: list[dict[str, Any]]
    job: list[dict[str, Any]]
    differences: list[Difference] = field(default_factory=list)

    @property
    def agree(self) -> bool:
        return not self.differences

    def describe(self, width: int = 24, max_width: int = 120) -> str:
        """Both sides in one table, then each difference on its own line, then the verdict.

        Side by side (a mongo and a mapreduce column per figure) when that fits
        in ``max_width`` characters; else one line per row and figure, so a
        histogram's nine figures do not make a 400-column table.
        """
        values = [c for c in self.columns if c not in self.keys]
        mongo, job = _by_key(self.mongo, self.keys), _by_key(self.job, self.keys)
        keys = sorted(set(mongo) | set(job), key=_sort_key)

        def side(row: dict, c: str) -> str:
            return _short(cell(row.get(c)), width) if row else "-"

        header = list(self.keys) + [
            f"{c} ({side_})" for c in values for side_ in ("mongo", "mapreduce")
        ]
        cells = []
        for key in keys:
            m, j = mongo.get(key, {}), job.get(key, {})
            row = [cell(k) for k in key]
            for c in values:
                row += [side(m, c), side(j, c)]
            cells.append(row)
        numeric = [False] * len(self.keys) + [None] * (len(header) - len(self.keys))
        text = table(cells, header, numeric).rstrip("\n")
        if max(map(len, text.splitlines() or [""])) > max_width:
            header = [*self.keys, "figure", "mongo", "mapreduce"]
            cells = [
                [cell(k) for k in key] + [c, side(mongo.get(key, {}), c), side(job.get(key, {}), c)]
                for key in keys
                for c in values
            ]
            numeric = [False] * (len(self.keys) + 1) + [None, None]
            text = table(cells, header, numeric).rstrip("\n")
        out = [f"{self.name}: mongo pipeline vs mapreduce job", text]
        if self.differences:
            out.append(f"{len(self.differences)} difference(s):")
            out += [f"  {_key_text(self.keys, d.key)}: {d.what}" for d in self.differences]
            out.append("DIFFER")
        else:
            out.append(f"agree: {len(self.mongo)} rows")
        return "\n".join(out) + "\n"


def job_script(name: str) -> Path:
    path = JOBS_DIR / f"{name}.py"
    if name not in PIPELINES or not path.is_file():
        raise AggregationError(f"no job script for pipeline {name!r}")
    return path


def render_job_script(name: str, params: dict[str, Any], target: Path) -> Path:
    """A copy of the pipeline's job script with its ``PARAMS = ...`` statement set to ``params``."""
    return render_script(job_script(name), params, target)


def render_script(source: Path, params: dict[str, Any], target: Path) -> Path:
    """A copy of a job script with its ``PARAMS = ...`` statement set to ``params``."""
    name = Path(source).stem
    text = Path(source).read_text()
    assign = next(
        (
            node
            for node in ast.parse(text).body
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "PARAMS" for t in node.targets)
        ),
        None,
    )
    if assign is None:
        raise AggregationError(f"job script {name}.py has no PARAMS statement")
    lines = text.splitlines(keepends=True)
    lines[assign.lineno - 1 : assign.end_lineno] = [f"PARAMS = {params!r}\n"]
    target.write_text("".join(lines))
    return target


def job_params(name: str, schema: Schema, options: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's options with its defaults filled in, plus the dimension names for the job."""
    signature = inspect.signature(PIPELINES[name].build)
    params = {p.name: p.default for p in signature.parameters.values() if p.default is not p.empty}
    params.update((k, v) for k, v in options.items() if v is not None)
    if name != "os_distribution":
        params["dimensions"] = schema.names
    return params


def read_job_output(path: Path) -> list[dict[str, Any]]:
    """Rows from job output lines ``{key json}<TAB>{value json}``."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        key, _, value = line.partition("\t")
        rows.append({**orjson.loads(key), **orjson.loads(value)})
    return rows


def run_job_rows(
    name: str,
    data_dir: Path,
    /,
    work_dir: Path,
    schema: Schema,
    filter_path: Path | None = None,
    num_mappers: int | None = None,
    log=None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Run the pipeline's job script over ``data_dir`` with the MapReduce framework; its rows."""
    from mapreduce.job import JobConfig, run_job

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    script = render_job_script(name, job_params(name, schema, options), work_dir / f"{name}_job.py")
    output = work_dir / "output.txt"
    config = JobConfig(
        job_script=script,
        data_dir=Path(data_dir),
        work_dir=work_dir / "work",
        output=output,
        input_filter=filter_path,
        num_reducers=1,
        progress=False,
        **({"num_mappers": num_mappers} if num_mappers else {}),
    )
    run_job(config, log=log or (lambda message: None))
    return read_job_output(output)


def compare_rows(
    name: str, columns: list[str], mongo: list[dict], job: list[dict], rel_tol: float = REL_TOL
) -> Comparison:
    keys = key_columns(columns)
    result = Comparison(name, columns, keys, mongo, job)
    by_mongo, by_job = _by_key(mongo, keys), _by_key(job, keys)
    for key in sorted(set(by_mongo) | set(by_job), key=_sort_key):
        m, j = by_mongo.get(key), by_job.get(key)
        if m is None:
            result.differences.append(Difference(key, "only in the mapreduce output"))
        elif j is None:
            result.differences.append(Difference(key, "only in mongo"))
        else:
            for c in columns:
                if c not in keys and not same(m.get(c), j.get(c), rel_tol):
                    result.differences.append(
                        Difference(key, f"{c}: {_diff_text(m.get(c), j.get(c), rel_tol)}")
                    )
    return result


def compare(
    name: str,
    collection,
    /,
    data_dir: Path,
    schema: Schema,
    filter_path: Path | None = None,
    work_dir: Path | None = None,
    num_mappers: int | None = None,
    log=None,
    **options: Any,
) -> Comparison:
    """Run pipeline ``name`` on ``collection`` and its job over ``data_dir``; compare the rows."""
    filter = Schema.load(filter_path) if filter_path else None
    pipeline, columns = build_pipeline(name, filter=filter, **options)
    mongo_rows = [{c: row.get(c) for c in columns} for row in collection.aggregate(pipeline)]
    with tempfile.TemporaryDirectory(prefix="telemetry-compare-", dir=work_dir) as tmp:
        job_rows = run_job_rows(
            name, data_dir, Path(tmp), schema, filter_path, num_mappers, log, **options
        )
    return compare_rows(name, columns, mongo_rows, job_rows)


def same(a: Any, b: Any, rel_tol: float = REL_TOL) -> bool:
    """Equal, with numbers compared within ``rel_tol`` and lists element by element."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or math.isclose(a, b, rel_tol=rel_tol, abs_tol=0.0)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, rel_tol) for x, y in zip(a, b))
    return a == b


def _diff_text(a: Any, b: Any, rel_tol: float) -> str:
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        bad = [i for i, (x, y) in enumerate(zip(a, b)) if not same(x, y, rel_tol)]
        shown = ", ".join(f"[{i}] mongo {a[i]!r} vs mapreduce {b[i]!r}" for i in bad[:5])
        return shown + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return f"mongo {_short(cell(a), 60)} vs mapreduce {_short(cell(b), 60)}"


def _by_key(rows: list[dict], keys: list[str]) -> dict[tuple, dict]:
    return {tuple(_hashable(r.get(k)) for k in keys): r for r in rows}


def _hashable(value: Any) -> Any:
    return orjson.dumps(value).decode() if isinstance(value, (list, dict)) else value


def _sort_key(key: tuple) -> tuple:
    return tuple((v is None, str(type(v)), v if v is not None else "") for v in key)


def _key_text(keys: list[str], key: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, key))


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
