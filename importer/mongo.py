"""Where MongoDB is: a URI the user gives, or an embedded server we run ourselves.

Any MongoDB URI works (standalone, replica set, mongos).  When none is given,
a first run should need nothing installed, so we start SecantusDB's
MongoDB-wire server (``secantusd-py``, installed with the project) as its own
process on a free loopback port, with its data in a per-user directory.  A
small JSON pid file in that directory says which process and port it is, so
later commands reuse it and ``telemetry mongo stop`` can end it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import orjson
import pymongo
from pymongo.errors import ConfigurationError, InvalidURI, PyMongoError
from pymongo.uri_parser import parse_uri

from importer.errors import EmbeddedServerError, MongoUnavailable

PID_FILE = "secantusd.json"
LOG_FILE = "secantusd.log"
LOCK_FILE = ".secantusd.lock"
MEMORY = ":memory:"


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """The per-user home of the embedded server: ``$XDG_DATA_HOME/telemetry/mongo``."""
    base = environ.get("XDG_DATA_HOME") or str(
        Path(environ.get("HOME") or Path.home()) / ".local" / "share"
    )
    return Path(base) / "telemetry" / "mongo"


@dataclass
class MongoConfig:
    """How to reach MongoDB: ``url`` if given, else the embedded server kept in ``data_dir``."""

    url: str | None = None
    data_dir: Path = Path(".telemetry-mongo")
    storage_path: str | None = None  # default: ``data_dir/db``; ":memory:" for throwaway servers
    host: str = "127.0.0.1"
    start_timeout: float = 30.0
    server_selection_timeout_ms: int = 3000
    cache_size: str | None = None  # WiredTiger cache, e.g. "1G"


@dataclass
class EmbeddedServer:
    """A running embedded server; ``process`` is set only in the process that started it."""

    pid: int
    port: int
    host: str
    data_dir: Path
    storage_path: str
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    def stop(self, timeout: float = 15.0) -> None:
        """End the server (SIGTERM, then SIGKILL after ``timeout``) and remove its pid file."""
        _terminate(self.pid, timeout, self.process)
        pid_file = self.data_dir / PID_FILE
        current = _read_pid_file(pid_file)
        if current is not None and current.pid == self.pid:
            pid_file.unlink(missing_ok=True)


def server_executable() -> str:
    """``secantusd-py`` next to the running interpreter (the venv), else on ``PATH``."""
    candidate = Path(sys.executable).parent / "secantusd-py"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("secantusd-py")
    if found is None:
        raise EmbeddedServerError("secantusd-py is not installed (pip install SecantusDB==0.7.0b3)")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ping(url: str, timeout_ms: int = 500) -> bool:
    """True when a server answers ``ping`` at ``url`` within the timeout."""
    try:
        with pymongo.MongoClient(
            url,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=max(timeout_ms, 2000),
        ) as client:
            client.admin.command("ping")
        return True
    except PyMongoError:
        return False


def start_embedded(
    data_dir: str | os.PathLike,
    storage_path: str | None = None,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
    detach: bool = True,
    cache_size: str | None = None,
    pid_file: bool = True,
) -> EmbeddedServer:
    """Start ``secantusd-py`` on a free loopback port and wait until it answers ``ping``.

    ``detach`` puts it in its own session so it outlives the command that
    started it (``telemetry mongo start``); tests keep it attached.  The port
    is chosen just before the start, so a lost race is retried on another one.
    """
    data_dir = Path(data_dir).absolute()  # the server runs in it: a relative path would nest
    data_dir.mkdir(parents=True, exist_ok=True)
    storage = str(data_dir / "db") if not storage_path else (
        storage_path if storage_path == MEMORY else str(Path(storage_path).absolute()))
    exe = server_executable()
    last_error = ""
    for _ in range(3):
        port = free_port(host)
        cmd = [
            exe,
            "--host",
            host,
            "--port",
            str(port),
            "--storage-path",
            storage,
            "--standalone",
            "--log-level",
            "WARNING",
        ]
        if cache_size:
            cmd += ["--cache-size", cache_size]
        with open(data_dir / LOG_FILE, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=detach,
                cwd=data_dir,
            )
        server = EmbeddedServer(proc.pid, port, host, data_dir, storage, proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                last_error = _log_tail(data_dir / LOG_FILE)
                break
            if ping(server.url, 250):
                if pid_file:
                    _write_pid_file(data_dir / PID_FILE, server)
                return server
            time.sleep(0.05)
        else:
            _terminate(proc.pid, 5.0, proc)
            raise EmbeddedServerError(
                f"the embedded server did not answer within {timeout:.0f}s "
                f"(log: {data_dir / LOG_FILE})"
            )
    raise EmbeddedServerError(
        f"the embedded server exited at start: {last_error or 'no message'} "
        f"(log: {data_dir / LOG_FILE})"
    )


def embedded_status(
    data_dir: str | os.PathLike, notify: Callable[[str], None] | None = None
) -> EmbeddedServer | None:
    """The embedded server of ``data_dir`` if it is alive and answers; clears a stale pid file."""
    server = _our_server(Path(data_dir), notify)
    if server is not None and ping(server.url, 3000):
        return server
    return None


def _our_server(data_dir: Path, notify: Callable[[str], None] | None = None) -> EmbeddedServer | None:
    """The server the pid file names, if that process is alive and is our server.

    A pid file outlives its server (a reboot, a kill -9), and its pid may since
    belong to an unrelated process: such a file is removed (and ``notify``
    told), so nothing is ever signalled through it.
    """
    pid_file = data_dir / PID_FILE
    server = _read_pid_file(pid_file)
    if server is None:
        return None
    if not _alive(server.pid):
        reason = f"process {server.pid} is gone"
    else:
        command = _command_line(server.pid)
        if command is None or _is_server_command(command, server.port):
            return server  # ours (or a system that does not show command lines)
        reason = f"process {server.pid} is not the embedded server (it runs {' '.join(command)[:80]!r})"
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()
    if notify is not None:
        notify(f"removed the stale pid file {pid_file}: {reason}")
    return None


def _command_line(pid: int) -> list[str] | None:
    """A process's arguments (from /proc, else ``ps``); None when they cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    except FileNotFoundError:
        if Path("/proc/self/cmdline").exists():
            return []  # Linux, and the process is gone
    except OSError:
        return None
    try:
        out = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.split() if out.returncode == 0 else []


