"""The fast HTTP/1.1 front end: an asyncio protocol on Tornado's event loop.

Tornado's general-purpose ``HTTP1Connection`` costs more CPU per request than
everything else the receiver does, and a submission needs little of it: a
request line, three headers (Content-Length, X-Forwarded-For, Connection)
and a bounded body.  This protocol parses exactly that and answers from
pre-built responses, using the same :class:`~receiver.app.ReceiverApp` for
every decision (routing, limits, storage, metrics, stats log), so the two
front ends cannot disagree.  ``http_server: "tornado"`` selects Tornado's
``HTTPServer`` instead.

Supported: keep-alive (HTTP/1.1 default, HTTP/1.0 with ``Connection:
keep-alive``), pipelining (answered in order), ``Expect: 100-continue``.
A POST with ``Transfer-Encoding`` and no Content-Length is answered 411,
as is any request the original server would not have accepted.
"""

from __future__ import annotations

import asyncio
import time

from receiver.app import REASONS, ReceiverApp

_HEAD_END = b"\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


_TEXT = "text/plain; charset=utf-8"


def _response(code: int, body: bytes, content_type: str, close: bool,
              message: str | None = None) -> bytes:
    head = [f"HTTP/1.1 {code} {message or REASONS[code]}",
            f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    if code == 405:
        head.append("Allow: GET, POST")
    head.append("Connection: close" if close else "Connection: keep-alive")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class _Canned:
    """Pre-built responses for every plain status answer."""

    def __init__(self) -> None:
        self.keep = {c: _response(c, m.encode(), _TEXT, False) for c, m in REASONS.items()}
        self.close = {c: _response(c, m.encode(), _TEXT, True) for c, m in REASONS.items()}


_CANNED = _Canned()


class HTTPProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, app: ReceiverApp, front: "FastServer"):
        self.app = app
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.peer = ""
        self.last = 0.0
        self.busy = False          # a submission is being stored; answer it before the next
        self.paused = False
        self.closing = False
        self.need = -1             # body bytes expected; -1 while reading a head
        self.active = False        # a request is in flight (head parsed, not yet answered)
        self.code = 0
        self.detail: object = None
        self.ip: str | None = None
        self.uri = ""
        self.t0 = 0.0
        self.keep_alive = True
        self.size = 0

    # --- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self.last = time.monotonic()
        self.front.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.buf += data
        self.last = time.monotonic()
        if not self.busy:
            self._process()
        if len(self.buf) > self.front.max_buffer and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.front.connections.discard(self)
        if self.active and not self.busy:
            # The request never completed: nothing was stored and nobody waits.
            self.active = False
            self.app.account(self.uri, self.t0, 0, len(self.buf), "Connection closed by client")

    # --- request handling ------------------------------------------------------

    def idle_for(self, now: float) -> float:
        return 0.0 if self.busy else now - self.last

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _process(self) -> None:
        try:
            self._parse()
        finally:
            if self.paused and len(self.buf) <= self.front.max_buffer and not self.closing:
                self.paused = False
                self.transport.resume_reading()

    def _parse(self) -> None:
        app = self.app
        buf = self.buf
        while not self.closing:
            if self.need < 0:
                end = buf.find(_HEAD_END)
                if end < 0:
                    if len(buf) > self.front.max_header:
                        self._start("", "")
                        self._answer(400, close=True)
                    return
                head = bytes(buf[:end])
                del buf[:end + 4]
                if not self._head(head):
                    return
            if len(buf) < self.need:
                return
            body = bytes(buf[:self.need])
            del buf[:self.need]
            self.need = -1
            if self.code == 0:
                self.busy = True
                app.store(self.detail, body, self.ip).add_done_callback(self._stored)
                return
            if self.code == 200:
                payload, ctype = app.get_body(self.detail)
                self._answer(200, payload=_response(200, payload, ctype, not self.keep_alive))
            else:
                self._answer(self.code)

    def _start(self, method: str, target: str) -> None:
        self.size = 0
        self.active = True
        self.app.in_flight += 1
        self.uri = target
        self.t0 = time.perf_counter()

    def _head(self, head: bytes) -> bool:
        """Parse a request head; False when it was answered and the connection is closing."""
        lines = head.lstrip(b"\r\n").split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
            self._start("", "")
            self._answer(400, close=True)
            return False
        method = parts[0].decode("latin-1")
        target = parts[1].decode("latin-1")
        self._start(method, target)
        length = None
        chunked = False
        forwarded = None
        connection = b""
        expect = False
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                self._answer(400, close=True)
                return False
            name = name.strip().lower()
            if name == b"content-length":
                value = value.strip()
                if not value.isdigit() or (length is not None and int(value) != length):
                    self._answer(400, "Invalid Content-Length", close=True)
                    return False
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"x-forwarded-for":  # repeated headers join as in Tornado
                value = value.strip().decode("latin-1")
                forwarded = value if forwarded is None else f"{forwarded},{value}"
            elif name == b"connection":
                connection = value.strip().lower()
            elif name == b"expect":
                expect = value.strip().lower() == b"100-continue"
        if parts[2] == b"HTTP/1.1":
            self.keep_alive = connection != b"close"
        else:
            self.keep_alive = connection == b"keep-alive"
        if chunked:
            # Bodies must come with a length; the original answered 411 too.
            self._answer(411 if method == "POST" else 400, close=True)
            return False
        self.code, early, self.detail = self.app.classify(method, target, length)
        if early:
            self._answer(self.code, close=True)
            return False
        if self.code == 0:
            self.ip = self.app.client_ip(forwarded, self.peer)
        if expect and length:
            self.transport.write(_CONTINUE)
        self.need = self.size = length or 0
        return True

    def _stored(self, fut: asyncio.Future) -> None:
        exc = fut.exception()
        self.busy = False
        self._answer(200 if exc is None else self.app.storage_failure(exc))
        if not self.closing and self.buf:
            self._process()

    def _answer(self, code: int, message: str | None = None, *, payload: bytes | None = None,
                close: bool = False) -> None:
        close = close or not self.keep_alive or self.front.stopping
        if not self.closing:
            if payload is None:
                if message is None:
                    payload = (_CANNED.close if close else _CANNED.keep)[code]
                else:
                    payload = _response(code, message.encode(), _TEXT, close, message)
            self.transport.write(payload)
            if close:
                self.close()
        if self.active:
            self.active = False
            self.app.account(self.uri, self.t0, code, self.size, message or REASONS[code])


