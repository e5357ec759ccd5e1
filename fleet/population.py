"""The simulated fleet: clients with stable profiles, and the submissions they send.

:class:`Fleet` is built from a seed and a :class:`~fleet.scenario.Scenario`.
It makes ``pings / (days * pings_per_client_day)`` clients, each with a
channel, OS and OS version, architecture, locale, CPU count, memory and IP
that never change, and spreads the pings over the scenario's days: every
ping goes to a random client at a random time of its day, so a client sends
a handful per day.  A client runs its channel's build of the day (minus an
update lag of its own), so nightly and aurora get a new build ID every day.

``Fleet.submissions()`` yields :class:`Submission` tuples in time order,
the same bytes for the same seed and scenario whichever output consumes them.

Speed: a ping carries ~150 histograms of its revision.  The metrics an
effect names (and the simple measurements) are drawn for every ping from
their segment's distribution, effects included; the other metrics of
:data:`fleet.scenario.LIVE_HISTOGRAMS` come from :data:`LIVE_POOL` draws of
their segment's distribution; every other histogram (whose distribution does not
depend on the segment) comes from :data:`POOL_SIZE` draws made once per
revision, picked in :data:`GROUPS` ready-joined blocks.  The body is
joined from those JSON pieces, so generating a ping costs about as much as
gzipping it.
"""

from __future__ import annotations

import datetime as dt
import gzip
import math
import random
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, NamedTuple

import orjson

from fleet.channels import APP_ID, APP_NAME, CHANNELS, Channel, histograms
from fleet.metrics import Sampler, base_params
from fleet.scenario import LIVE_HISTOGRAMS, SIMPLE_MEASURES, Scenario

DAY_MS = 86_400_000
POOL_SIZE = 8
LIVE_POOL = 32          # draws per segment of a live metric that no effect names
GROUPS = 12             # background histograms are picked in this many blocks a ping
PRESENCE = 0.8          # the share of pings that carry a given background histogram
# How much slower/faster each channel and OS is at baseline (time-like metrics).
CHANNEL_FACTOR = {"release": 1.0, "beta": 1.04, "aurora": 1.09, "nightly": 1.15}
OS_FACTOR = {"WINNT": 1.0, "Darwin": 0.95, "Linux": 0.9}
# OS versions as classic pings report them (info.version), with their shares.
OS_VERSIONS = {
    "WINNT": (("5.1", 0.28), ("6.0", 0.05), ("6.1", 0.55), ("6.2", 0.12)),
    "Darwin": (("11.4.2", 0.2), ("12.4.0", 0.55), ("12.5.0", 0.25)),
    "Linux": (("3.2.0-4-amd64", 0.3), ("3.8.0-29-generic", 0.4), ("3.10.9-200.fc19.x86_64", 0.3)),
}
LOCALES = (("en-US", 0.45), ("de", 0.12), ("fr", 0.08), ("es-ES", 0.07), ("ru", 0.07),
           ("pt-BR", 0.06), ("ja", 0.05), ("pl", 0.05), ("zh-CN", 0.05))
UPDATE_LAG = (0, 0, 0, 0, 1, 1, 2, 3)     # days behind the newest build
MALFORMED_REASON = {"bad_json": "bad_payload", "unknown_bucket": "invalid_bucket",
                    "missing_info": "bad_payload"}
_TAIL = (b',"slowSQL":{"mainThread":{},"otherThreads":{}},'
         b'"chromeHangs":{"memoryMap":[],"stacks":[],"durations":[]},'
         b'"lateWrites":{"memoryMap":[],"stacks":[]},"addonHistograms":{}}')


class Submission(NamedTuple):
    """One submission as the receiver would store it: unpacks as ``path, body, timestamp_ms, client_ip``.

    ``path`` is the URL path after the prefix (``docId/reason/app/version/channel/build``),
    ``body`` the gzip body, ``timestamp_ms`` the simulated receive time,
    ``client_ip`` the client's address.  ``malformed`` is the kind of damage
    done on purpose (a :class:`MalformedSubmission`), None for a good ping.
    """

    path: str
    body: bytes
    timestamp_ms: int
    client_ip: str
    malformed = None          # not a field: a good submission is a plain 4-tuple


class MalformedSubmission(Submission):
    """A submission broken on purpose; ``malformed`` says how (a key of MALFORMED_REASON)."""

    def __new__(cls, path: str, body: bytes, timestamp_ms: int, client_ip: str, malformed: str):
        self = super().__new__(cls, path, body, timestamp_ms, client_ip)
        self.malformed = malformed
        return self


@dataclass(frozen=True, slots=True)
class Client:
    """A simulated Firefox installation; its profile never changes."""

    index: int
    channel: str
    os: str
    os_version: str
    arch: str
    locale: str
    cpucount: int
    memsize: int
    ip: str
    update_lag: int
    info: bytes      # the ``info`` members that never change, as JSON without braces


