"""process_incoming: raw logs in, published layout files and an error output out.

:func:`process` is the library entry point the CLI, the demo and the
benchmark call.  Each raw file is one *unit*, identified by a hash of its
content; a unit is converted by one worker process and committed as a whole
(see :mod:`converter.storage`), then recorded as done under
``{output}/.state/done/``.  A rerun skips done units, completes units that
committed but were not fully published, and redoes the rest; published names
are derived from the unit's identity, so a unit converted twice never
duplicates a record.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson

from converter.convert import DEFAULT_MAX_UNCOMPRESSED, Converter, parse_path
from converter.errorlog import ErrorWriter, error_files, mark_retried
from converter.errors import ConfigError, ProcessError, RecordError, UnwritablePartition
from converter.layout import relative_path
from converter.revisions import RevisionCache
from converter.schema import Schema, SchemaError
from converter.storage import (CODEC_EXTENSIONS, DEFAULT_MAX_FILE_SIZE, LayoutWriter,
                               complete_pending, fsync_dir, write_durably, write_manifest)
from receiver.rawlog import FINISHED_SUFFIX, RawLogReader, finished_files

DEFAULT_SCHEMA = Path(__file__).parent / "telemetry_schema.json"  # the original's schema
# The levels each codec accepts: zstd's fast (negative) and normal ones, lzma's presets.
COMPRESSION_LEVELS = {"zst": (-131072, 22), "lzma": (0, 9)}
STATE_DIR = ".state"
WORK_DIR = ".work"
ERRORS_DIR = ".errors"
NO_HISTOGRAMS_NOTICE = ("no histogram_cache or histogram_server given: pings with histograms "
                        "will be rejected as missing_revision")
HEKA_NOTICE = ("heka_server is no longer used: converter metrics go to the run summary "
               "(and the stats/metrics outputs) instead")


@dataclass
class ConverterConfig:
    """Everything a conversion run needs; the original's JSON keys are accepted as they were.

    ``storage_path`` is the layout output.  ``upload_path``, when given, is
    where published files go instead (the original moved finished files
    there for the exporter).  ``memory_constraint`` is in MiB.
    """

    storage_path: str = ""
    telemetry_schema: str = ""
    histogram_cache: str | None = None
    histogram_server: str | None = None
    upload_path: str | None = None
    errors_path: str | None = None
    max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED
    memory_constraint: int | None = None
    compression_preset: int | None = None
    codec: str = "zst"
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    workers: int = 1
    dedup: bool = False
    failure_ttl: float = 300.0
    heka_server: str | None = None
    notices: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ConverterConfig":
        """Build from a JSON document; an unknown key is an error that names it."""
        if not isinstance(data, dict):
            raise ConfigError("a converter configuration must be a JSON object")
        known = {f.name for f in fields(cls)} - {"notices"}
        for key in data:
            if key not in known:
                raise ConfigError(f"unknown configuration key {key!r} "
                                  f"(known: {', '.join(sorted(known))})")
        config = cls(**data)
        config.check()
        return config

    @classmethod
    def load(cls, path: str | os.PathLike,
             overrides: dict[str, Any] | None = None) -> "ConverterConfig":
        """A JSON config file, with command-line values (not None) taking precedence."""
        try:
            data = orjson.loads(Path(path).read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"config file {os.fspath(path)} does not exist") from None
        except orjson.JSONDecodeError as e:
            raise ConfigError(f"config file {os.fspath(path)} is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {os.fspath(path)} must hold a JSON object")
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(data)

    def check(self) -> None:
        """Validate values; fills ``notices`` with what the user should hear once."""
        for name in ("storage_path", "telemetry_schema", "codec"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, not {getattr(self, name)!r}")
        for name in ("histogram_cache", "histogram_server", "upload_path", "errors_path",
                     "heka_server"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string or null, not {getattr(self, name)!r}")
        if type(self.dedup) is not bool:
            raise ConfigError(f"dedup must be true or false, not {self.dedup!r}")
        if type(self.failure_ttl) not in (int, float) or not self.failure_ttl >= 0:
            raise ConfigError(f"failure_ttl must be a number of seconds, not {self.failure_ttl!r}")
        if not self.storage_path:
            raise ConfigError("no output directory (storage_path / --output) given")
        if not self.telemetry_schema:
            self.telemetry_schema = str(DEFAULT_SCHEMA)
        if self.codec not in CODEC_EXTENSIONS:
            raise ConfigError(f"unknown codec {self.codec!r}: use zst or lzma")
        for name in ("max_uncompressed", "max_file_size", "workers"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")
        if self.memory_constraint is not None and (type(self.memory_constraint) is not int
                                                   or self.memory_constraint < 1):
            raise ConfigError(f"memory_constraint must be a positive number of MiB, "
                              f"not {self.memory_constraint!r}")
        if self.compression_preset is not None and type(self.compression_preset) is not int:
            raise ConfigError(f"compression_preset must be an integer, "
                              f"not {self.compression_preset!r}")
        if self.compression_preset is not None:
            low, high = COMPRESSION_LEVELS[CODEC_EXTENSIONS[self.codec]]
            if not low <= self.compression_preset <= high:
                raise ConfigError(f"compression_preset (--level) for {self.codec} must be "
                                  f"{low}..{high}, not {self.compression_preset}")
        if self.heka_server is not None and HEKA_NOTICE not in self.notices:
            self.notices.append(HEKA_NOTICE)
        no_source = not self.histogram_cache and not self.histogram_server
        if no_source and NO_HISTOGRAMS_NOTICE not in self.notices:
            self.notices.append(NO_HISTOGRAMS_NOTICE)

    @property
    def output(self) -> Path:
        return Path(self.upload_path or self.storage_path)

    @property
    def errors(self) -> Path:
        return Path(self.errors_path) if self.errors_path else self.output / ERRORS_DIR

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("notices")
        return data


@dataclass
class UnitResult:
    """What converting one raw file did; sums into a :class:`ProcessSummary`."""

    source: str
    unit_id: str
    status: str = "converted"        # converted | completed (after a crash) | skipped (done before)
    bytes_in: int = 0
    records_in: int = 0
    records_out: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    unknown_histograms: dict[str, int] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    error_files: list[str] = field(default_factory=list)
    skipped_bytes: int = 0
    read_problems: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0
    infrastructure: dict[str, int] = field(default_factory=dict)  # cause -> records rejected by it


@dataclass
class ProcessSummary:
    """A whole run: per-reason counts, records in and out, files published."""

    files: int = 0
    files_skipped: int = 0
    files_completed: int = 0
    bytes_in: int = 0
    records_in: int = 0
    records_out: int = 0
    duplicates: int = 0
    rejected: Counter = field(default_factory=Counter)
    unknown_histograms: Counter = field(default_factory=Counter)
    published: list[str] = field(default_factory=list)
    error_files: list[str] = field(default_factory=list)
    skipped_bytes: int = 0
    read_problems: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0         # spent converting, summed over workers
    seconds: float = 0.0
    # Rejections that are not the records' fault (a histogram server down, a
    # directory that cannot be written): cause -> records.  A run with any is a failure.
    infrastructure: Counter = field(default_factory=Counter)

    def add(self, r: UnitResult) -> None:
        self.files += 1
        if r.status == "skipped":
            self.files_skipped += 1
            return
        if r.status == "completed":
            self.files_completed += 1
        self.bytes_in += r.bytes_in
        self.records_in += r.records_in
        self.records_out += r.records_out
        self.duplicates += r.duplicates
        self.rejected.update(r.rejected)
        self.unknown_histograms.update(r.unknown_histograms)
        self.published.extend(r.published)
        self.error_files.extend(r.error_files)
        self.skipped_bytes += r.skipped_bytes
        self.read_problems.extend(r.read_problems)
        self.cpu_seconds += r.cpu_seconds
        self.infrastructure.update(r.infrastructure)

    @property
    def records_rejected(self) -> int:
        return sum(self.rejected.values())

    def infrastructure_problems(self) -> list[str]:
        """One line per cause of rejections that are not the records' fault, for stderr."""
        return [f"{n} records rejected because the {cause}" if cause.startswith("histogram")
                else f"{n} records rejected: {cause}"
                for cause, n in self.infrastructure.most_common()]

    def lines(self) -> list[str]:
        """The human summary the CLI prints."""
        out = [f"files: {self.files} ({self.files_skipped} already done, "
               f"{self.files_completed} completed after an interrupted run)",
               f"records: {self.records_in} read, {self.records_out} written, "
               f"{self.records_rejected} rejected, {self.duplicates} duplicates dropped",
               f"published: {len(self.published)} layout files, "
               f"{len(self.error_files)} error files"]
        for reason, n in sorted(self.rejected.items()):
            out.append(f"  rejected {reason}: {n}")
        if self.unknown_histograms:
            total = sum(self.unknown_histograms.values())
            out.append(f"  unknown histograms kept aside: {total} "
                       f"({len(self.unknown_histograms)} names)")
            for name, n in self.unknown_histograms.most_common(10):
                out.append(f"    {name}: {n}")
        if self.skipped_bytes:
            out.append(f"  corrupt input bytes skipped: {self.skipped_bytes}")
        for problem in self.read_problems[:10]:
            out.append(f"  {problem}")
        if self.seconds:
            mb = self.bytes_in / 1e6
            out.append(f"time: {self.seconds:.1f} s ({mb / self.seconds:.1f} MB/s, "
                       f"{self.records_in / self.seconds:.0f} records/s; "
                       f"{self.cpu_seconds:.1f} CPU s converting)")
        return out


