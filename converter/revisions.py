"""The revision cache: which Histograms.json a ping was recorded against.

A classic ping names its histogram definitions by an hg URL
(``https://hg.mozilla.org/releases/mozilla-release/rev/a55c55edf302``).  The
converter needs that revision for every record, so lookups go through three
layers, cheapest first: an in-memory LRU of parsed revisions, a disk cache
laid out as ``{cache_dir}/{repo}/{rev}/Histograms.json`` (shared safely by
concurrent worker processes: files appear whole, by rename), and a histogram
server over HTTP that answers hg's raw-file URLs.  A revision that could not
be found is remembered for ``failure_ttl`` seconds so that a burst of records
from one unknown build costs one request, not thousands.

The disk cache layout is also the layout :func:`serve_histograms` serves, so
a cache directory filled on a connected machine can be served to an offline
site as is.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urljoin, urlsplit

import requests

from converter.histograms import HistogramError, Histograms

log = logging.getLogger(__name__)

HISTOGRAMS_FILE = "Histograms.json"
RAW_FILE_SUFFIX = "toolkit/components/telemetry/Histograms.json"
MAX_DOWNLOAD = 64 * 1024 * 1024
MAX_REDIRECTS = 3
MAX_FAILURES = 10_000       # remembered failed revisions per cache

_REVISION_URL = re.compile(r"^https?://[^/?#]+/(?P<repo>[^?#]+?)/rev/(?P<rev>[0-9a-fA-F]{6,40})/?$")
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REV = re.compile(r"^[0-9a-fA-F]{6,40}$")

MISSING_REVISION = "missing_revision"
MISSING_REVISION_REPO = "missing_revision_repo"


class RevisionError(Exception):
    """A revision that cannot be used; ``reason`` is the converter's error code.

    ``missing_revision_repo``: the URL does not name a repository and revision.
    ``missing_revision``: the revision could not be found or fetched, or what
    was fetched is not a usable Histograms.json (the message says which).
    ``unavailable`` is set when the histogram server could not be asked at all
    (unreachable, timing out, answering 5xx): then the fault is the
    infrastructure's, not the record's, and it says what happened.
    """

    def __init__(self, reason: str, message: str, unavailable: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.unavailable = unavailable


def _check_repo(repo: str) -> str:
    parts = repo.split("/")
    if not all(_REPO_PART.fullmatch(p) for p in parts):
        raise RevisionError(MISSING_REVISION_REPO, f"not a repository name: {repo!r}")
    return repo


def parse_revision_url(url: str) -> tuple[str, str]:
    """``(repo, rev)`` from an hg revision URL.

    E.g. ``("releases/mozilla-release", "a55c55edf302")`` from
    ``https://hg.mozilla.org/releases/mozilla-release/rev/a55c55edf302``.

    The host is ignored (we never fetch from it).  The repository must be
    plain path components, never ``..``, so it can name a cache directory.
    """
    if not isinstance(url, str) or not url:
        raise RevisionError(MISSING_REVISION_REPO, f"no revision URL: {url!r}")
    m = _REVISION_URL.match(url.strip())
    if not m:
        raise RevisionError(MISSING_REVISION_REPO, f"not an hg revision URL: {url[:200]!r}")
    return _check_repo(m.group("repo")), m.group("rev").lower()


def revision_path(directory: str | os.PathLike, repo: str, rev: str) -> Path:
    """Where a revision's Histograms.json lives in a cache or server directory."""
    _check_repo(repo)
    if not _REV.fullmatch(rev):
        raise RevisionError(MISSING_REVISION_REPO, f"not a revision: {rev!r}")
    return Path(directory, *repo.split("/"), rev, HISTOGRAMS_FILE)


def write_revision(directory: str | os.PathLike, repo: str, rev: str, data: bytes) -> Path:
    """Store a revision's file atomically: readers see the whole file or none.

    Written to a temporary name in the same directory, flushed, then renamed:
    several processes may store the same revision at once and each rename
    replaces a complete file with an identical one.
    """
    target = revision_path(directory, repo, rev)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{HISTOGRAMS_FILE}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def server_base_url(server: str | None) -> str | None:
    """The histogram server's base URL from config: ``host:port`` or a full URL.

    The original converter's ``histogram_server`` key held ``host:port``.
    """
    if not server:
        return None
    server = server.strip().rstrip("/")
    if "://" not in server:
        server = "http://" + server
    return server


def raw_file_url(server: str, repo: str, rev: str) -> str:
    """hg's raw-file URL of a revision's Histograms.json on ``server``."""
    return f"{server_base_url(server)}/{repo}/raw-file/{rev}/{RAW_FILE_SUFFIX}"


