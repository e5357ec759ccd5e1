"""The fast HTTP/1.1 front end: llhttp (Node.js's parser, through ``httptools``).

Tornado's general-purpose ``HTTP1Connection`` costs more CPU per request than
everything else the receiver does, and a submission needs little of it.  This
front end is one asyncio protocol object per connection, fed to llhttp (the
parser that Node.js, and so the original server, uses; the same binding
uvicorn uses), answering from pre-built responses.  Every decision (routing,
limits, storage, metrics, stats log) is made by the shared
:class:`~receiver.app.ReceiverApp`, so the two front ends cannot disagree.
``http_server: "tornado"`` selects Tornado's ``HTTPServer`` instead.

llhttp runs in strict mode: it refuses obs-fold, bare LF line ends, control
bytes in headers, duplicate Content-Length, Content-Length together with
Transfer-Encoding and malformed request lines.  Any parse error is answered
400 and the connection is closed: after a request we cannot read the way a
proxy in front of us might, nothing else on the connection can be trusted.

Guarantees, each tested over a real socket (docs/receiver.md has the table):
pipelined requests are answered in order (at most ``MAX_PIPELINE`` waiting
answers, then the connection stops being read until they are sent); a head
over the limits is answered 414/431 as soon as it passes them, a body over
``max_data_length`` 413 before it is read; slow clients are closed after
``header_timeout``/``body_timeout``, idle keep-alive ones after
``idle_connection_timeout``; at most ``max_connections`` per worker.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import httptools

from receiver.app import CANNED as _CANNED, REASONS, ReceiverApp, build_response as _response

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TEXT = "text/plain; charset=utf-8"
MAX_PIPELINE = 32  # waiting answers per connection before it stops being read

IDLE, HEAD, BODY, LINGER = 0, 1, 2, 3  # between/inside requests, closing
LINGER_SECONDS = 2.0  # a closing connection reads and discards for at most this long


class _Stop(Exception):
    """Raised from a parser callback once the connection is answered for good."""


class _Answer:
    """One request's place in the connection's answer queue (pipelining)."""

    __slots__ = ("payload", "code", "message", "uri", "t0", "size", "close", "conn")

    def __init__(self, uri: str, t0: float, size: int, close: bool, conn=None):
        self.payload: bytes | None = None
        self.code = 0
        self.message = ""
        self.uri, self.t0, self.size, self.close, self.conn = uri, t0, size, close, conn

    def stored(self, exc: BaseException | None) -> None:
        """The raw-log writer's callback: the record is durable (or failed)."""
        if self.conn is not None:  # None: already accounted as never answered
            self.conn._stored(self, exc)


