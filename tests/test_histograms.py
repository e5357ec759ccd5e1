"""Histogram definitions: Mozilla's bucket tables reproduced, safe expressions, lazy errors."""

from __future__ import annotations

import builtins

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from converter.histograms import (
    CATEGORICAL_MIN_VALUES,
    Definition,
    HistogramError,
    Histograms,
    UnknownSymbol,
    build_definition,
    evaluate,
    exponential_buckets,
    linear_buckets,
)

REVISIONS = ["8d3810543edc", "a55c55edf302", "ad0ae007aa9e"]


@pytest.fixture(scope="module")
def tables(fixtures_dir):
    out = {}
    for rev in REVISIONS:
        definitions = Histograms.load(fixtures_dir / "histograms" / f"{rev}.Histograms.json")
        expected = orjson.loads((fixtures_dir / "histograms" / f"{rev}.buckets.json").read_bytes())
        out[rev] = definitions, expected["histograms"]
    return out


# --------------------------------------------------------------------------- acceptance

@pytest.mark.parametrize("rev", REVISIONS)
def test_every_bucket_table_is_reproduced(tables, rev):
    definitions, expected = tables[rev]
    assert len(expected) > 700
    wrong = []
    for name, table in expected.items():
        d = definitions.get(name)
        got = (list(d.buckets), d.low, d.high, d.n_buckets)
        want = (table["buckets"], table["min"], table["max"], table["bucket_count"])
        if got != want:
            wrong.append(name)
    assert wrong == []


@pytest.mark.parametrize("rev", REVISIONS)
def test_startup_entries_use_the_base_definition(tables, rev):
    definitions, expected = tables[rev]
    startup = [n for n in expected if n.startswith("STARTUP_") and n not in definitions.names]
    assert len(startup) > 200
    for name in startup:
        assert definitions.get(name) is definitions.get(name[len("STARTUP_"):])
        assert name in definitions


@pytest.mark.parametrize("rev", REVISIONS)
def test_cpp_constants_and_expressions(tables, rev):
    definitions, _ = tables[rev]
    assert definitions.errors() == {}
    gc = definitions.get("GC_REASON_2")
    assert (gc.kind, gc.high, gc.n_buckets) == ("enumerated", 101, 102)
    startup = definitions.get("STARTUP_MEASUREMENT_ERRORS")   # a real name, not the prefix fallback
    assert (startup.name, startup.high, startup.n_buckets) == ("STARTUP_MEASUREMENT_ERRORS", 12, 13)
    memory = definitions.get("MEMORY_RESIDENT")
    assert (memory.low, memory.high) == (32 * 1024, 16 * 1024 * 1024)


def test_names_len_and_unknown(tables):
    definitions, _ = tables["a55c55edf302"]
    assert len(definitions) == len(definitions.names) == 524
    for name in ("HTTP_OFFLINE_CACHE_DOCUMENT_LOAD", "MIXED_CONTENT_PAGE_LOAD",
                 "STARTUP_NOPE", "STARTUP_"):
        assert definitions.get(name) is None
        assert name not in definitions
    assert 42 not in definitions


def test_bucket_index(tables):
    d = tables["a55c55edf302"][0].get("CYCLE_COLLECTOR")
    assert d.n_buckets == len(d.buckets) == 50
    assert [d.bucket_index(b) for b in d.buckets] == list(range(50))
    assert d.bucket_index(0) == 0
    assert d.bucket_index(9) is None
    assert d.bucket_index(10001) is None
    assert isinstance(hash(d), int)


# --------------------------------------------------------------------------- kinds

