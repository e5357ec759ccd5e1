"""The raw log: the binary file the receiver appends every accepted submission to.

The format is the original telemetry-server's, so files written by its Node.js
receiver and by ours are read by the same code (SPEC section 2)::

    v1: 0x1e | u16 path_len | u32 data_len | u64 timestamp_ms | path | data
    v2: 0x1e | u8 ip_len | u16 path_len | u32 data_len | u64 timestamp_ms | ip | path | data

All integers are little-endian.  A file is only complete once it has been
renamed to ``*.finished``; downstream stages read only those.

The reader never gives up on a file: after corrupt bytes it resynchronises on
the next separator that starts a plausible record and counts what it skipped,
and a torn last record (a crash mid-write) is reported, not raised.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

SEPARATOR = 0x1E
GZIP_MAGIC = b"\x1f\x8b"
FINISHED_SUFFIX = ".finished"

_V1 = struct.Struct("<BHIQ")  # separator, path_len, data_len, timestamp
_V2 = struct.Struct("<BBHIQ")  # separator, ip_len, path_len, data_len, timestamp
HEADER_SIZE = {1: _V1.size, 2: _V2.size}

MAX_PATH_LEN = 0xFFFF
MAX_IP_LEN = 0xFF
MAX_DATA_LEN = 0xFFFFFFFF
# The largest body any reader inflates unless told otherwise (the converter's
# max_uncompressed default): a small gzip body can inflate to gigabytes.
MAX_INFLATED = 1_048_576
UNKNOWN_IP = "0.0.0.0"

# Used only to judge a candidate record while resynchronising after corruption:
# a real record was received between 2000 and 2200.
_PLAUSIBLE_TS = (946_684_800_000, 7_258_118_400_000)
_NAME_VERSION = re.compile(r"\.v([12])\.")


class RawLogError(Exception):
    """Base class for raw-log problems that a caller may want to report."""


class DataTooLarge(RawLogError):
    """A gzip body inflates past the allowed size (checked without inflating it all)."""


class CorruptData(RawLogError):
    """A body that claims to be gzip but does not decompress."""


@dataclass(frozen=True, slots=True)
class Record:
    """One submission as stored: ``path`` is the URL path after the prefix."""

    path: str
    data: bytes
    timestamp: int
    ip: str | None = None
    offset: int = 0
    end: int = 0

    def inflate(self, max_size: int | None = MAX_INFLATED) -> bytes:
        """The body, gunzipped when it starts with the gzip magic bytes (at most ``max_size``)."""
        return inflate(self.data, max_size)


@dataclass
class ReadStats:
    """What a reader saw; ``errors`` holds one human-readable line per problem."""

    records: int = 0
    bytes: int = 0
    skipped_bytes: int = 0
    truncated: bool = False
    errors: list[str] = field(default_factory=list)

    def add(self, other: "ReadStats") -> None:
        self.records += other.records
        self.bytes += other.bytes
        self.skipped_bytes += other.skipped_bytes
        self.truncated = self.truncated or other.truncated
        self.errors.extend(other.errors)


def encode_record(path: str | bytes, data: bytes, timestamp_ms: int, ip: str | None = None) -> bytes:
    """Serialise one record; with ``ip`` (even empty) the v2 layout is used.

    An IP longer than 255 bytes cannot be stored and becomes ``0.0.0.0``, as the
    SPEC says.  A path or body too long for its length field is a ValueError:
    the receiver enforces much smaller limits before it gets here.
    """
    path_b = path.encode("utf-8") if isinstance(path, str) else path
    if len(path_b) > MAX_PATH_LEN:
        raise ValueError(f"path of {len(path_b)} bytes does not fit a raw-log record")
    if len(data) > MAX_DATA_LEN:
        raise ValueError(f"body of {len(data)} bytes does not fit a raw-log record")
    if ip is None:
        return _V1.pack(SEPARATOR, len(path_b), len(data), timestamp_ms) + path_b + data
    ip_b = ip.encode("utf-8", "replace")
    if len(ip_b) > MAX_IP_LEN:
        ip_b = UNKNOWN_IP.encode()
    return _V2.pack(SEPARATOR, len(ip_b), len(path_b), len(data), timestamp_ms) + ip_b + path_b + data


def log_file_name(log_base: str, version: int, hostname: str, pid: int, epoch_ms: int) -> str:
    """``{log_base}.{v1|v2}.{hostname}.{pid}.{epoch_ms}``: unique per process and start time."""
    return f"{log_base}.v{version}.{hostname}.{pid}.{epoch_ms}"


def version_from_name(name: str | os.PathLike) -> int | None:
    """The record version a file name announces, or None when it says nothing."""
    found = _NAME_VERSION.findall(os.path.basename(os.fspath(name)) + ".")
    return int(found[-1]) if found else None


def inflate(data: bytes, max_size: int | None = MAX_INFLATED) -> bytes:
    """Gunzip ``data`` if it starts with 1f 8b, stopping as soon as ``max_size`` is passed.

    The limit is on by default so that no reader can be made to inflate a
    decompression bomb; ``None`` lifts it (only for bodies already trusted).
    """
    if not data.startswith(GZIP_MAGIC):
        return data
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    limit = 0 if max_size is None else max_size + 1
    try:
        out = d.decompress(data, limit)
        if max_size is not None and len(out) > max_size:
            raise DataTooLarge(f"body inflates past {max_size} bytes")
        if not d.eof:
            raise CorruptData("gzip body is truncated")
    except zlib.error as e:
        raise CorruptData(f"gzip body does not decompress: {e}") from None
    return out


def write_records(path: str | os.PathLike, records: list[Record], version: int = 1) -> None:
    """Write a whole raw log at once: for tests, tools and fixtures, not the receiver."""
    with open(path, "wb") as f:
        for r in records:
            ip = (r.ip or UNKNOWN_IP) if version == 2 else None
            f.write(encode_record(r.path, r.data, r.timestamp, ip))


class RawLogReader:
    """Iterate the records of one raw log file; ``stats`` fills in as it goes.

    ``version`` None means: take it from the file name, else try both layouts
    and keep the one that reads the file with fewer skipped bytes.
    """

    def __init__(self, source: str | os.PathLike, version: int | None = None, start_offset: int = 0):
        self.path = Path(source)
        self.version = version or version_from_name(self.path)
        self.start_offset = start_offset
        self.stats = ReadStats()

    def __iter__(self) -> Iterator[Record]:
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0 or self.start_offset >= size:
                return
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                if self.version is None:
                    self.version = _guess_version(buf)
                yield from _parse(buf, self.version, self.start_offset, self.stats, self.path.name)


def read_records(source: str | os.PathLike, version: int | None = None) -> Iterator[Record]:
    """Shorthand for iterating a :class:`RawLogReader` when the stats do not matter."""
    return iter(RawLogReader(source, version))


def finished_files(directory: str | os.PathLike) -> list[Path]:
    """The complete (``.finished``) raw logs of a directory, oldest name first."""
    return sorted(p for p in Path(directory).iterdir() if p.name.endswith(FINISHED_SUFFIX) and p.is_file())


def _guess_version(buf: mmap.mmap) -> int:
    sample = buf[: 4 * 1024 * 1024]
    scores = {}
    for v in (1, 2):
        stats = ReadStats()
        for _ in _parse(sample, v, 0, stats, "", at_eof=len(sample) == len(buf)):
            pass
        scores[v] = (stats.skipped_bytes, -stats.records)
    return min(scores, key=lambda v: scores[v])


def _header(buf, pos: int, version: int, size: int):
    """Decode the record at ``pos``; None if it is not a well-formed record that fits."""
    hsize = HEADER_SIZE[version]
    if pos + hsize > size or buf[pos] != SEPARATOR:
        return None
    if version == 1:
        _, path_len, data_len, ts = _V1.unpack_from(buf, pos)
        ip_len = 0
    else:
        _, ip_len, path_len, data_len, ts = _V2.unpack_from(buf, pos)
    end = pos + hsize + ip_len + path_len + data_len
    return hsize, ip_len, path_len, data_len, ts, end


def _decode(buf, pos: int, version: int, size: int, strict: bool):
    """A Record at ``pos`` or None; ``strict`` also demands a plausible timestamp (resync)."""
    h = _header(buf, pos, version, size)
    if h is None:
        return None
    hsize, ip_len, path_len, data_len, ts, end = h
    if end > size or (strict and path_len == 0):
        return None
    start = pos + hsize
    try:
        path = bytes(buf[start + ip_len : start + ip_len + path_len]).decode("utf-8")
    except UnicodeDecodeError:
        return None
    ip = None
    if version == 2:
        ip_b = bytes(buf[start : start + ip_len])
        try:
            ip = ip_b.decode("ascii")
        except UnicodeDecodeError:
            # X-Forwarded-For is stored as sent; a client may put anything in it.
            if strict:
                return None
            ip = ip_b.decode("utf-8", "replace")
    if strict and not (_PLAUSIBLE_TS[0] <= ts <= _PLAUSIBLE_TS[1]):
        return None
    data = bytes(buf[start + ip_len + path_len : end])
    return Record(path=path, data=data, timestamp=ts, ip=ip, offset=pos, end=end)


def _parse(buf, version: int, pos: int, stats: ReadStats, name: str, at_eof: bool = True) -> Iterator[Record]:
    size = len(buf)
    while pos < size:
        rec = _decode(buf, pos, version, size, strict=False)
        if rec is not None:
            stats.records += 1
            stats.bytes += rec.end - rec.offset
            yield rec
            pos = rec.end
            continue
        h = _header(buf, pos, version, size)
        nxt = _resync(buf, pos + 1, version, size)
        if nxt is None:
            if not at_eof:
                return
            if h is not None and h[-1] > size:
                stats.truncated = True
                stats.errors.append(f"{name}: truncated last record at offset {pos} "
                                    f"({size - pos} of {h[-1] - pos} bytes present)")
            else:
                stats.errors.append(f"{name}: {size - pos} trailing bytes at offset {pos} are not a record")
            stats.skipped_bytes += size - pos
            return
        stats.skipped_bytes += nxt - pos
        stats.errors.append(f"{name}: skipped {nxt - pos} corrupt bytes at offset {pos}")
        pos = nxt


def _resync(buf, pos: int, version: int, size: int) -> int | None:
    """Offset of the next separator that starts a plausible record, if any."""
    sep = bytes([SEPARATOR])
    while True:
        pos = buf.find(sep, pos)
        if pos < 0:
            return None
        if _decode(buf, pos, version, size, strict=True) is not None:
            return pos
        pos += 1