class HTTPProtocol(asyncio.Protocol):
    """One client connection; llhttp calls the ``on_*`` methods."""

    def __init__(self, app: ReceiverApp, front: "FastServer"):
        self.app = app
        self.front = front
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.state = IDLE
        self.since = front.now        # when the current state began (timeouts)
        self.raw = 0                  # bytes received in the current head
        self.closing = False          # transport closed (or closing)
        self.stopped = False          # nothing more is parsed on this connection
        self.eof = False              # the client half-closed
        self.paused = False
        self.queue: deque[_Answer] = deque()
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.fields = 0
        self.length: int | None = None
        self.chunked = False
        self.codings = 0
        self.forwarded: str | None = None
        self.ip: str | None = None
        self.expect = False
        self.body: list[bytes] = []
        self.size = 0
        self.code = 0
        self.detail: object = None
        self.keep = True
        self.started = False
        self.t0 = 0.0
        self.uri = ""
        self.method = ""

    # --- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self.front.admit(self)

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return
        if self.state != BODY:
            if self.state == IDLE:
                self.state, self.since = HEAD, self.front.now
            self.raw += len(data)
        try:
            self.parser.feed_data(data)
        except _Stop:
            pass
        except httptools.HttpParserUpgrade:
            self._stop()  # answered in on_headers_complete; the rest is not HTTP
        except httptools.HttpParserError as e:
            if not self.stopped:
                if isinstance(e.__context__, _Stop):
                    return
                self._begin()
                self._finish(400, close=True)
            return
        if self.state == HEAD and self.raw > self.app.head_limit and not self.stopped:
            self._begin()  # a head padded with whitespace that llhttp does not report
            self._finish(431, close=True)

    def eof_received(self) -> bool:
        # The client sent all it will: answer what is queued, then close.
        self.eof = True
        if self.state == LINGER:
            return False
        self.stopped = True
        if self.started and self.state == BODY:
            self._abandon("Connection closed by client")
        if self.queue:
            self.queue[-1].close = True
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.stopped = True
        self.front.connections.discard(self)
        if self.started and self.state == BODY:
            self._abandon("Connection closed by client")

    # --- llhttp callbacks ------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        if not self.url:  # a request begins (llhttp calls on_message_begin just before)
            self.state, self.since = HEAD, self.front.now
        self.url += url
        if len(self.url) > self.app.target_limit:
            self._begin()
            self._finish(414, close=True)
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += len(name) + len(value) + 4
        if self.fields > self.app.config.max_header_length:
            self._begin()
            self._finish(431, close=True)
            raise _Stop
        name = name.lower()
        if name == b"content-length":
            self.length = int(value)  # llhttp checked: digits, one header, no overflow
        elif name == b"transfer-encoding":
            self.codings += 1
            self.chunked = True
        elif name == b"x-forwarded-for":  # repeated headers join as in Tornado
            value = value.strip().decode("latin-1")
            self.forwarded = value if self.forwarded is None else f"{self.forwarded},{value}"
        elif name == b"expect":
            self.expect = value.strip().lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        parser = self.parser
        self._begin()
        self.state, self.since = BODY, self.front.now
        self.keep = parser.should_keep_alive()
        version = parser.get_http_version()
        self.code, early, self.detail = self.app.classify(
            self.method, self.uri, self.length, version=version,
            chunked=self.chunked, upgrade=parser.should_upgrade())
        if self.codings > 1:  # llhttp takes a repeated one; Tornado's front end refuses it
            self.code, early = 400, True
        if early:
            self._finish(self.code, close=True)
            raise _Stop
        if self.code == 0:
            self.ip = self.app.client_ip(self.forwarded, self.peer)
        if self.expect and self.length and version == "1.1":
            if self.queue:
                self._push(_CONTINUE)
            else:
                self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.code == 0:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.state, self.since, self.raw = IDLE, self.front.now, 0
        code = self.code
        if code == 0:
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            answer = _Answer(self.uri, self.t0, self.size, not self.keep, self)
            self.queue.append(answer)
            self.app.store_then(self.detail, body, self.ip, answer.stored)
            if len(self.queue) >= MAX_PIPELINE and not self.paused:
                self.paused = True
                self.transport.pause_reading()
        elif code == 200:
            payload, ctype = self.app.get_body(self.detail)
            self._finish(200, payload=_response(200, payload, ctype, not self.keep or self.front.stopping,
                                                head=self.method == "HEAD"))
        else:
            self._finish(code)
        keep = self.keep
        self._reset()
        if not keep:
            self._stop()
            raise _Stop  # llhttp refuses data after ``Connection: close``; so do we

    # --- answering ---------------------------------------------------------------

    def _begin(self) -> None:
        """A request starts counting (in flight, duration) once its head is read."""
        if not self.started:
            self.started = True
            self.t0 = time.perf_counter()
            self.uri = self.url.decode("latin-1")
            try:
                self.method = self.parser.get_method().decode("latin-1")
            except httptools.HttpParserError:
                self.method = ""
            self.app.in_flight += 1

    def _finish(self, code: int, message: str | None = None, *, payload: bytes | None = None,
                close: bool = False) -> None:
        """Answer the current request (in order behind any answer still waiting)."""
        close = close or not self.keep or self.front.stopping
        if payload is None:
            head = self.method == "HEAD"
            if message is None:
                payload = _CANNED[close, head][code]
            else:
                payload = _response(code, message.encode(), _TEXT, close, message, head)
        answer = _Answer(self.uri, self.t0, self.size, close)
        answer.payload, answer.code, answer.message = payload, code, message or REASONS[code]
        self.queue.append(answer)
        self.started = False
        if close:
            self._stop()
        self._flush()

    def _push(self, payload: bytes) -> None:
        """An interim answer (100 Continue) that must not overtake earlier answers."""
        answer = _Answer("", 0.0, 0, False)
        answer.payload, answer.code = payload, 100
        self.queue.append(answer)

    def _stored(self, answer: _Answer, exc: BaseException | None) -> None:
        code = 200 if exc is None else self.app.storage_failure(exc)
        answer.payload = _CANNED[answer.close, False][code]
        answer.code, answer.message = code, REASONS[code]
        self._flush()  # at shutdown the sweeper closes the connection once it is idle

    def _flush(self) -> None:
        """Write every answer at the head of the queue that is ready, in order."""
        queue = self.queue
        app = self.app
        while queue and queue[0].payload is not None:
            a = queue.popleft()
            if not self.closing:
                self.transport.write(a.payload)
            if a.code != 100:
                app.account(a.uri, a.t0, a.code, a.size, a.message)
            if a.close:
                self._close_now()
                while queue:  # queued behind a close (e.g. half-close): never answered
                    rest = queue.popleft()
                    if rest.code != 100:
                        rest.conn = None
                        app.account(rest.uri, rest.t0, 0, rest.size, "Connection closed")
                break
        if self.paused and len(queue) < MAX_PIPELINE // 2 and not self.closing:
            self.paused = False
            self.transport.resume_reading()

    def _abandon(self, message: str) -> None:
        """The current request will never complete (client gone, timeout)."""
        self.started = False
        self.app.account(self.uri, self.t0, 0, self.size, message)

    def _stop(self) -> None:
        """Parse nothing more; the connection closes after its last queued answer."""
        self.stopped = True

    def _close_now(self) -> None:
        """Close after the last answer, lingering so that the answer is not lost.

        Closing a socket whose peer is still sending makes the kernel answer
        with a reset, which can destroy our answer before the client reads
        it.  So we send FIN, keep reading (and discarding) until the client
        closes too or ``LINGER_SECONDS`` pass, as nginx's lingering close does.
        """
        self.stopped = True
        if self.closing:
            return
        self.closing = True
        transport = self.transport
        if self.eof or transport.is_closing() or not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except (OSError, RuntimeError):
            transport.close()
            return
        self.state, self.since = LINGER, self.front.now

    # --- housekeeping (FastServer's sweeper) ----------------------------------------

    def expired(self, now: float, front: "FastServer") -> bool:
        """True when this connection has been slow or idle for longer than allowed."""
        if self.queue:
            return False  # answers are being prepared: not the client's fault
        age = now - self.since
        if self.state == LINGER:
            return age > LINGER_SECONDS
        if self.state == IDLE:
            return age > front.idle_timeout or front.stopping
        if self.state == HEAD:
            return age > front.header_timeout
        return age > front.body_timeout

    def close(self, reason: str = "Connection timed out") -> None:
        """Close at once (timeouts, shutdown, the connection cap)."""
        if self.started and self.state == BODY:
            self._abandon(reason)
        self.stopped = self.closing = True
        self.transport.close()


