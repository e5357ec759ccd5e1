"""The MapReduce package's exceptions: one base, turned into messages at the CLI edge."""

from __future__ import annotations


class MapReduceError(Exception):
    """Base of every error this package reports to a user."""


class ConfigError(MapReduceError):
    """A job configuration that cannot run: bad counts, missing paths, bad filter or script."""


class JobError(MapReduceError):
    """A job that failed while running; the message names the task, its input file and line.

    Only a string travels in ``args`` so the error pickles across processes
    and Dask workers unchanged.
    """
