"""A fixed-seed sample of the differential fuzzer (bench/fuzz_http.py runs 100k streams).

Both front ends get the same few thousand random, mutated and split byte
streams over real sockets; they must answer alike and store the same records,
except for the differences docs/receiver.md documents.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "fuzz_http", Path(__file__).resolve().parent.parent / "bench" / "fuzz_http.py")
fuzz_http = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_http"] = fuzz_http  # dataclasses look their module up there
_spec.loader.exec_module(fuzz_http)


def test_streams_are_reproducible():
    assert fuzz_http.make_stream(7, 123) == fuzz_http.make_stream(7, 123)
    assert fuzz_http.make_stream(7, 123) != fuzz_http.make_stream(8, 123)


def test_fixed_seed_sample_agrees(tmp_path):
    report = fuzz_http.run_fuzz(2500, seed=7, workdir=str(tmp_path))
    assert report.ok, report.summary()
    # The sample reaches every kind of answer, and most streams are answered alike.
    assert {200, 400, 404, 405, 411, 413} <= set(report.statuses), report.summary()
    assert report.same >= 0.8 * report.streams, report.summary()
    assert report.records["fast"] > 500
