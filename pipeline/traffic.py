"""Steady simulated traffic into a receiver: for the freshness benchmark and ``demo --serve``.

Pings are (path, gzip body) pairs from any source: variations of the
fixture's real Firefox ping, all in one aggregates cell (:func:`fixture_pings`:
release, 23, one build ID, so the aggregates API counts them under one
date), or a simulated fleet (:func:`fleet_pings`, realistic segments).  They
are posted over keep-alive connections at a steady rate and grouped in
*batches* whose acknowledgements and timings are kept, so that a batch can be
looked for downstream.
"""

from __future__ import annotations

import gzip
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterator

import orjson
import requests

from receiver.rawlog import Record, inflate

FIXTURE_BUILD = "20140101000000"
URL_PREFIX = "/submit/telemetry/"
Ping = tuple[str, bytes]  # (path after the prefix, body)


@dataclass
class Batch:
    """One batch of pings: what was sent, what was acknowledged, and when."""

    number: int
    doc_ids: list[str] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    failed: int = 0
    first_post: float = 0.0      # time.time() of its first POST
    last_ack: float = 0.0        # time.time() of its last 200


def fixture_pings(base: Record, seed: int = 0, build_id: str = FIXTURE_BUILD) -> Iterator[Ping]:
    """Endless variations of ``base`` with fresh docIds, all of build ``build_id``."""
    rng = random.Random(seed)
    doc = orjson.loads(inflate(base.data))
    info = dict(doc["info"], appBuildID=build_id)
    body = gzip.compress(orjson.dumps(dict(doc, info=info)), compresslevel=1, mtime=0)
    tail = "/".join((info["reason"], info["appName"], info["appVersion"],
                     info["appUpdateChannel"], build_id))
    while True:
        yield f"{uuid.UUID(int=rng.getrandbits(128), version=4)}/{tail}", body


def fleet_pings(seed: int = 0, scenario=None, per_fleet: int = 20_000) -> Iterator[Ping]:
    """Endless submissions of simulated fleets (:mod:`fleet`), one fleet of ``per_fleet`` pings
    after another (seeds ``seed``, ``seed + 1``, ...), as the receiver gets them."""
    from fleet.population import Fleet

    while True:
        for sub in Fleet(per_fleet, seed=seed, scenario=scenario).submissions():
            yield sub.path, sub.body
        seed += 1


class SteadyTraffic:
    """Posts ``rate`` pings a second to ``url`` (the receiver's base URL) until stopped.

    Each ping is sent at its scheduled time (``rate`` per second, batches of
    ``batch_size``) by a pool of ``connections`` threads, each with its own
    keep-alive session; a ping that could not be sent in time is sent late,
    never dropped, and counted as a ``failed`` one only if the receiver did
    not answer 200.
    """

    def __init__(self, url: str, pings: Iterator[Ping], rate: float = 200.0,
                 batch_size: int = 50, connections: int = 16,
                 on_batch: Callable[[Batch], None] | None = None):
        self.url = url.rstrip("/") + URL_PREFIX
        self.pings = iter(pings)
        self.rate = rate
        self.batch_size = batch_size
        self.connections = connections
        self.on_batch = on_batch
        self.batches: list[Batch] = []
        self._stop = threading.Event()
        self._local = threading.local()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> "SteadyTraffic":
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def sent(self) -> int:
        return sum(len(b.doc_ids) for b in self.batches)

    @property
    def acked(self) -> int:
        return sum(len(b.acked) for b in self.batches)

    @property
    def failed(self) -> int:
        return sum(b.failed for b in self.batches)

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def _post(self, batch: Batch, ping: Ping, remaining: list[int]) -> None:
        path, body = ping
        try:
            r = self._session().post(self.url + path, data=body, timeout=30)
            ok = r.status_code == 200
        except requests.RequestException:
            ok = False
        now = time.time()
        with self._lock:
            if ok:
                batch.acked.append(path.split("/", 1)[0])
                batch.last_ack = max(batch.last_ack, now)
            else:
                batch.failed += 1
            remaining[0] -= 1
            complete = remaining[0] == 0
        if complete and self.on_batch is not None:
            self.on_batch(batch)

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        number = 0
        with ThreadPoolExecutor(self.connections, thread_name_prefix="post") as pool:
            while not self._stop.is_set():
                pings = list(islice(self.pings, self.batch_size))
                if not pings:
                    break  # the source ran dry
                batch = Batch(number, [p[0].split("/", 1)[0] for p in pings])
                number += 1
                remaining = [len(pings)]
                for i, ping in enumerate(pings):
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    if i == 0:
                        batch.first_post = time.time()
                        with self._lock:
                            self.batches.append(batch)
                    pool.submit(self._post, batch, ping, remaining)
                    next_at += interval