@dataclass(frozen=True)
class Unit:
    """One raw file to convert, with the offsets of records ``--dedup`` drops."""

    source: str
    unit_id: str
    drop: frozenset[int] = frozenset()


# ---------------------------------------------------------------------------
# Inputs

def gather_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Raw files named (any name) plus the ``.finished`` files of directories named."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(finished_files(p))
        elif p.is_file():
            found.append(p)
        else:
            raise ProcessError(f"input {p} does not exist")
    seen, unique = set(), []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def unit_id(path: Path, error_file: bool = False) -> str:
    """A raw file's identity: a hash of its content (a renamed or copied file is the same unit).

    An error file given to ``--retry-errors`` also hashes its name (which holds
    the unit id of the run that wrote it): when every record of a raw file was
    rejected, the error file is byte-identical to its source, and must not be
    taken for that source's unit, already done.
    """
    h = hashlib.blake2b(digest_size=16)
    if error_file:
        h.update(b"error file\0" + f"{path.parent.name}/{path.name}".encode() + b"\0")
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    except OSError as e:
        raise ProcessError(f"cannot read input {path}: {e}") from None
    return h.hexdigest()


def dedup_drops(sources: list[Path]) -> tuple[dict[str, frozenset[int]], int]:
    """For ``--dedup``: which records (by offset) of which file are repeats to drop.

    One copy per docId is kept: the first ``saved-session`` if there is one
    (it holds everything an earlier ``idle-daily`` of the same session had),
    else the first copy.  The reason is read from the path, which is cheap.
    """
    best: dict[str, tuple[int, int, int]] = {}
    seen: list[tuple[str, int, int]] = []
    for index, source in enumerate(sources):
        for rec in RawLogReader(source):
            try:
                doc_id, info = parse_path(rec.path)
            except RecordError:
                continue
            rank = 0 if info and info.get("reason") == "saved-session" else 1
            key = (rank, index, rec.offset)
            if doc_id not in best or key < best[doc_id]:
                best[doc_id] = key
            seen.append((doc_id, index, rec.offset))
    drops: dict[int, set[int]] = {}
    for doc_id, index, offset in seen:
        _, bi, bo = best[doc_id]
        if (bi, bo) != (index, offset):
            drops.setdefault(index, set()).add(offset)
    total = sum(len(d) for d in drops.values())
    return {str(sources[i]): frozenset(d) for i, d in drops.items()}, total


