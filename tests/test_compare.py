"""``compare``: the MapReduce job and the Mongo pipeline agree; a one-record change is caught."""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner

from aggregations.cli import compare as compare_command
from aggregations.compare import compare, compare_rows, read_job_output, render_job_script, same
from converter.schema import Schema
from converter.synthetic import make_records, write_layout
from importer.importer import DEFAULT_SCHEMA, ImportOptions, import_dataset

N = 120


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, mongo_url, mongo_client):
    base = tmp_path_factory.mktemp("compare_layout")
    write_layout(base, make_records(N, seed=33, payload_kb=1))
    name = f"cmp_{uuid.uuid4().hex[:12]}"
    assert import_dataset(base, mongo_url, ImportOptions(database=name)).inserted == N
    yield base, mongo_client[name]
    mongo_client.drop_database(name)


@pytest.mark.parametrize(
    "name, options",
    [
        ("os_distribution", {}),
        ("submissions", {}),
        ("histogram", {"name": "GC_MS"}),
        ("simple_measurement", {"name": "firstPaint", "by": "appName"}),
    ],
)
def test_job_and_pipeline_agree(dataset, tmp_path, name, options):
    base, db = dataset
    result = compare(
        name,
        db.payloads,
        base,
        Schema.load(DEFAULT_SCHEMA),
        work_dir=tmp_path,
        num_mappers=2,
        **options,
    )
    assert result.agree, result.describe()
    assert len(result.mongo) == len(result.job) > 0
    assert "agree:" in result.describe()


def test_filter_applies_to_both_sides(dataset, tmp_path, fixtures_dir):
    base, db = dataset
    filter_path = fixtures_dir / "filter_saved_session_Fx_prerelease.json"
    result = compare(
        "submissions",
        db.payloads,
        base,
        Schema.load(DEFAULT_SCHEMA),
        filter_path=filter_path,
        work_dir=tmp_path,
        num_mappers=1,
    )
    assert result.agree, result.describe()
    assert 0 < sum(r["count"] for r in result.mongo) < N


def test_one_changed_record_in_mongo_is_reported(dataset, tmp_path, mongo_url):
    base, db = dataset
    # A copy of the collection, so the other tests keep seeing the original.
    copy = db[f"changed_{uuid.uuid4().hex[:8]}"]
    copy.insert_many(list(db.payloads.find()))
    victim = copy.find_one({"info.OS": "Linux"})
    copy.update_one({"_id": victim["_id"]}, {"$set": {"info.OS": "Plan9"}})
    result = compare("os_distribution", copy, base, Schema.load(DEFAULT_SCHEMA), work_dir=tmp_path)
    assert not result.agree
    assert {(d.key, d.what.split(":")[0]) for d in result.differences} == {
        (("Linux",), "count"),
        (("Plan9",), "only in mongo"),
    }
    out = CliRunner().invoke(
        compare_command,
        [
            "os_distribution",
            "--data-dir",
            str(base),
            "-d",
            db.name,
            "-c",
            copy.name,
            "--mongo-url",
            mongo_url,
            "--work-dir",
            str(tmp_path / "w"),
        ],
    )
    assert out.exit_code == 1, out.output
    assert "DIFFER" in out.output and "Plan9" in out.output
    out = CliRunner().invoke(
        compare_command,
        ["os_distribution", "--data-dir", str(base), "-d", db.name, "--mongo-url", mongo_url],
    )
    assert out.exit_code == 0 and "agree: 4 rows" in out.output


def test_compare_rows_tolerance_and_lists():
    columns = ["k", "count", "mean", "buckets"]
    mongo = [
        {"k": "a", "count": 3, "mean": 1.0, "buckets": [1, 2]},
        {"k": "b", "count": 1, "mean": 2.0, "buckets": [0, 0]},
    ]
    job = [
        {"k": "a", "count": 3, "mean": 1.0 + 1e-12, "buckets": [1, 2]},
        {"k": "b", "count": 1, "mean": 2.0, "buckets": [0, 5]},
    ]
    result = compare_rows("x", columns, mongo, job)
    assert [(d.key, d.what) for d in result.differences] == [
        (("b",), "buckets: [1] mongo 0 vs mapreduce 5")
    ]
    assert (
        same(1.0, 1.0 + 1e-10)
        and not same(1.0, 1.0 + 1e-8)
        and not same(True, 1)
        and same([1], [1.0])
    )


def test_job_script_rendering(tmp_path):
    path = render_job_script(
        "histogram", {"name": "X", "by": "appName", "dimensions": ["a"]}, tmp_path / "j.py"
    )
    text = path.read_text()
    assert "\nPARAMS = {'name': 'X', 'by': 'appName', 'dimensions': ['a']}\n" in text
    assert text.count("PARAMS = ") == 1 and "GC_MS" not in text  # the whole statement, every line
    compile(text, str(path), "exec")
    out = tmp_path / "out.txt"
    out.write_text('{"os": "Linux"}\t{"count": 2}\n\n')
    assert read_job_output(out) == [{"os": "Linux", "count": 2}]


@pytest.mark.parametrize(
    "args, code",
    [
        (["os_distribution", "--data-dir", "/nonexistent/dir"], 2),
        (["nope", "--data-dir", "."], 2),
        (
            [
                "os_distribution",
                "--data-dir",
                ".",
                "--mongo-url",
                "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200",
            ],
            2,
        ),
    ],
)
def test_compare_cli_errors(args, code):
    result = CliRunner().invoke(compare_command, args)
    assert (
        result.exit_code == code and "Error:" in result.output and "Traceback" not in result.output
    )


def test_a_wide_comparison_is_shown_one_figure_per_line():
    from aggregations.compare import Comparison

    columns = ["appUpdateChannel", "n_buckets", "count", "buckets", "sum", "log_sum",
               "log_sum_squares", "sum_squares_lo", "sum_squares_hi"]
    row = {"appUpdateChannel": "release", "n_buckets": 20, "count": 3,
           "buckets": list(range(20)), "sum": 12345, "log_sum": 1.5, "log_sum_squares": 2.5,
           "sum_squares_lo": 7, "sum_squares_hi": 0}
    text = Comparison("histogram", columns, ["appUpdateChannel"], [row], [row]).describe()
    assert max(len(line) for line in text.splitlines()) <= 120
    assert any(line.split()[:2] == ["release", "log_sum_squares"] for line in text.splitlines())
