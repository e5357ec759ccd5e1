"""process_incoming end to end: real raw logs, a real local histogram server, real files."""

from __future__ import annotations

import gc
import gzip
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from converter.cli import process_command
from converter.errorlog import error_files, read_notes
from converter.errors import REASONS, ConfigError, ProcessError
from converter.layout import find_layout_files, read_layout_file
from converter.process import HEKA_NOTICE, ConverterConfig, process
from converter.revisions import serve_histograms, write_revision
from converter.variations import base_record, write_variations
from receiver.rawlog import encode_record, read_records

REPO = "releases/mozilla-release"
REV = "a55c55edf302"
MISSING = "0123456789ab"
TS = 1378822911255  # 2013-09-10 UTC


@pytest.fixture
def hist_dir(tmp_path, fixtures_dir):
    d = tmp_path / "served"
    definitions = fixtures_dir / "histograms" / f"{REV}.Histograms.json"
    write_revision(d, REPO, REV, definitions.read_bytes())
    write_revision(d, "test/broken", "bad0000bad00",
                   orjson.dumps({"BROKEN": {"kind": "linear", "high": "NO_SUCH::SYMBOL",
                                            "n_buckets": 10}}))
    return d


@pytest.fixture
def server(hist_dir):
    srv = serve_histograms(hist_dir)
    yield srv
    srv.stop()


@pytest.fixture
def config(tmp_path, fixtures_dir, server):
    return ConverterConfig(storage_path=str(tmp_path / "out"),
                           telemetry_schema=str(fixtures_dir / "telemetry_schema.json"),
                           histogram_cache=str(tmp_path / "cache"), histogram_server=server.url,
                           errors_path=str(tmp_path / "errors"), max_uncompressed=200_000)


@pytest.fixture(scope="module")
def fixture_raw(fixtures_dir):
    return fixtures_dir / "raw" / "telemetry1.v1.log"


def _records(root):
    return [(f.relpath.rsplit(".", 2)[0], doc_id, text)
            for f in find_layout_files(root, include_plain=False)
            for _, doc_id, text in read_layout_file(f.path)]


def test_fixture_ping(config, fixture_raw, server, tmp_path):
    summary = process(config, [fixture_raw])
    assert (summary.records_in, summary.records_out, summary.records_rejected) == (1, 1, 0)
    assert summary.unknown_histograms == {"HTTP_OFFLINE_CACHE_DOCUMENT_LOAD": 1,
                                          "MIXED_CONTENT_PAGE_LOAD": 1}
    [(rel, doc_id, text)] = _records(config.output)
    assert rel == "idle_daily/Firefox/release/23.0.1/20130814063812.20130910.v2.log"
    assert doc_id == "17caa68c-25f5-450a-9cce-7d31318846d8"
    assert len(orjson.loads(text)["histograms"]) == 326
    assert len(summary.published) == 1 and summary.published[0].endswith(".zst")
    # fetched once over HTTP, then found in the disk cache without a server
    assert sum("a55c55edf302" in r for r in server.requests) == 1
    assert (tmp_path / "cache" / REPO / REV / "Histograms.json").is_file()
    server.stop()
    again = ConverterConfig(**{**config.to_dict(), "storage_path": str(tmp_path / "out2"),
                               "histogram_server": None})
    assert process(again, [fixture_raw]).records_out == 1


def test_rerun_skips_done_files(config, fixture_raw, tmp_path):
    copy = tmp_path / "renamed-anything"
    shutil.copy(fixture_raw, copy)
    first = process(config, [fixture_raw])
    second = process(config, [fixture_raw, copy])  # same content under another name: same unit
    assert second.files_skipped == 2 and second.records_out == 0
    assert len(_records(config.output)) == 1 == first.records_out


def test_one_worker_leaves_the_callers_collector_as_it_was(config, fixture_raw):
    assert gc.get_freeze_count() == 0
    process(config, [fixture_raw])
    assert gc.get_freeze_count() == 0  # units are converted frozen, then thawed


def _ping(reason="idle-daily", rev=REV, repo=REPO, histograms=None):
    return {"ver": 1, "info": {"reason": reason, "appName": "Firefox", "appVersion": "23.0.1",
                               "appUpdateChannel": "release", "appBuildID": "20130814063812",
                               "revision": f"http://hg.mozilla.org/{repo}/rev/{rev}"},
            "histograms": histograms or {"A11Y_IATABLE_USAGE_FLAG": {"values": {"0": 1, "1": 0},
                                                                     "sum": 0}}}


