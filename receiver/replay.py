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

import asyncio
import base64
import hashlib
import logging
import os
import re
import signal
import ssl
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import quote, unquote, urlsplit
from urllib.request import proxy_bypass_environment

import click
import orjson
from tqdm import tqdm

from receiver.errors import ReceiverError
from receiver.rawlog import GZIP_MAGIC, RawLogReader, Record, finished_files

log = logging.getLogger(__name__)

DELIVERED, REJECTED, FAILED, INTERRUPTED = "delivered", "rejected", "failed", "interrupted"
SAMPLED_OUT, DELETE_SKIPPED, RESUMED = "sampled_out", "delete_skipped", "resumed"
RETRY_4XX = (408, 429)
# Characters left as they are when a stored path goes into the URL: the
# path was taken from a URL, so existing %-escapes must survive.
_URL_SAFE = "/%:@!$&'()*+,;=-._~"
MAX_LOGGED = 20
# In a --dest template: a % that starts neither %k nor a %XX escape.
_PLACEHOLDER = re.compile(r"%(?!k|[0-9A-Fa-f]{2}).?")
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
    ca_file: Path | None = None
    batch: int = 200
    poll: float = 1.0
    progress: bool = False
    give_up_after: int | None = None  # records failing in a row unanswered; None: max(4, concurrency)

    def __post_init__(self) -> None:
        self.sources = [Path(s) for s in self.sources]
        if not self.sources:
            raise ReplayError("no raw logs given")
        if urlsplit(self.dest).scheme not in ("http", "https") or not urlsplit(self.dest).netloc:
            raise ReplayError(f"destination must be an http:// or https:// URL, not {self.dest!r}")
        if not self.dest.isascii() or any(c in self.dest for c in " \r\n\t"):
            raise ReplayError(f"destination must be an escaped URL (ASCII, no spaces): {self.dest!r}")
        bad = _PLACEHOLDER.search(self.dest)
        if bad:
            raise ReplayError(f"destination {self.dest!r}: {bad.group(0)!r} is neither the %k "
                              f"placeholder (the record's path) nor a %XX escape")
        if self.give_up_after is None:
            self.give_up_after = max(4, self.concurrency)
        if self.give_up_after < 1:
            raise ReplayError("give_up_after must be at least 1")
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
        if self.ca_file is not None:
            self.ca_file = Path(self.ca_file)

    def ssl_context(self) -> ssl.SSLContext:
        """Certificate checks as usual; ``ca_file`` adds a private CA (a staging server's)."""
        context = ssl.create_default_context()
        try:
            if self.ca_file is not None:
                context.load_verify_locations(cafile=self.ca_file)
            return context
        except (OSError, ssl.SSLError) as e:
            raise ReplayError(f"cannot use CA file {self.ca_file}: {e}") from None


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
    gave_up: str | None = None  # why the replay stopped by itself (the destination is down)
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        if len(self.messages) < MAX_LOGGED:
            self.messages.append(message)

    def describe(self) -> str:
        sent = self.delivered + self.rejected + self.failed
        rate = sent / self.seconds if self.seconds > 0 else 0.0
        text = (f"replay: {self.files} files, read {self.read}, sampled out {self.sampled_out}, "
                f"delivered {self.delivered}, rejected {self.rejected}, failed {self.failed}")
        extra = [f"{self.deletes_skipped} deletes skipped" if self.deletes_skipped else "",
                 f"{self.retries} retries" if self.retries else "",
                 f"{self.resumed} already done before" if self.resumed else "",
                 f"{self.skipped_bytes} corrupt bytes skipped" if self.skipped_bytes else "",
                 f"gave up: {self.gave_up}" if self.gave_up else
                 ("stopped early" if self.interrupted else "")]
        extra = [e for e in extra if e]
        text += f" ({', '.join(extra)})" if extra else ""
        return text + f" in {self.seconds:.1f}s, {rate:.0f} req/s"


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
    """The proxy the standard variables name for ``dest``.

    ``http_proxy`` or ``https_proxy`` by the destination's scheme (either
    case; lower-case wins), unless ``no_proxy`` names the host.
    """
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
    """Per source file: the offset below which all is finished, and finished records past it."""

    def __init__(self, path: Path | None):
        self.path = path
        self.files: dict[str, dict] = {}
        if path is not None and path.exists():
            try:
                doc = orjson.loads(path.read_bytes())
                self.files = {k: {"offset": int(v["offset"]),
                                  "done": [int(o) for o in v.get("done", [])]}
                              for k, v in doc["files"].items()}
            except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError,
                    AttributeError) as e:
                raise ReplayError(f"state file {path} is not a replay state: {e}") from None

    def offset(self, source: Path) -> int:
        return self.files.get(str(source), {}).get("offset", 0)

    def done(self, source: Path) -> set[int]:
        return set(self.files.get(str(source), {}).get("done", []))

    def set(self, source: Path, offset: int, done: set[int] | None = None) -> None:
        self.files[str(source)] = {"offset": offset, "done": sorted(done or ())}

    def check_writable(self) -> None:
        """Fail now, before anything is sent, if the state could not be saved.

        Otherwise the replay would deliver a batch, fail at its first save,
        and a rerun would send it all again.  The file itself appears at the
        first save, as before.
        """
        if self.path is None:
            return
        if self.path.is_dir():
            raise ReplayError(f"cannot write state file {self.path}: it is a directory")
        probe = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(probe, "wb") as f:
                f.write(b"{}")
            probe.unlink()
        except OSError as e:
            raise ReplayError(f"cannot write state file {self.path}: {e}") from None

    def save(self) -> None:
        """Write atomically: a crash leaves the old state or the new one, never half of one."""
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        data = orjson.dumps({"version": STATE_VERSION, "files": self.files},
                            option=orjson.OPT_INDENT_2)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            raise ReplayError(f"cannot write state file {self.path}: {e}") from None


