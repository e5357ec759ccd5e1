"""The receiver over real sockets: status codes, endpoints, stored records, stats log.

Every test runs against both front ends (the fast protocol and Tornado's
HTTPServer), each a real ``python -m receiver`` subprocess on a free port.
"""

from __future__ import annotations

import http.client
import socket
import time

import orjson
import pytest

from receiver.config import ReceiverConfig
from receiver.rawlog import RawLogReader
from receiver.service import start_receiver

PREFIX = "/submit/telemetry/"


@pytest.fixture(scope="module", params=["fast", "tornado"])
def receiver(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"recv-{request.param}")
    config = ReceiverConfig(port=0, workers=1, log_path=str(base / "logs"), include_request_ip=True,
                            stats_log_file=str(base / "stats.log"), stats_flush_ms=250,
                            max_data_length=1000, max_path_length=100,
                            http_server=request.param, motd="")
    with start_receiver(config) as r:
        yield r


def request(r, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(r.host, r.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), resp
    finally:
        conn.close()


def raw_request(r, data: bytes) -> tuple[int, bytes]:
    """Send bytes as they are and read the answer until the server closes."""
    with socket.create_connection((r.host, r.port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                c = s.recv(65536)
            except ConnectionResetError:
                break
            if not c:
                break
            chunks.append(c)
    reply = b"".join(chunks)
    return int(reply.split(b" ", 2)[1]), reply


def stored(r) -> list:
    out = []
    for p in sorted(r.log_path.iterdir()):
        out.extend(RawLogReader(p))
    return out


def find(r, path):
    return [rec for rec in stored(r) if rec.path == path]


def test_post_is_stored_verbatim_and_query_ignored(receiver):
    body = b'{"ver": 1, "info": {}}\n\x00binary'
    path = "doc-1/saved-session/Firefox/23.0/release/20130814063812"
    before = time.time() * 1000
    status, text, _ = request(receiver, "POST", PREFIX + path + "?v=2&x=y", body)
    assert (status, text) == (200, b"OK")
    [rec] = find(receiver, path)
    assert rec.data == body
    assert before - 5 <= rec.timestamp <= time.time() * 1000 + 5


def test_gzip_body_stays_gzip(receiver, fixtures_dir):
    gz = next(iter(RawLogReader(fixtures_dir / "raw" / "telemetry1.v1.log"))).data
    # Over this receiver's 1000-byte limit: 413; the default limit takes it (see durability tests).
    assert request(receiver, "POST", PREFIX + "gz", gz)[0] == 413
    small = __import__("gzip").compress(b'{"ver": 1}')
    assert request(receiver, "POST", PREFIX + "gz", small, {"Content-Encoding": "gzip"})[0] == 200
    assert find(receiver, "gz")[0].data == small


def test_forwarded_for_then_peer(receiver):
    fwd = {"X-Forwarded-For": "203.0.113.7"}
    assert request(receiver, "POST", PREFIX + "ip-fwd", b"x", fwd)[0] == 200
    assert request(receiver, "POST", PREFIX + "ip-peer", b"x")[0] == 200
    assert find(receiver, "ip-fwd")[0].ip == "203.0.113.7"
    raw_request(receiver, b"POST /submit/telemetry/ip-two HTTP/1.1\r\n"
                          b"X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n"
                          b"Connection: close\r\nContent-Length: 1\r\n\r\nx")
    assert find(receiver, "ip-two")[0].ip == "1.1.1.1,2.2.2.2"
    assert find(receiver, "ip-peer")[0].ip == "127.0.0.1"
    assert all(".v2." in p.name for p in receiver.log_path.iterdir())


@pytest.mark.parametrize("method, path, body, headers, code", [
    ("GET", "/status", None, {}, 200),
    ("GET", "/status?check=1", None, {}, 200),
    ("GET", "/nothing", None, {}, 404),
    ("GET", PREFIX + "abc", None, {}, 404),
    ("POST", "/submit/other/abc", b"x", {}, 404),
    ("POST", PREFIX, b"x", {}, 404),
    ("PUT", PREFIX + "abc", b"x", {}, 405),
    ("DELETE", "/status", None, {}, 405),
    ("POST", PREFIX + "a" * 101, b"x", {}, 414),
    ("POST", PREFIX + "a" * 100, b"x", {}, 200),
    ("POST", PREFIX + "big", b"x" * 1001, {}, 413),
    ("POST", PREFIX + "max", b"x" * 1000, {}, 200),
    ("POST", PREFIX + "empty", b"", {}, 411),
])
def test_status_codes(receiver, method, path, body, headers, code):
    status, text, resp = request(receiver, method, path, body, headers)
    assert status == code
    assert text and resp.reason  # a short plain-text reason
    if code == 405:
        assert resp.getheader("Allow") == "GET, HEAD, POST"


@pytest.mark.parametrize("data, code", [
    (b"POST /submit/telemetry/nolen HTTP/1.1\r\nHost: x\r\n\r\n", 411),
    (b"POST /submit/telemetry/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"1\r\nx\r\n0\r\n\r\n", 411),
    (b"POST /submit/telemetry/badlen HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    (b"POST /submit/telemetry/huge HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n", 413),
    (b"POST /submit/telemetry/%FF%FE/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
     b"Content-Length: 1\r\n\r\nx", 400),
])
def test_malformed_requests(receiver, data, code):
    assert raw_request(receiver, data)[0] == code


def test_keep_alive_and_pipelining(receiver):
    with socket.create_connection((receiver.host, receiver.port), timeout=10) as s:
        post = b"POST /submit/telemetry/pipe-%d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        reqs = (b"".join(post % i for i in range(5))
                + b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        s.sendall(reqs)
        reply = b""
        while (c := s.recv(65536)):
            reply += c
    assert reply.count(b"HTTP/1.1 200 OK") == 6
    piped = [r.path for r in stored(receiver) if r.path.startswith("pipe-")]
    assert piped == [f"pipe-{i}" for i in range(5)]


def test_expect_continue(receiver):
    with socket.create_connection((receiver.host, receiver.port), timeout=10) as s:
        s.sendall(b"POST /submit/telemetry/cont HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 100")
        s.sendall(b"body")
        assert b"200 OK" in s.recv(1000)
    assert find(receiver, "cont")[0].data == b"body"


def test_metrics_and_stats_log(receiver):
    assert request(receiver, "POST", PREFIX + "m1", b"12345")[0] == 200
    assert request(receiver, "GET", "/nope")[0] == 404
    status, text, resp = request(receiver, "GET", "/metrics")
    assert status == 200 and resp.getheader("Content-Type").startswith("text/plain")
    metrics = {}
    for line in text.decode().splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            metrics[name] = float(value)
    assert metrics['receiver_requests_total{code="200"}'] >= 1
    assert metrics['receiver_requests_total{code="404"}'] >= 1
    assert metrics["receiver_stored_records_total"] == len(stored(receiver))
    on_disk = sum(p.stat().st_size for p in receiver.log_path.iterdir())
    assert metrics["receiver_stored_bytes_total"] == on_disk
    assert metrics["receiver_fsync_batch_records_count"] >= 1
    inf = metrics['receiver_fsync_seconds_bucket{le="+Inf"}']
    assert inf == metrics["receiver_fsync_seconds_count"]
    stats_file = receiver.log_path.parent / "stats.log"
    deadline = time.time() + 10
    while time.time() < deadline:
        lines = [orjson.loads(x) for x in stats_file.read_bytes().splitlines()]
        urls = {x["url"] for x in lines}
        if PREFIX + "m1" in urls and "/nope" in urls:
            break
        time.sleep(0.1)
    m1 = next(x for x in lines if x["url"] == PREFIX + "m1")
    assert set(m1) == {"url", "duration_ms", "code", "size", "message", "timestamp"}
    assert (m1["code"], m1["size"], m1["message"]) == (200, 5, "OK")
    assert next(x for x in lines if x["url"] == "/nope")["code"] == 404


@pytest.mark.parametrize("data", [b"NONSENSE\r\n\r\n", b"GET /status HTTP/9.9\r\n\r\n",
                                  b"GET /status HTTP/1.1\r\nno colon here\r\n\r\n"])
def test_bad_request_heads(receiver, data):
    assert raw_request(receiver, data)[0] == 400


@pytest.mark.parametrize("front", ["fast", "tornado"])
def test_idle_and_stalled_connections_are_closed(tmp_path, front):
    config = ReceiverConfig(port=0, workers=1, log_path=str(tmp_path / "logs"),
                            idle_connection_timeout=0.5, header_timeout=0.5,
                            body_timeout=0.5, http_server=front, motd="")
    with start_receiver(config) as r:
        idle = socket.create_connection((r.host, r.port), timeout=10)
        stalled = socket.create_connection((r.host, r.port), timeout=10)
        stalled.sendall(b"POST /submit/telemetry/stall HTTP/1.1\r\nContent-Length: 100\r\n\r\n"
                        b"only part")
        for s in (idle, stalled):
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass
            s.close()
        assert request(r, "GET", "/status")[0] == 200
    assert find(r, "stall") == []


@pytest.mark.parametrize("front", ["fast", "tornado"])
def test_make_app_in_process(tmp_path, front):
    """The library path other code can embed: make_app + a writer + either front end."""
    import asyncio

    from tornado.httpclient import AsyncHTTPClient

    from receiver.app import make_app
    from receiver.supervisor import bind_socket
    from receiver.worker import make_writer, start_server
    from receiver.metrics import Metrics

    config = ReceiverConfig(port=0, log_path=str(tmp_path), http_server=front)

    async def scenario():
        metrics = Metrics()
        writer = make_writer(config, metrics, hostname="test")
        app = make_app(config, writer)
        sock = bind_socket("127.0.0.1", 0)
        server = await start_server(app, sock)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        client = AsyncHTTPClient()
        resp = await client.fetch(url + PREFIX + "in-process", method="POST", body=b"payload")
        bad = await client.fetch(url + "/elsewhere", raise_error=False)
        server.stop()
        await server.close_all_connections()
        await writer.close()
        sock.close()
        return resp.code, bad.code, metrics.snapshot()

    code, bad, snap = asyncio.run(scenario())
    assert (code, bad) == (200, 404)
    assert snap["requests_200"] == 1 and snap["requests_404"] == 1 and snap["records"] == 1
    [f] = tmp_path.iterdir()
    assert f.name.startswith("telemetry.v1.test.") and f.name.endswith(".finished")
    assert [(r.path, r.data) for r in RawLogReader(f)] == [("in-process", b"payload")]