class RevisionCache:
    """Histograms.json revisions by hg URL: memory, then disk, then HTTP.

    One instance per process; it is picklable (only its configuration
    travels), so a pool initializer may receive it.  Thread-safe.
    """

    def __init__(self, cache_dir: str | os.PathLike | None, server: str | None,
                 failure_ttl: float = 300, connect_timeout: float = 5.0,
                 read_timeout: float = 30.0, retries: int = 3, backoff: float = 0.5,
                 memory_size: int = 64, clock: Callable[[], float] = time.monotonic):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.server = server_base_url(server)
        self.failure_ttl = failure_ttl
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retries = retries
        self.backoff = backoff
        self.memory_size = memory_size
        self.clock = clock
        self._setup()

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._memory: OrderedDict[tuple[str, str], Histograms] = OrderedDict()
        self._failures: dict[tuple[str, str], tuple[float, RevisionError]] = {}
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self._session: requests.Session | None = None
        self.stats = {"memory": 0, "disk": 0, "http": 0, "failed": 0, "remembered_failure": 0}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_lock", "_memory", "_failures", "_loading", "_session", "stats"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._setup()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def get(self, revision_url: str) -> Histograms:
        """The parsed Histograms.json of the revision an hg URL names, or RevisionError."""
        repo, rev = parse_revision_url(revision_url)
        return self.get_revision(repo, rev)

    def get_revision(self, repo: str, rev: str) -> Histograms:
        """Like :meth:`get`, by repository and revision.

        Threads asking for the same revision at once wait for one load
        instead of each fetching it.
        """
        key = (repo, rev)
        found = self._known(key)
        if found is not None:
            return found
        with self._lock:
            loading = self._loading.setdefault(key, threading.Lock())
        try:
            with loading:
                found = self._known(key)    # loaded (or failed) while we waited
                if found is not None:
                    return found
                return self._load_and_remember(key)
        finally:
            with self._lock:
                if self._loading.get(key) is loading:
                    del self._loading[key]

    def _known(self, key: tuple[str, str]) -> Histograms | None:
        """A revision in memory, a remembered failure raised again, or None."""
        with self._lock:
            found = self._memory.get(key)
            if found is not None:
                self._memory.move_to_end(key)
                self.stats["memory"] += 1
                return found
            failure = self._failures.get(key)
            if failure is not None:
                if self.clock() < failure[0]:
                    self.stats["remembered_failure"] += 1
                    raise RevisionError(failure[1].reason, f"{failure[1]} (remembered)",
                                        failure[1].unavailable)
                del self._failures[key]
        return None

    def _load_and_remember(self, key: tuple[str, str]) -> Histograms:
        try:
            histograms = self._load(*key)
        except RevisionError as e:
            with self._lock:
                self.stats["failed"] += 1
                if self.failure_ttl > 0:
                    self._remember_failure(key, e)
            raise
        with self._lock:
            self._memory[key] = histograms
            self._memory.move_to_end(key)
            while len(self._memory) > self.memory_size:
                self._memory.popitem(last=False)
        return histograms

    def _remember_failure(self, key: tuple[str, str], error: RevisionError) -> None:
        now = self.clock()
        self._failures.pop(key, None)
        self._failures[key] = (now + self.failure_ttl, error)
        if len(self._failures) > MAX_FAILURES:     # a flood of made-up revisions: stay bounded
            for old in [k for k, (until, _) in self._failures.items() if until <= now]:
                del self._failures[old]
            while len(self._failures) > MAX_FAILURES:
                del self._failures[next(iter(self._failures))]

    def forget_failures(self) -> None:
        """Drop remembered failures, e.g. once a missing revision has been published."""
        with self._lock:
            self._failures.clear()

    def _load(self, repo: str, rev: str) -> Histograms:
        if self.cache_dir is not None:
            path = revision_path(self.cache_dir, repo, rev)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("cannot read cached revision %s: %s", path, e)
            else:
                try:
                    histograms = Histograms.from_bytes(data)
                except HistogramError as e:
                    log.warning("cached revision %s is unusable (%s); fetching it again", path, e)
                else:
                    self.stats["disk"] += 1
                    return histograms
        if self.server is None:
            raise RevisionError(MISSING_REVISION, f"revision {repo}/{rev} is not in the cache "
                                                  "and no histogram server is configured")
        data = self._fetch(repo, rev)
        try:
            histograms = Histograms.from_bytes(data)
        except HistogramError as e:
            raise RevisionError(MISSING_REVISION,
                                f"revision {repo}/{rev} from {self.server}: {e}") from None
        self.stats["http"] += 1
        if self.cache_dir is not None:
            try:
                write_revision(self.cache_dir, repo, rev, data)
            except OSError as e:  # the cache is an optimisation: a full disk must not fail records
                log.warning("cannot cache revision %s/%s: %s", repo, rev, e)
        return histograms

    def _fetch(self, repo: str, rev: str) -> bytes:
        url = raw_file_url(self.server, repo, rev)
        if self._session is None:
            self._session = requests.Session()
        problem = ""
        unavailable = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with self._get(url) as response:
                    status = response.status_code
                    if status == HTTPStatus.OK:
                        return _read_limited(response, url)
                    problem = f"HTTP {status}"
                    if status < 500 and status != HTTPStatus.TOO_MANY_REQUESTS:
                        unavailable = None
                        break  # 404 and friends: asking again will not help
                    unavailable = f"histogram server {self.server} answers {problem}"
            except OffBase as e:
                problem = str(e)
                unavailable = f"histogram server {self.server} redirects elsewhere"
                break
            except requests.RequestException as e:
                problem = f"{type(e).__name__}: {e}"
                unavailable = f"histogram server {self.server} unreachable: {_short_problem(e)}"
            log.info("fetching %s failed (attempt %d): %s", url, attempt + 1, problem)
        raise RevisionError(MISSING_REVISION,
                            f"revision {repo}/{rev} not available from {url}: {problem}",
                            unavailable)

    def _get(self, url: str) -> requests.Response:
        """GET ``url``, following redirects only while they stay under the configured server.

        The URL comes from a ping (its repository and revision), so a server
        that redirects (or is made to redirect) elsewhere, to an internal
        address for instance, must not make the converter fetch from there.
        """
        for _ in range(MAX_REDIRECTS + 1):
            response = self._session.get(url, timeout=(self.connect_timeout, self.read_timeout),
                                         stream=True, allow_redirects=False)
            if not response.is_redirect:
                return response
            target = urljoin(url, response.headers.get("Location", ""))
            response.close()
            if not target.startswith(self.server + "/"):
                raise OffBase(f"{url} redirects to {target[:200]}, outside {self.server}")
            url = target
        raise OffBase(f"{url}: more than {MAX_REDIRECTS} redirects")


