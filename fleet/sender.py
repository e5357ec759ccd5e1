"""Posting simulated submissions to a receiver over HTTP, as Firefox does.

Each submission is a POST of its gzip body to ``{url}{prefix}{path}`` with
the headers Firefox sent (``Content-Type: application/json; charset=UTF-8``,
``Content-Encoding: gzip``) plus ``X-Forwarded-For`` with the simulated
client's IP, so that a receiver recording IPs stores exactly what
``write_raw_logs`` would have written (only the receive time differs).

The HTTP client is the replay's (:class:`receiver.replay.HttpClient`): keep-alive
connections on asyncio, at most ``concurrency`` at once, about a tenth of the
CPU per request of a thread pool.  ``rate`` spaces requests evenly.  A 5xx,
408, 429 or a connection problem is retried with exponential backoff; a 4xx
is not (the server will not change its mind).  When a submission gets no
response at all after its retries, the server is taken to be down and the
run stops there with a one-line reason, instead of trying every remaining
ping against it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable
from urllib.parse import urlsplit

from fleet.population import Submission
from receiver.replay import RETRY_4XX, HttpClient, HttpProblem, RateLimiter

DEFAULT_PREFIX = "/submit/telemetry/"


class SendError(ValueError):
    """A sender configuration that cannot be used (a bad URL, a bad number)."""


@dataclass(frozen=True)
class SendConfig:
    """Where and how to post: ``url`` is ``http://HOST:PORT`` (the SPEC prefix is added)
    or a URL whose path is the receiver's prefix, e.g. ``http://HOST:PORT/submit/telemetry/``."""

    url: str
    concurrency: int = 8
    rate: float | None = None          # requests per second over all connections; None: as fast as possible
    retries: int = 3                   # attempts after the first
    backoff: float = 0.5               # first wait before a retry; doubles each time
    max_backoff: float = 10.0
    timeout: float = 30.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SendError(f"--to must be an http:// or https:// URL with a host, got {self.url!r}")
        try:
            parts.port
        except ValueError:
            raise SendError(f"--to has a bad port: {self.url!r}") from None
        if self.concurrency < 1:
            raise SendError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.rate is not None and self.rate <= 0:
            raise SendError(f"rate must be more than 0, got {self.rate}")
        if self.retries < 0:
            raise SendError(f"retries must be 0 or more, got {self.retries}")

    @property
    def base(self) -> str:
        """``scheme://host:port{prefix}``: a submission's path goes right after it."""
        parts = urlsplit(self.url)
        prefix = parts.path if parts.path not in ("", "/") else DEFAULT_PREFIX
        if not prefix.endswith("/"):
            prefix += "/"
        return f"{parts.scheme}://{parts.netloc}{prefix}"


@dataclass
class SendSummary:
    """The outcome of a run: every submission sent ends with one final HTTP status or as failed."""

    sent: int = 0
    codes: Counter = field(default_factory=Counter)
    failed: int = 0
    retries: int = 0
    malformed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)   # the first few problems, one line each
    aborted: str | None = None

    @property
    def accepted(self) -> int:
        return sum(n for code, n in self.codes.items() if 200 <= code < 300)

    @property
    def ok(self) -> bool:
        """True when every submission was answered 2xx."""
        return self.aborted is None and self.failed == 0 and self.accepted == self.sent

    def lines(self) -> list[str]:
        rate = self.sent / self.seconds if self.seconds > 0 else 0.0
        other = {code: n for code, n in sorted(self.codes.items()) if not 200 <= code < 300}
        out = [f"sent {self.sent} submissions ({self.malformed} malformed on purpose) in {self.seconds:.1f} s, "
               f"{rate:,.0f} req/s",
               f"2xx {self.accepted}, non-2xx "
               + (", ".join(f"{n} x HTTP {code}" for code, n in other.items()) if other else "none")
               + f", failed {self.failed}, retries {self.retries}"]
        out += [f"error: {e}" for e in self.errors]
        if self.aborted:
            out.append(f"stopped: {self.aborted}")
        return out


HEADERS = {"Content-Type": "application/json; charset=UTF-8", "Content-Encoding": "gzip",
           "User-Agent": "telemetry-simulate (Firefox fleet)"}
MAX_ERRORS = 5


def send(submissions: Iterable[Submission], config: SendConfig,
         progress: Callable[[int], None] | None = None) -> SendSummary:
    """Post every submission; stops early only when the server cannot be reached at all."""
    return asyncio.run(_send(submissions, config, progress))


async def _send(submissions: Iterable[Submission], config: SendConfig,
                progress: Callable[[int], None] | None) -> SendSummary:
    summary = SendSummary()
    client = HttpClient(config.concurrency, config.timeout)
    limiter = RateLimiter(config.rate)
    base = config.base
    window = asyncio.Semaphore(config.concurrency * 2)   # submissions generated but not answered
    stop = asyncio.Event()
    tasks: set[asyncio.Task] = set()
    started = time.monotonic()

    def note(message: str) -> None:
        if len(summary.errors) < MAX_ERRORS:
            summary.errors.append(message)

    async def post(sub: Submission) -> None:
        url = base + sub.path
        headers = dict(HEADERS, **{"X-Forwarded-For": sub.client_ip})
        try:
            for attempt in range(config.retries + 1):
                if attempt:
                    summary.retries += 1
                    await asyncio.sleep(min(config.max_backoff, config.backoff * 2 ** (attempt - 1)))
                wait = limiter.delay()
                if wait:
                    await asyncio.sleep(wait)
                try:
                    status = await client.request("POST", url, sub.body, headers)
                    problem = f"HTTP {status}"
                except HttpProblem as e:
                    status, problem = 0, str(e)
                if 200 <= status < 300:
                    break
                if 0 < status < 500 and status not in RETRY_4XX:
                    note(f"POST {url}: {problem}")
                    break
            else:
                tries = f"{config.retries + 1} attempt{'s' if config.retries else ''}"
                if status:
                    note(f"POST {url}: {problem} after {tries}")
                elif summary.aborted is None:
                    summary.aborted = (f"no response from {base} ({problem}) after {tries}; "
                                       f"is the receiver running?")
                    stop.set()
            summary.sent += 1
            if status:
                summary.codes[status] += 1
            else:
                summary.failed += 1
            summary.malformed += sub.malformed is not None
            if progress is not None:
                progress(1)
        finally:
            window.release()

    try:
        for sub in submissions:
            await window.acquire()
            if stop.is_set():
                window.release()
                break
            task = asyncio.create_task(post(sub))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(0)   # let responses in between two generated pings
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await client.close()
    summary.seconds = time.monotonic() - started
    return summary
