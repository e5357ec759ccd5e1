"""The HTTP front ends as a hostile client sees them: limits, smuggling, slow clients, pipelining.

Every test talks raw bytes to a real ``python -m receiver`` over loopback and
runs against both front ends.  Where Tornado reads a request differently from
llhttp (and docs/receiver.md documents it) the expected answer is given per
front end; everywhere else they must answer alike.
"""

from __future__ import annotations

import http.client
import os
import re
import resource
import select
import socket
import time

import httptools
import pytest

from receiver.app import KNOWN_METHODS
from receiver.config import ReceiverConfig
from receiver.rawlog import RawLogReader
from receiver.service import start_receiver

PREFIX = b"/submit/telemetry/"
LIMITS = dict(max_data_length=1000, max_path_length=100, max_header_length=2000,
              header_timeout=1.0, body_timeout=1.0, idle_connection_timeout=2.0)


@pytest.fixture(scope="module", params=["fast", "tornado"])
def receiver(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"http-{request.param}")
    config = ReceiverConfig(port=0, workers=1, log_path=str(base / "logs"),
                            http_server=request.param, motd="", **LIMITS)
    with start_receiver(config) as r:
        r.front = request.param
        yield r


def stored(r) -> list:
    out = []
    for p in sorted(r.log_path.iterdir()):
        out.extend(RawLogReader(p))
    return out


def exchange(r, data: bytes | list[bytes], quiet: float = 3.0) -> tuple[list[int], bool, bytes]:
    """Send ``data`` (pieces sent one by one), read until the server closes or goes quiet.

    Returns the final statuses in order (1xx left out), whether the server
    closed the connection, and the raw reply.
    """
    pieces = [data] if isinstance(data, bytes) else data
    with socket.create_connection((r.host, r.port), timeout=10) as s:
        for piece in pieces:
            s.sendall(piece)
        s.settimeout(quiet)
        reply, closed = b"", False
        while True:
            try:
                c = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not c:
                closed = True
                break
            reply += c
    codes = [int(c) for c in re.findall(rb"HTTP/1\.1 (\d{3}) ", reply) if not c.startswith(b"1")]
    return codes, closed, reply


