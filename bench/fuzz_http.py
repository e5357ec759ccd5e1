#!/usr/bin/env python
"""Differential fuzzer: the fast front end (llhttp) against Tornado's, over real sockets.

Builds random byte streams (one to four requests, valid ones and known
attacks, then mutated: bytes flipped, inserted and cut, line ends and
separators broken, headers duplicated, the stream truncated) and sends each,
split at random points, to a receiver running the ``fast`` front end and to
one running ``tornado``.  Every stream must get the same statuses in the same
order from both, and both must store the same records; a stream where they
differ must fall under a difference that docs/receiver.md documents (listed in
``DOCUMENTED``), or the run fails.

    bench/fuzz_http.py [--streams 100000] [--seed 1] [--concurrency 48]

CI runs a fixed-seed sample through ``run_fuzz`` (tests/test_fuzz_http.py).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from receiver.config import ReceiverConfig  # noqa: E402
from receiver.rawlog import RawLogReader  # noqa: E402
from receiver.service import start_receiver  # noqa: E402

FRONTS = ("fast", "tornado")
LIMITS = dict(max_data_length=300, max_path_length=60, max_header_length=600,
              header_timeout=1.0, body_timeout=0.5, idle_connection_timeout=1.0)
CLOSE = b"GET /status HTTP/1.1\r\nConnection: close\r\n\r\n"
_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")
_STREAM_ID = re.compile(r"^f(\d+)-")

# Differences between llhttp and Tornado that docs/receiver.md documents,
# recognised from the stream: name -> test on the bytes sent.
DOCUMENTED = {
    # RFC 9112 2.2: a recipient MAY take a bare LF as a line end (Tornado does).
    "bare LF line end (Tornado accepts)": lambda s: re.search(rb"(^|[^\r])\n", s) is not None,
    # RFC 9112 2.2: a bare CR is invalid (or read as a space); Tornado strips
    # CRs from the end of a request line, llhttp refuses it.
    "bare CR before a line end (Tornado strips it)": lambda s: b"\r\r\n" in s,
    # llhttp skips repeated spaces around the target; Tornado refuses them.
    "repeated spaces in the request line (llhttp accepts)":
        lambda s: re.search(rb"[!-~]( {2,}[^ \r\n]+ +| +[^ \r\n]+ {2,})HTTP/", s)
        is not None,
}
# Tornado closes a connection (after HTTP/1.0, ``Connection: close`` or a
# malformed request) without lingering: when the client is still sending, the
# kernel answers with a reset that can destroy Tornado's last answer before the
# client reads it.  The fast front end lingers (docs/receiver.md).  Recognised
# from the answers: Tornado's are the fast front end's with the last ones missing.
NO_LINGER = "Tornado's last answer lost to a reset (no lingering close)"
# RFC 9112 2.2: a server SHOULD ignore empty lines before a request line.
# llhttp skips any number and waits for the request line (until the header
# timeout); Tornado answers 400 when a head is only empty lines.  Recognised
# from the answers: Tornado's end with one more 400 (and the stream has
# empty lines, or they are what is left after a body).
BLANK_LINES = "empty lines before a request line (Tornado answers 400)"


# --- generating streams -----------------------------------------------------------

def _request(rnd: random.Random, sid: int, k: int) -> bytes:
    """One request: mostly plausible submissions, some other endpoints and known attacks."""
    path = f"f{sid}-{k}/saved-session/Firefox/23.0/release/2013".encode()
    body = rnd.randbytes(rnd.choice([1, 5, 40, 200, 299, 300, 301, 500]))
    version = rnd.choice([b"HTTP/1.1"] * 8 + [b"HTTP/1.0"])
    extra = []
    if rnd.random() < 0.2:
        extra.append(b"X-Forwarded-For: 10.0.%d.%d" % (rnd.randrange(256), rnd.randrange(256)))
    if rnd.random() < 0.1:
        extra.append(rnd.choice([b"Connection: close", b"Connection: keep-alive",
                                 b"Connection: keep-alive, close"]))
    if rnd.random() < 0.05:
        extra.append(b"Expect: 100-continue")
    if rnd.random() < 0.1:
        extra.append(b"Content-Encoding: gzip")
    kind = rnd.random()
    if kind < 0.55:
        lines = [b"POST /submit/telemetry/" + path + b"?v=4 " + version, b"Host: x"]
        lines += extra + [b"Content-Length: %d" % len(body)]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body
    if kind < 0.75:
        method, target = rnd.choice([(b"GET", b"/status"), (b"HEAD", b"/status"),
                                     (b"GET", b"/nope"), (b"PUT", b"/submit/telemetry/x"),
                                     (b"DELETE", b"/status"), (b"POST", b"/elsewhere/" + path),
                                     (b"OPTIONS", b"/status")])
        lines = [method + b" " + target + b" " + version, b"Host: x"] + extra
        if method in (b"PUT", b"POST") or rnd.random() < 0.1:
            return b"\r\n".join(lines + [b"Content-Length: %d" % len(body)]) + b"\r\n\r\n" + body
        return b"\r\n".join(lines) + b"\r\n\r\n"
    attack = rnd.choice([
        b"Content-Length: 5\r\nContent-Length: 6", b"Content-Length: 5\r\nContent-Length: 5",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked", b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: gzip, chunked", b"Content-Length : 5", b"Content-Length: +5",
        b"Content-Length: 5, 5", b"Content-Length: 0x5", b"X-A: a\x00b\r\nContent-Length: 5",
        b"X-A: a\r\n b\r\nContent-Length: 5", b"Content-Length:\t5",
        b"Connection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 5",
        b"Content-Length: 99999999999999999999", b"Content-Length: 1000000",
    ])
    return (b"POST /submit/telemetry/" + path + b" " + version + b"\r\n" + attack
            + b"\r\n\r\nhello")


def _mutate(rnd: random.Random, data: bytearray) -> None:
    """One random damage, biased to the bytes that decide how a stream is framed."""
    op = rnd.randrange(10)
    if not data:
        return
    if op == 0:  # flip a byte
        i = rnd.randrange(len(data))
        data[i] = rnd.randrange(256)
    elif op == 1:  # insert an interesting byte
        data.insert(rnd.randrange(len(data) + 1), rnd.choice(b" \t\r\n:\x00\x7f\xff,;"))
    elif op == 2:  # delete a byte
        del data[rnd.randrange(len(data))]
    elif op == 3:  # a CRLF becomes a bare LF or a bare CR
        spots = [m.start() for m in re.finditer(rb"\r\n", data)]
        if spots:
            i = rnd.choice(spots)
            data[i:i + 2] = rnd.choice([b"\n", b"\r", b"\r\r\n", b"\n\n"])
    elif op == 4:  # a header line is repeated
        lines = bytes(data).split(b"\r\n")
        if len(lines) > 2:
            i = rnd.randrange(1, len(lines) - 1)
            lines.insert(i, lines[i])
            data[:] = b"\r\n".join(lines)
    elif op == 5:  # space or tab around a separator
        spots = [m.start() for m in re.finditer(rb"[: ]", data)]
        if spots:
            data.insert(rnd.choice(spots), rnd.choice(b" \t"))
    elif op == 6:  # a digit of a length changes
        spots = [m.start() for m in re.finditer(rb"\d", data)]
        if spots:
            data[rnd.choice(spots)] = rnd.choice(b"0123456789")
    elif op == 7:  # case of a method, header name or version
        i = rnd.randrange(len(data))
        data[i:i + 4] = bytes(data[i:i + 4]).swapcase()
    elif op == 8:  # the stream stops early
        del data[rnd.randrange(len(data)):]
    else:  # a random chunk of bytes
        data[rnd.randrange(len(data) + 1):0] = rnd.randbytes(rnd.randrange(1, 8))


def make_stream(seed: int, sid: int) -> tuple[bytes, list[int]]:
    """Stream ``sid`` of run ``seed``: its bytes and the points where it is split."""
    rnd = random.Random(seed * 1_000_003 + sid)
    data = bytearray(b"".join(_request(rnd, sid, k) for k in range(rnd.choice([1, 1, 2, 4]))))
    for _ in range(rnd.choice([0, 0, 1, 1, 2, 3])):
        _mutate(rnd, data)
    data += CLOSE  # a well-framed stream ends here; a broken one is closed by the server
    cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.choice([0, 1, 2, 5]))))
    return bytes(data), cuts


# --- sending --------------------------------------------------------------------------

async def _send(host: str, port: int, data: bytes, cuts: list[int]) -> tuple[list[int], bool]:
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reply = b""
    closed = False
    try:
        last = 0
        for cut in cuts + [len(data)]:
            writer.write(data[last:cut])
            await writer.drain()
            last = cut
            if cut != len(data):
                await asyncio.sleep(0.001)
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 4.0)
            if not chunk:
                closed = True
                break
            reply += chunk
    except (asyncio.TimeoutError, ConnectionError):
        closed = isinstance(sys.exc_info()[1], ConnectionError)
    finally:
        writer.close()
    return [int(c) for c in _STATUS.findall(reply) if not c.startswith(b"1")], closed


@dataclass
class Report:
    streams: int = 0
    same: int = 0
    documented: Counter = field(default_factory=Counter)
    undocumented: list = field(default_factory=list)   # (sid, fast, tornado, stream)
    records: dict = field(default_factory=dict)         # front -> count
    record_mismatches: list = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    differing: list = field(default_factory=list)       # (record key, fast count, tornado count)
    seconds: float = 0.0
    retried: int = 0                                     # differed once, alike when sent again

    @property
    def ok(self) -> bool:
        return not self.undocumented and not self.record_mismatches

    def summary(self) -> str:
        lines = [f"{self.streams} streams in {self.seconds:.1f}s: {self.same} answered alike, "
                 f"{sum(self.documented.values())} documented differences, "
                 f"{len(self.undocumented)} undocumented, "
                 f"{len(self.record_mismatches)} streams with different stored records, "
                 f"{self.retried} alike only when sent again",
                 f"records stored: {self.records}",
                 "statuses (fast front end): " + ", ".join(
                     f"{k}: {v}" for k, v in sorted(self.statuses.items()))]
        lines += [f"  documented: {name}: {n}" for name, n in self.documented.items()]
        for sid, fast, tornado, data in self.undocumented[:10]:
            lines.append(f"  UNDOCUMENTED stream {sid}: fast {fast} tornado {tornado}: {data!r}")
        for sid, fast, tornado in self.record_mismatches[:10]:
            lines.append(f"  RECORDS DIFFER stream {sid}: fast {fast} tornado {tornado}")
        for key, n_fast, n_tornado in self.differing[:10]:
            lines.append(f"  record {key[0]!r} ({len(key[1])} bytes): fast {n_fast}, "
                         f"tornado {n_tornado}")
        return "\n".join(lines)


def _documented(data: bytes) -> str | None:
    for name, test in DOCUMENTED.items():
        if test(data):
            return name
    return None


def _explain(data: bytes, fast_answer: tuple, tornado_answer: tuple) -> str | None:
    """The documented difference that explains two answers to ``data``, if any."""
    (fast, fast_closed), (tornado, _) = fast_answer, tornado_answer
    why = _documented(data)
    if why is None and fast_closed and len(tornado) < len(fast) \
            and fast[:len(tornado)] == tornado:
        why = NO_LINGER
    if why is None and tornado and tornado[-1] == 400 \
            and fast[:len(tornado) - 1] == tornado[:-1] \
            and (tornado == fast + [400] or re.search(rb"\n\r?\n\r?\n", data)):
        why = BLANK_LINES
    return why


def run_fuzz(streams: int, seed: int = 1, concurrency: int = 48, workdir: str | None = None,
             progress: bool = False) -> Report:
    """Send ``streams`` generated streams to both front ends and compare what they did."""
    base = Path(workdir or tempfile.mkdtemp(prefix="fuzz-http-"))
    report = Report(streams=streams)
    handles = {}
    t0 = time.perf_counter()
    try:
        for front in FRONTS:
            config = ReceiverConfig(port=0, workers=1, log_path=str(base / front), motd="",
                                    http_server=front, metrics=False, durability="os", **LIMITS)
            handles[front] = start_receiver(config)
        results: dict[int, tuple] = {}
        retried: set[int] = set()

        async def one(sid: int, gate: asyncio.Semaphore) -> None:
            async with gate:
                data, cuts = make_stream(seed, sid)
                got = await asyncio.gather(*(_send(handles[f].host, handles[f].port, data, cuts)
                                             for f in FRONTS))
                results[sid] = (data, got[0], got[1])
                if progress and sid and sid % 5000 == 0:
                    print(f"  {sid} streams, {time.perf_counter() - t0:.0f}s", flush=True)

        async def main() -> None:
            gate = asyncio.Semaphore(concurrency)
            await asyncio.gather(*(one(i, gate) for i in range(streams)))

        asyncio.run(main())
        # A stream whose answers differ is sent again, alone, before it counts:
        # on a loaded machine a 4 s read timeout can cut one short.  (Stored
        # records are compared as counts, so the second sending cancels out.)
        again = [sid for sid, (data, a, b) in results.items()
                 if a[0] != b[0] and _explain(data, a, b) is None]

        async def retry() -> None:
            for sid in again:
                data, cuts = make_stream(seed, sid)
                got = [await _send(handles[f].host, handles[f].port, data, cuts) for f in FRONTS]
                if got[0][0] == got[1][0]:
                    retried.add(sid)
                    results[sid] = (data, got[0], got[1])

        asyncio.run(retry())
    finally:
        for h in handles.values():
            h.stop()
    stored: dict[str, Counter] = {}
    for front in FRONTS:
        records: Counter = Counter()
        for p in sorted((base / front).iterdir()) if (base / front).exists() else []:
            for rec in RawLogReader(p):
                records[rec.path, rec.data] += 1
        stored[front] = records
        report.records[front] = sum(records.values())
    # A record whose count differs belongs to the stream that carries its path
    # (mutations can change the stream number in a path, so search the bytes).
    differ_records: dict[int, list[bytes]] = {}

    def owners(path: bytes) -> list[int]:
        return [sid for sid, r in results.items() if path in r[0]] or [-1]

    for key in set(stored["fast"]) | set(stored["tornado"]):
        if stored["fast"][key] != stored["tornado"][key]:
            report.differing.append((key, stored["fast"][key], stored["tornado"][key]))
            m = _STREAM_ID.match(key[0])
            hint = int(m.group(1)) if m else -1
            path = key[0].encode("utf-8", "surrogateescape")
            for sid in ([hint] if hint in results and path in results[hint][0]
                        else owners(path)):
                differ_records.setdefault(sid, []).append(path)
    explained: set[int] = set()
    for sid in range(streams):
        data, (fast, fast_closed), (tornado, tornado_closed) = results[sid]
        report.statuses.update(fast)
        if fast == tornado and sid not in differ_records:
            report.same += 1
            continue
        why = _explain(data, (fast, fast_closed), (tornado, tornado_closed))
        if why is None and fast == tornado and sid in retried:
            explained.add(sid)
            continue  # its records were sent twice, the first time cut short
        if why is not None:
            report.documented[why] += 1
            explained.add(sid)
        elif fast != tornado:
            report.undocumented.append((sid, fast, tornado, data))
        else:
            report.record_mismatches.append((sid, fast, tornado))
    # A stream answered alike that "owns" a differing record by its number may
    # only share the path with the stream that really sent it (a mutated
    # number): the record is explained if any other stream carrying it is.
    report.record_mismatches = [
        m for m in report.record_mismatches
        if not all(any(o in explained for o in owners(p) if o != m[0])
                   for p in differ_records.get(m[0], []))]
    if -1 in differ_records:  # a record no stream's bytes carry
        report.record_mismatches.append((-1, "?", "?"))
    report.retried = len(retried)
    report.seconds = time.perf_counter() - t0
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=48)
    args = ap.parse_args()
    print(f"fuzzing both front ends with {args.streams} streams (seed {args.seed}) ...", flush=True)
    report = run_fuzz(args.streams, args.seed, args.concurrency, progress=True)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
