"""Replay: raw-log submissions sent again, optionally sampled, to a second server.

Mozilla replayed production submissions to prototype and staging servers
with Bagheera's KafkaReplayConsumer, which sent bare POSTs, never looked at
the response, never retried and could not resume.  This replay reads our raw
logs (and the original server's) without ever changing them and does all
four:

* every response is checked: 2xx is delivered; 4xx is rejected, logged and
  not retried (except 408 and 429, which say "later"); 5xx and connection
  errors are retried with exponential backoff up to ``attempts``, then the
  record counts as failed;
* the sample is a pure function of the docId and the seed, so a submission
  is always in or always out and reruns pick the same records;
* ``state`` records, per source file, the offset below which every record is
  finished (delivered, rejected, failed or left out), written atomically
  after each batch; a replay stopped by SIGTERM/SIGINT finishes the requests
  in flight and also records which records past that offset were finished,
  so a restart sends each record exactly once.  After a hard kill (SIGKILL,
  power loss) at most the records since the last save are sent again.

A record with an empty body stands for a DELETE of its path (Bagheera's
delete messages carried no payload; a telemetry POST always has a body).
DELETEs are replayed only with ``delete`` and ``copy_keys``: a new random key
would delete nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping
from urllib.parse import quote, urlsplit
from urllib.request import proxy_bypass_environment

import click
import orjson
import urllib3
from tqdm import tqdm

from receiver.errors import ReceiverError
from receiver.rawlog import GZIP_MAGIC, RawLogReader, Record, finished_files

log = logging.getLogger(__name__)

DELIVERED, REJECTED, FAILED, INTERRUPTED = "delivered", "rejected", "failed", "interrupted"
SAMPLED_OUT, DELETE_SKIPPED = "sampled_out", "delete_skipped"
RETRY_4XX = (408, 429)
# Characters left as they are when a stored path goes into the URL: the
# path was taken from a URL, so existing %-escapes must survive.
_URL_SAFE = "/%:@!$&'()*+,;=-._~"
MAX_LOGGED = 20
STATE_VERSION = 1


class ReplayError(ReceiverError):
    """A replay that cannot start or continue: bad sources, destination or state file."""


@dataclass
class ReplayConfig:
    """One replay: what to read, where to send it, and how politely.

    ``sources`` are raw-log files (read whatever their name) or directories
    (their ``.finished`` files).  ``dest`` may hold ``%k``, replaced by the
    record's path.  ``rate`` is requests per second over all connections
    (None: unlimited).  ``batch`` is the number of finished records between
    two saves of ``state``; ``poll`` the pause between scans with ``follow``.
    """

    sources: list[Path]
    dest: str
    sample: float = 1.0
    copy_keys: bool = True
    delete: bool = False
    proxy: str | None = None
    concurrency: int = 16
    rate: float | None = None
    follow: bool = False
    state: Path | None = None
    seed: int = 0
    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    timeout: float = 30.0
    batch: int = 200
    poll: float = 1.0
    progress: bool = False

    def __post_init__(self) -> None:
        self.sources = [Path(s) for s in self.sources]
        if not self.sources:
            raise ReplayError("no raw logs given")
        if urlsplit(self.dest).scheme not in ("http", "https") or not urlsplit(self.dest).netloc:
            raise ReplayError(f"destination must be an http:// or https:// URL, not {self.dest!r}")
        if self.proxy and urlsplit(self.proxy).scheme not in ("http", "https"):
            raise ReplayError(f"proxy must be an http:// or https:// URL, not {self.proxy!r}")
        if not 0 < self.sample <= 1:
            raise ReplayError(f"sample must be in (0, 1], not {self.sample}")
        if self.concurrency < 1 or self.attempts < 1 or self.batch < 1:
            raise ReplayError("concurrency, attempts and batch must be at least 1")
        if self.rate is not None and self.rate <= 0:
            raise ReplayError("rate must be a positive number of requests per second")
        if self.state is not None:
            self.state = Path(self.state)


@dataclass
class ReplaySummary:
    """What a replay did; ``messages`` holds the first rejections, failures and read problems."""

    read: int = 0
    sampled_out: int = 0
    deletes_skipped: int = 0
    delivered: int = 0
    rejected: int = 0
    failed: int = 0
    retries: int = 0
    resumed: int = 0
    files: int = 0
    skipped_bytes: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        if len(self.messages) < MAX_LOGGED:
            self.messages.append(message)

    def describe(self) -> str:
        rate = (self.delivered + self.rejected + self.failed) / self.seconds if self.seconds > 0 else 0.0
        text = (f"replay: {self.files} files, read {self.read}, sampled out {self.sampled_out}, "
                f"delivered {self.delivered}, rejected {self.rejected}, failed {self.failed}")
        extra = [f"{self.deletes_skipped} deletes skipped" if self.deletes_skipped else "",
                 f"{self.retries} retries" if self.retries else "",
                 f"{self.resumed} already done before" if self.resumed else "",
                 f"{self.skipped_bytes} corrupt bytes skipped" if self.skipped_bytes else "",
                 "stopped early" if self.interrupted else ""]
        extra = [e for e in extra if e]
        return text + (f" ({', '.join(extra)})" if extra else "") + f" in {self.seconds:.1f}s, {rate:.0f} req/s"


def doc_id(path: str) -> str:
    """The docId is the first component of the stored path."""
    return path.split("/", 1)[0].split("?", 1)[0]


def sampled(path: str, rate: float, seed: int) -> bool:
    """True when the record is in the sample: a hash of docId and seed falls under ``rate``."""
    if rate >= 1:
        return True
    digest = hashlib.blake2b(f"{seed}\0{doc_id(path)}".encode("utf-8", "surrogatepass"),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64 < rate


def new_key(path: str) -> str:
    """The same path under a new random docId: the dimensions after it are kept."""
    _, slash, rest = path.partition("/")
    return str(uuid.uuid4()) + slash + rest


def target_url(dest: str, key: str) -> str:
    """``dest`` with ``%k`` replaced by the key, escaped only where a URL needs it."""
    return dest.replace("%k", quote(key, safe=_URL_SAFE))


def proxy_from_environment(dest: str, environ: Mapping[str, str]) -> str | None:
    """The proxy the standard variables name for ``dest`` (``http_proxy``, ``HTTPS_PROXY``, ``no_proxy``)."""
    proxies = {}
    for name, value in environ.items():
        low = name.lower()
        if low.endswith("_proxy") and value:
            # lower-case wins, as curl and requests do
            if low == name or low[:-6] not in proxies:
                proxies[low[:-6]] = value
    parts = urlsplit(dest)
    proxy = proxies.get(parts.scheme)
    if proxy and proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxy


# -- the state file -----------------------------------------------------------------------------

class ReplayState:
    """Per source file: the offset below which everything is finished, and finished records past it."""

    def __init__(self, path: Path | None):
        self.path = path
        self.files: dict[str, dict] = {}
        if path is not None and path.exists():
            try:
                doc = orjson.loads(path.read_bytes())
                self.files = {k: {"offset": int(v["offset"]), "done": [int(o) for o in v.get("done", [])]}
                              for k, v in doc["files"].items()}
            except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
                raise ReplayError(f"state file {path} is not a replay state: {e}") from None

    def offset(self, source: Path) -> int:
        return self.files.get(str(source), {}).get("offset", 0)

    def done(self, source: Path) -> set[int]:
        return set(self.files.get(str(source), {}).get("done", []))

    def set(self, source: Path, offset: int, done: set[int] | None = None) -> None:
        self.files[str(source)] = {"offset": offset, "done": sorted(done or ())}

    def save(self) -> None:
        """Write atomically: a crash leaves the old state or the new one, never half of one."""
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        data = orjson.dumps({"version": STATE_VERSION, "files": self.files}, option=orjson.OPT_INDENT_2)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            raise ReplayError(f"cannot write state file {self.path}: {e}") from None


# -- sending ------------------------------------------------------------------------------------

class RateLimiter:
    """Spaces requests ``1/rate`` seconds apart over all threads."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self, stop: threading.Event) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next)
            self.next = slot + self.interval
        if slot > now:
            stop.wait(slot - now)


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str
    retries: int = 0
    message: str = ""


