"""Histogram definitions: one revision of Mozilla's ``Histograms.json``.

A submitted histogram is a map from bucket lower bound to count; to store it
as an array the converter needs the definition's bucket table, which is not
in the ping but computed from ``kind``, ``low``, ``high`` and ``n_buckets``
exactly as Firefox computed it.  The formulas are Mozilla's (see
docs/histograms.md); the three real revisions in ``tests/fixtures/histograms``
pin them down.

Definitions are parsed lazily and one by one: a revision with one bad entry
(an unknown C++ constant, a nonsense range) still serves all the others, and
only ``get()`` of the bad name raises :class:`HistogramError`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import orjson

KINDS = ("boolean", "flag", "count", "enumerated", "linear", "exponential", "categorical")
STARTUP_PREFIX = "STARTUP_"

# The C++ constants that real Histograms.json revisions use as values.
KNOWN_SYMBOLS: Mapping[str, int] = {
    "JS::gcreason::NUM_TELEMETRY_REASONS": 101,
    "mozilla::StartupTimeline::MAX_EVENT_ID": 12,
}

MAX_BUCKETS = 100_000   # far above any real definition; a crafted file cannot eat memory
MAX_EXPRESSION_LENGTH = 256
MAX_EXPRESSION_DEPTH = 32
MAX_VALUE = 2**63 - 1           # C++ int64; bounds every intermediate result
CATEGORICAL_MIN_VALUES = 50


class HistogramError(Exception):
    """A Histograms.json file or one of its definitions that cannot be used."""


class UnknownSymbol(HistogramError):
    """A definition value names a C++ constant that we do not know."""


@dataclass(frozen=True)
class Definition:
    """One histogram's definition with its bucket table (lower bounds, first one 0)."""

    name: str
    kind: str
    low: int
    high: int
    n_buckets: int
    keyed: bool
    buckets: tuple[int, ...]
    labels: tuple[str, ...] = ()
    _index: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[int, int] = {}
        for i, bound in enumerate(self.buckets):
            index.setdefault(bound, i)
        object.__setattr__(self, "_index", index)

    def bucket_index(self, lower_bound: int) -> int | None:
        """The slot of the bucket starting at ``lower_bound``; None when no bucket starts there."""
        return self._index.get(lower_bound)


# ---------------------------------------------------------------------------
# Bucket tables

def _check_range(low: int, high: int, n_buckets: int) -> None:
    if n_buckets < 3:
        raise ValueError(f"n_buckets must be at least 3, not {n_buckets}")
    if n_buckets > MAX_BUCKETS:
        raise ValueError(f"n_buckets {n_buckets} is over the limit of {MAX_BUCKETS}")
    if low < 1:
        raise ValueError(f"low must be at least 1, not {low}")
    if high <= low:
        raise ValueError(f"high ({high}) must be greater than low ({low})")


def linear_buckets(low: int, high: int, n_buckets: int) -> list[int]:
    """Lower bounds of a linear histogram (also boolean, flag, count, enumerated, categorical).

    Entry 0 is the underflow bucket (0); entry i is
    ``(low*(n-1-i) + high*(i-1)) / (n-2)`` rounded half up, computed in
    integers so that no float rounding can differ from Firefox's result.
    """
    _check_range(low, high, n_buckets)
    n = n_buckets
    den = n - 2
    out = [0] * n
    for i in range(1, n):
        num = low * (n - 1 - i) + high * (i - 1)
        out[i] = (2 * num + den) // (2 * den)
    return out


def exponential_buckets(low: int, high: int, n_buckets: int) -> list[int]:
    """Lower bounds of an exponential histogram.

    Firefox's own algorithm, in floating point on purpose: each bound is the
    geometric step from the previous one towards ``high`` over the buckets
    left, rounded, and at least one more than the previous bound.
    """
    _check_range(low, high, n_buckets)
    n = n_buckets
    log_high = math.log(high)
    out = [0] * n
    current = low
    out[1] = current
    for k in range(2, n):
        log_current = math.log(current)
        step = (log_high - log_current) / (n - k)
        nxt = int(math.floor(math.exp(log_current + step) + 0.5))
        current = nxt if nxt > current else current + 1
        out[k] = current
    return out


