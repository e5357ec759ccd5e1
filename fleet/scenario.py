"""What the simulated fleet looks like and which known effects it carries.

A scenario is the population (channel and OS proportions, submissions per
client and day, the days covered) plus the effects that make downstream
results checkable against truth: a regression from a named nightly build on,
an OS difference, and a fraction of malformed submissions.  The defaults are
a realistic 2013 fleet with every effect on; a JSON file (``--scenario``)
overrides any key, and an effect set to ``false`` is off::

    {"days": 3, "channels": {"nightly": 0.2},
     "effects": {"regression": {"factor": 1.5, "build": "20130903030202"},
                 "os_difference": false, "malformed": {"fraction": 0.01}}}

A bad file is a :class:`ScenarioError` whose message names the key.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

import orjson

from fleet.channels import CHANNELS

# The metrics drawn per ping with every segment parameter (channel, OS, build);
# the effects can only name these.  Simple measurements are named as in the ping.
LIVE_HISTOGRAMS = ("GC_MS", "CYCLE_COLLECTOR", "MEMORY_RESIDENT", "FX_NEW_WINDOW_MS",
                   "TELEMETRY_PING", "GC_MAX_PAUSE_MS", "SHUTDOWN_OK", "A11Y_INSTANTIATED_FLAG",
                   "DNS_LOOKUP_METHOD2")
SIMPLE_MEASURES = ("uptime", "main", "firstPaint", "sessionRestored", "shutdownDuration")
OSES = ("WINNT", "Darwin", "Linux")
MALFORMED_KINDS = ("bad_json", "unknown_bucket", "missing_info")
_BUILD_ID = re.compile(r"^\d{14}$")


class ScenarioError(ValueError):
    """A scenario that cannot be used; the message names the offending key."""


@dataclass(frozen=True)
class Regression:
    """``metric`` is ``factor`` times slower on ``channel`` from build ``build`` on.

    ``build`` None means the channel's build of the middle day of the run, so
    the regression is always inside the data; :meth:`Fleet.describe` names it.
    """

    metric: str = "GC_MS"
    channel: str = "nightly"
    build: str | None = None
    factor: float = 1.3


@dataclass(frozen=True)
class OsDifference:
    """``metric`` is ``factor`` times the other OSes' value on ``os``, on every channel."""

    metric: str = "CYCLE_COLLECTOR"
    os: str = "Darwin"
    factor: float = 1.5


@dataclass(frozen=True)
class Malformed:
    """A ``fraction`` of submissions is broken in one of ``kinds``, in turn.

    bad_json: the body is cut short (converter reason ``bad_payload`` or the
    like); unknown_bucket: a histogram holds a key that is not a bucket
    (``invalid_bucket``); missing_info: the ping has no ``info`` (``bad_payload``).
    """

    fraction: float = 0.005
    kinds: tuple[str, ...] = MALFORMED_KINDS


@dataclass(frozen=True)
class Scenario:
    """The population and its effects; see the module docstring for the JSON form."""

    start_date: str = "2013-09-01"
    days: int = 7
    pings_per_client_day: float = 3.0
    channels: dict[str, float] = field(default_factory=lambda: {n: c.share for n, c in CHANNELS.items()})
    os: dict[str, float] = field(default_factory=lambda: {"WINNT": 0.82, "Darwin": 0.11, "Linux": 0.07})
    histograms_per_ping: int = 150
    saved_session_share: float = 0.5
    gzip_level: int = 6
    regression: Regression | None = field(default_factory=Regression)
    os_difference: OsDifference | None = field(default_factory=OsDifference)
    malformed: Malformed | None = field(default_factory=Malformed)

    @property
    def start(self) -> dt.date:
        return dt.date.fromisoformat(self.start_date)

    def with_days(self, days: int | None) -> "Scenario":
        """The same scenario over ``days`` submission days (None: unchanged)."""
        if days is None:
            return self
        if days < 1:
            raise ScenarioError(f"scenario key 'days': must be at least 1, got {days}")
        return replace(self, days=days)

    # -- loading -------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any) -> "Scenario":
        """A scenario from parsed JSON: defaults for what it leaves out, ScenarioError for the rest."""
        _require(data, dict, "(top level)", "an object")
        base = cls()
        known = {f.name for f in fields(cls)} - {"regression", "os_difference", "malformed"} | {"effects"}
        _no_unknown(data, known, "")
        kw: dict[str, Any] = {}
        if "start_date" in data:
            kw["start_date"] = _date(data["start_date"], "start_date")
        if "days" in data:
            kw["days"] = _int(data["days"], "days", 1, 3660)
        if "pings_per_client_day" in data:
            kw["pings_per_client_day"] = _number(data["pings_per_client_day"], "pings_per_client_day", 0.1, 1000)
        if "histograms_per_ping" in data:
            kw["histograms_per_ping"] = _int(data["histograms_per_ping"], "histograms_per_ping", 0, 10_000)
        if "saved_session_share" in data:
            kw["saved_session_share"] = _number(data["saved_session_share"], "saved_session_share", 0, 1)
        if "gzip_level" in data:
            kw["gzip_level"] = _int(data["gzip_level"], "gzip_level", 0, 9)
        if "channels" in data:
            kw["channels"] = _shares(data["channels"], "channels", base.channels)
        if "os" in data:
            kw["os"] = _shares(data["os"], "os", base.os)
        effects = data.get("effects", {})
        _require(effects, dict, "effects", "an object")
        _no_unknown(effects, {"regression", "os_difference", "malformed"}, "effects.")
        if "regression" in effects:
            kw["regression"] = _effect(effects["regression"], Regression, "effects.regression")
        if "os_difference" in effects:
            kw["os_difference"] = _effect(effects["os_difference"], OsDifference, "effects.os_difference")
        if "malformed" in effects:
            kw["malformed"] = _effect(effects["malformed"], Malformed, "effects.malformed")
        return replace(base, **kw)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Scenario":
        """Read a scenario file; any problem is a ScenarioError naming the file."""
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise ScenarioError(f"cannot read scenario {path}: {e.strerror}") from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ScenarioError(f"scenario {path} is not valid JSON: {e}") from None
        try:
            return cls.from_dict(data)
        except ScenarioError as e:
            raise ScenarioError(f"{path}: {e}") from None


