#!/usr/bin/env python
"""Where a request's time goes in one receiver worker, under wrk load.

Runs one worker in this process (the real ``_serve``: front end, group commit,
stats log, metrics) under ``cProfile``, loads it with ``wrk`` posting the real
gzip ping on 64 keep-alive connections, and splits the event-loop thread's CPU
time by component:

- parsing: llhttp (``feed_data`` itself) or Tornado's HTTP1Connection/IOStream
- front end: our protocol code (callbacks, answer queue) or Tornado's delegate
- app: routing, record encoding, client IP
- group commit (loop side): queueing records, resolving futures; the writer
  thread's write+fdatasync is reported apart (from the fsync metrics)
- stats log, metrics
- event loop: the loop, transports, socket reads and writes, timers

cProfile slows Python code by about 2x and C code not at all, so the shares
are indicative; the req/s printed is without the profiler (a second run).

    bench/profile_receiver.py [--front fast|tornado] [--loop uvloop|asyncio] [--duration 5]

``wrk`` is a Debian package: ``apt-get install -y wrk``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib.util
import os
import pstats
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from receiver.config import ReceiverConfig  # noqa: E402
from receiver.rawlog import read_records  # noqa: E402
from receiver.supervisor import bind_socket  # noqa: E402
from receiver.worker import _serve, loop_factory  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_receiver", ROOT / "bench" / "receiver.py")
bench_receiver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_receiver)

CATEGORIES = [
    ("parsing (llhttp)", lambda f, n: "feed_data" in n and "httptools" in (f + n)),
    ("parsing (Tornado HTTP1Connection, IOStream)",
     lambda f, n: f.endswith(("http1connection.py", "iostream.py", "httputil.py"))),
    ("front end (protocol.py / Tornado delegate)",
     lambda f, n: f.endswith("protocol.py") or (f.endswith("app.py") and "_Exchange" in n)),
    ("stats log", lambda f, n: f.endswith("statslog.py") or "orjson" in n or "strftime" in n),
    ("metrics", lambda f, n: f.endswith("metrics.py")),
    ("group commit, loop side (logwriter.py)", lambda f, n: f.endswith("logwriter.py")),
    ("app (routing, record encoding)", lambda f, n: f.endswith(("app.py", "rawlog.py"))),
    ("socket writes (transport.write)", lambda f, n: "write" in n and ("Transport" in n
                                                                      or "transport" in n)),
]


def categorize(stats: pstats.Stats) -> dict[str, float]:
    out: dict[str, float] = {}
    for (file, _line, name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
        label = "event loop, sockets, futures, timers (the rest)"
        for cat, test in CATEGORIES:
            if test(file, name):
                label = cat
                break
        out[label] = out.get(label, 0.0) + tottime
    return out


def run(config: ReceiverConfig, body_file: Path, duration: float, profile: bool) -> tuple:
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    result: dict = {}

    def load() -> None:
        time.sleep(0.5)
        result.update(bench_receiver.run_wrk(url, body_file, duration, 64, 1))
        os.kill(os.getpid(), signal.SIGTERM)

    profiler = cProfile.Profile() if profile else None
    thread = threading.Thread(target=load)
    thread.start()
    cpu0 = time.process_time()
    with asyncio.Runner(loop_factory=loop_factory(config.event_loop)) as runner:
        if profiler:
            profiler.enable()
        runner.run(_serve(config, sock, None, 0))
        if profiler:
            profiler.disable()
    cpu = time.process_time() - cpu0
    thread.join()
    sock.close()
    return result, cpu, profiler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--front", default="fast", choices=("fast", "tornado"))
    ap.add_argument("--loop", default="uvloop", choices=("uvloop", "asyncio"))
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--no-stats-log", action="store_true")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    work = Path(tempfile.mkdtemp(prefix="profile-receiver-"))
    try:
        body_file = work / "gzip-ping.body"
        body_file.write_bytes(next(read_records(ROOT / "tests/fixtures/raw/telemetry1.v1.log")).data)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # _serve installs its own handler
        config = ReceiverConfig(port=0, log_path=str(work / "logs"), motd="", hostname="profile",
                                http_server=args.front, event_loop=args.loop,
                                stats_log_file=None if args.no_stats_log else str(work / "stats.log"))
        plain, plain_cpu, _ = run(config, body_file, args.duration, profile=False)
        prof, cpu, profiler = run(config, body_file, args.duration, profile=True)
        stats = pstats.Stats(profiler)
        cats = categorize(stats)
        total = sum(cats.values())
        n = prof["ok"] + prof["failed"]
        print(f"one worker, front end {args.front}, loop {args.loop}, durability fsync, "
              f"stats log {'off' if args.no_stats_log else 'on'}, metrics on, wrk -c64, gzip ping")
        print(f"without profiler: {plain['rps']:.0f} req/s, p50 {plain['p50_ms']:.2f} ms, "
              f"p99 {plain['p99_ms']:.2f} ms, "
              f"{plain_cpu / max(1, plain['ok']) * 1e6:.0f} us CPU per request (all threads)")
        print(f"with profiler: {prof['rps']:.0f} req/s; event-loop thread time per request "
              f"by component (profiled, {total / max(1, n) * 1e6:.0f} us in all):")
        for label, t in sorted(cats.items(), key=lambda kv: -kv[1]):
            print(f"  {label:50} {t / max(1, n) * 1e6:7.1f} us  {100 * t / total:5.1f}%")
        if os.environ.get("PROFILE_TOP"):
            stats.sort_stats("tottime").print_stats(int(os.environ["PROFILE_TOP"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
