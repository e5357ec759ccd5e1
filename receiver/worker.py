"""One receiver worker process: an event loop serving the app on a shared socket.

The supervisor forks workers after binding the listening socket; each worker
builds its own writer (its own raw log, named with its pid), metrics slot and
stats log, and serves until SIGTERM/SIGINT.  SIGHUP finishes the current
raw log at once and reopens the stats log.  Shutdown stops accepting,
lets in-flight requests finish (up to ``shutdown_timeout``), closes the
remaining connections and finishes its raw log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket

from tornado.httpserver import HTTPServer

from receiver.app import ReceiverApp, TornadoServer, make_app, server_options
from receiver.config import ReceiverConfig
from receiver.logwriter import LogWriter
from receiver.metrics import Metrics, SharedSlots
from receiver.protocol import FastServer
from receiver.statslog import StatsLog

log = logging.getLogger(__name__)

TICK_SECONDS = 0.25


def make_writer(config: ReceiverConfig, metrics: Metrics, hostname: str | None = None) -> LogWriter:
    """The raw-log writer a worker uses, configured from ``config``."""
    return LogWriter(
        config.log_path, config.log_base, version=config.log_version,
        max_log_size=config.max_log_size, max_log_age_ms=config.max_log_age_ms,
        durability=config.durability, metrics=metrics, hostname=hostname or config.hostname,
    )


def run_worker(config: ReceiverConfig, sock: socket.socket, shared: SharedSlots | None = None,
               slot: int = 0) -> int:
    """Serve on ``sock`` until SIGTERM/SIGINT; returns the process exit code."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the event loop handles it
    _raise_open_files_limit(config.max_connections)
    with asyncio.Runner(loop_factory=loop_factory(config.event_loop)) as runner:
        return runner.run(_serve(config, sock, shared, slot))


def loop_factory(name: str):
    """The event loop constructor for ``event_loop`` (uvloop: libuv, written in Cython)."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def _raise_open_files_limit(connections: int) -> None:
    """Let this worker hold ``max_connections`` sockets (soft limit up to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want and os.geteuid() == 0:
            hard = want  # root may raise the hard limit as well
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            return
        if new < want:
            log.warning("open files limit %d is below max_connections %d + 64", new, connections)


async def _serve(config: ReceiverConfig, sock: socket.socket, shared: SharedSlots | None,
                 slot: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = Metrics(shared, slot)
    writer = make_writer(config, metrics)
    stats = StatsLog(config.stats_log_file) if config.stats_log_file else None
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_on_hangup(writer, stats)))
    app = make_app(config, writer, metrics, stats)
    server = await start_server(app, sock)
    ticker = loop.create_task(_tick(config, writer, metrics, stats))
    await stop.wait()
    server.stop()
    if not await app.drain(config.shutdown_timeout):
        log.warning("worker %d: %d requests still in flight at shutdown", slot, app.in_flight)
    await server.close_all_connections()
    ticker.cancel()
    await writer.close()
    if stats is not None:
        stats.close()
    metrics.publish()
    return 0


async def _on_hangup(writer: LogWriter, stats: StatsLog | None) -> None:
    """SIGHUP: finish the current raw log now and reopen the stats log (for logrotate)."""
    if stats is not None:
        try:
            stats.reopen()
        except OSError as e:
            log.error("cannot reopen the stats log: %s", e)
    try:
        await writer.rotate()
    except OSError as e:
        log.error("cannot finish the raw log: %s", e)


async def start_server(app: ReceiverApp, sock: socket.socket) -> FastServer | HTTPServer:
    """Serve ``app`` on a listening socket with the front end its config names."""
    if app.config.http_server == "tornado":
        server = TornadoServer(app, **server_options(app.config))
        server.add_sockets([sock])
        return server
    server = FastServer(app, app.config.idle_connection_timeout)
    await server.add_socket(sock)
    return server


async def _tick(config: ReceiverConfig, writer: LogWriter, metrics: Metrics,
                stats: StatsLog | None) -> None:
    """Periodic housekeeping: publish metrics, flush the stats log, rotate an old file."""
    flush_every = max(1, round(config.stats_flush_ms / 1000 / TICK_SECONDS))
    n = 0
    while True:
        await asyncio.sleep(TICK_SECONDS)
        n += 1
        metrics.publish()
        if stats is not None and n % flush_every == 0:
            stats.flush()
        try:
            await writer.rotate_if_old()
        except Exception as e:  # a failing disk must not kill housekeeping
            log.error("rotating the raw log failed: %s", e)
