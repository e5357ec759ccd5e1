"""Synthetic, realistic records in the storage format, for demos, benchmarks and tests.

Real datasets are large and private; the fixtures hold five records.  This
module makes as many converted (``ver: 2``) records as a test or benchmark
needs, shaped like the fixture pings (``info``, ``simpleMeasurements``,
histogram arrays with their five statistics, ``slowSQL`` and ``addonDetails``
with dotted keys), deterministically from a seed, and writes them as a
published layout so every consumer reads them exactly as it reads real data.
"""

from __future__ import annotations

import os
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import orjson
import zstandard

from converter.layout import published_name, relative_path

REASONS = ["saved-session", "idle-daily"]
APPS = ["Firefox", "Fennec"]
CHANNELS = ["release", "beta", "aurora", "nightly"]
VERSIONS = ["23.0.1", "24.0", "25.0a2", "26.0a1"]
BUILDS = ["20130814063812", "20130910160258", "20131001004003"]
DATES = ["20131101", "20131102", "20131103", "20131104"]
OSES = ["WINNT", "Darwin", "Linux", "Android"]
# name -> number of buckets (the five statistics follow the buckets)
HISTOGRAMS = {"GC_MS": 50, "CYCLE_COLLECTOR": 50, "MEMORY_RESIDENT": 50, "PAGE_LOAD_MS": 100,
              "TELEMETRY_PING": 40, "DEVTOOLS_TOOLBOX_OPENED_BOOLEAN": 3,
              "STARTUP_CRASH_DETECTED": 3, "HTTP_PAGE_DNS_ISSUE_TIME": 50}


@dataclass(frozen=True, slots=True)
class SyntheticRecord:
    doc_id: str
    dimensions: list[str]
    payload: dict


def make_record(rng: random.Random, payload_kb: int = 5) -> SyntheticRecord:
    """One converted record; ``payload_kb`` pads it with extra histograms to about that size."""
    dims = [rng.choice(REASONS), rng.choice(APPS), rng.choice(CHANNELS), rng.choice(VERSIONS),
            rng.choice(BUILDS), rng.choice(DATES)]
    reason, app, channel, version, build, _ = dims
    info = {"reason": reason, "appName": app, "appUpdateChannel": channel, "appVersion": version,
            "appBuildID": build, "OS": rng.choice(OSES), "cpucount": rng.choice([1, 2, 4, 8]),
            "memsize": rng.randrange(512, 16384), "locale": rng.choice(["en-US", "de", "fr"]),
            "revision": "http://hg.mozilla.org/releases/mozilla-release/rev/a55c55edf302"}
    histograms = {name: _histogram(rng, n) for name, n in HISTOGRAMS.items()}
    extra = 0
    while len(orjson.dumps(histograms)) < payload_kb * 1024 - 1500:
        histograms[f"SYNTHETIC_PADDING_{extra}"] = _histogram(rng, 60)
        extra += 1
    payload = {
        "ver": 2,
        "info": info,
        "simpleMeasurements": {"uptime": rng.randrange(0, 10_000), "firstPaint": rng.randrange(200, 9000),
                               "sessionRestored": rng.randrange(300, 12_000)},
        "histograms": histograms,
        "slowSQL": {"mainThread": {f"SELECT * FROM moz_places WHERE id = {rng.randrange(9)}": [1, 120]},
                    "otherThreads": {}},
        "addonDetails": {"XPI": {f"addon{rng.randrange(5)}@example.com": {"location": "app-profile"}}},
    }
    return SyntheticRecord(str(uuid.UUID(int=rng.getrandbits(128), version=4)), dims, payload)


def _histogram(rng: random.Random, n_buckets: int) -> list[int]:
    counts = [0] * n_buckets
    for _ in range(rng.randrange(0, 6)):
        counts[rng.randrange(n_buckets)] += rng.randrange(1, 50)
    total = sum(i * c for i, c in enumerate(counts))
    return counts + [total, -1, -1, total * total, 0]


def make_records(n: int, seed: int = 0, payload_kb: int = 5) -> list[SyntheticRecord]:
    rng = random.Random(seed)
    return [make_record(rng, payload_kb) for _ in range(n)]


def write_layout(base: str | os.PathLike, records: list[SyntheticRecord], codec: str = "zst",
                 records_per_file: int = 2000) -> list[Path]:
    """Write ``records`` as published layout files (zstd level 3 or plain ``.log``)."""
    base = Path(base)
    groups: dict[str, list[SyntheticRecord]] = defaultdict(list)
    for r in records:
        groups[relative_path(r.dimensions)].append(r)
    written = []
    for rel, group in sorted(groups.items()):
        # A plain .log layout file has one fixed name, so it takes its whole group.
        step = records_per_file if codec == "zst" else len(group)
        for start in range(0, len(group), step):
            chunk = group[start:start + step]
            data = b"".join(r.doc_id.encode() + b"\t" + orjson.dumps(r.payload) + b"\n" for r in chunk)
            if codec == "zst":
                target = base / published_name(rel, "zst")
                data = zstandard.ZstdCompressor(level=3).compress(data)
            elif codec == "log":
                target = base / rel
            else:
                raise ValueError(f"unknown codec {codec!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written.append(target)
    return written
