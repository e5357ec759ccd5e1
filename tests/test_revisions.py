"""The revision cache (memory, disk, HTTP) and the histogram server, against real local servers."""

from __future__ import annotations

import http.client
import multiprocessing
import os
import pickle
import socket
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from converter.histograms import Histograms
import converter.revisions
from converter.revisions import (
    MISSING_REVISION,
    MISSING_REVISION_REPO,
    RevisionCache,
    RevisionError,
    parse_revision_url,
    raw_file_url,
    revision_path,
    serve_histograms,
    server_base_url,
    write_revision,
)

REPO = "releases/mozilla-release"
REV = "a55c55edf302"
URL = f"https://hg.mozilla.org/{REPO}/rev/{REV}"
RAW = "toolkit/components/telemetry/Histograms.json"
SPAWN = multiprocessing.get_context("spawn")   # no fork while server threads run


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def histograms_data(fixtures_dir) -> bytes:
    return (fixtures_dir / "histograms" / f"{REV}.Histograms.json").read_bytes()


@pytest.fixture
def served(tmp_path, histograms_data):
    """A histogram server over a directory holding revision a55c55edf302 of mozilla-release."""
    directory = tmp_path / "served"
    write_revision(directory, REPO, REV, histograms_data)
    with serve_histograms(directory) as server:
        yield server


def fetches(server) -> int:
    return sum(1 for p in server.requests if p.endswith(RAW))


# --------------------------------------------------------------------------- URLs

@pytest.mark.parametrize("url, expected", [
    (URL, (REPO, REV)),
    (f"http://hg.mozilla.org/{REPO}/rev/{REV}", (REPO, REV)),
    ("https://hg.mozilla.org/mozilla-central/rev/8D3810543EDC/",
     ("mozilla-central", "8d3810543edc")),
    ("https://hg.mozilla.org/releases/mozilla-b2g18_v1_1_0_hd/rev/" + "a" * 40,
     ("releases/mozilla-b2g18_v1_1_0_hd", "a" * 40)),
])
def test_parse_revision_url(url, expected):
    assert parse_revision_url(url) == expected


@pytest.mark.parametrize("url", [
    "", None, 42, "a55c55edf302", "https://hg.mozilla.org/rev/a55c55edf302",
    "https://hg.mozilla.org/releases/mozilla-release/a55c55edf302",
    "https://hg.mozilla.org/releases/mozilla-release/rev/xyz",
    "https://hg.mozilla.org/releases/mozilla-release/rev/abc",
    "https://hg.mozilla.org/../../etc/rev/a55c55edf302",
    "https://hg.mozilla.org/releases//mozilla-release/rev/a55c55edf302",
    "https://hg.mozilla.org/.hidden/rev/a55c55edf302",
    "https://hg.mozilla.org/a b/rev/a55c55edf302",
    "ftp://hg.mozilla.org/mozilla-central/rev/a55c55edf302",
])
def test_parse_revision_url_rejects(url):
    with pytest.raises(RevisionError) as info:
        parse_revision_url(url)
    assert info.value.reason == MISSING_REVISION_REPO


@pytest.mark.parametrize("server, expected", [
    ("localhost:9898", "http://localhost:9898"),
    ("http://127.0.0.1:1/", "http://127.0.0.1:1"),
    ("https://example.org/hg", "https://example.org/hg"),
    ("", None),
    (None, None),
])
def test_server_base_url(server, expected):
    assert server_base_url(server) == expected


def test_raw_file_url():
    assert raw_file_url("h:1", REPO, REV) == f"http://h:1/{REPO}/raw-file/{REV}/{RAW}"


# --------------------------------------------------------------------------- layers

def test_http_then_memory(tmp_path, served, histograms_data):
    cache = RevisionCache(tmp_path / "cache", served.url, backoff=0)
    first = cache.get(URL)
    assert isinstance(first, Histograms) and len(first) == 524
    assert cache.get(URL) is first
    assert cache.get(f"http://hg.mozilla.org/{REPO}/rev/{REV}") is first
    assert fetches(served) == 1
    assert cache.stats["http"] == 1 and cache.stats["memory"] == 2
    stored = tmp_path / "cache" / "releases" / "mozilla-release" / REV / "Histograms.json"
    assert stored.read_bytes() == histograms_data
    assert [p.name for p in stored.parent.iterdir()] == ["Histograms.json"]   # no temp file left


