"""Pings of every kind the aggregates cover, a Histograms.json for them, and an independent sum.

The expected aggregates (:func:`expected`) are computed here, straight from
the pings and the SPEC's rules, without any of ``aggregations``' code, so a
test that compares the two checks the model rather than restating it.
"""

from __future__ import annotations

import bisect
import html
import math
import random
import uuid
from pathlib import Path

import orjson

from converter.synthetic import SyntheticRecord, write_layout

REPO, REV = "mozilla-central", "aaaaaaaaaaaa"
REV_NEW = "bbbbbbbbbbbb"
REVISION = f"https://hg.mozilla.org/{REPO}/rev/{REV}"
REVISION_NEW = f"https://hg.mozilla.org/{REPO}/rev/{REV_NEW}"

HISTOGRAMS = {
    "GC_MS": {"kind": "exponential", "low": 1, "high": 10000, "n_buckets": 20,
              "description": "GC time <ms> & more"},
    "PAGE_LINEAR": {"kind": "linear", "low": 1, "high": 100, "n_buckets": 10},
    "A_BOOLEAN": {"kind": "boolean"},
    "A_FLAG": {"kind": "flag"},
    "A_COUNT": {"kind": "count"},
    "AN_ENUM": {"kind": "enumerated", "n_values": 5},
    "A_CATEGORY": {"kind": "categorical", "labels": ["red", "green", "blue"]},
    "KEYED_EXP": {"kind": "exponential", "high": 1000, "n_buckets": 10, "keyed": True},
}
# The newer revision changes GC_MS's buckets: its pings must not be added to the older ones.
HISTOGRAMS_NEW = {**HISTOGRAMS, "GC_MS": {"kind": "exponential", "low": 1, "high": 10000,
                                          "n_buckets": 30, "description": "GC time, finer"}}


def _exp(low, high, n):
    out, cur = [0, low], low
    for k in range(2, n):
        lc = math.log(cur)
        nxt = int(math.floor(math.exp(lc + (math.log(high) - lc) / (n - k)) + 0.5))
        cur = nxt if nxt > cur else cur + 1
        out.append(cur)
    return out


def _lin(low, high, n):
    return [0] + [(2 * (low * (n - 1 - i) + high * (i - 1)) + n - 2) // (2 * (n - 2))
                  for i in range(1, n)]


def buckets_of(spec: dict) -> list[int]:
    kind = spec["kind"]
    if kind in ("boolean", "flag", "count"):
        return _lin(1, 2, 3)
    if kind == "enumerated":
        return _lin(1, spec["n_values"], spec["n_values"] + 1)
    if kind == "categorical":
        n = max(len(spec["labels"]), 50)
        return _lin(1, n, n + 1)
    make = _exp if kind == "exponential" else _lin
    return make(spec.get("low", 1), spec["high"], spec["n_buckets"])


COUNT_BOUNDS = _exp(1, 10000, 100)
SIMPLE_BOUNDS = _exp(1, 30000, 50)


def write_revisions(cache_dir: Path) -> Path:
    for rev, specs in ((REV, HISTOGRAMS), (REV_NEW, HISTOGRAMS_NEW)):
        d = cache_dir / REPO / rev
        d.mkdir(parents=True, exist_ok=True)
        (d / "Histograms.json").write_bytes(orjson.dumps(specs))
    return cache_dir


CHANNELS = ["nightly", "beta"]
VERSIONS = {"nightly": ["45.0a1", "46.0a1"], "beta": ["44.0"]}
BUILDS = ["20151201030204", "20151202030204", "20151203030204"]
DAYS = ["20151203", "20151204"]
OSES = [("WINNT", "6.1"), ("Darwin", "15.0.0"), ("Linux", "4.2.0-generic")]
ARCHES = ["x86", "x86-64"]


def _array(rng, spec, stats=True):
    b = buckets_of(spec)
    h = [0] * len(b)
    for _ in range(rng.randrange(0, 4)):
        h[rng.randrange(len(b))] += rng.randrange(1, 9)
    total = sum(c * b[i] for i, c in enumerate(h))
    return h + ([total, -1, -1, 0, 0] if stats else [])


def _values(rng, spec):
    """The raw ``{values, sum}`` form (child payloads are not converted)."""
    b = buckets_of(spec)
    h = {}
    for _ in range(rng.randrange(1, 4)):
        i = rng.randrange(len(b))
        h[str(b[i])] = h.get(str(b[i]), 0) + rng.randrange(1, 5)
    return {"values": h, "sum": sum(int(k) * v for k, v in h.items())}


