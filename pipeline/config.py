"""The one configuration of ``telemetry pipeline``: every stage's settings in one JSON document.

Precedence is command line > config file > defaults, as for every service
here.  An unknown key is an error that names it.  ``receiver`` holds extra
receiver keys (``docs/receiver.md``) passed through as they are; the keys
the pipeline owns (``log_path``, ``port``, ``host``, ``max_log_age_ms``)
cannot be set there.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import PipelineConfigError

OWNED_RECEIVER_KEYS = ("log_path", "port", "host", "max_log_age_ms")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything ``telemetry pipeline`` starts, in one place (see docs/pipeline.md)."""

    data_dir: str = ""
    host: str = "127.0.0.1"
    port: int = 8080                 # the receiver's (submissions)
    dashboard_port: int = 8000       # the API server's (aggregates, /metrics)
    mongo_url: str | None = None     # none: the embedded server, data in DATA_DIR/mongo
    database: str = "telemetry"
    histogram_cache: str | None = None
    histogram_server: str | None = None
    rotation_age_ms: int = 3000      # a raw log is finished this long after it was opened
    receiver_workers: int = 1
    converter_workers: int = 1
    api: bool = True                 # run the API server
    restart_backoff_max: float = 30.0
    stop_timeout: float = 60.0       # seconds a stage has to finish the unit in hand
    receiver: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PipelineConfig":
        if not isinstance(data, dict):
            raise PipelineConfigError("a pipeline configuration must be a JSON object")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise PipelineConfigError(f"unknown configuration key {key!r} "
                                          f"(known: {', '.join(sorted(known))})")
        return cls(**data)

    @classmethod
    def load(cls, path: str | os.PathLike | None,
             overrides: dict[str, Any] | None = None) -> "PipelineConfig":
        """A JSON file (or nothing), with values from the command line (not None) on top."""
        data: dict[str, Any] = {}
        if path is not None:
            try:
                data = orjson.loads(Path(path).read_bytes())
            except FileNotFoundError:
                raise PipelineConfigError(f"config file {os.fspath(path)} does not exist") from None
            except orjson.JSONDecodeError as e:
                raise PipelineConfigError(f"config file {os.fspath(path)} is not JSON: {e}") from None
            if not isinstance(data, dict):
                raise PipelineConfigError(f"config file {os.fspath(path)} must hold a JSON object")
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(data)

    def check(self) -> None:
        if not self.data_dir:
            raise PipelineConfigError("no data directory (--data-dir / data_dir) given")
        for name in ("port", "dashboard_port"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= 65535:
                raise PipelineConfigError(f"{name} must be a port number (0 picks a free one), "
                                          f"not {value!r}")
        for name in ("rotation_age_ms", "receiver_workers", "converter_workers"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise PipelineConfigError(f"{name} must be a positive integer, not {value!r}")
        for name in ("restart_backoff_max", "stop_timeout"):
            value = getattr(self, name)
            if type(value) not in (int, float) or value <= 0:
                raise PipelineConfigError(f"{name} must be a positive number, not {value!r}")
        if not isinstance(self.receiver, dict):
            raise PipelineConfigError("receiver must be an object of receiver configuration keys")
        owned = sorted(set(self.receiver) & set(OWNED_RECEIVER_KEYS))
        if owned:
            raise PipelineConfigError(f"receiver keys {', '.join(owned)} are set by the pipeline "
                                      "(use data_dir, port, host, rotation_age_ms)")

    def replace(self, **changes: Any) -> "PipelineConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
