"""Each named pipeline against the same figure computed in plain Python over the same records."""

from __future__ import annotations

import math
import re
import uuid
from collections import Counter, defaultdict

import orjson
import pytest
from click.testing import CliRunner

from aggregations.cli import aggregate
from aggregations.formats import format_rows
from aggregations.pipelines import (
    PIPELINES,
    AggregationError,
    build_pipeline,
    filter_to_match,
    key_columns,
    run_custom,
    run_pipeline,
)
from converter.layout import clean_value
from converter.schema import Schema
from converter.synthetic import make_records, write_layout
from importer.importer import ImportOptions, import_dataset

N = 300
STATS = ("sum", "log_sum", "log_sum_squares", "sum_squares_lo", "sum_squares_hi")


@pytest.fixture(scope="module")
def records():
    recs = make_records(N, seed=21, payload_kb=1)
    # Vary what the generator keeps constant, so the pipelines' edge rules are exercised too.
    recs[0].payload["info"].pop("OS")
    recs[1].payload["histograms"]["GC_MS"][-3] = 7  # one log_sum_squares present
    recs[2].payload["histograms"].pop("GC_MS")
    recs[3].payload["simpleMeasurements"]["firstPaint"] = True  # not a number
    return recs


@pytest.fixture(scope="module")
def imported(records, tmp_path_factory, mongo_url, mongo_client):
    base = tmp_path_factory.mktemp("agg_layout")
    write_layout(base, records)
    name = f"agg_{uuid.uuid4().hex[:12]}"
    summary = import_dataset(base, mongo_url, ImportOptions(database=name))
    assert summary.inserted == N
    yield mongo_client[name]["payloads"]
    mongo_client.drop_database(name)


def dim(record, name):
    names = ["reason", "appName", "appUpdateChannel", "appVersion", "appBuildID", "submission_date"]
    return clean_value(record.dimensions[names.index(name)])


def expected_os(records):
    counts = Counter(r.payload["info"].get("OS", "UNKNOWN") for r in records)
    return sorted(
        ({"os": k, "count": v} for k, v in counts.items()), key=lambda r: (-r["count"], r["os"])
    )


def expected_submissions(records):
    counts = Counter(
        (dim(r, "submission_date"), dim(r, "appUpdateChannel"), dim(r, "appVersion"))
        for r in records
    )
    return [
        {"submission_date": d, "appUpdateChannel": c, "appVersion": v, "count": n}
        for (d, c, v), n in sorted(counts.items())
    ]


def expected_histogram(records, name, by):
    groups = defaultdict(list)
    for r in records:
        h = r.payload["histograms"].get(name)
        if h is not None:
            groups[dim(r, by)].append(h)
    rows = []
    for key, hs in sorted(groups.items()):
        n = len(hs[0]) - 5
        row = {
            by: key,
            "n_buckets": n,
            "count": len(hs),
            "buckets": [sum(h[i] for h in hs) for i in range(n)],
        }
        for k, s in enumerate(STATS):
            present = [h[n + k] for h in hs if h[n + k] >= 0]
            row[s] = sum(present) if present else -1
        rows.append(row)
    return rows


def expected_measurement(records, name, by):
    groups = defaultdict(list)
    for r in records:
        v = r.payload["simpleMeasurements"].get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            groups[dim(r, by)].append(v)
    rows = []
    for key, vs in sorted(groups.items()):
        vs.sort()
        row = {by: key, "count": len(vs), "mean": sum(vs) / len(vs), "min": vs[0], "max": vs[-1]}
        for p in (25, 50, 75, 95):
            row[f"p{p}"] = vs[max(0, math.ceil(p / 100 * len(vs)) - 1)]
        rows.append(row)
    return rows


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("os_distribution", {}, lambda rs: expected_os(rs)),
        ("submissions", {}, lambda rs: expected_submissions(rs)),
        (
            "histogram",
            {"name": "GC_MS"},
            lambda rs: expected_histogram(rs, "GC_MS", "appUpdateChannel"),
        ),
        (
            "histogram",
            {"name": "PAGE_LOAD_MS", "by": "appName"},
            lambda rs: expected_histogram(rs, "PAGE_LOAD_MS", "appName"),
        ),
        (
            "simple_measurement",
            {"name": "firstPaint"},
            lambda rs: expected_measurement(rs, "firstPaint", "appUpdateChannel"),
        ),
        (
            "simple_measurement",
            {"name": "uptime", "by": "submission_date"},
            lambda rs: expected_measurement(rs, "uptime", "submission_date"),
        ),
    ],
)
def test_pipeline_equals_plain_python(imported, records, name, options, expected):
    rows, want = run_pipeline(imported, name, **options), expected(records)
    assert len(rows) == len(want) > 0
    for row, expect in zip(rows, want):
        assert list(row) == list(expect)
        if "mean" in expect:  # a float: the server may add in another order
            assert row.pop("mean") == pytest.approx(expect.pop("mean"), rel=1e-12)
        assert row == expect


