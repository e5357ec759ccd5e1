"""Records per operating system (``info.OS``): the job twin of the ``os_distribution`` pipeline."""

import json

PARAMS = {}


def map(key, dimensions, value, context):
    try:
        payload = json.loads(value)
    except ValueError:
        return
    info = payload.get("info") if isinstance(payload, dict) else None
    os_name = info.get("OS") if isinstance(info, dict) else None
    context.write(json.dumps({"os": "UNKNOWN" if os_name is None else os_name}, sort_keys=True), 1)


def combine(key, values, context):
    context.write(key, sum(values))


def reduce(key, values, context):
    context.write(key, json.dumps({"count": sum(values)}))