class Sender:
    """Sends one record with retries; thread-safe (one connection pool shared by the workers)."""

    def __init__(self, config: ReplayConfig, stop: threading.Event):
        self.config = config
        self.stop = stop
        self.limiter = RateLimiter(config.rate)
        timeout = urllib3.Timeout(total=config.timeout)
        common = dict(num_pools=4, maxsize=config.concurrency, block=True, retries=False, timeout=timeout)
        if config.proxy:
            self.http = urllib3.ProxyManager(config.proxy, **common)
        else:
            self.http = urllib3.PoolManager(**common)

    def request_for(self, record: Record) -> tuple[str, str, bytes, dict[str, str]]:
        key = record.path if self.config.copy_keys else new_key(record.path)
        headers = {"User-Agent": "telemetry-replay"}
        if not record.data:
            return "DELETE", target_url(self.config.dest, key), b"", headers
        headers["Content-Type"] = "application/json; charset=UTF-8"  # as Firefox sent it
        if record.data.startswith(GZIP_MAGIC):
            headers["Content-Encoding"] = "gzip"
        return "POST", target_url(self.config.dest, key), record.data, headers

    def send(self, record: Record) -> Outcome:
        method, url, body, headers = self.request_for(record)
        config = self.config
        for attempt in range(1, config.attempts + 1):
            self.limiter.wait(self.stop)
            try:
                response = self.http.request(method, url, body=body, headers=headers, redirect=False)
                status, problem = response.status, f"HTTP {response.status}"
            except (urllib3.exceptions.HTTPError, OSError) as e:
                status, problem = 0, f"{type(e).__name__}: {e}"
            if 200 <= status < 300:
                return Outcome(DELIVERED, attempt - 1)
            if 300 <= status < 500 and status not in RETRY_4XX:
                return Outcome(REJECTED, attempt - 1, f"{method} {url}: {problem}")
            if attempt == config.attempts:
                return Outcome(FAILED, attempt - 1, f"{method} {url}: {problem} after {attempt} attempts")
            if self.stop.wait(min(config.max_backoff, config.backoff * 2 ** (attempt - 1))):
                return Outcome(INTERRUPTED, attempt - 1)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.http.clear()


