"""Schema and filter semantics of SPEC section 3: allowed values, OTHER/UNKNOWN, pruning."""

import pytest

from converter.layout import find_layout_files
from converter.schema import OTHER, UNKNOWN, Schema, SchemaError, is_allowed, submission_date


@pytest.mark.parametrize("value, allowed, expected", [
    ("anything", "*", True),
    ("nightly", ["nightly", "aurora"], True),
    ("release", ["nightly", "aurora"], False),
    ("Firefox", "Firefox", True),
    ("Fennec", "Firefox", False),
    ("20131102", {"min": "20131101", "max": "20131103"}, True),
    ("20131101", {"min": "20131101", "max": "20131103"}, True),
    ("20131104", {"min": "20131101", "max": "20131103"}, False),
    ("20131031", {"min": "20131101"}, False),
    ("20990101", {"min": "20131101"}, True),
    ("19990101", {"max": "20131101"}, True),
])
def test_allowed_values(value, allowed, expected):
    assert is_allowed(value, allowed) is expected


@pytest.mark.parametrize("spec", [
    {},
    {"dimensions": []},
    {"dimensions": [{"allowed_values": "*"}]},
    {"dimensions": [{"field_name": "reason", "allowed_values": 5}]},
    # Found by bench/fuzz.py: these raised ValueError/TypeError instead of SchemaError.
    {"version": "$where", "dimensions": [{"field_name": "reason"}]},
    {"version": [1], "dimensions": [{"field_name": "reason"}]},
    {"dimensions": [{"field_name": "reason", "allowed_values": [{"$where": "1"}]}]},
    {"dimensions": [{"field_name": "reason", "allowed_values": {"min": "a", "$gt": ""}}]},
    {"dimensions": [{"field_name": "reason", "allowed_values": {"min": {"$ne": 1}}}]},
    # operator documents and other shapes the SPEC does not have (they matched everything)
    {"dimensions": [{"field_name": "reason", "allowed_values": {"$ne": "x"}}]},
    {"dimensions": [{"field_name": "reason", "allowed_values": {"$regex": ".*"}}]},
    {"dimensions": [{"field_name": "reason", "allowed_values": {"min": "a", "$ne": "x"}}]},
    {"dimensions": [{"field_name": "reason", "allowed_values": {"min": {"$gt": ""}}}]},
    {"dimensions": [{"field_name": "reason", "allowed_values": {}}]},
    {"dimensions": [{"field_name": "reason", "allowed_values": [{"$ne": "x"}]}]},
    {"dimensions": [{"field_name": "reason", "allowed_values": [23]}]},
    {"dimensions": [{"field_name": "reason", "allowed_values": None}]},
])
def test_malformed_schema_is_rejected(spec):
    with pytest.raises(SchemaError):
        Schema(spec)


def test_missing_schema_file_names_the_file(tmp_path):
    with pytest.raises(SchemaError, match="nope.json"):
        Schema.load(tmp_path / "nope.json")


def test_dimensions_for_applies_other_and_unknown(fixtures_dir):
    schema = Schema.load(fixtures_dir / "telemetry_schema.json")
    info = {"reason": "idle-daily", "appName": "SeaMonkey", "appVersion": "23.0.1",
            "appBuildID": "20130814063812"}
    assert schema.dimensions_for(info, "20130910") == [
        "idle-daily", OTHER, UNKNOWN, "23.0.1", "20130814063812", "20130910"]


def test_submission_date_is_the_utc_day():
    # The fixture ping was received 2013-09-10 14:21:51.255 UTC.
    assert submission_date(1378822911255) == "20130910"
    assert submission_date(1378857599999) == "20130910"
    assert submission_date(1378857600000) == "20130911"


def test_filter_prunes_fixture_layout(fixtures_dir):
    layout = fixtures_dir / "converted"
    everything = find_layout_files(layout)
    assert len(everything) == 2
    only_28 = Schema({"dimensions": [{"field_name": "reason", "allowed_values": "saved_session"},
                                     {"field_name": "appName", "allowed_values": "*"},
                                     {"field_name": "appUpdateChannel", "allowed_values": "*"},
                                     {"field_name": "appVersion", "allowed_values": ["28.0a1"]}]})
    assert [f.dimensions[3] for f in find_layout_files(layout, only_28)] == ["28.0a1"]
    # The original's filter asks for November 2013: neither fixture file is in it.
    nov = Schema.load(fixtures_dir / "filter_saved_session_Fx_prerelease.json")
    assert find_layout_files(layout, nov) == []


def test_filter_values_are_compared_cleaned(fixtures_dir):
    # "saved-session" in a filter matches the "saved_session" directory.
    spec = {"dimensions": [{"field_name": "reason", "allowed_values": ["saved-session"]},
                           {"field_name": "appName", "allowed_values": "Firefox"},
                           {"field_name": "appUpdateChannel", "allowed_values": ["nightly"]},
                           {"field_name": "appVersion", "allowed_values": "*"},
                           {"field_name": "appBuildID", "allowed_values": "*"},
                           {"field_name": "submission_date", "allowed_values": {"min": "20131029"}}]}
    found = find_layout_files(fixtures_dir / "converted", Schema(spec))
    assert [f.dimensions for f in found] == [
        ["saved_session", "Firefox", "nightly", "28.0a1", "20131029030201", "20131029"]]


def test_open_range_stays_open_in_the_path_filter():
    from converter.layout import path_filter

    f = Schema({"dimensions": [{"field_name": "appVersion", "allowed_values": {"min": "23", "max": None}}]})
    assert path_filter(f).dimensions[0].allowed_values == {"min": "23", "max": None}
    assert path_filter(f).allows(["99"])  # compared with "None" before
