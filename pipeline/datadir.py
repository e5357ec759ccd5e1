"""Where ``telemetry pipeline`` keeps things under its ``--data-dir``.

One directory holds a whole single-machine pipeline, each stage's input
being the previous stage's output::

    DIR/raw/        the receiver's raw logs (``*.finished`` when complete)
    DIR/layout/     the converter's published layout files (and its .state/, .errors/)
    DIR/mongo/      the embedded MongoDB server's data, when no --mongo-url is given
    DIR/pipeline/   the supervisor's status file

The stages' status files sit where a stage run on its own puts them by
default (see :func:`converter_status_file`, :func:`importer_status_file`),
so ``telemetry pipeline status`` reads the same files either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converter.process import STATE_DIR



def converter_status_file(output: str | Path) -> Path:
    """Default status file of ``telemetry process --follow`` writing into ``output``."""
    return Path(output) / STATE_DIR / "follow-status.json"


def importer_status_file(dataset: str | Path) -> Path:
    """Default status file of ``telemetry import --follow`` reading ``dataset``."""
    return Path(dataset) / STATE_DIR / "import-status.json"


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def layout(self) -> Path:
        return self.root / "layout"

    @property
    def mongo(self) -> Path:
        return self.root / "mongo"

    @property
    def state(self) -> Path:
        return self.root / "pipeline"

    @property
    def stats_log(self) -> Path:
        """The receiver's stats log, read by the API server's operations view."""
        return self.state / "stats.log"

    @property
    def supervisor_status(self) -> Path:
        return self.state / "supervisor.json"

    @property
    def converter_status(self) -> Path:
        return converter_status_file(self.layout)

    @property
    def importer_status(self) -> Path:
        return importer_status_file(self.layout)
