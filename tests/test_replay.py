"""Replay of raw logs: into the real receiver, through a real proxy, against real failing servers."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.tcpclient import TCPClient
from tornado.web import Application, RequestHandler

from receiver.config import ReceiverConfig
from receiver.rawlog import Record, finished_files, read_records, write_records
from receiver.replay import (RateLimiter, ReplayConfig, ReplayError, ReplayState, doc_id, new_key,
                             proxy_from_environment, replay, replay_logs, sampled, target_url)
from receiver.service import start_receiver

DIMS = ["saved-session/Firefox/23.0.1/release/20130814063812", "idle-daily/Fennec/24.0/beta/20130910160258",
        "saved-session/Firefox/25.0a2/aurora/20131001004003"]


def make_raw_records(n: int, seed: int = 0, deletes: int = 0) -> list[Record]:
    """Submissions as a receiver stores them: half gzip bodies, half plain JSON."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        doc = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        body = orjson.dumps({"ver": 1, "info": {"n": i, "pad": "x" * rng.randrange(50)}})
        out.append(Record(f"{doc}/{DIMS[i % len(DIMS)]}", gzip.compress(body, mtime=0) if i % 2 else body,
                          1_383_264_000_000 + i))
    for i in range(deletes):
        out.append(Record(f"{uuid.UUID(int=rng.getrandbits(128), version=4)}", b"", 1_383_264_000_000))
    return out


def write_raw_dir(directory: Path, records: list[Record], per_file: int = 100) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(0, len(records), per_file):
        path = directory / f"telemetry.v1.host.1.{1_000 + i}.finished"
        write_records(path, records[i:i + per_file])
        paths.append(path)
    return paths


def pairs(records) -> Counter:
    return Counter((r.path, r.data) for r in records)


def received(log_dir: Path) -> list[Record]:
    return [r for f in finished_files(log_dir) for r in read_records(f)]


def digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def receiver(tmp_path):
    """The real receiver on a free loopback port, writing to its own directory."""
    log_dir = tmp_path / "received"
    log_dir.mkdir()
    with start_receiver(ReceiverConfig(log_path=str(log_dir), port=0, workers=1)) as running:
        yield running


def dest_of(running) -> str:
    return running.url + running.config.url_prefix + "%k"


# -- small local servers for the cases the receiver cannot play ----------------------------------

class LocalServer:
    """A Tornado app on a loopback socket in its own thread; ``respond(handler)`` picks the status."""

    def __init__(self, respond=lambda h: 200, proxy: bool = False, listen: bool = True, tls=None):
        self.respond = respond
        self.tls = tls
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.proxy = proxy
        self._ready = threading.Event()
        self._thread = None
        self._loop = None
        self._done = None
        if listen:
            self.start()

    def start(self) -> "LocalServer":
        """Listen (a bound socket that is not listening refuses connections, like a server that is down)."""
        self.sock.listen(128)
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    async def _main(self):
        server_ref = self

        class Handler(RequestHandler):
            SUPPORTED_METHODS = ("GET", "POST", "DELETE", "CONNECT")

            async def connect(self):
                """A tunnel for https:// through the proxy: bytes both ways, unread."""
                with server_ref.lock:
                    server_ref.requests.append(("CONNECT", self.request.uri, dict(self.request.headers), b""))
                host, _, port = self.request.uri.rpartition(":")
                upstream = await TCPClient().connect(host, int(port))
                client = self.request.connection.detach()
                await client.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

                async def pipe(a, b):
                    try:
                        while True:
                            b.write(await a.read_bytes(65536, partial=True))
                    except StreamClosedError:
                        b.close()
                await asyncio.gather(pipe(client, upstream), pipe(upstream, client))

            async def _any(self):
                with server_ref.lock:
                    server_ref.requests.append((self.request.method, self.request.uri,
                                                dict(self.request.headers), self.request.body))
                if server_ref.proxy:
                    await self._forward()
                else:
                    self.set_status(server_ref.respond(self))
                    self.finish("ok")

            async def _forward(self):
                headers = {k: v for k, v in self.request.headers.items()
                           if k.lower() in ("content-encoding", "content-type", "user-agent")}
                response = await AsyncHTTPClient().fetch(
                    self.request.uri, method=self.request.method, headers=headers, raise_error=False,
                    body=self.request.body if self.request.method == "POST" else None,
                    allow_nonstandard_methods=True, decompress_response=False)
                self.set_status(response.code if response.code >= 200 else 502)
                self.finish(response.body or b"")

            get = post = delete = _any

            def check_xsrf_cookie(self):
                pass

        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        server = HTTPServer(Application([(r".*", Handler)]), ssl_options=self.tls)
        server.add_socket(self.sock)
        self._ready.set()
        await self._done.wait()
        server.stop()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._done.set)
            self._thread.join(10)
        self.sock.close()

    def paths(self, method: str = "POST") -> list[str]:
        prefix = "/submit/telemetry/"
        with self.lock:
            return [uri.split(prefix, 1)[1] for m, uri, _, _ in self.requests if m == method]


