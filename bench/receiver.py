#!/usr/bin/env python
"""Benchmark: the receiver under HTTP load, against a naive Tornado receiver.

Loads each server on loopback with ``wrk`` (Debian package ``wrk``) when it
is installed, else with a Python asyncio load generator, using two bodies: a
5 KB JSON document and the real gzip ping from ``tests/fixtures/raw``.  For
each it prints req/s, p50/p99 latency, and the records lost (acknowledged
with 200 but not in the finished raw logs: must be 0), and the ratio of our
receiver's req/s to the naive baseline measured in the same run.

The naive baseline is what one writes first: a ``tornado.web`` handler that
encodes the record and does write+flush per request, one file per process,
``fork_processes`` with the same process count (no fsync at all).  A second
baseline, ``naive-rp``, is the same handler with one SO_REUSEPORT socket per
process, to show how much of the gain is the balanced sockets alone.

Receivers measured (``--servers``, comma-separated): ``fsync`` and ``os`` are
ours with that durability and the defaults (fast front end on uvloop);
``fsync-asyncio`` is the same on the standard asyncio loop, ``fsync-tornado``
with Tornado's front end (to measure what uvloop and llhttp each bring).

    bench/receiver.py [--duration 5] [--connections 64] [--workers N] [--python-load]
                      [--bodies gzip-ping] [--servers naive,fsync,fsync-asyncio]

``wrk`` is a Debian package: ``apt-get install -y wrk``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from receiver.config import ReceiverConfig  # noqa: E402
from receiver.rawlog import RawLogReader, encode_record, read_records  # noqa: E402
from receiver.service import start_receiver  # noqa: E402

PATH = "/submit/telemetry/{n}/saved-session/Firefox/23.0.1/release/20130814063812"


SERVERS = {
    "naive": None, "naive-rp": None, "fsync-before": None,
    "fsync": dict(durability="fsync"),
    "os": dict(durability="os"),
    "fsync-asyncio": dict(durability="fsync", event_loop="asyncio"),
    "fsync-tornado": dict(durability="fsync", http_server="tornado"),
    "fsync-tornado-asyncio": dict(durability="fsync", http_server="tornado", event_loop="asyncio"),
}


# --- the naive baseline server ------------------------------------------------

def naive_server(log_path: str, workers: int, reuse_port: bool) -> None:
    """One file per process, write+flush per request; announces its port like ours.

    Without ``reuse_port`` the processes share one socket (``fork_processes``,
    what Tornado's docs show); with it each binds its own SO_REUSEPORT socket,
    so the kernel balances connections as it does for our receiver.
    """
    import tornado.ioloop
    import tornado.netutil
    import tornado.process
    import tornado.web
    from tornado.httpserver import HTTPServer

    if reuse_port:
        reserve = socket.socket()
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserve.bind(("127.0.0.1", 0))
        port = reserve.getsockname()[1]
    else:
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        port = sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    tornado.process.fork_processes(workers, max_restarts=0)
    if reuse_port:
        sockets = tornado.netutil.bind_sockets(port, "127.0.0.1", reuse_port=True)
    name = os.path.join(log_path, f"telemetry.v1.naive.{os.getpid()}.{int(time.time() * 1000)}")
    f = open(name, "ab")

    class Submit(tornado.web.RequestHandler):
        def post(self, path):
            f.write(encode_record(path, self.request.body, int(time.time() * 1000)))
            f.flush()
            self.write("OK")

    def stop():
        f.close()
        os.rename(name, name + ".finished")
        os._exit(0)

    app = tornado.web.Application([(r"/submit/telemetry/(.*)", Submit)])
    server = HTTPServer(app)
    server.add_sockets(sockets)
    loop = tornado.ioloop.IOLoop.current()
    # Stop between requests, never inside a write.
    loop.asyncio_loop.add_signal_handler(signal.SIGTERM, stop)
    loop.start()


class NaiveHandle:
    def __init__(self, log_path: str, workers: int, reuse_port: bool):
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--naive-server", log_path, str(workers),
             str(int(reuse_port))],
            stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        m = re.match(r"listening on (http://127.0.0.1:(\d+))", line)
        if not m:
            raise SystemExit(f"naive server did not start: {line!r}")
        self.url = m.group(1)
        time.sleep(0.5)

    def stop(self) -> None:
        for pid in _children(self.process.pid):
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


class TreeHandle:
    """Another checkout's receiver (``--before-tree``), e.g. main before a change.

    Started with that tree first on PYTHONPATH and a config holding only the
    keys every version knows, so the same run measures old and new code.
    """

    def __init__(self, tree: str, log_path: str, workers: int, durability: str):
        from receiver.service import RunningReceiver

        config_dir = tempfile.mkdtemp(prefix="receiver-before-")
        config_file = Path(config_dir, "receiver.json")
        config_file.write_bytes(orjson.dumps({"port": 0, "log_path": log_path, "workers": workers,
                                              "durability": durability, "motd": ""}))
        env = dict(os.environ, PYTHONPATH=tree, PYTHONUNBUFFERED="1")
        process = subprocess.Popen([sys.executable, "-m", "receiver", "--config", str(config_file)],
                                   cwd=tree, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   text=True, env=env, bufsize=1)
        self.handle = RunningReceiver(process, ReceiverConfig(log_path=log_path, workers=workers),
                                      config_dir)
        if not self.handle._ready.wait(30) or not self.handle.port:
            self.handle.kill()
            raise SystemExit(f"the receiver in {tree} did not start: {self.handle.output[-5:]}")
        self.handle.wait_for_workers(workers)
        self.url = self.handle.url
        self.process = process

    def stop(self) -> None:
        self.handle.stop()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its live children, from /proc."""
    total = 0.0
    for p in [pid] + _children(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# --- load generators ------------------------------------------------------------

def run_wrk(url: str, body_file: Path, duration: float, connections: int, threads: int) -> dict:
    script = body_file.with_suffix(".lua")
    script.write_text(f"""
wrk.method = "POST"
local f = io.open("{body_file}", "rb"); wrk.body = f:read("*a"); f:close()
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, string.format("{PATH.replace('{n}', '%d')}", counter))
end
""")
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
            "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _ms(re.search(r"50%\s+(\S+)", out).group(1)),
        "p99_ms": _ms(re.search(r"99%\s+(\S+)", out).group(1)),
        "ok": total - non2xx,
        "failed": non2xx,
        "socket_errors": errors.group(1) if errors else "",
    }


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if m is None:  # wrk prints e.g. "-nan" when a run completed no request
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[m.group(2)]


def run_python_load(url: str, body: bytes, duration: float, connections: int) -> dict:
    """A keep-alive asyncio load generator: much slower than wrk, so it may be the bottleneck."""
    host, port = url.split("//")[1].split(":")
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0}

    async def client(cid: int, deadline: float) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            path = PATH.format(n=f"{cid}-{n}")
            t0 = time.perf_counter()
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + body)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            counts["ok" if status.split()[1] == b"200" else "failed"] += 1
        writer.close()

    async def main() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, t0 + duration) for i in range(connections)))
        return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000, **counts, "socket_errors": ""}


