"""Payload conversion: one raw record in, one storage-format line and its dimensions out.

SPEC section 4.  Classic pings (``ver: 1``) are validated against the
Histograms.json revision they name and their histograms rewritten from
``{bucket lower bound: count}`` maps into arrays (one slot per bucket, then
the five statistics); unified pings (``version: 4``) get an ``info`` built
from ``application`` and become version 5.  A record that cannot be converted
raises :class:`~converter.errors.RecordError` with its reason, so the caller
can keep it in the error output instead of losing it.

The per-histogram work is the hot loop of the whole converter, so bucket
tables are turned once per (revision, histogram) into a dict keyed by the
bucket's text as clients send it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from converter.errors import RecordError
from converter.histograms import HistogramError, Histograms
from converter.revisions import RevisionError
from converter.schema import Schema, submission_date
from receiver.rawlog import MAX_INFLATED, CorruptData, DataTooLarge, Record, inflate

VERSION_UNCONVERTED = 1
VERSION_CONVERTED = 2
VERSION_FXOS_1_3 = 3
VERSION_UNIFIED = 4
VERSION_UNIFIED_CONVERTED = 5

# The URL path after the prefix: docId, then these dimensions.
PATH_FIELDS = ("reason", "appName", "appVersion", "appUpdateChannel", "appBuildID")
URL_PREFIX = "/submit/telemetry/"
MAX_DOC_ID_LENGTH = 256
STATISTICS = ("sum", "log_sum", "log_sum_squares", "sum_squares_lo", "sum_squares_hi")
UNKNOWN_KEY = "unknownHistograms"
UNKNOWN_KEYED_KEY = "unknownKeyedHistograms"
DEFAULT_MAX_UNCOMPRESSED = MAX_INFLATED


class RevisionSource(Protocol):
    """What the converter needs of a revision cache (``converter.revisions.RevisionCache``)."""

    def get(self, revision_url: str) -> Histograms: ...


@dataclass(slots=True)
class Converted:
    """A converted record: ``line`` is ``{docId}\\t{json}\\n``, ready for its layout file."""

    doc_id: str
    dimensions: list[str]
    version: int
    line: bytes
    unknown_histograms: list[str] = field(default_factory=list)


def parse_path(path: str) -> tuple[str, dict[str, str] | None]:
    """The docId and the dimensions a submission path names (None for a docId-only path).

    The receiver stores the path after its prefix; a path that still has the
    prefix (some old logs) is accepted too.
    """
    if path.startswith(URL_PREFIX):
        path = path[len(URL_PREFIX):]
    parts = path.lstrip("/").split("/")
    doc_id = parts[0]
    if not doc_id or len(doc_id) > MAX_DOC_ID_LENGTH or not doc_id.isprintable() or " " in doc_id:
        raise RecordError("invalid_path", f"path {path[:200]!r} does not start with a usable docId")
    if len(parts) == 1:
        return doc_id, None
    if len(parts) != 1 + len(PATH_FIELDS):
        raise RecordError("invalid_path", f"path {path[:200]!r} has {len(parts)} components, "
                                          f"expected docId or docId/{'/'.join(PATH_FIELDS)}")
    return doc_id, dict(zip(PATH_FIELDS, parts[1:]))


def payload_version(doc: dict) -> int:
    """``ver`` of a classic or Firefox OS ping, ``version`` of a unified one; 1 when neither."""
    version = doc.get("ver")
    if version is None:
        version = doc.get("version")
    if version is None:
        return VERSION_UNCONVERTED
    if type(version) is not int or not VERSION_UNCONVERTED <= version <= VERSION_UNIFIED_CONVERTED:
        raise RecordError("bad_payload", f"unknown payload version {str(version)[:50]!r}")
    return version


def load_json(body: bytes) -> Any:
    """Parse a body; orjson first, the standard library for what orjson refuses.

    Real pings hold the odd invalid UTF-8 byte (the original decoded with
    ``errors="replace"``) or an integer beyond 64 bits; those still parse.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError) as e:
        raise RecordError("bad_payload", f"body is not JSON: {e}") from None


def dump_json(doc: Any) -> bytes:
    """Minimal JSON; the standard library only for values orjson cannot write."""
    try:
        return orjson.dumps(doc)
    except TypeError:
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()


class _Table:
    """A histogram definition prepared for conversion: bucket text -> slot."""

    __slots__ = ("text_index", "int_index", "n_buckets")

    def __init__(self, buckets: tuple[int, ...] | list[int]):
        self.n_buckets = len(buckets)
        self.int_index = {}
        for i, b in enumerate(buckets):
            self.int_index.setdefault(b, i)
        self.text_index = {str(b): i for b, i in self.int_index.items()}