@pytest.fixture
def server():
    servers = []

    def make(**kw) -> LocalServer:
        servers.append(LocalServer(**kw))
        return servers[-1]
    yield make
    for s in servers:
        s.stop()


def cfg(sources, dest, **kw) -> ReplayConfig:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("max_backoff", 0.1)
    kw.setdefault("concurrency", 8)
    return ReplayConfig(sources=list(sources), dest=dest, **kw)


# -- into the real receiver ----------------------------------------------------------------------

def test_replay_into_a_real_receiver_copies_every_pair(receiver, tmp_path, fixtures_dir):
    records = make_raw_records(250)
    files = write_raw_dir(tmp_path / "raw", records)
    original = fixtures_dir / "raw" / "telemetry1.v1.log"  # the original server's file, read as is
    before = digest(files + [original])
    summary = replay_logs(cfg([tmp_path / "raw", original], dest_of(receiver)))
    receiver.stop()
    expected = pairs(records) + pairs(read_records(original))
    assert (summary.read, summary.delivered, summary.rejected, summary.failed) == (251, 251, 0, 0)
    assert pairs(received(receiver.log_path)) == expected
    assert digest(files + [original]) == before  # the source is never changed


def test_no_copy_keys_sends_new_doc_ids_and_keeps_dimensions(receiver, tmp_path):
    records = make_raw_records(60)
    write_raw_dir(tmp_path / "raw", records)
    summary = replay_logs(cfg([tmp_path / "raw"], dest_of(receiver), copy_keys=False))
    receiver.stop()
    got = received(receiver.log_path)
    assert summary.delivered == 60 == len(got)
    old_ids = {doc_id(r.path) for r in records}
    new_ids = {doc_id(r.path) for r in got}
    assert len(new_ids) == 60 and not new_ids & old_ids
    assert all(uuid.UUID(i).version == 4 for i in new_ids)
    rest = lambda rs: Counter((r.path.partition("/")[2], r.data) for r in rs)  # noqa: E731
    assert rest(got) == rest(records)


