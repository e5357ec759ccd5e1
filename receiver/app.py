"""The HTTP side of the receiver: routing, limits, status codes (SPEC section 1).

The app is a Tornado ``HTTPServerConnectionDelegate`` rather than a
``web.Application``: a submission needs no templates, cookies or XSRF.  It is
built by :func:`make_app` with its writer, metrics and stats log passed in.
It holds every decision (``classify``, ``store``, ``account``) and can be
served by Tornado's ``HTTPServer`` or by the leaner
:class:`receiver.protocol.FastServer` (the default in workers), which calls
the same methods.

Rejections that would otherwise make us read a large or unbounded body (413,
and 411 for a POST without Content-Length) are answered as soon as the
headers arrive and the connection is closed; other errors are answered after
the (small) body has been read, so keep-alive connections survive them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time

from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.httputil import HTTPHeaders, ResponseStartLine

from receiver.config import ReceiverConfig
from receiver.errors import StorageError
from receiver.logwriter import LogWriter
from receiver.metrics import Metrics
from receiver.rawlog import encode_record
from receiver.statslog import StatsLog

log = logging.getLogger(__name__)

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Missing Content-Length",
    413: "Request Too Large",
    414: "Request-URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}

# The request methods llhttp accepts in HTTP (not RTSP) mode; any other token
# is a 400 on both front ends, so they answer alike.  Only GET, HEAD and POST
# are served; the others get 405.
KNOWN_METHODS = frozenset(
    "DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    "SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    "SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY PRI".split())

ALLOW = "GET, HEAD, POST"

# Room for a query string (ignored, but clients send one, e.g. ``?v=4``) on
# top of ``url_prefix`` + ``max_path_length`` before a request target is 414.
MAX_QUERY_LENGTH = 1024
# Largest Content-Length llhttp can represent; a larger one is a 400 on both front ends.
MAX_CONTENT_LENGTH = (1 << 64) - 1
# Visible ASCII only: a raw byte over 0x7f or a control byte in a target is a 400.
_TARGET = re.compile(r"/[!-~]*")


def build_response(code: int, body: bytes, content_type: str, close: bool,
                   message: str | None = None, head: bool = False) -> bytes:
    """A whole HTTP/1.1 response (no body for a HEAD request, its length still given)."""
    lines = [f"HTTP/1.1 {code} {message or REASONS[code]}",
             f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    if code == 405:
        lines.append(f"Allow: {ALLOW}")
    lines.append("Connection: close" if close else "Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)


# Pre-built answers for every plain status, by (close, head) then code.
CANNED = {(close, head): {c: build_response(c, m.encode(), "text/plain; charset=utf-8", close,
                                            head=head)
                          for c, m in REASONS.items()}
          for close in (False, True) for head in (False, True)}


def header_limits(config: ReceiverConfig) -> tuple[int, int]:
    """``(target_limit, head_limit)``: the longest request target and head (bytes)."""
    target = len(config.url_prefix) + config.max_path_length + MAX_QUERY_LENGTH
    return target, target + config.max_header_length + 64


class ReceiverApp(httputil.HTTPServerConnectionDelegate):
    """Accepts submissions and hands their records to a :class:`LogWriter`."""

    def __init__(self, config: ReceiverConfig, writer: LogWriter, metrics: Metrics,
                 stats_log: StatsLog | None = None):
        self.config = config
        self.writer = writer
        self.metrics = metrics
        self.stats_log = stats_log
        self.prefix = config.url_prefix
        self.in_flight = 0
        self.target_limit, self.head_limit = header_limits(config)
        self._idle: asyncio.Event | None = None

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return _Exchange(self, request_conn)

    def classify(self, method: str, target: str, length: int | None, *, version: str = "1.1",
                 chunked: bool = False, upgrade: bool = False) -> tuple[int, bool, object]:
        """Decide a request from its head: ``(code, answer_now, detail)``.

        ``code`` 0 is a submission to store (``detail`` the raw path bytes);
        any other code is the answer (``detail`` names the GET endpoint).
        ``answer_now`` means: answer before the body and close the connection,
        because the body is unbounded (no Content-Length) or over the limit,
        or because the request is one a correct parser may read differently
        from a proxy in front of us (a smuggling attempt), so nothing after it
        on the connection can be trusted.
        """
        if version not in ("1.1", "1.0") or method not in KNOWN_METHODS:
            return 400, True, None
        if len(target) > self.target_limit:
            return 414, True, None
        if not _TARGET.fullmatch(target):  # absolute-form, "*", raw non-ASCII or control bytes
            return 400, True, None
        if chunked:
            # Bodies must come with a length (the original answered 411 too);
            # both framings at once is the classic smuggling request, and
            # HTTP/1.0 has no transfer codings (RFC 9112 6.1).
            return (411 if length is None and version == "1.1" else 400), True, None
        if upgrade:
            # CONNECT or ``Connection: upgrade``: we do not switch protocols, and
            # what follows the head is not HTTP/1.1, so answer and close.
            if length:
                return 400, True, None
            code, _, detail = self.classify("GET" if method == "CONNECT" else method,
                                            target, length, version=version)
            return (405 if method == "CONNECT" else code), True, detail
        path = target.split("?", 1)[0]
        too_big = length is not None and length > self.config.max_data_length
        if method == "POST":
            prefix = self.prefix
            if not path.startswith(prefix) or len(path) == len(prefix):
                code = 404
            elif len(path) - len(prefix) > self.config.max_path_length:
                code = 414
            elif not length:  # absent, or 0 as the original server treated it
                return 411, True, None
            elif too_big:
                return 413, True, None
            else:
                raw = path[len(prefix):].encode("latin-1")  # the request line as received
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    return 400, False, None
                return 0, False, raw
            return code, too_big or length is None, None
        if method in ("GET", "HEAD"):  # HEAD: the same answer without its body
            if path == "/status":
                return 200, too_big, "status"
            if path == "/metrics" and self.config.metrics:
                return 200, too_big, "metrics"
            return 404, too_big, None
        return 405, too_big, None

    def get_body(self, detail: object) -> tuple[bytes, str]:
        """Body and content type of a successful GET."""
        if detail == "metrics":
            return self.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8"
        return b"OK", "text/plain; charset=utf-8"

    def store(self, raw_path: bytes, body: bytes, ip: str | None) -> asyncio.Future:
        """Queue a submission's record; the future resolves when it is durable."""
        return self.writer.submit(encode_record(raw_path, body, int(time.time() * 1000), ip))

    def store_then(self, raw_path: bytes, body: bytes, ip: str | None, callback) -> None:
        """Like :meth:`store`, calling ``callback(exc)`` (None once durable) instead."""
        self.writer.submit_callback(encode_record(raw_path, body, int(time.time() * 1000), ip),
                                    callback)

    def client_ip(self, forwarded: str | None, peer: str | None) -> str | None:
        """The IP to store (v2 logs only): X-Forwarded-For as sent, else the peer address."""
        if not self.config.include_request_ip:
            return None
        if forwarded and forwarded.strip():
            return forwarded.strip()
        return peer or ""

    @staticmethod
    def storage_failure(exc: BaseException) -> int:
        if isinstance(exc, StorageError):
            log.error("%s", exc)
            return 507 if exc.disk_full else 500
        log.error("unexpected error storing a submission: %r", exc)
        return 500

    def account(self, uri: str, t0: float, code: int, size: int, message: str) -> None:
        """Count one finished request (metrics, stats log, in-flight)."""
        if code:
            self.metrics.request(code)
        if self.stats_log is not None:
            self.stats_log.log(uri, (time.perf_counter() - t0) * 1000.0, code, size, message)
        self._done()

    async def drain(self, timeout: float) -> bool:
        """Wait until no request is in flight (used at shutdown); False on timeout."""
        if self.in_flight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()