@pytest.mark.parametrize("spec, expected", [
    ({"kind": "boolean"}, [0, 1, 2]),
    ({"kind": "flag"}, [0, 1, 2]),
    ({"kind": "count"}, [0, 1, 2]),
    ({"kind": "enumerated", "n_values": 3}, [0, 1, 2, 3]),
    ({"kind": "enumerated", "n_values": "2 + 1"}, [0, 1, 2, 3]),
    ({"kind": "linear", "high": 10, "n_buckets": 6}, [0, 1, 3, 6, 8, 10]),  # 3.25, 5.5 up, 7.75
    ({"kind": "linear", "low": 5, "high": 145, "n_buckets": 4}, [0, 5, 75, 145]),
    ({"kind": "exponential", "high": 100, "n_buckets": 5}, [0, 1, 5, 22, 100]),
    ({"kind": "exponential", "low": "32 * 1024", "high": "16 * 1024 * 1024", "n_buckets": 3},
     [0, 32768, 16777216]),
])
def test_kinds(spec, expected):
    d = build_definition("H", spec)
    assert list(d.buckets) == expected
    assert d.n_buckets == len(expected)
    assert d.keyed is False


@pytest.mark.parametrize("labels, n_values, n", [
    (["a", "b", "c"], None, CATEGORICAL_MIN_VALUES),
    (["a"] * 60, None, 60),
    (["a", "b"], 70, 70),
])
def test_categorical(labels, n_values, n):
    spec = {"kind": "categorical", "labels": labels, "keyed": True}
    if n_values is not None:
        spec["n_values"] = n_values
    d = build_definition("C", spec)
    assert (d.low, d.high, d.n_buckets) == (1, n, n + 1)
    assert list(d.buckets) == list(range(n + 1))
    assert d.labels == tuple(labels)
    assert d.keyed is True


@pytest.mark.parametrize("keyed, expected",
                         [(True, True), (False, False), ("true", True), ("false", False)])
def test_keyed(keyed, expected):
    assert build_definition("K", {"kind": "flag", "keyed": keyed}).keyed is expected


@pytest.mark.parametrize("spec, words", [
    ("not an object", "not an object"),
    ({"kind": "weird"}, "unknown kind"),
    ({"high": 10, "n_buckets": 5}, "unknown kind"),
    ({"kind": "linear", "n_buckets": 5}, "'high'"),
    ({"kind": "exponential", "high": 100}, "'n_buckets'"),
    ({"kind": "enumerated"}, "'n_values'"),
    ({"kind": "enumerated", "n_values": 1}, "n_buckets must be at least 3"),
    ({"kind": "linear", "high": 10, "n_buckets": 2}, "n_buckets must be at least 3"),
    ({"kind": "linear", "high": 10, "n_buckets": 10**9}, "over the limit"),
    ({"kind": "exponential", "low": 0, "high": 10, "n_buckets": 5}, "low must be at least 1"),
    ({"kind": "linear", "low": 10, "high": 10, "n_buckets": 5}, "must be greater than low"),
    ({"kind": "linear", "high": "ten", "n_buckets": 5}, "unknown symbol"),
    ({"kind": "linear", "high": [10], "n_buckets": 5}, "expected an integer"),
    ({"kind": "flag", "keyed": "maybe"}, "keyed"),
    ({"kind": "categorical"}, "labels"),
    ({"kind": "categorical", "labels": [1, 2]}, "labels"),
])
def test_bad_definitions_name_the_histogram(spec, words):
    with pytest.raises(HistogramError, match=words) as info:
        build_definition("MY_HISTOGRAM", spec)
    assert "MY_HISTOGRAM" in str(info.value)


def test_one_bad_definition_does_not_spoil_the_revision():
    data = orjson.dumps({
        "GOOD": {"kind": "flag"},
        "BAD": {"kind": "enumerated", "n_values": "mozilla::Unknown::CONSTANT"},
        "ALSO_GOOD": {"kind": "linear", "high": 10, "n_buckets": 6},
    })
    h = Histograms.from_bytes(data)
    assert h.get("GOOD").buckets == (0, 1, 2)
    assert h.get("ALSO_GOOD").n_buckets == 6
    for name in ("BAD", "STARTUP_BAD"):
        with pytest.raises(UnknownSymbol, match="BAD.*mozilla::Unknown::CONSTANT"):
            h.get(name)
    assert list(h.errors()) == ["BAD"]
    # an extra symbol table makes it usable
    h2 = Histograms.from_bytes(data, symbols={"mozilla::Unknown::CONSTANT": 4})
    assert h2.get("BAD").n_buckets == 5


