"""Payload conversion (SPEC section 4) against the real fixture ping and revisions."""

from __future__ import annotations

import gzip

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from converter.convert import Converter, parse_path, payload_version
from converter.errors import REASONS, RecordError
from converter.histograms import Histograms
from converter.layout import clean_value, dimensions_from_path, relative_path
from converter.revisions import RevisionCache, write_revision
from converter.schema import Schema
from receiver.rawlog import Record, read_records

REPO = "releases/mozilla-release"
REV = "a55c55edf302"
REV_URL = f"http://hg.mozilla.org/{REPO}/rev/{REV}"
BROKEN_URL = "http://hg.mozilla.org/test/broken/rev/bad0000bad00"
UNKNOWN = {"HTTP_OFFLINE_CACHE_DOCUMENT_LOAD", "MIXED_CONTENT_PAGE_LOAD"}


@pytest.fixture(scope="module")
def schema(fixtures_dir):
    return Schema.load(fixtures_dir / "telemetry_schema.json")


@pytest.fixture(scope="module")
def histograms(fixtures_dir):
    return Histograms.load(fixtures_dir / "histograms" / f"{REV}.Histograms.json")


@pytest.fixture
def converter(tmp_path, fixtures_dir, schema):
    cache = tmp_path / "cache"
    definitions = fixtures_dir / "histograms" / f"{REV}.Histograms.json"
    write_revision(cache, REPO, REV, definitions.read_bytes())
    write_revision(cache, "test/broken", "bad0000bad00",
                   orjson.dumps({"BROKEN": {"kind": "linear", "high": "NO_SUCH::SYMBOL",
                                            "n_buckets": 10}}))
    return Converter(schema, RevisionCache(cache, None), max_uncompressed=200_000)


@pytest.fixture(scope="module")
def fixture_record(fixtures_dir):
    return next(iter(read_records(fixtures_dir / "raw" / "telemetry1.v1.log")))


def _ping(**extra):
    doc = {"ver": 1, "info": {"reason": "idle-daily", "appName": "Firefox", "appVersion": "23.0.1",
                              "appUpdateChannel": "release", "appBuildID": "20130814063812",
                              "revision": REV_URL},
           "histograms": {"A11Y_IATABLE_USAGE_FLAG": {"values": {"0": 1, "1": 0}, "sum": 0}}}
    doc.update(extra)
    return doc


PATH = "doc1/idle-daily/Firefox/23.0.1/release/20130814063812"


def _record(doc, path=PATH, gz=True) -> Record:
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return Record(path, gzip.compress(body) if gz else body, 1378822911255)


def _doc(converted):
    doc_id, _, text = converted.line.rstrip(b"\n").partition(b"\t")
    assert doc_id == converted.doc_id.encode()
    return orjson.loads(text)


def test_fixture_ping_converts(converter, fixture_record, histograms):
    out = converter.convert_record(fixture_record)
    assert relative_path(out.dimensions, out.version) == \
        "idle_daily/Firefox/release/23.0.1/20130814063812.20130910.v2.log"
    doc = _doc(out)
    assert doc["ver"] == 2
    assert len(doc["histograms"]) == 326
    for name, arr in doc["histograms"].items():
        definition = histograms.get(name)
        assert len(arr) == definition.n_buckets + 5, name
        assert all(type(v) in (int, float) for v in arr)
    assert set(doc["unknownHistograms"]) == UNKNOWN
    assert set(out.unknown_histograms) == UNKNOWN
    assert "values" in doc["unknownHistograms"]["MIXED_CONTENT_PAGE_LOAD"]


def test_histogram_array_places_counts_and_statistics(converter, histograms):
    definition = histograms.get("GC_MS")
    b = definition.buckets
    hist = {"values": {str(b[0]): 3, str(b[5]): 7, str(b[-1]): 1}, "sum": 99, "log_sum": 1.5}
    doc = _ping(histograms={"STARTUP_GC_MS": hist})
    out = converter.convert_document("d", {"reason": "idle-daily"}, doc, "20130910")
    arr = _doc(out)["histograms"]["STARTUP_GC_MS"]
    assert arr[0] == 3 and arr[5] == 7 and arr[len(b) - 1] == 1
    assert sum(arr[:len(b)]) == 11
    assert arr[len(b):] == [99, 1.5, -1, -1, -1]


def test_bucket_written_differently_lands_in_its_slot(converter, histograms):
    b = histograms.get("GC_MS").buckets
    plain = {"values": {str(b[0]): 3, str(b[5]): 7}, "sum": 10}
    padded = {"values": {str(b[0]): 3, "0" + str(b[5]): 7}, "sum": 10}
    doc = _ping(histograms={"GC_MS": plain, "STARTUP_GC_MS": padded})
    out = _doc(converter.convert_document("d", {"reason": "idle-daily"}, doc, "20130910"))
    assert out["histograms"]["STARTUP_GC_MS"] == out["histograms"]["GC_MS"]
    assert out["histograms"]["GC_MS"][5] == 7


