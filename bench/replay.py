#!/usr/bin/env python
"""Benchmark: replay raw records into the real receiver on loopback, against a sequential loop.

Measures, in one run, on the same raw records sent to the same receiver: a
plain sequential ``requests.Session`` loop (one POST after the other) as the
baseline, then ``replay_logs`` with ``--concurrency`` requests in flight.
Prints records/s for both and the ratio.  Target: >= 5x the sequential loop
at concurrency 32.  The receiver's raw log is counted afterwards, so a fast
but lossy run cannot pass unnoticed.

    .venv/bin/python bench/replay.py [--records 50000] [--baseline-records N] [--concurrency 32]
                                     [--workers 0] [--durability fsync|os]

``--baseline-records`` times the sequential loop on the first N records only
(its rate does not depend on N) when the whole set would take too long.
"""

from __future__ import annotations

import argparse
import gzip
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import orjson  # noqa: E402
import requests  # noqa: E402

from converter.synthetic import make_records  # noqa: E402
from receiver.config import ReceiverConfig  # noqa: E402
from receiver.rawlog import Record, finished_files, read_records, write_records  # noqa: E402
from receiver.replay import ReplayConfig, replay_logs  # noqa: E402
from receiver.service import start_receiver  # noqa: E402


def make_raw(directory: Path, n: int, payload_kb: int, per_file: int = 10_000) -> list[Record]:
    """``n`` submissions as the receiver stores them: gzip bodies of realistic pings, unique docIds."""
    bodies = []
    for r in make_records(200, seed=7, payload_kb=payload_kb):
        info = r.payload["info"]
        ping = {"ver": 1, "info": info, "simpleMeasurements": r.payload["simpleMeasurements"],
                "histograms": r.payload["histograms"], "slowSQL": r.payload["slowSQL"]}
        dims = f"{info['reason']}/{info['appName']}/{info['appVersion']}/{info['appUpdateChannel']}/{info['appBuildID']}"
        bodies.append((dims, gzip.compress(orjson.dumps(ping), mtime=0)))
    rng = random.Random(3)
    records = []
    for i in range(n):
        dims, body = bodies[i % len(bodies)]
        records.append(Record(f"{uuid.UUID(int=rng.getrandbits(128), version=4)}/{dims}", body,
                              1_383_264_000_000 + i))
    directory.mkdir(parents=True)
    for start in range(0, n, per_file):
        write_records(directory / f"telemetry.v1.bench.1.{start}.finished", records[start:start + per_file])
    return records


def sequential(records: list[Record], base: str) -> float:
    """The baseline: what a careful script would do without concurrency."""
    session = requests.Session()
    started = time.perf_counter()
    for r in records:
        headers = {"Content-Encoding": "gzip"} if r.data[:2] == b"\x1f\x8b" else {}
        response = session.post(base + r.path, data=r.data, headers=headers, timeout=30)
        response.raise_for_status()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--baseline-records", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--payload-kb", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="receiver worker processes (0: one per CPU)")
    parser.add_argument("--durability", choices=("fsync", "os"), default="fsync")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    try:
        t = time.perf_counter()
        records = make_raw(root / "raw", args.records, args.payload_kb)
        size = sum(len(r.data) for r in records)
        print(f"generated {len(records)} raw records ({size / len(records) / 1024:.1f} KiB gzip bodies) "
              f"in {time.perf_counter() - t:.1f}s")
        baseline_records = records[: args.baseline_records or len(records)]
        config = ReceiverConfig(log_path=str(root / "received"), port=0, workers=args.workers,
                                durability=args.durability)
        (root / "received").mkdir()
        with start_receiver(config) as receiver:
            base = receiver.url + config.url_prefix
            print(f"receiver: {receiver.url}, {config.worker_count} worker(s), durability {args.durability}")

            seconds = sequential(baseline_records, base)
            seq_rate = len(baseline_records) / seconds
            print(f"sequential requests loop: {len(baseline_records)} records in {seconds:.2f}s "
                  f"= {seq_rate:,.0f} records/s (baseline)")

            replay_config = ReplayConfig(sources=[root / "raw"], dest=base + "%k",
                                         concurrency=args.concurrency)
            summary = replay_logs(replay_config)
            rate = summary.delivered / summary.seconds
            print(f"replay, concurrency {args.concurrency}: {summary.describe()}")
            print(f"replay: {rate:,.0f} records/s = {rate / seq_rate:.2f}x the sequential loop "
                  f"(target >= 5x)")
            receiver.stop()
        stored = sum(1 for f in finished_files(root / "received") for _ in read_records(f))
        expected = len(baseline_records) + summary.delivered
        print(f"receiver raw log holds {stored} records (expected {expected})"
              + ("" if stored == expected else "  <-- MISMATCH"))
        if summary.failed or summary.rejected or stored != expected:
            sys.exit(1)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
