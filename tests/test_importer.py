"""The importer against the embedded server: real files, real writes, reruns and a killed run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pymongo
import pytest
import zstandard
from click.testing import CliRunner
from pymongo import monitoring

from converter.layout import find_layout_files, read_layout_file
from converter.synthetic import make_records, write_layout
from importer.cli import import_
from importer.document import DOT, make_document, redot, undot
from importer.importer import (
    ImportOptions,
    create_indexes,
    import_dataset,
    import_files,
    make_chunks,
)

NAMES = ["reason", "appName", "appUpdateChannel", "appVersion", "appBuildID", "submission_date"]


def expected_documents(base: Path) -> dict[str, dict]:
    """What the importer should store, computed independently from the layout files."""
    docs = {}
    for lf in find_layout_files(base):
        for _, doc_id, text in read_layout_file(lf.path):
            payload = orjson.loads(text)
            for section in ("slowSQL", "slowSQLStartup", "addonDetails", "addonHistograms"):
                if isinstance(payload.get(section), dict):
                    payload[section] = undot(payload[section])
            payload["_id"] = doc_id
            payload["meta"] = {**dict(zip(NAMES, lf.dimensions)), "file": lf.relpath}
            docs[doc_id] = payload
    return docs


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("layout")
    write_layout(base, make_records(2000, seed=11, payload_kb=1))
    return base


def _options(db, **kw) -> ImportOptions:
    return ImportOptions(database=db.name, **kw)


def test_fixture_files_import_with_dimensions_and_dots(fixtures_dir, mongo_url, mongo_db):
    base = fixtures_dir / "converted"
    summary = import_dataset(base, mongo_url, _options(mongo_db))
    assert summary.ok and summary.files == 2 and summary.records == 5 and summary.inserted == 5
    expected = expected_documents(base)
    stored = {d["_id"]: d for d in mongo_db.payloads.find()}
    assert stored == expected
    doc = stored["024b73d7-2e26-4545-8077-1cc930904eae"]
    assert doc["meta"]["reason"] == "saved_session" and doc["meta"]["appVersion"] == "22.0a1"
    assert doc["meta"]["submission_date"] == "20131011"
    assert doc["meta"]["file"].endswith("e28a4032eb744f089a1828ac7399e5d8.lzma")
    dotted = [
        k
        for d in stored.values()
        for section in ("slowSQL", "addonDetails")
        for sub in d.get(section, {}).values()
        if isinstance(sub, dict)
        for k in sub
    ]
    assert dotted and not any("." in k for k in dotted)
    assert any(DOT in k for k in dotted)
    indexed = {tuple(ix["key"].keys()) for ix in mongo_db.payloads.list_indexes()}
    day_first = ["submission_date"] + [n for n in NAMES if n != "submission_date"]
    assert indexed == {("_id",), tuple(f"meta.{n}" for n in day_first)}
    # A filter on the day alone is served by the index, not a collection scan.
    plan = mongo_db.payloads.find({"meta.submission_date": {"$gte": "20131011"}}).explain()
    assert plan["queryPlanner"]["winningPlan"]["inputStage"]["indexName"] == "dimensions"


def test_generated_layout_then_rerun_doubles_nothing(generated, mongo_url, mongo_db):
    expected = expected_documents(generated)
    first = import_dataset(generated, mongo_url, _options(mongo_db, batch_size=200))
    assert first.ok and first.records == 2000 and first.inserted == 2000 and first.duplicates == 0
    stored = {d["_id"]: d for d in mongo_db.payloads.find()}
    assert stored == expected
    assert any(DOT in k for d in stored.values() for k in d["addonDetails"]["XPI"])
    second = import_dataset(generated, mongo_url, _options(mongo_db))
    assert second.files_skipped == second.files == first.files and second.records == 0
    assert mongo_db.payloads.count_documents({}) == 2000
    assert mongo_db.imports.count_documents({"state": "done"}) == first.files


def test_keep_dots_and_workers(generated, mongo_url, mongo_db):
    summary = import_dataset(generated, mongo_url, _options(mongo_db, keep_dots=True, workers=2))
    assert summary.ok and summary.inserted == 2000
    doc = mongo_db.payloads.find_one({"addonDetails.XPI": {"$exists": True}})
    keys = list(doc["addonDetails"]["XPI"])
    assert all("@example.com" in k and DOT not in k for k in keys)


@pytest.mark.parametrize("mode, inserted, duplicates", [("skip", 1, 1), ("replace", 1, 1)])
def test_duplicate_doc_ids_are_counted(tmp_path, mongo_url, mongo_db, mode, inserted, duplicates):
    (record,) = make_records(1, seed=5)
    write_layout(tmp_path, [record])
    changed = type(record)(record.doc_id, record.dimensions, {**record.payload, "ver": 99})
    write_layout(tmp_path, [changed])  # a second published file with the same docId
    summary = import_dataset(tmp_path, mongo_url, _options(mongo_db, on_duplicate=mode))
    assert summary.ok and summary.records == 2
    assert (summary.inserted, summary.duplicates) == (inserted, duplicates)
    assert mongo_db.payloads.count_documents({}) == 1


def test_replace_overwrites_and_drop_starts_over(tmp_path, mongo_url, mongo_db):
    records = make_records(20, seed=8)
    write_layout(tmp_path, records)
    import_dataset(tmp_path, mongo_url, _options(mongo_db))
    mongo_db.payloads.update_many({}, {"$set": {"ver": -1}})
    again = import_dataset(tmp_path, mongo_url, _options(mongo_db, drop=True))
    assert again.files_skipped == 0 and again.inserted == 20
    assert mongo_db.payloads.count_documents({"ver": 2}) == 20


def test_touched_file_is_skipped_changed_file_is_imported_again(tmp_path, mongo_url, mongo_db):
    records = make_records(30, seed=4)
    files = write_layout(tmp_path, records)
    import_dataset(tmp_path, mongo_url, _options(mongo_db))
    os.utime(files[0], (1, 1))  # same content, new mtime: the hash says it is done
    assert import_dataset(tmp_path, mongo_url, _options(mongo_db)).files_skipped == len(files)
    lines = [line for _, d, line in read_layout_file(files[0])]
    first_id = next(read_layout_file(files[0]))[1]
    changed = files[0].with_suffix(".plain")
    changed.write_text("".join(f'{d}\t{{"ver":7}}\n' for _, d, _ in read_layout_file(files[0])))
    files[0].write_bytes(zstandard.ZstdCompressor().compress(changed.read_bytes()))
    again = import_dataset(tmp_path, mongo_url, _options(mongo_db))
    assert (
        again.files_skipped == len(files) - 1
        and again.records == len(lines)
        and again.duplicates == 0
    )
    assert mongo_db.payloads.find_one({"_id": first_id})["ver"] == 7
    assert mongo_db.payloads.count_documents({}) == 30


def test_corrupt_file_is_reported_and_the_rest_goes_on(tmp_path, mongo_url, mongo_db):
    files = write_layout(tmp_path, make_records(40, seed=2))
    broken = files[0]
    broken.write_bytes(b"\x28\xb5\x2f\xfd" + b"garbage!" * 20)  # zstd magic, then nonsense
    summary = import_dataset(tmp_path, mongo_url, _options(mongo_db))
    assert [path for path, _ in summary.failed] == [broken.relative_to(tmp_path).as_posix()]
    assert broken.name in summary.failed[0][1]
    good = sum(1 for f in files[1:] for _ in read_layout_file(f))
    assert mongo_db.payloads.count_documents({}) == good
    result = CliRunner().invoke(
        import_, [str(tmp_path), "-d", mongo_db.name, "--mongo-url", mongo_url]
    )
    assert result.exit_code == 1
    assert "failed:" in result.output and broken.name in result.output


def test_bad_lines_are_counted_not_fatal(tmp_path, mongo_url, mongo_db):
    path = tmp_path / "saved_session/Firefox/release/23.0/20130101000000.20131101.v2.log"
    path.parent.mkdir(parents=True)
    path.write_text('a\t{"ver":2}\nno tab here\nb\tnot json\nc\t[1,2]\n')
    summary = import_dataset(tmp_path, mongo_url, _options(mongo_db))
    assert summary.ok and summary.inserted == 2 and summary.bad_records == 2
    assert summary.records == 4 == summary.inserted + summary.duplicates + summary.bad_records
    assert mongo_db.payloads.find_one({"_id": "c"})["payload"] == [1, 2]


def test_interrupted_import_resumes_without_duplicates(generated, tmp_path, mongo_url, mongo_db):
    """SIGKILL ``python -m importer`` mid-way, rerun it: every record is there exactly once."""
    cmd = [
        sys.executable,
        "-m",
        "importer",
        str(generated),
        "-d",
        mongo_db.name,
        "--mongo-url",
        mongo_url,
        "--batch-size",
        "25",
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(__file__).parent.parent
    )
    deadline = time.monotonic() + 60
    try:
        while mongo_db.payloads.estimated_document_count() < 100 and time.monotonic() < deadline:
            assert proc.poll() is None, "the import finished before it could be interrupted"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The server still finishes the batches that were in flight when the client died.
    partial, settled = -1, mongo_db.payloads.count_documents({})
    while partial != settled:
        partial = settled
        time.sleep(0.5)
        settled = mongo_db.payloads.count_documents({})
    assert 0 < partial < 2000
    assert mongo_db.imports.count_documents({"state": "started"}) > 0
    rerun = subprocess.run(
        cmd, capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "0 duplicates" in rerun.stdout
    ids = [d["_id"] for d in mongo_db.payloads.find({}, {"_id": 1})]
    assert len(ids) == len(set(ids)) == 2000
    # The counts add up: what the rerun read of the resumed files that the killed run had
    # already stored is counted as such, not lost between "inserted" and "duplicates".
    counts = re.search(r"(\d+) records, (\d+) inserted, 0 duplicates, (?:(\d+) stored before "
                       r"by an interrupted run, )?0 bad records", rerun.stdout)
    assert counts, rerun.stdout
    records, inserted, resumed = (int(g or 0) for g in counts.groups())
    assert records == inserted + resumed and inserted == 2000 - partial
    assert set(ids) == set(expected_documents(generated))
    assert mongo_db.imports.count_documents({"state": {"$ne": "done"}}) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mongo-url", "notmongo://x"], "bad MongoDB URI"),
        (
            ["--mongo-url", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300"],
            "cannot reach MongoDB",
        ),
        (
            ["--mongo-url", "mongodb://user:secret@127.0.0.1:1/?serverSelectionTimeoutMS=300"],
            "user:***@",
        ),
    ],
)
def test_connection_errors_are_one_line_exit_2(fixtures_dir, args, message):
    result = CliRunner().invoke(import_, [str(fixtures_dir / "converted"), *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0]
    assert "secret" not in result.output and "Traceback" not in result.output


def test_missing_dataset_dir_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "importer", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"Error: dataset directory {tmp_path / 'nope'} does not exist"
    ]


def test_documents_and_chunks_unit(tmp_path):
    doc = make_document(
        "id1",
        '{"slowSQL":{"main":{"a.b":1}},"addonDetails":{"XPI":{"x@y.z":{"k.l":2}}},'
        '"meta":{"m":1},"other":{"c.d":3}}',
        {"reason": "r"},
    )
    assert doc["slowSQL"] == {"main": {"a[dot]b": 1}}
    assert doc["addonDetails"] == {"XPI": {"x@y[dot]z": {"k[dot]l": 2}}}
    assert (
        doc["other"] == {"c.d": 3}
        and doc["payload_meta"] == {"m": 1}
        and doc["meta"] == {"reason": "r"}
    )
    assert redot(doc["addonDetails"]) == {"XPI": {"x@y.z": {"k.l": 2}}}
    files = write_layout(tmp_path, make_records(30, seed=1), records_per_file=2)
    found = find_layout_files(tmp_path)
    chunks = make_chunks(found, max_bytes=10**9, max_files=4)
    assert sorted(f.relpath for c in chunks for f in c) == [f.relpath for f in found]
    assert all(len(c) <= 4 for c in chunks) and len(files) == len(found)


def test_create_indexes_is_idempotent(mongo_db):
    mongo_db.payloads.insert_one({"_id": "x"})
    first = create_indexes(mongo_db.payloads, NAMES)
    assert create_indexes(mongo_db.payloads, NAMES) == first == ["dimensions"]


def test_create_indexes_keeps_an_earlier_dimensions_index(mongo_db):
    """A collection imported by an earlier version (schema-order index) is imported into again."""
    earlier = [(f"meta.{n}", 1) for n in NAMES]
    mongo_db.payloads.create_index(earlier, name="dimensions")
    assert create_indexes(mongo_db.payloads, NAMES) == ["dimensions"]
    keys = {ix["name"]: list(ix["key"].items()) for ix in mongo_db.payloads.list_indexes()}
    assert keys == {"_id_": [("_id", 1)], "dimensions": earlier}


def test_filter_imports_only_matching_files(tmp_path, fixtures_dir, mongo_url, mongo_db):
    records = make_records(200, seed=9, payload_kb=1)
    write_layout(tmp_path, records)
    result = CliRunner().invoke(
        import_,
        [
            str(tmp_path),
            "-d",
            mongo_db.name,
            "--mongo-url",
            mongo_url,
            "--filter",
            str(fixtures_dir / "filter_saved_session_Fx_prerelease.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    wanted = {
        r.doc_id
        for r in records
        if r.dimensions[0] == "saved-session"
        and r.dimensions[2] in ("nightly", "aurora")
        and "20131101" <= r.dimensions[5] <= "20131103"
    }
    assert 0 < len(wanted) < 200
    assert {d["_id"] for d in mongo_db.payloads.find({}, {"_id": 1})} == wanted


def test_file_marked_by_another_run_meanwhile_is_imported_as_resumed(
    tmp_path, mongo_url, mongo_db
):
    """A started mark that appears between our lookup and our insert: replaced, not fatal."""
    from importer.importer import FileResult, _mark_started

    write_layout(tmp_path, make_records(4, seed=9))
    lf = find_layout_files(tmp_path)[0]
    mongo_db.imports.insert_one({"_id": f"payloads:{lf.relpath}", "state": "started", "x": 1})
    mark = {"_id": f"payloads:{lf.relpath}", "path": lf.relpath, "state": "started"}
    other = {"_id": "payloads:other", "path": "other", "state": "started"}
    result, fresh = FileResult(lf.relpath, lf.size), FileResult("other", 0)
    _mark_started(mongo_db.imports, [mark, other], set(), [(lf, result), (lf, fresh)])
    assert result.resumed and not fresh.resumed
    assert mongo_db.imports.find_one({"_id": mark["_id"]}) == mark
    assert mongo_db.imports.find_one({"_id": "payloads:other"}) == other


class _Inserts(monitoring.CommandListener):
    def __init__(self):
        self.batches: list[list[str]] = []

    def started(self, event):
        if event.command_name == "insert" and event.command["insert"] == "payloads":
            self.batches.append([d["_id"] for d in event.command["documents"]])

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


def test_an_insert_ends_at_the_byte_limit(generated, mongo_url, mongo_db):
    """--batch-mb: inserts are cut by record bytes before --batch-size documents."""
    files = find_layout_files(generated)
    sizes = {i: len(t) for lf in files for _, i, t in read_layout_file(lf.path)}
    listener = _Inserts()
    client = pymongo.MongoClient(mongo_url, event_listeners=[listener])
    try:
        options = _options(mongo_db, batch_size=1000, batch_bytes=100_000, writers=1)
        result = import_files(client[mongo_db.name], files, NAMES, options)
    finally:
        client.close()
    assert result.inserted == len(sizes) == 2000 and not result.duplicates
    assert mongo_db.payloads.count_documents({}) == 2000
    assert sorted(i for batch in listener.batches for i in batch) == sorted(sizes)
    # An insert ends with the record that takes it to 100 kB, well before 1000 records.
    totals = [sum(sizes[i] for i in batch) for batch in listener.batches]
    assert all(t - sizes[b[-1]] < 100_000 for t, b in zip(totals, listener.batches))
    assert sum(t >= 100_000 for t in totals) >= len(totals) - 1 > 5


def test_worker_that_cannot_reach_the_server_says_so(tmp_path):
    """Found by bench/chaos.py (the server SIGKILLed mid-import): a worker started after the
    server died broke the pool with a traceback, and the user read "a worker process died"."""
    import socket

    from importer import importer as imp
    from importer.errors import MongoUnavailable

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"mongodb://127.0.0.1:{s.getsockname()[1]}/"
    try:
        imp._init_worker(dead, 300)  # must not raise: that would break the pool
        with pytest.raises(MongoUnavailable, match="cannot reach MongoDB at mongodb://127.0.0.1"):
            imp._import_in_worker([], ["reason"], ImportOptions())
    finally:
        imp._worker_error = imp._worker_db_client = None


def test_a_dropped_collection_is_imported_again_not_trusted_to_the_bookkeeping(
    tmp_path, mongo_url, mongo_db
):
    write_layout(tmp_path, make_records(40, seed=21))
    first = import_dataset(tmp_path, mongo_url, _options(mongo_db))
    assert first.ok and first.inserted == 40
    mongo_db.drop_collection("payloads")  # outside --drop: the imports records stay
    again = import_dataset(tmp_path, mongo_url, _options(mongo_db))
    assert again.ok and again.files_skipped == 0 and again.files_stale == first.files
    assert again.inserted == 40 and "imported again: the collection was dropped" in again.describe()
    assert mongo_db.payloads.count_documents({}) == 40
    third = import_dataset(tmp_path, mongo_url, _options(mongo_db))  # now trusted again
    assert third.files_skipped == first.files and third.records == 0 and third.files_stale == 0


def test_a_filter_naming_another_dimension_is_refused(tmp_path, fixtures_dir):
    bad = tmp_path / "filter.json"
    bad.write_text('{"dimensions": [{"field_name": "reason", "allowed_values": "*"},'
                   ' {"field_name": "appname", "allowed_values": "Firefox"}]}')
    result = CliRunner().invoke(import_, [str(fixtures_dir / "converted"), "--filter", str(bad),
                                          "--mongo-url", "mongodb://127.0.0.1:1/"])
    assert result.exit_code == 2
    assert "filter dimension 2 is 'appname' but the schema's is 'appName'" in result.output


@pytest.mark.parametrize("args, message", [
    (["-d", "bad.db$x"], "is not a MongoDB database name"),
    (["-c", ""], "is not a MongoDB collection name"),
    (["-c", "system.foo"], "system.* collections are MongoDB's own"),
])
def test_bad_database_or_collection_names_are_usage_errors(tmp_path, args, message):
    from aggregations.cli import aggregate

    for command, first in ((import_, [str(tmp_path)]), (aggregate, ["os_distribution"])):
        result = CliRunner().invoke(command, [*first, *args, "--mongo-url", "mongodb://127.0.0.1:1/"])
        assert result.exit_code == 2 and message in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_write_concern_is_checked_before_anything_is_written(tmp_path, mongo_url, mongo_db):
    write_layout(tmp_path, make_records(10, seed=3))
    result = CliRunner().invoke(import_, [str(tmp_path), "-d", mongo_db.name,
                                          "--write-concern", "banana", "--mongo-url", mongo_url])
    assert result.exit_code == 2 and "number of members" in result.output
    result = CliRunner().invoke(import_, [str(tmp_path), "-d", mongo_db.name,
                                          "--write-concern", "5", "--mongo-url", mongo_url])
    assert result.exit_code == 1
    assert "write concern 5 needs a replica set of 5 members; the server is a standalone" \
        in result.output
    assert mongo_db.payloads.count_documents({}) == 0


def test_stored_documents_are_counted_when_the_write_concern_fails(tmp_path, mongo_url, mongo_db,
                                                                   monkeypatch):
    from pymongo.collection import Collection
    from pymongo.errors import BulkWriteError

    write_layout(tmp_path, make_records(30, seed=9))
    real = Collection.insert_many

    def stored_but_not_replicated(self, docs, *args, **kwargs):
        real(self, docs, *args, **kwargs)
        raise BulkWriteError({"nInserted": len(docs), "writeErrors": [], "writeConcernErrors": [
            {"code": 64, "errmsg": "waiting for replication timed out"}]})

    monkeypatch.setattr(Collection, "insert_many", stored_but_not_replicated)
    first = import_dataset(tmp_path, mongo_url, _options(mongo_db))
    stored = mongo_db.payloads.count_documents({})
    assert stored == 30 and first.inserted == stored  # what is stored is counted
    assert not first.ok and all("waiting for replication" in e for _, e in first.failed)
    monkeypatch.setattr(Collection, "insert_many", real)
    second = import_dataset(tmp_path, mongo_url, _options(mongo_db))  # the files were not done
    assert second.ok and second.files_skipped == 0 and second.duplicates == 0
    assert mongo_db.payloads.count_documents({}) == 30