def make_app(config: ReceiverConfig, writer: LogWriter, metrics: Metrics | None = None,
             stats_log: StatsLog | None = None) -> ReceiverApp:
    """The receiver application; serve it with ``tornado.httpserver.HTTPServer(app, ...)``."""
    return ReceiverApp(config, writer, metrics or writer.metrics, stats_log)


def server_options(config: ReceiverConfig) -> dict:
    """Keyword arguments for ``HTTPServer`` that match the app's limits.

    Tornado has one timeout for an idle keep-alive connection and for a slow
    head, so it gets the shorter of ``header_timeout`` and
    ``idle_connection_timeout`` for both.
    """
    return dict(
        decompress_request=False,  # bodies are stored as received
        idle_connection_timeout=min(config.header_timeout, config.idle_connection_timeout),
        body_timeout=config.body_timeout,
        # The app answers 413 itself before reading; this only stops Tornado
        # from answering an over-long body with its own 400 first.
        max_body_size=1 << 40,
        # The app answers 431 up to twice the limit; Tornado closes the
        # connection without an answer beyond that.
        max_header_size=2 * header_limits(config)[1],
    )


class TornadoServer(HTTPServer):
    """Tornado's ``HTTPServer`` with a cap on open connections.

    Over ``max_connections`` a new connection gets a 503 and is closed.
    """

    def __init__(self, app: ReceiverApp, **options):
        super().__init__(app, **options)
        self.max_connections = app.config.max_connections
        self.app = app

    def handle_stream(self, stream, address) -> None:
        if len(self._connections) >= self.max_connections:
            self.app.metrics.request(503)
            stream.write(_CAPPED).add_done_callback(lambda f: stream.close())
            return
        super().handle_stream(stream, address)


_CAPPED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Length: 19\r\nConnection: close\r\n\r\nService Unavailable")


LINGER_SECONDS = 2.0


async def _linger(stream, payload: bytes) -> None:
    """Answer, send FIN, and read (discarding) until the client closes or 2 s pass.

    Closing while the client is still sending makes the kernel send a reset,
    which can destroy the answer before the client reads it.
    """
    try:
        await stream.write(payload)
        stream.socket.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.wait_for(stream.read_bytes(65536, partial=True), left)
    except (StreamClosedError, OSError, asyncio.TimeoutError):
        pass
    finally:
        stream.close()