def _path(doc_id, reason="idle-daily"):
    return f"{doc_id}/{reason}/Firefox/23.0.1/release/20130814063812"


def _gz(doc):
    return gzip.compress(orjson.dumps(doc) if not isinstance(doc, bytes) else doc)


CRAFTED = {
    "bad_payload": (_path("e-bad"), _gz(b"{not json")),
    "conversion_error": (_path("e-conv"), _gz(_ping(histograms={"GC_MS": [1, 2]}))),
    "corrupted_data": (_path("e-corrupt"), b"\x1f\x8b\x08\x00\x00garbage"),
    "empty_data": (_path("e-empty"), b""),
    "invalid_path": ("e-path/idle-daily/Firefox", _gz(_ping())),
    "missing_revision": (_path("e-norev"), _gz(_ping(rev=MISSING))),
    "missing_revision_repo": (_path("e-norepo"), _gz(dict(_ping(), info=dict(_ping()["info"],
                                                                             revision="bogus")))),
    "uuid_only_path": ("e-uuid", _gz(_ping())),
    "too_large": (_path("e-large"), _gz(b'{"x": "' + b" " * 250_000 + b'"}')),
    "unknown_histogram": (_path("e-unkhist"),
                          _gz(_ping(rev="bad0000bad00", repo="test/broken",
                                    histograms={"BROKEN": {"values": {"0": 1}}}))),
    "invalid_bucket": (_path("e-bucket"), _gz(_ping(histograms={"GC_MS": {"values": {"-5": 1}}}))),
    "write_failed": (_path("e-write", "saved-session"), _gz(_ping("saved-session"))),
}


def test_every_reason_lands_in_the_error_output_and_retry_converts_them(config, tmp_path, hist_dir):
    assert set(CRAFTED) == set(REASONS)
    raw = tmp_path / "crafted.log"
    with open(raw, "wb") as f:
        f.write(encode_record(_path("good"), _gz(_ping()), TS, "10.0.0.1"))
        for i, (path, data) in enumerate(CRAFTED.values()):
            f.write(encode_record(path, data, TS + i, f"10.0.0.{i + 2}"))
    out = Path(config.output)
    out.mkdir()
    (out / "saved_session").write_text("a file where a directory must go")

    summary = process(config, [raw])
    assert summary.rejected == {reason: 1 for reason in REASONS}
    assert summary.records_out == 1
    # only the unwritable directory is the infrastructure's fault; a revision the server
    # answers 404 for is the record's
    [(cause, n)] = summary.infrastructure.items()
    assert n == 1 and cause.startswith("layout directories cannot be created")
    errors = Path(config.errors)
    for i, (reason, (path, data)) in enumerate(CRAFTED.items()):
        [err_file] = [p for p in error_files(errors) if p.parent.name == reason]
        [rec] = list(read_records(err_file))
        assert (rec.path, rec.data, rec.timestamp) == (path, data, TS + i)
        assert rec.ip == f"10.0.0.{i + 2}"
        [note] = read_notes(err_file)
        assert note["reason"] == reason and note["message"] and note["source"] == str(raw)
        assert note["path"] == path

    # fix two causes: publish the missing revision, remove what blocked the directory
    served = hist_dir / REPO / REV / "Histograms.json"
    write_revision(hist_dir, REPO, MISSING, served.read_bytes())
    (out / "saved_session").unlink()
    retry_config = ConverterConfig(**{**config.to_dict(), "errors_path": str(tmp_path / "errors2")})
    retried = process(retry_config, [], retry_errors=errors)
    assert retried.records_in == len(REASONS)
    assert retried.records_out == 2
    fixed = ("missing_revision", "write_failed")
    assert retried.rejected == {r: 1 for r in REASONS if r not in fixed}
    ids = Counter(doc_id for _, doc_id, _ in _records(out))
    assert ids == Counter({"good": 1, "e-norev": 1, "e-write": 1})
    assert error_files(errors) == []  # every retried file renamed *.retried
    assert len(list(errors.rglob("*.retried"))) == len(REASONS)
    # retrying again finds nothing to do
    with pytest.raises(ProcessError):
        process(retry_config, [], retry_errors=errors)