def test_host_port_server_setting(tmp_path, served):
    cache = RevisionCache(tmp_path / "cache", f"127.0.0.1:{served.port}", backoff=0)
    assert cache.get(URL).get("CYCLE_COLLECTOR").n_buckets == 50


def test_disk_hit_needs_no_server(tmp_path, histograms_data):
    write_revision(tmp_path / "cache", REPO, REV, histograms_data)
    cache = RevisionCache(tmp_path / "cache", None)
    assert len(cache.get(URL)) == 524
    assert cache.stats["disk"] == 1 and cache.stats["http"] == 0


def test_second_process_reads_disk_not_http(tmp_path, served):
    RevisionCache(tmp_path / "cache", served.url).get(URL)
    other = RevisionCache(tmp_path / "cache", served.url)
    other.get(URL)
    assert other.stats["disk"] == 1
    assert fetches(served) == 1


def test_no_disk_layer(tmp_path, served):
    cache = RevisionCache(None, served.url)
    cache.get(URL)
    assert cache.stats["http"] == 1
    assert not (tmp_path / "cache").exists()


def test_lru_evicts_oldest(tmp_path, fixtures_dir):
    revs = ["8d3810543edc", "a55c55edf302", "ad0ae007aa9e"]
    for rev in revs:
        write_revision(tmp_path, "mozilla-central", rev,
                       (fixtures_dir / "histograms" / f"{rev}.Histograms.json").read_bytes())
    cache = RevisionCache(tmp_path, None, memory_size=2)
    urls = [f"https://hg.mozilla.org/mozilla-central/rev/{rev}" for rev in revs]
    a = cache.get(urls[0])
    cache.get(urls[1])
    assert cache.get(urls[0]) is a          # a hit moves it to the front
    cache.get(urls[2])                      # evicts urls[1], the least recently used
    assert cache.get(urls[0]) is a
    assert cache.stats["disk"] == 3
    cache.get(urls[1])
    assert cache.stats["disk"] == 4


def test_missing_without_server(tmp_path):
    cache = RevisionCache(tmp_path / "cache", None)
    with pytest.raises(RevisionError, match="no histogram server") as info:
        cache.get(URL)
    assert info.value.reason == MISSING_REVISION


def test_bad_url_is_missing_revision_repo(tmp_path, served):
    cache = RevisionCache(tmp_path / "cache", served.url)
    with pytest.raises(RevisionError) as info:
        cache.get("https://hg.mozilla.org/../rev/a55c55edf302")
    assert info.value.reason == MISSING_REVISION_REPO
    assert served.requests == []


# --------------------------------------------------------------------------- failures

def test_failure_is_remembered_then_retried(tmp_path, served, histograms_data):
    clock = Clock()
    cache = RevisionCache(tmp_path / "cache", served.url, failure_ttl=60, clock=clock, backoff=0)
    missing = f"https://hg.mozilla.org/{REPO}/rev/0123456789ab"
    for _ in range(5):
        with pytest.raises(RevisionError, match="HTTP 404") as info:
            cache.get(missing)
        assert info.value.reason == MISSING_REVISION
    assert fetches(served) == 1                       # 404 is not retried, and is remembered
    assert cache.stats["remembered_failure"] == 4
    # the revision gets published; the cache asks again only once the failure has expired
    write_revision(served.directory, REPO, "0123456789ab", histograms_data)
    clock.now += 59
    with pytest.raises(RevisionError, match="remembered"):
        cache.get(missing)
    assert fetches(served) == 1
    clock.now += 2
    assert len(cache.get(missing)) == 524
    assert fetches(served) == 2


def test_forget_failures(tmp_path, served, histograms_data):
    cache = RevisionCache(tmp_path / "cache", served.url, failure_ttl=3600, backoff=0)
    missing = f"https://hg.mozilla.org/{REPO}/rev/0123456789ab"
    with pytest.raises(RevisionError):
        cache.get(missing)
    write_revision(served.directory, REPO, "0123456789ab", histograms_data)
    cache.forget_failures()
    assert len(cache.get(missing)) == 524


def test_zero_ttl_asks_every_time(tmp_path, served):
    cache = RevisionCache(tmp_path / "cache", served.url, failure_ttl=0, backoff=0)
    for _ in range(3):
        with pytest.raises(RevisionError):
            cache.get(f"https://hg.mozilla.org/{REPO}/rev/0123456789ab")
    assert fetches(served) == 3


