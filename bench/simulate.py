#!/usr/bin/env python
"""Benchmark: the simulated fleet, into raw logs and over HTTP, against a gzip-and-frame floor.

Measures, in one run:

1. generation into raw logs: ``write_raw_logs(Fleet(N).submissions(), dir)``,
   everything included (building the population and its segments, drawing
   every histogram, JSON, gzip, framing, writing);
2. the floor: a loop that only gzips (same level) and frames (``encode_record``)
   the very same N uncompressed bodies and writes them, i.e. what any
   generator must pay at least;
3. HTTP into the real receiver on loopback (``telemetry simulate --to``):
   generation plus posting, and the same submissions pre-generated, which is
   the client and receiver alone.

It prints pings/s for each and the ratios to the floor.  Target: generation
>= 50% of the floor, so the simulator never limits a pipeline benchmark.

    bench/simulate.py [--pings 3000] [--http-pings 1000] [--concurrency 8] [--workers 2] [--seed 1]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.population import Fleet  # noqa: E402
from fleet.rawlogs import RawLogFiles, write_raw_logs  # noqa: E402
from fleet.scenario import Scenario  # noqa: E402
from fleet.sender import SendConfig, send  # noqa: E402
from receiver.config import ReceiverConfig  # noqa: E402
from receiver.rawlog import encode_record  # noqa: E402
from receiver.service import start_receiver  # noqa: E402


def timed(fn) -> tuple[float, float, object]:
    """(CPU seconds of this process, wall seconds, result) of ``fn()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def floor(bodies: list[tuple[str, bytes, int, str]], level: int, directory: Path) -> None:
    """Gzip and frame the bodies into raw logs, and nothing else."""
    with RawLogFiles(directory) as files:
        for path, body, ts, ip in bodies:
            files.write(encode_record(path, gzip.compress(body, level, mtime=0), ts, ip))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pings", type=int, default=3000, help="pings generated into raw logs")
    parser.add_argument("--http-pings", type=int, default=1000, help="pings posted to the receiver (0: skip)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="receiver worker processes")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    scenario = Scenario()
    work = Path(tempfile.mkdtemp(prefix="bench-simulate-"))
    try:
        gen_cpu, gen_wall, written = timed(
            lambda: write_raw_logs(Fleet(args.pings, args.seed, scenario).submissions(), work / "gen"))
        bodies = [(s.path, gzip.decompress(s.body), s.timestamp_ms, s.client_ip)
                  for s in Fleet(args.pings, args.seed, scenario).submissions()]
        mean_kb = sum(len(b) for _, b, _, _ in bodies) / len(bodies) / 1024
        floor_cpu, floor_wall, _ = timed(lambda: floor(bodies, scenario.gzip_level, work / "floor"))
        del bodies
        n = args.pings
        floor_rate = n / floor_wall
        print(f"pings: {n} (seed {args.seed}), {mean_kb:.1f} KB uncompressed on average, "
              f"gzip level {scenario.gzip_level}, {written.bytes / 1e6:.1f} MB of raw log")
        print("                                               CPU s   pings/CPU s   wall s   pings/s")
        print(f"generation into raw logs (everything)        {gen_cpu:6.2f}  {n / gen_cpu:11,.0f}  "
              f"{gen_wall:7.2f}  {n / gen_wall:8,.0f}")
        print(f"floor: gzip + frame + write the same bodies   {floor_cpu:6.2f}  {n / floor_cpu:11,.0f}  "
              f"{floor_wall:7.2f}  {floor_rate:8,.0f}")
        print(f"ratio generation/floor: {floor_cpu / gen_cpu:.2f} by CPU time, {floor_wall / gen_wall:.2f} "
              f"by wall time  (target >= 0.50)")

        if args.http_pings:
            n = args.http_pings
            config = ReceiverConfig(log_path=str(work / "received"), port=0, workers=args.workers,
                                    include_request_ip=True)
            with start_receiver(config) as receiver:
                summary = send(Fleet(n, args.seed, scenario).submissions(),
                               SendConfig(receiver.url, concurrency=args.concurrency))
                ready = list(Fleet(n, args.seed + 1, scenario).submissions())
                pre = send(ready, SendConfig(receiver.url, concurrency=args.concurrency))
                receiver.stop()
            for s in (summary, pre):
                if not s.ok:
                    sys.exit("HTTP run failed: " + "; ".join(s.lines()))
            http_rate, pre_rate = n / summary.seconds, n / pre.seconds
            print(f"HTTP into the receiver ({args.workers} workers, durability {config.durability}, "
                  f"concurrency {args.concurrency}): {n} pings, {http_rate:,.0f} pings/s generated and "
                  f"posted, ratio to the floor's wall rate {http_rate / floor_rate:.2f}")
            print(f"HTTP of pre-generated submissions (client + receiver alone): {pre_rate:,.0f} pings/s, "
                  f"ratio {pre_rate / floor_rate:.2f}")
        print("(on a shared machine wall times move with the load; the CPU ratio is the steadier figure)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