@pytest.mark.parametrize("doc, path, reason", [
    (b"not json", PATH, "bad_payload"),
    (b"[1, 2]", PATH, "bad_payload"),
    ({"ver": 1}, PATH, "bad_payload"),
    ({"ver": 9, "info": {}}, PATH, "bad_payload"),
    (_ping(info={"reason": "x"}), PATH, "bad_payload"),
    (_ping(histograms={"GC_MS": 5}), PATH, "conversion_error"),
    (_ping(histograms={"GC_MS": {"sum": 1}}), PATH, "conversion_error"),
    (_ping(), "a/b/c", "invalid_path"),
    (_ping(), "/idle-daily/Firefox/23.0.1/release/1", "invalid_path"),
    (_ping(), "doc1", "uuid_only_path"),
    (_ping(histograms={"GC_MS": {"values": {"-3": 1}}}), PATH, "invalid_bucket"),
    (_ping(histograms={"GC_MS": {"values": {"0": "many"}}}), PATH, "invalid_bucket"),
    (_ping(histograms={"GC_MS": {"values": {"0": 1.5}}}), PATH, "invalid_bucket"),
    (_ping(histograms={"GC_MS": {"values": {"0": True}}}), PATH, "invalid_bucket"),
    (_ping(histograms={"GC_MS": {"values": {"0": None}}}), PATH, "invalid_bucket"),
    (_ping(histograms={"GC_MS": {"values": {"0": 1, "1": -2.0}}}), PATH, "invalid_bucket"),
    (_ping(histograms={"GC_MS": {"values": [1, 2]}}), PATH, "conversion_error"),
    (_ping(histograms={"GC_MS": [1, 2]}), PATH, "conversion_error"),
    (_ping(info=dict(_ping()["info"], revision=f"http://hg.mozilla.org/{REPO}/rev/0123456789ab")),
     PATH, "missing_revision"),
    (_ping(info=dict(_ping()["info"], revision="not a url")), PATH, "missing_revision_repo"),
    (_ping(info=dict(_ping()["info"], revision=BROKEN_URL),
           histograms={"BROKEN": {"values": {"0": 1}}}), PATH, "unknown_histogram"),
])
def test_rejected_with_reason(converter, doc, path, reason):
    with pytest.raises(RecordError) as e:
        converter.convert_record(_record(doc, path))
    assert e.value.reason == reason
    assert reason in REASONS


@pytest.mark.parametrize("data, reason", [
    (b"", "empty_data"),
    (gzip.compress(b"   "), "empty_data"),
    (b"\x1f\x8b\x08\x00garbage", "corrupted_data"),
    (gzip.compress(b'{"a": "' + b" " * 300_000 + b'"}'), "too_large"),
], ids=["empty", "blank", "corrupt", "large"])
def test_body_problems(converter, data, reason):
    with pytest.raises(RecordError) as e:
        converter.convert_record(Record(PATH, data, 1378822911255))
    assert e.value.reason == reason


def test_uncompressed_and_invalid_utf8_bodies_convert(converter):
    body = orjson.dumps(_ping()).replace(b'"Firefox"', b'"Fire\xfffox"', 1)
    out = converter.convert_record(_record(body, gz=False))
    assert _doc(out)["info"]["appName"] == "Fire\ufffdfox"


def test_empty_histograms_need_no_revision(converter):
    doc = _ping(histograms={})
    del doc["info"]["revision"]
    out = converter.convert_record(_record(doc))
    assert _doc(out)["histograms"] == {} and out.version == 2


def test_version_2_passes_unchanged(converter):
    doc = {"ver": 2, "info": _ping()["info"], "histograms": {"X": [1, 2, 3, -1, -1, -1, -1, -1]}}
    out = converter.convert_record(_record(doc))
    assert _doc(out) == doc and out.version == 2


def test_firefox_os_ping(converter):
    doc = {"ver": 3, "deviceinfo.update_channel": "nightly",
           "deviceinfo.platform_version": "28.0a1",
           "deviceinfo.platform_build_id": "20131029030201", "screenHeight": 480}
    out = converter.convert_record(_record(doc, "fxos-doc"))
    assert out.dimensions == ["ftu", "FirefoxOS", "nightly", "28.0a1", "20131029030201", "20130910"]
    assert _doc(out)["info"]["appName"] == "FirefoxOS" and out.version == 3