def test_dedup_keeps_saved_session_over_idle_daily(config, tmp_path):
    body = _gz(_ping())
    saved = _gz(_ping("saved-session"))
    raws = [tmp_path / "a.log", tmp_path / "b.log"]
    with open(raws[0], "wb") as f:
        for doc_id in "ABBC":
            f.write(encode_record(_path(doc_id), body, TS))
    with open(raws[1], "wb") as f:
        for path, data in [(_path("A", "saved-session"), saved), (_path("C"), body)]:
            f.write(encode_record(path, data, TS))
    config.dedup = True
    summary = process(config, raws)
    assert summary.duplicates == 3 and summary.records_out == 3
    found = {doc_id: rel.split("/")[0] for rel, doc_id, _ in _records(config.output)}
    assert found == {"A": "saved_session", "B": "idle_daily", "C": "idle_daily"}


@pytest.fixture(scope="module")
def variation_files(tmp_path_factory, fixture_raw):
    d = tmp_path_factory.mktemp("raw")
    base = base_record(fixture_raw)
    return [write_variations(d / f"telemetry.v1.host.{i}.finished", base, 30, seed=i)
            for i in range(6)]


def test_two_workers_publish_what_one_does(config, variation_files, tmp_path):
    one = process(config, [variation_files[0].parent])  # a directory: its .finished files
    two_cfg = ConverterConfig(**{**config.to_dict(), "storage_path": str(tmp_path / "out2"),
                                 "workers": 2})
    two = process(two_cfg, variation_files)
    assert one.records_out == two.records_out == 180
    def names(summary, root):
        return sorted(str(Path(p).relative_to(root)) for p in summary.published)

    assert names(one, config.output) == names(two, two_cfg.output)
    assert sorted(_records(config.output)) == sorted(_records(two_cfg.output))
    assert len({rel for rel, _, _ in _records(config.output)}) > 10


