"""Intermediate data: which reducer a key goes to, and the files map output is kept in.

A mapper writes ``{work_dir}/mapper_M/part_R`` for every reducer R: a
sequence of pickled frames, each a list of ``(key, value)`` pairs.  Frames
keep pickling cheap (one call per thousand pairs) and let a reducer read in
small steps.  The partition of a key is a CRC-32 of ``repr(key)``: stable
across processes, runs and machines, which Python's ``hash()`` of a string
is not.
"""

from __future__ import annotations

import os
import pickle
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterator

FRAME_PAIRS = 1000
PICKLE_PROTOCOL = 5


def key_token(key: Any) -> str:
    """The text a key is hashed and ordered by: equal for equal keys of the usual types."""
    return repr(key)


def partition_of(key: Any, partitions: int) -> int:
    if partitions == 1:
        return 0
    return zlib.crc32(key_token(key).encode("utf-8", "surrogatepass")) % partitions


def mapper_dir(work_dir: str | os.PathLike, mapper: int) -> Path:
    return Path(work_dir) / f"mapper_{mapper}"


def part_path(work_dir: str | os.PathLike, mapper: int, reducer: int) -> Path:
    return mapper_dir(work_dir, mapper) / f"part_{reducer}"


def reducer_output_path(work_dir: str | os.PathLike, reducer: int) -> Path:
    return Path(work_dir) / f"reducer_{reducer}"


class PartitionWriter:
    """Map output split among reducers, buffered into frames and written as it comes."""

    def __init__(self, directory: str | os.PathLike, partitions: int):
        self.partitions = partitions
        self.pairs = 0
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Every part file exists, even empty: a reducer tells a missing mapper from a quiet one.
        self._files: list[BinaryIO] = [open(directory / f"part_{r}", "wb")
                                       for r in range(partitions)]
        self._buffers: list[list[tuple[Any, Any]]] = [[] for _ in range(partitions)]

    def add(self, key: Any, value: Any) -> None:
        r = 0 if self.partitions == 1 else partition_of(key, self.partitions)
        buffer = self._buffers[r]
        buffer.append((key, value))
        if len(buffer) >= FRAME_PAIRS:
            self._flush(r)

    def _flush(self, r: int) -> None:
        buffer = self._buffers[r]
        if buffer:
            self.pairs += len(buffer)
            pickle.dump(buffer, self._files[r], protocol=PICKLE_PROTOCOL)
            buffer.clear()

    def close(self) -> None:
        try:
            for r in range(self.partitions):
                self._flush(r)
        finally:
            for f in self._files:
                f.close()

    def abort(self) -> None:
        for f in self._files:
            f.close()


def read_frames(path: str | os.PathLike) -> Iterator[tuple[list[tuple[Any, Any]], int]]:
    """Yield each frame of a part file with its size in bytes."""
    with open(path, "rb") as f:
        while True:
            start = f.tell()
            try:
                frame = pickle.load(f)
            except EOFError:
                return
            yield frame, f.tell() - start
