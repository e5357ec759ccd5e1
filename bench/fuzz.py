"""Fuzzing every reader of outside input, from real data mutated at random.

Each target turns a seeded ``random.Random`` into one hostile input (a
mutation of real data: the fixture raw log and ping, published layout files,
the packaged schema and filter, the services' config files) and feeds it to
the library function that reads such input in production.  An input may be
refused, but only with the package's own error class and a message (a
"classified" failure); anything else, or a refusal with an empty message, is
a crash.  Accepted inputs are checked too (a converted record is JSON, a
match document holds no injected operator).

    .venv/bin/python bench/fuzz.py                    # 100,000 inputs per target
    .venv/bin/python bench/fuzz.py -n 2000 --seed 7   # shorter, another seed
    .venv/bin/python bench/fuzz.py --only rawlog

tests/test_fuzz.py runs the same targets on a fixed seed for a few seconds
each.  Adding a target is a class with ``make(rng)`` and ``check(value)``
and one line in ``TARGETS``.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import gzip
import lzma
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before bench/ (whose receiver.py would shadow the package)

import orjson  # noqa: E402
import zstandard  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
REPO, REV = "releases/mozilla-release", "a55c55edf302"


class Crash(Exception):
    """An input made a reader fail in a way that is not its documented error."""


# --- mutators ----------------------------------------------------------------------

INTERESTING_INTS = [0, -1, 1, 2**31 - 1, -2**31, 2**63 - 1, -2**63, 2**64, 10**30, 255, 65536]
INTERESTING_STRINGS = ["", "$where", "$function", "$gt", "a.b", "..", "../../etc/passwd", "/",
                       "\x00", "\udcff"[:0] + "\u2028", "é" * 3, "x" * 300, "NaN", "-1", "1e308",
                       "%2e%2e", "con", "\t", "\n", " "]


def mutate_bytes(data: bytes, rng: random.Random, corpus: list[bytes] = ()) -> bytes:
    """One to four byte-level mutations: flips, deletions, insertions, copies, truncation, splices."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        n = len(b)
        if op == 0 and n:  # bit flips
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(n)
                b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # delete a range
            i = rng.randrange(n)
            del b[i:i + rng.randint(1, 64)]
        elif op == 2:  # insert random or interesting bytes
            i = rng.randint(0, n)
            ins = rng.choice([rng.randbytes(rng.randint(1, 16)), b"\xff" * 4, b"\x00" * 4,
                              b"\x1e", b"\x1e\x01", b"\x1e\x02", b"\n", b"\t", b"\x7f" * 8])
            b[i:i] = ins
        elif op == 3 and n:  # truncate
            del b[rng.randrange(n):]
        elif op == 4 and n:  # overwrite with an interesting integer
            i = rng.randrange(n)
            v = rng.choice(INTERESTING_INTS) & 0xFFFFFFFF
            b[i:i + 4] = v.to_bytes(4, rng.choice(["big", "little"]))
        elif op == 5 and n:  # duplicate a range
            i = rng.randrange(n)
            j = min(n, i + rng.randint(1, 256))
            b[j:j] = b[i:j]
        elif op == 6 and corpus:  # splice with another input
            other = rng.choice(corpus)
            if other:
                i, j = rng.randint(0, n), rng.randrange(len(other))
                b = b[:i] + other[j:j + rng.randint(1, 512)]
    return bytes(b)


