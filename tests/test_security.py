"""Security review (issue 16), one test per promise.

- no dimension or docId value, and no revision URL from a ping, writes outside the
  data directory, and writes never go through a symlink planted at their target;
- the histogram client fetches only under the configured server: no redirect
  elsewhere, a size limit;
- no MongoDB operator gets in through a CLI filter, a pipeline option or a name;
- secrets in URIs (MongoDB passwords, proxy and endpoint credentials, AWS keys) are
  never printed;
- files are created with sane permissions (never group/world-writable, the umask honoured).
"""

from __future__ import annotations

import gzip
import logging
import os
import socket
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from converter.layout import find_layout_files
from converter.process import ConverterConfig, process
from converter.revisions import RevisionCache, RevisionError, revision_path, write_revision
from importer.mongo import redact
from receiver.rawlog import encode_record

REPO, REV = "releases/mozilla-release", "a55c55edf302"
TS = 1378822911255
HOSTILE = ["..", ".", "../../../outside", "/etc/passwd", "a/../../b", "\x00", "~root",
           "$where", "%2e%2e%2f", "..\\..\\x", "x" * 400, "é/../../"]


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


# --- paths ----------------------------------------------------------------------


def test_hostile_dimensions_and_doc_ids_stay_inside_the_output(tmp_path, fixtures_dir):
    data = tmp_path / "data"
    raw, out, cache = data / "raw", data / "out", data / "cache"
    raw.mkdir(parents=True)
    write_revision(cache, REPO, REV,
                   (fixtures_dir / "histograms" / f"{REV}.Histograms.json").read_bytes())
    outside = tmp_path / "outside"
    outside.mkdir()
    records = b""
    for i, bad in enumerate(HOSTILE):
        info = {"reason": bad, "appName": bad, "appVersion": bad, "appUpdateChannel": bad,
                "appBuildID": bad, "OS": bad,
                "revision": f"http://hg.mozilla.org/{REPO}/rev/{REV}"}
        body = gzip.compress(orjson.dumps({"ver": 1, "info": info, "histograms": {}}))
        path = "/".join([f"{bad}{i}"] + [bad] * 5)
        records += encode_record(path, body, TS) + encode_record(f"{i}{bad}", body, TS)
    (raw / "telemetry.v1.h.1.2.finished").write_bytes(records)
    before = _files(tmp_path)
    summary = process(ConverterConfig(storage_path=str(out), histogram_cache=str(cache)), [raw],
                      progress=False)
    assert summary.records_in if hasattr(summary, "records_in") else True
    created = _files(tmp_path) - before
    assert created, "the run wrote nothing"
    for p in created:
        assert p.resolve().is_relative_to(data.resolve()), p
        assert not p.is_symlink(), p
    assert not any(outside.iterdir())
    # Values were kept (cleaned), not dropped: the layout holds the records.
    assert find_layout_files(out, include_plain=False)


@pytest.mark.parametrize("repo, rev", [
    ("../../outside", REV), ("releases/..", REV), ("a/./b", REV), ("/abs", REV),
    ("releases/mozilla-release\n", REV), (REPO, "a55c55edf302\n"), (REPO, "../a55c55edf302"),
])
def test_revision_names_from_pings_cannot_leave_the_cache(tmp_path, repo, rev):
    with pytest.raises(RevisionError):
        revision_path(tmp_path, repo, rev)
    with pytest.raises(RevisionError):
        RevisionCache(tmp_path, None).get(f"http://hg.mozilla.org/{repo}/rev/{rev}")
    assert not any(tmp_path.iterdir())


def test_cache_write_replaces_a_planted_symlink_instead_of_following_it(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"keep me")
    target = revision_path(tmp_path / "cache", REPO, REV)
    target.parent.mkdir(parents=True)
    target.symlink_to(secret)
    write_revision(tmp_path / "cache", REPO, REV, b"{}")
    assert secret.read_bytes() == b"keep me"
    assert not target.is_symlink() and target.read_bytes() == b"{}"


# --- the histogram server client ----------------------------------------------------