# ---------------------------------------------------------------------------
# Expressions

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<num>0[xX][0-9a-fA-F]+|[0-9]+)[uUlL]*
    | (?P<sym>(?:::)?[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)
    | (?P<op><<|>>|[-+*/%()])
    )""", re.VERBOSE)


def evaluate(expr: str | int, histogram: str, symbols: Mapping[str, int] | None = None) -> int:
    """The integer value of a definition field: a number, or C++-style integer arithmetic.

    Historic files write ``"32 * 1024"``, ``"80 + 1"`` or a C++ constant.  The
    text is tokenised and parsed here (``+ - * / % << >>``, parentheses, unary
    signs, known symbols); nothing is ever handed to Python's ``eval``.  Any
    other text is a :class:`HistogramError` naming ``histogram``; an unknown
    constant is an :class:`UnknownSymbol`.
    """
    if isinstance(expr, bool):
        raise HistogramError(f"histogram {histogram}: expected an integer, got {expr!r}")
    if isinstance(expr, float) and expr.is_integer():
        expr = int(expr)
    if isinstance(expr, int):
        if abs(expr) > MAX_VALUE:
            raise HistogramError(f"histogram {histogram}: value {expr} out of range")
        return expr
    if not isinstance(expr, str):
        raise HistogramError(f"histogram {histogram}: expected an integer or expression, "
                             f"got {expr!r}")
    text = expr.strip()
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise HistogramError(f"histogram {histogram}: expression longer than "
                             f"{MAX_EXPRESSION_LENGTH} characters")
    if text.isdecimal() and text.isascii() and len(text) < 19:
        return int(text)
    table = KNOWN_SYMBOLS if symbols is None else {**KNOWN_SYMBOLS, **symbols}
    return _Parser(text, histogram, table).parse()


class _Parser:
    """Recursive descent over C-like integer expressions, with C's precedence."""

    def __init__(self, text: str, histogram: str, symbols: Mapping[str, int]):
        self.histogram = histogram
        self.symbols = symbols
        self.text = text
        self.tokens = self._tokenize(text)
        self.pos = 0
        self.depth = 0

    def _error(self, message: str) -> HistogramError:
        return HistogramError(f"histogram {self.histogram}: {message} in {self.text!r}")

    def _tokenize(self, text: str) -> list[tuple[str, str]]:
        tokens, pos = [], 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise self._error(f"unexpected character {text[pos:].lstrip()[:1]!r}")
            kind = m.lastgroup
            tokens.append((kind, m.group(kind)))
            pos = m.end()
        return tokens

    def parse(self) -> int:
        if not self.tokens:
            raise self._error("empty expression")
        value = self._shift()
        if self.pos != len(self.tokens):
            raise self._error(f"unexpected {self.tokens[self.pos][1]!r}")
        return value

    def _peek(self) -> str | None:
        if self.pos < len(self.tokens) and self.tokens[self.pos][0] == "op":
            return self.tokens[self.pos][1]
        return None

    def _checked(self, value: int) -> int:
        if abs(value) > MAX_VALUE:
            raise self._error("value out of range")
        return value

    def _shift(self) -> int:
        value = self._sum()
        while self._peek() in ("<<", ">>"):
            op = self.tokens[self.pos][1]
            self.pos += 1
            amount = self._sum()
            if not 0 <= amount < 64:
                raise self._error(f"shift by {amount}")
            value = self._checked(value << amount if op == "<<" else value >> amount)
        return value

    def _sum(self) -> int:
        value = self._product()
        while self._peek() in ("+", "-"):
            op = self.tokens[self.pos][1]
            self.pos += 1
            right = self._product()
            value = self._checked(value + right if op == "+" else value - right)
        return value

    def _product(self) -> int:
        value = self._unary()
        while self._peek() in ("*", "/", "%"):
            op = self.tokens[self.pos][1]
            self.pos += 1
            right = self._unary()
            if op == "*":
                value = self._checked(value * right)
                continue
            if right == 0:
                raise self._error("division by zero")
            # C++ truncates toward zero, and its remainder takes the dividend's sign.
            quotient = abs(value) // abs(right)
            if (value < 0) != (right < 0):
                quotient = -quotient
            value = quotient if op == "/" else value - quotient * right
        return value

    def _unary(self) -> int:
        op = self._peek()
        if op in ("+", "-"):
            self.pos += 1
            self._enter()
            value = self._unary()
            self.depth -= 1
            return -value if op == "-" else value
        return self._atom()

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_EXPRESSION_DEPTH:
            raise self._error("expression nested too deeply")

    def _atom(self) -> int:
        if self.pos >= len(self.tokens):
            raise self._error("unexpected end of expression")
        kind, text = self.tokens[self.pos]
        self.pos += 1
        if kind == "num":
            return self._checked(int(text, 16) if text[:2].lower() == "0x" else int(text))
        if kind == "sym":
            name = text[2:] if text.startswith("::") else text
            if name not in self.symbols:
                raise UnknownSymbol(f"histogram {self.histogram}: unknown symbol {name!r}")
            return self.symbols[name]
        if text == "(":
            self._enter()
            value = self._shift()
            self.depth -= 1
            if self._peek() != ")":
                raise self._error("missing ')'")
            self.pos += 1
            return value
        raise self._error(f"unexpected {text!r}")