class FastServer:
    """Serves a :class:`ReceiverApp` on listening sockets with :class:`HTTPProtocol`."""

    def __init__(self, app: ReceiverApp, idle_timeout: float | None = None):
        self.app = app
        config = app.config
        self.idle_timeout = idle_timeout or config.idle_connection_timeout
        self.header_timeout = config.header_timeout
        self.body_timeout = config.body_timeout
        self.max_connections = config.max_connections
        self.connections: set[HTTPProtocol] = set()
        self.stopping = False
        # A coarse clock for timeouts, advanced by the sweeper: reading an
        # attribute costs less than a clock call, four times per request.
        self.now = time.monotonic()
        self._servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.Task | None = None

    async def add_socket(self, sock) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: HTTPProtocol(self.app, self), sock=sock)
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())

    def admit(self, conn: HTTPProtocol) -> None:
        """Take a new connection; at the cap, drop the longest-idle one or refuse with 503."""
        if len(self.connections) >= self.max_connections:
            idle = [c for c in self.connections if c.state in (IDLE, LINGER) and not c.queue]
            if idle:
                min(idle, key=lambda c: c.since).close()
            else:
                self.app.metrics.request(503)
                conn.stopped = conn.closing = True
                conn.transport.write(_CANNED[True, False][503])
                conn.transport.close()
                return
        self.connections.add(conn)

    def stop(self) -> None:
        """Stop accepting; connections already open keep being served."""
        self.stopping = True
        for s in self._servers:
            s.close()

    async def close_all_connections(self) -> None:
        for conn in list(self.connections):
            conn.close("Server shutting down")
        if self._sweeper is not None:
            self._sweeper.cancel()
        for s in self._servers:
            await s.wait_closed()
        await asyncio.sleep(0)

    async def _sweep(self) -> None:
        """Close connections idle, or slow in a head or a body, for longer than allowed."""
        tick = max(0.05, min(0.5, self.header_timeout / 4, self.body_timeout / 4,
                             self.idle_timeout / 4))
        while True:
            await asyncio.sleep(tick)
            self.now = now = time.monotonic()
            for conn in list(self.connections):
                if conn.expired(now, self):
                    conn.close()
