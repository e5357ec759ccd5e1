"""The model's checks of histogram values (SPEC section 7), on the fast path and off it.

Pure unit tests of :meth:`Aggregate.add_ping`: what a bucket count may be
(an int or a finite-or-infinite float >= 0; not a bool, NaN, string, None or
a negative number), that a rejected histogram is counted and leaves the cells
alone, and that the payload handed in is never changed or shared.
"""

from __future__ import annotations

import copy
import math

import pytest

import aggregate_pings as ap
from aggregations.aggregates import Aggregate, Definitions
from converter.revisions import RevisionCache

BUCKETS = len(ap.buckets_of(ap.HISTOGRAMS["GC_MS"]))


@pytest.fixture(scope="module")
def defs(tmp_path_factory):
    return Definitions(RevisionCache(ap.write_revisions(tmp_path_factory.mktemp("h")), None))


def ping(histograms: dict) -> dict:
    return {"ver": 2, "info": {"appName": "Firefox", "appVersion": "45.0a1",
                               "appUpdateChannel": "nightly", "appBuildID": "20151201030204",
                               "OS": "WINNT", "version": "6.1", "arch": "x86",
                               "revision": ap.REVISION},
            "histograms": histograms}


DIMS = {"submission_date": "20151203"}


def gc_cell(agg: Aggregate, by: str = "build_id"):
    """(histogram, sum, count) of GC_MS in its only cell, or None."""
    cells = [cell for key, rows in agg.data.items() if key[0] == by and key[4] == "GC_MS"
             for cell in rows.values()]
    assert len(cells) <= 1
    return cells[0] if cells else None


def good(slot: int = 3, count: int = 2, total: int = 17) -> list:
    h = [0] * BUCKETS
    h[slot] = count
    return h + [total, -1, -1, 0, 0]


BAD = [True, False, None, "1", "0", [], {}, math.nan, -1, -0.5, -math.inf, -10**30]


@pytest.mark.parametrize("bad", BAD, ids=repr)
@pytest.mark.parametrize("slot", [0, 3, BUCKETS - 1])
def test_a_bad_bucket_count_rejects_the_histogram_and_is_counted(defs, bad, slot):
    agg = Aggregate()
    assert agg.add_ping(ping({"GC_MS": good()}), DIMS, defs)
    value = good()
    value[slot] = bad  # in a zero slot or in the non-zero one
    assert agg.add_ping(ping({"GC_MS": value}), DIMS, defs)
    assert agg.stats["histogram_does_not_fit"] == 1
    assert agg.stats["pings"] == 2
    h, total, count = gc_cell(agg)
    assert (h, total, count) == (good()[:BUCKETS], 17, 1)
    assert [type(v) for v in h] == [int] * BUCKETS


@pytest.mark.parametrize("length", [0, BUCKETS, BUCKETS + 4, BUCKETS + 6])
def test_a_histogram_of_the_wrong_length_is_counted(defs, length):
    agg = Aggregate()
    agg.add_ping(ping({"GC_MS": ([1] * length)}), DIMS, defs)
    assert agg.stats["histogram_does_not_fit"] == 1
    assert gc_cell(agg) is None


def test_float_counts_are_added_like_python_adds_them(defs):
    """Floats (0.0 and inf too) are numbers: the sums keep Python's types, slot by slot."""
    first, second, third = good(slot=1), good(slot=1), good(slot=5, count=4)
    second[0], second[1], second[2] = 0.0, 2.5, math.inf
    agg = Aggregate()
    for value in (first, second, third):
        agg.add_ping(ping({"GC_MS": value}), DIMS, defs)
    expected = [a + b + c for a, b, c in zip(first[:BUCKETS], second[:BUCKETS], third[:BUCKETS])]
    h, total, count = gc_cell(agg)
    assert h == expected and count == 3 and total == 3 * 17
    assert [type(v) for v in h] == [type(v) for v in expected]
    assert type(h[0]) is float and type(h[3]) is int and h[2] == math.inf
    assert agg.stats["histogram_does_not_fit"] == 0


def test_the_payload_is_neither_changed_nor_shared(defs):
    payload = ping({"GC_MS": good(), "PAGE_LINEAR": [0] * 10 + [0, -1, -1, 0, 0]})
    before = copy.deepcopy(payload)
    agg = Aggregate()
    agg.add_ping(payload, DIMS, defs)
    agg.add_ping(payload, DIMS, defs)
    assert payload == before
    payload["histograms"]["GC_MS"][3] = 1000  # a cell is not the payload's list
    h, _, count = gc_cell(agg)
    assert h[3] == 4 and count == 2 and len(h) == BUCKETS
    # Both dates' cells hold their own list.
    gc_cell(agg, "build_id")[0][3] += 1
    assert gc_cell(agg, "submission_date")[0][3] == 4


def test_one_ping_counts_once_per_cell_across_its_child_payloads(defs):
    """Content histograms of one ping (processes and child payloads) sum into one count."""
    classic = ping({})
    unified = {"payload": {"info": {"revision": ap.REVISION}, "histograms": {},
                           "processes": {"content": {"histograms": {"GC_MS": good(slot=2)}}},
                           "childPayloads": [{"histograms": {"GC_MS": good(slot=2)}},
                                             {"histograms": {"GC_MS": good(slot=4)}}]},
               "info": classic["info"],
               "environment": {"build": {"architecture": "x86"},
                               "system": {"os": {"name": "WINNT", "version": "6.1"}}}}
    agg = Aggregate()
    agg.add_ping(unified, DIMS, defs)
    agg.add_ping(copy.deepcopy(unified), DIMS, defs)
    (h, total, count), = [cell for key, rows in agg.data.items()
                          if key[0] == "build_id" and key[4] == "GC_MS"
                          for row, cell in rows.items() if row[4] == "content"]
    assert h[2] == 8 and h[4] == 4 and count == 2 and total == 6 * 17


def test_merge_sharing_equals_merge_copying(defs):
    parts = []
    for i in range(3):
        a = Aggregate()
        for j in range(4):
            a.add_ping(ping({"GC_MS": good(slot=(i + j) % BUCKETS, count=j + 1)}), DIMS, defs)
        parts.append(a)
    copied, shared = Aggregate(), Aggregate()
    for p in parts:
        copied.merge(p)
    expected = copy.deepcopy(copied.data)
    for p in copy.deepcopy(parts):
        shared.merge(p, share=True)
    assert shared.data == expected == copied.data
    assert shared.stats == copied.stats and shared.definitions == copied.definitions
