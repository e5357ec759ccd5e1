"""The receiver's configuration: the original server's JSON keys plus ours.

An old ``receiver.json`` from the Node.js server loads unchanged; a key we do
not know is an error that names it, so a typo never silently falls back to a
default.  Precedence is command line > config file > default; the CLI applies
it with :meth:`ReceiverConfig.replace`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import orjson

from receiver.errors import ConfigError

DURABILITY_MODES = ("fsync", "os")
HTTP_SERVERS = ("fast", "tornado")
EVENT_LOOPS = ("uvloop", "asyncio")


@dataclass(frozen=True)
class ReceiverConfig:
    """Everything one receiver (supervisor and its workers) needs; see docs/receiver.md."""

    # The original server's keys.
    motd: str = "Telemetry receiver ready"
    max_data_length: int = 200 * 1024
    max_path_length: int = 10 * 1024
    port: int = 8080
    log_path: str = "raw_logs"
    log_base: str = "telemetry"
    max_log_age_ms: int = 5 * 60 * 1000
    max_log_size: int = 500 * 1024 * 1024
    include_request_ip: bool = False
    stats_log_file: str | None = None
    url_prefix: str = "/submit/telemetry/"
    # Ours.
    host: str = "127.0.0.1"
    workers: int = 0
    durability: str = "fsync"
    http_server: str = "fast"
    event_loop: str = "uvloop"
    metrics: bool = True
    shutdown_timeout: float = 30.0
    idle_connection_timeout: float = 60.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_length: int = 16 * 1024
    max_connections: int = 10000
    stats_flush_ms: int = 1000
    hostname: str | None = None

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ReceiverConfig":
        """Build from a mapping such as a parsed JSON file; unknown keys are an error."""
        if not isinstance(values, dict):
            raise ConfigError("receiver configuration must be a JSON object")
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(f"unknown configuration key {key!r} "
                                  f"(known keys: {', '.join(sorted(known))})")
        return cls(**values)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReceiverConfig":
        """Read a JSON config file (the original server's ``receiver.json`` works as is)."""
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        try:
            values = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
        return cls.from_dict(values)

    def replace(self, **overrides: Any) -> "ReceiverConfig":
        """A copy with ``overrides`` applied; None values mean "not given" and are ignored."""
        given = {k: v for k, v in overrides.items() if v is not None}
        known = {f.name for f in fields(self)}
        for key in given:
            if key not in known:
                raise ConfigError(f"unknown configuration key {key!r}")
        return dataclasses.replace(self, **given)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def worker_count(self) -> int:
        """``workers`` with 0 resolved to the number of CPUs this process may use."""
        if self.workers > 0:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)

    @property
    def log_version(self) -> int:
        """Raw-log record version: v2 carries the client IP, v1 does not."""
        return 2 if self.include_request_ip else 1


_TYPES: dict[str, tuple[type, ...]] = {
    "motd": (str,),
    "max_data_length": (int,),
    "max_path_length": (int,),
    "port": (int,),
    "log_path": (str,),
    "log_base": (str,),
    "max_log_age_ms": (int,),
    "max_log_size": (int,),
    "include_request_ip": (bool,),
    "stats_log_file": (str, type(None)),
    "url_prefix": (str,),
    "host": (str,),
    "workers": (int,),
    "durability": (str,),
    "http_server": (str,),
    "event_loop": (str,),
    "metrics": (bool,),
    "shutdown_timeout": (int, float),
    "idle_connection_timeout": (int, float),
    "header_timeout": (int, float),
    "body_timeout": (int, float),
    "max_header_length": (int,),
    "max_connections": (int,),
    "stats_flush_ms": (int,),
    "hostname": (str, type(None)),
}


def _validate(c: ReceiverConfig) -> None:
    for f in fields(c):
        value = getattr(c, f.name)
        allowed = _TYPES[f.name]
        # bool is an int in Python; a JSON true for a size is still a mistake.
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ConfigError(f"configuration key {f.name!r} must be {names}, got {value!r}")
    for name in ("max_data_length", "max_path_length", "max_log_age_ms", "max_log_size",
                 "stats_flush_ms", "max_header_length", "max_connections"):
        if getattr(c, name) <= 0:
            raise ConfigError(f"configuration key {name!r} must be positive, "
                              f"got {getattr(c, name)}")
    if c.max_path_length > 0xFFFF:
        raise ConfigError("configuration key 'max_path_length' cannot exceed 65535 "
                          "(the raw-log field)")
    if not 0 <= c.port <= 65535:
        raise ConfigError(f"configuration key 'port' must be 0..65535, got {c.port}")
    if c.workers < 0:
        raise ConfigError(f"configuration key 'workers' must be 0 (one per CPU) or more, "
                          f"got {c.workers}")
    if c.durability not in DURABILITY_MODES:
        raise ConfigError("configuration key 'durability' must be one of "
                          f"{', '.join(DURABILITY_MODES)}, "
                          f"got {c.durability!r}")
    if c.http_server not in HTTP_SERVERS:
        raise ConfigError("configuration key 'http_server' must be one of "
                          f"{', '.join(HTTP_SERVERS)}, "
                          f"got {c.http_server!r}")
    if c.event_loop not in EVENT_LOOPS:
        raise ConfigError("configuration key 'event_loop' must be one of "
                          f"{', '.join(EVENT_LOOPS)}, got {c.event_loop!r}")
    if not (c.url_prefix.startswith("/") and c.url_prefix.endswith("/")):
        raise ConfigError("configuration key 'url_prefix' must start and end with '/', "
                          f"got {c.url_prefix!r}")
    if not c.log_base or "/" in c.log_base:
        raise ConfigError("configuration key 'log_base' must be a plain file name prefix, "
                          f"got {c.log_base!r}")
    if c.hostname is not None and (not c.hostname or "/" in c.hostname):
        raise ConfigError(f"configuration key 'hostname' must be a plain name, got {c.hostname!r}")
    for name in ("shutdown_timeout", "idle_connection_timeout", "header_timeout", "body_timeout"):
        if getattr(c, name) <= 0:
            raise ConfigError(f"configuration key {name!r} must be positive, "
                              f"got {getattr(c, name)}")
