"""Shared fixtures: the repo's copy of the real data, and real local servers.

Servers are started once per session on a free loopback port (never a fixed
one) and reset between tests where they keep state.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the property tests on a fixed seed so that a run is repeatable;
# on a developer's machine they keep exploring new examples.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="module")
def base(fixtures_dir):
    """The real Firefox ping of the fixture raw log, as variations of it are made from."""
    from converter.variations import base_record

    return base_record(fixtures_dir / "raw" / "telemetry1.v1.log")


@pytest.fixture
def histogram_cache(tmp_path, fixtures_dir) -> Path:
    """A revision cache holding the Histograms.json the fixture ping names (release 23)."""
    from converter.revisions import write_revision

    cache = tmp_path / "cache"
    definitions = fixtures_dir / "histograms" / "a55c55edf302.Histograms.json"
    write_revision(cache, "releases/mozilla-release", "a55c55edf302", definitions.read_bytes())
    return cache


@pytest.fixture(scope="session")
def moto_server():
    """A real S3 endpoint (moto in server mode) on loopback; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_endpoint(moto_server, monkeypatch):
    """The moto endpoint, emptied before the test, with dummy credentials in the environment."""
    import requests

    requests.post(f"{moto_server}/moto-api/reset", timeout=10).raise_for_status()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Never let boto3 look for instance credentials off this machine.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return moto_server


# --- MongoDB (owned by the Mongo engineer) ---------------------------------

@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory):
    """One embedded MongoDB-wire server (SecantusDB, in memory) per test session; yields its URI.

    Starting one costs about half a second and stopping about two, so it is
    shared; tests stay independent by each using its own database (``mongo_db``).
    """
    from importer.mongo import start_embedded

    server = start_embedded(tmp_path_factory.mktemp("mongo"), storage_path=":memory:", detach=False,
                            pid_file=False)
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def mongo_client(mongo_url):
    import pymongo

    client = pymongo.MongoClient(mongo_url)
    yield client
    client.close()


@pytest.fixture
def mongo_db(mongo_client):
    """A database of this test's own (unique name), dropped afterwards."""
    import uuid

    name = f"t_{uuid.uuid4().hex[:16]}"
    yield mongo_client[name]
    mongo_client.drop_database(name)


# --- Browser (owned by the dashboard engineer) -------------------------------

@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module: Debian's, driven by Playwright (never a downloaded one).

    Per module, not per session: while Playwright's sync API is open, its
    event loop counts as running in the main thread, so a later test's
    ``asyncio.run`` (replay, the fleet's sender) would fail in that worker.

    ``./scripts/test`` installs it (``apt-get install chromium``); a missing
    browser fails the tests that need it, it never skips them.
    """
    from playwright.sync_api import sync_playwright

    from dashboard.screenshots import NoChromium, launch

    with sync_playwright() as p:
        try:
            chromium = launch(p)
        except NoChromium as e:
            pytest.fail(str(e))
        yield chromium
        chromium.close()
