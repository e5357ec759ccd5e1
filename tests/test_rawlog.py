"""The raw-log format: reader on real and damaged files, writer round trip, CLI."""

from __future__ import annotations

import gzip

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.cli import rawlog_group
from receiver.rawlog import (
    CorruptData,
    DataTooLarge,
    RawLogReader,
    Record,
    encode_record,
    inflate,
    log_file_name,
    version_from_name,
    write_records,
)

TS = 1_378_822_911_255  # 2013-09-10 14:21:51.255 UTC, the fixture's timestamp


def _read(path, version=None):
    reader = RawLogReader(path, version)
    return list(reader), reader.stats


def test_fixture_file(fixtures_dir):
    records, stats = _read(fixtures_dir / "raw" / "telemetry1.v1.log")
    assert len(records) == 1
    rec = records[0]
    assert rec.path.startswith("17caa68c-")
    assert rec.path.endswith("/idle-daily/Firefox/23.0.1/release/20130814063812")
    assert rec.timestamp == TS
    assert rec.ip is None
    assert len(rec.data) == 18255 and rec.data[:2] == b"\x1f\x8b"
    payload = orjson.loads(rec.inflate())
    assert payload["ver"] == 1 and len(rec.inflate()) == 77740
    # The stray trailing byte is reported and counted, not raised.
    assert stats.skipped_bytes == 1 and stats.records == 1 and len(stats.errors) == 1


def _three(version):
    ip = "10.0.0.1" if version == 2 else None
    return [encode_record(f"doc{i}/saved-session/Firefox", b"{\"n\": %d}" % i, TS + i, ip)
            for i in range(3)]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("cut", [1, 5, 17, 30])
def test_truncated_last_record(tmp_path, version, cut):
    recs = _three(version)
    data = b"".join(recs)
    path = tmp_path / f"telemetry.v{version}.host.1.2"
    path.write_bytes(data[:-cut])
    records, stats = _read(path)
    assert [r.path for r in records] == ["doc0/saved-session/Firefox", "doc1/saved-session/Firefox"]
    assert stats.skipped_bytes == len(recs[2]) - cut
    assert stats.errors
    if len(recs[2]) - cut >= (15 if version == 1 else 16):  # the header itself is complete
        assert stats.truncated


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("garbage", [b"\x00" * 7, b"\x1e\x1e\x1e", b"garbage\x1e\xff\xff",
                                     bytes(range(256))])
def test_garbage_between_records(tmp_path, version, garbage):
    recs = _three(version)
    path = tmp_path / f"x.v{version}.h.1.2"
    path.write_bytes(recs[0] + garbage + recs[1] + garbage + recs[2])
    records, stats = _read(path)
    assert [r.data for r in records] == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    assert stats.skipped_bytes == 2 * len(garbage)
    assert len(stats.errors) == 2


def test_zero_length_body(tmp_path):
    path = tmp_path / "z.v1.h.1.2"
    path.write_bytes(encode_record("a", b"", TS) + encode_record("b", b"x", TS + 1))
    records, stats = _read(path)
    assert [(r.path, r.data) for r in records] == [("a", b""), ("b", b"x")]
    assert stats.skipped_bytes == 0 and not stats.errors


@pytest.mark.parametrize("version", [1, 2])
def test_lengths_pointing_past_the_end(tmp_path, version):
    good = encode_record("ok", b"fine", TS, "1.2.3.4" if version == 2 else None)
    bad = bytearray(encode_record("bad", b"data", TS, "1.2.3.4" if version == 2 else None))
    # data_len is the u32 after the path length: make it claim 1 MB.
    at = 3 if version == 1 else 4
    bad[at:at + 4] = (1 << 20).to_bytes(4, "little")
    path = tmp_path / f"p.v{version}.h.1.2"
    path.write_bytes(good + bytes(bad))
    records, stats = _read(path)
    assert [r.path for r in records] == ["ok"]
    assert stats.truncated and stats.skipped_bytes == len(bad)
    # ...and in the middle of a file the reader resynchronises on the next record.
    path.write_bytes(bytes(bad) + good)
    records, stats = _read(path)
    assert [r.path for r in records] == ["ok"]
    assert stats.skipped_bytes == len(bad)


