"""An independent computation of the dashboard's histogram statistics, for the tests to compare with.

Same definitions as static/js/histogram.js (and telemetry.js), computed
another way: cumulative sums and a bisection instead of walking the buckets.
A bucket holds samples >= its lower bound; a percentile is interpolated
inside its bucket (linearly for linear kinds, geometrically for exponential
ones, with the last bucket's width or ratio as telemetry.js does); the mean
uses bucket centres.
"""

from __future__ import annotations

import bisect
import itertools
import math

LINEAR = {"linear", "flag", "boolean", "enumerated"}


def upper(buckets, kind):
    if len(buckets) == 1:
        return buckets[0] + 1
    a, b = buckets[-2], buckets[-1]
    return 2 * b - a if kind in LINEAR else b * b / a


def ref_percentile(buckets, values, kind, p):
    total = sum(values)
    if total == 0:
        return None
    cum = list(itertools.accumulate(values))
    target = total * (p / 100)
    i = bisect.bisect_right(cum, target)       # first bucket whose running total passes the target
    if i >= len(values):
        i = max(j for j, v in enumerate(values) if v)
        inside = values[i]
    else:
        inside = target - (cum[i - 1] if i else 0)
    top = upper(buckets, kind)
    if kind in LINEAR:
        return buckets[i] + (top - buckets[-1]) * inside / values[i]
    return buckets[i] * (top / buckets[-1]) ** (inside / values[i])


def ref_mean(buckets, values, kind):
    total = sum(values)
    if total == 0:
        return None
    top = upper(buckets, kind)
    if kind in LINEAR:
        centres = [b + (top - buckets[-1]) / 2 for b in buckets]
    else:
        centres = [b * math.sqrt(top / buckets[-1]) for b in buckets]
    return sum(c * v for c, v in zip(centres, values)) / total


def exponential_bounds(low, high, n):
    bounds = [0, low]
    log_max = math.log(high)
    for i in range(2, n):
        log_current = math.log(bounds[-1])
        step = (log_max - log_current) / (n - i)
        nxt = round(math.exp(log_current + step))
        bounds.append(nxt if nxt > bounds[-1] else bounds[-1] + 1)
    return bounds
