#!/usr/bin/env python
"""Benchmark: freshness end to end, from a ping's POST to the moment it is visible downstream.

Starts ``telemetry pipeline`` on a fresh data directory (loopback ports,
the embedded MongoDB server unless ``--mongo-url``), posts simulated pings at
a steady rate (``--rate`` per second, variations of the fixture's real
Firefox ping, all in one aggregates cell, see :mod:`pipeline.traffic`) for
``--seconds``, and polls until each batch of ``--batch`` pings is visible:

- ``--visible api`` (default): the aggregates API counts the batch's pings
  (and every earlier batch's) in their cell: what a dashboard user sees;
- ``--visible mongo``: every acknowledged docId of the batch is in the
  payloads collection (what the importer promises).

A batch's delay is measured from its first POST (so it is the delay of its
longest-waiting ping).  The baseline, measured in the same run, is the
receiver's share alone: from the batch's first POST until the last raw log
holding one of its pings was finished (renamed ``.finished``), which no
downstream stage can beat; the figure is the end-to-end p95 against that
floor, and against the target (p95 <= rotation age + 5 s, 0 lost).

    bench/freshness.py [--rate 200] [--seconds 60] [--rotation-age-ms 3000] [--batch 50]
                       [--visible api|mongo] [--mongo-url URI] [--config pipeline.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pymongo  # noqa: E402
import requests  # noqa: E402

from converter.revisions import write_revision  # noqa: E402
from converter.variations import base_record  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.service import start_pipeline  # noqa: E402
from pipeline.traffic import FIXTURE_BUILD, Batch, SteadyTraffic, fixture_pings  # noqa: E402
from pipeline.watcher import DirectoryWatcher, Stop  # noqa: E402
from receiver.rawlog import RawLogReader  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
REPO, REV = "releases/mozilla-release", "a55c55edf302"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


class FinishedWatch:
    """When the last raw log holding each docId was finished: the receiver's share of the delay."""

    def __init__(self, raw: Path):
        self.raw = raw
        self.finished_at: dict[str, float] = {}
        self.stop = Stop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.seen: set[Path] = set()

    def start(self) -> "FinishedWatch":
        self.thread.start()
        return self

    def _run(self) -> None:
        with DirectoryWatcher([self.raw]) as watcher:
            while not self.stop.is_set():
                changes = watcher.wait(1.0, self.stop)
                now = time.time()
                paths = list(changes.files)
                for d in changes.rescan:
                    paths += list(d.glob("*.finished"))
                for p in paths:
                    if p in self.seen or not p.name.endswith(".finished"):
                        continue
                    self.seen.add(p)
                    for rec in RawLogReader(p):
                        self.finished_at[rec.path.split("/", 1)[0]] = now