def _is_server_command(command: list[str], port: int) -> bool:
    """Whether a command line is ``secantusd-py ... --port PORT`` as :func:`start_embedded` runs it."""
    named = any(Path(arg).name.startswith("secantusd") for arg in command[:3])
    ports = [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == "--port"]
    return named and ports == [str(port)]


def ensure_embedded(config: MongoConfig) -> tuple[EmbeddedServer, bool]:
    """The embedded server of ``config.data_dir``, started if not running: ``(server, started)``."""
    data_dir = Path(config.data_dir).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(data_dir / LOCK_FILE):
        server = embedded_status(data_dir)
        if server is not None:
            return server, False
        stale = _our_server(data_dir)
        if stale is not None:  # ours and alive but not answering: not ours to reuse
            raise EmbeddedServerError(
                f"process {stale.pid} holds {data_dir} but does not answer on "
                f"port {stale.port}; run `telemetry mongo stop`"
            )
        return (
            start_embedded(
                data_dir,
                config.storage_path,
                config.host,
                config.start_timeout,
                detach=True,
                cache_size=config.cache_size,
            ),
            True,
        )


def stop_embedded(
    data_dir: str | os.PathLike,
    timeout: float = 15.0,
    notify: Callable[[str], None] | None = None,
) -> EmbeddedServer | None:
    """Stop the embedded server of ``data_dir``: the server that was stopped, or None.

    Only a process that is our server (its command line names secantusd and
    the pid file's port) is signalled; a stale pid file is removed instead.
    """
    server = _our_server(Path(data_dir), notify)
    if server is None:
        return None
    server.stop(timeout)
    return server


