"""The pipeline's exceptions, turned into one-line messages at the CLI."""

from __future__ import annotations


class PipelineError(Exception):
    """Something the pipeline cannot do: a stage that will not start, a busy data directory."""


class PipelineConfigError(PipelineError):
    """A configuration value or key that is wrong (a usage error, exit 2)."""
