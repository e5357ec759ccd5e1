"""bench/chaos.py's parts, briefly: the fault proxy does what it says, a disk-full trial passes.

The campaign itself (hundreds of trials) is a benchmark: ``bench/chaos.py``.
"""

from __future__ import annotations

import http.client
import importlib.util
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.append(str(BENCH))
spec = importlib.util.spec_from_file_location("bench_chaos", BENCH / "chaos.py")
chaos = importlib.util.module_from_spec(spec)
sys.modules["bench_chaos"] = chaos  # its dataclasses look themselves up there
spec.loader.exec_module(chaos)


@pytest.fixture
def upstream():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_PUT(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(body)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1], seen
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("action, status, forwarded", [
    ("pass", 200, b"0123456789"),
    ("error:503:SlowDown", 503, None),
    ("after:500", 500, b"0123456789"),
    ("truncate", 200, b"01234"),
    ("reset", None, None),
    ("reset-after", None, b"0123456789"),
])
def test_fault_proxy_actions(upstream, action, status, forwarded):
    port, seen = upstream
    with chaos.FaultProxy(port, lambda method, path: action) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            conn.request("PUT", "/bucket/key", body=b"0123456789")
            resp = conn.getresponse()
            got = resp.status
            body = resp.read()
        except (OSError, http.client.HTTPException):
            got = body = None
        conn.close()
    assert got == status
    assert seen == ([forwarded] if forwarded is not None else [])
    if action.startswith("error:503:SlowDown"):
        assert b"<Code>SlowDown</Code>" in body
    assert proxy.counts == {action if action.startswith("error") else action.split(":")[0]: 1}


def test_disk_full_trial_passes(tmp_path):
    """One disk-full trial (a 2 MiB tmpfs as root, else RLIMIT_FSIZE): 507/500, nothing lost."""
    ctx = chaos.Context(tmp_path)
    try:
        scenario = next(s for s in chaos.SCENARIOS if s.run is chaos.receiver_disk_full)
        row = chaos.run_scenario(ctx, scenario, 1)
    finally:
        ctx.close()
    assert row.ok(), (row, row.notes)
    assert row.acknowledged > 10 and row.stored == row.acknowledged
    assert row.recoveries
