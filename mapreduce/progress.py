"""The progress bar of a running job: files and records, shown only on a terminal.

tqdm is imported only when a bar is shown: importing it (and the
``importlib.metadata`` it pulls in) costs about 0.1 s of CPU, which every
job run without a terminal (scripts, cron, the benchmark) would pay for nothing.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm


class Progress:
    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: tqdm | None = None

    def phase(self, name: str, total: int, unit: str = "file") -> None:
        self.close()
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=name, unit=unit, file=sys.stderr,
                             dynamic_ncols=True, leave=False)

    def update(self, done: int, records: int) -> None:
        if self._bar is not None:
            self._bar.n = done
            self._bar.set_postfix(records=records, refresh=False)
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
