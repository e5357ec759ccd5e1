"""An HTTP proxy on loopback that injects faults between a client and a real server.

Used by ``bench/chaos.py`` in front of moto (S3 errors: 5xx, ``SlowDown``,
connection resets, truncated uploads) and in front of the receiver (a
replay destination that is down, flapping, answering 5xx or slow).  Requests
are parsed by ``http.server`` and forwarded with ``http.client``: the proxy
only decides, per request, what goes wrong.

``decide(method, path) -> action`` picks one of:

- ``"pass"``: forward and answer what the server answered;
- ``"error:CODE[:S3CODE]"``: answer CODE without forwarding (an S3 error
  document when S3CODE is given, e.g. ``error:503:SlowDown``);
- ``"after:CODE"``: forward (the server stores it), then answer CODE anyway;
- ``"reset"``: close the connection without an answer, nothing forwarded;
- ``"reset-after"``: forward, then close without an answer;
- ``"truncate"``: forward the first half of the body (with a matching
  Content-Length), as a broken middlebox would, and answer what the server said;
- ``"slow:SECONDS"``: wait, then forward.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer",
       "upgrade", "content-length"}


class FaultProxy:
    """``with FaultProxy(upstream_port, decide) as p: p.url``; ``p.counts`` tallies actions."""

    def __init__(self, upstream_port: int, decide: Callable[[str, str], str],
                 upstream_host: str = "127.0.0.1", port: int = 0):
        self.upstream = (upstream_host, upstream_port)
        self.decide = decide
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address):
                pass  # a reset we injected, or a client that gave up

        self.server = Server(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _count(self, action: str) -> None:
        with self.lock:
            key = action.split(":")[0] if not action.startswith("error") else action
            self.counts[key] = self.counts.get(key, 0) + 1

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = _read_body(h)
        action = self.decide(h.command, h.path)
        self._count(action)
        if action.startswith("slow:"):
            time.sleep(float(action.split(":")[1]))
            action = "pass"
        if action == "reset":
            _reset(h)
            return
        if action.startswith("error:"):
            parts = action.split(":")
            code = int(parts[1])
            text = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{parts[2]}</Code>"
                    f"<Message>injected</Message></Error>".encode() if len(parts) > 2
                    else b"injected fault")
            _answer(h, code, [("Content-Type", "application/xml")], text)
            return
        if action == "truncate" and body:
            body = body[: len(body) // 2]
        try:
            status, headers, data = self._forward(h, body)
        except OSError:
            _reset(h)
            return
        if action == "reset-after":
            _reset(h)
        elif action.startswith("after:"):
            _answer(h, int(action.split(":")[1]), [], b"injected fault after forwarding")
        else:
            _answer(h, status, headers, data, head=h.command == "HEAD")

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes):
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP}
            if body or h.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP]
            if h.command == "HEAD":
                out.append(("Content-Length", resp.getheader("Content-Length", "0")))
            return resp.status, out, data
        finally:
            conn.close()


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(h.rfile.read(size))
            h.rfile.readline()
    length = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(length) if length else b""


def _answer(h: BaseHTTPRequestHandler, status: int, headers, data: bytes, head: bool = False) -> None:
    h.send_response(status)
    for k, v in headers:
        h.send_header(k, v)
    if not head:
        h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    if not head:
        h.wfile.write(data)


def _reset(h: BaseHTTPRequestHandler) -> None:
    """Close the connection with an RST, as a crashed server or a middlebox would."""
    h.close_connection = True
    try:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        h.connection.close()
    except OSError:
        pass
