"""Named aggregation pipelines: the standard questions asked of the imported pings.

Each pipeline is a plain function taking its options and returning the
MongoDB pipeline and the names of its output columns, so it can be read,
printed, tested with any client and run unchanged on a real mongod.  They
keep to documented MongoDB semantics and avoid what the embedded server gets
wrong (field paths through arrays of sub-documents, ``mapReduce``): arrays
are taken apart with ``$unwind`` and ``$slice``/``$arrayElemAt``.

Every pipeline's columns are its key columns, then ``count``, then the
figures; :func:`key_columns` relies on that to line rows up in ``compare``.

Documents look like the importer writes them (:mod:`importer.document`):
payload fields at the top level, dimensions under ``meta``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from converter.layout import path_filter
from converter.schema import Schema
from importer.document import META

STATISTICS = ("sum", "log_sum", "log_sum_squares", "sum_squares_lo", "sum_squares_hi")
PERCENTILES = (25, 50, 75, 95)
UNKNOWN = "UNKNOWN"
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
# Operators a custom pipeline may not hold anywhere (sub-pipelines and expressions
# included): they write to the database, run JavaScript on the server, or never end.
REFUSED_OPERATORS = {
    "$out": "writes a collection",
    "$merge": "writes into a collection",
    "$function": "runs JavaScript on the server",
    "$accumulator": "runs JavaScript on the server",
    "$where": "runs JavaScript on the server",
    "$changeStream": "waits for changes forever",
}


class AggregationError(ValueError):
    """An unknown pipeline, a missing or bad option, or a pipeline document that is not one."""


@dataclass(frozen=True)
class NamedPipeline:
    name: str
    help: str
    build: Callable[..., tuple[list[dict[str, Any]], list[str]]]
    options: tuple[str, ...] = ()  # what the caller must give (``--name``)


def os_distribution() -> tuple[list[dict], list[str]]:
    """Documents per operating system (``info.OS``), most common first."""
    pipeline = [
        {"$group": {"_id": {"$ifNull": ["$info.OS", UNKNOWN]}, "count": {"$sum": 1}}},
        {"$sort": {"count": -1, "_id": 1}},
        {"$project": {"_id": 0, "os": "$_id", "count": 1}},
    ]
    return pipeline, ["os", "count"]


def submissions() -> tuple[list[dict], list[str]]:
    """Documents per submission day, channel and version (the layout's dimensions)."""
    keys = ("submission_date", "appUpdateChannel", "appVersion")
    pipeline = [
        {"$group": {"_id": {k: f"${META}.{k}" for k in keys}, "count": {"$sum": 1}}},
        {"$sort": {f"_id.{k}": 1 for k in keys}},
        {"$project": {"_id": 0, **{k: f"$_id.{k}" for k in keys}, "count": 1}},
    ]
    return pipeline, [*keys, "count"]


def histogram(name: str, by: str = "appUpdateChannel") -> tuple[list[dict], list[str]]:
    """One histogram summed element-wise per value of a dimension, with its statistics.

    A histogram array is its bucket counts followed by five statistics
    (``sum, log_sum, log_sum_squares, sum_squares_lo, sum_squares_hi``, -1 when
    absent).  Buckets are summed over every record carrying the histogram; a
    statistic over the records where it is present, and stays -1 if it never
    is.  Records whose array has another length (the definition changed) form
    a separate row, since their buckets do not line up.
    """
    _check_name("histogram name", name)
    _check_name("dimension", by)
    n_stats = len(STATISTICS)
    field = f"$histograms.{name}"
    add_pairs = {
        "$map": {
            "input": {"$zip": {"inputs": ["$$value", "$$this"]}},
            "as": "p",
            "in": {"$add": [{"$arrayElemAt": ["$$p", 0]}, {"$arrayElemAt": ["$$p", 1]}]},
        }
    }
    pipeline = [
        {"$match": {f"histograms.{name}": {"$type": "array"}}},
        {
            "$project": {
                "_id": 0,
                "by": {"$ifNull": [f"${META}.{by}", UNKNOWN]},
                "h": field,
                "n": {"$size": field},
            }
        },
        {"$match": {"n": {"$gt": n_stats}}},
        {
            "$group": {
                "_id": {"by": "$by", "n": "$n"},
                "count": {"$sum": 1},
                "arrays": {"$push": {"$slice": ["$h", {"$subtract": ["$n", n_stats]}]}},
                **{
                    f"{s}_total": {"$sum": {"$max": [0, {"$arrayElemAt": ["$h", k - n_stats]}]}}
                    for k, s in enumerate(STATISTICS)
                },
                **{
                    f"{s}_present": {
                        "$sum": {
                            "$cond": [{"$gte": [{"$arrayElemAt": ["$h", k - n_stats]}, 0]}, 1, 0]
                        }
                    }
                    for k, s in enumerate(STATISTICS)
                },
            }
        },
        {"$sort": {"_id.by": 1, "_id.n": 1}},
        {
            "$project": {
                "_id": 0,
                by: "$_id.by",
                "n_buckets": {"$subtract": ["$_id.n", n_stats]},
                "count": 1,
                "buckets": {
                    "$reduce": {
                        "input": "$arrays",
                        "initialValue": {
                            "$map": {
                                "input": {"$range": [0, {"$subtract": ["$_id.n", n_stats]}]},
                                "in": 0,
                            }
                        },
                        "in": add_pairs,
                    }
                },
                **{
                    s: {"$cond": [{"$gt": [f"${s}_present", 0]}, f"${s}_total", -1]}
                    for s in STATISTICS
                },
            }
        },
    ]
    return pipeline, [by, "n_buckets", "count", "buckets", *STATISTICS]


def simple_measurement(name: str, by: str = "appUpdateChannel") -> tuple[list[dict], list[str]]:
    """Count, mean, min, max and percentiles of one ``simpleMeasurements`` key per dimension value.

    Percentiles are nearest-rank: the value at sorted position ``ceil(p/100 * count)``.
    Values are gathered per group, so one group holds at most a few million.
    """
    _check_name("measurement", name)
    _check_name("dimension", by)
    value = f"$simpleMeasurements.{name}"
    pipeline = [
        {"$match": {f"simpleMeasurements.{name}": {"$type": ["int", "long", "double", "decimal"]}}},
        {"$project": {"_id": 0, "by": {"$ifNull": [f"${META}.{by}", UNKNOWN]}, "v": value}},
        {"$sort": {"by": 1, "v": 1}},
        {
            "$group": {
                "_id": "$by",
                "count": {"$sum": 1},
                "mean": {"$avg": "$v"},
                "min": {"$min": "$v"},
                "max": {"$max": "$v"},
                "values": {"$push": "$v"},
            }
        },
        {"$sort": {"_id": 1}},
        {
            "$project": {
                "_id": 0,
                by: "$_id",
                "count": 1,
                "mean": 1,
                "min": 1,
                "max": 1,
                **{
                    f"p{p}": {
                        "$arrayElemAt": [
                            "$values",
                            {
                                "$max": [
                                    0,
                                    {
                                        "$subtract": [
                                            {
                                                "$toInt": {
                                                    "$ceil": {"$multiply": [p / 100, "$count"]}
                                                }
                                            },
                                            1,
                                        ]
                                    },
                                ]
                            },
                        ]
                    }
                    for p in PERCENTILES
                },
            }
        },
    ]
    return pipeline, [by, "count", "mean", "min", "max", *(f"p{p}" for p in PERCENTILES)]


PIPELINES: dict[str, NamedPipeline] = {
    p.name: p
    for p in (
        NamedPipeline(
            "os_distribution", "documents per operating system (info.OS)", os_distribution
        ),
        NamedPipeline(
            "submissions",
            "documents per submission_date x appUpdateChannel x appVersion",
            submissions,
        ),
        NamedPipeline(
            "histogram",
            "one histogram (--name) summed bucket by bucket per dimension (--by), "
            "with its statistics",
            histogram,
            ("name",),
        ),
        NamedPipeline(
            "simple_measurement",
            "count/mean/min/max/percentiles of one simpleMeasurements key "
            "(--name) per dimension (--by)",
            simple_measurement,
            ("name",),
        ),
    )
}


def key_columns(columns: list[str]) -> list[str]:
    """The columns that identify a row: those before ``count``."""
    return columns[: columns.index("count")] if "count" in columns else columns[:1]


def build_pipeline(
    name: str, /, filter: Schema | None = None, **options: Any
) -> tuple[list[dict], list[str]]:
    """The pipeline ``name`` with ``options``, preceded by the ``$match`` of ``filter``."""
    named = PIPELINES.get(name)
    if named is None:
        raise AggregationError(f"no pipeline named {name!r}; known: {', '.join(sorted(PIPELINES))}")
    missing = [o for o in named.options if options.get(o) in (None, "")]
    if missing:
        raise AggregationError(f"pipeline {name} needs --{' --'.join(missing)}")
    given = {k: v for k, v in options.items() if v is not None}
    try:
        pipeline, columns = named.build(**given)
    except TypeError:
        raise AggregationError(
            f"pipeline {name} takes no option among {', '.join(sorted(given))}"
        ) from None
    return with_filter(pipeline, filter), columns


def run_pipeline(
    collection, name: str, /, filter: Schema | None = None, **options: Any
) -> list[dict]:
    """Rows of the named pipeline over ``collection`` (a pymongo collection), one dict per row."""
    pipeline, columns = build_pipeline(name, filter, **options)
    return [{c: row.get(c) for c in columns} for row in collection.aggregate(pipeline)]


def run_custom(
    collection, pipeline: Any, filter: Schema | None = None
) -> tuple[list[dict], list[str]]:
    """A user's own pipeline; its columns are its rows' fields in order of first appearance."""
    check_custom(pipeline)
    rows = list(collection.aggregate(with_filter(pipeline, filter)))
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return rows, list(columns)


def check_custom(pipeline: Any) -> None:
    """Refuse a custom pipeline that is not a list of stages or is not read-only.

    Custom pipelines answer questions; they must not change the data
    (``$out``, ``$merge``) nor run JavaScript (``$function``, ``$accumulator``,
    ``$where``), at any depth: inside ``$lookup``/``$facet``/``$unionWith``
    sub-pipelines and inside expressions too.
    """
    if not isinstance(pipeline, list) or not all(
        isinstance(s, dict) and len(s) == 1 for s in pipeline
    ):
        raise AggregationError(
            'a pipeline file must hold a JSON list of stages, each one {"$stage": ...}'
        )
    for i, stage in enumerate(pipeline):
        _check_read_only(stage, f"stage {i + 1}")


def _check_read_only(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in REFUSED_OPERATORS:
                raise AggregationError(
                    f"{where}: {key} {REFUSED_OPERATORS[key]}; custom pipelines are read-only "
                    f"and run no JavaScript"
                )
            _check_read_only(inner, f"{where}, {key}")
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            _check_read_only(inner, f"{where}[{i}]")


def with_filter(pipeline: list[dict], filter: Schema | None) -> list[dict]:
    match = filter_to_match(filter) if filter is not None else {}
    return ([{"$match": match}] if match else []) + list(pipeline)


def filter_to_match(filter: Schema) -> dict[str, Any]:
    """A MapReduce input filter as a ``$match`` on the dimension fields.

    Values are compared as the layout stores them (cleaned, like path
    components), exactly as the filter is applied to the layout's files, so a
    job and a pipeline given the same filter see the same records.
    """
    match: dict[str, Any] = {}
    for d in path_filter(filter).dimensions:
        allowed, key = d.allowed_values, f"{META}.{d.field_name}"
        if allowed == "*":
            continue
        if isinstance(allowed, str):
            match[key] = allowed
        elif isinstance(allowed, list):
            match[key] = {"$in": [str(v) for v in allowed]}
        else:
            bounds = {}
            if allowed.get("min") is not None:
                bounds["$gte"] = str(allowed["min"])
            if allowed.get("max") is not None:
                bounds["$lte"] = str(allowed["max"])
            if bounds:
                match[key] = bounds
    return match


def _check_name(what: str, value: Any) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise AggregationError(f"{what} must be letters, digits, '_' or '-', not {value!r}")
