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

Also runs variants without the profiler (asyncio loop, no stats log, no
fsync, Tornado front end) and prints req/s, p50, p99 and CPU per request for
each: the differences are what each component costs.

    bench/profile_receiver.py [--duration 5] [--variants 0,1,2]

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
    ("event loop C code and idle wait", lambda f, n: f.endswith("runners.py") and n == "run"),
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
        label = "event loop in Python: callbacks, futures, timers (the rest)"
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


VARIANTS = {
    "default (fast, uvloop, fsync, stats log)": {},
    "event loop: asyncio": dict(event_loop="asyncio"),
    "no stats log": dict(stats_log_file=None),
    "durability os (no fdatasync)": dict(durability="os"),
    "no metrics endpoint": dict(metrics=False),
    "front end: tornado": dict(http_server="tornado"),
    "tornado on asyncio (the old default's loop)": dict(http_server="tornado",
                                                        event_loop="asyncio"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--variants", default=",".join(str(i) for i in range(len(VARIANTS))),
                    help="which variants to run, by index (default all)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    work = Path(tempfile.mkdtemp(prefix="profile-receiver-"))
    try:
        body_file = work / "gzip-ping.body"
        body_file.write_bytes(next(read_records(ROOT / "tests/fixtures/raw/telemetry1.v1.log")).data)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # _serve installs its own handler
        base = ReceiverConfig(port=0, log_path=str(work / "logs"), motd="", hostname="profile",
                              stats_log_file=str(work / "stats.log"))
        print("one worker in this process, wrk -t1 -c64 posting the gzip ping; "
              "CPU per request counts every thread (loop and writer)")
        chosen = [list(VARIANTS)[int(i)] for i in args.variants.split(",")]
        for name in chosen:
            r, cpu, _ = run(base.replace(**VARIANTS[name]), body_file, args.duration,
                            profile=False)
            print(f"  {name:45} {r['rps']:7.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                  f"p99 {r['p99_ms']:7.2f} ms  {cpu / max(1, r['ok']) * 1e6:5.0f} us CPU/request",
                  flush=True)
        prof, cpu, profiler = run(base, body_file, args.duration, profile=True)
        stats = pstats.Stats(profiler)
        cats = categorize(stats)
        n = prof["ok"] + prof["failed"]
        loop_and_idle = cats.pop("event loop C code and idle wait", 0.0)
        total = sum(cats.values())
        print(f"default under cProfile ({prof['rps']:.0f} req/s): Python time per request on "
              f"the event-loop thread, {total / max(1, n) * 1e6:.0f} us in all "
              f"(the loop's own C code and its idle wait, {loop_and_idle:.1f}s, left out):")
        for label, t in sorted(cats.items(), key=lambda kv: -kv[1]):
            print(f"  {label:50} {t / max(1, n) * 1e6:7.1f} us  {100 * t / total:5.1f}%")
        if os.environ.get("PROFILE_TOP"):
            stats.sort_stats("tottime").print_stats(int(os.environ["PROFILE_TOP"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
