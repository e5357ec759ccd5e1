"""S3 export against moto in server mode: real HTTP, real multipart uploads, real ETags."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from click.testing import CliRunner

from converter.export import (MiB, ExportConfig, ExportError, export, export_layout, fingerprint,
                              object_key)
from converter.layout import find_layout_files, published_name
from converter.synthetic import make_records, write_layout

BUCKET = "telemetry-published"


@pytest.fixture
def s3(s3_endpoint):
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def layout(tmp_path) -> Path:
    """Published zstd files, plus things that must never be uploaded."""
    base = tmp_path / "layout"
    write_layout(base, make_records(30, seed=3, payload_kb=1), records_per_file=4)
    write_layout(base, make_records(3, seed=4, payload_kb=1), codec="log")  # still being written
    hidden = base / ".work" / published_name("saved_session/Firefox/x.20131101.v2.log", "zst")
    hidden.parent.mkdir(parents=True)
    hidden.write_bytes(b"work in progress")
    return base


def config(base: Path, endpoint: str, **kw) -> ExportConfig:
    kw.setdefault("backoff", 0.01)
    return ExportConfig(layout_dir=base, bucket=BUCKET, endpoint_url=endpoint, **kw)


def bucket_objects(s3, prefix: str = "") -> dict[str, bytes]:
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", [])]
    return {k: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def published(base: Path) -> dict[str, bytes]:
    return {f.relpath: f.path.read_bytes() for f in find_layout_files(base, include_plain=False)}


@pytest.mark.parametrize("prefix", ["", "exports/v2/"])
def test_keys_mirror_the_layout_and_a_rerun_uploads_nothing(s3, s3_endpoint, layout, prefix):
    files = published(layout)
    assert len(files) > 5
    summary = export_layout(config(layout, s3_endpoint, prefix=prefix))
    assert (summary.uploaded, summary.skipped, summary.failed) == (len(files), 0, 0)
    expected = {object_key(prefix, rel): data for rel, data in files.items()}
    assert bucket_objects(s3) == expected
    if prefix:
        assert all(k.startswith("exports/v2/saved_session/") or k.startswith("exports/v2/idle_daily/")
                   for k in expected)
    assert not any(".work" in k or k.endswith(".log") for k in expected)

    again = export_layout(config(layout, s3_endpoint, prefix=prefix))
    assert (again.uploaded, again.skipped, again.bytes_uploaded) == (0, len(files), 0)
    assert published(layout) == files  # "keep" leaves the local files alone


def test_a_changed_object_is_uploaded_again(s3, s3_endpoint, layout):
    export_layout(config(layout, s3_endpoint))
    rel = next(iter(published(layout)))
    s3.put_object(Bucket=BUCKET, Key=rel, Body=b"not the file")
    summary = export_layout(config(layout, s3_endpoint))
    assert (summary.uploaded, summary.skipped) == (1, len(published(layout)) - 1)
    assert bucket_objects(s3)[rel] == (layout / rel).read_bytes()


@pytest.fixture
def big_file(tmp_path) -> Path:
    """One published file large enough for two 5 MiB parts."""
    base = tmp_path / "big"
    path = base / published_name("saved_session/Firefox/release/23.0.1/20130814063812.20131101.v2.log", "zst")
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(6 * MiB + 123))
    return base


def test_multipart_upload_is_verified_and_recognised_with_another_part_size(s3, s3_endpoint, big_file):
    summary = export_layout(config(big_file, s3_endpoint, multipart_threshold=MiB,
                                   multipart_chunksize=5 * MiB))
    assert (summary.uploaded, summary.failed) == (1, 0)
    (rel, data), = published(big_file).items()
    head = s3.head_object(Bucket=BUCKET, Key=rel)
    assert head["ETag"].strip('"').endswith("-2")  # really went up in parts
    assert head["ETag"].strip('"') == fingerprint(big_file / rel, MiB, 5 * MiB).etag
    assert bucket_objects(s3)[rel] == data
    # Same settings: same ETag.  Another part size: the ETag is recomputed with the recorded one.
    assert head["Metadata"]["part-size"] == str(5 * MiB)
    for chunk in (5 * MiB, 8 * MiB):
        again = export_layout(config(big_file, s3_endpoint, multipart_threshold=MiB,
                                     multipart_chunksize=chunk))
        assert (again.uploaded, again.skipped) == (0, 1)


def test_an_object_of_the_same_size_with_other_bytes_is_replaced(s3, s3_endpoint, big_file):
    """Same size, multipart, our metadata (even the SHA-256), but one byte differs: not skipped."""
    (rel, data), = published(big_file).items()
    fp = fingerprint(big_file / rel, MiB, 5 * MiB)
    wrong = data[:10] + bytes([data[10] ^ 1]) + data[11:]
    s3.upload_fileobj(io.BytesIO(wrong), BUCKET, rel, ExtraArgs={"Metadata": {
        "sha256": fp.sha256, "part-size": str(5 * MiB)}},
        Config=TransferConfig(multipart_threshold=MiB, multipart_chunksize=5 * MiB))
    summary = export_layout(config(big_file, s3_endpoint, multipart_threshold=MiB,
                                   multipart_chunksize=8 * MiB))
    assert (summary.uploaded, summary.skipped) == (1, 0)
    assert bucket_objects(s3)[rel] == data


class CorruptingOpener:
    """Opens the real file, but hands out wrong bytes for the first ``bad`` opens of each file."""

    def __init__(self, how: str, bad: int = 1, only: str | None = None):
        self.how, self.bad, self.only = how, bad, only
        self.opens: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, path: Path):
        with self.lock:
            n = self.opens[path.name] = self.opens.get(path.name, 0) + 1
        data = path.read_bytes()
        if n <= self.bad and (self.only is None or self.only == path.name):
            if self.how == "truncate":
                data = data[:-7]
            else:  # same size, one byte different
                data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
        return io.BytesIO(data)


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("multipart", [False, True])
def test_corrupted_upload_is_detected_and_retried(s3, s3_endpoint, layout, big_file, how, multipart):
    base = big_file if multipart else layout
    opener = CorruptingOpener(how)
    summary = export_layout(config(base, s3_endpoint, multipart_threshold=MiB, multipart_chunksize=5 * MiB),
                            opener=opener)
    files = published(base)
    assert (summary.uploaded, summary.failed) == (len(files), 0)
    assert summary.retries == len(files)  # every file's first upload was caught
    assert all(n == 2 for n in opener.opens.values())
    assert bucket_objects(s3) == files


def test_after_upload_delete_removes_only_verified_files(s3, s3_endpoint, layout):
    files = published(layout)
    victim = sorted(files)[2]
    opener = CorruptingOpener("truncate", bad=99, only=Path(victim).name)
    summary = export_layout(config(layout, s3_endpoint, after_upload="delete", attempts=3), opener=opener)
    assert (summary.uploaded, summary.failed) == (len(files) - 1, 1)
    assert victim in summary.errors[0] and "3 attempt" in summary.errors[0]
    assert list(published(layout)) == [victim]  # only the unverified file is still here
    in_bucket = bucket_objects(s3)
    assert victim not in in_bucket  # the wrong object was removed again
    assert in_bucket == {rel: data for rel, data in files.items() if rel != victim}
    assert (layout / ".work").is_dir() and any(layout.rglob("*.v2.log"))  # not ours to delete


def test_after_upload_rename_keeps_uploaded_copies(s3, s3_endpoint, layout):
    files = published(layout)
    summary = export_layout(config(layout, s3_endpoint, after_upload="rename"))
    assert summary.uploaded == len(files)
    assert published(layout) == {}
    for rel, data in files.items():
        assert (layout / (rel + ".uploaded")).read_bytes() == data
    assert export_layout(config(layout, s3_endpoint, after_upload="rename")).found == 0


def test_loop_picks_up_new_files_until_stopped(s3, s3_endpoint, tmp_path):
    base = tmp_path / "layout"
    base.mkdir()
    stop = threading.Event()
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        s=export_layout(config(base, s3_endpoint, loop=0.05, after_upload="delete"), stop)))
    worker.start()
    want = {}
    try:
        # The second files appear only once the first are uploaded, so they need a later pass.
        for seed in (9, 10):
            written = write_layout(base, make_records(6, seed=seed, payload_kb=1),
                                   records_per_file=2)
            want.update({p.relative_to(base).as_posix(): p.read_bytes() for p in written})
            deadline = time.monotonic() + 30
            while bucket_objects(s3).keys() != want.keys() and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        stop.set()
        worker.join(30)
    assert not worker.is_alive()
    assert bucket_objects(s3) == want
    assert result["s"].uploaded == len(want) and result["s"].passes >= 2
    assert published(base) == {}


def test_cli_loop_exits_zero_on_sigterm(s3, s3_endpoint, layout):
    files = published(layout)
    proc = subprocess.Popen([sys.executable, "-m", "converter.export", str(layout), "--bucket", BUCKET,
                             "--endpoint-url", s3_endpoint, "--loop", "0.1", "--prefix", "p"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(bucket_objects(s3)) < len(files) and time.monotonic() < deadline:
            time.sleep(0.1)
        uploaded_while_looping = len(bucket_objects(s3))
        time.sleep(0.3)  # into the next pass or pause
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert uploaded_while_looping == len(files)
    assert proc.returncode == 0, err
    assert set(bucket_objects(s3)) == {f"p/{rel}" for rel in files}
    assert f"{len(files)} uploaded" in err
    assert "testing" not in out + err  # the credentials are never printed


def test_missing_bucket_is_an_error(s3, s3_endpoint, layout):
    with pytest.raises(ExportError, match="not accessible"):
        export_layout(ExportConfig(layout_dir=layout, bucket="no-such-bucket", endpoint_url=s3_endpoint))
    result = CliRunner().invoke(export, [str(layout), "--bucket", "no-such-bucket",
                                         "--endpoint-url", s3_endpoint])
    assert result.exit_code == 1
    assert "no-such-bucket" in result.output and "Traceback" not in result.output


def test_missing_credentials_are_a_clear_error(s3_endpoint, layout, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask a metadata service
    result = CliRunner().invoke(export, [str(layout), "--bucket", BUCKET, "--endpoint-url", s3_endpoint])
    assert result.exit_code == 1
    assert "no AWS credentials found" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("kw, message", [
    ({"after_upload": "shred"}, "after_upload"),
    ({"workers": 0}, "at least 1"),
    ({"bucket": ""}, "bucket"),
    ({"loop": -1}, "loop"),
])
def test_bad_config_is_rejected(tmp_path, kw, message):
    kw = {"layout_dir": tmp_path, "bucket": BUCKET, **kw}
    with pytest.raises(ExportError, match=message):
        ExportConfig(**kw)


@pytest.mark.parametrize("args", [["--after-upload", "shred"], ["--workers", "0"], []])
def test_cli_usage_errors(tmp_path, args):
    argv = [str(tmp_path)] + (["--bucket", BUCKET] if args else []) + args
    result = CliRunner().invoke(export, argv)
    assert result.exit_code == 2


def test_the_original_lzma_files_are_exported(s3, s3_endpoint, fixtures_dir, tmp_path):
    base = tmp_path / "converted"
    shutil.copytree(fixtures_dir / "converted", base)
    summary = export_layout(config(base, s3_endpoint))
    assert summary.uploaded == 2
    assert bucket_objects(s3) == published(base)
    assert all(k.endswith(".lzma") for k in bucket_objects(s3))


def test_docs_cover_every_option():
    text = (Path(__file__).parent.parent / "docs" / "export.md").read_text()
    for param in export.params:
        for opt in param.opts + param.secondary_opts:
            if opt.startswith("--"):
                assert opt in text, f"{opt} is not documented"


class ThrottlingFront:
    """A reverse proxy in front of moto that answers 503 SlowDown to the first PUT of every key."""

    def __init__(self, upstream: str):
        import asyncio
        import socket

        self.upstream = upstream
        self.throttled: list[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        self._ready.wait(10)

    async def _main(self):
        import asyncio

        from tornado.httpclient import AsyncHTTPClient
        from tornado.httpserver import HTTPServer
        from tornado.web import Application, RequestHandler

        front = self

        class Handler(RequestHandler):
            SUPPORTED_METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE")

            async def _any(self):
                key = self.request.path
                if self.request.method == "PUT" and key not in front.throttled:
                    front.throttled.append(key)
                    self.set_status(503)
                    self.set_header("Content-Type", "application/xml")
                    self.finish("<Error><Code>SlowDown</Code><Message>Please reduce your request rate."
                                "</Message></Error>")
                    return
                response = await AsyncHTTPClient().fetch(
                    front.upstream + self.request.uri, method=self.request.method,
                    headers=self.request.headers, raise_error=False, decompress_response=False,
                    body=self.request.body if self.request.method in ("PUT", "POST") else None,
                    allow_nonstandard_methods=True)
                self.set_status(response.code)
                for name, value in response.headers.get_all():
                    if name.lower() not in ("transfer-encoding", "connection") and (
                            name.lower() != "content-length" or self.request.method == "HEAD"):
                        self.add_header(name, value)
                self.finish(response.body if self.request.method != "HEAD" else None)

            get = head = put = post = delete = _any

            def check_xsrf_cookie(self):
                pass

        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        server = HTTPServer(Application([(r".*", Handler)]), max_body_size=64 * MiB)
        server.add_socket(self.sock)
        self._ready.set()
        await self._done.wait()
        server.stop()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._done.set)
        self._thread.join(10)
        self.sock.close()


@pytest.mark.parametrize("request_attempts", [1, 5])
def test_throttling_is_retried(s3, s3_endpoint, layout, request_attempts):
    """503 SlowDown on every first PUT: botocore retries it, or with one request attempt our own loop does."""
    front = ThrottlingFront(s3_endpoint)
    try:
        summary = export_layout(config(layout, front.url, request_attempts=request_attempts, workers=8))
    finally:
        front.stop()
    files = published(layout)
    assert (summary.uploaded, summary.failed) == (len(files), 0)
    assert len(front.throttled) == len(files)  # every file was throttled once
    assert summary.retries == (len(files) if request_attempts == 1 else 0)
    assert bucket_objects(s3) == files


@pytest.mark.parametrize("args, message", [
    (["--bucket", "b", "--endpoint-url", "notaurl"], "endpoint URL must be http://HOST"),
    (["--bucket", "Bad_Bucket!"], "bucket name 'Bad_Bucket!' is not valid"),
])
def test_bad_endpoint_or_bucket_name_is_one_line(tmp_path, args, message):
    result = CliRunner().invoke(export, [str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output
    assert [line for line in result.output.splitlines() if line.startswith("Error")] == [
        result.output.strip().splitlines()[-1]]  # one line, not boto's regular expressions
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_mapreduce_checks_the_bucket_and_endpoint_too(tmp_path, fixtures_dir):
    from mapreduce.errors import ConfigError
    from mapreduce.job import JobConfig, run_job

    examples = Path(__file__).resolve().parent.parent / "mapreduce" / "examples"
    config = JobConfig(job_script=examples / "os_distribution.py", data_dir=fixtures_dir,
                       work_dir=tmp_path / "w", output=tmp_path / "o", bucket="b",
                       endpoint_url="notaurl", input_filter=examples / "filter_all.json")
    with pytest.raises(ConfigError, match="endpoint URL must be"):
        run_job(config)