@pytest.mark.parametrize("body", [b"not json", b"[1, 2, 3]"])
def test_invalid_file_from_server_is_not_cached(tmp_path, served, body):
    write_revision(served.directory, REPO, "bad0bad0bad0", body)
    cache = RevisionCache(tmp_path / "cache", served.url, backoff=0)
    with pytest.raises(RevisionError, match="Histograms.json") as info:
        cache.get(f"https://hg.mozilla.org/{REPO}/rev/bad0bad0bad0")
    assert info.value.reason == MISSING_REVISION
    assert not revision_path(tmp_path / "cache", REPO, "bad0bad0bad0").exists()


def test_corrupt_disk_file_is_fetched_again(tmp_path, served, histograms_data):
    path = write_revision(tmp_path / "cache", REPO, REV, b'{"truncated": ')
    cache = RevisionCache(tmp_path / "cache", served.url, backoff=0)
    assert len(cache.get(URL)) == 524
    assert fetches(served) == 1
    assert path.read_bytes() == histograms_data


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 to the first ``failures`` requests, then the file; slowly if asked to."""

    def do_GET(self):  # noqa: N802
        server = self.server
        time.sleep(server.delay)
        with server.lock:
            server.count += 1
            fail = server.count <= server.failures
        body = b"busy" if fail else server.body
        self.send_response(503 if fail else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky(histograms_data):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    httpd.lock, httpd.count, httpd.failures, httpd.body = threading.Lock(), 0, 0, histograms_data
    httpd.delay = 0.0
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("failures, retries, ok", [(2, 2, True), (3, 2, False), (1, 0, False)])
def test_server_errors_are_retried(tmp_path, flaky, failures, retries, ok):
    flaky.failures = failures
    cache = RevisionCache(tmp_path / "cache", "127.0.0.1:%d" % flaky.server_address[1],
                          retries=retries, backoff=0.01)
    if ok:
        assert len(cache.get(URL)) == 524
    else:
        with pytest.raises(RevisionError, match="HTTP 503"):
            cache.get(URL)
    assert flaky.count == min(failures + 1, retries + 1)


def test_threads_share_one_fetch(tmp_path, flaky):
    flaky.delay = 0.3
    cache = RevisionCache(tmp_path / "cache", "127.0.0.1:%d" % flaky.server_address[1])
    results: list[Histograms] = []

    def get():
        results.append(cache.get(URL))

    threads = [threading.Thread(target=get) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 6 and all(r is results[0] for r in results)
    assert flaky.count == 1


def test_remembered_failures_stay_bounded(tmp_path, served, monkeypatch):
    monkeypatch.setattr(converter.revisions, "MAX_FAILURES", 3)
    cache = RevisionCache(tmp_path / "cache", served.url, failure_ttl=3600, backoff=0)
    urls = [f"https://hg.mozilla.org/{REPO}/rev/{i:012x}" for i in range(5)]
    for url in urls + urls[-3:]:
        with pytest.raises(RevisionError):
            cache.get(url)
    assert fetches(served) == 5            # the last three are still remembered
    with pytest.raises(RevisionError):
        cache.get(urls[0])                 # the oldest was forgotten
    assert fetches(served) == 6


def test_connection_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # closed again: nothing listens there
    cache = RevisionCache(tmp_path / "cache", f"127.0.0.1:{port}", retries=1, backoff=0.01)
    with pytest.raises(RevisionError, match="ConnectionError") as info:
        cache.get(URL)
    assert info.value.reason == MISSING_REVISION


def test_read_timeout(tmp_path):
    with socket.socket() as listener:       # accepts connections but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        cache = RevisionCache(tmp_path / "cache", f"127.0.0.1:{port}", read_timeout=0.2,
                              retries=1, backoff=0.01)
        with pytest.raises(RevisionError, match="Timeout"):
            cache.get(URL)


def test_pickled_cache_keeps_its_settings(tmp_path, served):
    cache = RevisionCache(tmp_path / "cache", served.url, failure_ttl=7, memory_size=3)
    cache.get(URL)
    copy = pickle.loads(pickle.dumps(cache))
    assert (copy.cache_dir, copy.server, copy.failure_ttl, copy.memory_size) == \
        (cache.cache_dir, cache.server, 7, 3)
    assert len(copy.get(URL)) == 524
    assert copy.stats["disk"] == 1            # fresh memory, shared disk


# --------------------------------------------------------------------------- concurrency

def _write_many(args):
    directory, data, n = args
    for _ in range(n):
        write_revision(directory, REPO, REV, data)
    return n


def _fetch_in_process(args):
    cache_dir, server = args
    return len(RevisionCache(cache_dir, server, backoff=0.01).get(URL))


def test_concurrent_writers_never_show_a_partial_file(tmp_path, histograms_data):
    path = revision_path(tmp_path, REPO, REV)
    stop = threading.Event()
    seen: list[int] = []

    def read():
        while not stop.is_set():
            try:
                seen.append(len(path.read_bytes()))
            except FileNotFoundError:
                pass

    reader = threading.Thread(target=read)
    reader.start()
    try:
        with ProcessPoolExecutor(3, mp_context=SPAWN) as pool:
            assert sum(pool.map(_write_many, [(tmp_path, histograms_data, 100)] * 3)) == 300
    finally:
        stop.set()
        reader.join()
    assert seen and set(seen) == {len(histograms_data)}
    assert os.listdir(path.parent) == ["Histograms.json"]


def test_concurrent_processes_share_the_disk_cache(tmp_path, served, histograms_data):
    with ProcessPoolExecutor(4, mp_context=SPAWN) as pool:
        results = list(pool.map(_fetch_in_process, [(tmp_path / "cache", served.url)] * 8))
    assert results == [524] * 8
    assert 1 <= fetches(served) <= 8
    stored = revision_path(tmp_path / "cache", REPO, REV)
    assert stored.read_bytes() == histograms_data
    assert os.listdir(stored.parent) == ["Histograms.json"]


# --------------------------------------------------------------------------- the server

def _request(server, path: str, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path)            # the path goes on the wire exactly as given
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_server_serves_the_hg_layout(served, histograms_data):
    status, body = _request(served, f"/{REPO}/raw-file/{REV}/{RAW}")
    assert (status, body) == (200, histograms_data)
    status, body = _request(served, f"/{REPO}/raw-file/{REV}/{RAW}", "HEAD")
    assert (status, body) == (200, b"")
    assert _request(served, "/status") == (200, b"OK")


@pytest.mark.parametrize("path, status", [
    (f"/{REPO}/raw-file/0123456789ab/{RAW}", 404),
    (f"/mozilla-central/raw-file/{REV}/{RAW}", 404),
    (f"/{REPO}/raw-file/{REV}/toolkit/Histograms.json", 404),
    (f"/{REPO}/rev/{REV}", 404),
    ("/", 404),
    (f"/../raw-file/{REV}/{RAW}", 400),
    (f"/releases/../../raw-file/{REV}/{RAW}", 400),
    (f"/releases/%2e%2e/raw-file/{REV}/{RAW}", 400),
    (f"/releases%2f..%2f..%2fetc/raw-file/{REV}/{RAW}", 400),
    (f"/{REPO}/raw-file/../{REV}/{RAW}", 400),
    (f"/{REPO}/raw-file/{REV}/../{RAW}", 400),
    (f"/{REPO}/raw-file/%00/{RAW}", 400),
])
def test_server_rejects(served, path, status):
    assert _request(served, path)[0] == status


def test_server_refuses_symlinks_out_of_its_directory(tmp_path, served, histograms_data):
    outside = tmp_path / "outside"
    write_revision(outside, "secret", REV, histograms_data)
    os.symlink(outside / "secret", served.directory / "secret")
    assert _request(served, f"/secret/raw-file/{REV}/{RAW}")[0] == 400


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_server_is_read_only(served, method):
    assert _request(served, f"/{REPO}/raw-file/{REV}/{RAW}", method)[0] == 405


def test_server_needs_a_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        serve_histograms(tmp_path / "nope")


def test_server_stop_and_wait(tmp_path):
    server = serve_histograms(tmp_path)
    waiter = threading.Thread(target=server.wait)
    waiter.start()
    server.stop()
    waiter.join(10)
    assert not waiter.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_revision_path_is_the_server_layout(tmp_path):
    assert revision_path(tmp_path, REPO, REV) == \
        Path(tmp_path, "releases", "mozilla-release", REV, "Histograms.json")
    for repo, rev in [("..", REV), (REPO, "../x"), ("a/../b", REV), ("", REV)]:
        with pytest.raises(RevisionError):
            revision_path(tmp_path, repo, rev)