def _date(value: Any, key: str) -> str:
    try:
        ok = isinstance(value, str) and len(value) == 10 and dt.date.fromisoformat(value)
    except ValueError:
        ok = False
    if not ok:
        raise ScenarioError(f"scenario key '{key}': must be a date YYYY-MM-DD, got {_show(value)}")
    return value


def _require(value: Any, kind: type, key: str, what: str) -> None:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ScenarioError(f"scenario key '{key}': must be {what}, got {_show(value)}")


def _show(value: Any) -> str:
    text = orjson.dumps(value).decode() if value is not None else "null"
    return text if len(text) <= 60 else text[:57] + "..."


def _no_unknown(data: dict, known: set[str], prefix: str) -> None:
    for key in data:
        if key not in known:
            raise ScenarioError(f"scenario key '{prefix}{key}': unknown key (known: {', '.join(sorted(known))})")


def _number(value: Any, key: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ScenarioError(f"scenario key '{key}': must be a number from {low} to {high}, got {_show(value)}")
    return float(value)


def _int(value: Any, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ScenarioError(f"scenario key '{key}': must be an integer from {low} to {high}, got {_show(value)}")
    return value


def _shares(value: Any, key: str, default: dict[str, float]) -> dict[str, float]:
    """Proportions by name: the file's values replace the defaults they name (0 drops one)."""
    _require(value, dict, key, "an object of proportions")
    out = dict(default)
    for name, share in value.items():
        if name not in default:
            raise ScenarioError(f"scenario key '{key}.{name}': unknown (known: {', '.join(default)})")
        out[name] = _number(share, f"{key}.{name}", 0, 1e9)
    if sum(out.values()) <= 0:
        raise ScenarioError(f"scenario key '{key}': the proportions add up to 0")
    return out


def _effect(value: Any, cls: type, key: str):
    if value is False or value is None:
        return None
    if value is True:
        return cls()
    _require(value, dict, key, "an object, true or false")
    names = {f.name for f in fields(cls)} | {"enabled"}
    _no_unknown(value, names, key + ".")
    if "enabled" in value:
        _require(value["enabled"], bool, f"{key}.enabled", "true or false")
        if not value["enabled"]:
            return None
    kw: dict[str, Any] = {}
    for name, v in value.items():
        k = f"{key}.{name}"
        if name == "enabled":
            continue
        if name == "factor":
            kw[name] = _number(v, k, 0.01, 100)
        elif name == "fraction":
            kw[name] = _number(v, k, 0, 1)
        elif name == "metric":
            if v not in LIVE_HISTOGRAMS + SIMPLE_MEASURES:
                raise ScenarioError(f"scenario key '{k}': must be one of {', '.join(LIVE_HISTOGRAMS + SIMPLE_MEASURES)}, "
                                    f"got {_show(v)}")
            kw[name] = v
        elif name == "channel":
            if v not in CHANNELS:
                raise ScenarioError(f"scenario key '{k}': must be one of {', '.join(CHANNELS)}, got {_show(v)}")
            kw[name] = v
        elif name == "os":
            if v not in OSES:
                raise ScenarioError(f"scenario key '{k}': must be one of {', '.join(OSES)}, got {_show(v)}")
            kw[name] = v
        elif name == "build":
            if v is not None and not (isinstance(v, str) and _BUILD_ID.match(v)):
                raise ScenarioError(f"scenario key '{k}': must be a 14-digit build ID or null, got {_show(v)}")
            kw[name] = v
        elif name == "kinds":
            if (not isinstance(v, list) or not v
                    or not all(isinstance(x, str) and x in MALFORMED_KINDS for x in v)):
                raise ScenarioError(f"scenario key '{k}': must be a non-empty list of "
                                    f"{', '.join(MALFORMED_KINDS)}, got {_show(v)}")
            kw[name] = tuple(v)
    return cls(**kw)