def make_ping(rng: random.Random) -> tuple[list[str], dict]:
    """(layout dimensions, converted payload): classic (ver 2) or unified (version 5)."""
    channel = rng.choice(CHANNELS)
    version = rng.choice(VERSIONS[channel])
    build = rng.choice(BUILDS)
    day = rng.choice(DAYS)
    os_name, os_version = rng.choice(OSES)
    arch = rng.choice(ARCHES)
    new_rev = build == BUILDS[-1]
    specs = HISTOGRAMS_NEW if new_rev else HISTOGRAMS
    revision = REVISION_NEW if new_rev else REVISION
    histograms = {}
    for name, spec in specs.items():
        if spec.get("keyed") or rng.random() < 0.25:
            continue
        histograms[name] = _array(rng, spec)
    if rng.random() < 0.3:
        histograms["STARTUP_GC_MS"] = _array(rng, specs["GC_MS"])
    if rng.random() < 0.1:
        histograms["A_COUNT"] = _array(rng, specs["A_COUNT"])[:3] + [-1, -1, -1, 0, 0]
    simple = {"uptime": rng.randrange(0, 40000), "js": {"customIter": rng.randrange(0, 3)},
              "negative": -4, "text": "abc", "flag": True, "ratio": rng.randrange(0, 200) / 4}
    unified = rng.random() < 0.5
    reason = "main" if unified else "saved-session"
    app = "Firefox" if rng.random() < 0.9 else "Fennec"
    info = {"reason": reason, "appName": app, "appVersion": version,
            "appUpdateChannel": channel, "appBuildID": build}
    if not unified:
        payload = {"ver": 2, "info": {**info, "OS": os_name, "version": os_version, "arch": arch,
                                      "revision": revision},
                   "histograms": histograms, "simpleMeasurements": simple}
        if rng.random() < 0.1:
            del payload["info"]["arch"]
    else:
        keyed = {"KEYED_EXP": {k: _array(rng, specs["KEYED_EXP"])
                               for k in rng.sample(["a.b", "", "c$d", "x"], 2)}}
        content = {"histograms": {"GC_MS": _values(rng, specs["GC_MS"]),
                                  "AN_ENUM": _values(rng, specs["AN_ENUM"])},
                   "scalars": {"dom.clicks": rng.randrange(0, 50)}}
        payload = {
            "version": 5, "type": "main", "info": info,
            "application": {"name": app, "version": version, "channel": channel,
                            "buildId": build},
            "environment": {"build": {"architecture": arch},
                            "system": {"os": {"name": "Windows_NT" if os_name == "WINNT"
                                              else os_name, "version": os_version}}},
            "payload": {
                "info": {"revision": revision},
                "histograms": histograms, "keyedHistograms": keyed,
                "simpleMeasurements": simple,
                "processes": {
                    "parent": {"scalars": {"browser.tabs": rng.randrange(0, 30),
                                           "browser.flag": True, "neg": -1},
                               "keyedScalars": {"browser.search": {
                                   "google": rng.randrange(0, 5), "bing": 1}}},
                    "content": content,
                },
            },
        }
    dims = [reason, app, channel, version, build, day]
    return dims, payload


def make_pings(n: int, seed: int = 1) -> list[tuple[str, list[str], dict]]:
    rng = random.Random(seed)
    return [(str(uuid.UUID(int=rng.getrandbits(128), version=4)), *make_ping(rng))
            for _ in range(n)]


def write_pings(base: Path, pings, records_per_file: int = 40) -> list[Path]:
    return write_layout(base, [SyntheticRecord(i, d, p) for i, d, p in pings],
                        records_per_file=records_per_file)


# ---------------------------------------------------------------------------
# The independent sum

def _cell(dims, payload):
    reason, app, channel, version, build, day = dims
    major = "".join(__import__("itertools").takewhile(str.isdigit, version))
    if "payload" in payload:
        env = payload["environment"]
        arch = env["build"]["architecture"]
        os_name, os_version = env["system"]["os"]["name"], env["system"]["os"]["version"]
    else:
        i = payload["info"]
        arch = i.get("arch", "unknown")
        os_name, os_version = i["OS"], i["version"]
    os_name = "Windows_NT" if os_name == "WINNT" else os_name
    if os_name == "Linux":
        os_version = os_version[:3]
    return {"channel": channel, "version": major, "build_id": build[:8], "submission_date": day,
            "application": app, "architecture": arch, "os": os_name, "osVersion": os_version}