def random_json(rng: random.Random, depth: int = 0) -> Any:
    k = rng.randrange(9 if depth < 3 else 6)
    if k == 0:
        return None
    if k == 1:
        return rng.choice([True, False])
    if k == 2:
        return rng.choice(INTERESTING_INTS + [rng.randint(-1000, 1000)])
    if k == 3:
        return rng.choice([0.5, -0.0, 1e308, -1e308, 3.14, 1e-300])
    if k in (4, 5):
        return rng.choice(INTERESTING_STRINGS + [str(rng.randint(-5, 200))])
    if k in (6, 7):
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(INTERESTING_STRINGS + ["values", "sum", "info", "ver"]):
            random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def mutate_json(doc: Any, rng: random.Random, focus: Callable[[Any], list] | None = None) -> Any:
    """A deep copy of ``doc`` with one to four structural mutations at random nodes."""
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 4)):
        containers = focus(doc) if focus else []
        if not containers:
            containers = _containers(doc)
        if not containers:
            return random_json(rng)
        node = rng.choice(containers)
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        op = rng.randrange(4)
        if op == 0 and keys:  # replace a value
            node[rng.choice(keys)] = random_json(rng)
        elif op == 1 and keys:  # delete
            del node[rng.choice(keys)]
        elif op == 2:  # add
            if isinstance(node, dict):
                node[rng.choice(INTERESTING_STRINGS + [str(rng.randint(-3, 120))])] = random_json(rng)
            else:
                node.insert(rng.randint(0, len(node)), random_json(rng))
        elif keys:  # change a number or string slightly
            key = rng.choice(keys)
            v = node[key]
            if isinstance(v, bool) or v is None:
                node[key] = not v
            elif isinstance(v, (int, float)):
                node[key] = rng.choice([-v, v * 1000, v + 1, str(v), float(v) + 0.5])
            elif isinstance(v, str):
                node[key] = rng.choice([v[:len(v) // 2], v + rng.choice(INTERESTING_STRINGS), ""])
    return doc


def dumps(doc: Any) -> bytes:
    """JSON of a mutated document (the standard library writes integers of any size)."""
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _containers(doc: Any, out: list | None = None, limit: int = 4000) -> list:
    out = [] if out is None else out
    if isinstance(doc, (dict, list)) and len(out) < limit:
        out.append(doc)
        for v in (doc.values() if isinstance(doc, dict) else doc):
            _containers(v, out, limit)
    return out


# --- targets ------------------------------------------------------------------------

class Target:
    name = ""
    allowed: tuple[type[BaseException], ...] = ()

    def setup(self, work: Path) -> None:
        pass

    def make(self, rng: random.Random) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Stop what ``setup`` started."""

    def check(self, value: Any) -> str | None:
        """Feed one input; return the error class name when it was refused (or None)."""
        raise NotImplementedError


class RawLogTarget(Target):
    """receiver.rawlog: mutated v1/v2 raw logs, read whole, bodies inflated."""

    name = "rawlog"

    def setup(self, work: Path) -> None:
        from receiver.rawlog import RawLogError, encode_record

        self.allowed = (RawLogError,)
        real = (FIXTURES / "raw" / "telemetry1.v1.log").read_bytes()
        v2 = b"".join(encode_record(f"id{i}/idle-daily/Firefox/23.0/release/2013",
                                    gzip.compress(b'{"ver": 1}' * i), 1_700_000_000_000 + i,
                                    ip="10.0.0.1") for i in range(1, 6))
        v1 = b"".join(encode_record(f"d{i}", b"x" * i, 1_700_000_000_000) for i in range(1, 6))
        self.corpus = [real, v1, v2, real[:5000] + v1]
        self.file = work / "fuzz.log"

    def make(self, rng):
        return mutate_bytes(rng.choice(self.corpus), rng, self.corpus), rng.choice([None, 1, 2])

    def check(self, value):
        from receiver.rawlog import RawLogReader

        data, version = value
        self.file.write_bytes(data)
        reader = RawLogReader(self.file, version=version)
        refused = None
        for rec in reader:
            assert isinstance(rec.path, str) and rec.end > rec.offset
            try:
                rec.inflate(1 << 20)
            except self.allowed as e:
                refused = _classified(e)
        if reader.stats.skipped_bytes and not reader.stats.errors:
            raise Crash("bytes skipped without a reason")
        return refused or ("ReadStats.errors" if reader.stats.errors else None)


class ConversionTarget(Target):
    """converter.convert: the real fixture ping with its structure and histograms mutated."""

    name = "conversion"

    def setup(self, work: Path) -> None:
        from converter.convert import Converter
        from converter.errors import RecordError
        from converter.revisions import RevisionCache, write_revision
        from converter.schema import Schema
        from receiver.rawlog import read_records

        self.allowed = (RecordError,)
        cache = work / "cache"
        write_revision(cache, REPO, REV, (FIXTURES / "histograms" / f"{REV}.Histograms.json").read_bytes())
        self.converter = Converter(Schema.load(FIXTURES / "telemetry_schema.json"),
                                   RevisionCache(cache, None), max_uncompressed=400_000)
        self.base = next(iter(read_records(FIXTURES / "raw" / "telemetry1.v1.log")))
        self.doc = orjson.loads(gzip.decompress(self.base.data))
        # A smaller copy of the ping (30 histograms) so that most of the time goes to mutations.
        hist = self.doc["histograms"]
        self.small = dict(self.doc, histograms={k: hist[k] for k in list(hist)[:30]})

    def make(self, rng):
        from receiver.rawlog import Record

        kind = rng.randrange(10)
        if kind < 6:  # histogram mutations
            doc = mutate_json(self.small, rng, focus=lambda d: _histogram_nodes(d, rng))
        elif kind < 9:  # structure mutations
            doc = mutate_json(self.small, rng)
        else:  # bytes of the body itself
            body = mutate_bytes(orjson.dumps(self.small), rng)
            return Record(self.base.path, body if rng.random() < 0.5 else gzip.compress(body),
                          self.base.timestamp)
        path = self.base.path
        if rng.random() < 0.2:
            parts = path.split("/")
            parts[rng.randrange(len(parts))] = rng.choice(INTERESTING_STRINGS)
            path = "/".join(parts)
        body = dumps(doc)
        return Record(path, gzip.compress(body, compresslevel=1) if rng.random() < 0.5 else body,
                      self.base.timestamp)

    def check(self, record):
        from importer.document import DocumentError, make_document

        try:
            converted = self.converter.convert_record(record)
        except self.allowed as e:
            return _classified(e)
        doc_id, _, text = converted.line.rstrip(b"\n").partition(b"\t")
        orjson.loads(text)  # the published line is JSON
        if b"\n" in converted.line.rstrip(b"\n"):
            raise Crash("a converted record spans lines")
        # ... and the importer turns it into a document, or refuses it with a reason.
        try:
            make_document(doc_id.decode(), text.decode(), ["reason", "appName", "appUpdateChannel",
                                                           "appVersion", "appBuildID",
                                                           "submission_date"])
        except DocumentError as e:
            return _classified(e)
        return None


def _histogram_nodes(doc: Any, rng: random.Random) -> list:
    h = doc.get("histograms") if isinstance(doc, dict) else None
    if not isinstance(h, dict) or not h:
        return []
    name = rng.choice(list(h))
    entry = h[name]
    nodes = [h]
    if isinstance(entry, dict):
        nodes.append(entry)
        if isinstance(entry.get("values"), dict):
            nodes.append(entry["values"])
    return nodes


class LayoutTarget(Target):
    """converter.layout: published zstd/lzma files corrupted, truncated, or with wrong lines."""

    name = "layout"

    def setup(self, work: Path) -> None:
        from converter.layout import LayoutError

        self.allowed = (LayoutError,)
        lzma_files = sorted((FIXTURES / "converted").rglob("*.lzma"))
        text = b"".join(lzma.decompress(p.read_bytes()) for p in lzma_files)
        self.text = text[:200_000]
        self.compressed = {"lzma": [p.read_bytes() for p in lzma_files],
                           "zst": [zstandard.ZstdCompressor(level=3).compress(self.text),
                                   zstandard.ZstdCompressor(level=1).compress(self.text[:5000])
                                   + zstandard.ZstdCompressor().compress(b"a\t{}\n")]}
        self.dir = work / "layout"
        self.dir.mkdir()

    def make(self, rng):
        codec = rng.choice(["lzma", "zst"])
        if rng.random() < 0.5:  # corrupt the compressed bytes
            data = mutate_bytes(rng.choice(self.compressed[codec]), rng)
        else:  # wrong lines, compressed correctly
            start = rng.randrange(len(self.text))
            text = mutate_bytes(self.text[start:start + 20000], rng)
            data = lzma.compress(text, format=lzma.FORMAT_ALONE, preset=0) if codec == "lzma" \
                else zstandard.ZstdCompressor(level=1).compress(text)
        return codec, data

    def check(self, value):
        from converter.layout import LayoutReadStats, read_layout_file

        codec, data = value
        path = self.dir / f"20131029030201.20131029.v2.log.0ab8723b6fb3455bb34b04d97482fda2.{codec}"
        path.write_bytes(data)
        stats = LayoutReadStats()
        try:
            for _, doc_id, _ in read_layout_file(path, stats):
                assert doc_id and "\t" not in doc_id
        except self.allowed as e:
            return _classified(e)
        return "bad_lines" if stats.bad_lines else None


class SchemaTarget(Target):
    """converter.schema: mutated schema and filter documents, then used as a filter and a $match."""

    name = "schema"

    def setup(self, work: Path) -> None:
        from converter.schema import SchemaError

        self.allowed = (SchemaError,)
        self.docs = [orjson.loads((FIXTURES / "telemetry_schema.json").read_bytes()),
                     orjson.loads((FIXTURES / "filter_saved_session_Fx_prerelease.json").read_bytes())]

    def make(self, rng):
        return mutate_json(rng.choice(self.docs), rng)

    def check(self, spec):
        from aggregations.pipelines import filter_to_match
        from converter.layout import path_filter
        from converter.schema import Schema

        try:
            schema = Schema(spec)
            path_filter(schema)
            match = filter_to_match(schema)
            schema.allows(["saved_session", "Firefox", "nightly", "22.0a1", "20130226031002"])
            schema.dimensions_for({"reason": "saved-session", "appName": "$where"}, "20131029")
        except self.allowed as e:
            return _classified(e)
        _no_injected_operator(match)
        return None


def _no_injected_operator(match: dict) -> None:
    """A filter becomes field conditions with $in/$gte/$lte only, never an operator of its own."""
    for key, cond in match.items():
        if key.startswith("$"):
            raise Crash(f"filter produced a top-level operator {key!r}")
        if isinstance(cond, dict):
            bad = set(cond) - {"$in", "$gte", "$lte"}
            if bad:
                raise Crash(f"filter produced operators {bad}")
            values = cond.get("$in", [])
            if any(not isinstance(v, str) for v in values) or any(
                    not isinstance(cond[k], str) for k in ("$gte", "$lte") if k in cond):
                raise Crash(f"filter produced a non-string condition {cond!r}")
        elif not isinstance(cond, str):
            raise Crash(f"filter produced a non-string condition {cond!r}")


class ConfigTarget(Target):
    """Files a service reads at start: receiver.json, the converter's config, a replay state file."""

    name = "config"

    def setup(self, work: Path) -> None:
        from converter.errors import ConfigError as ConverterConfigError
        from receiver.errors import ConfigError as ReceiverConfigError
        from receiver.replay import ReplayError

        self.allowed = (ReceiverConfigError, ConverterConfigError, ReplayError)
        self.file = work / "config.json"
        self.docs = {
            "receiver": {"motd": "hi", "max_data_length": 204800, "max_path_length": 10240,
                         "port": 8080, "log_path": str(work / "raw"), "max_log_age_ms": 300000,
                         "max_log_size": 524288000, "include_request_ip": False,
                         "stats_log_file": None, "url_prefix": "/submit/telemetry/", "workers": 1,
                         "durability": "fsync", "http_server": "fast", "shutdown_timeout": 30.0},
            "converter": {"storage_path": str(work / "out"), "workers": 1, "codec": "zst",
                          "max_file_size": 1000, "telemetry_schema": "schema.json",
                          "histogram_cache": str(work / "cache"), "compression_preset": 3,
                          "memory_constraint": 100, "dedup": False},
            "replay-state": {"version": 1, "files": {"/a/telemetry.v1.h.1.2.finished":
                                                     {"offset": 81920, "done": [81990, 82100]}}},
        }

    def make(self, rng):
        kind = rng.choice(list(self.docs))
        if rng.random() < 0.2:
            return kind, mutate_bytes(orjson.dumps(self.docs[kind]), rng)
        return kind, dumps(mutate_json(self.docs[kind], rng))

    def check(self, value):
        from converter.process import ConverterConfig
        from receiver.config import ReceiverConfig
        from receiver.replay import ReplayState

        kind, data = value
        self.file.write_bytes(data)
        try:
            if kind == "receiver":
                ReceiverConfig.load(self.file)
            elif kind == "converter":
                ConverterConfig.load(self.file, {}).check()
            else:
                state = ReplayState(self.file)
                for name in state.files:
                    state.offset(Path(name)), state.done(Path(name))
        except self.allowed as e:
            return _classified(e)
        return None


class ApiTarget(Target):
    """The aggregates API (dashboard/): query strings and paths mutated from real queries.

    A real service on loopback over the embedded MongoDB, holding aggregates
    of the pings tests/aggregate_pings.py makes (a private ``beta`` channel
    among them).  Every answer must be one of the documented statuses with a
    JSON ``{"code", "description"}`` body on errors, never a 500, and never
    beta's data without the token.
    """

    name = "api"
    STATUSES = {200, 304, 400, 403, 404, 405}
    QUERIES = [
        "/aggregates_by/build_id/channels/",
        "/aggregates_by/submission_date/channels/nightly/dates/",
        "/filters/?channel=nightly&version=45",
        "/aggregates_by/build_id/channels/nightly/?version=45&dates=20151201,20151202&metric=GC_MS",
        "/aggregates_by/submission_date/channels/nightly/?version=45&dates=20151201"
        "&metric=KEYED_EXP&label=a&os=Windows_NT&osVersion=6.1&application=Firefox",
        "/aggregates_by/build_id/channels/beta/?version=44&dates=20151201&metric=AN_ENUM",
        "/aggregates_by/build_id/channels/nightly/?version=45&dates=20151201&metric=A_COUNT"
        "&child=content&architecture=x86",
    ]

    def setup(self, work: Path) -> None:
        import http.client
        import uuid

        import pymongo

        sys.path.insert(1, str(ROOT / "tests"))
        import aggregate_pings as ap

        from aggregations.aggregates import Aggregate, Definitions
        from aggregations.store import Store
        from converter.revisions import RevisionCache
        from dashboard.config import DashboardConfig
        from dashboard.testing import ServiceThread
        from importer.mongo import start_embedded

        import logging

        for name in ("tornado.access", "tornado.general", "tornado.application"):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # a log line per 4xx otherwise
        self.mongo = start_embedded(work / "mongo", storage_path=":memory:", detach=False,
                                    pid_file=False)
        db = f"fuzz_{uuid.uuid4().hex[:8]}"
        defs = Definitions(RevisionCache(ap.write_revisions(work / "hist"), None))
        agg = Aggregate()
        names = ["reason", "appName", "appUpdateChannel", "appVersion", "appBuildID",
                 "submission_date"]
        for _, dims, payload in ap.make_pings(60, seed=7):
            agg.add_ping(payload, dict(zip(names, dims)), defs)
        client = pymongo.MongoClient(self.mongo.url)
        Store(client[db]).apply_files({"all": (agg, {"channel": "", "version": ""})})
        client.close()
        tokens = work / "tokens.txt"
        tokens.write_text("fuzz-token\n")
        self.service = ServiceThread(DashboardConfig(database=db, private_channels=("beta",),
                                                     tokens_file=str(tokens)), self.mongo.url)
        self.service.__enter__()
        host, port = self.service.url.rsplit("/", 1)[-1].split(":")
        self.conn_args = (host, int(port))
        self.conn = http.client.HTTPConnection(*self.conn_args, timeout=30)

    def close(self) -> None:
        self.conn.close()
        self.service.__exit__(None, None, None)
        self.mongo.stop()

    def make(self, rng):
        from urllib.parse import quote

        base = rng.choice(self.QUERIES)
        if rng.random() < 0.5:  # structured: parameters replaced, repeated, dropped, added
            path, _, query = base.partition("?")
            params = [p.partition("=")[::2] for p in query.split("&") if p]
            for _ in range(rng.randint(1, 3)):
                op = rng.randrange(4)
                if op == 0 and params:
                    i = rng.randrange(len(params))
                    params[i] = (params[i][0], rng.choice(INTERESTING_STRINGS + [
                        ",".join(["20151201"] * rng.randint(0, 400)), "45" * 50, "-1"]))
                elif op == 1 and params:
                    params.pop(rng.randrange(len(params)))
                elif op == 2:
                    params.append((rng.choice(["version", "dates", "metric", "label", "os", "x",
                                               "channel", ""]), rng.choice(INTERESTING_STRINGS)))
                elif params:
                    params.append(rng.choice(params))
            query = "&".join(f"{quote(k, safe='')}={quote(v, safe=',')}" for k, v in params)
            return f"{path}?{query}" if query else path
        data = mutate_bytes(base.encode(), rng)
        # what a client can put on a request line: escape what http.client would refuse
        return "/" + "".join(chr(b) if 0x21 <= b < 0x7f else f"%{b:02X}" for b in data.lstrip(b"/"))

    def check(self, path):
        import http.client

        for attempt in range(2):
            try:
                self.conn.request("GET", path)
                r = self.conn.getresponse()
                body = r.read()
                break
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection(*self.conn_args, timeout=30)
                if attempt:
                    raise
        if r.status not in self.STATUSES:
            raise Crash(f"status {r.status} for {path!r}: {body[:200]!r}")
        if r.status == 200 and "/beta/" in path.split("?")[0] and b'"data"' in body:
            raise Crash(f"private data without a token for {path!r}")
        if r.status >= 400:
            doc = orjson.loads(body)
            if doc.get("code") != r.status or not doc.get("description"):
                raise Crash(f"error without a reason for {path!r}: {body[:200]!r}")
            return f"HTTP {r.status}"
        return None


def _classified(e: BaseException) -> str:
    if not str(e).strip():
        raise Crash(f"{type(e).__name__} without a message")
    return type(e).__name__ + (f"({e.reason})" if getattr(e, "reason", None) else "")


TARGETS: list[type[Target]] = [RawLogTarget, ConversionTarget, LayoutTarget, SchemaTarget,
                               ConfigTarget, ApiTarget]


# --- runner ------------------------------------------------------------------------------

def fuzz(target: Target, n: int, seed: int, time_limit: float | None = None) -> dict:
    """Run ``n`` inputs through ``target``; returns counts and the first crashes with their seeds."""
    accepted = 0
    refused: collections.Counter = collections.Counter()
    crashes: list[str] = []
    started = time.monotonic()
    done = 0
    for i in range(n):
        if time_limit is not None and time.monotonic() - started > time_limit:
            break
        rng = random.Random(f"{seed}:{target.name}:{i}")
        value = target.make(rng)
        try:
            why = target.check(value)
        except Exception as e:  # noqa: BLE001 - everything unclassified is what we look for
            crashes.append(f"input {i} (seed {seed}): {type(e).__name__}: {e}\n"
                           + "".join(traceback.format_exception(e)[-3:]))
        else:
            if why is None:
                accepted += 1
            else:
                refused[why] += 1
        done += 1
    return {"target": target.name, "inputs": done, "accepted": accepted, "refused": refused,
            "crashes": crashes, "seconds": time.monotonic() - started}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=100_000, help="inputs per target [100000]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", action="append", default=[], help="target name (repeatable)")
    ap.add_argument("--max-minutes", type=float,
                    help="stop each target after this long (the table says how many ran)")
    args = ap.parse_args(argv)
    total_crashes = 0
    print("| target | inputs | accepted | refused (classified) | crashes | inputs/s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        for cls in TARGETS:
            if args.only and cls.name not in args.only:
                continue
            work = Path(tmp) / cls.name
            work.mkdir()
            target = cls()
            target.setup(work)
            try:
                r = fuzz(target, args.n, args.seed,
                         args.max_minutes * 60 if args.max_minutes else None)
            finally:
                target.close()
            total_crashes += len(r["crashes"])
            top = ", ".join(f"{k} {v}" for k, v in r["refused"].most_common(4))
            print(f"| {r['target']} | {r['inputs']} | {r['accepted']} | "
                  f"{sum(r['refused'].values())} ({top}) | {len(r['crashes'])} | "
                  f"{r['inputs'] / r['seconds']:.0f} |", flush=True)
            kinds: dict[str, str] = {}
            for c in r["crashes"]:  # one example per distinct place and error
                kinds.setdefault(c.splitlines()[-1] + c.split(": ", 1)[1].split(":")[0], c)
            for c in list(kinds.values())[:10]:
                print(c, file=sys.stderr)
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
