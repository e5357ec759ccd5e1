"""The aggregates model (SPEC section 7): what one ping adds to which cell and metric.

An aggregate is the element-wise sum, over pings, of one metric in one cell.
This module is the one place that decides it: :meth:`Aggregate.add_ping`
turns a converted layout record into its contributions (cells x metrics ->
histogram, sum, count), and aggregates of pings, files or whole datasets
merge by addition.  The importer's hook and the MapReduce rebuild both call
it, which is why their results are identical.

Layout of an :class:`Aggregate`, which is also the storage grain
(:mod:`aggregations.store`):

- ``data[(by, channel, version, date, metric)][(application, architecture,
  os, osVersion, child, label, layout)] = [histogram, sum, count]``; one
  stored document per outer key, one row per inner key.  ``layout`` names the
  bucket table (a hash of kind and bucket bounds), so pings validated against
  revisions that disagree on the buckets are never added up together.
- ``definitions[(channel, version, metric)][layout] = (kind, buckets,
  description, newest)``: ``newest`` is the largest build ID whose pings used
  that layout; where layouts disagree the newest one is served.
- ``stats``: what was counted and left out, by reason.
"""

from __future__ import annotations

import hashlib
import html
import time
from sys import intern
from bisect import bisect_right
from collections import Counter
from itertools import compress
from dataclasses import dataclass, field
from operator import add
from typing import Any, Iterator, Mapping, Protocol

from converter.histograms import HistogramError, Histograms, exponential_buckets

BY_BUILD = "build_id"
BY_SUBMISSION = "submission_date"
BY = (BY_BUILD, BY_SUBMISSION)
COUNT_PREFIX = "[[COUNT]]_"
SIMPLE_PREFIX = "SIMPLE_MEASURES_"
SCALAR_PREFIX = "SCALARS_"
PARENT, CONTENT, GPU = "parent", "content", "gpu"
UNKNOWN = "unknown"
N_STATS = 5  # sum, log_sum, log_sum_squares, sum_squares_lo, sum_squares_hi after the buckets

# The layout's dimension names (the packaged telemetry_schema.json) this model reads.
CHANNEL, APP_VERSION, APP_NAME, BUILD_ID = (
    "appUpdateChannel", "appVersion", "appName", "appBuildID")
SUBMISSION_DATE = "submission_date"

# Filters a query may give, in row order (label and layout follow them in a row key).
ROW_DIMENSIONS = ("application", "architecture", "os", "osVersion", "child")

COUNT_BUCKETS: tuple[int, ...] = tuple(exponential_buckets(1, 10000, 100))
SIMPLE_BUCKETS: tuple[int, ...] = tuple(exponential_buckets(1, 30000, 50))


class RevisionSource(Protocol):
    """What the model needs of a revision cache (``converter.revisions.RevisionCache``)."""

    def get(self, revision_url: str) -> Histograms: ...


def layout_id(kind: str, buckets: tuple) -> str:
    """A short stable name for a bucket table: equal tables, equal names."""
    text = kind + ":" + ",".join(map(str, buckets))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class MetricDefinition:
    """How one metric is bucketed: the API's ``kind``, ``buckets`` and ``description``."""

    kind: str
    buckets: tuple  # lower bounds (numbers), or label strings for categorical
    description: str
    layout: str
    bounds: tuple[int, ...]  # numeric lower bounds, for placing values
    index: dict[int, int] = field(compare=False, repr=False, default_factory=dict)
    size: int = field(compare=False, repr=False, default=0)  # len(bounds)


    @classmethod
    def make(cls, kind: str, bounds: tuple[int, ...], description: str = "",
             labels: tuple[str, ...] = ()) -> "MetricDefinition":
        buckets: tuple = bounds
        if kind == "categorical" and labels:
            buckets = tuple(labels) + tuple(str(i) for i in range(len(labels), len(bounds)))
        index: dict[int, int] = {}
        for i, b in enumerate(bounds):
            index.setdefault(b, i)
        return cls(kind, buckets, description, layout_id(kind, buckets), bounds, index,
                   len(bounds))

    def place(self, value: float) -> int:
        """The slot of the last bucket whose lower bound is <= ``value`` (value >= 0)."""
        return bisect_right(self.bounds, value) - 1