def test_edge_records_are_where_they_belong(imported, records):
    assert {"os": "UNKNOWN", "count": 1} in run_pipeline(imported, "os_distribution")
    hist = run_pipeline(imported, "histogram", name="GC_MS")
    assert sum(r["count"] for r in hist) == N - 1
    assert [r["log_sum_squares"] for r in hist].count(7) == 1


def test_filter_selects_the_same_records_as_the_layout(imported, records, fixtures_dir):
    filter = Schema.load(fixtures_dir / "filter_saved_session_Fx_prerelease.json")
    chosen = [
        r
        for r in records
        if r.dimensions[0] == "saved-session"
        and r.dimensions[1] in ("Firefox", "Fennec")
        and r.dimensions[2] in ("nightly", "aurora")
        and "20131101" <= r.dimensions[5] <= "20131103"
    ]
    assert 0 < len(chosen) < N
    assert run_pipeline(imported, "os_distribution", filter=filter) == expected_os(chosen)


def test_filter_to_match(fixtures_dir):
    match = filter_to_match(Schema.load(fixtures_dir / "filter_saved_session_Fx_prerelease.json"))
    assert match == {
        "meta.reason": {"$in": ["saved_session"]},
        "meta.appName": {"$in": ["Firefox", "Fennec"]},
        "meta.appUpdateChannel": {"$in": ["nightly", "aurora"]},
        "meta.submission_date": {"$gte": "20131101", "$lte": "20131103"},
    }
    only = Schema(
        {
            "dimensions": [
                {"field_name": "appName", "allowed_values": "Fennec"},
                {"field_name": "appVersion", "allowed_values": {"max": "24"}},
            ]
        }
    )
    assert filter_to_match(only) == {"meta.appName": "Fennec", "meta.appVersion": {"$lte": "24"}}


def test_filter_match_runs_on_mongomock():
    import mongomock

    coll = mongomock.MongoClient().db.c
    coll.insert_many(
        [
            {"meta": {"appName": "Fennec", "appVersion": "23"}},
            {"meta": {"appName": "Fennec", "appVersion": "25"}},
        ]
    )
    only = Schema({"dimensions": [{"field_name": "appVersion", "allowed_values": {"min": "24"}}]})
    assert [d["meta"]["appVersion"] for d in coll.find(filter_to_match(only))] == ["25"]


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("nope", {}, "no pipeline named"),
        ("histogram", {}, "needs --name"),
        ("histogram", {"name": "GC_MS; drop"}, "histogram name"),
        ("histogram", {"name": "GC_MS", "by": "$where"}, "dimension"),
        ("os_distribution", {"name": "x"}, "takes no option"),
    ],
)
def test_bad_pipeline_requests(name, options, message):
    with pytest.raises(AggregationError, match=message):
        build_pipeline(name, **options)