class Converter:
    """Converts raw records; one per worker process (it caches prepared bucket tables)."""

    def __init__(self, schema: Schema, revisions: RevisionSource | None,
                 max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED):
        self.schema = schema
        self.revisions = revisions
        self.max_uncompressed = max_uncompressed
        # revision URL -> (its definitions, name -> _Table | None (undefined) | HistogramError)
        self._tables: dict[str, tuple[Histograms, dict[str, _Table | HistogramError | None]]] = {}

    # -- records ---------------------------------------------------------

    def convert_record(self, record: Record) -> Converted:
        """Convert one raw record or raise RecordError with the reason it is rejected."""
        doc_id, path_info = parse_path(record.path)
        if not record.data:
            raise RecordError("empty_data", "the body is empty")
        try:
            body = inflate(record.data, self.max_uncompressed)
        except DataTooLarge as e:
            raise RecordError("too_large", str(e)) from None
        except CorruptData as e:
            raise RecordError("corrupted_data", str(e)) from None
        if len(body) > self.max_uncompressed:
            raise RecordError("too_large",
                              f"body of {len(body)} bytes is over {self.max_uncompressed}")
        if not body.strip():
            raise RecordError("empty_data", "the body holds no data")
        doc = load_json(body)
        if not isinstance(doc, dict):
            raise RecordError("bad_payload",
                              f"payload is a JSON {type(doc).__name__}, not an object")
        return self.convert_document(doc_id, path_info, doc, submission_date(record.timestamp))

    def convert_document(self, doc_id: str, path_info: dict[str, str] | None, doc: dict,
                         date: str) -> Converted:
        """Convert a parsed payload; ``doc`` is changed in place."""
        version = payload_version(doc)
        unknown: list[str] = []
        if version == VERSION_UNCONVERTED:
            info = _require_dict(doc, "info")
            histograms = _require_dict(doc, "histograms") if "histograms" in doc else None
            if histograms:
                revision = info.get("revision")
                if not isinstance(revision, str) or not revision:
                    raise RecordError("bad_payload", "payload has histograms but no info.revision")
                converted, aside = self.convert_histograms(revision, histograms)
                doc["histograms"] = converted
                if aside:
                    doc[UNKNOWN_KEY] = aside
                    unknown.extend(aside)
            doc["ver"] = version = VERSION_CONVERTED
        elif version == VERSION_CONVERTED:
            info = _require_dict(doc, "info")
        elif version == VERSION_FXOS_1_3:
            info = {"reason": "ftu", "appName": "FirefoxOS",
                    "appUpdateChannel": doc.get("deviceinfo.update_channel"),
                    "appVersion": doc.get("deviceinfo.platform_version"),
                    "appBuildID": doc.get("deviceinfo.platform_build_id")}
            old = doc.get("info")
            doc["info"] = {**old, **info} if isinstance(old, dict) else info
        elif version == VERSION_UNIFIED:
            info, version = self._convert_unified(doc, unknown)
        else:  # VERSION_UNIFIED_CONVERTED
            info = _require_dict(doc, "info")

        if path_info is None and version in (VERSION_UNCONVERTED, VERSION_CONVERTED):
            raise RecordError("uuid_only_path", "a classic ping needs its dimensions in the path, "
                                                "not only the docId")
        merged = dict(path_info) if path_info else {}
        for name in self.schema.names:
            value = info.get(name)
            if value is not None and not isinstance(value, (dict, list)):
                merged[name] = value
        dims = self.schema.dimensions_for(merged, date)
        line = b"".join((doc_id.encode("utf-8", "surrogatepass"), b"\t", dump_json(doc), b"\n"))
        return Converted(doc_id, dims, version, line, unknown)

    def _convert_unified(self, doc: dict, unknown: list[str]) -> tuple[dict, int]:
        ping_type = doc.get("type")
        if not isinstance(ping_type, str) or not ping_type:
            raise RecordError("bad_payload", "unified ping without a 'type'")
        app = _require_dict(doc, "application")
        payload = _require_dict(doc, "payload")
        info = {"reason": ping_type, "appName": app.get("name"), "appVersion": app.get("version"),
                "appUpdateChannel": app.get("channel"), "appBuildID": app.get("buildId")}
        if ping_type not in ("main", "saved-session"):
            return info, VERSION_UNIFIED  # other types are stored as sent
        if ping_type == "saved-session":
            _require_dict(doc, "environment")
        pinfo = _require_dict(payload, "info", "payload.info")
        histograms = _require_dict(payload, "histograms", "payload.histograms")
        keyed = payload.get("keyedHistograms")
        if histograms or keyed:
            revision = pinfo.get("revision")
            if not isinstance(revision, str) or not revision:
                raise RecordError("bad_payload",
                                  "payload has histograms but no payload.info.revision")
            payload["histograms"], aside = self.convert_histograms(revision, histograms)
            if aside:
                doc[UNKNOWN_KEY] = aside
                unknown.extend(aside)
            if isinstance(keyed, dict) and keyed:
                payload["keyedHistograms"], kaside = self.convert_keyed(revision, keyed)
                if kaside:
                    doc[UNKNOWN_KEYED_KEY] = kaside
                    unknown.extend(kaside)
        doc["info"] = info
        doc["version"] = VERSION_UNIFIED_CONVERTED
        return info, VERSION_UNIFIED_CONVERTED

    # -- histograms ------------------------------------------------------

    def _revision_tables(self, revision: str) -> tuple[Histograms, dict]:
        found = self._tables.get(revision)
        if found is None:
            if self.revisions is None:
                raise RecordError("missing_revision",
                                  f"no histogram source configured for {revision}")
            found = self._tables[revision] = (self._get_revision(revision), {})
        return found

    def _get_revision(self, revision: str) -> Histograms:
        try:
            return self.revisions.get(revision)
        except RevisionError as e:
            reason = getattr(e, "reason", "missing_revision")
            if reason not in ("missing_revision", "missing_revision_repo"):
                reason = "missing_revision"
            raise RecordError(reason, str(e), getattr(e, "unavailable", None)) from None
        except HistogramError as e:
            raise RecordError("missing_revision", f"revision {revision}: {e}") from None

    def _table(self, histograms: Histograms, tables: dict, name: str) -> _Table | None:
        table = tables.get(name, _UNSEEN)
        if table is _UNSEEN:
            try:
                definition = histograms.get(name)
                table = None if definition is None else _Table(definition.buckets)
            except HistogramError as e:
                table = e
            tables[name] = table
        if table.__class__ is _Table or table is None:
            return table
        raise RecordError("unknown_histogram", f"histogram {name}: unusable definition: {table}")

    def convert_histograms(self, revision: str, histograms: dict) -> tuple[dict, dict]:
        """``(converted, unknown)``: arrays for defined names, the rest as sent."""
        defs, tables = self._revision_tables(revision)
        converted: dict[str, list] = {}
        unknown: dict[str, Any] = {}
        get_table = tables.get
        for name, hist in histograms.items():
            table = get_table(name)
            if table.__class__ is not _Table:
                table = self._table(defs, tables, name)
                if table is None:
                    unknown[name] = hist
                    continue
            # _convert_one inlined for the common case (~300 histograms a ping): anything
            # unusual (a missing "values", a bucket written "01", a count that is not an
            # int) goes back through _convert_one, which accepts or rejects it exactly.
            try:
                out = [0] * table.n_buckets
                index = table.text_index
                for key, count in hist["values"].items():
                    if count.__class__ is not int:
                        raise TypeError
                    out[index[key]] = count
            except (TypeError, KeyError, AttributeError, IndexError):
                converted[name] = _convert_one(name, table, hist)
            else:
                out += map(hist.get, STATISTICS, _ABSENT)
                converted[name] = out
        return converted, unknown

    def convert_keyed(self, revision: str, keyed: dict) -> tuple[dict, dict]:
        """Keyed histograms: ``{name: {key: histogram}}`` converted per key."""
        defs, tables = self._revision_tables(revision)
        converted: dict[str, dict] = {}
        unknown: dict[str, Any] = {}
        for name, by_key in keyed.items():
            table = self._table(defs, tables, name)
            if table is None:
                unknown[name] = by_key
                continue
            if not isinstance(by_key, dict):
                raise RecordError("conversion_error", f"keyed histogram {name} is not an object")
            converted[name] = {k: _convert_one(f"{name}[{k}]", table, h) for k, h in by_key.items()}
        return converted, unknown


