"""Aggregates computed by the import hook and by the MapReduce rebuild: equal, and exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

import aggregate_pings as ap
from aggregations.aggregates import Aggregate, Definitions
from aggregations.importing import AggregatesHook
from aggregations.rebuild import RebuildConfig, RebuildError, rebuild
from aggregations.store import (AGGREGATES, DATES, FILES, METRICS, OPTIONS, Store, StoreError,
                                choose_layout, doc_id, histogram_answer)
from converter.revisions import RevisionCache
from importer.importer import ImportOptions, import_dataset

NAMES = ["reason", "appName", "appUpdateChannel", "appVersion", "appBuildID", "submission_date"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pings():
    return ap.make_pings(200, seed=3)


@pytest.fixture(scope="module")
def layout(pings, tmp_path_factory):
    base = tmp_path_factory.mktemp("layout")
    ap.write_pings(base, pings, records_per_file=15)
    return base


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return ap.write_revisions(tmp_path_factory.mktemp("histograms"))


def snapshot(db) -> dict:
    """Everything the API reads, without the bookkeeping fields."""
    out = {}
    for name in (AGGREGATES, METRICS, OPTIONS, DATES):
        docs = {}
        for d in db[name].find():
            d.pop("units", None)
            d.pop("v", None)
            for k in ("metric", "application", "architecture", "os", "child"):
                if name == OPTIONS and k in d:
                    d[k] = sorted(d[k])
            docs[d.pop("_id")] = d
        out[name] = docs
    return out


def direct(pings, cache) -> Aggregate:
    defs = Definitions(RevisionCache(cache, None))
    agg = Aggregate()
    for _, dims, payload in pings:
        agg.add_ping(payload, dict(zip(NAMES, dims)), defs)
    return agg


def import_with_aggregates(url, db, layout, cache, **kw):
    options = ImportOptions(database=db.name, hook=AggregatesHook(str(cache)), chunk_files=4, **kw)
    return import_dataset(layout, url, options)


def test_import_equals_the_direct_sum_and_reruns_add_nothing(mongo_url, mongo_db, layout, cache,
                                                             pings, mongo_client):
    summary = import_with_aggregates(mongo_url, mongo_db, layout, cache)
    assert summary.ok and summary.hook_stats["aggregated_files"] == summary.files
    reference = mongo_client[mongo_db.name + "_ref"]
    try:
        Store(reference).replace_scope(direct(pings, cache), {("nightly", "45"), ("nightly", "46"),
                                                              ("beta", "44")}, {})
        assert snapshot(mongo_db) == snapshot(reference)
    finally:
        mongo_client.drop_database(reference.name)
    before = snapshot(mongo_db)
    again = import_with_aggregates(mongo_url, mongo_db, layout, cache)
    assert again.files_skipped == again.files
    assert again.hook_stats.get("aggregated_files", 0) == 0
    assert snapshot(mongo_db) == before
    # No file is left listed in a document once every file is marked applied... at its next write.
    assert mongo_db[FILES].count_documents({}) == summary.files


def test_an_import_without_aggregates_is_aggregated_by_the_next_import(mongo_url, mongo_db, layout,
                                                                     cache, mongo_client):
    import_dataset(layout, mongo_url, ImportOptions(database=mongo_db.name, chunk_files=4))
    assert mongo_db[AGGREGATES].count_documents({}) == 0
    summary = import_with_aggregates(mongo_url, mongo_db, layout, cache)
    assert summary.files_skipped == summary.files
    assert summary.hook_stats["aggregated_files"] == summary.files
    clean = mongo_client[mongo_db.name + "_clean"]
    try:
        import_with_aggregates(mongo_url, clean, layout, cache)
        assert snapshot(mongo_db) == snapshot(clean)
    finally:
        mongo_client.drop_database(clean.name)


def test_rebuild_equals_import_on_local_and_dask(mongo_url, mongo_db, mongo_client, layout, cache,
                                                 tmp_path):
    import_with_aggregates(mongo_url, mongo_db, layout, cache)
    for engine in ("local", "dask"):
        db = mongo_client[f"{mongo_db.name}_{engine}"]
        try:
            result = rebuild(RebuildConfig(layout, engine=engine, num_mappers=2,
                                           histogram_cache=str(cache), work_dir=tmp_path), db)
            assert result.stats["pings"] == 200
            assert snapshot(db) == snapshot(mongo_db), engine
            assert db[FILES].count_documents({}) == mongo_db[FILES].count_documents({})
        finally:
            mongo_client.drop_database(db.name)


def test_rebuild_replaces_only_the_channels_and_versions_it_covers(mongo_url, mongo_db, layout,
                                                                   cache, tmp_path):
    import_with_aggregates(mongo_url, mongo_db, layout, cache)
    clean = snapshot(mongo_db)
    # Damage both channels, then rebuild beta only.
    mongo_db[AGGREGATES].update_many({}, {"$set": {"rows": []}})
    flt = tmp_path / "beta.json"
    flt.write_bytes(orjson.dumps({"version": 1, "dimensions": [
        {"field_name": n, "allowed_values": ["beta"] if n == "appUpdateChannel" else "*"}
        for n in NAMES]}))
    result = rebuild(RebuildConfig(layout, filter=flt, num_mappers=1, histogram_cache=str(cache),
                                   work_dir=tmp_path), mongo_db)
    assert result.scope == [("beta", "44")]
    now = snapshot(mongo_db)[AGGREGATES]
    for _id, doc in clean[AGGREGATES].items():
        if doc["channel"] == "beta":
            assert now[_id] == doc
        else:
            assert now[_id]["rows"] == []


def test_rebuild_errors(tmp_path, mongo_db):
    with pytest.raises(RebuildError, match="not a directory"):
        rebuild(RebuildConfig(tmp_path / "nope"), mongo_db)
    bad = tmp_path / "f.json"
    bad.write_text("{")
    with pytest.raises(RebuildError):
        rebuild(RebuildConfig(tmp_path, filter=bad), mongo_db)
    empty = rebuild(RebuildConfig(tmp_path), mongo_db)
    assert empty.files == 0 and "nothing" in empty.describe()


class _Crash(Exception):
    pass


class _CrashingStore(Store):
    """Fails after writing ``after`` aggregate documents, as a killed process would stop."""

    def __init__(self, db, after):
        super().__init__(db)
        self.left = after

    def _write_documents(self, keys, by_key):
        if self.left <= 0:
            raise _Crash()
        take = keys[: self.left]
        self.left -= len(take)
        written, retry = super()._write_documents(take, by_key)
        if self.left <= 0:
            raise _Crash()
        return written, retry


@pytest.mark.parametrize("after", [0, 1, 7, 40, 10_000])
def test_a_crash_between_documents_and_bookkeeping_never_double_counts(mongo_db, pings, cache,
                                                                       mongo_client, after):
    per_file = {}
    for i in range(0, len(pings), 50):
        per_file[f"f{i}"] = (direct(pings[i:i + 50], cache), {"channel": "x", "version": "1"})
    try:
        _CrashingStore(mongo_db, after).apply_files(per_file)
    except _Crash:
        pass
    Store(mongo_db).apply_files(per_file)
    Store(mongo_db).apply_files(per_file)  # and once more: nothing changes
    reference = mongo_client[mongo_db.name + "_ref"]
    try:
        Store(reference).apply_files(per_file)
        assert snapshot(mongo_db) == snapshot(reference)
    finally:
        mongo_client.drop_database(reference.name)
    docs = list(mongo_db[AGGREGATES].find({}, {"units": 1}))
    assert all(u[len("file:"):] in per_file if u.startswith("file:") else len(u) == 32
               for d in docs for u in d["units"])


def test_store_refuses_endless_conflicts(mongo_db, pings, cache, monkeypatch):
    store = Store(mongo_db)
    monkeypatch.setattr(store, "_write_documents", lambda keys, by_key: (0, keys))
    monkeypatch.setattr("aggregations.store.time.sleep", lambda s: None)
    with pytest.raises(StoreError, match="rerun"):
        store.apply_files({"f": (direct(pings[:3], cache), {})})


def _api_answer(db, by, channel, version, dates, metric, filters=None):
    meta = db[METRICS].find_one({"_id": doc_id((channel, version, metric))})
    layout, definition = choose_layout(meta)
    docs = list(db[AGGREGATES].find({"_id": {"$in": [doc_id((by, channel, version, d, metric))
                                                     for d in dates]}}))
    answer = histogram_answer(docs, dates, layout, definition, filters or {})
    return {(d["date"], d["label"]): [d["histogram"], d["sum"], d["count"]]
            for d in answer["data"]}


def _run(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def _kill_when(args, condition, timeout=120.0) -> bool:
    """Run, SIGKILL as soon as ``condition()`` holds; True when it was killed while running."""
    proc = _run(args, start_new_session=True)
    deadline = time.monotonic() + timeout
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.002)
    proc.communicate(timeout=60)
    return killed


def _count(db, name):
    return db[name].count_documents({})


IMPORT_KILL_POINTS = {
    # while records are written, before any aggregate
    "importing": lambda db: _count(db, "imports") > 0,
    # files recorded pending, documents not yet (or partly) written
    "pending": lambda db: _count(db, FILES) > 0,
    # aggregate documents partly written, no file marked applied
    "aggregating": lambda db: _count(db, AGGREGATES) > 0,
}


@pytest.mark.parametrize("point", sorted(IMPORT_KILL_POINTS))
def test_sigkilled_import_then_rerun_equals_the_independent_sum(mongo_url, mongo_db, layout,
                                                                cache, pings, point):
    args = ["-m", "importer", str(layout), "-d", mongo_db.name, "--mongo-url", mongo_url,
            "--histogram-cache", str(cache), "--workers", "1"]
    assert _kill_when(args, lambda: IMPORT_KILL_POINTS[point](mongo_db))
    assert mongo_db[FILES].count_documents({"state": "applied"}) == 0  # it stopped before the end
    proc = _run(args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    for metric, filters in (("AN_ENUM", {}), ("SIMPLE_MEASURES_UPTIME", {"os": "Darwin"}),
                            ("KEYED_EXP", {}), ("SCALARS_DOM.CLICKS", {})):
        dates = [b[:8] for b in ap.BUILDS[:2]]
        got = _api_answer(mongo_db, "build_id", "nightly", "45", dates, metric, filters)
        assert got == ap.expected(pings, "build_id", "nightly", "45", dates, metric, filters)


@pytest.mark.parametrize("point", ["mapping", "replacing"])
def test_sigkilled_rebuild_then_rerun_equals_a_clean_run(mongo_url, mongo_db, mongo_client, layout,
                                                         cache, pings, point, tmp_path):
    args = ["-c", "from telemetry.cli import main; main()", "aggregates", "rebuild",
            "--data-dir", str(layout), "-d", mongo_db.name, "--mongo-url", mongo_url,
            "--histogram-cache", str(cache), "--num-mappers", "1", "--work-dir", str(tmp_path)]
    if point == "mapping":
        def condition():
            return any(tmp_path.glob("aggregates-rebuild-*/work/mapper_*"))
    else:
        def condition():
            return _count(mongo_db, FILES) > 0
    assert _kill_when(args, condition)
    proc = _run(args)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err.decode()
    assert b"rebuilt" in out
    clean = mongo_client[mongo_db.name + "_clean"]
    try:
        Store(clean).replace_scope(direct(pings, cache), {("nightly", "45"), ("nightly", "46"),
                                                          ("beta", "44")}, {})
        assert snapshot(mongo_db) == snapshot(clean)
    finally:
        mongo_client.drop_database(clean.name)


def test_a_later_import_shows_in_the_api_within_max_age(mongo_url, mongo_db, cache, pings,
                                                       tmp_path):
    import requests

    from dashboard.config import DashboardConfig
    from dashboard.testing import ServiceThread

    first, second = pings[:100], pings[100:]
    ap.write_pings(tmp_path / "layout", first)
    import_with_aggregates(mongo_url, mongo_db, tmp_path / "layout", cache)
    dates = [b[:8] for b in ap.BUILDS]
    path = ("/aggregates_by/build_id/channels/nightly/?version=45&dates=" + ",".join(dates)
            + "&metric=AN_ENUM")
    with ServiceThread(DashboardConfig(database=mongo_db.name, max_age=5), mongo_url) as s:
        r = requests.get(s.url + path, timeout=30)
        assert r.headers["Cache-Control"] == "public, max-age=5"
        want = ap.expected(first, "build_id", "nightly", "45", dates, "AN_ENUM")
        assert {(d["date"], d["label"]): [d["histogram"], d["sum"], d["count"]]
                for d in r.json()["data"]} == want
        etag = r.headers["Etag"]
        ap.write_pings(tmp_path / "layout", second)
        import_with_aggregates(mongo_url, mongo_db, tmp_path / "layout", cache)
        # The server keeps no cache: the next request (a browser's, once max-age has passed,
        # or a revalidation with the old ETag) sees the new data.
        later = requests.get(s.url + path, headers={"If-None-Match": etag}, timeout=30)
        assert later.status_code == 200
        want = ap.expected(pings, "build_id", "nightly", "45", dates, "AN_ENUM")
        assert {(d["date"], d["label"]): [d["histogram"], d["sum"], d["count"]]
                for d in later.json()["data"]} == want
