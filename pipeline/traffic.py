"""Steady simulated traffic into a receiver: for the freshness benchmark and ``demo --serve``.

Pings are variations of the fixture's real Firefox ping
(:mod:`converter.variations`), posted over keep-alive connections at a
steady rate in small *batches*.  Every ping of a batch carries the same
build ID, one no other batch uses (``BUILD_BASE`` plus the batch number in
days), so a batch is recognisable downstream by its docIds in MongoDB and
by its build date in the aggregates.
"""

from __future__ import annotations

import datetime
import gzip
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import orjson
import requests

from receiver.rawlog import Record, inflate

BUILD_BASE = datetime.date(2014, 1, 1)
URL_PREFIX = "/submit/telemetry/"


@dataclass
class Batch:
    """One batch of pings: what was sent, what was acknowledged, and when."""

    number: int
    build_id: str
    doc_ids: list[str] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    failed: int = 0
    first_post: float = 0.0      # time.time() of its first POST
    last_ack: float = 0.0        # time.time() of its last 200

    @property
    def build_date(self) -> str:
        return self.build_id[:8]


def build_id(batch: int) -> str:
    return (BUILD_BASE + datetime.timedelta(days=batch)).strftime("%Y%m%d") + "000000"


def make_batch(base: Record, number: int, size: int, rng: random.Random) -> tuple[Batch, list[Record]]:
    """``size`` variations of ``base`` with fresh docIds, all of build ``build_id(number)``."""
    doc = orjson.loads(inflate(base.data))
    batch = Batch(number, build_id(number))
    info = dict(doc["info"], appBuildID=batch.build_id)
    body = gzip.compress(orjson.dumps(dict(doc, info=info)), compresslevel=1, mtime=0)
    records = []
    for _ in range(size):
        doc_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        path = "/".join((doc_id, info["reason"], info["appName"], info["appVersion"],
                         info["appUpdateChannel"], batch.build_id))
        batch.doc_ids.append(doc_id)
        records.append(Record(path, body, 0, None))
    return batch, records


class SteadyTraffic:
    """Posts ``rate`` pings a second to ``url`` (the receiver's base URL) until stopped.

    Each ping is sent at its scheduled time (``rate`` per second, batches of
    ``batch_size``) by a pool of ``connections`` threads, each with its own
    keep-alive session; a ping that could not be sent in time is sent late,
    never dropped, and counted as a ``failed`` one only if the receiver did
    not answer 200.
    """

    def __init__(self, url: str, base: Record, rate: float = 200.0, batch_size: int = 50,
                 connections: int = 16, seed: int = 0,
                 on_batch: Callable[[Batch], None] | None = None):
        self.url = url.rstrip("/") + URL_PREFIX
        self.base = base
        self.rate = rate
        self.batch_size = batch_size
        self.connections = connections
        self.rng = random.Random(seed)
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

    def _post(self, batch: Batch, record: Record, remaining: list[int]) -> None:
        try:
            r = self._session().post(self.url + record.path, data=record.data, timeout=30)
            ok = r.status_code == 200
        except requests.RequestException:
            ok = False
        now = time.time()
        with self._lock:
            if ok:
                batch.acked.append(record.path.split("/", 1)[0])
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
                batch, records = make_batch(self.base, number, self.batch_size, self.rng)
                number += 1
                remaining = [len(records)]
                for i, record in enumerate(records):
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    if i == 0:
                        batch.first_post = time.time()
                        with self._lock:
                            self.batches.append(batch)
                    pool.submit(self._post, batch, record, remaining)
                    next_at += interval
