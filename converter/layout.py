"""The on-disk layout: where a record's file lives, and how layout files are read.

SPEC section 3: a record with dimensions ``d1 .. dn`` (the last one being
``submission_date``) goes to ``d1/d2/.../d(n-2)/d(n-1).{submission_date}.v{version}.log``
and each line is ``{docId}\\t{json}\\n``.  Finished files are compressed and
published under ``{file name}.{32 hex}.{zst|lzma}``, never to change again.
Every consumer (importer, MapReduce, export) finds and reads files through
this module, so the codecs and the filter pruning live in one place.

Directories and files whose names start with ``.`` are never part of a
dataset: writers keep work in progress there.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import zstandard

from converter.schema import Schema

_UNSAFE = re.compile(r"[^a-zA-Z0-9_/.]")
MAX_VALUE_LEN = 100

# Extension -> codec name; "log" is an uncompressed, still-plain layout file.
CODECS = {"zst": "zstd", "lzma": "lzma", "xz": "xz", "gz": "gzip", "log": "plain"}
PUBLISHED_EXTENSIONS = ("zst", "lzma", "xz", "gz")
_PUBLISHED = re.compile(r"^(?P<base>.+\.v\d+\.log)\.(?P<uid>[0-9a-fA-F]{32})\.(?P<ext>zst|lzma|xz|gz)$")
_PLAIN = re.compile(r"^.+\.v\d+\.log$")

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZ_MAGIC = b"\x1f\x8b"


class LayoutError(Exception):
    """A layout file that cannot be opened or decompressed."""


def clean_value(value: str) -> str:
    """A dimension value made safe to be one path component.

    SPEC: every character outside ``[a-zA-Z0-9_/.]`` becomes ``_``.  We go one
    step further so that no value can leave the output directory or split into
    extra levels: ``/`` becomes ``_`` as well, ``.`` and ``..`` become ``_`` and
    ``__``, and a value longer than 100 characters is cut and given a hash of
    the whole value so that distinct long values stay distinct.
    """
    cleaned = _UNSAFE.sub("_", value).replace("/", "_")
    if cleaned in ("", ".", ".."):
        cleaned = "_" * max(1, len(cleaned))
    if len(cleaned) > MAX_VALUE_LEN:
        digest = hashlib.sha1(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        cleaned = f"{cleaned[:MAX_VALUE_LEN - 17]}_{digest}"
    return cleaned


def relative_path(dimensions: list[str], version: int = 2) -> str:
    """The layout file (before publishing) that records with these dimensions go to."""
    if len(dimensions) < 2:
        raise ValueError("the layout needs at least two dimensions")
    parts = [clean_value(v) for v in dimensions]
    # The file name is split on dots to recover its two dimensions, so they hold none.
    last = [p.replace(".", "_") for p in parts[-2:]]
    name = f"{last[0]}.{last[1]}.v{version}.log"
    return "/".join(parts[:-2] + [name])


def dimensions_from_path(relpath: str | os.PathLike) -> list[str]:
    """Recover a file's dimensions: its directories plus the first two pieces of its name."""
    parts = Path(relpath).parts
    pieces = parts[-1].split(".")
    return list(parts[:-1]) + pieces[:2]


def published_name(relpath: str, extension: str, uid: str | None = None) -> str:
    """``{layout file name}.{32 hex digits, unique}.{ext}``: a fresh, never-reused name.

    ``uid`` lets a writer choose the 32 hex digits itself (the converter derives
    them from its input so that a rerun after a crash rewrites the same names).
    """
    if extension not in PUBLISHED_EXTENSIONS:
        raise ValueError(f"unknown published extension {extension!r}")
    if uid is None:
        uid = uuid.uuid4().hex
    elif not re.fullmatch(r"[0-9a-f]{32}", uid):
        raise ValueError(f"a published file id is 32 hex digits, not {uid!r}")
    return f"{relpath}.{uid}.{extension}"


def is_layout_file(name: str, include_plain: bool = True) -> bool:
    """True for a published file, and for a plain ``.log`` layout file if asked."""
    return bool(_PUBLISHED.match(name) or (include_plain and _PLAIN.match(name)))


@dataclass(frozen=True, slots=True)
class LayoutFile:
    """A layout file found under a dataset directory."""

    path: Path
    relpath: str
    size: int

    @property
    def dimensions(self) -> list[str]:
        return dimensions_from_path(self.relpath)


def path_filter(filter: Schema) -> Schema:
    """The filter with its values cleaned like path components, to match a layout.

    A filter names values as clients send them (``saved-session``); the layout
    stores them cleaned (``saved_session``), so both sides are compared cleaned,
    as the original did.
    """
    def clean(allowed):
        if allowed == "*":
            return allowed
        if isinstance(allowed, str):
            return clean_value(allowed)
        if isinstance(allowed, list):
            return [clean_value(str(v)) for v in allowed]
        return {k: None if v is None else clean_value(str(v)) for k, v in allowed.items()}

    return Schema({"version": filter.version,
                   "dimensions": [{"field_name": d.field_name, "allowed_values": clean(d.allowed_values)}
                                  for d in filter.dimensions]})