def _short_problem(e: requests.RequestException) -> str:
    """The cause of a failed request in a few words ("Connection refused", "timed out")."""
    if isinstance(e, requests.Timeout):
        return "timed out"
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(e))
    if found:
        return found.group(1).strip()
    return type(e).__name__


class OffBase(Exception):
    """A redirect away from the configured histogram server, which is never followed."""


def _read_limited(response: requests.Response, url: str) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(1 << 16):
        size += len(chunk)
        if size > MAX_DOWNLOAD:
            raise RevisionError(MISSING_REVISION, f"{url} is larger than {MAX_DOWNLOAD} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------
# The histogram server

class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
                send_body: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _serve(self, send_body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.server.owner._record(path)
        if path == "/status":
            self._answer(HTTPStatus.OK, b"OK", send_body=send_body)
            return
        suffix = f"/{RAW_FILE_SUFFIX}"
        head, sep, rest = path.partition("/raw-file/")
        if not sep or not rest.endswith(suffix) or not head.startswith("/"):
            self._answer(HTTPStatus.NOT_FOUND, b"not a Histograms.json raw-file URL\n",
                         send_body=send_body)
            return
        repo, rev = head[1:], rest[: -len(suffix)]
        try:
            file = revision_path(self.server.directory, repo, rev)
        except RevisionError:
            self._answer(HTTPStatus.BAD_REQUEST, b"bad repository or revision\n",
                         send_body=send_body)
            return
        if not file.resolve().is_relative_to(self.server.directory):
            self._answer(HTTPStatus.BAD_REQUEST, b"outside the served directory\n",
                         send_body=send_body)
            return
        try:
            data = file.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self._answer(HTTPStatus.NOT_FOUND, b"no such revision\n", send_body=send_body)
            return
        self._answer(HTTPStatus.OK, data, "application/json", send_body=send_body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(send_body=False)

    def _not_allowed(self) -> None:
        self._answer(HTTPStatus.METHOD_NOT_ALLOWED, b"read only\n")

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    directory: Path
    owner: "HistogramServer"


class HistogramServer:
    """A running histogram server; see :func:`serve_histograms`."""

    def __init__(self, directory: str | os.PathLike, host: str = "127.0.0.1", port: int = 0):
        self.directory = Path(directory).resolve()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.directory = self.directory
        self._httpd.owner = self
        self.host, self.port = self._httpd.server_address[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.requests: list[str] = []   # every path asked for, in order (tests count fetches)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="histogram-server", daemon=True)

    def _record(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)

    def start(self) -> "HistogramServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        if not self._stopped.is_set():
            self._stopped.set()
            self._httpd.shutdown()
            self._httpd.server_close()

    def wait(self) -> None:
        """Block until :meth:`stop` (or Ctrl-C, which stops the server)."""
        try:
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            self.stop()

    def __enter__(self) -> "HistogramServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_histograms(directory: str | os.PathLike, host: str = "127.0.0.1",
                     port: int = 0) -> HistogramServer:
    """Serve ``{directory}/{repo}/{rev}/Histograms.json`` at hg's raw-file URLs.

    The server runs in a background thread until ``stop()``.

    ``GET /{repo}/raw-file/{rev}/toolkit/components/telemetry/Histograms.json``
    answers the file (404 when absent, 400 for a repository or revision that
    is not plain path components, such as ``..``).  ``port=0`` picks a free
    port; the handle's ``url`` says which.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"histogram directory {directory} does not exist")
    return HistogramServer(directory, host, port).start()