def test_replay_stopped_by_sigterm_and_restarted_delivers_everything_once(receiver, tmp_path):
    records = make_raw_records(400, seed=5)
    write_raw_dir(tmp_path / "raw", records)
    state = tmp_path / "state.json"
    argv = [sys.executable, "-m", "receiver.replay", str(tmp_path / "raw"), "--dest", dest_of(receiver),
            "--state", str(state), "--concurrency", "4"]
    first = subprocess.Popen(argv + ["--rate", "150"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    first.send_signal(signal.SIGTERM)
    _, err1 = first.communicate(timeout=30)
    assert first.returncode == 0, err1
    assert "stopped early" in err1
    saved = orjson.loads(state.read_bytes())["files"]
    assert 0 < sum(v["offset"] for v in saved.values()) < sum(f.stat().st_size for f in
                                                               (tmp_path / "raw").iterdir())
    second = subprocess.run(argv, stderr=subprocess.PIPE, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    receiver.stop()
    assert pairs(received(receiver.log_path)) == pairs(records)  # each exactly once
    final = orjson.loads(state.read_bytes())["files"]
    assert final == {str(f.resolve()): {"offset": f.stat().st_size, "done": []}
                     for f in (tmp_path / "raw").iterdir()}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".state")] == []  # no temp file left
    third = subprocess.run(argv, stderr=subprocess.PIPE, text=True, timeout=60)
    assert "read 0," in third.stderr  # nothing left to send


def test_replay_killed_hard_loses_nothing_and_resends_at_most_the_unsaved_window(receiver, tmp_path):
    records = make_raw_records(400, seed=6)
    write_raw_dir(tmp_path / "raw", records, per_file=400)
    state = tmp_path / "state.json"
    argv = [sys.executable, "-m", "receiver.replay", str(tmp_path / "raw"), "--dest", dest_of(receiver),
            "--state", str(state), "--concurrency", "4"]
    first = subprocess.Popen(argv + ["--rate", "300"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not state.exists() and time.monotonic() < deadline:  # saved after the first 200
        time.sleep(0.05)
    time.sleep(0.2)
    first.kill()
    first.communicate(timeout=30)
    saved = orjson.loads(state.read_bytes())["files"]
    (source,) = (tmp_path / "raw").iterdir()
    assert saved[str(source.resolve())]["offset"] < source.stat().st_size  # killed mid-way
    second = subprocess.run(argv, stderr=subprocess.PIPE, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    receiver.stop()
    got = pairs(received(receiver.log_path))
    assert set(got) == set(pairs(records))  # nothing lost
    duplicates = sum(got.values()) - len(records)
    assert duplicates <= 200 + 4 * 4  # at most one batch plus the window


# -- sampling ------------------------------------------------------------------------------------

def test_sampling_is_binomial_and_reproducible(server, tmp_path):
    records = make_raw_records(10_000, seed=11)
    write_raw_dir(tmp_path / "raw", records, per_file=2500)
    def run(seed: int) -> tuple[set[str], object]:
        target = server()
        summary = replay_logs(cfg([tmp_path / "raw"], target.url + "/submit/telemetry/%k", sample=0.1,
                                  seed=seed, concurrency=16))
        return set(target.paths()), summary

    first, summary = run(seed=1)
    # mean 1000, standard deviation 30: six deviations either side
    assert 820 <= len(first) <= 1180
    assert summary.sampled_out + summary.delivered == 10_000 == summary.read
    assert first == {r.path for r in records if sampled(r.path, 0.1, 1)}
    again, _ = run(seed=1)
    other, _ = run(seed=2)
    assert again == first
    assert other != first and 820 <= len(other) <= 1180


@pytest.mark.parametrize("rate", [0.0, -0.5, 1.5])
def test_sample_rate_must_be_in_range(tmp_path, rate):
    with pytest.raises(ReplayError, match="sample"):
        ReplayConfig(sources=[tmp_path], dest="http://127.0.0.1:1/%k", sample=rate)


# -- the request itself --------------------------------------------------------------------------

def test_bodies_are_sent_byte_for_byte_with_gzip_encoding(server, tmp_path):
    target = server()
    records = make_raw_records(20)
    write_raw_dir(tmp_path / "raw", records)
    summary = replay_logs(cfg([tmp_path / "raw"], target.url + "/submit/telemetry/%k?v=1"))
    assert summary.delivered == 20
    by_path = {r.path: r for r in records}
    for method, uri, headers, body in target.requests:
        path = uri.split("/submit/telemetry/", 1)[1].removesuffix("?v=1")
        assert body == by_path[path].data
        assert (headers.get("Content-Encoding") == "gzip") == body.startswith(b"\x1f\x8b")


@pytest.mark.parametrize("delete, copy_keys, deletes_sent", [(False, True, 0), (True, True, 3),
                                                             (True, False, 0)])
def test_delete_records_are_replayed_only_when_asked(server, tmp_path, delete, copy_keys, deletes_sent):
    target = server()
    records = make_raw_records(10, deletes=3)
    write_raw_dir(tmp_path / "raw", records)
    summary = replay_logs(cfg([tmp_path / "raw"], target.url + "/submit/telemetry/%k",
                              delete=delete, copy_keys=copy_keys))
    assert len(target.paths("DELETE")) == deletes_sent == summary.delivered - 10
    assert summary.deletes_skipped == 3 - deletes_sent
    if deletes_sent:
        assert set(target.paths("DELETE")) == {r.path for r in records if not r.data}


@pytest.mark.parametrize("dest, key, url", [
    ("http://h/submit/telemetry/%k", "abc/saved-session/Firefox", "http://h/submit/telemetry/abc/saved-session/Firefox"),
    ("http://h/x/%k?src=replay", "a b/c%20d", "http://h/x/a%20b/c%20d?src=replay"),
    ("http://h/fixed", "abc/def", "http://h/fixed"),
])
def test_target_url(dest, key, url):
    assert target_url(dest, key) == url


def test_new_key_keeps_the_dimensions():
    path = "0f0e8b0c-2b77-4c59-9e0b-4f3b8e3e6e35/saved-session/Firefox/23.0.1"
    fresh = new_key(path)
    assert fresh.partition("/")[2] == path.partition("/")[2] and doc_id(fresh) != doc_id(path)
    assert new_key("lonely") != "lonely" and "/" not in new_key("lonely")


# -- proxy ---------------------------------------------------------------------------------------

def test_everything_goes_through_the_proxy(server, receiver, tmp_path):
    proxy = server(proxy=True)
    records = make_raw_records(40, deletes=2)
    write_raw_dir(tmp_path / "raw", records)
    proxy_url = proxy.url.replace("http://", "http://replay:s%40cret@")
    summary = replay_logs(cfg([tmp_path / "raw"], dest_of(receiver), proxy=proxy_url, delete=True))
    receiver.stop()
    assert (summary.delivered, summary.rejected) == (40, 2)  # the receiver answers DELETE with 405
    assert len(proxy.requests) == 42
    assert {h.get("Proxy-Authorization") for _, _, h, _ in proxy.requests} == {"Basic cmVwbGF5OnNAY3JldA=="}
    assert all(uri.startswith(receiver.url + "/submit/telemetry/") for _, uri, _, _ in proxy.requests)
    assert pairs(received(receiver.log_path)) == pairs(r for r in records if r.data)


@pytest.mark.parametrize("environ, dest, proxy", [
    ({"http_proxy": "http://p:3128"}, "http://h/x", "http://p:3128"),
    ({"HTTP_PROXY": "http://P:1", "http_proxy": "http://p:2"}, "http://h/x", "http://p:2"),
    ({"HTTPS_PROXY": "http://p:3128"}, "http://h/x", None),
    ({"HTTPS_PROXY": "http://p:3128"}, "https://h/x", "http://p:3128"),
    ({"http_proxy": "http://p:3128", "no_proxy": "h,other"}, "http://h/x", None),
    ({}, "http://h/x", None),
])
def test_proxy_from_environment(environ, dest, proxy):
    assert proxy_from_environment(dest, environ) == proxy


def test_cli_takes_the_proxy_from_the_environment(server, tmp_path, monkeypatch):
    target, proxy = server(), server(proxy=True)
    write_raw_dir(tmp_path / "raw", make_raw_records(5))
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    result = CliRunner().invoke(replay, [str(tmp_path / "raw"), "--dest", target.url + "/submit/telemetry/%k"])
    assert result.exit_code == 0, result.output
    assert len(proxy.requests) == 5 == len(target.requests)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: (server ssl context, CA file)."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


@pytest.mark.parametrize("through_proxy", [False, True])
def test_https_destination_with_a_private_ca(server, tmp_path, certificate, through_proxy):
    context, ca_file = certificate
    target = server(tls=context)
    proxy = server(proxy=True) if through_proxy else None
    records = make_raw_records(15)
    write_raw_dir(tmp_path / "raw", records)
    dest = target.url + "/submit/telemetry/%k"
    summary = replay_logs(cfg([tmp_path / "raw"], dest, ca_file=ca_file, proxy=proxy and proxy.url))
    assert summary.delivered == 15
    assert sorted(target.paths()) == sorted(r.path for r in records)
    assert {body for _, _, _, body in target.requests} == {r.data for r in records}
    if proxy:
        assert [m for m, _, _, _ in proxy.requests] == ["CONNECT"] * len(proxy.requests)
        assert 1 <= len(proxy.requests) <= 8  # connections are tunnelled once and kept alive
    # Without the CA the certificate is not trusted: every attempt fails, nothing arrives.
    before = len(target.requests)
    untrusted = replay_logs(cfg([tmp_path / "raw"], dest, attempts=1, proxy=proxy and proxy.url))
    assert untrusted.failed == 15 and "CERTIFICATE_VERIFY_FAILED" in untrusted.messages[0]
    assert len(target.requests) == before


# -- responses, retries, failures ----------------------------------------------------------------

def test_400_is_rejected_and_not_retried(server, tmp_path):
    target = server(respond=lambda h: 400)
    write_raw_dir(tmp_path / "raw", make_raw_records(12))
    summary = replay_logs(cfg([tmp_path / "raw"], target.url + "/submit/telemetry/%k"))
    assert (summary.delivered, summary.rejected, summary.failed, summary.retries) == (0, 12, 0, 0)
    assert len(target.requests) == 12
    assert "HTTP 400" in summary.messages[0]


def test_destination_down_for_a_while_then_back(server, tmp_path):
    target = server(listen=False)  # bound, not listening: connections are refused
    records = make_raw_records(30)
    write_raw_dir(tmp_path / "raw", records)
    result = {}
    worker = threading.Thread(target=lambda: result.update(s=replay_logs(
        cfg([tmp_path / "raw"], target.url + "/submit/telemetry/%k", attempts=100, max_backoff=0.1))))
    worker.start()
    time.sleep(0.8)
    target.start()
    worker.join(60)
    summary = result["s"]
    assert (summary.delivered, summary.failed) == (30, 0)
    assert summary.retries >= 8  # every worker was refused at least once
    assert sorted(target.paths()) == sorted(r.path for r in records)


def test_server_errors_are_retried_then_counted_as_failed(server, tmp_path):
    calls = Counter()

    def flaky(handler):
        calls[handler.request.uri] += 1
        return 503 if "saved-session/Firefox/25" in handler.request.uri or calls[handler.request.uri] < 2 else 200

    target = server(respond=flaky)
    records = make_raw_records(30)
    write_raw_dir(tmp_path / "raw", records)
    summary = replay_logs(cfg([tmp_path / "raw"], target.url + "/submit/telemetry/%k", attempts=3))
    doomed = sum(1 for r in records if "Firefox/25" in r.path)
    assert (summary.delivered, summary.failed) == (30 - doomed, doomed)
    assert summary.retries == (30 - doomed) + 2 * doomed
    assert all(n == 3 for uri, n in calls.items() if "Firefox/25" in uri)
    result = CliRunner().invoke(replay, [str(tmp_path / "raw"), "--dest", target.url + "/submit/telemetry/%k",
                                         "--attempts", "1"])
    assert result.exit_code == 1 and "could not be delivered" in result.output


def test_stop_during_retries_resumes_exactly_once(server, tmp_path):
    """Records delivered past one that is still being retried are remembered in the state file."""
    healthy = threading.Event()

    def respond(handler):
        stuck = "idle-daily" in handler.request.uri and not healthy.is_set()
        return 503 if stuck else 200

    target = server(respond=respond)
    records = make_raw_records(60)
    write_raw_dir(tmp_path / "raw", records, per_file=30)
    state = tmp_path / "state.json"
    config = cfg([tmp_path / "raw"], target.url + "/submit/telemetry/%k", state=state, attempts=10_000,
                 max_backoff=0.05, concurrency=4)
    stop = threading.Event()
    worker = threading.Thread(target=replay_logs, args=(config, stop))
    worker.start()
    others = {r.path for r in records if "idle-daily" not in r.path}
    deadline = time.monotonic() + 30
    # the window fills and every worker ends up retrying a stuck record
    while len(target.requests) < 80 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    worker.join(30)
    assert not worker.is_alive()
    delivered_before = {uri for _, uri, _, _ in target.requests if "idle-daily" not in uri}
    assert any(v["done"] for v in orjson.loads(state.read_bytes())["files"].values())
    healthy.set()
    summary = replay_logs(config)
    assert summary.resumed > 0
    ok = Counter(p for p in target.paths() if "idle-daily" not in p)
    assert all(n == 1 for n in ok.values()) and set(ok) == others  # nothing resent
    stuck = {r.path for r in records if "idle-daily" in r.path}
    assert stuck <= set(target.paths())
    assert delivered_before


def test_follow_picks_up_new_finished_files(server, tmp_path):
    target = server()
    raw = tmp_path / "raw"
    write_raw_dir(raw, make_raw_records(5, seed=1))
    stop = threading.Event()
    result = {}
    worker = threading.Thread(target=lambda: result.update(s=replay_logs(
        cfg([raw], target.url + "/submit/telemetry/%k", follow=True, poll=0.05), stop)))
    worker.start()
    later = make_raw_records(7, seed=2)
    (raw / "telemetry.v1.host.2.99.partial").write_bytes(b"")  # not finished: ignored
    tmp = raw / "telemetry.v1.host.2.5000"
    write_records(tmp, later)
    tmp.rename(raw / "telemetry.v1.host.2.5000.finished")
    deadline = time.monotonic() + 30
    while len(target.requests) < 12 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    worker.join(30)
    assert result["s"].delivered == 12 == len(target.requests)


def test_corrupt_source_bytes_are_skipped_and_counted(server, tmp_path):
    target = server()
    records = make_raw_records(10)
    path = write_raw_dir(tmp_path / "raw", records)[0]
    data = path.read_bytes()
    path.write_bytes(b"garbage!" + data + b"\x1e\x05")  # junk in front, a torn record behind
    summary = replay_logs(cfg([path], target.url + "/submit/telemetry/%k"))
    assert summary.delivered == 10 and summary.skipped_bytes == 10
    assert any("trailing" in m or "truncated" in m for m in summary.messages)


def test_state_file_that_is_not_json_is_an_error(tmp_path):
    bad = tmp_path / "state.json"
    bad.write_text("{not json")
    with pytest.raises(ReplayError, match="state file"):
        ReplayState(bad)
    write_raw_dir(tmp_path / "raw", make_raw_records(1))
    result = CliRunner().invoke(replay, [str(tmp_path / "raw"), "--dest", "http://127.0.0.1:9/%k",
                                         "--state", str(bad)])
    assert result.exit_code == 1 and "not a replay state" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [
    ["--dest", "ftp://h/%k"],
    ["--dest", "http://h/sübmit/%k"],
    ["--dest", "http://h/a b/%k"],
    ["--dest", "http://h/%k", "--sample", "0"],
    ["--dest", "http://h/%k", "--concurrency", "0"],
    ["--dest", "http://h/%k", "--rate", "-1"],
    ["--dest", "http://h/%k", "--proxy", "socks5://p:1"],
])
def test_cli_usage_errors(tmp_path, args):
    write_raw_dir(tmp_path / "raw", make_raw_records(1))
    result = CliRunner().invoke(replay, [str(tmp_path / "raw")] + args)
    assert result.exit_code == 2, result.output


def test_rate_limit_spaces_requests(server, tmp_path):
    target = server()
    write_raw_dir(tmp_path / "raw", make_raw_records(10))
    summary = replay_logs(cfg([tmp_path / "raw"], target.url + "/submit/telemetry/%k", rate=200))
    assert summary.delivered == 10
    limiter = RateLimiter(50)
    first = limiter.next
    delays = [limiter.delay() for _ in range(5)]
    assert limiter.next - first >= 5 / 50  # each request takes the next slot, 1/rate apart
    assert delays == sorted(delays) and delays[-1] >= 3 / 50


def test_docs_cover_every_option():
    text = (Path(__file__).parent.parent / "docs" / "replay.md").read_text()
    for param in replay.params:
        for opt in param.opts + param.secondary_opts:
            if opt.startswith("--"):
                assert opt in text, f"{opt} is not documented"


class RawServer:
    """A bare asyncio socket server that answers every request with ``reply`` bytes, as written.

    For the response shapes a Tornado app never produces: chunked bodies,
    HTTP/1.0 read-to-close, interim 100 responses, garbage, silence.
    """

    def __init__(self, reply: bytes, close_after: bool = False):
        self.reply, self.close_after = reply, close_after
        self.connections = 0
        self.requests = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        self._ready.wait(10)

    async def _main(self):
        async def handle(reader, writer):
            self.connections += 1
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                       if line.lower().startswith(b"content-length:")), b"0"))
                    await reader.readexactly(length)
                    self.requests += 1
                    writer.write(self.reply)
                    await writer.drain()
                    if self.close_after:
                        break
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            writer.close()

        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        self._ready.set()
        await self._done.wait()
        server.close()

    def stop(self):
        self._loop.call_soon_threadsafe(self._done.set)
        self._thread.join(10)