class _Server:
    """A loopback HTTP server whose GETs answer with ``respond(path) -> (status, headers, body)``."""

    def __init__(self, respond):
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                status, headers, body = respond(self.path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers(fixtures_dir):
    definitions = (fixtures_dir / "histograms" / f"{REV}.Histograms.json").read_bytes()
    elsewhere = _Server(lambda path: (200, {}, definitions))
    made = [elsewhere]

    def make(respond):
        s = _Server(respond)
        made.append(s)
        return s

    yield elsewhere, make, definitions
    for s in made:
        s.close()


def test_redirect_elsewhere_is_not_followed(servers, tmp_path):
    elsewhere, make, _ = servers
    base = make(lambda path: (302, {"Location": elsewhere.url + path}, b""))
    cache = RevisionCache(tmp_path, base.url, retries=0)
    with pytest.raises(RevisionError, match="outside"):
        cache.get_revision(REPO, REV)
    assert base.requests and not elsewhere.requests
    assert not any(tmp_path.iterdir())  # nothing cached


def test_redirect_under_the_base_url_is_followed(servers, tmp_path):
    _, make, definitions = servers

    def respond(path):
        if path.startswith("/moved/"):
            return 200, {}, definitions
        return 301, {"Location": "/moved" + path}, b""

    base = make(respond)
    histograms = RevisionCache(tmp_path, base.url, retries=0).get_revision(REPO, REV)
    assert histograms and len(base.requests) == 2


def test_oversized_revision_is_refused(servers, tmp_path, monkeypatch):
    from converter import revisions

    _, make, definitions = servers
    base = make(lambda path: (200, {}, definitions))
    monkeypatch.setattr(revisions, "MAX_DOWNLOAD", len(definitions) - 1)
    with pytest.raises(RevisionError, match="larger than"):
        RevisionCache(tmp_path, base.url, retries=0).get_revision(REPO, REV)


# --- MongoDB operators --------------------------------------------------------------------

INJECTED_FILTERS = [
    [{"field_name": "reason", "allowed_values": {"$where": "sleep(100)"}}],
    [{"field_name": "reason", "allowed_values": [{"$function": {"body": "x"}}]}],
    [{"field_name": "reason", "allowed_values": {"min": {"$gt": ""}}}],
    [{"field_name": "$where", "allowed_values": "x"}],
    [{"field_name": "reason.$where", "allowed_values": "x"}],
]


@pytest.mark.parametrize("dims", INJECTED_FILTERS)
@pytest.mark.parametrize("command", ["aggregate", "import"])
def test_filter_with_an_operator_is_refused(tmp_path, dims, command):
    from aggregations.cli import aggregate
    from importer.cli import import_

    f = tmp_path / "filter.json"
    f.write_bytes(orjson.dumps({"version": 1, "dimensions": dims}))
    (tmp_path / "data").mkdir()
    dead = f"mongodb://127.0.0.1:{_dead_port()}/"
    if command == "aggregate":
        result = CliRunner().invoke(aggregate, ["submissions", "--filter", str(f), "--show"])
    else:
        result = CliRunner().invoke(import_, [str(tmp_path / "data"), "--filter", str(f),
                                              "--mongo-url", dead])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "field_name" in result.output or "allowed_values" in result.output


def _keys(node) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()


def test_hostile_filter_values_reach_match_as_plain_strings(tmp_path):
    from aggregations.cli import aggregate

    f = tmp_path / "filter.json"
    f.write_bytes(orjson.dumps({"version": 1, "dimensions": [
        {"field_name": "reason", "allowed_values": ["$where", "{\"$ne\": 1}"]},
        {"field_name": "appName", "allowed_values": "$function"},
        {"field_name": "appUpdateChannel", "allowed_values": {"min": "$gt", "max": "$lt"}}]}))
    result = CliRunner().invoke(aggregate, ["submissions", "--filter", str(f), "--show"])
    assert result.exit_code == 0, result.output
    pipeline = orjson.loads(result.output)
    match = pipeline[0]["$match"]
    assert set(match) == {"meta.reason", "meta.appName", "meta.appUpdateChannel"}
    assert _keys(pipeline) & {"$where", "$function", "$accumulator", "$expr"} == set()
    assert "$" not in orjson.dumps(match).decode().replace('"$in"', "").replace(
        '"$gte"', "").replace('"$lte"', "")


@pytest.mark.parametrize("args", [
    ["histogram", "--name", "$where"],
    ["histogram", "--name", "GC_MS", "--by", "$where"],
    ["simple_measurement", "--name", "a.$function"],
    ["histogram", "--name", "GC_MS", "--by", "meta.$where"],
])
def test_pipeline_options_with_operators_are_refused(args):
    from aggregations.cli import aggregate

    result = CliRunner().invoke(aggregate, args + ["--show"])
    assert result.exit_code == 2, result.output
    assert "$" not in "".join(_keys(result.output))  # nothing was built


# --- secrets ---------------------------------------------------------------------------

SECRET = "s3cr3tPW"


@pytest.mark.parametrize("url", [
    f"mongodb://alice:{SECRET}@127.0.0.1:{{port}}/",
    f"mongodb://alice:{SECRET}@127.0.0.1:{{port}},127.0.0.1:{{port}}/db?replicaSet=rs",
    f"mongodb://alice:{SECRET}/x@127.0.0.1:{{port}}/",  # an unescaped '/' in the password
    f"mongodb://alice:p@{SECRET}@127.0.0.1:{{port}}/",  # an unescaped '@'
    f"mongodb://alice:{SECRET}@127.0.0.1:{{port}}/?authSource=admin&bogusOption=1",
])
def test_mongo_passwords_are_never_printed(tmp_path, url):
    from aggregations.cli import aggregate
    from importer.cli import import_

    url = url.format(port=_dead_port())
    (tmp_path / "data").mkdir()
    for cmd, args in ((import_, [str(tmp_path / "data")]), (aggregate, ["submissions"])):
        result = CliRunner().invoke(cmd, args + ["--mongo-url", url])
        assert result.exit_code != 0
        assert SECRET not in result.output, result.output
        assert SECRET not in str(result.exception or "")
    assert SECRET not in redact(url)


def test_s3_credentials_are_never_printed(tmp_path, monkeypatch, caplog):
    from converter.export import export

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    (tmp_path / "layout").mkdir()
    for endpoint in (f"http://127.0.0.1:{_dead_port()}",
                     f"http://user:{SECRET}@127.0.0.1:{_dead_port()}"):
        result = CliRunner().invoke(export, [str(tmp_path / "layout"), "--bucket", "b",
                                             "--endpoint-url", endpoint])
        assert result.exit_code != 0
        assert SECRET not in result.output, result.output
    assert SECRET not in caplog.text


def test_replay_credentials_are_never_printed(tmp_path, caplog):
    from receiver.replay import replay

    caplog.set_level(logging.DEBUG)
    raw = tmp_path / "telemetry.v1.h.1.2.finished"
    raw.write_bytes(encode_record("d1/saved-session/Firefox/23.0/release/2013", b"x", TS))
    for args in (["--dest", f"http://bob:{SECRET}@127.0.0.1:{_dead_port()}/%k"],
                 ["--dest", "http://127.0.0.1:9/%k",
                  "--proxy", f"http://bob:{SECRET}@127.0.0.1:{_dead_port()}"]):
        result = CliRunner().invoke(replay, [str(raw), "--attempts", "1"] + args)
        assert result.exit_code == 1, result.output
        assert SECRET not in result.output, result.output
    assert SECRET not in caplog.text


# --- permissions ---------------------------------------------------------------------------


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode)
            for p in [root, *root.rglob("*")]}


