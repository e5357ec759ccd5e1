"""Raw logs made of variations of a real ping, for tests, the benchmark and the demo.

The fixture ping (a Firefox 23 idle-daily with 328 histograms) is realistic
in size and shape; varying its docId, dimensions and receive date gives a raw
dataset of any size that converts like real traffic into many layout files.
"""

from __future__ import annotations

import gzip
import os
import random
import uuid
from pathlib import Path
from typing import Iterator

import orjson

from receiver.rawlog import Record, encode_record, inflate, read_records

REASONS = ("idle-daily", "saved-session")
CHANNELS = ("release", "beta", "aurora", "nightly")
VERSIONS = ("23.0.1", "24.0", "25.0a2")
BUILDS = ("20130814063812", "20130910160258")
OSES = ("WINNT", "Darwin", "Linux")
DAY_MS = 86_400_000


def base_record(raw_log: str | os.PathLike) -> Record:
    """The first record of a raw log (the fixture's one ping)."""
    for rec in read_records(raw_log):
        return rec
    raise ValueError(f"{raw_log} holds no record")


def variations(base: Record, n: int, seed: int = 0, days: int = 3,
               compresslevel: int = 1) -> Iterator[Record]:
    """``n`` records like ``base`` with fresh docIds, mixed dimensions and receive days."""
    rng = random.Random(seed)
    doc = orjson.loads(inflate(base.data))
    for _ in range(n):
        doc_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        info = dict(doc["info"], reason=rng.choice(REASONS), appUpdateChannel=rng.choice(CHANNELS),
                    appVersion=rng.choice(VERSIONS), appBuildID=rng.choice(BUILDS),
                    OS=rng.choice(OSES))
        body = gzip.compress(orjson.dumps(dict(doc, info=info)), compresslevel=compresslevel,
                             mtime=0)
        path = "/".join((doc_id, info["reason"], info["appName"], info["appVersion"],
                         info["appUpdateChannel"], info["appBuildID"]))
        yield Record(path, body, base.timestamp + rng.randrange(days) * DAY_MS, base.ip)


def write_variations(path: str | os.PathLike, base: Record, n: int, seed: int = 0, **kw) -> Path:
    """A v1 raw log of ``n`` variations; returns its path."""
    path = Path(path)
    with open(path, "wb") as f:
        for rec in variations(base, n, seed, **kw):
            f.write(encode_record(rec.path, rec.data, rec.timestamp))
    return path
