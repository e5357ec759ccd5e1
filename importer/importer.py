"""Loading a layout dataset into one MongoDB collection, losing nothing, safe to rerun.

The original inserted each whole file unacknowledged (``w=0``) and swallowed
every error, so a dataset could be silently incomplete.  Here every write is
acknowledged (``w=1`` unless told otherwise), in unordered batches; a
duplicate ``_id`` is counted, never fatal; a corrupt file is reported by name
and the rest goes on.  An ``imports`` collection next to the data records
each file as it starts and when it is finished (path, size, mtime, content
hash, record count, and the identity of the collection it went into): a
rerun skips finished files, and a file that was interrupted mid-way is
imported again with replacing writes, so each record ends up there exactly
once.  A file finished into another incarnation of the collection (it was
dropped or renamed away since) is not in it any more, and is imported again.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterable, Protocol

import pymongo
from bson import Binary
from pymongo import ReplaceOne, UpdateOne, WriteConcern
from pymongo.errors import BulkWriteError, CollectionInvalid, DocumentTooLarge, PyMongoError

import converter
from converter.layout import (
    LayoutError,
    LayoutFile,
    LayoutReadStats,
    find_layout_files,
    read_layout_file,
)
from converter.schema import SUBMISSION_DATE, Schema
from importer.document import META, SOURCE, DocumentError, make_document
from importer.errors import DatasetError, ImporterError, MongoUnavailable
from importer.mongo import connect, is_local

DEFAULT_SCHEMA = Path(converter.__file__).parent / "telemetry_schema.json"
DUPLICATE_KEY = 11000
ON_DUPLICATE = ("skip", "replace")


@dataclass
class ImportOptions:
    """What the importer does; the CLI builds one from its flags."""

    database: str = "telemetry"
    collection: str = "payloads"
    imports_collection: str = "imports"
    drop: bool = False
    workers: int = 1
    writers: int = 3  # batches in flight per worker (threads)
    batch_size: int = 1000
    # Record bytes per insert: the embedded server decodes a whole message at
    # once, and a few MB of documents cost it less per document than 16 MB.
    batch_bytes: int = 2 * 1024 * 1024
    write_concern: int | str = 1
    on_duplicate: str = "skip"
    keep_dots: bool = False
    schema: Schema | None = None  # dimension names; the packaged default when None
    filter: Schema | None = None  # only files whose dimensions pass
    create_indexes: bool = True
    chunk_bytes: int = 8 * 1024 * 1024  # compressed bytes of small files imported together
    chunk_files: int = 256
    timeout_ms: int = 3000  # server selection and connect, as documented (docs/mongo.md)
    # Per chunk ``hook.open(db, names)``, in the importing process ``hook.sink(db)``:
    # aggregations.importing.AggregatesHook (the aggregates of the imported files).
    hook: Any = None

    def dimension_names(self) -> list[str]:
        return (self.schema or Schema.load(DEFAULT_SCHEMA)).names


@dataclass
class FileResult:
    """What happened to one file."""

    relpath: str
    size: int
    records: int = 0
    bad_records: int = 0
    skipped: bool = False  # finished by an earlier run
    resumed: bool = False  # an earlier run was interrupted in it
    stale: bool = False  # finished by an earlier run into a collection since dropped
    error: str | None = None


@dataclass
class ChunkResult:
    """A few files imported together; writes are batched across them, so counts are per chunk."""

    files: list[FileResult] = field(default_factory=list)
    inserted: int = 0
    duplicates: int = 0
    resumed: int = 0  # records of a resumed file that the interrupted run had already stored
    rejected: int = 0  # records the server refused (too large, invalid)
    examples: list[str] = field(default_factory=list)
    hook_stats: dict[str, int] = field(default_factory=dict)  # what the file hook reports
    hook_output: Any = None  # handed to the hook's sink in the importing process

    @property
    def records(self) -> int:
        return sum(f.records for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files if not f.skipped)


@dataclass
class ImportSummary:
    files: int = 0
    files_skipped: int = 0
    files_stale: int = 0
    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    resumed: int = 0
    bad_records: int = 0
    bytes: int = 0
    seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    hook_stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def add(self, chunk: ChunkResult) -> None:
        for f in chunk.files:
            self.files += 1
            self.files_skipped += f.skipped
            self.files_stale += f.stale
            self.records += f.records
            self.bad_records += f.bad_records
            if f.error:
                self.failed.append((f.relpath, f.error))
        self.bytes += chunk.bytes
        self.inserted += chunk.inserted
        self.duplicates += chunk.duplicates
        self.resumed += chunk.resumed
        self.bad_records += chunk.rejected
        self.examples.extend(chunk.examples[: max(0, 10 - len(self.examples))])
        for key, n in chunk.hook_stats.items():
            self.hook_stats[key] = self.hook_stats.get(key, 0) + n

    def describe(self) -> str:
        rate = self.records / self.seconds if self.seconds else 0.0
        stale = (
            f", {self.files_stale} imported again: the collection was dropped since"
            if self.files_stale
            else ""
        )
        return (
            f"{self.files} files ({self.files_skipped} already imported{stale}), "
            f"{self.records} records, "
            f"{self.inserted} inserted, {self.duplicates} duplicates, "
            + (f"{self.resumed} stored before by an interrupted run, " if self.resumed else "")
            + f"{self.bad_records} bad records, "
            f"{len(self.failed)} failed files in {self.seconds:.1f}s ({rate:,.0f} records/s)"
        ) + "".join(f", {n} {key.replace('_', ' ')}" for key, n in sorted(self.hook_stats.items()))


class Progress(Protocol):
    """What the importer reports while it works (the CLI's progress bar is one)."""

    def start(self, files: int, total_bytes: int) -> None: ...

    def update(self, chunk: ChunkResult) -> None: ...


def import_dataset(
    dataset_dir: str | os.PathLike,
    url: str,
    options: ImportOptions | None = None,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import every layout file under ``dataset_dir`` into ``database.collection`` at ``url``.

    Files are grouped into chunks (one large file, or many small ones) so that
    small files do not cost a round trip each; ``progress.update`` is called once
    per chunk (after ``progress.start``).  With more than one worker the chunks are shared among
    processes, largest first.
    """
    options = options or ImportOptions()
    if options.on_duplicate not in ON_DUPLICATE:
        raise ImporterError(f"on_duplicate must be one of {', '.join(ON_DUPLICATE)}")
    dataset_dir = Path(dataset_dir)
    try:
        files = find_layout_files(dataset_dir, options.filter)
    except LayoutError as e:
        raise DatasetError(str(e)) from None
    names = options.dimension_names()
    started = time.monotonic()
    summary = ImportSummary()
    client = connect(url, options.timeout_ms)
    try:
        check_write_concern(client, options.write_concern)
        db = client[options.database]
        if options.drop:
            db.drop_collection(options.collection)
            db[options.imports_collection].delete_many({"collection": options.collection})
        if (
            options.create_indexes
        ):  # before the data: building them afterwards rescans every document
            create_indexes(db[options.collection], names)
        chunks = make_chunks(files, options.chunk_bytes, options.chunk_files)
        if progress:
            progress.start(len(files), sum(f.size for f in files))
        sink = _Sink(options.hook.sink(db) if options.hook is not None else None, summary)
        if options.workers <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                result = import_files(db, chunk, names, options)
                summary.add(result)
                sink.add(result)
                if progress:
                    progress.update(result)
        else:
            ctx = get_context("spawn")
            with ProcessPoolExecutor(
                min(options.workers, len(chunks)),
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(url, options.timeout_ms),
            ) as pool:
                futures = [
                    pool.submit(_import_in_worker, chunk, names, options) for chunk in chunks
                ]
                for future in as_completed(futures):
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        raise ImporterError(
                            "an import worker process died; rerun to resume"
                        ) from None
                    summary.add(result)
                    sink.add(result)
                    if progress:
                        progress.update(result)
        sink.close()
    finally:
        client.close()
    summary.seconds = time.monotonic() - started
    return summary


def parse_write_concern(value: str | int) -> int | str:
    """``w`` from the command line: a number of members >= 0, or ``majority``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if value == "majority":
        return value
    raise ImporterError(f"write concern must be a number of members (0, 1, 2, ...) or "
                        f"'majority', not {value!r}")


def check_write_concern(client: pymongo.MongoClient, w: int | str) -> None:
    """Refuse a ``w`` the server can never satisfy, before anything is written.

    A standalone server (the embedded one among them) has one member; a
    replica set as many as it lists.  Asking for more stores every document
    and then fails every write.
    """
    w = parse_write_concern(w)
    if not isinstance(w, int) or w <= 1:
        return
    hello = client.admin.command("hello")
    if hello.get("msg") == "isdbgrid":
        return  # mongos: the shards' replica sets decide
    members = len(hello.get("hosts", [])) + len(hello.get("passives", []))
    if not hello.get("setName"):
        raise ImporterError(f"write concern {w} needs a replica set of {w} members; the server is "
                            f"a standalone (use 1 or majority)")
    if w > members:
        raise ImporterError(f"write concern {w} needs {w} members; the replica set "
                            f"{hello['setName']} has {members}")


class _Sink:
    """The hook's sink, if any: its failures become a failed entry of the summary, never a crash."""

    NAME = "(aggregates)"

    def __init__(self, sink: Any, summary: ImportSummary):
        self.sink = sink
        self.summary = summary

    def add(self, chunk: ChunkResult) -> None:
        if self.sink is not None and chunk.hook_output is not None:
            self._call(self.sink.add, chunk.hook_output)
            chunk.hook_output = None

    def close(self) -> None:
        if self.sink is not None:
            stats = self._call(self.sink.close)
            for key, n in (stats or {}).items():
                self.summary.hook_stats[key] = self.summary.hook_stats.get(key, 0) + n

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except (PyMongoError, ImporterError) as e:
            self.summary.failed.append((self.NAME, f"{self.NAME}: {type(e).__name__}: {e}"))
            self.sink = None  # what it held is applied by the next run
            return None


def default_workers(url: str) -> int:
    """Worker processes when none are asked for: all CPUs, or half beside a local server.

    The client's parsing is what limits an import into a server elsewhere; a
    server on this machine (the embedded one) needs the other half itself.
    """
    cpus = os.cpu_count() or 2
    return max(1, cpus // 2) if is_local(url) else cpus


def make_chunks(files: list[LayoutFile], max_bytes: int, max_files: int) -> list[list[LayoutFile]]:
    """Files grouped up to ``max_bytes``/``max_files`` each, largest first, for balanced workers."""
    chunks: list[list[LayoutFile]] = []
    current: list[LayoutFile] = []
    size = 0
    for lf in sorted(files, key=lambda f: (-f.size, f.relpath)):
        if current and (size + lf.size > max_bytes or len(current) >= max_files):
            chunks.append(current)
            current, size = [], 0
        current.append(lf)
        size += lf.size
    if current:
        chunks.append(current)
    return chunks


def create_indexes(collection: pymongo.collection.Collection, names: Iterable[str]) -> list[str]:
    """One compound index over the dimensions, the submission day first.

    Every index costs every insert: on the embedded server the first one adds
    about half to the server's work per 5 KB document, a second about a
    fifth more (docs/mongo.md), so there is one.  Real filters almost
    always bound the day, so it leads; the other dimensions follow in schema
    order and narrow the scan inside the index.  A collection that already
    has an index named ``dimensions`` (made by an earlier version, with
    another key order, or by hand) keeps it: recreating it under the same
    name with other keys would be refused by the server.
    """
    names = sorted(names, key=lambda n: n != SUBMISSION_DATE)  # stable: the rest keep schema order
    if not names:
        return []
    if any(ix["name"] == "dimensions" for ix in collection.list_indexes()):
        return ["dimensions"]
    return collection.create_indexes(
        [pymongo.IndexModel([(f"{META}.{n}", 1) for n in names], name="dimensions")]
    )


def import_files(
    db: pymongo.database.Database, files: list[LayoutFile], names: list[str], options: ImportOptions
) -> ChunkResult:
    """Import a chunk of files, skipping those an earlier run finished.

    Each file is marked ``started`` before any of its records is written and
    ``done`` after the last one is acknowledged, so a file interrupted in
    between is recognised on the next run and written again with replacing
    upserts.  A file that fails is reported in the result, never raised.
    """
    chunk = ChunkResult()
    imports = db[options.imports_collection]
    keys = {lf.relpath: f"{options.collection}:{lf.relpath}" for lf in files}
    try:
        identity = collection_identity(db, options.collection)
        entries = {e["_id"]: e for e in imports.find({"_id": {"$in": list(keys.values())}})}
        todo: list[tuple[LayoutFile, FileResult]] = []
        marks = []
        for lf in files:
            result = FileResult(lf.relpath, lf.size)
            chunk.files.append(result)
            entry = entries.get(keys[lf.relpath])
            finished = entry is not None and entry.get("state") == "done"
            if finished and entry.get("collection_uuid") != identity:
                finished, result.stale = False, True  # its records went with a dropped collection
            try:
                stat = lf.path.stat()
                # Same size and mtime: finished, without reading it again; else the hash decides.
                if (
                    finished
                    and entry.get("size") == stat.st_size
                    and entry.get("mtime") == stat.st_mtime
                ):
                    result.skipped = True
                    continue
                digest = file_digest(lf.path)
            except OSError as e:
                result.error = f"{lf.relpath}: {e.strerror or e}"
                continue
            if finished and entry.get("size") == stat.st_size and entry.get("sha256") == digest:
                result.skipped = True
                continue
            result.resumed = entry is not None
            todo.append((lf, result))
            marks.append(
                {
                    "_id": keys[lf.relpath],
                    "collection": options.collection,
                    "path": lf.relpath,
                    "size": stat.st_size,
                    "mtime": stat.st_mtime,
                    "sha256": digest,
                    "collection_uuid": identity,
                    "state": "started",
                    "started_at": _now(),
                }
            )
        _mark_started(imports, marks, {r.relpath for _, r in todo if r.resumed}, todo)
        hook = options.hook.open(db, names) if options.hook is not None else None
        writer = _Writer(db, options, chunk)
        try:
            for lf, result in todo:
                _read_file(lf, names, options, result, writer, hook)
            writer.flush_all()
        finally:
            writer.close()
        done = [
            UpdateOne(
                {"_id": keys[r.relpath]},
                {
                    "$set": {
                        "state": "done",
                        "records": r.records,
                        "bad_records": r.bad_records,
                        "finished_at": _now(),
                    }
                },
            )
            for _, r in todo
            if r.error is None
        ]
        if done:
            imports.bulk_write(done, ordered=False)
        if hook is not None:
            chunk.hook_output, chunk.hook_stats = hook.finish(zip(files, chunk.files))
    except (PyMongoError, ImporterError) as e:
        message = f"{type(e).__name__}: {e}"
        for r in chunk.files:
            if not r.skipped and r.error is None:
                r.error = f"{r.relpath}: {message}"
        for lf in files[len(chunk.files) :]:
            chunk.files.append(FileResult(lf.relpath, lf.size, error=f"{lf.relpath}: {message}"))
    return chunk


def _mark_started(
    imports: pymongo.collection.Collection,
    marks: list[dict],
    known: set[str],
    todo: list[tuple[LayoutFile, FileResult]],
) -> None:
    """Record files as started: a plain insert for files never seen, a replace for the others.

    Inserts cost the server far less than upserts, and most files are new.  A
    mark that another run inserted meanwhile is replaced instead, and that
    file is then written with replacing upserts as if resumed.
    """
    fresh = [m for m in marks if m["path"] not in known]
    again = [m for m in marks if m["path"] in known]
    if fresh:
        try:
            imports.insert_many(fresh, ordered=False)
        except BulkWriteError as e:
            errors = e.details.get("writeErrors", [])
            if any(w.get("code") != DUPLICATE_KEY for w in errors):
                raise
            taken = {fresh[w["index"]]["path"] for w in errors}
            again += [m for m in fresh if m["path"] in taken]
            for _, result in todo:
                if result.relpath in taken:
                    result.resumed = True
    if again:
        imports.bulk_write(
            [ReplaceOne({"_id": m["_id"]}, m, upsert=True) for m in again], ordered=False
        )


def collection_identity(db: pymongo.database.Database, name: str) -> str | None:
    """The collection's UUID (created now if it does not exist), kept with each finished file.

    MongoDB gives a collection a new UUID whenever it is created again, so a
    finished file whose recorded UUID is not the collection's was imported
    into a collection that has since been dropped: its records are gone.
    None when the server does not report UUIDs (then the bookkeeping alone
    is trusted, as before).
    """
    for attempt in range(2):
        for info in db.list_collections(filter={"name": name}):
            uuid = (info.get("info") or {}).get("uuid")
            if uuid is None:
                return None
            return str(uuid.as_uuid() if isinstance(uuid, Binary) else uuid)
        if attempt == 0:
            try:
                db.create_collection(name)
            except CollectionInvalid:  # created meanwhile by another worker
                pass
    return None


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _read_file(
    lf: LayoutFile,
    names: list[str],
    options: ImportOptions,
    result: FileResult,
    writer: "_Writer",
    hook: Any = None,
) -> None:
    kind = (
        "resume"
        if result.resumed
        else ("replace" if options.on_duplicate == "replace" else "insert")
    )
    meta_base = dict(zip(names, lf.dimensions))
    meta_base[SOURCE] = lf.relpath
    stats = LayoutReadStats()
    try:
        for _, doc_id, json_text in read_layout_file(lf.path, stats):
            try:
                doc = make_document(doc_id, json_text, dict(meta_base), options.keep_dots)
            except DocumentError as e:
                result.bad_records += 1
                writer.example(str(e))
                continue
            if hook is not None:
                hook.record(lf, doc)
            writer.add(kind, doc, len(json_text))
    except LayoutError as e:
        result.error = str(e)
    # Every line read is a record, well-formed or not, so that records = inserted +
    # duplicates + bad records.
    result.records = stats.records + stats.bad_lines
    result.bad_records += stats.bad_lines
    for example in stats.bad_examples:
        writer.example(f"bad line {example}")


@dataclass
class _Written:
    """What one batch write did; summed into the chunk by the importing thread only."""

    inserted: int = 0
    duplicates: int = 0
    resumed: int = 0
    rejected: int = 0
    examples: list[str] = field(default_factory=list)
    error: str | None = None  # written, but the write concern was not satisfied

    def add(self, other: "_Written") -> "_Written":
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.resumed += other.resumed
        self.rejected += other.rejected
        self.examples += other.examples
        self.error = self.error or other.error
        return self


class _Writer:
    """Batches documents across files: inserts, replacing upserts, upserts of a resumed file.

    Batches are written by ``options.writers`` threads while the next ones
    are parsed, so the server and this process work at once and a server
    that handles connections concurrently gets several; at most that many
    batches are in flight, which bounds memory.
    """

    def __init__(self, db, options: ImportOptions, chunk: ChunkResult):
        self.collection = db.get_collection(
            options.collection, write_concern=WriteConcern(w=options.write_concern)
        )
        self.acknowledged = self.collection.write_concern.acknowledged
        self.batch_size = options.batch_size
        self.batch_bytes = options.batch_bytes
        self.chunk = chunk
        self.buffers: dict[str, list[dict]] = {"insert": [], "replace": [], "resume": []}
        self.sizes = dict.fromkeys(self.buffers, 0)
        self.writers = max(1, options.writers)
        self.threads = ThreadPoolExecutor(self.writers, thread_name_prefix="import-writer")
        self.pending: deque[Future] = deque()

    def add(self, kind: str, doc: dict, size: int) -> None:
        self.buffers[kind].append(doc)
        self.sizes[kind] += size
        if len(self.buffers[kind]) >= self.batch_size or self.sizes[kind] >= self.batch_bytes:
            self.flush(kind)

    def flush_all(self) -> None:
        """Write what is buffered and wait until every write is acknowledged."""
        for kind in self.buffers:
            self.flush(kind)
        while self.pending:
            self._collect(self.pending.popleft())

    def close(self) -> None:
        self.threads.shutdown(wait=True)

    def flush(self, kind: str) -> None:
        docs = self.buffers[kind]
        if docs:
            self.buffers[kind], self.sizes[kind] = [], 0
            while len(self.pending) >= self.writers:
                self._collect(self.pending.popleft())
            self.pending.append(self.threads.submit(self._write, kind, docs))

    def _collect(self, future: Future) -> None:
        written = future.result()  # re-raises the write's error here, in the importing thread
        self.chunk.inserted += written.inserted
        self.chunk.duplicates += written.duplicates
        self.chunk.resumed += written.resumed
        self.chunk.rejected += written.rejected
        for text in written.examples:
            self.example(text)
        if written.error:
            # The documents are stored (and counted), but not as durably as asked: the
            # files stay unfinished, and a rerun writes them again with replacing upserts.
            raise ImporterError(written.error)

    def example(self, text: str) -> None:
        if len(self.chunk.examples) < 5:
            self.chunk.examples.append(text)

    def _write(self, kind: str, docs: list[dict]) -> _Written:
        out = _Written()
        try:
            if kind == "insert":
                self.collection.insert_many(docs, ordered=False)
                out.inserted = len(docs)
            else:
                res = self.collection.bulk_write(
                    [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in docs], ordered=False
                )
                if not self.acknowledged:
                    out.inserted = len(docs)
                else:
                    out.inserted = res.upserted_count
                    if kind == "replace":
                        out.duplicates = res.matched_count
                    else:  # a resumed file's earlier half is not a duplicate
                        out.resumed = res.matched_count
        except BulkWriteError as e:
            details = e.details
            errors = details.get("writeErrors", [])
            dup = [w for w in errors if w.get("code") == DUPLICATE_KEY]
            other = [w for w in errors if w.get("code") != DUPLICATE_KEY]
            out.inserted = details.get("nInserted", 0) + details.get("nUpserted", 0)
            if kind == "resume":
                out.resumed = len(dup)
            else:
                out.duplicates = len(dup)
            out.rejected = len(other)
            out.examples = [
                f"record {w.get('op', {}).get('_id', '?')}: {w.get('errmsg')}" for w in other[:3]
            ]
            if details.get("writeConcernErrors"):
                first = details["writeConcernErrors"][0]
                out.error = f"write concern not satisfied: {first.get('errmsg', first)}"
        except DocumentTooLarge:
            if len(docs) == 1:
                return _Written(
                    rejected=1,
                    examples=[
                        f"record {docs[0]['_id']}: larger than MongoDB's 16 MB document limit"
                    ],
                )
            half = len(docs) // 2
            return self._write(kind, docs[:half]).add(self._write(kind, docs[half:]))
        return out


def _now() -> datetime:
    return datetime.now(timezone.utc)


_worker_db_client: pymongo.MongoClient | None = None
_worker_error: MongoUnavailable | None = None


def _init_worker(url: str, timeout_ms: int) -> None:
    """Each worker process opens its own client once (clients do not survive a fork or pickling).

    A server that cannot be reached is remembered and raised by the first
    task: raised here, it would break the pool, and the user would read that
    a worker died instead of which server is down.
    """
    global _worker_db_client, _worker_error
    try:
        _worker_db_client = connect(url, timeout_ms)
    except MongoUnavailable as e:
        _worker_error = e


def _import_in_worker(
    files: list[LayoutFile], names: list[str], options: ImportOptions
) -> ChunkResult:
    if _worker_error is not None:
        raise _worker_error
    assert _worker_db_client is not None
    return import_files(_worker_db_client[options.database], files, names, options)
