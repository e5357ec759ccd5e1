"""How the fleet's histograms are drawn: one distribution per histogram and segment.

Every histogram of a revision gets base parameters that depend only on its
name and definition (a seeded draw, so they are the same in every run): for
``exponential`` a log-normal (median somewhere in the lower half of its
range on a log scale), for ``linear`` a normal, for ``boolean`` and ``flag``
a probability of true, for ``enumerated`` a geometric fall-off over its
values.  A few well-known metrics (:data:`KNOWN`) have hand-set parameters
that look like 2013 Firefox.  A segment (channel, OS, build) scales the
time-like ones by a factor; the known effects are such factors.

A :class:`Sampler` turns one distribution into the ping's JSON for that
histogram (``"NAME":{"range":...,"values":{...},"sum":...}``, shaped as
Firefox wrote it) from ``n`` samples: the samples' buckets are drawn with
``random.choices`` over the buckets' probabilities, and each sample counts
at its bucket's representative value for ``sum`` and the other statistics.
So the sums, counts and bucket shapes that aggregates compute move exactly
as the factors say.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass

import orjson

from converter.histograms import Definition

# Mozilla's histogram_type codes in classic pings (enumerated is stored as linear).
HISTOGRAM_TYPE = {"exponential": 0, "linear": 1, "boolean": 2, "flag": 3, "count": 4, "enumerated": 1}


@dataclass(frozen=True)
class Params:
    """A histogram's base distribution; which fields matter depends on the kind.

    ``center``: median (exponential) or mean (linear); ``spread``: sigma of
    log values (exponential) or standard deviation (linear); ``p``: chance of
    true (boolean, flag) or the fall-off ratio (enumerated); ``samples``:
    mean samples a ping holds.
    """

    center: float = 1.0
    spread: float = 1.0
    p: float = 0.5
    samples: float = 5.0
    scaled: bool = True     # does a segment factor scale it (time, memory) or not (booleans)


# Hand-set parameters of the metrics drawn per ping (fleet.scenario.LIVE_HISTOGRAMS).
KNOWN: dict[str, Params] = {
    "GC_MS": Params(center=60, spread=1.0, samples=25),
    "CYCLE_COLLECTOR": Params(center=30, spread=0.9, samples=15),
    "MEMORY_RESIDENT": Params(center=350_000, spread=0.5, samples=8),
    "FX_NEW_WINDOW_MS": Params(center=180, spread=0.6, samples=3),
    "TELEMETRY_PING": Params(center=300, spread=0.8, samples=2),
    "GC_MAX_PAUSE_MS": Params(center=80, spread=50, samples=10),
    "SHUTDOWN_OK": Params(p=0.92, samples=1, scaled=False),
    "A11Y_INSTANTIATED_FLAG": Params(p=0.05, samples=1, scaled=False),
    "DNS_LOOKUP_METHOD2": Params(p=0.45, samples=12, scaled=False),
}


def base_params(definition: Definition) -> Params:
    """The distribution of a histogram in no particular segment: from its name, so always the same."""
    known = KNOWN.get(definition.name)
    if known is not None:
        return known
    r = random.Random("fleet-params:" + definition.name)
    samples = r.choice((1, 1, 2, 3, 5, 8, 12, 20, 40))
    kind, low, high = definition.kind, definition.low, definition.high
    if kind == "exponential":
        u = r.uniform(0.05, 0.5)
        return Params(center=math.exp(math.log(low) + u * (math.log(high) - math.log(low))),
                      spread=r.uniform(0.5, 1.3), samples=samples)
    if kind == "linear":
        return Params(center=low + r.uniform(0.05, 0.6) * (high - low),
                      spread=max(1.0, (high - low) * r.uniform(0.05, 0.25)), samples=samples)
    if kind == "flag":
        return Params(p=r.uniform(0.0, 0.3), samples=1, scaled=False)
    if kind == "boolean":
        return Params(p=r.uniform(0.01, 0.6), samples=min(samples, 12), scaled=False)
    return Params(p=r.uniform(0.2, 0.8), samples=samples, scaled=False)  # enumerated, count


def _normal_cdf(x: float, mu: float, sigma: float) -> float:
    return 0.5 * (1.0 + math.erf((x - mu) / (sigma * math.sqrt(2.0))))


class Sampler:
    """Draws one histogram's JSON for one segment (its distribution scaled by ``factor``)."""

    __slots__ = ("name", "kind", "head", "keys", "slots", "cum", "reps", "logs", "samples",
                 "bad_key", "flag")

    def __init__(self, definition: Definition, params: Params, factor: float = 1.0):
        d = definition
        self.name = d.name
        self.kind = d.kind
        self.samples = params.samples
        buckets = d.buckets
        n = len(buckets)
        self.keys = [str(b) for b in buckets]
        self.slots = range(n)
        self.flag = d.kind == "flag"
        # Every bucket's representative value: what a sample in it adds to ``sum``.
        reps = []
        for i, b in enumerate(buckets):
            nxt = buckets[i + 1] if i + 1 < n else b + 1
            if d.kind == "exponential" and b > 0:
                reps.append(max(b, min(nxt - 1, round(math.sqrt(b * nxt)))))
            else:
                reps.append(b if i == 0 or nxt - b <= 1 else (b + nxt - 1) // 2)
        self.reps = reps
        self.logs = [math.log(v) if v > 0 else 0.0 for v in reps]
        weights = self._weights(d, params, factor if params.scaled else 1.0)
        total = sum(weights)
        if total <= 0:
            weights = [1.0] + [0.0] * (n - 1)
        acc, cum = 0.0, []
        for w in weights:
            acc += w
            cum.append(acc)
        self.cum = cum
        self.head = b'"%s":{"range":[%d,%d],"bucket_count":%d,"histogram_type":%d,' % (
            d.name.encode(), d.low, d.high, n, HISTOGRAM_TYPE[d.kind])
        self.bad_key = str(buckets[-1] + 1)   # not a bucket of the definition

    @staticmethod
    def _weights(d: Definition, params: Params, factor: float) -> list[float]:
        buckets = d.buckets
        n = len(buckets)
        edges = list(buckets[1:]) + [math.inf]
        if d.kind == "exponential":
            mu, sigma = math.log(params.center * factor), params.spread
            cdf = [0.0 if e <= 0 else 1.0 if e == math.inf else _normal_cdf(math.log(e), mu, sigma)
                   for e in edges]
        elif d.kind == "linear":
            mu, sigma = params.center * factor, params.spread * factor
            cdf = [1.0 if e == math.inf else _normal_cdf(e, mu, sigma) for e in edges]
        elif d.kind in ("boolean", "flag"):
            return [1 - params.p, params.p] + [0.0] * (n - 2)
        else:  # enumerated / count: value k with weight p**k, the last (overflow) bucket empty
            return [params.p ** k for k in range(n - 1)] + [0.0]
        out, prev = [], 0.0
        for c in cdf:
            out.append(max(0.0, c - prev))
            prev = c
        return out

    def draw(self, rng: random.Random, activity: float = 1.0, bad: bool = False) -> bytes:
        """The histogram's JSON member for one ping; ``bad`` adds a key that is not a bucket."""
        keys = self.keys
        if self.flag:
            i = bisect_right(self.cum, rng.random() * self.cum[-1])
            values = {"0": 1, "1": 0} if i == 0 else {"0": 0, "1": 1, "2": 0}
            s = i
            body = {"values": values, "sum": s, "sum_squares_lo": s, "sum_squares_hi": 0}
        else:
            n = max(1, int(self.samples * activity + rng.random()))
            if n == 1:
                items = [(bisect_right(self.cum, rng.random() * self.cum[-1]), 1)]
            else:
                items = sorted(Counter(rng.choices(self.slots, cum_weights=self.cum, k=n)).items())
            values = {keys[i]: c for i, c in items}
            last = items[-1][0] + 1
            if last < len(keys):
                values[keys[last]] = 0   # Firefox writes the empty bucket after the last one used
            reps = self.reps
            s = sum(reps[i] * c for i, c in items)
            if self.kind == "exponential":
                logs = self.logs
                body = {"values": values, "sum": s,
                        "log_sum": round(sum(logs[i] * c for i, c in items), 4),
                        "log_sum_squares": round(sum(logs[i] * logs[i] * c for i, c in items), 4)}
            else:
                sq = sum(reps[i] * reps[i] * c for i, c in items)
                body = {"values": values, "sum": s, "sum_squares_lo": sq & 0xFFFFFFFF,
                        "sum_squares_hi": sq >> 32}
        if bad:
            values[self.bad_key] = 1
        return self.head + orjson.dumps(body)[1:]