def test_custom_pipeline(imported):
    rows, columns = run_custom(
        imported, [{"$group": {"_id": "$meta.appName", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]
    )
    assert columns == ["_id", "n"] and sum(r["n"] for r in rows) == N
    with pytest.raises(AggregationError):
        run_custom(imported, {"$match": {}})


def test_key_columns_and_formats():
    for p in PIPELINES.values():
        _, columns = p.build(**{o: "GC_MS" for o in p.options})
        assert "count" in columns and key_columns(columns) == columns[: columns.index("count")]
    rows = [{"a": "x", "n": 1, "l": [1, 2]}, {"a": "yy", "n": 10, "l": None}]
    assert format_rows(rows, ["a", "n", "l"], "csv") == 'a,n,l\nx,1,"[1,2]"\nyy,10,\n'
    assert format_rows(rows, ["a", "n"], "tsv") == "a\tn\nx\t1\nyy\t10\n"
    assert format_rows(rows, ["a", "n"], "table") == "a    n\n--  --\nx    1\nyy  10\n"
    assert orjson.loads(format_rows(rows, ["a", "n"], "json")) == [
        {"a": "x", "n": 1},
        {"a": "yy", "n": 10},
    ]


def test_aggregate_cli(imported, mongo_url, tmp_path):
    db, coll = imported.database.name, imported.name
    run = CliRunner().invoke
    listed = run(aggregate, ["--list"])
    assert listed.exit_code == 0 and all(name in listed.output for name in PIPELINES)
    out = run(
        aggregate,
        ["os_distribution", "-d", db, "-c", coll, "--format", "json", "--mongo-url", mongo_url],
    )
    assert out.exit_code == 0, out.output
    assert orjson.loads(out.output) == run_pipeline(imported, "os_distribution")
    out = run(
        aggregate,
        [
            "histogram",
            "--name",
            "GC_MS",
            "--by",
            "appName",
            "-d",
            db,
            "--format",
            "csv",
            "--mongo-url",
            mongo_url,
        ],
    )
    header = "appName,n_buckets,count,buckets,sum,log_sum,log_sum_squares,sum_squares_lo,"
    assert out.exit_code == 0 and out.output.splitlines()[0] == header + "sum_squares_hi"
    pipeline = tmp_path / "p.json"
    pipeline.write_bytes(orjson.dumps([{"$count": "n"}]))
    out = run(
        aggregate,
        ["--pipeline", str(pipeline), "-d", db, "--format", "tsv", "--mongo-url", mongo_url],
    )
    assert out.exit_code == 0 and out.output == f"n\n{N}\n"


@pytest.mark.parametrize(
    "args",
    [
        ["nope"],
        ["histogram"],
        ["histogram", "--name", "GC_MS", "--by", "OS"],
        [],
        ["os_distribution", "--mongo-url", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200"],
        ["os_distribution", "--mongo-url", "http://x"],
    ],
)
def test_aggregate_cli_usage_errors(args):
    result = CliRunner().invoke(aggregate, args)
    assert result.exit_code == 2 and "Error:" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "pipeline, refused",
    [
        ([{"$match": {}}, {"$out": "payloads"}], "$out"),
        ([{"$merge": {"into": "payloads"}}], "$merge"),
        ([{"$match": {"$where": "true"}}], "$where"),
        ([{"$addFields": {"x": {"$function": {"body": "1", "args": [], "lang": "js"}}}}],
         "$function"),
        ([{"$group": {"_id": 1, "x": {"$accumulator": {"init": "function(){}"}}}}],
         "$accumulator"),
        ([{"$lookup": {"from": "payloads", "as": "x", "pipeline": [{"$out": "y"}]}}], "$out"),
        ([{"$facet": {"a": [{"$match": {}}], "b": [{"$merge": "y"}]}}], "$merge"),
        ([{"$unionWith": {"coll": "payloads", "pipeline": [{"$match": {"$where": "1"}}]}}],
         "$where"),
        ([{"$changeStream": {}}], "$changeStream"),
    ],
)
def test_custom_pipelines_are_read_only(mongo_db, pipeline, refused, tmp_path, mongo_url):
    coll = mongo_db["payloads"]
    coll.insert_many([{"_id": i, "meta": {"appName": "Firefox"}} for i in range(5)])
    with pytest.raises(AggregationError, match=re.escape(refused)):
        run_custom(coll, pipeline)
    path = tmp_path / "p.json"
    path.write_bytes(orjson.dumps(pipeline))
    result = CliRunner().invoke(
        aggregate,
        ["--pipeline", str(path), "-d", mongo_db.name, "--mongo-url", mongo_url],
    )
    assert result.exit_code == 2 and refused in result.output and "read-only" in result.output
    assert coll.count_documents({}) == 5
    assert set(mongo_db.list_collection_names()) == {"payloads"}


def test_filter_with_an_operator_document_is_refused(tmp_path, imported, mongo_url):
    path = tmp_path / "filter.json"
    path.write_bytes(orjson.dumps(
        {"dimensions": [{"field_name": "reason", "allowed_values": {"$ne": "x"}}]}))
    result = CliRunner().invoke(
        aggregate,
        ["os_distribution", "--filter", str(path), "-d", imported.database.name,
         "--mongo-url", mongo_url],
    )
    assert result.exit_code == 2 and "allowed_values must be" in result.output


def test_unknown_dimension_or_name_is_an_error_listing_the_valid_ones(tmp_path, imported,
                                                                      mongo_url):
    db = imported.database.name
    run = CliRunner().invoke
    path = tmp_path / "filter.json"
    path.write_bytes(orjson.dumps(
        {"dimensions": [{"field_name": "appUpdatechannel", "allowed_values": "release"}]}))
    result = run(aggregate, ["os_distribution", "--filter", str(path), "-d", db,
                             "--mongo-url", mongo_url])
    assert result.exit_code == 2
    assert "unknown dimension 'appUpdatechannel' (did you mean 'appUpdateChannel'?)" in result.output
    assert "reason, appName, appUpdateChannel" in result.output

    result = run(aggregate, ["histogram", "--name", "GC_MSS", "-d", db, "--mongo-url", mongo_url])
    assert result.exit_code == 2, result.output
    assert "--name 'GC_MSS' is in none of the documents (did you mean 'GC_MS'?)" in result.output
    result = run(aggregate, ["simple_measurement", "--name", "uptme", "-d", db,
                             "--mongo-url", mongo_url])
    assert result.exit_code == 2 and "(did you mean 'uptime'?)" in result.output

    result = run(aggregate, ["os_distribution", "-d", db, "-c", "nothing_here",
                             "--mongo-url", mongo_url])
    assert result.exit_code == 0 and f"{db}.nothing_here is empty" in result.stderr