@pytest.mark.parametrize("data", [b"", b"{", b"[1, 2]", b'"text"', b"null", b"\xff\xfe"])
def test_bad_files(data):
    with pytest.raises(HistogramError):
        Histograms.from_bytes(data)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        Histograms.load(tmp_path / "nope.json")


# --------------------------------------------------------------------------- bucket properties

def _ranges(max_high=10**7, max_n=200):
    @st.composite
    def draw(draw):
        low = draw(st.integers(1, max_high - 1))
        high = draw(st.integers(low + 1, max_high))
        n = draw(st.integers(3, min(max_n, high - low + 2)))
        return low, high, n
    return draw()


@settings(max_examples=300, deadline=None)
@given(_ranges())
def test_exponential_properties(args):
    low, high, n = args
    b = exponential_buckets(low, high, n)
    assert len(b) == n
    assert b[0] == 0 and b[1] == low
    assert all(x < y for x, y in zip(b, b[1:]))
    assert b[-1] == high     # with room for n-1 distinct bounds it always ends on high exactly


@settings(max_examples=300, deadline=None)
@given(_ranges())
def test_linear_properties(args):
    low, high, n = args
    b = linear_buckets(low, high, n)
    assert len(b) == n
    assert b[0] == 0 and b[1] == low and b[-1] == high
    assert all(x < y for x, y in zip(b, b[1:]))
    # evenly spaced: each bound within 0.5 of the exact line (rational arithmetic)
    den = n - 2
    exact = [low * (n - 1 - i) + high * (i - 1) for i in range(n)]     # times den
    assert all(2 * abs(b[i] * den - exact[i]) <= den for i in range(1, n))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 1000), st.integers(0, 2000), st.integers(-5, 2))
def test_bucket_functions_reject_bad_ranges(low, high, n):
    if high > low and n >= 3:
        return
    for f in (linear_buckets, exponential_buckets):
        with pytest.raises(ValueError):
            f(low, high, n)


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 300))
def test_enumerated_buckets_are_the_values(n_values):
    d = build_definition("E", {"kind": "enumerated", "n_values": n_values})
    assert list(d.buckets) == list(range(n_values + 1))
    assert all(d.bucket_index(v) == v for v in range(n_values + 1))


# --------------------------------------------------------------------------- expressions

@pytest.mark.parametrize("expr, value", [
    (7, 7), (7.0, 7), ("7", 7), (" 42 ", 42), ("32 * 1024", 32768), ("80 + 1", 81),
    ("16 * 1024 * 1024", 16777216), ("(1 + 2) * 3", 9), ("1 + 2 * 3", 7), ("10 - 4 - 3", 3),
    ("-7 / 2", -3), ("7 / -2", -3), ("-7 % 2", -1), ("1 << 10", 1024), ("1024 >> 2", 256),
    ("0x10", 16), ("10u", 10), ("100UL", 100), ("--3", 3), ("+5", 5),
    ("JS::gcreason::NUM_TELEMETRY_REASONS", 101), ("mozilla::StartupTimeline::MAX_EVENT_ID", 12),
    ("::mozilla::StartupTimeline::MAX_EVENT_ID + 1", 13),
])
def test_evaluate(expr, value):
    assert evaluate(expr, "H") == value


@pytest.mark.parametrize("expr", [
    "", "   ", "1 +", "(1 + 2", "1 + 2)", "2 ** 3", "1 / 0", "1 % 0", "1 << 64", "1 << -1", "3 4",
    "a.b", "os.system('x')", "__import__('os')", "f(1)", "[1]", "{}", "1 if 1 else 0", "lambda: 1",
    "1.5", "'1'", "\u0661 + 1", "1; 2", "x = 1", "True", None, True, [1], {"a": 1}, 1.5, "9" * 300,
    10**30, 1e30, float("inf"),
    "99999999999 * 99999999999", "(" * 40 + "1" + ")" * 40, "-" * 40 + "1",
])
def test_evaluate_rejects(expr):
    with pytest.raises(HistogramError, match="histogram H"):
        evaluate(expr, "H")