@pytest.mark.parametrize("reply, close_after, delivered, reused", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nOK\r\n0\r\n\r\n", False, 20, True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK", False, 20, True),
    (b"HTTP/1.1 204 No Content\r\n\r\n", False, 20, True),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nOK", True, 20, False),
    (b"HTTP/1.0 200 OK\r\n\r\nOK", True, 20, False),
    (b"SMTP ready\r\n\r\n", True, 0, False),
    (b"", True, 0, False),
])
def test_response_shapes(tmp_path, reply, close_after, delivered, reused):
    target = RawServer(reply, close_after)
    try:
        write_raw_dir(tmp_path / "raw", make_raw_records(20))
        summary = replay_logs(cfg([tmp_path / "raw"], target.url + "/submit/telemetry/%k", attempts=2,
                                  concurrency=2, timeout=5, give_up_after=100))
    finally:
        target.stop()
    assert (summary.delivered, summary.failed) == (delivered, 20 - delivered)
    if reused:
        assert target.connections <= 2 < target.requests  # kept alive
    else:
        assert target.connections == target.requests  # one connection per request


def test_a_state_file_that_cannot_be_written_stops_the_replay_before_sending(server, tmp_path):
    target = server()
    write_raw_dir(tmp_path / "raw", make_raw_records(5))
    state = tmp_path / "nonexistent" / "x"
    with pytest.raises(ReplayError, match="cannot write state file"):
        replay_logs(cfg([tmp_path / "raw"], target.url + "/submit/telemetry/%k", state=state))
    result = CliRunner().invoke(replay, [str(tmp_path / "raw"), "--dest",
                                         target.url + "/submit/telemetry/%k", "--state", str(state)])
    assert result.exit_code == 1 and "cannot write state file" in result.output
    assert target.requests == []  # nothing sent: a rerun would have sent it again