class Visibility:
    """Polls until each batch is visible; records when.

    In MongoDB a batch is visible when each of its acknowledged docIds is.
    In the API every ping is in one cell (one build date), so batch k is
    visible once the cell counts at least the acknowledged pings of batches
    0..k (files are taken oldest first; a later batch seen before an earlier
    one can only make a delay look shorter by the time between them).
    """

    def __init__(self, mode: str, mongo_url: str, database: str, api_url: str | None):
        self.mode = mode
        self.client = pymongo.MongoClient(mongo_url)
        self.payloads = self.client[database]["payloads"]
        self.api_url = api_url
        self.session = requests.Session()

    def poll(self, batches: list[Batch], visible_at: dict[int, float]) -> None:
        if self.mode == "mongo":
            pending = [b for b in batches if b.number not in visible_at][:4]
            for b in pending:
                if self.payloads.count_documents({"_id": {"$in": b.acked}}) >= len(b.acked):
                    visible_at[b.number] = time.time()
            return
        r = self.session.get(f"{self.api_url}/aggregates_by/build_id/channels/release/",
                             params={"version": "23", "dates": FIXTURE_BUILD[:8],
                                     "metric": "SIMPLE_MEASURES_UPTIME"}, timeout=10)
        count = sum(d.get("count", 0) for d in r.json().get("data", [])) \
            if r.status_code == 200 else 0
        now, total = time.time(), 0
        for b in sorted(batches, key=lambda b: b.number):
            total += len(b.acked)
            if total > count:
                break
            visible_at.setdefault(b.number, now)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=200.0, help="pings per second")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to post")
    ap.add_argument("--batch", type=int, default=50, help="pings per batch (one build ID each)")
    ap.add_argument("--rotation-age-ms", type=int, default=PipelineConfig.rotation_age_ms,
                    help="the pipeline's rotation age [its default, %(default)s]")
    ap.add_argument("--visible", choices=("mongo", "api"), default="api")
    ap.add_argument("--mongo-url", help="a MongoDB of your own (default: the embedded server)")
    ap.add_argument("--config", type=Path, help="a pipeline.json for the pipeline (workers, ...)")
    ap.add_argument("--keep", type=Path, help="use this data directory and keep it")
    ap.add_argument("--settle", type=float, default=60.0,
                    help="seconds to wait after the last POST for the last batches")
    args = ap.parse_args()

    data_dir = args.keep or Path(tempfile.mkdtemp(prefix="freshness-"))
    cache = data_dir / "histograms"
    write_revision(cache, REPO, REV, (FIXTURES / "histograms" / f"{REV}.Histograms.json").read_bytes())
    database = "freshness"
    pipeline_args = ["--data-dir", str(data_dir), "--port", "0", "--dashboard-port", "0",
                     "-d", database, "--histogram-cache", str(cache),
                     "--rotation-age-ms", str(args.rotation_age_ms)]
    if args.mongo_url:
        pipeline_args += ["--mongo-url", args.mongo_url]
    if args.config:
        pipeline_args += ["--config", str(args.config.absolute())]
    with open(data_dir / "pipeline.log", "w") as log:
        try:
            running = start_pipeline(pipeline_args, stderr=log)
        except PipelineError as e:
            print(f"{e}; see {data_dir / 'pipeline.log'}", file=sys.stderr)
            return 1
    urls = running.urls
    if args.visible == "api" and "api" not in urls:
        print("no API server in this installation (telemetry dashboard); use --visible mongo",
              file=sys.stderr)
        running.stop()
        return 1
    mongo_url = args.mongo_url or _embedded_url(data_dir)
    finished = FinishedWatch(data_dir / "raw").start()
    visibility = Visibility(args.visible, mongo_url, database, urls.get("api"))
    complete: list[Batch] = []
    pings = fixture_pings(base_record(FIXTURES / "raw" / "telemetry1.v1.log"))
    traffic = SteadyTraffic(urls["receiver"], pings, rate=args.rate, batch_size=args.batch,
                            on_batch=complete.append)
    print(f"posting {args.rate:.0f} pings/s for {args.seconds:.0f} s into {urls['receiver']} "
          f"(rotation age {args.rotation_age_ms} ms); visible = {args.visible}")
    visible_at: dict[int, float] = {}
    traffic.start()
    started = time.monotonic()
    stop_posting = started + args.seconds
    deadline = None
    try:
        while True:
            now = time.monotonic()
            if deadline is None and now >= stop_posting:
                traffic.stop()
                deadline = now + args.settle
            visibility.poll(sorted(complete, key=lambda b: b.number), visible_at)
            if deadline is not None and (len(visible_at) == len(traffic.batches) or now > deadline):
                break
            time.sleep(0.1)
    finally:
        traffic.stop()
        code = running.stop()
        finished.stop.set()
    batches = traffic.batches
    delays = [visible_at[b.number] - b.first_post for b in batches if b.number in visible_at]
    floors = []
    for b in batches:
        times = [finished.finished_at.get(d) for d in b.acked]
        if times and all(times):
            floors.append(max(times) - b.first_post)
    late = sum(len(b.acked) for b in batches if b.number not in visible_at)
    lost = count_lost(batches, args.mongo_url, data_dir, database)
    posted = traffic.sent
    rate = posted / args.seconds
    target = args.rotation_age_ms / 1000 + 5
    print(f"posted {posted} pings ({rate:.0f}/s achieved), {traffic.acked} acknowledged, "
          f"{traffic.failed} refused or failed; {len(batches)} batches of {args.batch}")
    print(f"{len(delays)} of {len(batches)} batches visible within --settle; percentiles over those")
    print(f"POST -> visible ({args.visible}), per batch from its first POST: "
          f"p50 {percentile(delays, 50):.2f} s, p95 {percentile(delays, 95):.2f} s, "
          f"max {max(delays, default=float('nan')):.2f} s")
    print(f"baseline, POST -> raw log finished (the receiver's rotation alone): "
          f"p50 {percentile(floors, 50):.2f} s, p95 {percentile(floors, 95):.2f} s")
    p95 = percentile(delays, 95)
    print(f"end-to-end p95 / rotation-only p95 = {p95 / percentile(floors, 95):.2f}x; "
          f"downstream stages add {p95 - percentile(floors, 95):.2f} s at p95")
    print(f"target p95 <= rotation age + 5 s = {target:.1f} s: {'met' if p95 <= target else 'MISSED'}"
          f" ({p95 / target:.2f} of it); not visible within --settle: {late}; "
          f"lost (acknowledged, not in MongoDB after the pipeline drained): {lost}")
    print(f"pipeline exit code {code}; its log: {data_dir / 'pipeline.log'}")
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0 if lost == 0 and code == 0 else 1


def count_lost(batches: list[Batch], mongo_url: str | None, data_dir: Path, database: str) -> int:
    """Acknowledged pings missing from MongoDB once the pipeline has drained and stopped."""
    server = None
    if not mongo_url:  # the pipeline stopped the embedded server it started: start it again
        from importer.mongo import MongoConfig, ensure_embedded

        server, _ = ensure_embedded(MongoConfig(data_dir=data_dir / "mongo"))
        mongo_url = server.url
    try:
        with pymongo.MongoClient(mongo_url) as client:
            payloads = client[database]["payloads"]
            acked = [d for b in batches for d in b.acked]
            found = sum(payloads.count_documents({"_id": {"$in": acked[i:i + 1000]}})
                        for i in range(0, len(acked), 1000))
    finally:
        if server is not None:
            server.stop()
    return len(acked) - found


def _embedded_url(data_dir: Path) -> str:
    from importer.mongo import embedded_status

    server = embedded_status(data_dir / "mongo")
    if server is None:
        raise SystemExit("the embedded MongoDB server of the pipeline is not running")
    return server.url


if __name__ == "__main__":
    sys.exit(main())