COUNT_DEFINITION = MetricDefinition.make("count", COUNT_BUCKETS)
SIMPLE_DEFINITION = MetricDefinition.make("exponential", SIMPLE_BUCKETS)


class Definitions:
    """Histogram definitions by (revision URL, name), built once per process.

    A revision that cannot be found is asked for again after ``retry_seconds``
    (a long-running import must pick up a revision published later).
    """

    def __init__(self, revisions: RevisionSource | None, retry_seconds: float = 60.0):
        self.revisions = revisions
        self.retry_seconds = retry_seconds
        self._revisions: dict[str, Histograms] = {}
        self._missing: dict[str, float] = {}
        self._defs: dict[tuple[str, str], MetricDefinition | None] = {}
        self._by_revision: dict[str, dict[str, MetricDefinition | None]] = {}

    def get(self, revision: str, name: str) -> MetricDefinition | None:
        """The definition of histogram ``name`` in ``revision``; None when unknown or unusable."""
        key = (revision, name)
        found = self._defs.get(key, _UNSEEN)
        if found is not _UNSEEN:
            return found
        histograms = self._revision(revision)
        if histograms is None:
            return None
        definition = None
        try:
            d = histograms.get(name)
        except HistogramError:
            d = None
        if d is not None:
            definition = MetricDefinition.make(
                d.kind, d.buckets, html.escape(histograms.description(name)), d.labels)
        self._defs[key] = definition
        self.of_revision(revision)[name] = definition
        return definition

    def of_revision(self, revision: str) -> dict[str, MetricDefinition | None]:
        """The definitions of ``revision`` looked up so far, by name (a read-only view).

        The model reads it first and calls :meth:`get` for names not in it.
        """
        found = self._by_revision.get(revision)
        if found is None:
            found = self._by_revision[revision] = {}
        return found

    def _revision(self, revision: str) -> Histograms | None:
        found = self._revisions.get(revision)
        if found is not None or self.revisions is None:
            return found
        failed = self._missing.get(revision)
        if failed is not None and time.monotonic() - failed < self.retry_seconds:
            return None
        try:
            found = self._revisions[revision] = self.revisions.get(revision)
        except Exception:  # RevisionError, HistogramError: the ping's histograms are left out
            self._missing[revision] = time.monotonic()
            return None
        self._missing.pop(revision, None)
        return found


_UNSEEN = object()


def major_version(app_version: str) -> str | None:
    """The leading digits of ``appVersion`` (``"23"`` for ``23.0.1``); None without any."""
    digits = ""
    for ch in app_version:
        if not ch.isdigit():
            break
        digits += ch
    return digits or None


_SLOTS: dict[int, list[int]] = {}


def _slots(n: int) -> list[int]:
    """``list(range(n))``, made once per length (never changed: it is shared)."""
    found = _SLOTS.get(n)
    if found is None:
        found = _SLOTS[n] = list(range(n))
    return found


def _number(value: Any) -> bool:
    return (type(value) is int or type(value) is float) and value == value


