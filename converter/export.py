"""S3 export: published layout files mirrored to a bucket, each verified before it is touched.

Published files (SPEC section 3) are immutable, so an object that already has
the same size and checksum never needs sending again: a rerun costs one HEAD
request per file.  Plain ``.log`` files are still being written and hidden
directories hold work in progress; :func:`converter.layout.find_layout_files`
with ``include_plain=False`` leaves both out.

Each upload is checked against the local file before anything happens to it:
S3 computes the ETag from the bytes it received (the MD5 of the object for a
single PUT, the MD5 of the part MD5s plus ``-N`` for a multipart upload), and
we compute the same value from the file on disk with the same part size.  A
wrong size or ETag means the object is not the file, and the upload is
repeated with backoff.  Only a verified file is deleted or renamed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable
from urllib.parse import urlsplit

import boto3
import click
from boto3.s3.transfer import S3UploadFailedError, TransferConfig
from botocore.client import BaseClient
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from s3transfer.utils import ChunksizeAdjuster
from tqdm import tqdm

from converter.layout import LayoutError, LayoutFile, find_layout_files

log = logging.getLogger(__name__)

MiB = 1024 * 1024
AFTER_UPLOAD = ("keep", "delete", "rename")
UPLOADED_SUFFIX = ".uploaded"
SHA256_METADATA = "sha256"
PART_SIZE_METADATA = "part-size"
# S3 error codes that say "try again later" rather than "this will never work".
_RETRYABLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                    "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable",
                    "RequestLimitExceeded", "BadDigest", "IncompleteBody", "InvalidPart"}

Opener = Callable[[Path], IO[bytes]]


class ExportError(Exception):
    """Base class for export failures reported to the user."""


# What boto3 accepts as a bucket name (S3 itself wants 3-63 lowercase letters,
# digits, '.' and '-'; S3-compatible stores may allow more).
_BUCKET_NAME = re.compile(r"^[a-zA-Z0-9.\-_]{1,255}$")


def s3_location_problem(bucket: str | None, endpoint_url: str | None) -> str | None:
    """Why a bucket name or endpoint URL cannot be used, in one line, or None.

    Checked before boto3 sees them: its own messages are a traceback (a bad
    endpoint) or several lines of regular expressions (a bad bucket name).
    """
    if bucket is not None and not _BUCKET_NAME.match(bucket):
        return (f"bucket name {bucket!r} is not valid: use letters, digits, '.', '-' "
                f"(S3 wants 3-63 lowercase ones)")
    if endpoint_url is not None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return f"endpoint URL must be http://HOST[:PORT] or https://..., not {endpoint_url!r}"
    return None


class UploadMismatch(ExportError):
    """The object in S3 does not have the local file's size or checksum."""


