"""The dimension schema (``telemetry_schema.json``) and the filters built like it.

A schema names, in order, the fields that partition the data on disk and the
values each may take; a MapReduce or aggregation filter is a document of the
same shape that says which values to read.  Both follow SPEC section 3:
``allowed_values`` is ``"*"``, a list, a single string, or ``{"min", "max"}``
compared as strings.  A value that is not allowed becomes ``OTHER``, a missing
one ``UNKNOWN``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import orjson

OTHER = "OTHER"
UNKNOWN = "UNKNOWN"
SUBMISSION_DATE = "submission_date"


class SchemaError(ValueError):
    """A schema or filter document that does not have the SPEC's shape."""


@dataclass(frozen=True, slots=True)
class Dimension:
    field_name: str
    allowed_values: Any

    def allows(self, value: str) -> bool:
        """True when ``value`` passes this dimension's ``allowed_values``."""
        return is_allowed(value, self.allowed_values)

    def apply(self, value: Any) -> str:
        """The stored value: the value itself, ``OTHER`` or ``UNKNOWN``."""
        if value is None:
            return UNKNOWN
        value = value if isinstance(value, str) else str(value)
        return value if self.allows(value) else OTHER


def is_allowed(value: str, allowed: Any) -> bool:
    if allowed == "*":
        return True
    if isinstance(allowed, str):
        return value == allowed
    if isinstance(allowed, list):
        return value in allowed
    if isinstance(allowed, dict):
        low, high = allowed.get("min"), allowed.get("max")
        return (low is None or value >= str(low)) and (high is None or value <= str(high))
    raise SchemaError(f"allowed_values must be '*', a string, a list or {{min, max}}, not {allowed!r}")


def check_allowed(allowed: Any, where: str) -> None:
    """Raise :class:`SchemaError` unless ``allowed`` has one of the SPEC's shapes.

    Anything else is refused rather than read loosely: an operator document
    such as ``{"$ne": "x"}`` would otherwise allow every value, and a list of
    numbers would allow none.
    """
    shape = "'*', a string, a list of strings or {\"min\": x, \"max\": y}"
    if isinstance(allowed, str):
        return
    if isinstance(allowed, list):
        bad = [v for v in allowed if not isinstance(v, str)]
        if bad:
            raise SchemaError(f"{where}: allowed_values must be {shape}; "
                              f"{bad[0]!r} in the list is not a string")
        return
    if isinstance(allowed, dict):
        extra = sorted(set(allowed) - {"min", "max"})
        if extra or not allowed:
            raise SchemaError(f"{where}: allowed_values must be {shape}, not {allowed!r}"
                              + (f" ({', '.join(extra)} is not min or max)" if extra else ""))
        for key, bound in allowed.items():
            if bound is not None and (isinstance(bound, bool)
                                      or not isinstance(bound, (str, int, float))):
                raise SchemaError(f"{where}: allowed_values {key} must be a string or a number, "
                                  f"not {bound!r}")
        return
    raise SchemaError(f"{where}: allowed_values must be {shape}, not {allowed!r}")


class Schema:
    """A parsed schema (or filter): ordered dimensions with their allowed values."""

    def __init__(self, spec: Mapping[str, Any]):
        if not isinstance(spec, Mapping) or not isinstance(spec.get("dimensions"), list):
            raise SchemaError("a schema needs a 'dimensions' list")
        version = spec.get("version", 1)
        if type(version) is not int and not (isinstance(version, str) and version.isdigit()):
            raise SchemaError(f"a schema's version must be a number, not {version!r}")
        self.version = int(version)
        dims = []
        for i, d in enumerate(spec["dimensions"]):
            if not isinstance(d, Mapping) or not isinstance(d.get("field_name"), str):
                raise SchemaError(f"dimension {i} needs a 'field_name'")
            name = d["field_name"]
            # A name becomes a MongoDB field path (meta.NAME): no operator, no sub-path.
            if not name or name.startswith("$") or "." in name or "\0" in name:
                raise SchemaError(f"dimension {i}: field_name {name!r} must not be empty, "
                                  "start with '$' or hold '.'")
            allowed = d.get("allowed_values", "*")
            check_allowed(allowed, f"dimension {d['field_name']!r}")
            dims.append(Dimension(d["field_name"], allowed))
        if not dims:
            raise SchemaError("a schema needs at least one dimension")
        self.dimensions: tuple[Dimension, ...] = tuple(dims)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Schema":
        try:
            with open(path, "rb") as f:
                spec = orjson.loads(f.read())
        except FileNotFoundError:
            raise SchemaError(f"schema file {os.fspath(path)} does not exist") from None
        except orjson.JSONDecodeError as e:
            raise SchemaError(f"schema file {os.fspath(path)} is not JSON: {e}") from None
        return cls(spec)

    @property
    def names(self) -> list[str]:
        return [d.field_name for d in self.dimensions]

    def dimensions_for(self, info: Mapping[str, Any], submission_date: str) -> list[str]:
        """The stored dimension values of a record: ``info`` fields in schema order."""
        values = []
        for d in self.dimensions:
            raw = submission_date if d.field_name == SUBMISSION_DATE else info.get(d.field_name)
            values.append(d.apply(raw))
        return values

    def allows(self, values: Iterable[str]) -> bool:
        """True when every value passes its dimension: the filter test for a whole file."""
        return all(d.allows(v) for d, v in zip(self.dimensions, values))

    def allows_level(self, level: int, value: str) -> bool:
        """The filter test for one level of the layout, so walkers can prune directories."""
        return level >= len(self.dimensions) or self.dimensions[level].allows(value)


def submission_date(timestamp_ms: int) -> str:
    """YYYYMMDD of the UTC day a record was received."""
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=timezone.utc).strftime("%Y%m%d")
