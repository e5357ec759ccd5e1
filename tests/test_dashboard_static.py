"""The page's static files: its histogram statistics (static/js/histogram.js, run in the
real browser) against an independent computation (histogram_reference.py), and caching."""

from __future__ import annotations

import random

import pytest
import requests

from dashboard.config import DashboardConfig
from dashboard.testing import ServiceThread
from histogram_reference import exponential_bounds, ref_mean, ref_percentile


def cases():
    rng = random.Random(14)
    out = [
        ("linear", [0, 1, 2], [5, 0, 5]),             # a percentile on a boundary skips the empty bucket
        ("exponential", exponential_bounds(1, 10000, 50), [0] * 10 + [7] + [0] * 39),
        ("boolean", [0, 1, 2], [3, 9, 0]),
        ("exponential", exponential_bounds(1, 10000, 100), [1] + [0] * 98 + [4]),
        ("enumerated", list(range(21)), [0] * 20 + [2]),
    ]
    for _ in range(40):
        kind = rng.choice(["exponential", "linear", "enumerated", "count"])
        n = rng.choice([3, 10, 50, 100])
        if kind in ("exponential", "count"):
            buckets = exponential_bounds(1, rng.choice([1000, 10000, 30000]), n)
        else:
            step = rng.choice([1, 5, 100])
            buckets = [i * step for i in range(n)]
        values = [rng.choice([0, 0, rng.randint(1, 5000)]) for _ in range(n)]
        if not any(values):
            values[rng.randrange(n)] = 1
        out.append((kind, buckets, values))
    return out


@pytest.fixture(scope="module")
def static_url(mongo_url):
    """The service (with the page's routes) on a loopback port; these tests need no data."""
    with ServiceThread(DashboardConfig(database="t_static_empty"), mongo_url) as service:
        yield service.url


def test_percentiles_and_means_match_the_reference(browser, static_url):
    page = browser.new_page()
    try:
        page.goto(static_url + "/static/dashboard.css")   # any page of the origin, to import from
        got = page.evaluate("""async (cases) => {
            const H = await import("/static/js/histogram.js");
            return cases.map(([kind, buckets, values]) => ({
                mean: H.mean(buckets, values, kind),
                ps: [0, 5, 25, 50, 75, 95, 100].map((p) => H.percentile(buckets, values, kind, p)),
                summary: H.summary(buckets, values, kind, 7, 1.5),
            }));
        }""", cases())
    finally:
        page.close()
    checked = 0
    for (kind, buckets, values), answer in zip(cases(), got):
        assert answer["mean"] == pytest.approx(ref_mean(buckets, values, kind), rel=1e-9)
        for p, value in zip([0, 5, 25, 50, 75, 95, 100], answer["ps"]):
            assert value == pytest.approx(ref_percentile(buckets, values, kind, p), rel=1e-9), (kind, p, values)
            checked += 1
        s = answer["summary"]
        assert (s["pings"], s["samples"], s["sum"]) == (7, sum(values), 1.5)
        assert s["p50"] == answer["ps"][3]
    assert checked == 7 * len(cases())


def test_no_samples_give_no_statistics(browser, static_url):
    page = browser.new_page()
    try:
        page.goto(static_url + "/static/dashboard.css")
        got = page.evaluate("""async () => {
            const H = await import("/static/js/histogram.js");
            return [H.mean([0, 1, 2], [0, 0, 0], "linear"), H.percentile([0, 1, 2], [0, 0, 0], "linear", 50),
                    H.percentile(["a", "b"], [1, 2], "categorical", 50),
                    H.sanitize([{count: 99}, {count: 100}], 100).length, H.formatBound(12345), H.formatBound(0)];
        }""")
    finally:
        page.close()
    assert got == [None, None, None, 1, "12.3k", "0"]


def test_assets_are_cacheable_and_served_locally(static_url):
    import plotly

    page = requests.get(static_url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-cache"
    vendor = f"/static/vendor/plotly-{plotly.__version__}.min.js"
    assert vendor in page.text and "http" not in page.text.split("<body>")[0]  # no CDN
    etag = page.headers["ETag"]
    assert requests.get(static_url + "/", headers={"If-None-Match": etag}, timeout=10).status_code == 304

    lib = requests.get(static_url + vendor, timeout=30)
    assert lib.status_code == 200 and lib.content.startswith(b"/**") and len(lib.content) > 1_000_000
    assert "immutable" in lib.headers["Cache-Control"]

    js = requests.get(static_url + "/static/js/main.js", timeout=10)
    assert js.status_code == 200 and js.headers["Content-Type"].startswith("text/javascript")
    assert js.headers["Cache-Control"] == "no-cache"
    again = requests.get(static_url + "/static/js/main.js", headers={"If-None-Match": js.headers["ETag"]},
                         timeout=10)
    assert again.status_code == 304
    assert requests.get(static_url + "/static/../page.py", timeout=10).status_code in (403, 404)