class Aggregate:
    """Contributions of any number of pings, summed; see the module docstring for its layout."""

    __slots__ = ("_data", "_definitions", "stats", "_staged")

    def __init__(self) -> None:
        self._data: dict[tuple, dict[tuple, list]] = {}
        self._definitions: dict[tuple, dict[str, tuple]] = {}
        self.stats: Counter = Counter()
        # Pings added since the cells were last read, summed per cell without its date:
        # (channel, version, dates, build, application, arch, os, osVersion)
        #   -> (child, metric, label, layout) -> [histogram, sum, pings, definition]
        # A ping goes to its two dates' cells (by build, by day) once per group, not each time.
        self._staged: dict[tuple, dict[tuple, list]] = {}

    @property
    def data(self) -> dict[tuple, dict[tuple, list]]:
        if self._staged:
            self._settle()
        return self._data

    @data.setter
    def data(self, value: dict) -> None:
        self._settle()
        self._data = value

    @property
    def definitions(self) -> dict[tuple, dict[str, tuple]]:
        if self._staged:
            self._settle()
        return self._definitions

    @definitions.setter
    def definitions(self, value: dict) -> None:
        self._settle()
        self._definitions = value

    def __bool__(self) -> bool:
        return bool(self.data) or bool(self.stats)

    # -- adding pings ----------------------------------------------------

    def add_ping(self, payload: Any, dimensions: Mapping[str, str],
                 definitions: Definitions) -> bool:
        """Add one converted record; False (and counted in ``stats``) when it has no cell.

        ``dimensions`` are the record's layout dimensions by name (the layout
        path's cleaned values): channel, version, application, build ID and
        submission day come from there, so the import and the rebuild, which
        both read the layout, put a ping in the same cells.
        """
        stats = self.stats
        if not isinstance(payload, dict):
            stats["skipped_not_an_object"] += 1
            return False
        info = payload.get("info")
        info = info if isinstance(info, dict) else {}
        unified = "payload" in payload and isinstance(payload.get("payload"), dict)

        def dim(name: str) -> str:
            value = dimensions.get(name)
            if value is None:
                value = info.get(name)
            return value if isinstance(value, str) else ""

        channel = dim(CHANNEL)
        version = major_version(dim(APP_VERSION))
        build = dim(BUILD_ID)[:8]
        day = dim(SUBMISSION_DATE)
        if not channel or version is None:
            stats["skipped_no_channel_or_version"] += 1
            return False
        dates = []
        if len(build) == 8 and build.isdigit():
            dates.append((BY_BUILD, build))
        else:
            stats["no_build_date"] += 1
        if len(day) == 8 and day.isdigit():
            dates.append((BY_SUBMISSION, day))
        else:
            stats["no_submission_date"] += 1
        if not dates:
            stats["skipped_no_date"] += 1
            return False
        application = dim(APP_NAME) or UNKNOWN
        if unified:
            body = payload["payload"]
            environment = payload.get("environment")
            environment = environment if isinstance(environment, dict) else {}
            arch = _path(environment, "build", "architecture")
            os_name = _path(environment, "system", "os", "name")
            os_version = _path(environment, "system", "os", "version")
            pinfo = body.get("info") if isinstance(body.get("info"), dict) else {}
            revision = pinfo.get("revision")
        else:
            body = payload
            arch, os_name, os_version = info.get("arch"), info.get("OS"), info.get("version")
            revision = info.get("revision")
        arch = arch if isinstance(arch, str) and arch else UNKNOWN
        os_name = os_name if isinstance(os_name, str) and os_name else UNKNOWN
        if os_name == "WINNT":
            os_name = "Windows_NT"
        os_version = os_version if isinstance(os_version, str) and os_version else UNKNOWN
        if os_name == "Linux":
            os_version = os_version[:3]

        # One ping's metrics, summed over its payloads first so that it counts once per cell.
        # (child, metric, label, layout) -> [histogram, sum, slots that may be non-zero
        # (None: any), definition]; with slots, the histogram may be the ping's list with
        # its statistics after the buckets (only its first ``d.size`` items count).
        ping: dict[tuple, list] = {}
        revision = revision if isinstance(revision, str) and revision else None
        for child, histograms, keyed in _histogram_sections(body, unified):
            if revision is None:
                if histograms or keyed:
                    stats["histograms_without_revision"] += 1
                continue
            if isinstance(histograms, dict):
                self._histograms(ping, definitions, revision, child, histograms, None)
            if isinstance(keyed, dict):
                for name, by_key in keyed.items():
                    if not isinstance(by_key, dict):
                        stats["bad_keyed_histogram"] += 1
                        continue
                    self._histograms(ping, definitions, revision, child, by_key, name)
        simple = body.get("simpleMeasurements")
        if isinstance(simple, dict):
            for name, value in _flatten(simple, SIMPLE_PREFIX[:-1]):
                self._value(ping, SIMPLE_DEFINITION, PARENT, name, "", value)
        if unified:
            for child, scalars, keyed in _scalar_sections(body):
                if isinstance(scalars, dict):
                    for name, value in scalars.items():
                        self._value(ping, COUNT_DEFINITION, child,
                                    SCALAR_PREFIX + str(name).upper(), "", value)
                if isinstance(keyed, dict):
                    for name, by_key in keyed.items():
                        if isinstance(by_key, dict):
                            metric = SCALAR_PREFIX + str(name).upper()
                            for label, value in by_key.items():
                                self._value(ping, COUNT_DEFINITION, child, metric,
                                            str(label).upper(), value)

        stats["pings"] += 1
        # The same few strings in every key: interned, keys of earlier pings compare by identity.
        group_key = (intern(channel), intern(version),
                     tuple([(by, intern(date)) for by, date in dates]), build,
                     intern(application), intern(arch), intern(os_name), intern(os_version))
        group = self._staged.get(group_key)
        if group is None:
            group = self._staged[group_key] = {}
        for key, (histogram, total, nonzero, d) in ping.items():
            cell = group.get(key)
            if cell is None:
                group[key] = [histogram[:d.size], total, 1, d]
                continue
            if nonzero is None:
                cell[0] = list(map(add, cell[0], histogram))
            else:  # only the slots that may be non-zero: the others hold the int 0
                into = cell[0]
                for i in nonzero:
                    into[i] += histogram[i]
            cell[1] += total
            cell[2] += 1
        return True

    def _settle(self) -> None:
        """Add the staged sums to the cells of their dates, and note their definitions."""
        staged, self._staged = self._staged, {}
        data = self._data
        for (channel, version, dates, build, *row_start), group in staged.items():
            for (child, metric, label, layout), (histogram, total, count, d) in group.items():
                row = (*row_start, child, label, layout)
                for i, (by, date) in enumerate(dates):
                    key = (by, channel, version, date, metric)
                    rows = data.get(key)
                    if rows is None:
                        rows = data[key] = {}
                    cell = rows.get(row)
                    if cell is None:
                        rows[row] = [histogram if i == 0 else list(histogram), total, count]
                    else:
                        cell[0] = list(map(add, cell[0], histogram))
                        cell[1] += total
                        cell[2] += count
                self._define((channel, version, metric), layout,
                             (d.kind, d.buckets, d.description, build))

    def _define(self, key: tuple, layout: str, definition: tuple) -> None:
        """Keep, per (channel, version, metric) and layout, the definition of the newest build."""
        known = self._definitions.get(key)
        if known is None:
            known = self._definitions[key] = {}
        old = known.get(layout)
        if old is None or old[3] < definition[3]:
            known[layout] = definition

    def merge_definitions(self, other: "Aggregate") -> None:
        """Add ``other``'s definitions (the newest build's per layout), without its cells."""
        for key, layouts in other.definitions.items():
            for layout, definition in layouts.items():
                self._define(key, layout, definition)

    def _histograms(self, ping: dict, definitions: Definitions, revision: str, child: str,
                    histograms: dict, keyed: str | None) -> None:
        """Add a section of histograms (by name, or by label of histogram ``keyed``) to ``ping``.

        The common case, a list of ints, is checked and summed here at C speed
        (bools are not ints here; most counts are 0, so only the others are
        compared with 0 and later added to the cells); anything else goes
        through :meth:`_histogram`, which checks each value in Python.
        """
        known = definitions.of_revision(revision)
        if keyed is not None:
            d = known.get(keyed, _UNSEEN)
            if d is _UNSEEN and histograms:
                d = definitions.get(revision, keyed)
        stats = self.stats
        for name, value in histograms.items():
            if keyed is None:
                d = known.get(name, _UNSEEN)
                if d is _UNSEEN:
                    d = definitions.get(revision, name)
                label = ""
            else:
                name, label = keyed, name
            if d is None or type(value) is not list or d.kind == "count":
                self._histogram(ping, d, child, name, label, value)
                continue
            n = d.size
            if len(value) != n + N_STATS:
                stats["histogram_does_not_fit"] += 1
                continue
            types = list(map(type, value))
            if types.count(int) - types[n:].count(int) != n:
                self._histogram(ping, d, child, name, label, value)
                continue
            nonzero = list(compress(_slots(n), value))  # stops after the buckets
            if nonzero and min(map(value.__getitem__, nonzero)) < 0:
                stats["histogram_does_not_fit"] += 1
                continue
            reported = value[n]
            t = type(reported)
            total = reported if (t is int or t is float) and reported > 0 else 0
            key = (child, name, label, d.layout)
            found = ping.get(key)
            if found is None:
                ping[key] = [value, total, nonzero, d]
            else:
                found[0] = list(map(add, found[0], value[:n]))
                found[1] += total
                found[2] = None

    def _histogram(self, ping, d: MetricDefinition | None, child: str, name: str,
                   label: str, value: Any) -> None:
        if d is None:
            self.stats["unknown_histogram"] += 1
            return
        n = len(d.bounds)
        if isinstance(value, list):
            if len(value) != n + N_STATS or not all(_number(v) and v >= 0 for v in value[:n]):
                self.stats["histogram_does_not_fit"] += 1
                return
            histogram = value[:n]
            reported = value[n]
        elif isinstance(value, dict) and isinstance(value.get("values"), dict):
            histogram = [0] * n
            try:
                for key, count in value["values"].items():
                    slot = d.index[int(key)]
                    if not _number(count) or count < 0:
                        raise ValueError
                    histogram[slot] += count
            except (KeyError, ValueError, TypeError):
                self.stats["histogram_does_not_fit"] += 1
                return
            reported = value.get("sum", -1)
        else:
            self.stats["histogram_does_not_fit"] += 1
            return
        if d.kind == "count":
            # Each ping's sum is one value in the count buckets (an absent sum is -1: left out).
            self._value(ping, COUNT_DEFINITION, child, COUNT_PREFIX + name, label, reported)
            return
        total = reported if _number(reported) and reported > 0 else 0
        key = (child, name, label, d.layout)
        found = ping.get(key)
        if found is None:
            ping[key] = [histogram, total, None, d]
        else:
            found[0] = list(map(add, found[0], histogram))  # the shorter: histogram
            found[1] += total
            found[2] = None

    def _value(self, ping, d: MetricDefinition, child: str, metric: str, label: str,
               value: Any) -> None:
        if not _number(value):
            self.stats["not_numeric"] += 1
            return
        if value < 0:
            self.stats["negative"] += 1
            return
        key = (child, metric, label, d.layout)
        found = ping.get(key)
        if found is None:
            found = ping[key] = [[0] * d.size, 0, [], d]
        elif len(found[0]) != d.size:  # the ping's own list (a histogram of that name): copy
            found[0] = found[0][:d.size]
        slot = d.place(value)
        found[0][slot] += 1
        found[1] += value
        if found[2] is not None and slot not in found[2]:
            found[2].append(slot)

    # -- combining -------------------------------------------------------

    def merge(self, other: "Aggregate", share: bool = False) -> "Aggregate":
        """Add ``other`` into this aggregate (and return it).

        With ``share`` (``other`` is dropped after this), its rows and cells
        are taken over rather than copied.
        """
        data = self.data
        for key, rows in other.data.items():
            mine = data.get(key)
            if mine is None:
                data[key] = rows if share else {r: [list(h), s, c]
                                                for r, (h, s, c) in rows.items()}
                continue
            for row, (h, s, c) in rows.items():
                cell = mine.get(row)
                if cell is None:
                    mine[row] = rows[row] if share else [list(h), s, c]
                else:
                    cell[0] = list(map(add, cell[0], h))
                    cell[1] += s
                    cell[2] += c
        self.merge_definitions(other)
        self.stats.update(other.stats)
        return self

    def split(self) -> dict[tuple, "Aggregate"]:
        """Parts by ``(by, channel, version, date)``, each with its definitions (for MapReduce)."""
        parts: dict[tuple, Aggregate] = {}
        for key, rows in self.data.items():
            part = parts.get(key[:4])
            if part is None:
                part = parts[key[:4]] = Aggregate()
            part.data[key] = rows
            d = self.definitions.get((key[1], key[2], key[4]))
            if d is not None:
                part.definitions[(key[1], key[2], key[4])] = d
        return parts

    # -- plain data, for JSON lines and pickles ----------------------------

    def to_json(self) -> dict:
        return {
            "data": [[list(k), [[list(r), v] for r, v in rows.items()]]
                     for k, rows in self.data.items()],
            "definitions": [[list(k), [[layout, list(d[:1]) + [list(d[1])] + list(d[2:])]
                                       for layout, d in layouts.items()]]
                            for k, layouts in self.definitions.items()],
            "stats": dict(self.stats),
        }

    @classmethod
    def from_json(cls, doc: dict) -> "Aggregate":
        out = cls()
        for k, rows in doc.get("data", []):
            out.data[tuple(k)] = {tuple(r): list(v) for r, v in rows}
        for k, layouts in doc.get("definitions", []):
            out.definitions[tuple(k)] = {layout: (d[0], tuple(d[1]), d[2], d[3])
                                         for layout, d in layouts}
        out.stats.update(doc.get("stats", {}))
        return out

    def __getstate__(self):
        return (self.data, self.definitions, dict(self.stats))

    def __setstate__(self, state):
        self._data, self._definitions, stats = state
        self.stats = Counter(stats)
        self._staged = {}

    # -- what the API lists ----------------------------------------------

    def options(self) -> dict[tuple[str, str], dict[str, set]]:
        """Filter options per (channel, version): metric, application, architecture, os, child."""
        out: dict[tuple[str, str], dict[str, set]] = {}
        for (by, channel, version, date, metric), rows in self.data.items():
            o = out.get((channel, version))
            if o is None:
                o = out[(channel, version)] = {k: set() for k in OPTION_KEYS}
            o["metric"].add(public_metric(metric))
            for application, arch, os_name, os_version, child, *_ in rows:
                o["application"].add(application)
                o["architecture"].add(arch)
                o["os"].add(f"{os_name},{os_version}")
                o["child"].add(child)
        return out

    def dates(self) -> set[tuple[str, str, str, str]]:
        return {key[:4] for key in self.data}


