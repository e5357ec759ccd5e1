"""The dashboard service's configuration: one dataclass, from a JSON file and the command line.

Precedence is command line > config file > default; an unknown key is an
error that names it.  Bearer tokens live in a file of their own (one per
line, ``#`` comments), never in the config file or on the command line, so
the config can be shared and the tokens kept secret.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import orjson


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key or file."""


@dataclass(frozen=True)
class DashboardConfig:
    """Everything ``telemetry dashboard`` needs; see docs/aggregates.md."""

    host: str = "127.0.0.1"
    port: int = 8000
    mongo_url: str | None = None
    database: str = "telemetry"
    max_age: int = 60                       # seconds a browser may reuse an answer
    private_channels: tuple[str, ...] = ()  # answered only with a configured bearer token
    tokens_file: str | None = None
    max_dates: int = 1000                   # dates per query (the real client sends < 350)
    mongo_timeout_ms: int = 5000
    pipeline_dir: str | None = None         # a `telemetry pipeline` data dir: its health on /metrics
    # What the operations view reads (docs/dashboard.md); each optional.
    stats_log: str | None = None            # the receiver's stats_log_file
    raw_logs: str | None = None             # the receiver's log_path
    errors_dir: str | None = None           # the converter's error output
    receiver_url: str | None = None         # a receiver's http://HOST:PORT, for its /metrics

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, not {self.port!r}")
        if not isinstance(self.max_age, int) or self.max_age < 0:
            raise ConfigError(f"max_age must be a number of seconds >= 0, not {self.max_age!r}")
        if not isinstance(self.max_dates, int) or self.max_dates < 1:
            raise ConfigError(f"max_dates must be at least 1, not {self.max_dates!r}")
        if isinstance(self.private_channels, str) or not all(
                isinstance(c, str) for c in self.private_channels):
            raise ConfigError("private_channels must be a list of channel names")
        object.__setattr__(self, "private_channels", tuple(self.private_channels))
        if self.private_channels and not self.tokens_file:
            raise ConfigError("private_channels need a tokens_file")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DashboardConfig":
        if not isinstance(values, dict):
            raise ConfigError("dashboard configuration must be a JSON object")
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(f"unknown configuration key {key!r} "
                                  f"(known keys: {', '.join(sorted(known))})")
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(str(e)) from None

    @classmethod
    def load(cls, path: str | os.PathLike | None, **overrides: Any) -> "DashboardConfig":
        """A JSON config file (or none), then the command line's values that are not None."""
        values: dict[str, Any] = {}
        if path is not None:
            try:
                values = orjson.loads(Path(path).read_bytes())
            except OSError as e:
                raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
            except orjson.JSONDecodeError as e:
                raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
            if not isinstance(values, dict):
                raise ConfigError(f"config file {path} must hold a JSON object")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    def replace(self, **overrides: Any) -> "DashboardConfig":
        return dataclasses.replace(self, **overrides)


def load_tokens(path: str | os.PathLike | None) -> frozenset[str]:
    """Bearer tokens, one per line; blank lines and ``#`` comments are ignored."""
    if path is None:
        return frozenset()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read tokens file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"tokens file {path} is not UTF-8 text") from None
    tokens = {line.strip() for line in text.splitlines()}
    tokens = {t for t in tokens if t and not t.startswith("#")}
    if not tokens:
        raise ConfigError(f"tokens file {path} holds no token")
    return frozenset(tokens)
