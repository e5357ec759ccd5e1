"""One histogram summed bucket by bucket per dimension value.

The job twin of the ``histogram`` pipeline.

The array is the buckets followed by five statistics (-1 when absent).
Buckets are summed over every record; a statistic over the records where it
is present, and stays -1 if it never is.
"""

import json

PARAMS = {
    "name": "GC_MS",
    "by": "appUpdateChannel",
    "dimensions": [
        "reason",
        "appName",
        "appUpdateChannel",
        "appVersion",
        "appBuildID",
        "submission_date",
    ],
}
N_STATS = 5


def _dimension(dimensions, name):
    names = PARAMS["dimensions"]
    i = names.index(name) if name in names else -1
    return dimensions[i] if 0 <= i < len(dimensions) else "UNKNOWN"


def map(key, dimensions, value, context):
    try:
        payload = json.loads(value)
    except ValueError:
        return
    histograms = payload.get("histograms") if isinstance(payload, dict) else None
    h = histograms.get(PARAMS["name"]) if isinstance(histograms, dict) else None
    if not isinstance(h, list) or len(h) <= N_STATS:
        return
    n = len(h) - N_STATS
    stats = h[n:]
    row_key = {PARAMS["by"]: _dimension(dimensions, PARAMS["by"]), "n_buckets": n}
    context.write(
        json.dumps(row_key, sort_keys=True),
        [1, h[:n], [max(0, s) for s in stats], [1 if s >= 0 else 0 for s in stats]],
    )


def _merge(values):
    count, buckets, totals, present = 0, None, [0] * N_STATS, [0] * N_STATS
    for c, b, t, p in values:
        count += c
        buckets = list(b) if buckets is None else [x + y for x, y in zip(buckets, b)]
        totals = [x + y for x, y in zip(totals, t)]
        present = [x + y for x, y in zip(present, p)]
    return [count, buckets, totals, present]


def combine(key, values, context):
    context.write(key, _merge(values))


def reduce(key, values, context):
    count, buckets, totals, present = _merge(values)
    row = {"count": count, "buckets": buckets}
    for name, total, seen in zip(
        ("sum", "log_sum", "log_sum_squares", "sum_squares_lo", "sum_squares_hi"), totals, present
    ):
        row[name] = total if seen else -1
    context.write(key, json.dumps(row))
