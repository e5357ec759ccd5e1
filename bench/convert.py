#!/usr/bin/env python3
"""Benchmark: ``telemetry process`` against a floor measured in the same run.

Builds a raw dataset from variations of the fixture ping (fresh docIds,
mixed dimensions, three receive days), split into several raw files, then:

* floor: one Python loop over the same records that only gunzips, parses,
  serializes and compresses (zstd level 3), i.e. the least any converter does;
* ``telemetry process`` with 1 worker and with 2 workers (real subprocesses,
  histograms from a disk cache, output on the local disk).

Prints input MB/s and records/s for each and the ratios (targets: 1 worker
>= 40% of the floor, 2 workers >= 1.7x of 1 worker).  On a shared machine
the figures are noisy: run it twice and look at the spread.

    bench/convert.py --size-mb 100 --files 8
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import zstandard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from converter.revisions import write_revision  # noqa: E402
from converter.variations import base_record, write_variations  # noqa: E402
from receiver.rawlog import read_records  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"


def build_dataset(directory: Path, size_mb: float, files: int) -> list[Path]:
    base = base_record(FIXTURES / "raw" / "telemetry1.v1.log")
    per_record = len(base.data) + 120
    n = max(files, int(size_mb * 1e6 / per_record))
    per_file = -(-n // files)
    return [write_variations(directory / f"telemetry.v1.bench.{i}.finished", base, per_file, seed=i,
                             compresslevel=6) for i in range(files)]


def floor(raw_files: list[Path]) -> tuple[float, float, int]:
    """Gunzip + parse + serialize + compress every record: (wall s, CPU s, records)."""
    start, cpu = time.perf_counter(), time.process_time()
    n = 0
    with open(Path(tempfile.gettempdir()) / "floor.zst", "wb") as out:
        comp = zstandard.ZstdCompressor(level=3).compressobj()
        for raw in raw_files:
            for rec in read_records(raw):
                doc = orjson.loads(gzip.decompress(rec.data))
                out.write(comp.compress(rec.path.encode() + b"\t" + orjson.dumps(doc) + b"\n"))
                n += 1
        out.write(comp.flush())
    return time.perf_counter() - start, time.process_time() - cpu, n


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_process(raw_files: list[Path], out: Path, cache: Path,
                workers: int) -> tuple[float, float, float]:
    """Run the real command: (wall s, CPU s of the command, CPU s its workers spent converting)."""
    telemetry = Path(sys.executable).parent / "telemetry"
    args = [str(telemetry), "process", *map(str, raw_files), "--output", str(out),
            "--schema", str(FIXTURES / "telemetry_schema.json"), "--histogram-cache", str(cache),
            "--workers", str(workers), "--no-progress"]
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"telemetry process failed: {done.stderr or done.stdout}")
    found = re.search(r"([\d.]+) CPU s converting", done.stdout)
    return seconds, _children_cpu() - cpu, float(found.group(1)) if found else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=100,
                        help="raw input size (default 100 MB)")
    parser.add_argument("--files", type=int, default=8, help="raw files to split it into")
    parser.add_argument("--dir", help="work directory (default: a temporary one, removed)")
    args = parser.parse_args()

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        raw_dir = work / "raw"
        raw_dir.mkdir(parents=True, exist_ok=True)
        cache = work / "cache"
        write_revision(cache, "releases/mozilla-release", "a55c55edf302",
                       (FIXTURES / "histograms" / "a55c55edf302.Histograms.json").read_bytes())
        t = time.perf_counter()
        raw_files = build_dataset(raw_dir, args.size_mb, args.files)
        mb = sum(p.stat().st_size for p in raw_files) / 1e6
        built = time.perf_counter() - t
        print(f"dataset: {mb:.1f} MB in {len(raw_files)} raw files (built in {built:.1f} s)")

        floor_s, floor_cpu, n = floor(raw_files)
        results = {"floor (gunzip+parse+serialize+compress)": (floor_s, floor_cpu, floor_cpu)}
        for workers in (1, 2):
            results[f"telemetry process, {workers} worker(s)"] = run_process(
                raw_files, work / f"out{workers}", cache, workers)
        print(f"{'':45s} {'wall':>9s}  {'MB/s':>7s}  {'records/s':>9s}  {'CPU':>8s}  "
              f"{'converting':>10s}")
        for name, (seconds, cpu, converting) in results.items():
            # forkserver workers are grandchildren: their CPU shows in "converting" only
            cpu_text = f"{cpu:6.2f} s" if "2 worker" not in name else "     n/a"
            print(f"{name:45s} {seconds:7.2f} s  {mb / seconds:7.1f}  {n / seconds:9.0f}  "
                  f"{cpu_text}"
                  f"  {converting:8.2f} s")
        one, one_cpu, one_conv = results["telemetry process, 1 worker(s)"]
        two, _, two_conv = results["telemetry process, 2 worker(s)"]
        print(f"1 worker / floor: {floor_s / one:.0%} wall, {floor_cpu / one_cpu:.0%} CPU "
              "(target >= 40%)")
        print(f"2 workers / 1 worker: {one / two:.2f}x wall (target >= 1.7x; needs 2 idle cores); "
              f"CPUs kept busy converting: {one_conv / one:.2f} with 1 worker, "
              f"{two_conv / two:.2f} with 2")
        print(f"load average while running: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
              "(figures above 1 per CPU mean the machine was shared)")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