# -- the replay ---------------------------------------------------------------------------------

def source_files(sources: list[Path]) -> list[Path]:
    """The raw logs to read: files as given, directories' ``.finished`` files, each once."""
    found: list[Path] = []
    for src in sources:
        if src.is_dir():
            found.extend(finished_files(src))
        elif src.is_file():
            found.append(src)
        else:
            raise ReplayError(f"{src}: no such file or directory")
    seen: set[Path] = set()
    unique = []
    for f in found:
        f = f.resolve()
        if f not in seen:
            seen.add(f)
            unique.append(f)
    return unique


def replay_logs(config: ReplayConfig, stop: threading.Event | None = None) -> ReplaySummary:
    """Send every record of ``config.sources`` to ``config.dest``; with ``follow``, keep watching.

    Setting ``stop`` ends the replay cleanly: no new request starts, those in
    flight finish, and the state file says exactly what was finished.
    """
    stop = stop or threading.Event()
    state = ReplayState(config.state)
    summary = ReplaySummary()
    started = time.monotonic()
    sender = Sender(config, stop)
    bar = tqdm(unit="rec", desc="replay", disable=not config.progress, leave=False)
    try:
        with ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="replay") as pool:
            while not stop.is_set():
                for source in source_files(config.sources):
                    if stop.is_set():
                        break
                    if source.stat().st_size <= state.offset(source):
                        continue
                    _replay_file(source, config, state, sender, pool, stop, summary, bar)
                if not config.follow:
                    break
                stop.wait(config.poll)
    finally:
        bar.close()
        sender.close()
        summary.seconds = time.monotonic() - started
    summary.interrupted = stop.is_set()
    return summary


def _replay_file(source: Path, config: ReplayConfig, state: ReplayState, sender: Sender,
                 pool: ThreadPoolExecutor, stop: threading.Event, summary: ReplaySummary, bar) -> None:
    """Send one file's records through a window of in-flight requests, saving progress as it goes.

    Records finish out of order; the saved offset only moves past a record
    once it and everything before it are finished.
    """
    summary.files += 1
    reader = RawLogReader(source, start_offset=state.offset(source))
    already = state.done(source)
    window: deque[tuple[int, int, Future | Outcome]] = deque()  # (offset, end, future or outcome)
    watermark = state.offset(source)
    since_save = 0
    limit = config.concurrency * 4
    last_bar = 0.0

    def settle(block: bool) -> None:
        nonlocal watermark, since_save, last_bar
        while window and (block or len(window) > limit or _finished(window[0][2])):
            offset, end, item = window[0]
            outcome = item.result() if isinstance(item, Future) else item
            if outcome.status == INTERRUPTED:
                return  # this record and everything after it stay unfinished
            window.popleft()
            _count(outcome, summary)
            watermark = end
            since_save += 1
            if since_save >= config.batch:
                state.set(source, watermark)
                state.save()
                since_save = 0
        if config.progress and (block or time.monotonic() - last_bar > 0.25):
            last_bar = time.monotonic()
            bar.n = summary.read
            bar.set_postfix(delivered=summary.delivered, rejected=summary.rejected, failed=summary.failed,
                            sampled_out=summary.sampled_out, refresh=True)

    complete = True
    for record in reader:
        if stop.is_set():
            complete = False
            break
        if record.offset in already:
            summary.resumed += 1
            window.append((record.offset, record.end, Outcome("resumed")))
        else:
            summary.read += 1
            window.append((record.offset, record.end, _dispatch(record, config, sender, pool)))
        settle(block=False)
    settle(block=True)
    summary.skipped_bytes += reader.stats.skipped_bytes
    for message in reader.stats.errors:
        log.warning("%s", message)
        summary.note(message)

    if window or not complete:
        # Stopped: keep the contiguous offset and the finished records past it.
        done = {o for o in already if o >= watermark}
        for offset, _, item in window:
            outcome = item.result() if isinstance(item, Future) else item
            if outcome.status != INTERRUPTED:
                _count(outcome, summary)
                done.add(offset)
        state.set(source, watermark, done)
    else:
        state.set(source, max(watermark, source.stat().st_size))
    state.save()


