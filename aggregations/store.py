"""Aggregates in MongoDB: collections, indexes, exactly-once writes, and answering queries.

Collections (all in the importer's database, ``telemetry`` by default):

``aggregates``
    One document per ``(by, channel, version, date, metric)``, ``_id`` the
    JSON text of that list, with those five fields and ``rows``: one
    ``[application, architecture, os, osVersion, child, label, layout,
    histogram, sum, count]`` per combination seen, sorted.  A dashboard
    query reads one document per date asked, by ``_id``.  ``units`` lists
    the write units whose contributions the document holds and that may not
    be finished (see below); ``v`` counts writes.
    Index ``channel_version`` (channel, version) for a rebuild's deletes.
``aggregates_metrics``
    Per ``(channel, version, metric)``: ``layouts`` maps a bucket-table id
    to ``{kind, buckets, description, newest}``; the API serves the layout
    with the newest build ID.  Index ``channel_version``.
``aggregates_options``
    Per ``(channel, version)``: the filter options (``metric``,
    ``application``, ``architecture``, ``os`` as ``"NAME,VERSION"``, ``child``).
``aggregates_dates``
    Per ``(by, channel, version, date)`` with data.  Index ``by_channel``.
``aggregates_files``
    Per layout file (``_id`` its path in the dataset): ``state`` ``pending``
    (with its ``unit``) or ``applied``, ``channel``, ``version``,
    ``sha256``, ``size``.  Index ``channel_version``.
``aggregates_units``
    Per write unit: ``state`` ``pending`` or ``applied``.

Exactly once, without transactions.  Import path, per unit (the files of
one flush of the importer's sink): the unit is recorded pending and its
files pending with the unit's id; every document the files touch is read,
their summed contribution added in Python, and the document written back
with a conditional replace on ``v`` (or an insert; a duplicate key or a
changed ``v`` means another writer came first: read again and retry),
listing the unit in ``units``.  A document is written atomically, so after
a crash each one holds the unit's contribution entirely or not at all, and
says which.  Then the files are recorded applied, then the unit.  A rerun
skips applied files; a file still pending from unit U0 is added only to
documents that list neither U0 nor ``file:PATH`` and is listed there as
``file:PATH`` (so a rerun that splits U0's files over several units stays
exact).  Listed units and files that are applied are dropped at the
document's next write.
Rebuild path (:meth:`Store.replace_scope`): the whole of each (channel,
version) it covers is recomputed from the layout and replaces what was
there; its files are recorded applied first, so a crash in between can leave
data missing until the rerun, never counted twice.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from operator import add
from typing import Any, Iterable, Mapping

import orjson
import pymongo
from pymongo import DeleteMany, InsertOne, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError

from importer.errors import ImporterError
from aggregations.aggregates import (COUNT_PREFIX, OPTION_KEYS, ROW_DIMENSIONS, Aggregate,
                                     major_version)

AGGREGATES = "aggregates"
METRICS = "aggregates_metrics"
OPTIONS = "aggregates_options"
DATES = "aggregates_dates"
FILES = "aggregates_files"
UNITS = "aggregates_units"
PENDING, APPLIED = "pending", "applied"
FILE_TAG = "file:"
DUPLICATE_KEY = 11000
READ_BATCH = 500
MAX_RETRIES = 20


class StoreError(ImporterError):
    """Aggregates that cannot be written as asked (e.g. endless write conflicts)."""


def doc_id(key: Iterable[str]) -> str:
    return orjson.dumps(list(key)).decode()


def create_indexes(db: pymongo.database.Database) -> None:
    """The few indexes the writers and the API need; cheap to call again."""
    cv = [("channel", 1), ("version", 1)]
    db[AGGREGATES].create_index(cv, name="channel_version")
    db[METRICS].create_index(cv, name="channel_version")
    db[FILES].create_index(cv, name="channel_version")
    db[DATES].create_index([("by", 1), ("channel", 1)], name="by_channel")


def sorted_rows(rows: Mapping[tuple, list]) -> list[list]:
    return [[*row, list(h), s, c] for row, (h, s, c) in sorted(rows.items())]


def _rows_dict(rows: list[list]) -> dict[tuple, list]:
    return {tuple(r[:7]): [r[7], r[8], r[9]] for r in rows}


def _add_rows(into: dict[tuple, list], rows: Mapping[tuple, list]) -> None:
    for row, (h, s, c) in rows.items():
        cell = into.get(row)
        if cell is None:
            into[row] = [list(h), s, c]
        else:
            into[row] = [list(map(add, cell[0], h)), cell[1] + s, cell[2] + c]


@dataclass
class Batch:
    """Files applied together: the fresh ones summed, those left pending by a crash apart."""

    fresh: Aggregate = field(default_factory=Aggregate)
    entries: dict[str, dict] = field(default_factory=dict)   # relpath -> aggregates_files fields
    pending: dict[str, Aggregate] = field(default_factory=dict)
    already: int = 0                                           # files found applied

    def merge(self, other: "Batch") -> "Batch":
        """Add ``other`` (dropped after this: its aggregates are taken over, not copied)."""
        self.fresh.merge(other.fresh, share=True)
        self.entries.update(other.entries)
        self.pending.update(other.pending)
        self.already += other.already
        return self

    @property
    def pings(self) -> int:
        return self.fresh.stats.get("pings", 0) + sum(
            a.stats.get("pings", 0) for a in self.pending.values())


@dataclass
class ApplyResult:
    files: int = 0          # files whose contributions were applied now
    already: int = 0        # files found applied earlier (skipped)
    documents: int = 0      # aggregate documents written
    retries: int = 0


class Store:
    """Writes aggregates into one database; keeps what it already wrote of the small collections."""

    def __init__(self, db: pymongo.database.Database):
        self.db = db
        self._known_defs: dict[tuple, str] = {}
        self._known_options: set[tuple] = set()
        self._known_dates: set[tuple] = set()
        self._indexed = False

    def ensure_indexes(self) -> None:
        if not self._indexed:
            create_indexes(self.db)
            self._indexed = True

    # -- bookkeeping -----------------------------------------------------

    def applied(self, relpaths: Iterable[str]) -> dict[str, dict]:
        """The ``aggregates_files`` entries of those files that are applied."""
        return {f: e for f, e in self.entries(relpaths).items() if e.get("state") != PENDING}

    def entries(self, relpaths: Iterable[str]) -> dict[str, dict]:
        """The ``aggregates_files`` entries of those files, applied or pending."""
        relpaths = list(relpaths)
        out: dict[str, dict] = {}
        for i in range(0, len(relpaths), READ_BATCH):
            for e in self.db[FILES].find({"_id": {"$in": relpaths[i:i + READ_BATCH]}}):
                out[e["_id"]] = e
        return out

    # -- the import path ---------------------------------------------------

    def apply_files(self, files: Mapping[str, tuple[Aggregate, Mapping[str, Any]]]) -> ApplyResult:
        """Add each file's aggregate exactly once: ``files[relpath] = (aggregate, entry)``."""
        return self.apply(self.batch(files))

    def batch(self, files: Mapping[str, tuple[Aggregate, Mapping[str, Any]]]) -> "Batch":
        """Files by state: fresh ones summed, pending ones apart, applied ones left out."""
        known = self.entries(files)
        batch = Batch()
        for f, (agg, fields) in files.items():
            state = known[f].get("state") if f in known else None
            if state is None:
                batch.fresh.merge(agg)
                batch.entries[f] = dict(fields)
            elif state == PENDING:
                batch.pending[f] = agg
                batch.entries[f] = dict(fields)
            else:
                batch.already += 1
        return batch

    def apply(self, batch: "Batch") -> ApplyResult:
        """Apply a batch of files as one unit, exactly once.

        The batch's fresh files are recorded pending with the unit's id, every
        document they touch is written once listing the unit, then they are
        recorded applied.  A file found pending from a unit that did not
        finish (a crash) is added only to the documents that list neither
        that unit nor the file itself, and listed there as ``file:PATH``.
        """
        self.ensure_indexes()
        result = ApplyResult(already=batch.already)
        if not batch.entries:
            return result
        known = self.entries(batch.entries)
        fresh = [f for f in batch.entries if f not in batch.pending]
        taken = [f for f in fresh if f in known]
        if taken:
            raise StoreError(f"{len(taken)} files (e.g. {taken[0]}) were aggregated by another "
                             "run meanwhile; rerun")
        pending = {f: agg for f, agg in batch.pending.items()
                   if known.get(f, {}).get("state") == PENDING}
        result.already += len(batch.pending) - len(pending)
        unit = uuid.uuid4().hex
        now = time.time()
        self.db[UNITS].insert_one({"_id": unit, "state": PENDING, "started_at": now})
        if fresh:
            self.db[FILES].bulk_write(
                [UpdateOne({"_id": f}, {"$set": {**batch.entries[f], "state": PENDING,
                                                 "unit": unit}}, upsert=True) for f in fresh],
                ordered=False)
        groups: list[tuple[str, frozenset, Aggregate]] = [
            (unit, frozenset((unit,)), batch.fresh)]
        for f, agg in pending.items():
            tag = FILE_TAG + f
            groups.append((tag, frozenset((known[f].get("unit"), tag)), agg))
        by_key: dict[tuple, list[tuple[str, frozenset, dict]]] = defaultdict(list)
        meta = Aggregate()
        for tag, skip, agg in groups:
            _merge_meta(meta, agg)
            for key, rows in agg.data.items():
                by_key[key].append((tag, skip, rows))
        keys = list(by_key)
        for attempt in range(MAX_RETRIES):
            if not keys:
                break
            if attempt:
                result.retries += 1
                time.sleep(min(0.05 * attempt, 0.5))
            written, keys = self._write_documents(keys, by_key)
            result.documents += written
        if keys:
            raise StoreError(f"{len(keys)} aggregate documents kept changing under us; rerun")
        self.write_meta(meta)
        now = time.time()
        done = [*fresh, *pending]
        self.db[FILES].bulk_write(
            [UpdateOne({"_id": f}, {"$set": {**batch.entries[f], "state": APPLIED,
                                             "applied_at": now}, "$unset": {"unit": ""}})
             for f in done], ordered=False)
        self.db[UNITS].update_one({"_id": unit}, {"$set": {"state": APPLIED, "applied_at": now}})
        result.files = len(done)
        return result

    def _finished(self, listed: set[str]) -> set[str]:
        """Which of the units and ``file:`` names listed in documents are applied."""
        units = [u for u in listed if not u.startswith(FILE_TAG)]
        files = [u[len(FILE_TAG):] for u in listed if u.startswith(FILE_TAG)]
        done = {u["_id"] for u in self.db[UNITS].find(
            {"_id": {"$in": units}, "state": APPLIED}, {"_id": 1})} if units else set()
        if files:
            done |= {FILE_TAG + f for f in self.applied(files)}
        return done

    def _write_documents(self, keys: list[tuple], by_key) -> tuple[int, list[tuple]]:
        """One pass over ``keys``; returns (documents written, keys to try again)."""
        coll = self.db[AGGREGATES]
        retry: list[tuple] = []
        written = 0
        for i in range(0, len(keys), READ_BATCH):
            batch = keys[i:i + READ_BATCH]
            ids = {doc_id(k): k for k in batch}
            current = {d["_id"]: d for d in coll.find({"_id": {"$in": list(ids)}})}
            listed = {u for d in current.values() for u in d.get("units", ())}
            finished = self._finished(listed) if listed else set()
            ops, expect = [], {}
            for _id, key in ids.items():
                doc = current.get(_id)
                have = set(doc.get("units", ())) if doc else set()
                new = [(tag, rows) for tag, skip, rows in by_key[key] if not skip & have]
                if not new:
                    continue
                rows = _rows_dict(doc["rows"]) if doc else {}
                for _, r in new:
                    _add_rows(rows, r)
                units = [u for u in (doc.get("units", []) if doc else []) if u not in finished]
                units += [u for u, _ in new]
                body = {"by": key[0], "channel": key[1], "version": key[2], "date": key[3],
                        "metric": key[4], "rows": sorted_rows(rows), "units": units}
                if doc is None:
                    ops.append(InsertOne({"_id": _id, **body, "v": 1}))
                else:
                    ops.append(ReplaceOne({"_id": _id, "v": doc.get("v", 0)},
                                          {**body, "v": doc.get("v", 0) + 1}))
                expect[_id] = [u for u, _ in new]
            if not ops:
                continue
            try:
                res = coll.bulk_write(ops, ordered=False)
                conflicts = res.matched_count + res.inserted_count < len(ops)
            except BulkWriteError as e:
                errors = e.details.get("writeErrors", [])
                if any(w.get("code") != DUPLICATE_KEY for w in errors):
                    raise
                conflicts = True
            written += len(ops)
            if conflicts:
                # Which writes lost a race: their documents do not list our units.
                check = {d["_id"]: set(d.get("units", ()))
                         for d in coll.find({"_id": {"$in": list(expect)}}, {"units": 1})}
                lost = [ids[_id] for _id, us in expect.items()
                        if not set(us) <= check.get(_id, set())]
                written -= len(lost)
                retry += lost
        return written, retry

    # -- small collections (idempotent) -------------------------------------

    def write_meta(self, agg: Aggregate) -> None:
        """Definitions, filter options and dates of ``agg`` that this Store has not written."""
        ops = []
        for (channel, version, metric), layouts in agg.definitions.items():
            for layout, (kind, buckets, description, newest) in layouts.items():
                k = (channel, version, metric, layout)
                if self._known_defs.get(k, "\0") >= newest and k in self._known_defs:
                    continue
                ops.append(UpdateOne(
                    {"_id": doc_id((channel, version, metric))},
                    {"$set": {"channel": channel, "version": version, "metric": metric,
                              f"layouts.{layout}.kind": kind,
                              f"layouts.{layout}.buckets": list(buckets),
                              f"layouts.{layout}.description": description},
                     "$max": {f"layouts.{layout}.newest": newest}},
                    upsert=True))
                self._known_defs[k] = newest
        if ops:
            self.db[METRICS].bulk_write(ops, ordered=False)
        ops = []
        for (channel, version), values in agg.options().items():
            new = {k: sorted(v for v in vs if (channel, version, k, v) not in self._known_options)
                   for k, vs in values.items()}
            new = {k: v for k, v in new.items() if v}
            if not new:
                continue
            ops.append(UpdateOne({"_id": doc_id((channel, version))},
                                 {"$set": {"channel": channel, "version": version},
                                  "$addToSet": {k: {"$each": v} for k, v in new.items()}},
                                 upsert=True))
            self._known_options.update(
                (channel, version, k, v) for k, vs in new.items() for v in vs)
        if ops:
            self.db[OPTIONS].bulk_write(ops, ordered=False)
        ops = [UpdateOne({"_id": doc_id(d)},
                         {"$set": {"by": d[0], "channel": d[1], "version": d[2], "date": d[3]}},
                         upsert=True)
               for d in sorted(agg.dates() - self._known_dates)]
        if ops:
            self.db[DATES].bulk_write(ops, ordered=False)
            self._known_dates |= agg.dates()

    # -- the rebuild path --------------------------------------------------

    def replace_scope(self, agg: Aggregate, scope: set[tuple[str, str]],
                      files: Mapping[str, Mapping[str, Any]]) -> int:
        """Make the aggregates of every (channel, version) in ``scope`` exactly ``agg``'s.

        ``files`` (relpath -> entry fields) are the layout files ``agg`` was
        computed from; they are marked applied first, and entries of files
        of the scope that are no longer in the layout are dropped.
        """
        self.ensure_indexes()
        now = time.time()
        ops: list = [UpdateOne({"_id": f}, {"$set": {**dict(fields), "state": APPLIED,
                                                     "applied_at": now}, "$unset": {"unit": ""}},
                               upsert=True) for f, fields in files.items()]
        stale = [e["_id"] for c, v in scope
                 for e in self.db[FILES].find({"channel": c, "version": v}, {"_id": 1})
                 if e["_id"] not in files]
        if stale:
            ops.append(DeleteMany({"_id": {"$in": stale}}))
        if ops:
            self.db[FILES].bulk_write(ops, ordered=False)
        for c, v in sorted(scope):
            flt = {"channel": c, "version": v}
            self.db[AGGREGATES].delete_many(flt)
            self.db[METRICS].delete_many(flt)
            self.db[OPTIONS].delete_many(flt)
            self.db[DATES].delete_many(flt)
        self._known_defs.clear()
        self._known_options.clear()
        self._known_dates.clear()
        docs = [{"_id": doc_id(key), "by": key[0], "channel": key[1], "version": key[2],
                 "date": key[3], "metric": key[4], "rows": sorted_rows(rows), "units": [], "v": 1}
                for key, rows in sorted(agg.data.items()) if (key[1], key[2]) in scope]
        for i in range(0, len(docs), 1000):
            self.db[AGGREGATES].insert_many(docs[i:i + 1000], ordered=False)
        self.write_meta(agg)
        return len(docs)


