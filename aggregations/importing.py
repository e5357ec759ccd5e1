"""The importer's aggregates hook: the files an import reads also update the aggregates.

``telemetry import`` / ``python -m importer`` hand an :class:`AggregatesHook`
to the importer (:class:`importer.importer.ImportOptions`), which calls it
per chunk of files: every record it parses goes through
:meth:`ChunkAggregates.record` (the same dict it stores, so nothing is parsed
twice), and when the chunk's records are written :meth:`ChunkAggregates.finish`
applies the files' contributions exactly once (:mod:`aggregations.store`).
A file that an earlier run imported but did not aggregate (killed in
between, or imported with ``--no-aggregates``) is read again here and
aggregated; a file whose import failed is not aggregated.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from aggregations.aggregates import Aggregate, Definitions
from aggregations.store import Store, file_entry
from converter.layout import LayoutError, LayoutFile, read_layout_file
from converter.revisions import RevisionCache
from importer.document import DocumentError, make_document
from importer.importer import file_digest

NO_HISTOGRAMS_NOTICE = ("aggregates: no --histogram-cache or --histogram-server given: "
                        "histograms are left out of the aggregates (simple measures and "
                        "scalars are kept)")


@dataclass(frozen=True)
class AggregatesHook:
    """Picklable settings; each process opens its own revision cache and store from them."""

    histogram_cache: str | None = None
    histogram_server: str | None = None

    def open(self, db, names: list[str]) -> "ChunkAggregates":
        return ChunkAggregates(_store(db), _definitions(self), names)


_stores: dict[tuple, Store] = {}
_defs: dict[AggregatesHook, Definitions] = {}


def _store(db) -> Store:
    key = (id(db.client), db.name)
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = Store(db)
    return store


def _definitions(hook: AggregatesHook) -> Definitions:
    found = _defs.get(hook)
    if found is None:
        revisions = None
        if hook.histogram_cache or hook.histogram_server:
            revisions = RevisionCache(hook.histogram_cache, hook.histogram_server)
        found = _defs[hook] = Definitions(revisions)
    return found


@dataclass
class ChunkAggregates:
    """The aggregates of one chunk of files, per file, until they are applied."""

    store: Store
    definitions: Definitions
    names: list[str]
    files: dict[str, Aggregate] = field(default_factory=dict)
    stats: Counter = field(default_factory=Counter)

    def record(self, lf: LayoutFile, doc: dict[str, Any]) -> None:
        agg = self.files.get(lf.relpath)
        if agg is None:
            agg = self.files[lf.relpath] = Aggregate()
        agg.add_ping(doc, dict(zip(self.names, lf.dimensions)), self.definitions)

    def finish(self, files: Iterable[tuple[LayoutFile, Any]]) -> dict[str, int]:
        """Apply the chunk: ``files`` are (layout file, importer's FileResult) pairs."""
        files = list(files)
        ready: dict[str, tuple[Aggregate, dict]] = {}
        skipped = [lf for lf, r in files if getattr(r, "skipped", False)]
        done = self.store.applied(lf.relpath for lf in skipped) if skipped else {}
        for lf, result in files:
            if getattr(result, "error", None):
                self.files.pop(lf.relpath, None)
                continue
            if result.skipped:
                if lf.relpath in done:
                    continue
                agg = self._read(lf)
                if agg is None:
                    continue
            else:
                agg = self.files.pop(lf.relpath, None) or Aggregate()
            try:
                digest, size = file_digest(lf.path), lf.path.stat().st_size
            except OSError:
                self.stats["aggregates_unreadable_files"] += 1
                continue
            ready[lf.relpath] = (agg, file_entry(dict(zip(self.names, lf.dimensions)),
                                                 digest, size))
        if ready:
            result = self.store.apply_files(ready)
            self.stats["aggregated_files"] += result.files
            self.stats["aggregate_documents"] += result.documents
        for agg, _ in ready.values():
            for reason, n in agg.stats.items():
                if reason != "pings":
                    self.stats[f"aggregates_{reason}"] += n
        self.files.clear()
        return dict(self.stats)

    def _read(self, lf: LayoutFile) -> Aggregate | None:
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
            self.stats["aggregates_unreadable_files"] += 1
            return None
        return agg
