#!/usr/bin/env python
"""Benchmark: the OS-distribution job on a generated layout, against a plain loop.

Measures, in one run on the same files: a plain single-process loop (read
each file, parse each record, count OS) as the baseline; the job on the local
engine with 1 and 2 mappers; and on the Dask engine (a LocalCluster of 2
workers, started outside the timing).  Prints records/s and each figure as
a ratio to the baseline, best of ``--repeat`` timings each (the machine may
be shared: compare figures from the same run only), and the CPU seconds
spent.  Targets: 2 mappers >= 1.6x the baseline's speed; 1 mapper within
1.4x of the baseline's time.

    .venv/bin/python bench/mapreduce.py [--records 100000] [--payload-kb 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from converter.layout import find_layout_files, read_layout_file  # noqa: E402
from converter.synthetic import make_records, write_layout  # noqa: E402
from mapreduce.job import JobConfig, run_job  # noqa: E402

JOB = REPO / "mapreduce" / "examples" / "os_distribution.py"
FILTER = REPO / "mapreduce" / "examples" / "filter_all.json"


def plain_loop(data: Path) -> tuple[Counter, int]:
    counts: Counter = Counter()
    n = 0
    for f in find_layout_files(data):
        for _, _, value in read_layout_file(f.path):
            counts[json.loads(value)["info"]["OS"]] += 1
            n += 1
    return counts, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--payload-kb", type=int, default=2)
    parser.add_argument("--keep", type=Path,
                        help="reuse/keep the generated layout in this directory")
    parser.add_argument("--repeat", type=int, default=2, help="best of N timings per figure")
    parser.add_argument("--no-dask", action="store_true")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-mapreduce-"))
    data = args.keep or root / "data"
    try:
        if not any(data.rglob("*.zst")) if data.exists() else True:
            t = time.perf_counter()
            write_layout(data, make_records(args.records, seed=1, payload_kb=args.payload_kb))
            print(f"generated {args.records} records ({args.payload_kb} KB each) "
                  f"in {time.perf_counter() - t:.1f}s")
        files = find_layout_files(data)
        print(f"layout: {len(files)} files, {sum(f.size for f in files) / 1e6:.1f} MB compressed")

        base = base_cpu = float("inf")
        for _ in range(args.repeat):
            t, c = time.perf_counter(), time.process_time()
            expected, n = plain_loop(data)
            base = min(base, time.perf_counter() - t)
            base_cpu = min(base_cpu, time.process_time() - c)
        print(f"{'':28s} {'wall':>8s} {'records/s':>10s} {'speed':>6s}  {'CPU s':>6s}")
        print(f"{'plain loop (baseline)':28s} {base:7.2f}s {n / base:10.0f} {1:6.2f}x  "
              f"{base_cpu:6.2f}")
        expected_lines = sorted(f"{k}\t{v}" for k, v in expected.items())

        runs = [("local, 1 mapper", "local", 1, None), ("local, 2 mappers", "local", 2, None)]
        cluster = None
        if not args.no_dask:
            from distributed import LocalCluster

            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address="127.0.0.1:0")
            runs.append(("dask, 2 workers", "dask", 2, cluster.scheduler_address))
        try:
            for label, engine, mappers, scheduler in runs:
                out = root / f"out-{engine}-{mappers}.txt"
                config = JobConfig(job_script=JOB, data_dir=data, work_dir=root / "work",
                                   output=out, input_filter=FILTER, num_mappers=mappers,
                                   engine=engine, scheduler=scheduler, progress=False)
                took = cpu = float("inf")
                for _ in range(args.repeat):
                    t, c = time.perf_counter(), time.process_time()
                    result = run_job(config, log=lambda m: None)
                    took = min(took, time.perf_counter() - t)
                    cpu = min(cpu, time.process_time() - c + result.cpu_seconds)
                ok = sorted(out.read_text().splitlines()) == expected_lines
                print(f"{label:28s} {took:7.2f}s {result.records / took:10.0f} "
                      f"{base / took:6.2f}x  {cpu:6.2f}  {'same counts' if ok else 'WRONG OUTPUT'}")
        finally:
            if cluster is not None:
                cluster.close()
        print("targets: 2 mappers >= 1.60x; 1 mapper >= 0.71x (within 1.4x of the baseline's time)")
        print("CPU s: CPU time of this process plus every map and reduce task; it shows the")
        print("framework's own cost even when a busy machine makes the wall times noisy")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