@pytest.mark.parametrize("version", [1, 2])
def test_version_detected_without_a_name(tmp_path, version):
    path = tmp_path / "anonymous.log"
    path.write_bytes(b"".join(_three(version)))
    records, stats = _read(path)
    assert len(records) == 3 and stats.skipped_bytes == 0
    assert (records[0].ip == "10.0.0.1") == (version == 2)


def test_empty_file_and_start_offset(tmp_path):
    path = tmp_path / "e.v1.h.1.2"
    path.write_bytes(b"")
    assert _read(path)[0] == []
    recs = _three(1)
    path.write_bytes(b"".join(recs))
    later = [r.path for r in RawLogReader(path, start_offset=len(recs[0]))]
    assert later[0] == "doc1/saved-session/Firefox"


def test_names():
    name = log_file_name("telemetry", 2, "host.example.com", 42, 1700000000000)
    assert name == "telemetry.v2.host.example.com.42.1700000000000"
    assert version_from_name(name) == 2
    assert version_from_name(name + ".finished") == 2
    assert version_from_name("whatever.log") is None


def test_long_ip_becomes_unknown():
    rec = encode_record("p", b"d", TS, "1" * 300)
    assert rec[1] == len("0.0.0.0") and b"0.0.0.0" in rec


def test_inflate():
    body = b"x" * 1000
    assert inflate(gzip.compress(body)) == body
    assert inflate(body) == body
    with pytest.raises(DataTooLarge):
        inflate(gzip.compress(body), max_size=10)
    with pytest.raises(CorruptData):
        inflate(gzip.compress(body)[:20])
    with pytest.raises(CorruptData):
        inflate(b"\x1f\x8bnot gzip at all")


_paths = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60)
_records = st.lists(st.tuples(_paths, st.binary(max_size=300), st.integers(0, 2**63 - 1),
                              st.from_regex(r"[0-9a-f:.]{0,40}", fullmatch=True)), max_size=8)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=_records, version=st.sampled_from([1, 2]))
def test_round_trip(tmp_path, records, version):
    path = tmp_path / f"rt.v{version}.h.1.2"
    with open(path, "wb") as f:
        for p, data, ts, ip in records:
            f.write(encode_record(p, data, ts, ip if version == 2 else None))
    got, stats = _read(path)
    assert [(r.path, r.data, r.timestamp) for r in got] == [(p, d, t) for p, d, t, _ in records]
    if version == 2:
        assert [r.ip for r in got] == [ip for *_, ip in records]
    assert stats.skipped_bytes == 0 and not stats.errors


def test_cli_cat_and_stats(tmp_path, fixtures_dir):
    fixture = str(fixtures_dir / "raw" / "telemetry1.v1.log")
    other = tmp_path / "t.v2.h.1.2.finished"
    write_records(other, [Record("a/b", b"plain text", TS, "1.2.3.4"),
                          Record("c", b"\xff\xfe", TS + 1, "::1")], 2)
    runner = CliRunner()
    res = runner.invoke(rawlog_group, ["cat", fixture, str(other)])
    assert res.exit_code == 0, res.output
    lines = [orjson.loads(line) for line in res.stdout.splitlines()]
    assert len(lines) == 3
    assert lines[0]["timestamp"] == TS and lines[0]["data_length"] == 18255
    assert orjson.loads(lines[0]["data"])["ver"] == 1  # gunzipped
    assert lines[1]["data"] == "plain text" and lines[1]["ip"] == "1.2.3.4"
    assert lines[2]["data"] is None and "data_error" in lines[2]
    assert "trailing bytes" in res.stderr
    res = runner.invoke(rawlog_group, ["cat", "--raw", "--no-data", fixture])
    assert "data" not in orjson.loads(res.stdout)
    res = runner.invoke(rawlog_group, ["stats", "--json", fixture, str(other)])
    assert res.exit_code == 0
    rows = [orjson.loads(line) for line in res.stdout.splitlines()]
    assert rows[0]["records"] == 1 and rows[0]["skipped_bytes"] == 1 and rows[0]["errors"] == 1
    assert rows[-1] == {"file": "total", "records": 3, "bytes": rows[0]["bytes"] + rows[1]["bytes"],
                        "skipped_bytes": 1, "errors": 1, "truncated": False}
    res = runner.invoke(rawlog_group, ["stats", fixture])
    assert "records=1" in res.stdout and "skipped=1" in res.stdout
    res = runner.invoke(rawlog_group, ["stats", str(tmp_path / "missing")])
    assert res.exit_code == 2


