"""Waiting in tests for something another process does (polling, with a clear message on timeout)."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 60.0, what: str = "condition", every: float = 0.05):
    """The first true value of ``predicate()``; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