def find_layout_files(base: str | os.PathLike, filter: Schema | None = None,
                      include_plain: bool = True) -> list[LayoutFile]:
    """Every layout file under ``base`` whose dimensions pass ``filter``.

    Directories are pruned while walking: a level whose value the filter does
    not allow is never entered, which is what makes a narrow filter cheap on a
    large dataset.  The result is sorted by relative path, so it is stable.
    """
    base = Path(base)
    filter = path_filter(filter) if filter is not None else None
    if not base.is_dir():
        raise LayoutError(f"dataset directory {base} does not exist")
    found: list[LayoutFile] = []
    for dirpath, dirnames, filenames in os.walk(base):
        rel_dir = os.path.relpath(dirpath, base)
        level = 0 if rel_dir == "." else rel_dir.count(os.sep) + 1
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (filter is None or filter.allows_level(level, d)))
        for name in filenames:
            if name.startswith(".") or not is_layout_file(name, include_plain):
                continue
            relpath = name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}"
            dims = dimensions_from_path(relpath)
            if filter is not None and not filter.allows(dims):
                continue
            full = Path(dirpath) / name
            found.append(LayoutFile(full, relpath, full.stat().st_size))
    found.sort(key=lambda f: f.relpath)
    return found


def codec_of(path: str | os.PathLike) -> str:
    """The codec of a layout file, from its extension, else from its first bytes."""
    ext = os.fspath(path).rsplit(".", 1)[-1]
    if ext in CODECS:
        return CODECS[ext]
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    if head.startswith(_XZ_MAGIC):
        return "xz"
    if head.startswith(_GZ_MAGIC):
        return "gzip"
    if head[:3] == b"\x5d\x00\x00":
        return "lzma"
    return "plain"


class _ZstdFrames(io.RawIOBase):
    """Every frame of a zstd file, raising on a truncated one.

    ``ZstdDecompressor.stream_reader`` stops after the first frame and ends
    quietly on a truncated file, so a cut or concatenated file would lose
    records without a word.
    """

    def __init__(self, raw: IO[bytes]):
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = self._dctx.decompressobj()
        self._in_frame = False
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            chunk = self._raw.read(1 << 17)
            if not chunk:
                if self._in_frame:
                    raise zstandard.ZstdError("truncated zstd frame")
                return 0
            self._out = memoryview(self._feed(chunk))
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _feed(self, chunk: bytes) -> bytes:
        out = []
        while chunk:
            self._in_frame = True
            out.append(self._frame.decompress(chunk))
            if not self._frame.eof:
                break
            chunk = self._frame.unused_data  # the start of the next frame, if any
            self._frame = self._dctx.decompressobj()
            self._in_frame = False
        return b"".join(out)

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_layout_file(path: str | os.PathLike) -> IO[bytes]:
    """A binary stream of the decompressed content, read incrementally."""
    codec = codec_of(path)
    try:
        if codec == "zstd":
            return io.BufferedReader(_ZstdFrames(open(path, "rb")), buffer_size=1 << 20)
        if codec in ("lzma", "xz"):
            # FORMAT_AUTO reads both xz and the original's LZMA-alone (.lzma) files.
            return lzma.open(path, "rb", format=lzma.FORMAT_AUTO)
        if codec == "gzip":
            return gzip.open(path, "rb")
        return open(path, "rb", buffering=1 << 20)
    except OSError as e:
        raise LayoutError(f"cannot open {os.fspath(path)}: {e}") from e


@dataclass
class LayoutReadStats:
    """Counts of one or more files read: bad lines are counted, not fatal."""

    records: int = 0
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)


def read_layout_file(path: str | os.PathLike, stats: LayoutReadStats | None = None
                     ) -> Iterator[tuple[int, str, str]]:
    """Yield ``(line_number, doc_id, json_text)`` for each well-formed line.

    A line without a tab, with an empty docId or that is not UTF-8 is counted
    in ``stats`` (with the first few as examples) and skipped.  A file that
    cannot be decompressed raises :class:`LayoutError` naming it.
    """
    stats = stats if stats is not None else LayoutReadStats()
    try:
        with open_layout_file(path) as f:
            for n, raw in enumerate(f, 1):
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                try:
                    doc_id, tab, json_text = line.decode("utf-8").partition("\t")
                except UnicodeDecodeError:
                    tab = ""
                if not tab or not doc_id:
                    _bad(stats, path, n)
                    continue
                stats.records += 1
                yield n, doc_id, json_text
    except (EOFError, lzma.LZMAError, zstandard.ZstdError, gzip.BadGzipFile, OSError) as e:
        raise LayoutError(f"{os.fspath(path)}: cannot decompress: {e}") from e


def _bad(stats: LayoutReadStats, path, line_no: int) -> None:
    stats.bad_lines += 1
    if len(stats.bad_examples) < 5:
        stats.bad_examples.append(f"{os.fspath(path)}:{line_no}")