# ---------------------------------------------------------------------------
# One unit, in a worker

_converter: Converter | None = None
_config: ConverterConfig | None = None
_report: Callable[[tuple[str, int]], None] | None = None  # (source, bytes read so far)
REPORT_EVERY = 4 * 1024 * 1024


def _init_worker(config: ConverterConfig,
                 report: Callable[[tuple[str, int]], None] | None = None) -> None:
    global _converter, _config, _report
    _config = config
    _report = report
    schema = Schema.load(config.telemetry_schema)
    revisions = RevisionCache(config.histogram_cache, config.histogram_server,
                              failure_ttl=config.failure_ttl)
    _converter = Converter(schema, revisions, config.max_uncompressed)


def _convert_frozen(unit: Unit) -> UnitResult:
    """convert_unit with what is already in memory kept out of the garbage collector's scans.

    A ping parses into thousands of containers, so the collector runs every
    few records; frozen, the modules and bucket tables loaded so far are not
    walked each time (about 3% of a unit's CPU).  Nothing is lost: the
    converter's per-record objects are freed by reference counting.
    """
    gc.freeze()
    return convert_unit(unit)


def _done_marker(output: Path, uid: str) -> Path:
    return output / STATE_DIR / "done" / f"{uid}.json"


def convert_unit(unit: Unit, config: ConverterConfig | None = None,
                 converter: Converter | None = None) -> UnitResult:
    """Convert one raw file and commit its output; see the module docstring for the protocol."""
    config = config or _config
    converter = converter or _converter
    output = config.output
    marker = _done_marker(output, unit.unit_id)
    work = output / WORK_DIR / unit.unit_id
    if marker.exists():  # done; a crash may have left its work directory behind
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(config.errors / WORK_DIR / unit.unit_id, ignore_errors=True)
        return UnitResult(unit.source, unit.unit_id, status="skipped")
    published = complete_pending(work)
    if published is not None:  # committed before a crash: finish publishing
        result = _result_from_manifest(work)
        result.status = "completed"
        _mark_done(marker, result, work, config)
        return result
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(config.errors / WORK_DIR / unit.unit_id, ignore_errors=True)

    cpu_start = time.process_time()
    result = UnitResult(unit.source, unit.unit_id)
    memory = config.memory_constraint * 1024 * 1024 if config.memory_constraint else None
    writer = LayoutWriter(output, work, unit.unit_id, config.codec, config.compression_preset,
                          config.max_file_size, memory)
    errors = ErrorWriter(config.errors, unit.unit_id, unit.source)
    rejected: Counter = Counter()
    unknown: Counter = Counter()
    infrastructure: Counter = Counter()
    paths: dict[tuple, str] = {}
    drop = unit.drop
    reader = RawLogReader(unit.source)
    records_in = records_out = duplicates = 0
    report = _report if config is _config else None
    next_report = REPORT_EVERY
    try:
        for rec in reader:
            records_in += 1
            if report is not None and rec.end >= next_report:
                report((unit.source, rec.end))
                next_report = rec.end + REPORT_EVERY
            if drop and rec.offset in drop:
                duplicates += 1
                continue
            try:
                conv = converter.convert_record(rec)
            except RecordError as e:
                rejected[e.reason] += 1
                errors.add(rec, e.reason, e.message)
                if e.infrastructure:
                    infrastructure[e.infrastructure] += 1
                continue
            except Exception as e:  # a converter bug must not lose the record
                rejected["conversion_error"] += 1
                errors.add(rec, "conversion_error", f"unexpected {type(e).__name__}: {e}")
                continue
            key = (*conv.dimensions, conv.version)
            relpath = paths.get(key)
            if relpath is None:
                relpath = paths[key] = relative_path(conv.dimensions, conv.version)
            try:
                writer.write(relpath, conv.line)
            except UnwritablePartition as e:
                rejected["write_failed"] += 1
                errors.add(rec, "write_failed", str(e))
                cause = getattr(e.__cause__, "strerror", None) or str(e)
                infrastructure[f"layout directories cannot be created ({cause})"] += 1
                continue
            records_out += 1
            if conv.unknown_histograms:
                unknown.update(conv.unknown_histograms)
        pending = writer.finish() + errors.finish()
    except OSError as e:
        writer.abort()
        errors.abort()
        raise ProcessError(f"{unit.source}: cannot write the output: {e}") from e
    result.bytes_in = reader.stats.bytes + reader.stats.skipped_bytes
    result.records_in, result.records_out, result.duplicates = records_in, records_out, duplicates
    result.rejected, result.unknown_histograms = dict(rejected), dict(unknown)
    result.infrastructure = dict(infrastructure)
    result.skipped_bytes = reader.stats.skipped_bytes
    result.read_problems = reader.stats.errors[:20]
    result.published = [p.target for p in writer.pending]
    result.error_files = [p.target for p in pending[len(writer.pending):]
                          if p.target.endswith(FINISHED_SUFFIX)]
    result.cpu_seconds = time.process_time() - cpu_start
    write_manifest(work, pending, asdict(result))
    complete_pending(work)
    _mark_done(marker, result, work, config)
    return result