def _place(bounds, v):
    return bisect.bisect_right(bounds, v) - 1


def _metric_values(payload, metric):
    """[(child, label, histogram, sum, revision spec)] that ``metric`` takes in one ping."""
    unified = "payload" in payload
    body = payload["payload"] if unified else payload
    revision = (body["info"]["revision"] if unified else payload["info"]["revision"])
    specs = HISTOGRAMS_NEW if revision == REVISION_NEW else HISTOGRAMS
    out = []
    if metric.startswith("SIMPLE_MEASURES_"):
        flat = {}

        def walk(d, prefix):
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(v, f"{prefix}_{k.upper()}")
                else:
                    flat[f"{prefix}_{k.upper()}"] = v
        walk(body["simpleMeasurements"], "SIMPLE_MEASURES")
        v = flat.get(metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0:
            h = [0] * len(SIMPLE_BOUNDS)
            h[_place(SIMPLE_BOUNDS, v)] = 1
            out.append(("parent", "", h, v, "simple"))
        return out
    if metric.startswith("SCALARS_"):
        for child, proc in (body.get("processes") or {}).items():
            for name, v in (proc.get("scalars") or {}).items():
                if "SCALARS_" + name.upper() == metric and type(v) is int and v >= 0:
                    h = [0] * 100
                    h[_place(COUNT_BOUNDS, v)] = 1
                    out.append((child, "", h, v, "count"))
            for name, kv in (proc.get("keyedScalars") or {}).items():
                if "SCALARS_" + name.upper() == metric:
                    for k, v in kv.items():
                        h = [0] * 100
                        h[_place(COUNT_BOUNDS, v)] = 1
                        out.append((child, k.upper(), h, v, "count"))
        return out
    count = metric.startswith("[[COUNT]]_")
    name = metric[len("[[COUNT]]_"):] if count else metric
    base = name[len("STARTUP_"):] if name.startswith("STARTUP_") else name
    spec = specs.get(base)
    if spec is None:
        return out
    n = len(buckets_of(spec))
    sections = [("parent", body.get("histograms") or {}, body.get("keyedHistograms") or {})]
    if unified:
        for child, proc in body["processes"].items():
            if child != "parent":
                sections.append((child, proc.get("histograms") or {}, {}))
    for child, hs, keyed in sections:
        entries = []
        if name in hs:
            entries.append(("", hs[name]))
        for label, v in (keyed.get(name) or {}).items():
            entries.append((label, v))
        for label, v in entries:
            if isinstance(v, dict):
                b = buckets_of(spec)
                h = [0] * n
                for k, c in v["values"].items():
                    h[b.index(int(k))] += c
                s = v["sum"]
            else:
                h, s = v[:n], v[n]
            if spec["kind"] == "count":
                if count and s >= 0:
                    ch = [0] * 100
                    ch[_place(COUNT_BOUNDS, s)] = 1
                    out.append((child, label, ch, s, "count"))
            elif not count:
                out.append((child, label, h, max(s, 0), spec))
    return out


def expected(pings, by, channel, version, dates, metric, filters=None, newest_spec=None):
    """{(date, label): [histogram, sum, count]} summed straight from the pings.

    ``newest_spec``: for histograms, only pings whose definition is this one count.
    """
    filters = filters or {}
    out: dict = {}
    for _, dims, payload in pings:
        cell = _cell(dims, payload)
        if cell["channel"] != channel or cell["version"] != version or cell[by] not in dates:
            continue
        per_ping: dict = {}
        for child, label, h, s, spec in _metric_values(payload, metric):
            if newest_spec is not None and isinstance(spec, dict) and spec != newest_spec:
                continue
            row = {**cell, "child": child, "label": label}
            if any(row.get(k) != v for k, v in filters.items()):
                continue
            key = (cell[by], label, child)
            if key in per_ping:
                old = per_ping[key]
                per_ping[key] = [[a + b for a, b in zip(old[0], h)], old[1] + s]
            else:
                per_ping[key] = [list(h), s]
        for (date, label, _), (h, s) in per_ping.items():
            key = (date, label)
            if key in out:
                old = out[key]
                out[key] = [[a + b for a, b in zip(old[0], h)], old[1] + s, old[2] + 1]
            else:
                out[key] = [h, s, 1]
    return out


def description(name: str) -> str:
    return html.escape(HISTOGRAMS.get(name, {}).get("description", ""))
