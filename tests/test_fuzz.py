"""The fuzz targets of bench/fuzz.py on a fixed seed: every hostile input refused with a reason.

bench/fuzz.py runs 100,000 inputs per target; here each target gets a few
hundred (a few seconds), always the same ones, so a failure is repeatable
with ``bench/fuzz.py -n N --only TARGET``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "fuzz.py"
spec = importlib.util.spec_from_file_location("bench_fuzz", BENCH)
fuzz = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fuzz)

INPUTS = {"rawlog": 300, "conversion": 250, "layout": 300, "schema": 1500, "config": 400,
          "api": 60}


@pytest.mark.parametrize("target", fuzz.TARGETS, ids=lambda t: t.name)
def test_no_input_crashes(target, tmp_path):
    t = target()
    t.setup(tmp_path)
    try:
        result = fuzz.fuzz(t, INPUTS[t.name], seed=0)
    finally:
        t.close()
    assert not result["crashes"], result["crashes"][0]
    # The mutations reach both sides: some inputs are accepted, some refused for a reason.
    assert result["accepted"] and sum(result["refused"].values()), result


def test_a_crash_is_reported_with_its_input(tmp_path):
    class Fragile(fuzz.Target):
        name = "fragile"

        def make(self, rng):
            return rng.randrange(4)

        def check(self, value):
            return {0: None, 1: "refused"}.get(value) or 1 / 0

    result = fuzz.fuzz(Fragile(), 40, seed=3)
    assert result["crashes"] and "ZeroDivisionError" in result["crashes"][0]
    assert result["crashes"][0].startswith("input ")


def test_refusal_without_a_message_is_a_crash():
    with pytest.raises(fuzz.Crash):
        fuzz._classified(ValueError(""))