def test_a_state_file_that_fails_mid_way_is_reported_with_the_summary(server, tmp_path,
                                                                      monkeypatch):
    target = server()
    write_raw_dir(tmp_path / "raw", make_raw_records(6), per_file=3)
    saves = []

    def save(self):
        saves.append(1)
        if len(saves) == 1:  # the end of the first file
            raise ReplayError(f"cannot write state file {self.path}: disk full")

    monkeypatch.setattr(ReplayState, "save", save)
    result = CliRunner().invoke(replay, [str(tmp_path / "raw"), "--dest",
                                         target.url + "/submit/telemetry/%k",
                                         "--state", str(tmp_path / "s.json")])
    assert result.exit_code == 1 and "disk full" in result.output
    assert "replay: 1 files, read 3, sampled out 0, delivered 3" in result.output


def test_a_dead_destination_stops_the_replay_early_with_one_summary(server, tmp_path):
    dead = server(listen=False)  # bound, not listening: every connection is refused
    records = make_raw_records(300)
    write_raw_dir(tmp_path / "raw", records)
    state = tmp_path / "state.json"
    config = cfg([tmp_path / "raw"], dead.url + "/submit/telemetry/%k", attempts=2, state=state)
    summary = replay_logs(config)
    assert summary.gave_up and "did not answer 8 records in a row" in summary.gave_up
    assert "ConnectionRefusedError" in summary.gave_up
    assert summary.failed < 300 and summary.delivered == 0
    assert "gave up:" in summary.describe()

    result = CliRunner().invoke(replay, [str(tmp_path / "raw"), "--dest",
                                         dead.url + "/submit/telemetry/%k", "--attempts", "1",
                                         "--concurrency", "4"])
    assert result.exit_code == 1
    assert "Error: gave up: the destination did not answer 4 records in a row" in result.stderr
    assert len(result.stderr.splitlines()) <= 4 + 2  # a few failures, the summary, the error

    dead.start()  # back: the rerun resumes and delivers everything not failed before
    again = replay_logs(config)
    assert again.gave_up is None and again.delivered + summary.failed == 300


@pytest.mark.parametrize("dest", ["http://h/submit/%q", "http://h/%k%", "http://h/%zz/%k"])
def test_unknown_placeholders_in_the_destination_are_refused(tmp_path, dest):
    write_raw_dir(tmp_path / "raw", make_raw_records(1))
    result = CliRunner().invoke(replay, [str(tmp_path / "raw"), "--dest", dest])
    assert result.exit_code == 2 and "is neither the %k placeholder" in result.output
    # escapes stay allowed
    ReplayConfig(sources=[tmp_path / "raw"], dest="http://h/a%20b/%k")


def test_progress_can_be_asked_for_off_a_terminal(server, tmp_path):
    target = server()
    write_raw_dir(tmp_path / "raw", make_raw_records(10))
    result = CliRunner().invoke(replay, [str(tmp_path / "raw"), "--dest",
                                         target.url + "/submit/telemetry/%k", "--progress"])
    assert result.exit_code == 0, result.output
    assert "replay:" in result.stderr and "rec" in result.stderr.split("replay: 1 files")[0]