# -- sending ------------------------------------------------------------------------------------

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class HttpProblem(Exception):
    """A request that got no usable response: refused, reset, timed out, or not HTTP."""


class HttpClient:
    """A small HTTP/1.1 client on asyncio streams: keep-alive connections, at most ``limit`` open.

    Why not requests or urllib3 in a thread pool: on the 2-core machine 32
    threads spent about 450 us of CPU per request (most of it handing the GIL
    around) against about 60 us here, and the receiver being replayed into
    needs that CPU.  It sends through an HTTP proxy (absolute-form requests
    for http://, a CONNECT tunnel for https://) and reads Content-Length,
    chunked and read-to-close bodies.
    """

    def __init__(self, limit: int, timeout: float, proxy: str | None = None,
                 ssl_context: ssl.SSLContext | None = None):
        self.limit = asyncio.Semaphore(limit)
        self.timeout = timeout
        self.proxy = urlsplit(proxy) if proxy else None
        self.ssl_context = ssl_context
        self.idle: dict[tuple[str, str, int], list[Connection]] = {}

    async def request(self, method: str, url: str, body: bytes, headers: dict[str, str]) -> int:
        """Send one request and return the response status; raise HttpProblem when there is none."""
        parts = urlsplit(url)
        default_port = 443 if parts.scheme == "https" else 80
        endpoint = (parts.scheme, parts.hostname or "", parts.port or default_port)
        host_header = parts.netloc.rpartition("@")[2]
        through_proxy = self.proxy is not None and parts.scheme == "http"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if through_proxy:
            target = url
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}",
                 f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if through_proxy and self.proxy.username:
            lines.append(f"Proxy-Authorization: {_basic_auth(self.proxy)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        async with self.limit:
            conn = self._idle_connection(endpoint)
            try:
                if conn is None:
                    conn = await asyncio.wait_for(self._connect(endpoint), self.timeout)
                reader, writer = conn
                writer.write(head + body if len(body) < 65536 else head)
                if len(body) >= 65536:
                    writer.write(body)
                status, keep_alive = await asyncio.wait_for(self._response(reader, writer),
                                                            self.timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError,
                    HttpProblem) as e:
                if conn is not None:
                    conn[1].close()
                raise HttpProblem(_problem(e)) from None
            except BaseException:
                if conn is not None:
                    conn[1].close()
                raise
            if keep_alive:
                self.idle.setdefault(endpoint, []).append(conn)
            else:
                writer.close()
            return status

    def _idle_connection(self, endpoint):
        pool = self.idle.get(endpoint)
        while pool:
            reader, writer = pool.pop()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()  # the server closed it while it was idle
        return None

    async def _connect(self, endpoint):
        scheme, host, port = endpoint
        tls = (self.ssl_context or ssl.create_default_context()) if scheme == "https" else None
        if self.proxy is None:
            return await asyncio.open_connection(host, port, ssl=tls,
                                                 server_hostname=host if tls else None)
        proxy_tls = None
        if self.proxy.scheme == "https":
            proxy_tls = self.ssl_context or ssl.create_default_context()
        proxy_port = self.proxy.port or (443 if proxy_tls else 80)
        reader, writer = await asyncio.open_connection(self.proxy.hostname, proxy_port,
                                                       ssl=proxy_tls)
        if scheme == "http":
            return reader, writer
        lines = [f"CONNECT {host}:{port} HTTP/1.1", f"Host: {host}:{port}"]
        if self.proxy.username:
            lines.append(f"Proxy-Authorization: {_basic_auth(self.proxy)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        status, _ = await self._response(reader, writer, connect=True)
        if status != 200:
            writer.close()
            raise HttpProblem(f"proxy answered CONNECT with HTTP {status}")
        await writer.start_tls(tls, server_hostname=host)
        return reader, writer

    async def _response(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        connect: bool = False) -> tuple[int, bool]:
        """Read one response; return its status and whether the connection can be reused."""
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                raise HttpProblem("connection closed before a response")
            version, _, rest = line.decode("latin-1").strip().partition(" ")
            if not version.startswith("HTTP/") or not rest[:3].isdigit():
                raise HttpProblem(f"not an HTTP response: {line[:60]!r}")
            status = int(rest[:3])
            headers = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n"):
                    break
                if not line:
                    raise HttpProblem("connection closed in the response headers")
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if not 100 <= status < 200:
                break
        if connect:
            return status, True
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and (version != "HTTP/1.0" or connection == "keep-alive")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size = int((await reader.readline()).split(b";")[0].strip() or b"x", 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                await reader.readexactly(size + 2)
        elif "content-length" in headers:
            await reader.readexactly(int(headers["content-length"]))
        elif status not in (204, 304):
            await reader.read()  # the body ends when the server closes
            keep_alive = False
        return status, keep_alive

    async def close(self) -> None:
        for pool in self.idle.values():
            for _, writer in pool:
                writer.close()
        self.idle.clear()


def shown(url: str) -> str:
    """``url`` as messages print it: a password in it becomes ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user.split(':', 1)[0]}:***@{host}").geturl()


def _basic_auth(proxy) -> str:
    user = unquote(proxy.username or "")
    password = unquote(proxy.password or "")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _problem(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, asyncio.IncompleteReadError):
        return "connection closed in the middle of the response"
    return f"{type(e).__name__}: {e}" if not isinstance(e, HttpProblem) else str(e)


class RateLimiter:
    """Spaces requests ``1/rate`` seconds apart: each takes the next free slot."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self.next = time.monotonic()

    def delay(self) -> float:
        """Seconds to wait before the request that asks now may start."""
        if not self.interval:
            return 0.0
        now = time.monotonic()
        slot = max(now, self.next)
        self.next = slot + self.interval
        return slot - now


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str
    retries: int = 0
    message: str = ""


async def _pause(seconds: float, stop: threading.Event) -> bool:
    """Sleep, waking early when ``stop`` is set (it may be set from a signal or another thread)."""
    end = time.monotonic() + seconds
    while not stop.is_set():
        left = end - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(left, 0.05))
    return True


class Sender:
    """Turns a record into a request and sends it with the retry policy."""

    def __init__(self, config: ReplayConfig, client: HttpClient, stop: threading.Event):
        self.config = config
        self.client = client
        self.stop = stop
        self.limiter = RateLimiter(config.rate)
        self.unanswered = 0  # records in a row that failed without any response
        self.gave_up: str | None = None

    def _outcome(self, outcome: Outcome, answered: bool, problem: str = "") -> Outcome:
        """Note whether the destination answers; stop the replay when it is plainly down.

        When ``give_up_after`` records in a row failed every attempt without
        an answer (refused, timed out), the rest would only fail the same way,
        slowly: the replay stops, and records not sent stay unfinished for a
        rerun to resume.
        """
        if answered:
            self.unanswered = 0
        elif outcome.status == FAILED:
            self.unanswered += 1
            if self.unanswered >= self.config.give_up_after and self.gave_up is None:
                self.gave_up = (f"the destination did not answer {self.unanswered} records in a "
                                f"row ({problem})")
                self.stop.set()
        return outcome

    def request_for(self, record: Record) -> tuple[str, str, bytes, dict[str, str]]:
        key = record.path if self.config.copy_keys else new_key(record.path)
        headers = {"User-Agent": "telemetry-replay"}
        if not record.data:
            return "DELETE", target_url(self.config.dest, key), b"", headers
        headers["Content-Type"] = "application/json; charset=UTF-8"  # as Firefox sent it
        if record.data.startswith(GZIP_MAGIC):
            headers["Content-Encoding"] = "gzip"
        return "POST", target_url(self.config.dest, key), record.data, headers

    async def send(self, record: Record) -> Outcome:
        method, url, body, headers = self.request_for(record)
        config = self.config
        for attempt in range(1, config.attempts + 1):
            if self.stop.is_set():  # queued behind the window when the replay was stopped: not sent
                return Outcome(INTERRUPTED, attempt - 1)
            wait = self.limiter.delay()
            if wait and await _pause(wait, self.stop):
                return Outcome(INTERRUPTED, attempt - 1)
            try:
                status = await self.client.request(method, url, body, headers)
                problem = f"HTTP {status}"
            except HttpProblem as e:
                status, problem = 0, str(e)
            if 200 <= status < 300:
                return self._outcome(Outcome(DELIVERED, attempt - 1), True)
            if 300 <= status < 500 and status not in RETRY_4XX:
                return self._outcome(
                    Outcome(REJECTED, attempt - 1, f"{method} {shown(url)}: {problem}"), True)
            if attempt == config.attempts:
                return self._outcome(Outcome(FAILED, attempt - 1,
                                             f"{method} {shown(url)}: {problem} after {attempt} "
                                             f"attempts"),
                                     status != 0, problem)
            delay = min(config.max_backoff, config.backoff * 2 ** (attempt - 1))
            if await _pause(delay, self.stop):
                return Outcome(INTERRUPTED, attempt - 1)
        raise AssertionError("unreachable")


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

    Setting ``stop`` (from a signal handler or another thread) ends the
    replay cleanly: no new request starts, those in flight finish, and the
    state file says exactly what was finished.  Runs its own asyncio loop in
    the calling thread.
    """
    stop = stop or threading.Event()
    state = ReplayState(config.state)
    state.check_writable()
    summary = ReplaySummary()
    started = time.monotonic()
    bar = tqdm(unit="rec", desc="replay", disable=not config.progress, leave=False)
    try:
        asyncio.run(_replay(config, state, stop, summary, bar))
    except ReplayError as e:
        e.summary = summary  # what was done before the failure, for the caller to report
        raise
    finally:
        bar.close()
        summary.seconds = time.monotonic() - started
    summary.interrupted = stop.is_set()
    return summary


async def _replay(config: ReplayConfig, state: ReplayState, stop: threading.Event,
                  summary: ReplaySummary, bar) -> None:
    client = HttpClient(config.concurrency, config.timeout, config.proxy, config.ssl_context())
    sender = Sender(config, client, stop)
    try:
        while not stop.is_set():
            for source in source_files(config.sources):
                if stop.is_set():
                    break
                try:
                    if source.stat().st_size <= state.offset(source):
                        continue
                    await _replay_file(source, config, state, sender, stop, summary, bar)
                except FileNotFoundError:
                    # Moved away or cleaned up between listing and reading: not ours to worry about.
                    log.warning("%s disappeared before it was read", source)
                    summary.note(f"{source}: disappeared before it was read")
            if not config.follow:
                break
            await _pause(config.poll, stop)
    finally:
        summary.gave_up = sender.gave_up
        await client.close()


async def _replay_file(source: Path, config: ReplayConfig, state: ReplayState, sender: Sender,
                       stop: threading.Event, summary: ReplaySummary, bar) -> None:
    """Send one file's records through a window of in-flight requests, saving progress as it goes.

    Records finish out of order; the saved offset only moves past a record
    once it and everything before it are finished.
    """
    summary.files += 1
    reader = RawLogReader(source, start_offset=state.offset(source))
    already = state.done(source)
    # (offset, end, task or outcome), in file order
    window: deque[tuple[int, int, asyncio.Task | Outcome]] = deque()
    watermark = state.offset(source)
    since_save = 0
    pending = 0
    limit = config.concurrency * 4
    last_bar = 0.0

    async def settle(block: bool) -> None:
        nonlocal watermark, since_save, last_bar, pending
        while window:
            offset, end, item = window[0]
            if isinstance(item, asyncio.Task):
                if not item.done():
                    if not (block or pending >= limit):
                        break
                    await asyncio.wait([item])
                outcome = item.result()
            else:
                outcome = item
            if outcome.status == INTERRUPTED:
                return  # this record and everything after it stay unfinished
            window.popleft()
            if isinstance(item, asyncio.Task):
                pending -= 1
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
            bar.set_postfix(delivered=summary.delivered, rejected=summary.rejected,
                            failed=summary.failed, sampled_out=summary.sampled_out, refresh=True)

    complete = True
    for n, record in enumerate(reader):
        if stop.is_set():
            complete = False
            break
        if record.offset in already:
            summary.resumed += 1
            window.append((record.offset, record.end, Outcome(RESUMED)))
        else:
            summary.read += 1
            item = _dispatch(record, config, sender)
            pending += isinstance(item, asyncio.Task)
            window.append((record.offset, record.end, item))
        await settle(block=False)
        if n % 64 == 63:
            await asyncio.sleep(0)  # let the requests run while records are read
    await settle(block=True)
    summary.skipped_bytes += reader.stats.skipped_bytes
    for message in reader.stats.errors:
        log.warning("%s", message)
        summary.note(message)

    if window or not complete:
        # Stopped: keep the contiguous offset and the finished records past it.
        done = {o for o in already if o >= watermark}
        for offset, _, item in window:
            if isinstance(item, asyncio.Task):
                await asyncio.wait([item])
                item = item.result()
            if item.status != INTERRUPTED:
                _count(item, summary)
                done.add(offset)
        state.set(source, watermark, done)
    else:
        state.set(source, max(watermark, source.stat().st_size))
    state.save()


def _dispatch(record: Record, config: ReplayConfig, sender: Sender) -> asyncio.Task | Outcome:
    if not sampled(record.path, config.sample, config.seed):
        return Outcome(SAMPLED_OUT)
    if not record.data and not (config.delete and config.copy_keys):
        return Outcome(DELETE_SKIPPED)
    return asyncio.get_running_loop().create_task(sender.send(record))


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
        _log_capped(summary, logging.WARNING, f"rejected: {outcome.message}")
    elif outcome.status == FAILED:
        summary.failed += 1
        _log_capped(summary, logging.ERROR, f"failed: {outcome.message}")


def _log_capped(summary: ReplaySummary, level: int, message: str) -> None:
    """Log the first MAX_LOGGED problems; the summary counts them all."""
    if len(summary.messages) < MAX_LOGGED:
        log.log(level, "%s", message)
    elif len(summary.messages) == MAX_LOGGED:
        log.log(level, "more problems are not shown; the summary counts them")
    summary.note(message)


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT stop reading; requests in flight finish and the state is saved.

    The handler only sets the event (the main thread only ever calls
    ``is_set``, so it cannot be holding the event's lock).
    """
    def handler(signum, frame):
        stop.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


@click.command("replay")
@click.argument("raw", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--dest", required=True, metavar="URL",
              help="Where to send; %k is replaced by the record's path, "
                   "e.g. http://host/submit/telemetry/%k")
@click.option("--sample", type=click.FloatRange(0, 1, min_open=True), default=1.0,
              show_default=True,
              help="Fraction of docIds to send (chosen by a hash of docId and --seed).")
@click.option("--copy-keys/--no-copy-keys", default=True, show_default=True,
              help="Keep each docId, or send under a new random one (dimensions kept).")
@click.option("--delete/--no-delete", default=False, show_default=True,
              help="Replay DELETE records (empty bodies) too.")
@click.option("--proxy", default=None, metavar="URL",
              help="HTTP proxy for every request "
                   "(default: $http_proxy / $https_proxy, minus $no_proxy).")
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True,
              help="Requests in flight at once.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="PER_SECOND",
              help="At most this many requests per second.")
@click.option("--follow", is_flag=True, help="Keep watching directories for new .finished files.")
@click.option("--state", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Progress file: a restarted replay resumes where this one stopped.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample hash.")
@click.option("--attempts", type=click.IntRange(min=1), default=5, show_default=True,
              help="Tries per record on 5xx and connection errors.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True,
              help="Seconds to wait for one response.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: when stderr is a terminal].")
@click.option("--give-up-after", type=click.IntRange(min=1), default=None, metavar="N",
              help="Stop when N records in a row got no answer after every attempt "
                   "[default: max(4, --concurrency)].")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None,
              help="PEM file of extra CA certificates for an https:// destination or proxy.")
def replay(raw: tuple[Path, ...], dest: str, sample: float, copy_keys: bool, delete: bool,
           proxy: str | None, concurrency: int, rate: float | None, follow: bool,
           state: Path | None, seed: int, attempts: int, timeout: float,
           give_up_after: int | None, ca_file: Path | None, progress: bool | None) -> None:
    """Send the submissions in raw logs RAW... (files, or directories of .finished files) to --dest.

    The raw logs are only read, never changed.  Exit status 1 when a record
    failed after all its attempts; rejected records (4xx) are reported.
    """
    if proxy is None:
        proxy = proxy_from_environment(dest, os.environ)
    try:
        config = ReplayConfig(sources=list(raw), dest=dest, sample=sample, copy_keys=copy_keys,
                              delete=delete, proxy=proxy, concurrency=concurrency, rate=rate,
                              follow=follow, state=state, seed=seed, attempts=attempts,
                              timeout=timeout, ca_file=ca_file,
                              progress=sys.stderr.isatty() if progress is None else progress,
                              give_up_after=give_up_after)
    except ReplayError as e:
        raise click.UsageError(str(e)) from None
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        summary = replay_logs(config, stop)
    except ReplayError as e:
        done = getattr(e, "summary", None)
        if done is not None:
            click.echo(done.describe(), err=True)
        raise click.ClickException(str(e)) from None
    click.echo(summary.describe(), err=True)
    if summary.gave_up:
        raise click.ClickException(f"gave up: {summary.gave_up}; the records not sent are left "
                                   f"for a rerun" + (" (--state resumes)" if state else ""))
    if summary.failed:
        raise click.ClickException(f"{summary.failed} record(s) could not be delivered")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    replay()
