"""Sum the bucket arrays of one histogram per channel.

The converted histograms are arrays: one count per bucket, then sum,
log_sum, log_sum_squares, sum_squares_lo, sum_squares_hi.  The buckets and
the sum are added; the output line is ``channel<TAB>[counts..., sum]``.
"""

import json

HISTOGRAM = "GC_MS"


def map(key, dims, value, context):
    histogram = json.loads(value).get("histograms", {}).get(HISTOGRAM)
    if histogram:
        channel = dims[2]
        context.write(channel, histogram[:-5] + [histogram[-5]])


def _add(values):
    total = list(values[0])
    for v in values[1:]:
        if len(v) > len(total):
            total.extend([0] * (len(v) - len(total)))
        for i, x in enumerate(v):
            total[i] += x
    return total


def combine(key, values, context):
    context.write(key, _add(values))


def setup_reduce(context):
    context.field_separator = "\t"


def reduce(key, values, context):
    context.write(key, json.dumps(_add(values), separators=(",", ":")))
