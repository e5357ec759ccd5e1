"""Security review of the aggregates API (issue 16): a private channel holds against bypasses.

The data and service are tests/test_dashboard.py's (a private ``beta`` channel
and one token); each request here tries another way around the check.
"""

from __future__ import annotations

import pytest
import requests

from test_dashboard import AUTH, TOKEN, database, get, hist_path, pings, service  # noqa: F401

BETA = hist_path("build_id", "beta", version="44", dates="20151201", metric="AN_ENUM")


def _no_beta_data(r: requests.Response) -> bool:
    if r.status_code in (400, 403, 404, 405):
        return True
    body = r.json()
    return r.status_code == 200 and not (body.get("data") if isinstance(body, dict) else
                                         [c for c in body if "beta" in str(c).lower()])


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"bearer{TOKEN}"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": f"Token {TOKEN}"},
    {"Authorization": "Bearer # dashboard tokens"},  # a comment line of the tokens file
    {"Cookie": f"token={TOKEN}"},
    {"X-Authorization": f"Bearer {TOKEN}"},
])
def test_no_token_no_private_data(service, headers):  # noqa: F811
    for path in (BETA, "/aggregates_by/build_id/channels/beta/dates/",
                 "/filters/?channel=beta&version=44", "/aggregates_by/build_id/channels/"):
        r = get(service, path, headers=headers)
        assert _no_beta_data(r), (path, headers, r.status_code, r.text[:200])
    assert get(service, BETA, headers=headers).status_code == 403


@pytest.mark.parametrize("path", [
    BETA.replace("/beta/", "/%62eta/"),          # an escaped letter: decoded, then checked
    BETA.replace("/beta/", "/Beta/"),
    BETA.replace("/beta/", "/BETA/"),
    BETA.replace("/beta/", "/beta%00/"),
    BETA.replace("/beta/", "/beta%20/"),
    BETA.replace("/beta/", "/nightly/../beta/"),
    BETA.replace("/beta/", "/./beta/"),
    BETA + f"&access_token={TOKEN}",
    BETA + f"&token={TOKEN}",
    "/aggregates_by/build_id/channels/%62eta/dates/",
    "/filters/?channel=b%65ta&version=44",
    "/filters/?channel=nightly&channel=beta&version=44",
    "/filters/?channel=beta&channel=nightly&version=44",
])
def test_channel_spellings_do_not_get_around_the_check(service, path):  # noqa: F811
    r = get(service, path)
    assert _no_beta_data(r), (path, r.status_code, r.text[:200])


def test_a_private_etag_is_not_confirmed_without_a_token(service):  # noqa: F811
    ok = get(service, BETA, headers=AUTH)
    assert ok.status_code == 200 and ok.json()["data"]
    assert ok.headers["Cache-Control"].startswith("private")  # no shared cache keeps it
    assert "Authorization" in ok.headers["Vary"]
    r = get(service, BETA, headers={"If-None-Match": ok.headers["Etag"]})
    assert r.status_code == 403


def test_errors_about_private_channels_are_not_cached(service):  # noqa: F811
    r = get(service, BETA)
    assert r.status_code == 403 and r.headers["Cache-Control"] == "no-store"