def _unified(ping_type="main", **payload):
    doc = {"version": 4, "type": ping_type,
           "application": {"name": "Firefox", "version": "40.0a1", "channel": "nightly",
                           "buildId": "20150401030204"},
           "payload": {"info": {"revision": REV_URL},
                       "histograms": {"GC_MS": {"values": {"0": 2}, "sum": 0}}}}
    doc["payload"].update(payload)
    return doc


def test_unified_main_becomes_version_5(converter):
    doc = _unified(keyedHistograms={"GC_MS": {"a": {"values": {"0": 1}}}, "NEW_ONE": {"b": {}}})
    out = converter.convert_record(_record(doc, "u1/main/Firefox/40.0a1/nightly/20150401030204"))
    converted = _doc(out)
    assert converted["version"] == 5 and out.version == 5
    assert converted["info"] == {"reason": "main", "appName": "Firefox", "appVersion": "40.0a1",
                                 "appUpdateChannel": "nightly", "appBuildID": "20150401030204"}
    assert converted["payload"]["histograms"]["GC_MS"][0] == 2
    assert converted["payload"]["keyedHistograms"]["GC_MS"]["a"][0] == 1
    assert "NEW_ONE" in converted["unknownKeyedHistograms"]
    assert out.dimensions == ["main", "Firefox", "nightly", "40.0a1", "20150401030204", "20130910"]


@pytest.mark.parametrize("doc", [
    _unified("saved-session"),                      # no environment
    {"version": 4, "type": "main", "payload": {}},  # no application
    dict(_unified(), type=None),
    _unified(info=None),
])
def test_unified_missing_parts_rejected(converter, doc):
    with pytest.raises(RecordError) as e:
        converter.convert_record(_record(doc, "u1"))
    assert e.value.reason == "bad_payload"


def test_other_unified_types_pass_through(converter):
    doc = {"version": 4, "type": "crash", "application": {"name": "Firefox", "version": "40.0",
                                                          "channel": "beta", "buildId": "1"},
           "payload": {"anything": [1, 2]}}
    out = converter.convert_record(_record(doc, "u2"))
    assert _doc(out) == doc and out.dimensions[:3] == ["OTHER", "Firefox", "beta"]


@pytest.mark.parametrize("path, expected", [
    (PATH, ("doc1", {"reason": "idle-daily", "appName": "Firefox", "appVersion": "23.0.1",
                     "appUpdateChannel": "release", "appBuildID": "20130814063812"})),
    ("/submit/telemetry/abc", ("abc", None)),
    ("abc", ("abc", None)),
])
def test_parse_path(path, expected):
    assert parse_path(path) == expected


@pytest.mark.parametrize("path", ["", "/", "a/b", "a b/1/2/3/4/5", "a/1/2/3/4/5/6", "x\ty"])
def test_parse_path_rejects(path):
    with pytest.raises(RecordError) as e:
        parse_path(path)
    assert e.value.reason == "invalid_path"


def test_payload_version():
    assert payload_version({}) == 1
    assert payload_version({"version": 4}) == 4
    with pytest.raises(RecordError):
        payload_version({"ver": "2"})


# -- property tests: the schema's path building --------------------------------

values = st.text(min_size=0, max_size=300)


@settings(max_examples=200, deadline=None)
@given(st.lists(values, min_size=2, max_size=7), st.integers(1, 5))
def test_relative_path_stays_inside_and_round_trips(dims, version):
    rel = relative_path(dims, version)
    parts = rel.split("/")
    assert len(parts) == len(dims) - 1
    assert all(p not in ("", ".", "..") for p in parts)
    assert not rel.startswith("/") and "\0" not in rel
    assert all(len(p) <= 100 for p in parts[:-1])
    # still a valid file name once published
    assert len(parts[-1]) + len(".0123456789abcdef0123456789abcdef.lzma") <= 255
    expected = [clean_value(d) for d in dims]
    expected[-2:] = [v.replace(".", "_") for v in expected[-2:]]
    assert dimensions_from_path(rel) == expected


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["reason", "appName", "appUpdateChannel", "appVersion",
                                        "appBuildID"]), values))
def test_schema_dimensions_are_allowed_other_or_unknown(info):
    schema = Schema({"dimensions": [{"field_name": "reason", "allowed_values": ["idle-daily"]},
                                    {"field_name": "appName", "allowed_values": "*"},
                                    {"field_name": "appVersion", "allowed_values": {"min": "20"}},
                                    {"field_name": "submission_date", "allowed_values": "*"}]})
    dims = schema.dimensions_for(info, "20130910")
    assert dims[0] in ("idle-daily", "OTHER", "UNKNOWN")
    assert dims[1] == info.get("appName", "UNKNOWN")
    assert dims[2] in ("OTHER", "UNKNOWN") or dims[2] >= "20"
    assert dims[3] == "20130910"