@dataclass
class ExportConfig:
    """Where to read, where to write, and how hard to try.

    ``loop`` is the pause in seconds between scans of ``layout_dir``; None
    means a single pass.  ``attempts`` counts the uploads of one file, each
    checked; botocore also retries each request on throttling and network
    errors (``request_attempts``) before an attempt counts as failed.
    """

    layout_dir: Path
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    after_upload: str = "keep"
    loop: float | None = None
    workers: int = 4
    multipart_threshold: int = 64 * MiB
    multipart_chunksize: int = 16 * MiB
    attempts: int = 5
    request_attempts: int = 5
    backoff: float = 1.0
    max_backoff: float = 30.0
    progress: bool = False

    def __post_init__(self) -> None:
        self.layout_dir = Path(self.layout_dir)
        if not self.bucket:
            raise ExportError("a bucket name is required")
        problem = s3_location_problem(self.bucket, self.endpoint_url)
        if problem:
            raise ExportError(problem)
        if self.after_upload not in AFTER_UPLOAD:
            raise ExportError(f"after_upload must be one of {', '.join(AFTER_UPLOAD)}, "
                              f"not {self.after_upload!r}")
        if self.workers < 1 or self.attempts < 1 or self.request_attempts < 1:
            raise ExportError("workers, attempts and request_attempts must be at least 1")
        if self.loop is not None and self.loop < 0:
            raise ExportError("loop must be a number of seconds >= 0")
        if self.multipart_threshold < 1 or self.multipart_chunksize < 1:
            raise ExportError("multipart sizes must be positive")
        if self.endpoint_url and "@" in urlsplit(self.endpoint_url).netloc:
            # botocore would print the URL, password included, in every connection error.
            raise ExportError("the endpoint URL must not hold credentials (user:password@); "
                              "boto3 takes them from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                              "AWS_PROFILE or ~/.aws")


@dataclass
class ExportSummary:
    """What an export did; ``errors`` holds one line per file that failed."""

    found: int = 0
    uploaded: int = 0
    skipped: int = 0
    failed: int = 0
    retries: int = 0
    bytes_uploaded: int = 0
    passes: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def describe(self) -> str:
        rate = self.bytes_uploaded / MiB / self.seconds if self.seconds > 0 else 0.0
        return (f"export: {self.found} published files seen in {self.passes} pass(es): "
                f"{self.uploaded} uploaded ({self.bytes_uploaded / MiB:.1f} MiB, "
                f"{rate:.1f} MiB/s), "
                f"{self.skipped} already present, {self.failed} failed, {self.retries} retries, "
                f"{self.seconds:.1f}s")


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What S3 will report for an object holding exactly this file.

    ``part_size`` is 0 for a single PUT.
    """

    size: int
    etag: str
    sha256: str
    part_size: int


def object_key(prefix: str, relpath: str) -> str:
    """``prefix/relpath``: the key mirrors the layout path under an optional prefix."""
    prefix = prefix.strip("/")
    return f"{prefix}/{relpath}" if prefix else relpath


def fingerprint(path: Path, multipart_threshold: int, multipart_chunksize: int) -> Fingerprint:
    """The size, the ETag S3 computes for an upload made with these settings, and a SHA-256.

    The part size is the one s3transfer really uses (it raises a too small
    chunk size to the S3 minimum of 5 MiB and doubles it past 10,000 parts).
    """
    size = path.stat().st_size
    chunk = ChunksizeAdjuster().adjust_chunksize(multipart_chunksize, size)
    whole, sha = hashlib.md5(), hashlib.sha256()
    part_digests = []
    with open(path, "rb") as f:
        while True:
            part = f.read(chunk)
            if not part:
                break
            whole.update(part)
            sha.update(part)
            part_digests.append(hashlib.md5(part).digest())
    if size < multipart_threshold:
        return Fingerprint(size, whole.hexdigest(), sha.hexdigest(), 0)
    etag = f"{hashlib.md5(b''.join(part_digests)).hexdigest()}-{len(part_digests)}"
    return Fingerprint(size, etag, sha.hexdigest(), chunk)


def verified(head: dict | None, fp: Fingerprint) -> bool:
    """True when S3 computed the file's ETag from the bytes it holds, and the size agrees."""
    return (head is not None and head.get("ContentLength") == fp.size
            and head.get("ETag", "").strip('"') == fp.etag)


def already_present(head: dict | None, path: Path, fp: Fingerprint) -> bool:
    """True when an existing object holds the file's bytes.

    A multipart ETag depends on the part size, so for an object that went up
    with other settings the ETag is computed again from the file with the
    part size recorded in the object's metadata: what is compared is still
    what S3 computed from the bytes it holds, never a claim we stored.
    """
    if verified(head, fp):
        return True
    if head is None or head.get("ContentLength") != fp.size:
        return False
    etag = head.get("ETag", "").strip('"')
    part_size = head.get("Metadata", {}).get(PART_SIZE_METADATA, "")
    if "-" not in etag or not part_size.isdigit() or int(part_size) == fp.part_size:
        return False
    return fingerprint(path, 0, int(part_size)).etag == etag


def make_client(config: ExportConfig) -> BaseClient:
    """An S3 client from boto3's usual credential chain, retrying throttling and network errors."""
    retries = {"total_max_attempts": config.request_attempts, "mode": "standard"}
    boto_config = BotoConfig(retries=retries, max_pool_connections=max(10, config.workers * 4))
    # A session of its own: boto3's default session would keep the credentials
    # it found first for the life of the process.
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=config.endpoint_url, config=boto_config)


def export_layout(config: ExportConfig, stop: threading.Event | None = None,
                  opener: Opener | None = None) -> ExportSummary:
    """Upload every published file under ``config.layout_dir``; with ``loop``, keep watching.

    ``stop`` ends a loop (and a pass: files not started are left for the next
    run) while the files in flight finish.  ``opener`` opens a local file for
    upload; it exists so that tests can make an upload arrive wrong.
    """
    stop = stop or threading.Event()
    opener = opener or (lambda p: open(p, "rb"))
    client = make_client(config)
    _check_bucket(client, config.bucket)
    summary = ExportSummary()
    started = time.monotonic()
    done: set[tuple[str, int, int]] = set()  # files kept in place and already verified
    lock = threading.Lock()
    while not stop.is_set():
        try:
            files = find_layout_files(config.layout_dir, include_plain=False)
        except LayoutError as e:
            raise ExportError(str(e)) from None
        todo = [f for f in files if _identity(f) not in done]
        summary.passes += 1
        summary.found += len(todo)
        if todo:
            _export_pass(client, config, todo, stop, opener, summary, lock, done)
        if config.loop is None:
            break
        _pause(config.loop, stop)
    if stop.is_set():
        log.warning("stopped: the files in flight were finished")
    summary.seconds = time.monotonic() - started
    return summary