def test_crash_and_rerun_publishes_no_duplicates(config, variation_files, tmp_path, fixtures_dir):
    telemetry = Path(sys.executable).parent / "telemetry"
    args = [str(telemetry), "process", *map(str, variation_files),
            "--output", str(tmp_path / "crash"), "--schema", config.telemetry_schema,
            "--histogram-cache", config.histogram_cache,
            "--histogram-server", config.histogram_server,
            "--max-file-size", "20000", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = tmp_path / "crash" / ".state" / "done"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (done.is_dir() and any(done.glob("*.json"))):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert len(list(done.glob("*.json"))) < len(variation_files)  # killed mid-way
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    clean = process(config, variation_files)
    crashed_ids = Counter(doc_id for _, doc_id, _ in _records(tmp_path / "crash"))
    clean_ids = Counter(doc_id for _, doc_id, _ in _records(config.output))
    assert crashed_ids == clean_ids and sum(clean_ids.values()) == clean.records_out == 180
    assert not any((tmp_path / "crash" / ".work").iterdir())


def test_config_accepts_the_original_keys():
    config = ConverterConfig.from_dict({
        "histogram_server": "localhost:9898", "telemetry_schema": "schema.json",
        "storage_path": "/tmp/out", "upload_path": "/tmp/upload", "max_uncompressed": 1048576,
        "memory_constraint": 1000, "compression_preset": 0, "heka_server": "localhost:5565"})
    assert config.notices == [HEKA_NOTICE]
    assert config.output == Path("/tmp/upload")


def test_default_schema_is_the_packaged_original(tmp_path, fixtures_dir):
    config = ConverterConfig.from_dict({"storage_path": str(tmp_path)})
    packaged = orjson.loads(Path(config.telemetry_schema).read_bytes())
    assert packaged == orjson.loads((fixtures_dir / "telemetry_schema.json").read_bytes())


@pytest.mark.parametrize("data, words", [
    ({"storage_path": "o", "telemetry_schema": "s", "bogus_key": 1}, "bogus_key"),
    ({"storage_path": "o", "telemetry_schema": "s", "workers": 0}, "workers"),
    ({"storage_path": "o", "telemetry_schema": "s", "codec": "bz2"}, "codec"),
    ({"storage_path": "o", "telemetry_schema": "s", "memory_constraint": "lots"},
     "memory_constraint"),
    ({"telemetry_schema": "s"}, "output"),
    ([1], "object"),
    # Found by bench/fuzz.py: a wrong type reached a set lookup or Path() and raised TypeError.
    ({"storage_path": "o", "codec": ["zst"]}, "codec must be a string"),
    ({"storage_path": ["o"]}, "storage_path must be a string"),
    ({"storage_path": "o", "histogram_server": {"url": 1}}, "histogram_server"),
    ({"storage_path": "o", "dedup": "yes"}, "dedup"),
    ({"storage_path": "o", "failure_ttl": None}, "failure_ttl"),
])
def test_bad_config(data, words):
    with pytest.raises(ConfigError, match=words):
        ConverterConfig.from_dict(data)


@pytest.mark.parametrize("extra, code, message", [
    (["--schema", "missing.json"], 2, "schema file missing.json does not exist"),
    (["--config", "CONFIG"], 2, "unknown configuration key 'nope'"),
    (["--workers", "0"], 2, "workers must be a positive integer"),
    (["--retry-errors", "no-such-dir"], 1, "error directory no-such-dir does not exist"),
])
def test_cli_bad_inputs(tmp_path, fixtures_dir, fixture_raw, extra, code, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "CONFIG").write_bytes(orjson.dumps({"nope": 1}))
    args = [str(fixture_raw), "--output", str(tmp_path / "o"),
            "--schema", str(fixtures_dir / "telemetry_schema.json"), *extra]
    result = CliRunner().invoke(process_command, args)
    assert result.exit_code == code
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_missing_input_and_summary(tmp_path, fixtures_dir, config, fixture_raw):
    base = ["--output", str(tmp_path / "o"),
            "--schema", str(fixtures_dir / "telemetry_schema.json"),
            "--histogram-server", config.histogram_server,
            "--histogram-cache", config.histogram_cache]
    missing = CliRunner().invoke(process_command, [str(tmp_path / "nope.log"), *base])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    assert CliRunner().invoke(process_command, base).exit_code == 2
    ok = CliRunner().invoke(process_command, [str(fixture_raw), *base, "--codec", "lzma"])
    assert ok.exit_code == 0, ok.output
    assert "records: 1 read, 1 written, 0 rejected" in ok.output
    assert "MIXED_CONTENT_PAGE_LOAD: 1" in ok.output
    assert [f.path.suffix for f in find_layout_files(tmp_path / "o")] == [".lzma"]


def test_docs_cover_every_key_option_and_reason():
    docs = (Path(__file__).parent.parent / "docs" / "converter.md").read_text()
    for key in ConverterConfig().to_dict():
        assert f"`{key}`" in docs, key
    for param in process_command.params:
        for opt in param.opts:
            if opt.startswith("--"):
                assert opt in docs, opt
    for reason in REASONS:
        assert f"| `{reason}` |" in docs, reason


def test_histogram_server_command(hist_dir):
    import requests
    telemetry = Path(sys.executable).parent / "telemetry"
    command = [str(telemetry), "histogram-server", "--dir", str(hist_dir), "--port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:"), line
        suffix = "toolkit/components/telemetry/Histograms.json"
        got = requests.get(f"{url}/{REPO}/raw-file/{REV}/{suffix}", timeout=10)
        assert got.status_code == 200 and b"A11Y_IATABLE_USAGE_FLAG" in got.content
        missing = requests.get(f"{url}/{REPO}/raw-file/{MISSING}/{suffix}", timeout=10)
        assert missing.status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_same_content_twice_in_one_run_is_converted_once(config, fixture_raw, tmp_path):
    copies = [tmp_path / f"copy{i}" for i in range(3)]
    for c in copies:
        shutil.copy(fixture_raw, c)
    config.workers = 2
    summary = process(config, copies)
    assert summary.files == 3 and summary.files_skipped == 2 and summary.records_out == 1
    assert len(_records(config.output)) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_bar_reaches_the_end(config, variation_files, capsys, workers):
    config.workers = workers
    process(config, variation_files[:2], progress=True)
    err = capsys.readouterr().err
    assert "converting" in err and "100%" in err


def test_no_progress_bar_off_a_terminal(config, fixture_raw, capsys):
    process(config, [fixture_raw])
    assert "converting" not in capsys.readouterr().err


def test_output_that_cannot_be_written_is_one_clear_error(tmp_path, fixtures_dir, fixture_raw):
    (tmp_path / "file").write_text("not a directory")
    args = [str(fixture_raw), "--output", str(tmp_path / "file" / "out"),
            "--schema", str(fixtures_dir / "telemetry_schema.json")]
    result = CliRunner().invoke(process_command, args)
    assert result.exit_code == 1
    assert "cannot write into" in result.output and "Traceback" not in result.output


def test_a_crash_after_the_commit_point_is_completed_by_the_rerun(config, variation_files,
                                                                  monkeypatch):
    import converter.process as process_module
    real = process_module.complete_pending

    def crash_once_committed(work):
        if (work / "manifest.json").exists():
            raise KeyboardInterrupt("killed right after the commit point")
        return real(work)

    monkeypatch.setattr(process_module, "complete_pending", crash_once_committed)
    with pytest.raises(KeyboardInterrupt):
        process(config, variation_files[:1])
    assert _records(config.output) == []  # committed, nothing published yet
    monkeypatch.setattr(process_module, "complete_pending", real)
    summary = process(config, variation_files[:1])
    assert summary.files_completed == 1 and summary.records_out == 30
    assert sorted(d for _, d, _ in _records(config.output)) == \
        sorted(r.path.split("/")[0] for r in read_records(variation_files[0]))


def test_retry_of_a_file_whose_every_record_was_rejected_converts_it(config, tmp_path, hist_dir):
    # The error file of a wholly rejected v2 raw file is byte-identical to its source; it
    # must not be taken for the source's unit ("already done") and renamed unread.
    raw = tmp_path / "all-missing.log"
    with open(raw, "wb") as f:
        for i in range(3):
            f.write(encode_record(_path(f"norev-{i}"), _gz(_ping(rev=MISSING)), TS + i, ""))
    first = process(config, [raw])
    assert first.rejected == {"missing_revision": 3}
    errors = Path(config.errors)
    [err_file] = error_files(errors)
    assert err_file.read_bytes() == raw.read_bytes()

    # a retry while the cause is still there keeps the records for the next retry
    again = process(config, [], retry_errors=errors)
    assert (again.files_skipped, again.records_in) == (0, 3)
    assert again.rejected == {"missing_revision": 3}
    assert len(error_files(errors)) == 1

    served = hist_dir / REPO / REV / "Histograms.json"
    write_revision(hist_dir, REPO, MISSING, served.read_bytes())
    fixed = process(config, [], retry_errors=errors)
    assert (fixed.files_skipped, fixed.records_in, fixed.records_out) == (0, 3, 3)
    assert sorted(doc_id for _, doc_id, _ in _records(config.output)) == [
        "norev-0", "norev-1", "norev-2"]
    assert error_files(errors) == []


def test_unreachable_histogram_server_is_an_error_with_its_cause(tmp_path, fixtures_dir,
                                                                 fixture_raw, hist_dir):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    out = tmp_path / "L"
    args = [str(fixture_raw), "--output", str(out), "--histogram-server", dead,
            "--schema", str(fixtures_dir / "telemetry_schema.json")]
    result = CliRunner().invoke(process_command, args)
    assert result.exit_code == 1, result.output
    assert f"1 records rejected because the histogram server http://{dead} unreachable: " \
           "Connection refused" in result.stderr
    assert "--retry-errors" in result.stderr
    [err_file] = error_files(out / ".errors")  # the record waits for the retry
    assert err_file.parent.name == "missing_revision"

    # a revision the server does not have is the record's problem: no infrastructure error
    with serve_histograms(hist_dir) as good:
        retried = CliRunner().invoke(process_command, [
            "--retry-errors", str(out / ".errors"), "--output", str(out),
            "--histogram-server", good.url,
            "--schema", str(fixtures_dir / "telemetry_schema.json")])
    assert retried.exit_code == 0, retried.output
    assert "1 read, 1 written" in retried.output


@pytest.mark.parametrize("extra, message", [
    (["--level", "99"], "--level) for zst must be -131072..22, not 99"),
    (["--level", "10", "--codec", "lzma"], "--level) for lzma must be 0..9, not 10"),
])
def test_bad_compression_level_is_one_line(tmp_path, fixture_raw, extra, message):
    result = CliRunner().invoke(process_command, [str(fixture_raw), "--output",
                                                  str(tmp_path / "L"), *extra])
    assert result.exit_code == 2 and message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_histogram_server_on_a_busy_port_says_so(hist_dir):
    from converter.cli import histogram_server_command

    with serve_histograms(hist_dir) as busy:
        port = busy.url.rsplit(":", 1)[1].strip("/")
        result = CliRunner().invoke(histogram_server_command,
                                    ["--dir", str(hist_dir), "--port", port])
    assert result.exit_code == 1
    assert f"Error: cannot listen on 127.0.0.1:{port}: Address already in use" in result.output
