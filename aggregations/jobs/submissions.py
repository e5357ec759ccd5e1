"""Records per submission day, channel and version: the job twin of the ``submissions`` pipeline."""

import json

PARAMS = {
    "dimensions": [
        "reason",
        "appName",
        "appUpdateChannel",
        "appVersion",
        "appBuildID",
        "submission_date",
    ]
}
KEYS = ("submission_date", "appUpdateChannel", "appVersion")


def _dimension(dimensions, name):
    names = PARAMS["dimensions"]
    i = names.index(name) if name in names else -1
    return dimensions[i] if 0 <= i < len(dimensions) else None


def map(key, dimensions, value, context):
    try:
        json.loads(value)
    except ValueError:
        return  # the importer skips such a record too
    context.write(json.dumps({k: _dimension(dimensions, k) for k in KEYS}, sort_keys=True), 1)


def combine(key, values, context):
    context.write(key, sum(values))


def reduce(key, values, context):
    context.write(key, json.dumps({"count": sum(values)}))