def _dispatch(record: Record, config: ReplayConfig, sender: Sender, pool: ThreadPoolExecutor
              ) -> Future | Outcome:
    if not sampled(record.path, config.sample, config.seed):
        return Outcome(SAMPLED_OUT)
    if not record.data and not (config.delete and config.copy_keys):
        return Outcome(DELETE_SKIPPED)
    return pool.submit(sender.send, record)


def _finished(item: Future | Outcome) -> bool:
    return not isinstance(item, Future) or item.done()


def _count(outcome: Outcome, summary: ReplaySummary) -> None:
    summary.retries += outcome.retries
    if outcome.status == DELIVERED:
        summary.delivered += 1
    elif outcome.status == SAMPLED_OUT:
        summary.sampled_out += 1
    elif outcome.status == DELETE_SKIPPED:
        summary.deletes_skipped += 1
    elif outcome.status == REJECTED:
        summary.rejected += 1
        log.warning("rejected: %s", outcome.message)
        summary.note(f"rejected: {outcome.message}")
    elif outcome.status == FAILED:
        summary.failed += 1
        log.error("failed: %s", outcome.message)
        summary.note(f"failed: {outcome.message}")


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT stop reading; requests in flight finish and the state is saved."""
    def handler(signum, frame):
        log.warning("signal %d: finishing the requests in flight, then exiting", signum)
        stop.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


@click.command("replay")
@click.argument("raw", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--dest", required=True, metavar="URL",
              help="Where to send; %k is replaced by the record's path, e.g. http://host/submit/telemetry/%k")
@click.option("--sample", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Fraction of docIds to send (chosen by a hash of docId and --seed).")
@click.option("--copy-keys/--no-copy-keys", default=True, show_default=True,
              help="Keep each docId, or send under a new random one (dimensions kept).")
@click.option("--delete/--no-delete", default=False, show_default=True,
              help="Replay DELETE records (empty bodies) too.")
@click.option("--proxy", default=None, metavar="URL",
              help="HTTP proxy for every request (default: $http_proxy / $https_proxy, minus $no_proxy).")
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True,
              help="Requests in flight at once.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None, metavar="PER_SECOND",
              help="At most this many requests per second.")
@click.option("--follow", is_flag=True, help="Keep watching directories for new .finished files.")
@click.option("--state", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Progress file: a restarted replay resumes where this one stopped.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample hash.")
@click.option("--attempts", type=click.IntRange(min=1), default=5, show_default=True,
              help="Tries per record on 5xx and connection errors.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds to wait for one response.")
def replay(raw: tuple[Path, ...], dest: str, sample: float, copy_keys: bool, delete: bool,
                   proxy: str | None, concurrency: int, rate: float | None, follow: bool,
                   state: Path | None, seed: int, attempts: int, timeout: float) -> None:
    """Send the submissions in raw logs RAW... (files, or directories of .finished files) to --dest.

    The raw logs are only read, never changed.  Exit status 1 when a record
    failed after all its attempts; rejected records (4xx) are reported.
    """
    if proxy is None:
        proxy = proxy_from_environment(dest, os.environ)
    try:
        config = ReplayConfig(sources=list(raw), dest=dest, sample=sample, copy_keys=copy_keys,
                              delete=delete, proxy=proxy, concurrency=concurrency, rate=rate,
                              follow=follow, state=state, seed=seed, attempts=attempts, timeout=timeout,
                              progress=sys.stderr.isatty())
    except ReplayError as e:
        raise click.UsageError(str(e)) from None
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        summary = replay_logs(config, stop)
    except ReplayError as e:
        raise click.ClickException(str(e)) from None
    click.echo(summary.describe(), err=True)
    if summary.failed:
        raise click.ClickException(f"{summary.failed} record(s) could not be delivered")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    replay()