def _merge_meta(into: Aggregate, other: Aggregate) -> None:
    """Definitions and the keys that options and dates come from, without the histograms."""
    into.merge_definitions(other)
    for key, rows in other.data.items():
        mine = into.data.setdefault(key, {})
        for row in rows:
            mine.setdefault(row, [[], 0, 0])


def file_entry(dimensions: Mapping[str, str], sha256: str, size: int) -> dict[str, Any]:
    """What ``aggregates_files`` records of a file (channel and version scope rebuilds)."""
    return {"channel": dimensions.get("appUpdateChannel", ""),
            "version": major_version(dimensions.get("appVersion", "") or "") or "",
            "sha256": sha256, "size": size}


# ---------------------------------------------------------------------------
# Answering the API's questions (pure functions over documents read by the caller)

def choose_layout(metric_doc: Mapping[str, Any]) -> tuple[str, dict] | None:
    """The layout served for a metric: the one with the newest build ID (then the largest id)."""
    layouts = metric_doc.get("layouts") if isinstance(metric_doc, Mapping) else None
    if not isinstance(layouts, Mapping) or not layouts:
        return None
    layout = max(layouts, key=lambda k: (str(layouts[k].get("newest", "")), k))
    return layout, layouts[layout]


def histogram_answer(docs: Iterable[Mapping[str, Any]], dates: list[str], layout: str,
                     definition: Mapping[str, Any], filters: Mapping[str, str]) -> dict | None:
    """The JSON of ``/aggregates_by/.../channels/C/?...``; None when no row matches.

    Rows of other layouts (pings validated against other bucket tables) are
    left out; dimensions not in ``filters`` are summed over.
    """
    wanted = [(i, filters[name]) for i, name in enumerate(ROW_DIMENSIONS) if name in filters]
    label_filter = filters.get("label")
    by_date: dict[str, dict[str, list]] = {}
    for doc in docs:
        date = doc.get("date")
        sums = by_date.setdefault(date, {})
        for row in doc.get("rows", ()):
            if row[6] != layout or any(row[i] != v for i, v in wanted):
                continue
            label = row[5]
            if label_filter is not None and label != label_filter:
                continue
            cell = sums.get(label)
            if cell is None:
                sums[label] = [list(row[7]), row[8], row[9]]
            else:
                cell[0] = [a + b for a, b in zip(cell[0], row[7])]
                cell[1] += row[8]
                cell[2] += row[9]
    data = []
    seen = set()
    for date in dates:
        if date in seen:
            continue
        seen.add(date)
        for label, (h, s, c) in sorted(by_date.get(date, {}).items()):
            data.append({"date": date, "label": label, "histogram": h, "count": c, "sum": s})
    if not data:
        return None
    return {"buckets": definition.get("buckets", []), "kind": definition.get("kind", ""),
            "description": definition.get("description", ""), "data": data}


def metric_candidates(metric: str) -> list[str]:
    """Stored names a requested metric may have: itself, or its count-histogram form."""
    return [metric, COUNT_PREFIX + metric]


def options_answer(doc: Mapping[str, Any] | None) -> dict[str, list] | None:
    if not doc:
        return None
    return {k: sorted(doc.get(k) or []) for k in OPTION_KEYS}