def test_unknown_symbol_is_named():
    with pytest.raises(UnknownSymbol, match="histogram H: unknown symbol 'JS::gcreason::NUM_"):
        evaluate("JS::gcreason::NUM_REASONS + 1", "H")
    assert evaluate("JS::gcreason::NUM_REASONS + 1", "H", {"JS::gcreason::NUM_REASONS": 3}) == 4


_IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}(::[A-Za-z_][A-Za-z0-9_]{0,10}){0,2}",
                       fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(_IDENT)
def test_names_outside_the_table_are_rejected(name):
    with pytest.raises(UnknownSymbol):
        evaluate(f"{name} + 1", "H")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["__import__('os')", "open('/etc/passwd')", "().__class__", "x.y", "f()",
                        "a[0]", "lambda x: x", "exec('1')", "eval('1')", "1 and 2", "not 1"]),
       st.integers(0, 100))
def test_python_constructs_are_rejected(construct, n):
    with pytest.raises(HistogramError):
        evaluate(f"{n} + {construct}", "H")


def _expressions():
    """(text, value) pairs of random arithmetic, with the value computed by C's rules.

    The value is None when any intermediate result leaves int64, where the
    evaluator must refuse rather than answer.
    """
    leaves = st.integers(0, 10**4).map(lambda v: (str(v), v))

    def extend(children):
        def combine(op, left, right):
            (lt, lv), (rt, rv) = left, right
            text = f"({lt} {op} {rt})"
            if lv is None or rv is None:
                return text, None
            value = lv + rv if op == "+" else lv - rv if op == "-" else lv * rv
            return text, value if abs(value) <= 2**63 - 1 else None
        return st.builds(combine, st.sampled_from("+-*"), children, children)
    return st.recursive(leaves, extend, max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(_expressions())
def test_arithmetic_property(pair):
    text, value = pair
    if value is None:
        with pytest.raises(HistogramError, match="out of range"):
            evaluate(text, "H")
    else:
        assert evaluate(text, "H") == value


def test_evaluate_never_calls_eval(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec/compile called")
    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)
    assert evaluate("(32 * 1024) + JS::gcreason::NUM_TELEMETRY_REASONS", "H") == 32869
    with pytest.raises(HistogramError):
        evaluate("__import__('os').system('true')", "H")


def test_definition_is_frozen():
    d = build_definition("F", {"kind": "flag"})
    assert isinstance(d, Definition)
    with pytest.raises(AttributeError):
        d.high = 5  # type: ignore[misc]


def test_the_real_ping_fits_its_revision(fixtures_dir, tables):
    """Every bucket the fixture Firefox 23 ping reports is a bucket of revision a55c55edf302."""
    from receiver.rawlog import inflate, read_records

    (record,) = list(read_records(fixtures_dir / "raw" / "telemetry1.v1.log"))
    ping = orjson.loads(inflate(record.data))
    assert ping["info"]["revision"].endswith("/rev/a55c55edf302")
    definitions = tables["a55c55edf302"][0]
    known = {n: h for n, h in ping["histograms"].items() if n in definitions}
    unknown = sorted(set(ping["histograms"]) - set(known))
    assert len(known) == 326
    assert unknown == ["HTTP_OFFLINE_CACHE_DOCUMENT_LOAD", "MIXED_CONTENT_PAGE_LOAD"]
    for name, histogram in known.items():
        d = definitions.get(name)
        assert all(d.bucket_index(int(k)) is not None for k in histogram["values"]), name
        if name != "GC_REASON_2":      # Firefox used 100 reasons, the SPEC (and the original) 101
            assert histogram["bucket_count"] == d.n_buckets, name
            assert histogram["range"] == [d.low, d.high], name
