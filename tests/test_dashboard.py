"""The aggregates API over a real socket: every endpoint and status of SPEC section 7."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aggregate_pings as ap
from aggregations.aggregates import Aggregate, Definitions
from aggregations.store import Store
from converter.revisions import RevisionCache
from dashboard.config import ConfigError, DashboardConfig, load_tokens
from dashboard.testing import ServiceThread

NAMES = ["reason", "appName", "appUpdateChannel", "appVersion", "appBuildID", "submission_date"]
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def pings():
    return ap.make_pings(240, seed=7)


@pytest.fixture(scope="module")
def database(mongo_client, pings, tmp_path_factory):
    name = f"t_{uuid.uuid4().hex[:16]}"
    cache = ap.write_revisions(tmp_path_factory.mktemp("hist"))
    defs = Definitions(RevisionCache(cache, None))
    agg = Aggregate()
    for _, dims, payload in pings:
        agg.add_ping(payload, dict(zip(NAMES, dims)), defs)
    Store(mongo_client[name]).apply_files({"all": (agg, {"channel": "", "version": ""})})
    yield name
    mongo_client.drop_database(name)


@pytest.fixture(scope="module")
def service(database, mongo_url, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    tokens.write_text(f"# dashboard tokens\n{TOKEN}\n\n")
    config = DashboardConfig(database=database, max_age=30, private_channels=("beta",),
                             tokens_file=str(tokens))
    with ServiceThread(config, mongo_url) as s:
        yield s


def get(service, path, **kw):
    return requests.get(service.url + path, timeout=30, **kw)


def hist_path(by, channel, **params):
    query = "&".join(f"{k}={quote(str(v), safe=',')}" for k, v in params.items())
    return f"/aggregates_by/{by}/channels/{channel}/?{query}"


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_index_lists_the_endpoints(service):
    r = get(service, "/api/")
    assert r.status_code == 200
    assert "/aggregates_by/" in r.text and "/filters/" in r.text


@pytest.mark.parametrize("by", ["build_id", "submission_date"])
def test_channels_leave_private_ones_out_without_a_token(service, by):
    r = get(service, f"/aggregates_by/{by}/channels/")
    assert r.status_code == 200
    assert r.json() == ["nightly"]
    assert get(service, f"/aggregates_by/{by}/channels/", headers=AUTH).json() == [
        "beta", "nightly"]


def test_unknown_by_is_404(service):
    assert get(service, "/aggregates_by/week/channels/").status_code == 404


@pytest.mark.parametrize("by,key", [("build_id", "build_id"),
                                    ("submission_date", "submission_date")])
def test_dates_newest_first(service, pings, by, key):
    r = get(service, f"/aggregates_by/{by}/channels/nightly/dates/")
    assert r.status_code == 200
    want = set()
    for _, dims, payload in pings:
        cell = ap._cell(dims, payload)
        if cell["channel"] == "nightly":
            want.add((cell["version"], cell[key]))
    got = r.json()
    assert {(d["version"], d["date"]) for d in got} == want
    assert all(isinstance(d["version"], str) and isinstance(d["date"], str) for d in got)
    assert [d["date"] for d in got] == sorted((d["date"] for d in got), reverse=True)


def test_dates_of_an_unknown_channel_are_empty(service):
    r = get(service, "/aggregates_by/build_id/channels/aurora/dates/")
    assert r.status_code == 200 and r.json() == []


def test_filters(service, pings):
    r = get(service, "/filters/?channel=nightly&version=45")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"metric", "application", "architecture", "os", "child"}
    assert "A_COUNT" in body["metric"] and "[[COUNT]]_A_COUNT" not in body["metric"]
    assert "SIMPLE_MEASURES_UPTIME" in body["metric"]
    assert "SCALARS_BROWSER.TABS" in body["metric"]
    assert set(body["child"]) == {"parent", "content"}
    assert "Windows_NT,6.1" in body["os"] and "Linux,4.2" in body["os"]
    assert set(body["application"]) == {"Firefox", "Fennec"}


def test_filters_404_when_nothing_is_known(service):
    assert get(service, "/filters/?channel=nightly&version=3").status_code == 404
    assert get(service, "/filters/?channel=nightly").status_code == 404


CASES = [
    ("AN_ENUM", {}),
    ("AN_ENUM", {"child": "content"}),
    ("A_BOOLEAN", {"os": "Windows_NT", "osVersion": "6.1"}),
    ("A_FLAG", {"architecture": "unknown"}),
    ("A_CATEGORY", {"application": "Firefox"}),
    ("PAGE_LINEAR", {"os": "Linux"}),
    ("GC_MS", {}),
    ("STARTUP_GC_MS", {"application": "Firefox"}),
    ("KEYED_EXP", {}),
    ("KEYED_EXP", {"label": "a.b"}),
    ("SIMPLE_MEASURES_UPTIME", {}),
    ("SIMPLE_MEASURES_RATIO", {"os": "Darwin"}),
    ("SIMPLE_MEASURES_JS_CUSTOMITER", {}),
    ("SCALARS_BROWSER.TABS", {}),
    ("SCALARS_DOM.CLICKS", {"child": "content"}),
    ("SCALARS_BROWSER.SEARCH", {"label": "GOOGLE"}),
]


@pytest.mark.parametrize("by", ["build_id", "submission_date"])
@pytest.mark.parametrize("metric,filters", CASES)
def test_histograms_match_an_independent_sum(service, pings, by, metric, filters):
    dates = ap.BUILDS if by == "build_id" else ap.DAYS
    dates = [d[:8] for d in dates]
    r = get(service, hist_path(by, "nightly", version="45", dates=",".join(dates),
                               metric=metric, **filters))
    assert r.status_code == 200, r.text
    body = r.json()
    newest = None
    if metric.endswith("GC_MS"):
        newest = (ap.HISTOGRAMS_NEW if len(body["buckets"]) == 30 else ap.HISTOGRAMS)["GC_MS"]
    want = ap.expected(pings, by, "nightly", "45", dates, metric, filters, newest)
    got = {(d["date"], d["label"]): [d["histogram"], d["sum"], d["count"]] for d in body["data"]}
    assert got == want
    assert [d["date"] for d in body["data"]] == sorted(d["date"] for d in body["data"])
    assert all(len(d["histogram"]) == len(body["buckets"]) for d in body["data"])


def test_count_histograms_are_asked_for_by_their_plain_name(service, pings):
    dates = [b[:8] for b in ap.BUILDS]
    r = get(service, hist_path("build_id", "nightly", version="45", dates=",".join(dates),
                               metric="A_COUNT"))
    body = r.json()
    assert body["kind"] == "count"
    assert body["buckets"][:3] == [0, 1, 2] and body["buckets"][-2:] == [9249, 10000]
    want = ap.expected(pings, "build_id", "nightly", "45", dates, "[[COUNT]]_A_COUNT")
    assert {(d["date"], d["label"]): [d["histogram"], d["sum"], d["count"]]
            for d in body["data"]} == want


def test_kinds_buckets_and_descriptions(service):
    dates = ",".join(b[:8] for b in ap.BUILDS)
    cat = get(service, hist_path("build_id", "nightly", version="45", dates=dates,
                                 metric="A_CATEGORY")).json()
    assert cat["kind"] == "categorical" and cat["buckets"][:3] == ["red", "green", "blue"]
    gc = get(service, hist_path("build_id", "nightly", version="45", dates=dates,
                                metric="GC_MS")).json()
    assert gc["kind"] == "exponential"
    # The newest build's revision redefined GC_MS: its buckets (and description) are served.
    assert len(gc["buckets"]) == 30 and gc["description"] == "GC time, finer"
    old = get(service, hist_path("build_id", "nightly", version="46", dates=dates,
                                 metric="PAGE_LINEAR")).json()
    assert old["kind"] == "linear" and old["description"] == ""
    simple = get(service, hist_path("build_id", "nightly", version="45", dates=dates,
                                    metric="SIMPLE_MEASURES_UPTIME")).json()
    assert simple["kind"] == "exponential" and simple["description"] == ""
    assert len(simple["buckets"]) == 50 and simple["buckets"][-1] == 30000


def test_description_is_html_escaped(tmp_path):
    defs = Definitions(RevisionCache(ap.write_revisions(tmp_path), None))
    assert defs.get(ap.REVISION, "GC_MS").description == "GC time &lt;ms&gt; &amp; more"
    assert defs.get(ap.REVISION, "STARTUP_GC_MS").description == "GC time &lt;ms&gt; &amp; more"
    assert defs.get(ap.REVISION, "NOPE") is None
    assert defs.get("https://hg.mozilla.org/x/rev/cccccccccccc", "GC_MS") is None


def test_dates_in_the_order_asked_and_absent_without_data(service):
    dates = ["20151203", "19990101", "20151201"]
    body = get(service, hist_path("build_id", "nightly", version="45", dates=",".join(dates),
                                  metric="AN_ENUM")).json()
    assert [d["date"] for d in body["data"]] == ["20151203", "20151201"]


@pytest.mark.parametrize("query,status", [
    ("version=45&dates=20151201&metric=AN_ENUM&bogus=1", 405),
    ("version=45&dates=20151201&metric=AN_ENUM&os=Linux&sanitize=1", 405),
    ("dates=20151201&metric=AN_ENUM", 404),
    ("version=45&metric=AN_ENUM", 404),
    ("version=45&dates=20151201", 404),
    ("version=45&dates=&metric=AN_ENUM", 404),
    ("version=45&dates=20151201&metric=NO_SUCH_METRIC", 404),
    ("version=45&dates=19990101&metric=AN_ENUM", 404),
    ("version=45&dates=20151201&metric=AN_ENUM&os=Plan9", 404),
])
def test_histogram_statuses(service, query, status):
    r = get(service, f"/aggregates_by/build_id/channels/nightly/?{query}")
    assert r.status_code == status
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    body = r.json()
    assert body["code"] == status and body["description"]


def test_private_channel_needs_a_token(service):
    path = hist_path("build_id", "beta", version="44", dates="20151201", metric="AN_ENUM")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = get(service, path, headers=headers)
        assert r.status_code == 403
        assert r.json()["code"] == 403 and r.json()["description"]
        assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert get(service, "/aggregates_by/build_id/channels/beta/dates/").status_code == 403
    assert get(service, "/filters/?channel=beta&version=44").status_code == 403
    ok = get(service, path, headers=AUTH)
    assert ok.status_code == 200 and ok.json()["data"]
    assert ok.headers["Cache-Control"].startswith("private")
    assert get(service, "/filters/?channel=beta&version=44", headers=AUTH).status_code == 200


@pytest.mark.parametrize("path", [
    "/aggregates_by/build_id/channels/",
    "/aggregates_by/build_id/channels/nightly/dates/",
    "/aggregates_by/build_id/channels/nightly/?version=45&dates=20151201&metric=AN_ENUM",
    "/filters/?channel=nightly&version=45",
    "/no/such/path/",
])
def test_cors_on_every_answer(service, path):
    r = get(service, path, headers={"Origin": "https://telemetry.example.org"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://telemetry.example.org"
    assert "Origin" in r.headers["Vary"]
    pre = requests.options(service.url + path, timeout=10,
                           headers={"Origin": "https://x.example",
                                    "Access-Control-Request-Headers": "authorization"})
    assert pre.status_code == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "https://x.example"
    assert pre.headers["Access-Control-Allow-Methods"] == "GET"
    assert pre.headers["Access-Control-Allow-Headers"] == "Authorization"


def test_unknown_path_404_and_other_methods_405(service):
    r = get(service, "/aggregates_by/")
    assert r.status_code == 404 and r.json()["code"] == 404
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        r = requests.request(method, service.url + "/aggregates_by/build_id/channels/",
                             timeout=10)
        assert r.status_code == 405
        assert r.headers["Access-Control-Allow-Origin"] == "*"


def test_cache_headers_and_conditional_requests(service):
    path = hist_path("build_id", "nightly", version="45", dates="20151201", metric="AN_ENUM")
    r = get(service, path)
    assert r.headers["Cache-Control"] == "public, max-age=30"
    etag = r.headers["Etag"]
    again = get(service, path, headers={"If-None-Match": etag})
    assert again.status_code == 304
    other = get(service, path.replace("AN_ENUM", "A_FLAG"), headers={"If-None-Match": etag})
    assert other.status_code == 200


def test_metrics_counts_requests(service):
    get(service, "/aggregates_by/build_id/channels/")
    text = get(service, "/metrics").text
    assert 'telemetry_dashboard_requests_total{route="channels",status="200"}' in text
    assert "telemetry_dashboard_mongo_errors_total 0" in text


GARBAGE = st.text(st.characters(codec="utf-8"), max_size=30)
PARAM = st.sampled_from(["version", "dates", "metric", "application", "architecture", "os",
                         "osVersion", "child", "label", "x", "", "channel", "dates[]"])


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(PARAM, GARBAGE), max_size=6), st.sampled_from(
    ["/aggregates_by/build_id/channels/nightly/", "/aggregates_by/x/channels/nightly/",
     "/filters/", "/aggregates_by/submission_date/channels/%00/dates/",
     "/aggregates_by/build_id/channels/beta/", "/aggregates_by/build_id/channels/"]),
       st.binary(max_size=20))
def test_never_a_500_for_any_query_string(service, params, path, raw):
    query = "&".join(f"{quote(k)}={quote(v)}" for k, v in params)
    query += "&" + "".join(f"%{b:02X}" for b in raw)
    r = requests.get(f"{service.url}{path}?{query}", timeout=30)
    assert r.status_code in (200, 400, 403, 404, 405), (query, r.status_code, r.text)
    assert r.headers["Access-Control-Allow-Origin"] == "*"


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="tokens_file"):
        DashboardConfig(private_channels=("beta",))
    with pytest.raises(ConfigError, match="unknown configuration key"):
        DashboardConfig.from_dict({"prot": 1})
    empty = tmp_path / "t"
    empty.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no token"):
        load_tokens(empty)


def test_mongo_down_is_503_not_500(tmp_path):
    from importer.mongo import free_port

    config = DashboardConfig(database="x")
    with ServiceThread(config, f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
                       ) as s:
        r = requests.get(s.url + "/aggregates_by/build_id/channels/", timeout=30)
        assert r.status_code == 503 and r.json()["code"] == 503
        assert "mongo_errors_total 1" in requests.get(s.url + "/metrics", timeout=10).text


def test_a_missing_revision_is_asked_for_again_later(tmp_path):
    cache = tmp_path / "cache"
    defs = Definitions(RevisionCache(cache, None, failure_ttl=0), retry_seconds=0)
    assert defs.get(ap.REVISION, "GC_MS") is None
    ap.write_revisions(cache)  # published meanwhile
    assert defs.get(ap.REVISION, "GC_MS").kind == "exponential"