# ---------------------------------------------------------------------------
# Definitions

def _flag(value: Any, name: str, key: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise HistogramError(f"histogram {name}: {key} must be true or false, not {value!r}")


def build_definition(name: str, spec: Any, symbols: Mapping[str, int] | None = None) -> Definition:
    """A :class:`Definition` from one Histograms.json entry; HistogramError names ``name``."""
    if not isinstance(spec, dict):
        raise HistogramError(f"histogram {name}: definition is not an object")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise HistogramError(f"histogram {name}: unknown kind {kind!r}")
    keyed = _flag(spec.get("keyed"), name, "keyed")

    def value(key: str, default: Any = None) -> int:
        raw = spec.get(key, default)
        if raw is None:
            raise HistogramError(f"histogram {name}: {kind} histogram needs {key!r}")
        return evaluate(raw, name, symbols)

    labels: tuple[str, ...] = ()
    if kind in ("boolean", "flag", "count"):
        low, high, n = 1, 2, 3
    elif kind == "enumerated":
        n_values = value("n_values")
        low, high, n = 1, n_values, n_values + 1
    elif kind == "categorical":
        raw_labels = spec.get("labels")
        if not isinstance(raw_labels, list) or not all(isinstance(x, str) for x in raw_labels):
            raise HistogramError(f"histogram {name}: categorical histogram needs a list of labels")
        labels = tuple(raw_labels)
        n_values = value("n_values", 0)
        count = max(len(labels), n_values, CATEGORICAL_MIN_VALUES)
        low, high, n = 1, count, count + 1
    else:
        low, high, n = value("low", 1), value("high"), value("n_buckets")
    make = exponential_buckets if kind == "exponential" else linear_buckets
    try:
        buckets = make(low, high, n)
    except ValueError as e:
        raise HistogramError(f"histogram {name}: {e}") from None
    return Definition(name=name, kind=kind, low=low, high=high, n_buckets=n, keyed=keyed,
                      buckets=tuple(buckets), labels=labels)


class Histograms:
    """One parsed Histograms.json revision; definitions are built on first use."""

    def __init__(self, specs: Mapping[str, Any], symbols: Mapping[str, int] | None = None):
        self._specs = dict(specs)
        self._symbols = symbols
        self._built: dict[str, Definition | HistogramError] = {}

    @classmethod
    def from_bytes(cls, data: bytes, symbols: Mapping[str, int] | None = None) -> "Histograms":
        """Parse a whole file; a file that is not a JSON object raises HistogramError."""
        try:
            specs = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise HistogramError(f"Histograms.json is not valid JSON: {e}") from None
        if not isinstance(specs, dict):
            raise HistogramError("Histograms.json must be a JSON object of histogram definitions")
        return cls(specs, symbols)

    @classmethod
    def load(cls, path: str | os.PathLike,
             symbols: Mapping[str, int] | None = None) -> "Histograms":
        with open(path, "rb") as f:
            return cls.from_bytes(f.read(), symbols)

    def _definition(self, name: str) -> Definition:
        built = self._built.get(name)
        if built is None:
            try:
                built = build_definition(name, self._specs[name], self._symbols)
            except HistogramError as e:
                built = e
            self._built[name] = built
        if isinstance(built, HistogramError):
            raise built
        return built

    def _resolve(self, name: str) -> str | None:
        if name in self._specs:
            return name
        if name.startswith(STARTUP_PREFIX) and name[len(STARTUP_PREFIX):] in self._specs:
            return name[len(STARTUP_PREFIX):]
        return None

    def get(self, name: str) -> Definition | None:
        """The definition of ``name`` (``STARTUP_X`` falls back to X); None when undefined.

        Raises HistogramError when the name is defined but its definition is bad.
        """
        resolved = self._resolve(name)
        return None if resolved is None else self._definition(resolved)

    def description(self, name: str) -> str:
        """The ``description`` text of ``name`` (``STARTUP_X`` falls back to X); "" if none."""
        resolved = self._resolve(name)
        spec = self._specs.get(resolved) if resolved is not None else None
        text = spec.get("description") if isinstance(spec, dict) else None
        return text if isinstance(text, str) else ""

    def errors(self) -> dict[str, HistogramError]:
        """Every definition that cannot be built, by name: for reports and checks."""
        out = {}
        for name in self._specs:
            try:
                self._definition(name)
            except HistogramError as e:
                out[name] = e
        return out

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._resolve(name) is not None

    def __len__(self) -> int:
        return len(self._specs)

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    @property
    def names(self) -> list[str]:
        """The names the file defines (without the implied ``STARTUP_`` variants)."""
        return list(self._specs)

    def __repr__(self) -> str:
        return f"<Histograms: {len(self._specs)} definitions>"
