"""The aggregates of SPEC section 7 as a MapReduce job (``telemetry aggregates rebuild``).

Each ping goes through the same :class:`aggregations.aggregates.Aggregate`
as the importer's hook, summed over the whole map task (``setup_map`` to
``finish_map``); at its end the task's sums are written keyed by ``(by,
channel, version, date)``, summed per key on the reducer and written as
``{key json}<TAB>{aggregate json}`` lines, which :mod:`aggregations.rebuild`
stores.  ``PARAMS`` is set by the rebuild.
"""

import orjson

from aggregations.aggregates import Aggregate, Definitions

PARAMS = {
    "histogram_cache": None,
    "histogram_server": None,
    "dimensions": ["reason", "appName", "appUpdateChannel", "appVersion", "appBuildID",
                   "submission_date"],
}
STATS = ("stats",)
_definitions = None


def _defs():
    global _definitions
    if _definitions is None:
        revisions = None
        if PARAMS["histogram_cache"] or PARAMS["histogram_server"]:
            from converter.revisions import RevisionCache

            revisions = RevisionCache(PARAMS["histogram_cache"], PARAMS["histogram_server"])
        _definitions = Definitions(revisions)
    return _definitions


# The running map tasks' sums, by context: a Dask worker may run several tasks at once in
# threads of one process, which share this module.
_tasks: dict[int, Aggregate] = {}


def setup_map(context):
    _tasks[id(context)] = Aggregate()


def map(key, dimensions, value, context):
    try:
        payload = orjson.loads(value)
    except orjson.JSONDecodeError:
        return  # the importer rejects the same records
    _tasks[id(context)].add_ping(payload, dict(zip(PARAMS["dimensions"], dimensions)), _defs())


def finish_map(context):
    agg = _tasks.pop(id(context))
    for part_key, part in agg.split().items():
        context.write(part_key, part)
    stats = Aggregate()
    stats.stats = agg.stats
    context.write(STATS, stats)


def _merge(values):
    out = Aggregate()
    for v in values:
        out.merge(v)
    return out


def combine(key, values, context):
    context.write(key, _merge(values))


def reduce(key, values, context):
    context.write(orjson.dumps(list(key)).decode(), orjson.dumps(_merge(values).to_json()).decode())
