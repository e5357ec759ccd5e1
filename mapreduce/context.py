"""The ``context`` objects a job script writes to.

``MapContext.write(k, v)`` sends a pair towards its reducer, calling the
script's ``combine`` each time a key has gathered 50 values (as the
original did), so a combinable job ships one value per key instead of
thousands.  ``ReduceContext`` writes the text output:
``str(key) + field_separator + str(value) + record_separator``, plus
``writecsv`` and ``writeline``; ``setup_reduce(context)`` may change both
separators before the first record.
"""

from __future__ import annotations

import csv
from typing import Any, Callable, Iterable, TextIO

from mapreduce.partition import PartitionWriter

COMBINE_SIZE = 50


class MapContext:
    # Keys held for combining before everything is written out, to bound a mapper's memory.
    MAX_BUFFERED_KEYS = 100_000

    def __init__(self, writer: PartitionWriter, combine: Callable[..., Any] | None = None):
        self._writer = writer
        self._combine = combine
        self._values: dict[Any, list[Any]] = {}

    def write(self, key: Any, value: Any) -> None:
        if self._combine is None:
            self._writer.add(key, value)
            return
        values = self._values.get(key)
        if values is None:
            if len(self._values) >= self.MAX_BUFFERED_KEYS:
                self.flush()
            self._values[key] = [value]
            return
        values.append(value)
        if len(values) >= COMBINE_SIZE:
            # combine() writes its result back through this context, into a fresh list.
            self._values[key] = []
            self._combine(key, values, self)

    def flush(self) -> None:
        values, self._values = self._values, {}
        add = self._writer.add
        for key, vs in values.items():
            for v in vs:
                add(key, v)

    def finish(self) -> None:
        self.flush()
        self._writer.close()


class Collector:
    """The context a reducer hands to ``combine``: what it writes replaces the key's values."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def write(self, key: Any, value: Any) -> None:
        self.values.append(value)


class ReduceContext:
    def __init__(self, out: TextIO, field_separator: str = "\t", record_separator: str = "\n"):
        self._out = out
        self.field_separator = field_separator
        self.record_separator = record_separator
        self._csv: Any = None
        self._csv_separator: str | None = None
        self.records = 0

    def write(self, key: Any, value: Any) -> None:
        self._out.write(f"{key}{self.field_separator}{value}{self.record_separator}")
        self.records += 1

    def writeline(self, line: Any) -> None:
        self._out.write(f"{line}{self.record_separator}")
        self.records += 1

    def writecsv(self, values: Iterable[Any]) -> None:
        if self._csv is None or self._csv_separator != self.record_separator:
            self._csv = csv.writer(self._out, lineterminator=self.record_separator)
            self._csv_separator = self.record_separator
        self._csv.writerow(values)
        self.records += 1
