"""The layout writer: converted lines into compressed, immutable, published layout files.

One :class:`LayoutWriter` handles one unit of input (one raw file).  Lines are
buffered per layout file, spilled into plain ``.log`` work files under a
hidden work directory (never part of the dataset: ``find_layout_files`` skips
dot directories), rotated into compressed *pending* files when a layout file
passes its size limit or the worker's memory budget, and, at the end of the
unit, published all at once:

1. every pending file is compressed, flushed and fsynced;
2. a manifest naming each pending file and its final place is written and fsynced;
3. each pending file is hard-linked under its final name (same filesystem,
   so atomic; an existing published file is never replaced), its pending name
   removed, and the directories fsynced.

A crash before step 2 leaves only work files, which a rerun throws away and
redoes; a crash after it leaves a manifest, which a rerun completes
(:func:`complete_pending`).  Published names are derived from the unit's
identity, the layout file and a sequence number, so even a unit converted
twice publishes the same names: records are never duplicated.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import orjson
import zstandard

from converter.errors import UnwritablePartition
from converter.layout import published_name

MANIFEST = "manifest.json"
CODEC_EXTENSIONS = {"zst": "zst", "zstd": "zst", "lzma": "lzma"}
DEFAULT_LEVELS = {"zst": 3, "lzma": 0}
DEFAULT_MAX_FILE_SIZE = 500 * 1024 * 1024
FLUSH_SIZE = 256 * 1024          # a layout file's buffer is written out past this
BUFFER_BUDGET = 16 * 1024 * 1024  # all buffers together are written out past this
_CHUNK = 1 << 20


def published_id(unit_id: str, relpath: str, sequence: int) -> str:
    """The 32 hex digits of a published file: the same for the same input, always."""
    key = f"{unit_id}\0{relpath}\0{sequence}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def compress_file(src: Path, dst: Path, codec: str, level: int,
                  zstd: zstandard.ZstdCompressor | None = None) -> None:
    """Compress a whole file into ``dst`` (made durable later, by :func:`write_manifest`).

    ``zstd`` is a compressor to reuse (of ``level``): a unit compresses
    hundreds of small layout files, and a fresh context costs as much as
    compressing one of them.
    """
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        if codec == "zst":
            size = os.fstat(fin.fileno()).st_size
            (zstd or zstandard.ZstdCompressor(level=level)).copy_stream(fin, fout, size=size)
        else:
            comp = _lzma_compressor(level)
            while chunk := fin.read(_CHUNK):
                fout.write(comp.compress(chunk))
            fout.write(comp.flush())


def compress_bytes(data: bytes, dst: Path, codec: str, level: int,
                   zstd: zstandard.ZstdCompressor | None = None) -> None:
    """Compress ``data`` into ``dst`` (made durable later, by :func:`write_manifest`)."""
    if codec == "zst":
        out = (zstd or zstandard.ZstdCompressor(level=level)).compress(data)
    else:
        comp = _lzma_compressor(level)
        out = comp.compress(data) + comp.flush()
    dst.write_bytes(out)


def write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_paths(paths: Iterable[str | os.PathLike]) -> None:
    """fsync files or directories, many at once.

    A unit publishes one file per layout file it touched, often hundreds;
    fsyncs issued together share the filesystem's journal commits, which on
    ext4 makes them an order of magnitude cheaper than one after another.
    """
    paths = list(dict.fromkeys(map(os.fspath, paths)))
    if len(paths) <= 2:
        for p in paths:
            _fsync_path(p)
        return
    with ThreadPoolExecutor(min(16, len(paths))) as pool:
        list(pool.map(_fsync_path, paths))


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lzma_compressor(level: int) -> lzma.LZMACompressor:
    # The original's .lzma files are LZMA-alone ("5d 00 00"), not xz.
    return lzma.LZMACompressor(format=lzma.FORMAT_ALONE, preset=level)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Part:
    """One layout file being written: its buffer, its plain work file, its rotations."""

    relpath: str
    number: int
    buffer: list[bytes] = field(default_factory=list)
    buffered: int = 0
    on_disk: int = 0
    sequence: int = 0


@dataclass
class Pending:
    """A compressed file waiting in the work directory for its final place."""

    source: str
    target: str


class LayoutWriter:
    """Writes one unit's converted lines under ``root``; call :meth:`finish` then :meth:`publish`.

    ``work_dir`` must be on the same filesystem as ``root`` (it is normally
    ``{root}/.work/{unit_id}``).  ``memory_limit`` bounds the plain bytes held
    in work files before the largest are rotated early, as the original's
    ``memory_constraint`` did.
    """

    def __init__(self, root: str | os.PathLike, work_dir: str | os.PathLike, unit_id: str,
                 codec: str = "zst", level: int | None = None,
                 max_file_size: int = DEFAULT_MAX_FILE_SIZE, memory_limit: int | None = None):
        if codec not in CODEC_EXTENSIONS:
            raise ValueError(f"unknown codec {codec!r}: use zst or lzma")
        self.root = Path(root)
        self.work_dir = Path(work_dir)
        self.unit_id = unit_id
        self.codec = CODEC_EXTENSIONS[codec]
        self.level = DEFAULT_LEVELS[self.codec] if level is None else level
        self._zstd = zstandard.ZstdCompressor(level=self.level) if self.codec == "zst" else None
        self.max_file_size = max_file_size
        self.memory_limit = memory_limit
        self.pending: list[Pending] = []
        self._parts: dict[str, _Part] = {}
        self._buffered = 0
        self._on_disk = 0
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def write(self, relpath: str, line: bytes) -> None:
        """Add one line to a layout file.

        Raises UnwritablePartition when the layout file's directory cannot be
        created (the caller rejects that record as ``write_failed``; nothing is
        buffered then).  Any other OSError (a full disk) fails the whole unit.
        """
        part = self._parts.get(relpath)
        if part is None:
            try:
                (self.root / relpath).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UnwritablePartition(f"cannot create the directory of {relpath}: {e}") from e
            part = self._parts[relpath] = _Part(relpath, len(self._parts))
        part.buffer.append(line)
        part.buffered += len(line)
        self._buffered += len(line)
        if part.on_disk + part.buffered >= self.max_file_size:
            self._rotate(part)
        elif part.buffered >= FLUSH_SIZE:
            self._spill(part)
        if self.memory_limit is not None and self._buffered + self._on_disk > self.memory_limit:
            self._rotate_largest()
        elif self._buffered > BUFFER_BUDGET:
            for p in self._parts.values():
                if p.buffered:
                    self._spill(p)

    def _plain(self, part: _Part) -> Path:
        return self.work_dir / f"p{part.number}.log"

    def _spill(self, part: _Part) -> None:
        with open(self._plain(part), "ab") as f:
            f.write(b"".join(part.buffer))
        part.on_disk += part.buffered
        self._on_disk += part.buffered
        self._buffered -= part.buffered
        part.buffer.clear()
        part.buffered = 0

    def _rotate(self, part: _Part) -> None:
        """Compress what a layout file holds into a pending file; the next one starts empty."""
        if not part.buffered and not part.on_disk:
            return
        uid = published_id(self.unit_id, part.relpath, part.sequence)
        target = published_name(part.relpath, self.codec, uid)
        pending = self.work_dir / f"c{part.number}.{part.sequence}.{self.codec}"
        if part.on_disk:
            if part.buffered:
                self._spill(part)
            plain = self._plain(part)
            compress_file(plain, pending, self.codec, self.level, self._zstd)
            plain.unlink()
        else:
            compress_bytes(b"".join(part.buffer), pending, self.codec, self.level,
                           self._zstd)
            self._buffered -= part.buffered
        self._on_disk -= part.on_disk
        part.buffer.clear()
        part.buffered = part.on_disk = 0
        part.sequence += 1
        self.pending.append(Pending(str(pending), str(self.root / target)))

    def _rotate_largest(self) -> None:
        by_size = sorted(self._parts.values(), key=lambda p: p.on_disk + p.buffered, reverse=True)
        for part in by_size:
            if self._on_disk + self._buffered <= self.memory_limit // 2:
                break
            self._rotate(part)

    def finish(self) -> list[Pending]:
        """Compress everything still open into pending files (durable with the manifest)."""
        for part in self._parts.values():
            self._rotate(part)
        return self.pending

    def abort(self) -> None:
        """Throw the unit's work away (nothing of it was published)."""
        shutil.rmtree(self.work_dir, ignore_errors=True)


