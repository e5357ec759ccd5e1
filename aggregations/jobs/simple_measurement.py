"""Count, mean, min, max, nearest-rank percentiles of a ``simpleMeasurements`` key per dimension.

The job twin of the ``simple_measurement`` pipeline: numbers only (not
booleans), percentile p is the value at sorted position ceil(p/100 * count).
"""

import json
import math

PARAMS = {
    "name": "firstPaint",
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
PERCENTILES = (25, 50, 75, 95)


def _dimension(dimensions, name):
    names = PARAMS["dimensions"]
    i = names.index(name) if name in names else -1
    return dimensions[i] if 0 <= i < len(dimensions) else "UNKNOWN"


def map(key, dimensions, value, context):
    try:
        payload = json.loads(value)
    except ValueError:
        return
    measurements = payload.get("simpleMeasurements") if isinstance(payload, dict) else None
    v = measurements.get(PARAMS["name"]) if isinstance(measurements, dict) else None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        context.write(json.dumps({PARAMS["by"]: _dimension(dimensions, PARAMS["by"])}), v)


def reduce(key, values, context):
    values = sorted(values)
    n = len(values)
    row = {"count": n, "mean": sum(values) / n, "min": values[0], "max": values[-1]}
    for p in PERCENTILES:
        row[f"p{p}"] = values[max(0, math.ceil(p / 100 * n) - 1)]
    context.write(key, json.dumps(row))