class FastServer:
    """Serves a :class:`ReceiverApp` on listening sockets with :class:`HTTPProtocol`."""

    def __init__(self, app: ReceiverApp, idle_timeout: float = 60.0):
        self.app = app
        self.idle_timeout = idle_timeout
        config = app.config
        self.max_header = max(65536, config.max_path_length + len(config.url_prefix) + 16384)
        self.max_buffer = app.config.max_data_length + self.max_header
        self.connections: set[HTTPProtocol] = set()
        self.stopping = False
        self._servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.Task | None = None

    async def add_socket(self, sock) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: HTTPProtocol(self.app, self), sock=sock)
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())

    def stop(self) -> None:
        """Stop accepting; connections already open keep being served."""
        self.stopping = True
        for s in self._servers:
            s.close()

    async def close_all_connections(self) -> None:
        for conn in list(self.connections):
            conn.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for s in self._servers:
            await s.wait_closed()
        await asyncio.sleep(0)

    async def _sweep(self) -> None:
        """Close connections idle (or stalled mid-request) for longer than the timeout."""
        while True:
            await asyncio.sleep(min(1.0, self.idle_timeout / 2))
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.idle_for(now) > self.idle_timeout:
                    conn.close()
                elif self.stopping and not conn.active and not conn.buf:
                    conn.close()