def write_manifest(work_dir: Path, pending: list[Pending], result: dict) -> None:
    """Record what to publish, and the unit's result, durably: the commit point of a unit.

    The pending files (and their directories) are fsynced first, so a manifest
    never names a file that a crash could lose.
    """
    fsync_paths([p.source for p in pending] + [os.path.dirname(p.source) for p in pending])
    doc = {"files": [[p.source, p.target] for p in pending], "result": result}
    tmp = work_dir / (MANIFEST + ".tmp")
    write_durably(tmp, orjson.dumps(doc))
    os.replace(tmp, work_dir / MANIFEST)
    fsync_dir(work_dir)


def read_manifest(work_dir: Path) -> dict | None:
    try:
        return orjson.loads((work_dir / MANIFEST).read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError:  # cannot happen after the atomic rename, but never trust it
        return None


def complete_pending(work_dir: Path) -> list[str] | None:
    """Move a committed unit's pending files into place; None when the unit never committed.

    A file is published by hard-linking it under its final name, which fails
    rather than replace an existing file: a published file never changes,
    even if a unit is converted again after its done marker was removed.
    Safe to run again after a crash half-way: files already moved are gone
    from the work directory.
    """
    manifest = read_manifest(work_dir)
    if manifest is None:
        return None
    published = []
    dirs = set()
    for source, target in manifest["files"]:
        target_path = Path(target)
        if os.path.exists(source):
            target_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target_path)
            except FileExistsError:
                pass  # published before (same unit, same name): keep it as it is
            except OSError:  # a filesystem without hard links; the run lock keeps this safe
                if not target_path.exists():
                    os.rename(source, target_path)
                    dirs.add(target_path.parent)
                    published.append(target)
                    continue
            os.unlink(source)
            dirs.add(target_path.parent)
        published.append(target)
    fsync_paths(dirs)
    return published
