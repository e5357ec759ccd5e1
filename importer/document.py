"""One layout record as one MongoDB document.

``_id`` is the docId, the payload's fields sit at the top level as the
original importer stored them, and what the layout knows about the record
(its dimensions, recovered from the file's path, and the file itself) goes
under ``meta``, a name no telemetry payload uses; should one ever carry a
top-level ``meta``, it is kept as ``payload_meta`` rather than lost.
Field names in a few sections are SQL statements or add-on ids with dots;
the original stored them with ``.`` spelled ``[dot]``, and so do we unless
asked not to (MongoDB >= 5 accepts dots in names, older tools do not).
"""

from __future__ import annotations

from typing import Any

import orjson

META = "meta"
SOURCE = "file"
DOTTED_SECTIONS = ("slowSQL", "slowSQLStartup", "addonDetails", "addonHistograms")
DOT = "[dot]"


class DocumentError(ValueError):
    """A record whose JSON cannot be parsed."""


def make_document(
    doc_id: str, json_text: str | bytes, meta: dict[str, str], keep_dots: bool = False
) -> dict[str, Any]:
    """The document for one record; ``meta`` holds the dimensions and the source file."""
    try:
        payload = orjson.loads(json_text)
    except orjson.JSONDecodeError as e:
        raise DocumentError(f"record {doc_id}: not JSON: {e}") from None
    if not isinstance(payload, dict):
        payload = {"payload": payload}
    elif not keep_dots:
        for section in DOTTED_SECTIONS:
            value = payload.get(section)
            if isinstance(value, dict):
                payload[section] = undot(value)
    if META in payload:
        payload["payload_meta"] = payload.pop(META)
    payload["_id"] = doc_id
    payload[META] = meta
    return payload


def undot(value: Any) -> Any:
    """``value`` with every ``.`` in its keys, at any depth, spelled ``[dot]``."""
    if isinstance(value, dict):
        return {(k.replace(".", DOT) if "." in k else k): undot(v) for k, v in value.items()}
    if isinstance(value, list):
        return [undot(v) for v in value]
    return value


def redot(value: Any) -> Any:
    """The inverse of :func:`undot`, for readers that want the original names back."""
    if isinstance(value, dict):
        return {(k.replace(DOT, ".") if DOT in k else k): redot(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redot(v) for v in value]
    return value