def post(path: bytes, body: bytes = b"x", extra: bytes = b"") -> bytes:
    return (b"POST " + PREFIX + path + b" HTTP/1.1\r\nHost: x\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


CLOSE = b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


# --- limits ---------------------------------------------------------------------

def test_header_block_over_the_limit_is_431(receiver):
    big = b"X-Pad: " + b"a" * 2100 + b"\r\n"
    codes, closed, _ = exchange(receiver, post(b"h431", extra=big) + post(b"h431-after"))
    assert (codes, closed) == ([431], True)
    # Just under the limit is served.
    ok = b"X-Pad: " + b"a" * 1900 + b"\r\n"
    assert exchange(receiver, post(b"h-ok", extra=ok) + CLOSE)[:2] == ([200, 200], True)
    assert {r.path for r in stored(receiver)} >= {"h-ok"}
    assert not [r for r in stored(receiver) if r.path.startswith("h431")]


def test_huge_head_is_refused_and_closed(receiver):
    # 200 KB in one header line: fast answers 431 as the limit passes; Tornado
    # closes without an answer beyond twice the limit (documented).
    codes, closed, _ = exchange(receiver, b"GET /status HTTP/1.1\r\nX-Big: " + b"a" * 200_000)
    assert closed and codes == ([431] if receiver.front == "fast" else [])


def test_whitespace_padded_head_is_refused(receiver):
    # Optional whitespace that llhttp skips without reporting still counts.
    pieces = [b"GET /status HTTP/1.1\r\nX-Pad:"] + [b" " * 1000] * 10
    codes, closed, _ = exchange(receiver, pieces)
    assert closed and codes == ([431] if receiver.front == "fast" else [])


def test_long_request_target_is_414(receiver):
    target = b"/status?" + b"q" * 1300  # over url_prefix + max_path_length + 1 KiB of query
    codes, closed, _ = exchange(receiver, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (codes, closed) == ([414], True)
    # A query string within the allowance is fine (and ignored).
    assert exchange(receiver, b"GET /status?" + b"q" * 900 + b" HTTP/1.1\r\n"
                              b"Connection: close\r\n\r\n")[0] == [200]


def test_body_over_the_limit_is_413_before_it_is_read(receiver):
    head = b"POST " + PREFIX + b"big HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
    codes, closed, _ = exchange(receiver, head, quiet=5)  # no body sent: the answer comes anyway
    assert (codes, closed) == ([413], True)


# --- smuggling and desynchronisation -----------------------------------------------

SMUGGLING = [
    # (name, request, fast answer, tornado answer)
    ("space before colon", b"POST /submit/telemetry/s1 HTTP/1.1\r\nContent-Length : 5\r\n\r\nhello",
     400, 400),
    ("two different lengths", b"POST /submit/telemetry/s2 HTTP/1.1\r\nContent-Length: 1\r\n"
     b"Content-Length: 5\r\n\r\nhello", 400, 400),
    ("two equal lengths", b"POST /submit/telemetry/s3 HTTP/1.1\r\nContent-Length: 5\r\n"
     b"Content-Length: 5\r\n\r\nhello", 400, 400),
    ("length list", b"POST /submit/telemetry/s4 HTTP/1.1\r\nContent-Length: 5,5\r\n\r\nhello",
     400, 400),
    ("signed length", b"POST /submit/telemetry/s5 HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
     400, 400),
    ("length overflow", b"POST /submit/telemetry/s6 HTTP/1.1\r\n"
     b"Content-Length: 99999999999999999999999\r\n\r\nhello", 400, 400),
    ("length and chunked", b"POST /submit/telemetry/s7 HTTP/1.1\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, 400),
    ("chunked", b"POST /submit/telemetry/s8 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhello\r\n0\r\n\r\n", 411, 411),
    ("repeated Transfer-Encoding", b"POST /submit/telemetry/s18 HTTP/1.1\r\n"
     b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, 400),
    ("other coding", b"POST /submit/telemetry/s9 HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
     411, 411),
    ("NUL in a header", b"POST /submit/telemetry/s10 HTTP/1.1\r\nX-A: a\x00b\r\n"
     b"Content-Length: 5\r\n\r\nhello", 400, 400),
    ("control byte in a header", b"POST /submit/telemetry/s11 HTTP/1.1\r\nX-A: a\x01b\r\n"
     b"Content-Length: 5\r\n\r\nhello", 400, 400),
    ("unknown method", b"FOO /status HTTP/1.1\r\n\r\n", 400, 400),
    ("lower-case method", b"post /submit/telemetry/s12 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
     400, 400),
    ("HTTP/1.2", b"GET /status HTTP/1.2\r\n\r\n", 400, 400),
    ("HTTP/2.0", b"GET /status HTTP/2.0\r\n\r\n", 400, 400),
    ("HTTP/0.9", b"GET /status HTTP/0.9\r\n\r\n", 400, 400),
    ("absolute-form", b"POST http://example.com/submit/telemetry/s13 HTTP/1.1\r\n"
     b"Content-Length: 5\r\n\r\nhello", 400, 400),
    ("asterisk-form", b"OPTIONS * HTTP/1.1\r\n\r\n", 400, 400),
    ("raw non-ASCII target", b"POST /submit/telemetry/s14\xff HTTP/1.1\r\nContent-Length: 5\r\n"
     b"\r\nhello", 400, 400),
    ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\n\r\n", 400, 400),
    ("CONNECT to a path", b"CONNECT /status HTTP/1.1\r\n\r\n", 405, 405),
    ("upgrade with a body", b"POST /submit/telemetry/s15 HTTP/1.1\r\nConnection: Upgrade\r\n"
     b"Upgrade: h2c\r\nContent-Length: 5\r\n\r\nhello", 400, 400),
    ("obs-fold", b"POST /submit/telemetry/s16 HTTP/1.1\r\nX-A: a\r\n b\r\n"
     b"Content-Length: 5\r\n\r\nhello", 400, 400),
    # RFC 9112 lets a recipient take a bare LF as a line end; Tornado does,
    # llhttp refuses (documented).  Both read the same message either way.
    ("bare LF", b"POST /submit/telemetry/s17 HTTP/1.1\nContent-Length: 5\n\nhello", 400, 200),
]


@pytest.mark.parametrize("name, data, fast, tornado", SMUGGLING, ids=[c[0] for c in SMUGGLING])
def test_smuggling_and_desync_attempts(receiver, name, data, fast, tornado):
    expected = fast if receiver.front == "fast" else tornado
    # A second request rides behind the bad one: it must never be read.
    smuggled = post(b"smuggled-" + name.replace(" ", "-").encode())
    codes, closed, _ = exchange(receiver, data + smuggled)
    if expected == 200:  # the documented lenient reading: both requests served, in order
        assert codes == [200, 200]
        path = re.search(rb"/submit/telemetry/(\S+) ", data).group(1).decode()
        assert [r.data for r in stored(receiver) if r.path == path] == [b"hello"]
        return
    assert (codes, closed) == ([expected], True)
    paths = {r.path for r in stored(receiver)}
    assert not any(p.startswith("smuggled-") for p in paths), paths
    assert not any(p.startswith("s") and p[1:].isdigit() for p in paths), paths


def test_upgrade_without_a_body_is_answered_then_closed(receiver):
    codes, closed, _ = exchange(receiver, b"GET /status HTTP/1.1\r\nConnection: Upgrade\r\n"
                                          b"Upgrade: h2c\r\n\r\n\x00\x01binary frames")
    assert (codes, closed) == ([200], True)


def test_known_methods_are_the_ones_llhttp_accepts():
    class Sink:
        pass

    candidates = KNOWN_METHODS | {"DESCRIBE", "SETUP", "PLAY", "FOO", "get", "RECORD"}
    accepted = set()
    for m in candidates:
        try:
            httptools.HttpRequestParser(Sink()).feed_data(m.encode() + b" /a HTTP/1.1\r\n\r\n")
            accepted.add(m)
        except httptools.HttpParserUpgrade:
            accepted.add(m)
        except httptools.HttpParserError:
            pass
    assert accepted == KNOWN_METHODS


# --- slow and idle clients ------------------------------------------------------------

def _allow_open_files(n: int) -> None:
    """1,000 client sockets need more than a default soft limit of 1024 files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n:
        if hard != resource.RLIM_INFINITY and hard < n and os.geteuid() == 0:
            hard = n  # root may raise the hard limit too
        resource.setrlimit(resource.RLIMIT_NOFILE, (n if hard == resource.RLIM_INFINITY
                                                    else min(n, hard), hard))


def test_slowloris_does_not_stop_a_normal_client(receiver):
    _allow_open_files(4096)
    slow = []
    try:
        for i in range(1000):
            s = socket.create_connection((receiver.host, receiver.port), timeout=10)
            s.sendall(b"POST /submit/telemetry/slow-%d HTTP/1.1\r\nHost: x\r\n" % i)
            slow.append(s)
        t0 = time.monotonic()
        conn = http.client.HTTPConnection(receiver.host, receiver.port, timeout=1)
        conn.request("POST", "/submit/telemetry/normal-client", body=b"hello")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"OK")
        assert time.monotonic() - t0 < 1.0
        conn.close()
        # Each slow client keeps trickling; the header timeout (1 s) still closes it.
        for s in slow[:50]:
            s.sendall(b"X-Slow: 1\r\n")
        deadline = time.monotonic() + 8
        for s in slow[::50]:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass
    finally:
        for s in slow:
            s.close()
    assert not [r for r in stored(receiver) if r.path.startswith("slow-")]


def test_slow_body_is_cut_off(receiver):
    pieces = [b"POST /submit/telemetry/slowbody HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"]
    t0 = time.monotonic()
    codes, closed, _ = exchange(receiver, pieces, quiet=10)
    assert (codes, closed) == ([], True)
    assert time.monotonic() - t0 < 8  # closed by body_timeout (1 s), not by our read timeout
    assert not [r for r in stored(receiver) if r.path == "slowbody"]


def test_idle_keep_alive_connection_is_closed(receiver):
    with socket.create_connection((receiver.host, receiver.port), timeout=10) as s:
        s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(1000).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - t0 < 8


@pytest.mark.parametrize("front", ["fast", "tornado"])
def test_connection_cap(tmp_path, front):
    config = ReceiverConfig(port=0, workers=1, log_path=str(tmp_path / "logs"), motd="",
                            http_server=front, max_connections=4)
    with start_receiver(config) as r:
        open_ = [socket.create_connection((r.host, r.port), timeout=10) for _ in range(4)]
        try:
            for s in open_:  # four connections busy sending a head
                s.sendall(b"POST /submit/telemetry/capped HTTP/1.1\r\n")
            time.sleep(0.3)
            codes, closed, _ = exchange(r, post(b"over-cap"))
            assert (codes, closed) == ([503], True)
            if front == "fast":
                # Idle keep-alive connections make room for new clients instead.
                for s in open_:
                    s.sendall(b"Content-Length: 1\r\n\r\nx")
                    assert s.recv(1000).startswith(b"HTTP/1.1 200")
                codes, closed, _ = exchange(r, post(b"made-room") + CLOSE)
                assert codes == [200, 200]
                # One idle connection (the longest idle, to the sweeper's clock tick) was closed.
                readable, _, _ = select.select(open_, [], [], 3)
                assert len(readable) == 1 and readable[0].recv(100) == b""
        finally:
            for s in open_:
                s.close()
    assert {rec.path for rec in stored(r)} >= ({"made-room"} if front == "fast" else set())
    assert "over-cap" not in {rec.path for rec in stored(r)}


# --- pipelining, keep-alive, HTTP/1.0, Expect ------------------------------------------

def test_pipelined_requests_answered_in_order(receiver):
    reqs = (post(b"pipe-a") + b"GET /nope HTTP/1.1\r\n\r\n" + post(b"pipe-b", b"bb")
            + b"GET /status HTTP/1.1\r\n\r\n" + b"HEAD /status HTTP/1.1\r\n\r\n"
            + post(b"pipe-c", b"ccc", b"Connection: close\r\n")
            + post(b"pipe-after-close"))
    codes, closed, reply = exchange(receiver, reqs)
    assert (codes, closed) == ([200, 404, 200, 200, 200, 200], True)
    assert reply.endswith(b"Connection: close\r\n\r\nOK")
    got = [(r.path, r.data) for r in stored(receiver) if r.path.startswith("pipe-")]
    assert got == [("pipe-a", b"x"), ("pipe-b", b"bb"), ("pipe-c", b"ccc")]


def test_deep_pipeline_is_answered_in_order(receiver):
    n = 100  # more than the fast front end's queue: it stops reading, then goes on
    reqs = b"".join(post(b"deep-%03d" % i, b"%d" % i) for i in range(n)) + CLOSE
    codes, closed, _ = exchange(receiver, reqs)
    assert (codes, closed) == ([200] * (n + 1), True)
    got = [r.path for r in stored(receiver) if r.path.startswith("deep-")]
    assert got == [f"deep-{i:03d}" for i in range(n)]


def test_request_split_into_single_bytes(receiver):
    data = post(b"bytewise", b"0123456789", b"X-Forwarded-For: 1.2.3.4\r\n") + CLOSE
    codes, closed, _ = exchange(receiver, [data[i:i + 1] for i in range(len(data))])
    assert (codes, closed) == ([200, 200], True)
    assert [r.data for r in stored(receiver) if r.path == "bytewise"] == [b"0123456789"]


@pytest.mark.parametrize("data, codes, closed", [
    (b"GET /status HTTP/1.0\r\n\r\n", [200], True),
    (b"GET /status HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + CLOSE, [200, 200], True),
    (b"GET /status HTTP/1.1\r\nConnection: close\r\n\r\nGET /status HTTP/1.1\r\n\r\n", [200], True),
    (b"GET /status HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\nGET /status HTTP/1.1\r\n\r\n",
     [200], True),
])
def test_http10_and_connection_close(receiver, data, codes, closed):
    got, was_closed, reply = exchange(receiver, data)
    assert (got, was_closed) == (codes, closed)
    assert b"Connection: close" in reply.split(b"\r\n\r\n")[-2]


def test_expect_continue_only_when_the_body_is_wanted(receiver):
    with socket.create_connection((receiver.host, receiver.port), timeout=10) as s:
        s.sendall(b"POST /submit/telemetry/too-big HTTP/1.1\r\nContent-Length: 5000\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        assert s.recv(1000).startswith(b"HTTP/1.1 413")
    with socket.create_connection((receiver.host, receiver.port), timeout=10) as s:
        s.sendall(b"POST /submit/telemetry/cont2 HTTP/1.1\r\nContent-Length: 4\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 100")
        s.sendall(b"body")
        assert b" 200 OK" in s.recv(1000)


@pytest.mark.parametrize("path, code", [("/status", 200), ("/metrics", 200), ("/nope", 404)])
def test_head_answers_like_get_without_a_body(receiver, path, code):
    conn = http.client.HTTPConnection(receiver.host, receiver.port, timeout=10)
    try:
        conn.request("GET", path)
        get = conn.getresponse()
        get_body = get.read()
        conn.request("HEAD", path)
        head = conn.getresponse()
        assert (head.status, head.read()) == (code, b"")
        assert head.getheader("Content-Type") == get.getheader("Content-Type")
        if path != "/metrics":  # metrics change between two requests
            assert int(head.getheader("Content-Length")) == len(get_body)
        conn.request("GET", "/status")  # the same connection: no stray body bytes were sent
        assert conn.getresponse().read() == b"OK"
    finally:
        conn.close()


@pytest.mark.parametrize("front", ["fast", "tornado"])
def test_standard_asyncio_loop_still_works(tmp_path, front):
    config = ReceiverConfig(port=0, workers=1, log_path=str(tmp_path / "logs"), motd="",
                            http_server=front, event_loop="asyncio")
    with start_receiver(config) as r:
        codes, closed, _ = exchange(r, post(b"on-asyncio", b"body") + CLOSE)
        assert (codes, closed) == ([200, 200], True)
    assert [rec.data for rec in stored(r) if rec.path == "on-asyncio"] == [b"body"]
