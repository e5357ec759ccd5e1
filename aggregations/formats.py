"""Rows printed for people (an aligned table) or for programs (CSV, TSV, JSON)."""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson

FORMATS = ("table", "csv", "tsv", "json")


def cell(value: Any) -> str:
    """A value as one cell: numbers and strings as they are, lists and objects as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return orjson.dumps(value, default=str).decode()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def format_rows(rows: list[dict[str, Any]], columns: list[str], fmt: str = "table") -> str:
    """``rows`` in ``fmt``; ``json`` is a list of objects keyed by column name, one per row."""
    if fmt == "json":
        return (
            orjson.dumps(
                [{c: r.get(c) for c in columns} for r in rows],
                option=orjson.OPT_INDENT_2,
                default=str,
            ).decode()
            + "\n"
        )
    if fmt in ("csv", "tsv"):
        out = io.StringIO()
        writer = csv.writer(out, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([cell(r.get(c)) for c in columns])
        return out.getvalue()
    if fmt == "table":
        numeric = [all(_is_numeric_value(r.get(c)) for r in rows) for c in columns]
        return table([[cell(r.get(c)) for c in columns] for r in rows], columns, numeric)
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def table(
    cells: list[list[str]], header: list[str], numeric: list[bool | None] | None = None
) -> str:
    """An aligned text table: numbers to the right, text (a date too) to the left.

    ``numeric`` says which columns hold numbers; a None in it, or no list,
    means: guess from the cells.
    """
    widths = [len(h) for h in header]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    guess = [
        all(_is_number(row[i]) for row in cells if row[i]) and any(row[i] for row in cells)
        for i in range(len(header))
    ]
    numeric = [g if n is None else n for g, n in zip(guess, numeric or [None] * len(header))]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells]
    return "\n".join(out) + "\n"


def _is_numeric_value(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
