"""The four 2013 release channels the simulated fleet runs, and the Histograms.json each ships.

Between 2013-08-06 and 2013-09-16 Firefox's trains were release 23, beta 24,
aurora 25 and nightly 26.  A classic ping names the Histograms.json it was
recorded against by an hg revision URL (``info.revision``), and the
converter validates the ping against that file, so each channel must name a
revision whose definitions match its version.  Three real revisions ship in
``fleet/histograms/`` (package data, from Mozilla's source via the test data of
mozilla/telemetry-server, MPL-2.0):

- ``a55c55edf302``: mozilla-release at Firefox 23 (524 histograms), for release 23;
- ``8d3810543edc``: the Aurora 24 branch point (590), for beta 24;
- ``ad0ae007aa9e``: the Aurora 25 branch point (624), for aurora 25 and for nightly 26,
  which started from that same mozilla-central revision.

The repository in each URL is the one that channel's builds came from, so the
converter (and a histogram server) sees four (repository, revision) pairs;
:func:`write_revisions` lays them all out the way the revision cache and
``serve_histograms`` read them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from converter.histograms import Histograms
from converter.revisions import write_revision

HG = "http://hg.mozilla.org"   # Firefox 23 wrote http:// URLs, as the fixture ping shows
APP_NAME = "Firefox"
APP_ID = "{ec8030f7-c20a-464f-9b0e-13a3a9e97384}"


@dataclass(frozen=True)
class Channel:
    """One update channel: its version, where its Histograms.json comes from, how it builds.

    ``daily_builds``: a new build ID every day (nightly, aurora); otherwise
    ``builds`` lists the channel's builds as (first day offered, build ID).
    """

    name: str
    version: str
    repo: str
    rev: str
    share: float
    build_time: str = "030202"          # HHMMSS of a daily build ID
    daily_builds: bool = False
    builds: tuple[tuple[str, str], ...] = ()

    @property
    def revision_url(self) -> str:
        return f"{HG}/{self.repo}/rev/{self.rev}"

    @property
    def major(self) -> str:
        """The major version as SPEC section 7 computes it: the leading digits."""
        digits = ""
        for c in self.version:
            if not c.isdigit():
                break
            digits += c
        return digits


# Default proportions: release far larger than beta, beta than aurora and nightly.
CHANNELS: dict[str, Channel] = {c.name: c for c in (
    Channel("release", "23.0.1", "releases/mozilla-release", "a55c55edf302", 0.70,
            builds=(("20130814", "20130814063812"),)),
    Channel("beta", "24.0", "releases/mozilla-beta", "8d3810543edc", 0.18,
            builds=(("20130819", "20130819133244"), ("20130826", "20130826143325"),
                    ("20130903", "20130903145423"), ("20130910", "20130910160258"),
                    ("20130917", "20130917123208"))),
    Channel("aurora", "25.0a2", "releases/mozilla-aurora", "ad0ae007aa9e", 0.06,
            build_time="004001", daily_builds=True),
    Channel("nightly", "26.0a1", "mozilla-central", "ad0ae007aa9e", 0.06,
            build_time="030202", daily_builds=True),
)}

REVISIONS = sorted({c.rev for c in CHANNELS.values()})


def histograms_json(rev: str) -> bytes:
    """The Histograms.json of a packaged revision, as shipped."""
    if rev not in REVISIONS:
        raise KeyError(f"no packaged Histograms.json for revision {rev!r} (have {', '.join(REVISIONS)})")
    return resources.files("fleet").joinpath("histograms", f"{rev}.Histograms.json").read_bytes()


@lru_cache(maxsize=None)
def histograms(rev: str) -> Histograms:
    """The parsed definitions of a packaged revision (cached: they never change)."""
    return Histograms.from_bytes(histograms_json(rev))


def write_revisions(directory: str | os.PathLike) -> list[Path]:
    """Lay out every channel's (repository, revision) in ``directory`` as the revision cache does.

    The result serves as a converter's ``histogram_cache`` as is, or as the
    directory of ``serve_histograms`` / ``telemetry histogram-server``.
    """
    return [write_revision(directory, c.repo, c.rev, histograms_json(c.rev))
            for c in sorted(CHANNELS.values(), key=lambda c: c.name)]