def _identity(f: LayoutFile) -> tuple[str, int, int]:
    try:
        mtime = f.path.stat().st_mtime_ns
    except OSError:
        mtime = 0
    return (f.relpath, f.size, mtime)


def _check_bucket(client, bucket: str) -> None:
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        raise ExportError(f"bucket {bucket!r} is not accessible ({code or e})") from None
    except NoCredentialsError:
        raise ExportError("no AWS credentials found (environment, shared credentials file, "
                          "or instance role)") from None
    except BotoCoreError as e:
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExportError(f"cannot reach S3: {first_line}") from None


def _export_pass(client, config: ExportConfig, files: list[LayoutFile], stop: threading.Event,
                 opener: Opener, summary: ExportSummary, lock: threading.Lock,
                 done: set[tuple[str, int, int]]) -> None:
    transfer = TransferConfig(multipart_threshold=config.multipart_threshold,
                              multipart_chunksize=config.multipart_chunksize,
                              max_concurrency=4, use_threads=True)
    bar = tqdm(total=sum(f.size for f in files), unit="B", unit_scale=True, desc="export",
               disable=not config.progress, leave=False)

    def one(f: LayoutFile) -> None:
        if stop.is_set():
            return
        ident = _identity(f)
        try:
            outcome, retries = _export_file(client, config, transfer, f, opener, bar.update)
        except ExportError as e:
            log.error("%s", e)
            with lock:
                summary.failed += 1
                summary.errors.append(str(e))
            return
        with lock:
            summary.retries += retries
            if outcome == "skipped":
                summary.skipped += 1
                bar.update(f.size)
            else:
                summary.uploaded += 1
                summary.bytes_uploaded += f.size
            if config.after_upload == "keep":
                done.add(ident)

    try:
        with ThreadPoolExecutor(max_workers=config.workers) as pool:
            list(pool.map(one, files))
    finally:
        bar.close()


def _export_file(client, config: ExportConfig, transfer: TransferConfig, f: LayoutFile,
                 opener: Opener, progress: Callable[[int], object]) -> tuple[str, int]:
    """Upload one file until S3 holds it verified, then apply ``after_upload``."""
    key = object_key(config.prefix, f.relpath)
    try:
        fp = fingerprint(f.path, config.multipart_threshold, config.multipart_chunksize)
    except FileNotFoundError:
        raise ExportError(f"{f.relpath}: disappeared before it could be uploaded") from None
    except OSError as e:
        raise ExportError(f"{f.relpath}: cannot read: {e}") from None
    try:
        present = already_present(_head(client, config.bucket, key), f.path, fp)
    except (BotoCoreError, ClientError) as e:
        raise ExportError(f"{f.relpath}: cannot look at s3://{config.bucket}/{key}: "
                          f"{_describe(e)}") from None
    if present:
        _after_upload(config, f.path)
        return "skipped", 0
    metadata = {SHA256_METADATA: fp.sha256}
    if fp.part_size:
        metadata[PART_SIZE_METADATA] = str(fp.part_size)
    retries = 0
    mismatched = False
    for attempt in range(1, config.attempts + 1):
        try:
            with opener(f.path) as body:
                client.upload_fileobj(body, config.bucket, key, Config=transfer, Callback=progress,
                                      ExtraArgs={"Metadata": metadata})
            head = _head(client, config.bucket, key)
            if not verified(head, fp):
                got = "nothing" if head is None else \
                    f"{head.get('ContentLength')} bytes, ETag {head.get('ETag', '').strip(chr(34))}"
                raise UploadMismatch(f"s3://{config.bucket}/{key}: holds {got}, "
                                     f"local file has {fp.size} bytes, ETag {fp.etag}")
            _after_upload(config, f.path)
            return "uploaded", retries
        except (UploadMismatch, BotoCoreError, ClientError, S3UploadFailedError, OSError) as e:
            mismatched = mismatched or isinstance(e, UploadMismatch)
            if isinstance(e, FileNotFoundError):
                raise ExportError(f"{f.relpath}: disappeared during upload") from None
            if not _retryable(e) or attempt == config.attempts:
                if mismatched:
                    _delete_quietly(client, config.bucket, key)
                raise ExportError(f"{f.relpath}: upload failed after {attempt} attempt(s): "
                                  f"{_describe(e)}") from None
            delay = min(config.max_backoff, config.backoff * 2 ** (attempt - 1))
            log.warning("%s: attempt %d failed (%s); retrying in %.1fs", f.relpath, attempt,
                        _describe(e), delay)
            retries += 1
            time.sleep(delay)
    raise AssertionError("unreachable")


