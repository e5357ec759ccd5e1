"""The units of work an engine runs: map tasks and reduce tasks, and what they report.

Tasks are plain picklable dataclasses, so the local engine hands them to its
processes and the Dask engine to its workers unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mapreduce.script import ScriptSource


@dataclass(frozen=True)
class InputFile:
    """One layout file to map: where it is now, and the dimensions its layout path gives."""

    path: str
    dimensions: tuple[str, ...]
    size: int


@dataclass(frozen=True)
class MapTask:
    index: int
    files: tuple[InputFile, ...]
    work_dir: str
    num_reducers: int
    script: ScriptSource
    profile: bool = False

    @property
    def name(self) -> str:
        return f"mapper {self.index}"


@dataclass(frozen=True)
class ReduceTask:
    index: int
    mappers: tuple[int, ...]
    work_dir: str
    script: ScriptSource
    memory_bytes: int
    profile: bool = False

    @property
    def name(self) -> str:
        return f"reducer {self.index}"


@dataclass
class MapResult:
    index: int
    files: int = 0
    records: int = 0
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)
    pairs: int = 0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0


@dataclass
class ReduceResult:
    index: int
    keys: int = 0
    records: int = 0
    spills: int = 0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0


# Slots of the progress array a task updates as it goes, so the parent can show a
# progress bar and name the file and line a killed task was on.
PROGRESS_FILE, PROGRESS_LINE, PROGRESS_RECORDS, PROGRESS_FILES_DONE = range(4)
PROGRESS_SLOTS = 4