OPTION_KEYS = ("metric", "application", "architecture", "os", "child")


def public_metric(metric: str) -> str:
    """The name the API answers to: count histograms without their prefix."""
    return metric[len(COUNT_PREFIX):] if metric.startswith(COUNT_PREFIX) else metric


def _path(doc: dict, *keys: str) -> Any:
    for key in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _flatten(doc: dict, prefix: str) -> Iterator[tuple[str, Any]]:
    for key, value in doc.items():
        name = f"{prefix}_{str(key).upper()}"
        if isinstance(value, dict):
            yield from _flatten(value, name)
        else:
            yield name, value


def _histogram_sections(body: dict, unified: bool) -> Iterator[tuple[str, Any, Any]]:
    """(child, histograms, keyed histograms) of every process in a ping."""
    yield PARENT, body.get("histograms"), body.get("keyedHistograms")
    if not unified:
        return
    processes = body.get("processes")
    if isinstance(processes, dict):
        for child in (CONTENT, GPU):
            p = processes.get(child)
            if isinstance(p, dict):
                yield child, p.get("histograms"), p.get("keyedHistograms")
    children = body.get("childPayloads")
    if isinstance(children, list):
        for p in children:
            if isinstance(p, dict):
                yield CONTENT, p.get("histograms"), p.get("keyedHistograms")


def _scalar_sections(body: dict) -> Iterator[tuple[str, Any, Any]]:
    processes = body.get("processes")
    if isinstance(processes, dict):
        for child in (PARENT, CONTENT, GPU):
            p = processes.get(child)
            if isinstance(p, dict):
                yield child, p.get("scalars"), p.get("keyedScalars")
