"""The importer's aggregates hook: the files an import reads also update the aggregates.

``telemetry import`` / ``python -m importer`` hand an :class:`AggregatesHook`
to the importer (:class:`importer.importer.ImportOptions`), which calls it
per chunk of files: every record it parses goes through
:meth:`ChunkAggregates.record` (the same dict it stores, so nothing is parsed
twice), and when the chunk's records are written :meth:`ChunkAggregates.finish`
returns the chunk's contributions; the importing process sums them in an
:class:`AggregatesSink`, which applies them exactly once
(:meth:`aggregations.store.Store.apply`) now and then and at the end.
A file that an earlier run imported but did not aggregate (killed in
between, or imported with ``--no-aggregates``) is read again here and
aggregated; a file whose import failed is not aggregated.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from aggregations.aggregates import Aggregate, Definitions
from aggregations.store import PENDING, Batch, Store, file_entry
from converter.layout import LayoutError, LayoutFile, read_layout_file
from converter.revisions import RevisionCache
from importer.document import DocumentError, make_document
from importer.importer import file_digest

NO_HISTOGRAMS_NOTICE = ("aggregates: no --histogram-cache or --histogram-server given: "
                        "histograms are left out of the aggregates (simple measures and "
                        "scalars are kept)")


@dataclass(frozen=True)
class AggregatesHook:
    """Picklable settings; each process opens its own revision cache and store from them.

    Contributions are summed in memory across chunks and written when
    ``flush_pings`` pings are buffered, ``flush_seconds`` have passed, or the
    import ends: the embedded server pays per aggregate document written, and
    one write per document per flush instead of per chunk is what keeps an
    import with aggregates close to one without.
    """

    histogram_cache: str | None = None
    histogram_server: str | None = None
    flush_pings: int = 1_000_000
    flush_seconds: float = 60.0

    def open(self, db, names: list[str]) -> "ChunkAggregates":
        """The per-chunk side, in the process that reads the chunk's files."""
        return ChunkAggregates(_store(db), _definitions(self), names)

    def sink(self, db) -> "AggregatesSink":
        """The side that writes, in the process that runs the import."""
        return AggregatesSink(_store(db), self.flush_pings, self.flush_seconds)


_stores: dict[tuple, Store] = {}
_defs: dict[AggregatesHook, Definitions] = {}


def _store(db) -> Store:
    key = (id(db.client), db.name)
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = Store(db)
    return store


def _definitions(hook: AggregatesHook) -> Definitions:
    key = AggregatesHook(hook.histogram_cache, hook.histogram_server)
    found = _defs.get(key)
    if found is None:
        revisions = None
        if hook.histogram_cache or hook.histogram_server:
            revisions = RevisionCache(hook.histogram_cache, hook.histogram_server)
        found = _defs[key] = Definitions(revisions)
    return found


@dataclass
class ChunkAggregates:
    """The aggregates of one chunk of files, per file, until the chunk is written."""

    store: Store
    definitions: Definitions
    names: list[str]
    files: dict[str, Aggregate] = field(default_factory=dict)

    def record(self, lf: LayoutFile, doc: dict[str, Any]) -> None:
        agg = self.files.get(lf.relpath)
        if agg is None:
            agg = self.files[lf.relpath] = Aggregate()
        agg.add_ping(doc, dict(zip(self.names, lf.dimensions)), self.definitions)

    def finish(self, files: Iterable[tuple[LayoutFile, Any]]) -> tuple[Batch, dict[str, int]]:
        """The chunk's batch: ``files`` are (layout file, importer's FileResult) pairs.

        A file whose import failed is left out; a file the importer skipped
        (imported by an earlier run) is read here unless its aggregates are
        applied already.
        """
        files = list(files)
        stats: Counter = Counter()
        known = self.store.entries(lf.relpath for lf, _ in files)
        contributions: dict[str, tuple[Aggregate, dict]] = {}
        for lf, result in files:
            agg = self.files.pop(lf.relpath, None)
            if getattr(result, "error", None):
                continue
            state = known.get(lf.relpath, {}).get("state")
            if state is not None and state != PENDING:
                continue  # applied by an earlier run
            if result.skipped or agg is None:
                agg = self._read(lf, stats)
                if agg is None:
                    continue
            try:
                digest, size = file_digest(lf.path), lf.path.stat().st_size
            except OSError:
                stats["aggregates_unreadable_files"] += 1
                continue
            contributions[lf.relpath] = (
                agg, file_entry(dict(zip(self.names, lf.dimensions)), digest, size))
            for reason, n in agg.stats.items():
                if reason != "pings":
                    stats[f"aggregates_{reason}"] += n
        self.files.clear()
        return self._batch(contributions, known), dict(stats)

    @staticmethod
    def _batch(contributions, known) -> Batch:
        batch = Batch()
        for f, (agg, entry) in contributions.items():
            batch.entries[f] = entry
            if f in known:
                batch.pending[f] = agg
            else:
                batch.fresh.merge(agg, share=True)  # the file's aggregate is dropped after
        return batch

    def _read(self, lf: LayoutFile, stats: Counter) -> Aggregate | None:
        agg = Aggregate()
        dims = dict(zip(self.names, lf.dimensions))
        try:
            for _, doc_id, text in read_layout_file(lf.path):
                try:
                    doc = make_document(doc_id, text, {})
                except DocumentError:
                    continue
                agg.add_ping(doc, dims, self.definitions)
        except LayoutError:
            stats["aggregates_unreadable_files"] += 1
            return None
        return agg


class AggregatesSink:
    """Sums the chunks' batches and applies them (:meth:`Store.apply`), now and then."""

    def __init__(self, store: Store, flush_pings: int, flush_seconds: float):
        self.store = store
        self.flush_pings = flush_pings
        self.flush_seconds = flush_seconds
        self.batch = Batch()
        self.since = time.monotonic()
        self.stats: Counter = Counter()

    def add(self, batch: Batch | None) -> None:
        if batch is None:
            return
        self.batch.merge(batch)
        if (self.batch.pings >= self.flush_pings
                or time.monotonic() - self.since >= self.flush_seconds):
            self.flush()

    def flush(self) -> int:
        """Apply what was summed since the last flush; the number of documents written."""
        batch, self.batch, self.since = self.batch, Batch(), time.monotonic()
        if not batch.entries:
            return 0
        result = self.store.apply(batch)
        self.stats["aggregated_files"] += result.files
        self.stats["aggregate_documents"] += result.documents
        return result.documents

    def close(self) -> dict[str, int]:
        self.flush()
        return dict(self.stats)
