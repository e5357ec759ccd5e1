"""The receiver's exceptions: one base class, turned into messages at the CLI edge."""

from __future__ import annotations

import errno as _errno


class ReceiverError(Exception):
    """Base class for every problem the receiver reports to an operator."""


class ConfigError(ReceiverError):
    """A configuration file or option that cannot be used; the message names the key."""


class StorageError(ReceiverError):
    """Writing the raw log failed; ``errno`` decides between 507 (disk full) and 500."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno

    @property
    def disk_full(self) -> bool:
        return self.errno in (_errno.ENOSPC, _errno.EDQUOT)