def _pick(rng: random.Random, table) -> str:
    names = [n for n, _ in table]
    return rng.choices(names, weights=[w for _, w in table])[0]


def make_client(rng: random.Random, index: int, scenario: Scenario) -> Client:
    """One client drawn from the scenario's proportions."""
    channel = rng.choices(list(scenario.channels), weights=list(scenario.channels.values()))[0]
    os_name = rng.choices(list(scenario.os), weights=list(scenario.os.values()))[0]
    os_version = _pick(rng, OS_VERSIONS[os_name])
    if os_name == "WINNT":
        wow64 = rng.random() < 0.45
        arch = "x86"
    else:
        wow64 = False
        arch = "x86-64" if os_name == "Darwin" or rng.random() < 0.75 else "x86"
    cpucount = rng.choice((1, 2, 2, 2, 4, 4, 4, 8))
    memsize = rng.choice((1024, 2048, 2048, 3072, 4096, 4096, 8192, 16384)) - rng.randrange(0, 300)
    ip = f"198.{18 + (index >> 16) % 2}.{(index >> 8) & 255}.{index & 255}"  # RFC 2544 test range
    locale = _pick(rng, LOCALES)
    fixed = {"OS": os_name, "appID": APP_ID, "appName": APP_NAME, "locale": locale,
             "cpucount": cpucount, "memsize": memsize, "arch": arch, "version": os_version,
             "hasMMX": True, "hasSSE": True, "hasSSE2": cpucount > 1 or rng.random() < 0.8,
             "isWow64": wow64}
    return Client(index, channel, os_name, os_version, arch, locale, cpucount, memsize, ip,
                  rng.choice(UPDATE_LAG), orjson.dumps(fixed)[1:-1])