_INT_ONLY = frozenset((int,))
_ABSENT = (-1,) * len(STATISTICS)
_UNSEEN = object()


def _convert_one(name: str, table: _Table, hist: Any) -> list:
    """One histogram as an array of bucket counts followed by the five statistics."""
    try:
        values = hist["values"]
        items = values.items()
    except (TypeError, KeyError, AttributeError, IndexError):
        raise RecordError("conversion_error", f"histogram {name} has no 'values' object") from None
    out = [0] * table.n_buckets
    index = table.text_index
    try:
        for key, count in items:
            out[index[key]] = count
    except KeyError:
        for key, count in items:
            out[_slot(name, table, key)] = count
    if not _INT_ONLY.issuperset(map(type, values.values())):
        bad = next(c for c in values.values() if type(c) is not int)
        raise RecordError("invalid_bucket",
                          f"histogram {name}: count {str(bad)[:40]!r} is not an integer")
    out += map(hist.get, STATISTICS, _ABSENT)
    return out


def _slot(name: str, table: _Table, key: str) -> int:
    """The slot of a bucket key, also one written differently (``"01"``): compared as an integer."""
    slot = table.text_index.get(key)
    if slot is not None:
        return slot
    try:
        slot = table.int_index.get(int(key))
    except ValueError:
        slot = None
    if slot is None:
        raise RecordError("invalid_bucket", f"histogram {name}: {key[:40]!r} is not a bucket "
                                            f"of its definition")
    return slot


def _require_dict(doc: dict, key: str, label: str | None = None) -> dict:
    value = doc.get(key)
    if not isinstance(value, dict):
        what = "missing" if value is None else f"a {type(value).__name__}, not an object"
        raise RecordError("bad_payload", f"{label or key} is {what}")
    return value
