"""Reading the aggregates for the API, asynchronously (PyMongo's ``AsyncMongoClient``).

Every answer comes from pre-computed documents read by ``_id``: one
document per date asked, plus one for the metric's definition, so a query
costs a few round trips whatever the number of pings behind it.  The
summing over rows is :mod:`aggregations.store`'s, shared with the tests.
"""

from __future__ import annotations

from typing import Any, Mapping

from aggregations.aggregates import BY
from aggregations.store import (AGGREGATES, DATES, METRICS, OPTIONS, READ_BATCH, choose_layout,
                                doc_id, histogram_answer, metric_candidates, options_answer)


class NotFound(Exception):
    """Nothing known for the question: the API answers 404 with this message."""


class AggregatesReader:
    """The questions of SPEC section 7 over one database (an ``AsyncDatabase``)."""

    def __init__(self, db: Any):
        self.db = db

    async def channels(self, by: str) -> list[str]:
        _check_by(by)
        values = await self.db[DATES].distinct("channel", {"by": by})
        return sorted(v for v in values if isinstance(v, str))

    async def dates(self, by: str, channel: str) -> list[dict[str, str]]:
        _check_by(by)
        rows = []
        async for d in self.db[DATES].find({"by": by, "channel": channel},
                                           {"_id": 0, "version": 1, "date": 1}):
            if isinstance(d.get("version"), str) and isinstance(d.get("date"), str):
                rows.append((d["date"], d["version"]))
        rows.sort(key=lambda r: (r[0], _version_key(r[1])), reverse=True)
        return [{"version": v, "date": date} for date, v in rows]

    async def filters(self, channel: str, version: str) -> dict[str, list]:
        doc = await self.db[OPTIONS].find_one({"_id": doc_id((channel, version))})
        answer = options_answer(doc)
        if answer is None:
            raise NotFound(f"nothing is known for channel {channel!r} version {version!r}")
        return answer

    async def histogram(self, by: str, channel: str, version: str, dates: list[str],
                        metric: str, filters: Mapping[str, str]) -> dict:
        _check_by(by)
        candidates = metric_candidates(metric)
        found = {d["metric"]: d async for d in self.db[METRICS].find(
            {"_id": {"$in": [doc_id((channel, version, m)) for m in candidates]}})}
        stored = next((m for m in candidates if m in found), None)
        chosen = choose_layout(found[stored]) if stored else None
        if chosen is None:
            raise NotFound(f"metric {metric!r} is not known for channel {channel!r} "
                           f"version {version!r}")
        layout, definition = chosen
        ids = list(dict.fromkeys(doc_id((by, channel, version, d, stored)) for d in dates))
        docs = []
        for i in range(0, len(ids), READ_BATCH):
            async for doc in self.db[AGGREGATES].find({"_id": {"$in": ids[i:i + READ_BATCH]}},
                                                      {"_id": 0, "date": 1, "rows": 1}):
                docs.append(doc)
        answer = histogram_answer(docs, dates, layout, definition, filters)
        if answer is None:
            raise NotFound("no data for this query")
        return answer


def _check_by(by: str) -> None:
    if by not in BY:
        raise NotFound(f"aggregates are by {' or '.join(BY)}, not {by!r}")


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() and len(version) < 10 else (-1, version)