class _Exchange(httputil.HTTPMessageDelegate):
    """One request/response on a Tornado connection."""

    __slots__ = ("app", "conn", "t0", "uri", "code", "detail", "chunks", "size", "ip",
                 "answered", "closed", "submitted", "head", "keep_alive")

    def __init__(self, app: ReceiverApp, conn: httputil.HTTPConnection):
        self.app = app
        self.conn = conn
        self.answered = True  # until headers arrive there is nothing to answer
        self.closed = False
        self.submitted = False
        self.chunks: list[bytes] = []
        self.size = 0
        self.head = False
        self.keep_alive = True

    def headers_received(self, start_line, headers: HTTPHeaders) -> None:
        stream = getattr(self.conn, "stream", None)
        if stream is None or stream.closed():
            # Tornado reads requests left in its buffer after it closed the
            # connection (behind a ``Connection: close``): nobody would get
            # an answer, so nothing of them is stored.
            self.closed = True
            self.code = None
            return None
        app = self.app
        app.in_flight += 1
        self.answered = False
        self.t0 = time.perf_counter()
        self.uri = start_line.path
        self.head = start_line.method == "HEAD"
        # Decide keep-alive as llhttp does (Connection is a token list), so both
        # front ends leave a connection open or closed on the same requests.
        tokens = {t.strip().lower() for v in headers.get_list("Connection") for t in v.split(",")}
        version = start_line.version[5:]
        self.keep_alive = "close" not in tokens if version == "1.1" else "keep-alive" in tokens
        size = sum(len(k) + len(v) + 4 for k, v in headers.get_all())
        if size > app.config.max_header_length:
            return self.refuse(431)
        lengths = headers.get_list("Content-Length")
        length = None
        if lengths:
            cl = lengths[0].strip(" \t")
            if len(lengths) > 1 or not cl.isdigit() or not cl.isascii() \
                    or int(cl) > MAX_CONTENT_LENGTH:
                return self.refuse(400)
            length = int(cl)
        upgrade = start_line.method == "CONNECT" or (
            "Upgrade" in headers and "upgrade" in tokens)
        self.code, early, self.detail = app.classify(
            start_line.method, self.uri, length, version=version,
            chunked="Transfer-Encoding" in headers, upgrade=upgrade)
        if len(headers.get_list("Transfer-Encoding")) > 1:  # llhttp refuses a repeated one
            self.code, early = 400, True
        if early:
            return self.refuse(self.code)
        if self.code == 0:
            peer = getattr(self.conn.context, "remote_ip", None)
            self.ip = app.client_ip(",".join(headers.get_list("X-Forwarded-For")) or None, peer)
        return None

    def refuse(self, code: int) -> None:
        """Answer now and close: nothing after this head on the connection is read.

        Tornado would go on reading the body and the next request while the
        answer is being written, so the stream is taken over (``detach``),
        answered and closed.
        """
        self.answered = True
        stream = self.conn.detach()
        asyncio.get_running_loop().create_task(_linger(stream, CANNED[True, self.head][code]))
        self.app.account(self.uri, self.t0, code, self.size, REASONS[code])

    def data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.code == 0:
            self.chunks.append(chunk)

    def finish(self) -> None:
        if self.answered:
            return
        if self.code == 0:
            data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
            self.chunks = []
            self.submitted = True
            self.app.store(self.detail, data, self.ip).add_done_callback(self._stored)
        elif self.code == 200:
            body, ctype = self.app.get_body(self.detail)
            self.respond(200, body=body, content_type=ctype)
        else:
            self.respond(self.code)

    def _stored(self, fut: asyncio.Future) -> None:
        exc = fut.exception()
        self.respond(200 if exc is None else self.app.storage_failure(exc))

    def on_connection_close(self) -> None:
        self.closed = True
        if not self.answered and not self.submitted:
            # The request never completed: nothing was stored and nobody is waiting.
            self.answered = True
            self.app.account(self.uri, self.t0, 0, self.size, "Connection closed by client")

    def respond(self, code: int, message: str | None = None, *, body: bytes | None = None,
                content_type: str = "text/plain; charset=utf-8", close: bool = False) -> None:
        if self.answered:
            return
        self.answered = True
        message = message or REASONS[code]
        if body is None:
            body = message.encode()
        if not self.closed:
            headers = HTTPHeaders({"Content-Type": content_type, "Content-Length": str(len(body))})
            if close or not self.keep_alive:
                headers["Connection"] = "close"
                # Tornado reads Connection as one value ("keep-alive, close" keeps
                # it open); close as llhttp would.  A private flag, stable since 4.0.
                self.conn._disconnect_on_finish = True
            if code == 405:
                headers["Allow"] = ALLOW
            if self.head:
                body = b""
            try:
                self.conn.write_headers(ResponseStartLine("HTTP/1.1", code, message), headers, body)
                self.conn.finish()
            except Exception:  # the client went away while we were answering
                pass
        self.app.account(self.uri, self.t0, code, self.size, message)
