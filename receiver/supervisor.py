"""The receiver's parent process: binds the port, forks workers, restarts the dead.

Before forking it opens one listening socket per worker slot, all on the
same port with SO_REUSEPORT, so the kernel spreads connections evenly over
the workers (one shared socket lets whichever worker wakes first take them
all).  ``port 0`` works: the first socket picks the port, which is announced
on stdout as ``listening on http://HOST:PORT`` once every socket listens.
The supervisor keeps the sockets open, so connections queued for a worker
that dies wait for its replacement.  When a worker dies, the raw log it was writing is finalized
(torn last record cut off, renamed ``.finished``) so nothing it acknowledged
waits forever, and a new worker takes its slot (with a back-off if workers
keep dying at start-up).  SIGTERM/SIGINT is passed on to the workers, which
finish their in-flight requests and their files; the supervisor exits 0.
SIGHUP is passed on too: workers finish their raw logs and reopen the stats
log.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from typing import TextIO

from receiver.config import ReceiverConfig
from receiver.errors import ReceiverError
from receiver.logwriter import finalize_unfinished
from receiver.metrics import SharedSlots
from receiver.worker import run_worker

POLL_SECONDS = 0.05
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_BLOCKED = _STOP_SIGNALS | {signal.SIGHUP}


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this worker if the supervisor dies (so no orphan keeps the port)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os._exit(1)


def bind_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """One listening socket with SO_REUSEPORT: the kernel spreads connections over all of them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise ReceiverError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets on one port (port 0: the first one picks it), one per worker slot.

    The supervisor keeps them open, so connections queued on a dead
    worker's socket wait for its replacement instead of being reset.
    """
    first = bind_socket(host, port)
    socks = [first]
    try:
        for _ in range(count - 1):
            socks.append(bind_socket(host, first.getsockname()[1]))
    except ReceiverError:
        for s in socks:
            s.close()
        raise
    return socks


def check_storage(config: ReceiverConfig) -> None:
    """Fail at start-up, with a message, if the log directory or stats log cannot be written."""
    try:
        os.makedirs(config.log_path, exist_ok=True)
    except OSError as e:
        raise ReceiverError(f"cannot create log_path {config.log_path}: {e.strerror}") from None
    if not os.access(config.log_path, os.W_OK | os.X_OK):
        raise ReceiverError(f"log_path {config.log_path} is not writable")
    if config.stats_log_file:
        try:
            with open(config.stats_log_file, "ab"):
                pass
        except OSError as e:
            raise ReceiverError(f"cannot open stats_log_file {config.stats_log_file}: "
                                f"{e.strerror}") from None


def serve(config: ReceiverConfig, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the receiver until SIGTERM/SIGINT; returns the exit code (0 after a clean stop)."""
    out = out or sys.stdout
    err = err or sys.stderr
    check_storage(config)
    hostname = config.hostname or socket.gethostname()
    config = config.replace(hostname=hostname)
    for path in finalize_unfinished(config.log_path, config.log_base, hostname):
        print(f"finalized {path} left by a dead receiver", file=err, flush=True)
    socks = bind_sockets(config.host, config.port, config.worker_count)
    port = socks[0].getsockname()[1]
    host = f"[{config.host}]" if ":" in config.host else config.host
    if config.motd:
        print(config.motd, file=err, flush=True)
    print(f"listening on http://{host}:{port}", file=out, flush=True)
    try:
        return Supervisor(config, socks, out, err).run()
    finally:
        for sock in socks:
            sock.close()


class Supervisor:
    def __init__(self, config: ReceiverConfig, socks: list[socket.socket], out: TextIO,
                 err: TextIO):
        self.config = config
        self.socks = socks
        self.out = out
        self.err = err
        self.n = config.worker_count
        self.shared = SharedSlots(self.n)
        self.children: dict[int, int] = {}  # pid -> slot
        self.started: dict[int, float] = {}  # slot -> start time
        self.backoff = [0.0] * self.n
        self.restart_at: dict[int, float] = {}  # slot -> when
        self.stop_requested = False
        self.hangup = False

    def run(self) -> int:
        old = {s: signal.signal(s, self._on_signal) for s in _BLOCKED}
        try:
            for slot in range(self.n):
                self._spawn(slot)
            deadline = None
            while True:
                self._reap()
                now = time.monotonic()
                if self.hangup:
                    self.hangup = False
                    self._signal_all(signal.SIGHUP)
                if self.stop_requested and deadline is None:
                    deadline = now + self.config.shutdown_timeout + 5
                    self.restart_at.clear()
                    self._signal_all(signal.SIGTERM)
                if deadline is not None:
                    if not self.children:
                        break
                    if now > deadline:
                        self._say(f"workers did not stop in time; killing {sorted(self.children)}")
                        self._signal_all(signal.SIGKILL)
                        deadline = now + 3600
                for slot, when in list(self.restart_at.items()):
                    if now >= when:
                        del self.restart_at[slot]
                        self._spawn(slot)
                time.sleep(POLL_SECONDS)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        self._say("stopped")
        return 0

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGHUP:
            self.hangup = True
        else:
            self.stop_requested = True

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _spawn(self, slot: int) -> None:
        self.out.flush()
        self.err.flush()
        # Signals wait until the child has dropped the supervisor's handlers.
        signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for sig in _STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _BLOCKED)
                _die_with_parent(parent)
                for i, other in enumerate(self.socks):
                    if i != slot:
                        other.close()
                code = run_worker(self.config, self.socks[slot], self.shared, slot)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _BLOCKED)
        self.children[pid] = slot
        self.started[slot] = time.monotonic()
        print(f"worker {slot} started pid {pid}", file=self.out, flush=True)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.children.pop(pid, None)
            if slot is None:
                continue
            for path in finalize_unfinished(self.config.log_path, self.config.log_base,
                                            self.config.hostname, pid=pid, skip_live=False):
                self._say(f"finalized {path} of worker {slot} (pid {pid})")
            how = (f"signal {signal.Signals(-os.waitstatus_to_exitcode(status)).name}"
                   if os.WIFSIGNALED(status) else f"exit code {os.waitstatus_to_exitcode(status)}")
            print(f"worker {slot} exited pid {pid}", file=self.out, flush=True)
            if self.stop_requested:
                continue
            lived = time.monotonic() - self.started.get(slot, 0.0)
            self.backoff[slot] = 0.0 if lived > 5 else min(5.0, max(0.1, 2 * self.backoff[slot]))
            self._say(f"worker {slot} (pid {pid}) died with {how}; restarting"
                      + (f" in {self.backoff[slot]:.1f}s" if self.backoff[slot] else ""))
            self.restart_at[slot] = time.monotonic() + self.backoff[slot]

    def _say(self, message: str) -> None:
        print(f"receiver: {message}", file=self.err, flush=True)