def count_records(log_path: Path) -> tuple[int, int]:
    records = problems = 0
    for p in log_path.iterdir():
        reader = RawLogReader(p)
        for _ in reader:
            records += 1
        problems += len(reader.stats.errors) + (0 if p.name.endswith(".finished") else 1)
    return records, problems


# --- the run ----------------------------------------------------------------------

def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--naive-server":
        return naive_server(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0, help="0 = one per CPU")
    ap.add_argument("--python-load", action="store_true",
                    help="use the Python load generator even if wrk exists")
    ap.add_argument("--before-tree", help="a checkout (e.g. git archive of main) measured "
                                          "as the server fsync-before")
    ap.add_argument("--bodies", default="json-5KB,gzip-ping",
                    help="comma-separated: json-5KB, gzip-ping")
    ap.add_argument("--servers", default="naive,naive-rp,fsync,os",
                    help="comma-separated: " + ", ".join(SERVERS))
    args = ap.parse_args()
    workers = args.workers or len(os.sched_getaffinity(0))
    use_wrk = shutil.which("wrk") is not None and not args.python_load
    if not use_wrk and not args.python_load:
        print("wrk is not installed: using the slower Python load generator, which may be the "
              "bottleneck.  Install wrk with: apt-get install -y wrk", file=sys.stderr)
    servers = args.servers.split(",")
    for name in servers:
        if name not in SERVERS:
            raise SystemExit(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")
    work = Path(tempfile.mkdtemp(prefix="bench-receiver-"))
    bodies = {
        "json-5KB": orjson.dumps({"ver": 1, "info": {"reason": "saved-session"},
                                  "pad": "x" * 5000}),
        "gzip-ping": next(read_records(ROOT / "tests/fixtures/raw/telemetry1.v1.log")).data,
    }
    assert bodies["gzip-ping"][:2] == b"\x1f\x8b" and len(gzip.decompress(bodies["gzip-ping"])) > 0
    print(f"load: {'wrk' if use_wrk else 'python asyncio'}, {args.connections} connections, "
          f"{args.duration:g}s per run, {workers} worker processes; "
          "machine shared, figures are noisy")
    bodies = {k: v for k, v in bodies.items() if k in args.bodies.split(",")}
    results = {}
    try:
        for body_name, body in bodies.items():
            body_file = work / f"{body_name}.body"
            body_file.write_bytes(body)
            for server in servers:
                log_path = work / f"{body_name}-{server}"
                log_path.mkdir()
                if server.startswith("naive"):
                    handle = NaiveHandle(str(log_path), workers, reuse_port=server == "naive-rp")
                elif server == "fsync-before":
                    if not args.before_tree:
                        raise SystemExit("fsync-before needs --before-tree DIR")
                    handle = TreeHandle(args.before_tree, str(log_path), workers, "fsync")
                else:
                    handle = start_receiver(ReceiverConfig(port=0, log_path=str(log_path),
                                                           workers=workers, motd="",
                                                           **SERVERS[server]))
                cpu0 = cpu_seconds(handle.process.pid)
                try:
                    if use_wrk:
                        r = run_wrk(handle.url, body_file, args.duration, args.connections, 2)
                    else:
                        r = run_python_load(handle.url, body, args.duration, args.connections)
                    r["cpu_us"] = ((cpu_seconds(handle.process.pid) - cpu0)
                                   / max(1, r["ok"] + r["failed"]) * 1e6)
                finally:
                    handle.stop()
                records, problems = count_records(log_path)
                r["lost"] = max(0, r["ok"] - records)
                r["log_problems"] = problems
                results[body_name, server] = r
                print(f"{body_name:10} {server:8} {r['rps']:9.0f} req/s  "
                      f"p50 {r['p50_ms']:7.2f} ms  "
                      f"p99 {r['p99_ms']:7.2f} ms  {r['cpu_us']:4.0f} us CPU/req  "
                      f"200s {r['ok']:7d}  lost {r['lost']}  "
                      f"log problems {problems}  {r['socket_errors']}", flush=True)
            for baseline in ("naive", "naive-rp"):
                if baseline not in servers:
                    continue
                base = results[body_name, baseline]["rps"]
                for server in servers:
                    if server.startswith("naive"):
                        continue
                    ratio = results[body_name, server]["rps"] / base
                    cpu = results[body_name, baseline]["cpu_us"] / results[body_name, server]["cpu_us"]
                    print(f"{body_name:10} ratio {server} / {baseline}: {ratio:.2f}x req/s, "
                          f"{cpu:.2f}x less CPU per request"
                          + ("  (target >= 3.5x over naive)" if server == "fsync"
                             and baseline == "naive" else ""), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