class Fleet:
    """A population built from a seed and a scenario; see the module docstring.

    >>> fleet = Fleet(pings=1000, seed=1)
    >>> for sub in fleet.submissions(): ...
    """

    def __init__(self, pings: int, seed: int = 0, scenario: Scenario | None = None):
        if pings < 0:
            raise ValueError("pings must be 0 or more")
        self.pings = pings
        self.seed = seed
        self.scenario = scenario = scenario or Scenario()
        per_client = scenario.days * scenario.pings_per_client_day
        n_clients = max(1, math.ceil(pings / per_client))
        rng = random.Random(f"fleet:{seed}:clients")
        self.clients = [make_client(rng, i, scenario) for i in range(n_clients)]
        self.regression_build = self._regression_build()
        self._segments: dict[tuple[str, str], _Segment] = {}
        self._rev_pools: dict[str, list[list[bytes]]] = {}

    # -- builds ------------------------------------------------------------

    def day(self, index: int) -> dt.date:
        return self.scenario.start + dt.timedelta(days=index)

    def build_id(self, channel: Channel, day: dt.date) -> str:
        """The newest build of ``channel`` offered on ``day``."""
        if channel.daily_builds:
            return day.strftime("%Y%m%d") + channel.build_time
        stamp = day.strftime("%Y%m%d")
        found = channel.builds[0][1]
        for offered, build in channel.builds:
            if offered <= stamp:
                found = build
        return found

    def _regression_build(self) -> str | None:
        reg = self.scenario.regression
        if reg is None:
            return None
        if reg.build is not None:
            return reg.build
        return self.build_id(CHANNELS[reg.channel], self.day(self.scenario.days // 2))

    def describe(self) -> list[str]:
        """What the data should show: the population and every effect that is on."""
        s = self.scenario
        total = sum(s.channels.values())
        lines = [f"{self.pings} pings from {len(self.clients)} clients over {s.days} days from {s.start_date} "
                 f"(seed {self.seed}), about {s.pings_per_client_day:g} per client and day",
                 "channels: " + ", ".join(f"{n} {CHANNELS[n].version} {v / total:.0%}"
                                          for n, v in s.channels.items() if v > 0),
                 "OS: " + ", ".join(f"{n} {v / sum(s.os.values()):.0%}" for n, v in s.os.items() if v > 0),
                 "baseline: time-like metrics are slower on pre-release channels ("
                 + ", ".join(f"{n} x{f:g}" for n, f in CHANNEL_FACTOR.items()) + ")"]
        if s.regression:
            r = s.regression
            lines.append(f"effect regression: {r.metric} x{r.factor:g} on {r.channel} from build "
                         f"{self.regression_build} on")
        if s.os_difference:
            o = s.os_difference
            lines.append(f"effect os_difference: {o.metric} x{o.factor:g} on {o.os} (all channels)")
        if s.malformed:
            m = s.malformed
            lines.append(f"effect malformed: {m.fraction:.2%} of submissions broken in turn as "
                         + ", ".join(f"{k} (converter reason {MALFORMED_REASON[k]})" for k in m.kinds))
        if not (s.regression or s.os_difference or s.malformed):
            lines.append("no effects are on")
        return lines

    # -- generation --------------------------------------------------------

    def schedule(self) -> Iterator[tuple[int, int, Client]]:
        """``(timestamp_ms, day index, client)`` of every ping in time order, spread evenly over the days."""
        rng = random.Random(f"fleet:{self.seed}:schedule")
        days = self.scenario.days
        clients = self.clients
        start_ms = int(dt.datetime.combine(self.scenario.start, dt.time(),
                                           tzinfo=dt.timezone.utc).timestamp() * 1000)
        for d in range(days):
            count = self.pings * (d + 1) // days - self.pings * d // days
            base = start_ms + d * DAY_MS
            day = sorted((base + rng.randrange(DAY_MS), rng.randrange(len(clients))) for _ in range(count))
            for ts, c in day:
                yield ts, d, clients[c]

    def submissions(self) -> Iterator[Submission]:
        """Every submission, in time order; deterministic for a seed and scenario."""
        rng = random.Random(f"fleet:{self.seed}:pings")
        s = self.scenario
        malformed = s.malformed
        n_bad = 0
        level = s.gzip_level
        start = s.start
        for ts, d, client in self.schedule():
            channel = CHANNELS[client.channel]
            build = self.build_id(channel, start + dt.timedelta(days=d - client.update_lag))
            reason = "saved-session" if rng.random() < s.saved_session_share else "idle-daily"
            kind = None
            if malformed is not None and rng.random() < malformed.fraction:
                kind = malformed.kinds[n_bad % len(malformed.kinds)]
                n_bad += 1
            body = self.ping(rng, client, channel, build, reason, kind)
            doc_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            path = f"{doc_id}/{reason}/{APP_NAME}/{channel.version}/{channel.name}/{build}"
            gz = gzip.compress(body, level, mtime=0)
            yield Submission(path, gz, ts, client.ip) if kind is None else \
                MalformedSubmission(path, gz, ts, client.ip, kind)

    def ping(self, rng: random.Random, client: Client, channel: Channel, build: str, reason: str,
             malformed: str | None = None) -> bytes:
        """The uncompressed JSON body of one classic (``ver: 1``) ping."""
        segment = self._segment(channel.name, client.os)
        regressed = self.regression_build is not None and build >= self.regression_build \
            and channel.name == self.scenario.regression.channel
        activity = rng.lognormvariate(0.0, 0.5)
        info = (b'{"reason":"%s","appVersion":"%s","appBuildID":"%s","platformBuildID":"%s",'
                b'"appUpdateChannel":"%s","revision":"%s",%s}') % (
            reason.encode(), channel.version.encode(), build.encode(), build.encode(),
            channel.name.encode(), channel.revision_url.encode(), client.info)
        parts = segment.live_histograms(rng, activity, regressed, malformed == "unknown_bucket")
        parts += segment.pooled_histograms(rng)
        body = b"".join((b'{"ver":1,"info":', info, b',"simpleMeasurements":',
                         segment.simple_measures(rng, activity, regressed),
                         b',"histograms":{', b",".join(parts), b"}", _TAIL))
        if malformed == "bad_json":
            return body[: len(body) // 2]
        if malformed == "missing_info":
            return b'{"ver":1,' + body[body.index(b'"simpleMeasurements"'):]
        return body

    def _pools(self, rev: str) -> list[list[bytes]]:
        """The background histograms of a revision as GROUPS groups of POOL_SIZE ready blocks.

        Each histogram is drawn POOL_SIZE times; a block is one group's
        histograms, each present with probability PRESENCE and then one of its
        draws, joined.  A ping takes one block per group: a few random numbers
        instead of one or two per histogram.
        """
        pools = self._rev_pools.get(rev)
        if pools is None:
            rng = random.Random(f"fleet:{self.seed}:pools:{rev}")
            draws = [[sampler.draw(rng, a) for a in _ACTIVITIES]
                     for sampler in _background(rev, self.scenario.histograms_per_ping)]
            pools = []
            for g in range(GROUPS):
                members = draws[g::GROUPS]
                if members:
                    pools.append([b",".join(d[rng.randrange(POOL_SIZE)] for d in members
                                            if rng.random() < PRESENCE) for _ in range(POOL_SIZE)])
            self._rev_pools[rev] = pools
        return pools

    def _segment(self, channel: str, os_name: str) -> "_Segment":
        key = (channel, os_name)
        seg = self._segments.get(key)
        if seg is None:
            seg = self._segments[key] = _Segment(self, channel, os_name)
        return seg


class _Segment:
    """Everything prepared once per (channel, OS): the live samplers with their factors."""

    def __init__(self, fleet: Fleet, channel: str, os_name: str):
        s = fleet.scenario
        rev = CHANNELS[channel].rev
        defs = histograms(rev)
        factor = CHANNEL_FACTOR[channel] * OS_FACTOR[os_name]
        self.os_effect = s.os_difference if s.os_difference and s.os_difference.os == os_name else None
        self.regression = s.regression if s.regression and s.regression.channel == channel else None
        self.factor = factor
        # Metrics an effect names are drawn for every ping; the other live metrics come
        # from LIVE_POOL draws of this segment's own distribution.
        drawn = {e.metric for e in (s.regression, s.os_difference) if e is not None}
        rng = random.Random(f"fleet:{fleet.seed}:segment:{channel}:{os_name}")
        self.live: list[tuple[Sampler, Sampler | None, list[bytes] | None]] = []
        for name in LIVE_HISTOGRAMS:
            d = defs.get(name)
            normal = Sampler(d, base_params(d), factor * self._effect_factor(name))
            reg = None
            if self.regression and self.regression.metric == name:
                reg = Sampler(d, base_params(d), factor * self._effect_factor(name) * self.regression.factor)
            pool = None if name in drawn else [normal.draw(rng, rng.lognormvariate(0.0, 0.5))
                                               for _ in range(LIVE_POOL)]
            self.live.append((normal, reg, pool))
        self.gc_index = LIVE_HISTOGRAMS.index("GC_MS")
        # Every other histogram: a fixed set per revision, each present in PRESENCE of the
        # pings, so that a ping carries about histograms_per_ping (0: all of them).
        self.pools = fleet._pools(rev)

    def _effect_factor(self, name: str) -> float:
        o = self.os_effect
        return o.factor if o is not None and o.metric == name else 1.0

    def live_histograms(self, rng: random.Random, activity: float, regressed: bool,
                        bad_bucket: bool) -> list[bytes]:
        out = []
        for i, (normal, reg, pool) in enumerate(self.live):
            sampler = reg if regressed and reg is not None else normal
            if bad_bucket and i == self.gc_index:
                out.append(sampler.draw(rng, activity, bad=True))
            elif pool is not None:
                out.append(pool[int(rng.random() * LIVE_POOL)])
            else:
                out.append(sampler.draw(rng, activity))
        return out

    def pooled_histograms(self, rng: random.Random) -> list[bytes]:
        random_ = rng.random
        return [block for block in (pool[int(random_() * POOL_SIZE)] for pool in self.pools) if block]

    def simple_measures(self, rng: random.Random, activity: float, regressed: bool) -> bytes:
        f = self.factor
        factors = {name: self._effect_factor(name) * (self.regression.factor if regressed
                                                       and self.regression.metric == name else 1.0)
                   for name in SIMPLE_MEASURES}
        lv = rng.lognormvariate
        main = int(lv(math.log(900 * f), 0.4) * factors["main"])
        first_paint = main + int(lv(math.log(1800 * f), 0.5) * factors["firstPaint"])
        restored = first_paint + int(lv(math.log(150 * f), 0.7) * factors["sessionRestored"])
        return orjson.dumps({
            "uptime": max(1, int(lv(math.log(45), 1.0) * activity * factors["uptime"])),
            "start": int(lv(math.log(40), 0.3)), "main": main, "firstPaint": first_paint,
            "sessionRestored": restored, "startupInterrupted": 0, "debuggerAttached": 0,
            "shutdownDuration": int(lv(math.log(900 * f), 0.6) * factors["shutdownDuration"]),
            "savedPings": rng.randrange(0, 8)})


@lru_cache(maxsize=None)
def _background(rev: str, per_ping: int) -> list[Sampler]:
    """The samplers of the histograms besides the live ones that pings of ``rev`` carry.

    Their distributions do not depend on the segment, only their draws do,
    so the samplers are shared by every segment of a revision.
    """
    defs = histograms(rev)
    others = sorted(n for n in defs.names if n not in LIVE_HISTOGRAMS)
    if per_ping:
        want = max(0, per_ping - len(LIVE_HISTOGRAMS))
        # A stable choice by name, the same in every run.
        others = sorted(sorted(others, key=lambda n: random.Random("fleet-presence:" + n).random())
                        [:round(want / PRESENCE)])
    return [Sampler(defs.get(n), base_params(defs.get(n))) for n in others]


# Activities the pool draws are made at: from a short idle session to a long one.
_ACTIVITIES = tuple(math.exp(-1.0 + 2.0 * i / (POOL_SIZE - 1)) for i in range(POOL_SIZE))