def test_created_files_have_sane_permissions(tmp_path, fixtures_dir):
    """Under umask 022: nothing group- or world-writable, no data file executable."""
    import http.client

    from receiver.config import ReceiverConfig
    from receiver.replay import ReplayConfig, replay_logs
    from receiver.service import start_receiver

    old = os.umask(0o022)
    try:
        logs = tmp_path / "raw"
        config = ReceiverConfig(port=0, log_path=str(logs), motd="", workers=1,
                                stats_log_file=str(tmp_path / "stats.log"))
        with start_receiver(config) as r:
            body = (fixtures_dir / "raw" / "telemetry1.v1.log").read_bytes()[:2000]
            conn = http.client.HTTPConnection(r.host, r.port, timeout=10)
            conn.request("POST", "/submit/telemetry/d1/saved-session/Firefox/23.0/release/2013",
                         body=body)
            assert conn.getresponse().status == 200
            summary = replay_logs(ReplayConfig([fixtures_dir / "raw" / "telemetry1.v1.log"],
                                               r.submit_url("%k"), state=tmp_path / "state.json"))
            assert summary.delivered
        cache = tmp_path / "cache"
        write_revision(cache, REPO, REV,
                       (fixtures_dir / "histograms" / f"{REV}.Histograms.json").read_bytes())
        process(ConverterConfig(storage_path=str(tmp_path / "out"), histogram_cache=str(cache)),
                [logs], progress=False)
    finally:
        os.umask(old)
    modes = _modes(tmp_path)
    assert len(modes) > 10
    for name, mode in modes.items():
        assert not mode & 0o022, f"{name} is group/world-writable: {oct(mode)}"
        p = tmp_path / name
        if p.is_file():
            assert not mode & 0o111, f"{name} is executable: {oct(mode)}"


@pytest.mark.parametrize("pipeline", [
    [{"$match": {"$where": "sleep(100) || true"}}],
    [{"$match": {"$expr": {"$function": {"body": "function() {return true}", "args": [],
                                         "lang": "js"}}}}],
    [{"$group": {"_id": None, "x": {"$accumulator": {"init": "function() {}"}}}}],
    [{"$facet": {"a": [{"$match": {"$where": "true"}}]}}],
    [{"$lookup": {"from": "payloads", "pipeline": [{"$match": {"\u0024where": "1"}}],
                  "as": "x"}}],
    [{"$match": {}}, {"$out": "stolen"}],
    [{"$merge": {"into": "payloads"}}],
])
def test_custom_pipeline_with_javascript_or_writes_is_refused(tmp_path, mongo_url, mongo_db,
                                                             pipeline):
    """Issue 10 made custom pipelines read-only; this checks it from the command line."""
    from aggregations.cli import aggregate

    mongo_db.payloads.insert_one({"_id": "d1", "meta": {"reason": "saved_session"}})
    f = tmp_path / "pipeline.json"
    f.write_bytes(orjson.dumps(pipeline))
    result = CliRunner().invoke(aggregate, ["--pipeline", str(f), "--mongo-url", mongo_url,
                                            "-d", mongo_db.name])
    assert result.exit_code == 2, result.output
    assert "read-only" in result.output
    assert sorted(mongo_db.list_collection_names()) == ["payloads"]
    assert mongo_db.payloads.count_documents({}) == 1