def test_non_ascii_forwarded_ip_is_still_a_record(tmp_path):
    # The receiver stores X-Forwarded-For as sent; a record must not be lost over it.
    path = tmp_path / "n.v2.h.1.2"
    path.write_bytes(encode_record("a", b"1", TS, "caf\u00e9, 10.0.0.1")
                     + encode_record("b", b"2", TS, "1.1.1.1"))
    records, stats = _read(path)
    assert [r.path for r in records] == ["a", "b"]
    assert records[0].ip == "caf\u00e9, 10.0.0.1" and stats.skipped_bytes == 0


def test_empty_path_record_is_read(tmp_path):
    # The original server stored whatever followed the prefix, even nothing.
    path = tmp_path / "e.v1.h.1.2"
    path.write_bytes(encode_record("", b"body", TS) + encode_record("next", b"2", TS))
    records, stats = _read(path)
    assert [(r.path, r.data) for r in records] == [("", b"body"), ("next", b"2")]
    assert not stats.errors


def test_cat_does_not_inflate_a_decompression_bomb(tmp_path):
    bomb = gzip.compress(b"\0" * 20_000_000, compresslevel=9)  # ~20 KB inflating to 20 MB
    path = tmp_path / "bomb.v1.h.1.2.finished"
    write_records(path, [Record("bomb", bomb, TS), Record("ok", gzip.compress(b"{}"), TS + 1)])
    res = CliRunner().invoke(rawlog_group, ["cat", str(path)])
    assert res.exit_code == 0, res.output
    bomb_line, ok_line = [orjson.loads(line) for line in res.stdout.splitlines()]
    assert bomb_line["data"] is None and "inflates past 1048576 bytes" in bomb_line["data_error"]
    assert "data_too_large" not in bomb_line
    assert ok_line["data"] == "{}"
    assert len(res.stdout) < 10_000
    assert "1 bodies inflate past 1048576 bytes" in res.stderr
    res = CliRunner().invoke(rawlog_group, ["cat", "--max-uncompressed", "1", str(path)])
    assert [orjson.loads(line)["data"] for line in res.stdout.splitlines()] == [None, None]
    # every reader that inflates is bounded by default
    with pytest.raises(DataTooLarge):
        inflate(bomb)
    assert len(inflate(bomb, max_size=None)) == 20_000_000


def test_rawlog_takes_directories_and_says_when_a_file_is_not_a_raw_log(tmp_path):
    import os

    spool = tmp_path / "spool"
    spool.mkdir()
    write_records(spool / "a.v2.h.1.2.finished", [Record("a", b"1", TS, "1.1.1.1")], 2)
    write_records(spool / "b.v2.h.1.3.finished", [Record("b", b"2", TS, "1.1.1.1")], 2)
    (spool / "c.v2.h.1.4").write_bytes(b"unfinished: not read")
    runner = CliRunner()
    res = runner.invoke(rawlog_group, ["cat", str(spool)])
    assert res.exit_code == 0, res.output
    assert [orjson.loads(line)["path"] for line in res.stdout.splitlines()] == ["a", "b"]
    res = runner.invoke(rawlog_group, ["stats", str(spool)])
    assert res.exit_code == 0 and "total: records=2" in res.stdout

    noise = tmp_path / "random.bin"
    noise.write_bytes(os.urandom(4096))
    res = runner.invoke(rawlog_group, ["stats", str(noise)])
    assert res.exit_code == 1 and f"not a raw log (no record found): {noise}" in res.output