def _head(client, bucket: str, key: str) -> dict | None:
    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _delete_quietly(client, bucket: str, key: str) -> None:
    """Remove an object that failed verification: a wrong copy is worse than none."""
    try:
        client.delete_object(Bucket=bucket, Key=key)
    except (BotoCoreError, ClientError) as e:
        log.error("s3://%s/%s failed verification and could not be deleted: %s", bucket, key, e)


def _retryable(e: BaseException) -> bool:
    if isinstance(e, (UploadMismatch, BotoCoreError, OSError)):
        return True
    client_error = e if isinstance(e, ClientError) else e.__cause__ or e.__context__
    if isinstance(client_error, ClientError):
        err = client_error.response.get("Error", {})
        status = client_error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return err.get("Code") in _RETRYABLE_CODES or status >= 500
    return isinstance(e, S3UploadFailedError)


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _after_upload(config: ExportConfig, path: Path) -> None:
    """Delete or rename a verified file; ``keep`` leaves it for the next pass to skip."""
    try:
        if config.after_upload == "delete":
            path.unlink()
        elif config.after_upload == "rename":
            path.rename(path.with_name(path.name + UPLOADED_SUFFIX))
    except FileNotFoundError:
        pass
    except OSError as e:
        raise ExportError(f"{path}: uploaded and verified, "
                          f"but cannot {config.after_upload} it: {e}") from None


def _pause(seconds: float, stop: threading.Event) -> None:
    """Sleep until ``seconds`` pass or ``stop`` is set.

    Polls instead of ``stop.wait()``: a signal handler that sets the event
    while this thread is inside ``Event.wait`` would deadlock on the event's
    own lock.
    """
    end = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < end:
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT end the loop after the files in flight.

    The handler only sets the event: the main thread never blocks on the
    event's lock, and logging from a handler can hit a half-written stream.
    """
    def handler(signum, frame):
        stop.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


@click.command("export")
@click.argument("layout_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--bucket", required=True, help="Destination bucket (must exist).")
@click.option("--prefix", default="", help="Key prefix; keys are PREFIX/<path in the layout>.")
@click.option("--endpoint-url", default=None, help="S3-compatible endpoint (default: AWS).")
@click.option("--after-upload", type=click.Choice(AFTER_UPLOAD), default="keep", show_default=True,
              help="What to do with a local file once its upload is verified.")
@click.option("--loop", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Rescan the directory every SECONDS until SIGTERM.")
@click.option("--workers", type=click.IntRange(min=1), default=4, show_default=True,
              help="Files uploaded at the same time.")
@click.option("--multipart-threshold", type=click.IntRange(min=1), default=64, show_default=True,
              help="Files of at least this many MiB go up in parts.")
@click.option("--part-size", type=click.IntRange(min=5), default=16, show_default=True,
              help="Part size in MiB for multipart uploads.")
@click.option("--attempts", type=click.IntRange(min=1), default=5, show_default=True,
              help="Uploads of one file before it counts as failed.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: when stderr is a terminal].")
def export(layout_dir: Path, bucket: str, prefix: str, endpoint_url: str | None, after_upload: str,
           loop: float | None, workers: int, multipart_threshold: int, part_size: int,
           attempts: int, progress: bool | None) -> None:
    """Upload published layout files to s3://BUCKET/PREFIX/, verified, skipping those already there.

    Credentials come from boto3's usual chain (environment, config files,
    instance role); they are never printed.
    """
    try:
        config = ExportConfig(layout_dir=layout_dir, bucket=bucket, prefix=prefix,
                              endpoint_url=endpoint_url, after_upload=after_upload, loop=loop,
                              workers=workers, multipart_threshold=multipart_threshold * MiB,
                              multipart_chunksize=part_size * MiB, attempts=attempts,
                              progress=sys.stderr.isatty() if progress is None else progress)
    except ExportError as e:
        raise click.UsageError(str(e)) from None
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        summary = export_layout(config, stop)
    except ExportError as e:
        raise click.ClickException(str(e)) from None
    click.echo(summary.describe(), err=True)
    if summary.failed:
        raise click.ClickException(f"{summary.failed} file(s) were not uploaded; "
                                   "see the messages above")


commands = [export]

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    export()
