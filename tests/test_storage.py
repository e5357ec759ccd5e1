"""The layout writer: rotation, codecs, atomic publication, path safety, and reading back."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from converter.errors import UnwritablePartition
from converter.layout import (clean_value, codec_of, find_layout_files, read_layout_file,
                              relative_path)
from converter.storage import LayoutWriter, complete_pending, published_id, write_manifest

REL = "saved_session/Firefox/nightly/22.0a1/20130226031002.20131011.v2.log"
UNIT = "0" * 32


def _lines(n, start=0, pad=50):
    return [b"doc%d\t" % i + orjson.dumps({"i": i, "pad": "x" * pad}) + b"\n"
            for i in range(start, start + n)]


def _publish(writer):
    pending = writer.finish()
    write_manifest(writer.work_dir, pending, {})
    return complete_pending(writer.work_dir)


def _read_all(root):
    return [(f.relpath, doc_id, text) for f in find_layout_files(root, include_plain=False)
            for _, doc_id, text in read_layout_file(f.path)]


@pytest.mark.parametrize("codec, magic", [("zst", b"\x28\xb5\x2f\xfd"), ("lzma", b"\x5d\x00\x00")])
def test_rotation_and_codecs(tmp_path, codec, magic):
    root = tmp_path / "out"
    writer = LayoutWriter(root, root / ".work" / UNIT, UNIT, codec=codec, max_file_size=10_000)
    lines = _lines(500)
    for line in lines:
        writer.write(REL, line)
    published = _publish(writer)
    assert len(published) >= 4  # ~45 KB in 10 KB files
    for p in published:
        assert Path(p).read_bytes().startswith(magic)
        assert p.endswith(f".{codec}") and codec_of(p) in ("zstd", "lzma")
    got = _read_all(root)
    assert sorted(d for _, d, _ in got) == sorted(f"doc{i}" for i in range(500))
    assert {r.rsplit(".", 2)[0] for r, _, _ in got} == {REL}
    assert [p.name for p in (root / ".work" / UNIT).iterdir()] == ["manifest.json"]  # all moved


def test_names_are_deterministic_and_never_reused_across_sequence(tmp_path):
    names = []
    for run in ("a", "b"):
        root = tmp_path / run
        writer = LayoutWriter(root, root / ".work" / UNIT, UNIT, max_file_size=5_000)
        for line in _lines(200):
            writer.write(REL, line)
        names.append([os.path.relpath(p, root) for p in _publish(writer)])
    assert names[0] == names[1]
    assert len(set(names[0])) == len(names[0])
    assert names[0][0] == f"{REL}.{published_id(UNIT, REL, 0)}.zst"


def test_memory_limit_rotates_early(tmp_path):
    root = tmp_path / "out"
    writer = LayoutWriter(root, root / ".work" / UNIT, UNIT, memory_limit=600_000)
    for i in range(40):
        for line in _lines(100, start=i * 100, pad=300):
            writer.write(f"a/b{i % 8}.20130101.v2.log", line)
    assert writer.pending  # rotated before finish
    published = _publish(writer)
    assert len(_read_all(root)) == 4000 and len(published) > 8


def test_blocked_directory_raises_and_buffers_nothing(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (root / "saved_session").write_text("in the way")
    writer = LayoutWriter(root, root / ".work" / UNIT, UNIT)
    with pytest.raises(UnwritablePartition, match="saved_session"):
        writer.write(REL, b"x\t{}\n")
    writer.write("other/f.20130101.v2.log", b"y\t{}\n")
    assert [d for _, d, _ in (_read_all(root) if _publish(writer) else [])] == ["y"]


def test_complete_pending_resumes_after_a_crash(tmp_path):
    root = tmp_path / "out"
    work = root / ".work" / UNIT
    writer = LayoutWriter(root, work, UNIT, max_file_size=3_000)
    for line in _lines(100):
        writer.write(REL, line)
    pending = writer.finish()
    assert complete_pending(work) is None  # not committed yet: nothing published
    assert _read_all(root) == []
    write_manifest(work, pending, {"note": 1})
    # a crash after moving the first file
    first = pending[0]
    Path(first.target).parent.mkdir(parents=True, exist_ok=True)
    os.replace(first.source, first.target)
    published = complete_pending(work)
    assert sorted(published) == sorted(p.target for p in pending)
    assert sorted(published) == sorted(complete_pending(work))  # idempotent
    assert sorted(d for _, d, _ in _read_all(root)) == sorted(f"doc{i}" for i in range(100))


@pytest.mark.parametrize("value", ["..", ".", "/", "../../etc", "a/../../b", "x\0y", "\0", "",
                                   "é/ü", "A" * 10_240, "." * 300, "\n"])
def test_crafted_dimension_values_stay_inside(tmp_path, value):
    root = (tmp_path / "out").resolve()
    for dims in ([value, "Firefox", "release", "1", value, "20130910"], [value, value]):
        rel = relative_path(dims)
        target = (root / rel).resolve()
        assert target.is_relative_to(root) and target != root
        assert len(rel.split("/")) == len(dims) - 1
        assert all(len(part.encode()) < 255 for part in rel.split("/"))
    cleaned = clean_value(value)
    assert "/" not in cleaned and "\0" not in cleaned and cleaned not in ("", ".", "..")


def test_long_values_stay_distinct():
    assert clean_value("A" * 10_240) != clean_value("A" * 10_239 + "B")


def test_fixture_published_files_read_back(fixtures_dir):
    found = find_layout_files(fixtures_dir / "converted")
    assert len(found) == 2
    by_version = {}
    for f in found:
        records = list(read_layout_file(f.path))
        for _, doc_id, text in records:
            doc = orjson.loads(text)
            assert doc["ver"] == 2 and doc_id
            info = doc["info"]
            assert [info["reason"].replace("-", "_"), info["appName"], info["appUpdateChannel"],
                    info["appVersion"], info["appBuildID"]] == f.dimensions[:5]
        by_version[f.dimensions[3]] = len(records)
    assert by_version == {"22.0a1": 1, "28.0a1": 4}
    assert found[0].dimensions == ["saved_session", "Firefox", "nightly", "22.0a1",
                                   "20130226031002", "20131011"]


doc_ids = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
                  min_size=1, max_size=40)
scalars = st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=20)
payloads = st.recursive(scalars, lambda c: st.lists(c, max_size=4)
                        | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(doc_ids, payloads), min_size=1, max_size=30),
       st.sampled_from(["zst", "lzma"]))
def test_layout_reader_reads_back_what_the_writer_wrote(records, codec):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        writer = LayoutWriter(root, root / ".work" / UNIT, UNIT, codec=codec, max_file_size=400)
        for doc_id, payload in records:
            writer.write(REL, doc_id.encode() + b"\t" + orjson.dumps(payload) + b"\n")
        _publish(writer)
        got = [(doc_id, orjson.loads(text)) for _, doc_id, text in _read_all(root)]
    assert sorted(got, key=repr) == sorted(records, key=repr)


def test_publishing_never_replaces_a_published_file(tmp_path):
    root = tmp_path / "out"
    first = LayoutWriter(root, root / ".work" / UNIT, UNIT)
    first.write(REL, b"a\t{}\n")
    [target] = _publish(first)
    before = Path(target).read_bytes()
    again = LayoutWriter(root, root / ".work" / "again", UNIT)  # the same unit converted again
    again.write(REL, b"b\t{}\n")
    assert _publish(again) == [target]
    assert Path(target).read_bytes() == before
    assert [d for _, d, _ in _read_all(root)] == ["a"]
