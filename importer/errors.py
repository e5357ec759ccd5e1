"""The importer's exceptions: one base, so the CLI edge can turn any of them into a message."""

from __future__ import annotations


class ImporterError(Exception):
    """Base of every error the importer (and the Mongo connection code) raises on purpose."""


class MongoUnavailable(ImporterError):
    """A MongoDB URI that is malformed, or a server that does not answer."""


class EmbeddedServerError(ImporterError):
    """The embedded server could not be started, found or stopped."""


class DatasetError(ImporterError):
    """A dataset directory that does not exist or cannot be read."""