def resolve_url(config: MongoConfig, notify: Callable[[str], None] | None = None) -> str:
    """The URI to use: ``config.url`` if set, else the embedded server's (started on demand)."""
    if config.url:
        validate_url(config.url)
        return config.url
    server, started = ensure_embedded(config)
    if started and notify is not None:
        notify(
            f"started the embedded MongoDB server at {server.url} (data in {server.storage_path})"
        )
    return server.url


def validate_url(url: str) -> None:
    """Raise :class:`MongoUnavailable` for a URI that is not a MongoDB URI."""
    try:
        parse_uri(url)
    except (InvalidURI, ConfigurationError, ValueError) as e:
        raise MongoUnavailable(f"bad MongoDB URI {redact(url)!r}: {e}") from None


def connect(url: str, timeout_ms: int = 3000, **options) -> pymongo.MongoClient:
    """A client that has answered ``ping``.

    A bad URI or a server that does not answer is a :class:`MongoUnavailable`.
    """
    given = {k.lower() for k in parse_uri(url)["options"]} if _valid(url) else set()
    timeouts = {
        k: timeout_ms
        for k in ("serverSelectionTimeoutMS", "connectTimeoutMS")
        if k.lower() not in given
    }
    try:
        client = pymongo.MongoClient(url, **timeouts, **options)
    except (InvalidURI, ConfigurationError, ValueError, TypeError) as e:
        raise MongoUnavailable(f"bad MongoDB URI {redact(url)!r}: {e}") from None
    try:
        client.admin.command("ping")
    except PyMongoError as e:
        client.close()
        reason = str(e).split(",")[0].split(" (configured")[0]
        raise MongoUnavailable(f"cannot reach MongoDB at {redact(url)}: {reason}") from None
    return client


def is_local(url: str) -> bool:
    """Whether every server in ``url`` runs on this machine (loopback or a Unix socket).

    Such a server, the embedded one above all, competes with the client for
    the same CPUs; a server elsewhere does not.
    """
    if url.startswith("mongodb+srv://"):
        return False
    try:
        hosts = parse_uri(url)["nodelist"]
    except (InvalidURI, ConfigurationError, ValueError):
        return False
    return bool(hosts) and all(
        host in ("localhost", "::1") or host.startswith("127.") or host.endswith(".sock")
        for host, _ in hosts
    )


def _valid(url: str) -> bool:
    validate_url(url)
    return True


# credentials: the longest prefix ending in an '@' that is followed by hosts (no '@', no '/')
_CREDENTIALS = re.compile(r"(?P<creds>[^?]*)@[^@/?]*(?:[/?]|$)", re.S)


def redact(url: str) -> str:
    """The URI without its password, for messages.

    Everything up to the last ``@`` before the hosts counts as credentials, so
    a password holding an unescaped ``/`` or ``@`` (a URI pymongo refuses,
    and then quotes) is hidden too.
    """
    scheme, sep, rest = url.partition("://")
    m = _CREDENTIALS.match(rest) if sep else None
    if m is None:
        return url
    user = m.group("creds").split(":", 1)[0].split("/", 1)[0]
    return f"{scheme}://{user}:***@{rest[m.end('creds') + 1:]}"


def _write_pid_file(path: Path, server: EmbeddedServer) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(
        orjson.dumps(
            {
                "pid": server.pid,
                "port": server.port,
                "host": server.host,
                "storage_path": server.storage_path,
            }
        )
    )
    tmp.replace(path)


def _read_pid_file(path: Path) -> EmbeddedServer | None:
    try:
        data = orjson.loads(path.read_bytes())
        return EmbeddedServer(
            int(data["pid"]),
            int(data["port"]),
            data.get("host", "127.0.0.1"),
            path.parent,
            data.get("storage_path", ""),
        )
    except FileNotFoundError:
        return None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        path.unlink(missing_ok=True)  # unreadable: no server can be found through it anyway
        return None


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap our own exited child so it stops looking alive
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate(pid: int, timeout: float, process: subprocess.Popen | None) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return
        elif not _alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if process is not None:
        process.wait(5)


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
