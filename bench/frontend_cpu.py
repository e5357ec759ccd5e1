#!/usr/bin/env python
"""CPU per request of the fast front end alone, this checkout against another.

On a shared machine wrk's req/s swings by 2-5x from run to run; CPU time per
request in one process is much steadier.  This feeds the gzip ping as
keep-alive requests, one ``data_received`` each, to ``HTTPProtocol`` with a
transport that only counts bytes and a raw-log writer that acknowledges at
once, so what is measured is parsing, the front end, routing, the stats log
and metrics: everything on the event-loop thread except the socket system
calls and the loop itself.  Each tree runs in its own subprocess, in turns,
``--rounds`` times; the best round of each is printed.

    bench/frontend_cpu.py [--before-tree DIR] [--requests 30000] [--rounds 5]

(DIR: for example ``git archive main | tar -x -C DIR``.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import asyncio, sys, tempfile, time
from pathlib import Path
from receiver.app import make_app
from receiver.config import ReceiverConfig
from receiver.metrics import Metrics
from receiver.protocol import FastServer, HTTPProtocol
from receiver.rawlog import read_records
from receiver.statslog import StatsLog

n = int(sys.argv[1])
body = next(read_records(Path(sys.argv[2]))).data
tmp = tempfile.mkdtemp()

class Writer:
    def __init__(self):
        self.metrics = Metrics()
    def submit(self, record):
        f = asyncio.get_running_loop().create_future()
        f.set_result(None)
        return f
    def submit_callback(self, record, callback):
        asyncio.get_running_loop().call_soon(callback, None)

class Transport:
    def __init__(self):
        self.out = 0
    def write(self, data):
        self.out += len(data)
    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 5555) if name == "peername" else default
    def pause_reading(self): pass
    def resume_reading(self): pass
    def is_closing(self): return False
    def can_write_eof(self): return True
    def write_eof(self): pass
    def close(self): pass

async def main():
    config = ReceiverConfig(port=0, log_path=tmp, motd="")
    writer = Writer()
    app = make_app(config, writer, writer.metrics, StatsLog(Path(tmp, "stats.log")))
    front = FastServer(app)
    proto = HTTPProtocol(app, front)
    t = Transport()
    proto.connection_made(t)
    reqs = [(b"POST /submit/telemetry/doc-%d/saved-session/Firefox/23.0.1/release/20130814063812"
             b" HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: %d\r\n\r\n" % (i, len(body)))
            + body for i in range(n)]
    cpu0 = time.process_time()
    for r in reqs:
        proto.data_received(r)
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    cpu = time.process_time() - cpu0
    assert t.out >= n * 100, t.out
    print(cpu / n * 1e6)

asyncio.run(main())
"""


def measure(tree: Path, requests: int, body_log: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, "-c", CHILD, str(requests), str(body_log)], cwd=tree,
                         env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{tree}: {out.stderr.strip()[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before-tree", help="another checkout to compare with")
    ap.add_argument("--requests", type=int, default=30000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    body_log = ROOT / "tests/fixtures/raw/telemetry1.v1.log"
    trees = {"this checkout": ROOT}
    if args.before_tree:
        trees["before"] = Path(args.before_tree).resolve()
    best = {name: float("inf") for name in trees}
    for i in range(args.rounds):
        for name, tree in trees.items():
            us = measure(tree, args.requests, body_log)
            best[name] = min(best[name], us)
            print(f"round {i + 1}: {name:14} {us:6.1f} us CPU per request", flush=True)
    print("best of each: " + ", ".join(f"{name} {us:.1f} us" for name, us in best.items()))
    if "before" in best:
        print(f"this checkout / before: {best['this checkout'] / best['before']:.2f}x the CPU")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
