"""The converter's exceptions: one base for the package's pipeline, one per kind of failure.

A rejected record is not a crash: :class:`RecordError` carries a reason code
that the error output groups records by, so the cause of every rejection can
be counted, inspected and, once fixed, retried.
"""

from __future__ import annotations

# Every reason a record can be rejected for (SPEC section 4, issue 3).
REASONS = (
    "bad_payload",            # not JSON, not an object, a required field missing or wrong
    "conversion_error",       # a histogram that is not shaped like one
    "corrupted_data",         # a gzip body that does not decompress
    "empty_data",             # an empty body
    "invalid_path",           # a URL path without the expected components
    "missing_revision",       # the payload's Histograms.json revision cannot be found
    "missing_revision_repo",  # the revision URL names no known repository
    "uuid_only_path",         # a classic ping posted to a path holding only the docId
    "too_large",              # a body inflating past max_uncompressed
    "unknown_histogram",      # a histogram whose definition in its revision is unusable
    "invalid_bucket",         # a bucket the definition lacks, or a non-integer count
    "write_failed",           # the record's layout file could not be written
)


class ConverterError(Exception):
    """Base of the conversion pipeline's errors; the CLI turns them into one-line messages."""


class RecordError(ConverterError):
    """One record cannot be converted; ``reason`` is one of :data:`REASONS`.

    ``infrastructure`` names the cause when the record itself is fine and
    something around it failed (the histogram server unreachable, a layout
    directory that cannot be written): the record waits in the error output
    for ``--retry-errors``, and the run must not look successful.
    """

    def __init__(self, reason: str, message: str, infrastructure: str | None = None):
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.infrastructure = infrastructure

    def __reduce__(self):  # picklable across worker processes
        return (RecordError, (self.reason, self.message, self.infrastructure))


class UnwritablePartition(ConverterError):
    """A layout file's directory cannot be created: its records are rejected as ``write_failed``."""


class ConfigError(ConverterError):
    """A converter configuration that cannot be used (unknown key, bad value, missing file)."""


class ProcessError(ConverterError):
    """A run that cannot go on: unreadable input, an output that cannot be published."""