def _result_from_manifest(work: Path) -> UnitResult:
    manifest = orjson.loads((work / "manifest.json").read_bytes())
    return UnitResult(**manifest["result"])


def _mark_done(marker: Path, result: UnitResult, work: Path, config: ConverterConfig) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(marker.name + ".tmp")
    write_durably(tmp, orjson.dumps(asdict(result)))
    os.replace(tmp, marker)
    fsync_dir(marker.parent)
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(config.errors / WORK_DIR / result.unit_id, ignore_errors=True)


# ---------------------------------------------------------------------------
# A run

class _RunLock:
    """One run per output directory at a time (released by the kernel if the run dies)."""

    def __init__(self, output: Path):
        try:
            (output / STATE_DIR).mkdir(parents=True, exist_ok=True)
            self._f = open(output / STATE_DIR / "lock", "w")
        except OSError as e:
            raise ProcessError(f"cannot write into {output}: {e}") from None
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.close()
            raise ProcessError(f"another conversion is writing into {output}") from None

    def release(self) -> None:
        self._f.close()


def process(config: ConverterConfig, inputs: Iterable[str | os.PathLike],
            retry_errors: str | os.PathLike | None = None,
            progress: bool | None = None,
            on_unit: Callable[[UnitResult], None] | None = None) -> ProcessSummary:
    """Convert raw files into the layout under ``config.output``, rejections to ``config.errors``.

    ``retry_errors`` adds the error files of an earlier run; each one that is
    fully converted again (its records published or rejected anew) is renamed
    ``*.retried``.  ``progress`` None shows a bar only when stderr is a terminal.
    """
    config.check()
    try:
        Schema.load(config.telemetry_schema)
    except SchemaError as e:
        raise ConfigError(str(e)) from None
    started = time.perf_counter()
    sources = gather_inputs(inputs)
    retried: set[str] = set()
    if retry_errors is not None:
        if not Path(retry_errors).is_dir():
            raise ProcessError(f"error directory {retry_errors} does not exist")
        for p in error_files(retry_errors):
            retried.add(str(p))
            sources.append(p)
    if not sources:
        raise ProcessError("no raw files to convert")
    output = config.output
    lock = _RunLock(output)
    summary = ProcessSummary()
    try:
        drops, _ = dedup_drops(sources) if config.dedup else ({}, 0)
        units, seen = [], set()
        for p in sources:
            unit = Unit(str(p), unit_id(p, str(p) in retried), drops.get(str(p), frozenset()))
            if unit.unit_id in seen:  # the same content twice in one run: convert it once
                summary.add(UnitResult(unit.source, unit.unit_id, status="skipped"))
                continue
            seen.add(unit.unit_id)
            units.append(unit)
        sizes = {u.source: os.path.getsize(u.source) for u in units}
        bar = _progress_bar(sum(sizes.values()), progress)
        position = dict.fromkeys(sizes, 0)

        def advance(report: tuple[str, int]) -> None:
            source, pos = report
            if bar is not None and pos > position[source]:
                bar.update(pos - position[source])
                position[source] = pos

        def finished(result: UnitResult) -> None:
            summary.add(result)
            if result.source in retried:
                mark_retried(Path(result.source))
            advance((result.source, sizes[result.source]))
            if on_unit is not None:
                on_unit(result)

        try:
            _run_units(config, units, finished, advance if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
    finally:
        lock.release()
    summary.seconds = time.perf_counter() - started
    return summary


def _run_units(config: ConverterConfig, units: list[Unit], finished: Callable[[UnitResult], None],
               advance: Callable[[tuple[str, int]], None] | None) -> None:
    workers = min(config.workers, len(units))
    if workers <= 1:
        _init_worker(config, advance)
        thaw = gc.get_freeze_count() == 0  # the caller's own frozen objects stay frozen
        try:
            for unit in units:
                try:
                    result = _convert_frozen(unit)
                except OSError as e:
                    raise ProcessError(f"{unit.source}: {e}") from e
                finished(result)
        finally:
            if thaw:  # the caller's process: leave its collector as it was
                gc.unfreeze()
        return
    # forkserver: workers are forked from a clean server process that has imported the
    # converter once, so they start fast and inherit no threads, locks or file handles.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["converter.process"])
    reports = ctx.Queue() if advance is not None else None
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(config, reports.put if reports is not None else None)
                             ) as pool:
        todo = sorted(units, key=lambda u: -os.path.getsize(u.source))  # biggest first
        running = {}
        try:
            while todo or running:
                while todo and len(running) < workers * 2:
                    unit = todo.pop(0)
                    running[pool.submit(_convert_frozen, unit)] = unit
                done, _ = wait(running, timeout=0.5 if reports is not None else None,
                               return_when=FIRST_COMPLETED)
                while reports is not None and not reports.empty():
                    advance(reports.get())
                for fut in done:
                    unit = running.pop(fut)
                    try:
                        finished(fut.result())
                    except ProcessError:
                        raise
                    except Exception as e:
                        raise ProcessError(f"worker failed on {unit.source}: "
                                           f"{type(e).__name__}: {e}") from e
        except BaseException:
            for fut in running:
                fut.cancel()
            raise


def _progress_bar(total: int, progress: bool | None):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, desc="converting", file=sys.stderr)
