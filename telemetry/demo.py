"""The main job end to end on embedded defaults: what ``./scripts/demo`` runs.

It starts every part for real, on loopback, in one work directory: a
histogram server holding the fleet's Histograms.json revisions, the receiver
(which gets a few thousand pings of a simulated Firefox fleet over HTTP, with
channel differences and a known GC_MS regression on nightly), the converter, the embedded MongoDB-wire server with the importer, two
aggregations, and a replay of everything received into a second receiver.
A newcomer sees each stage's output; a developer gets a smoke test of the
whole pipeline.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import click

from aggregations.formats import format_rows
from aggregations.importing import AggregatesHook
from aggregations.pipelines import build_pipeline, run_pipeline
from converter.layout import find_layout_files
from converter.process import ConverterConfig, process
from converter.revisions import serve_histograms
from converter.schema import Schema
from fleet.channels import write_revisions
from fleet.population import Fleet
from fleet.scenario import Scenario
from fleet.sender import SendConfig, send
from importer.importer import ImportOptions, import_dataset
from importer.mongo import MongoConfig, connect, ensure_embedded
from receiver.config import ReceiverConfig
from receiver.rawlog import RawLogReader, ReadStats, finished_files
from receiver.replay import ReplayConfig, replay_logs
from receiver.service import start_receiver

DEMO_SEED = 1
# More clients sending fewer pings each than the default fleet (so that even nightly has
# enough clients for its mean to be steady), and fewer histograms a ping: the embedded
# MongoDB-wire server is slow at scanning large documents.
DEMO_SCENARIO = replace(Scenario(), pings_per_client_day=1.0, histograms_per_ping=40)
# The demo's own mark on a work directory: only a directory holding it is emptied.
MARKER = ".telemetry-demo"


class DemoError(Exception):
    """The demo cannot run (for instance the repository's fixtures are missing)."""


@dataclass
class DemoResult:
    """What the demo produced, for the caller (and the test) to check."""

    posted: int = 0
    accepted: int = 0
    malformed: int = 0
    raw: ReadStats = field(default_factory=ReadStats)
    records_out: int = 0
    rejected: int = 0
    layout_files: int = 0
    imported: int = 0
    os_rows: list[dict] = field(default_factory=list)
    histogram_rows: list[dict] = field(default_factory=list)
    build_rows: list[dict] = field(default_factory=list)
    regression_build: str | None = None
    replayed_same: bool | None = None


def raw_pairs(log_dir: Path) -> Counter:
    """The (path, body) multiset of every finished raw log in a directory."""
    pairs: Counter = Counter()
    for f in finished_files(log_dir):
        pairs.update((r.path, r.data) for r in RawLogReader(f))
    return pairs


def prepare_workdir(workdir: Path) -> None:
    """Empty a work directory of an earlier demo run, or make a new one.

    The demo deletes only what it created: a directory that exists and is not
    empty must carry the demo's marker file, else the demo refuses to touch it.
    """
    if workdir.exists() and not workdir.is_dir():
        raise DemoError(f"--workdir {workdir} exists and is not a directory")
    if workdir.is_dir() and any(workdir.iterdir()):
        if not (workdir / MARKER).is_file():
            raise DemoError(f"--workdir {workdir} is not empty and was not made by the demo "
                            f"(no {MARKER} file in it); give a new or empty directory")
        for child in workdir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by `telemetry demo`; the demo empties this directory when it runs again\n")


def run_demo(workdir: Path, records: int = 2000, workers: int = 2, mongo_url: str | None = None,
             replay: bool = True, echo: Callable[[str], None] = print) -> DemoResult:
    """Receive, convert, import and aggregate ``records`` simulated submissions inside ``workdir``."""
    prepare_workdir(workdir)
    result = DemoResult()

    def step(title: str) -> None:
        echo(f"\n== {title}")

    # 1. A histogram server that knows every revision the fleet's pings name.
    write_revisions(workdir / "hg")

    with serve_histograms(workdir / "hg") as hg:
        step("receive")
        raw_dir = workdir / "raw"
        config = ReceiverConfig(log_path=str(raw_dir), port=0, workers=workers, include_request_ip=True,
                                stats_log_file=str(workdir / "stats.log"))
        fleet = Fleet(records, seed=DEMO_SEED, scenario=DEMO_SCENARIO)
        result.regression_build = fleet.regression_build
        echo("a simulated fleet (telemetry simulate --describe):")
        for line in fleet.describe():
            echo(f"  {line}")
        with start_receiver(config) as receiver:
            echo(f"receiver listening on {receiver.url} ({workers} workers, durability={config.durability})")
            sent = send(fleet.submissions(), SendConfig(receiver.url, concurrency=8))
            result.posted, result.accepted, result.malformed = sent.sent, sent.accepted, sent.malformed
            receiver.stop()
        for f in finished_files(raw_dir):
            reader = RawLogReader(f)
            for _ in reader:
                pass
            result.raw.add(reader.stats)
        echo(f"posted {result.posted} submissions ({result.malformed} malformed on purpose), "
             f"{result.accepted} answered 200")
        echo(f"raw log: {len(finished_files(raw_dir))} finished files, {result.raw.records} records, "
             f"{result.raw.bytes:,} bytes, {result.raw.skipped_bytes} bytes skipped")

        step("convert")
        layout = workdir / "layout"
        summary = process(ConverterConfig(storage_path=str(layout), telemetry_schema="",
                                          histogram_cache=str(workdir / "histogram-cache"),
                                          histogram_server=hg.url, workers=workers), [raw_dir],
                          progress=False)
        for line in summary.lines():
            echo(line)
        echo(f"({result.malformed} of the rejected are the fleet's malformed submissions, on purpose)")
        files = find_layout_files(layout, include_plain=False)
        result.records_out, result.rejected, result.layout_files = (
            summary.records_out, summary.records_rejected, len(files))
        for f in files[:5]:
            echo(f"  {f.relpath}")
        if len(files) > 5:
            echo(f"  ... and {len(files) - 5} more layout files")

    step("import into MongoDB")
    server = None
    if mongo_url is None:
        server, _ = ensure_embedded(MongoConfig(data_dir=workdir / "mongo"))
        mongo_url = server.url
        echo(f"embedded MongoDB-wire server (SecantusDB) on {mongo_url}")
    try:
        # The importer keeps the aggregates that telemetry dashboard serves (docs/aggregates.md).
        imported = import_dataset(layout, mongo_url, ImportOptions(
            drop=True, workers=workers, hook=AggregatesHook(histogram_cache=str(workdir / "hg"))))
        echo(imported.describe())
        result.imported = imported.inserted

        step("aggregate")
        with connect(mongo_url) as client:
            payloads = client["telemetry"]["payloads"]
            result.os_rows = run_pipeline(payloads, "os_distribution")
            echo("documents by info.OS:")
            echo(format_rows(result.os_rows, build_pipeline("os_distribution", None)[1]))
            result.histogram_rows = run_pipeline(payloads, "histogram", name="GC_MS", by="appUpdateChannel")
            shown = [{"appUpdateChannel": r["appUpdateChannel"], "pings": r["count"],
                      "samples": sum(r["buckets"]), "sum_ms": r["sum"],
                      "mean_ms": round(r["sum"] / max(1, sum(r["buckets"])), 1)}
                     for r in result.histogram_rows]
            echo("\nGC_MS summed per channel (bucket arrays added element-wise):")
            echo(format_rows(shown, list(shown[0]) if shown else []))
            nightly = Schema({"version": 1, "dimensions": [
                {"field_name": "reason", "allowed_values": "*"},
                {"field_name": "appName", "allowed_values": "*"},
                {"field_name": "appUpdateChannel", "allowed_values": ["nightly"]}]})
            result.build_rows = run_pipeline(payloads, "histogram", filter=nightly, name="GC_MS",
                                             by="appBuildID")
            shown = [{"nightly build": r["appBuildID"], "pings": r["count"],
                      "mean_ms": round(r["sum"] / max(1, sum(r["buckets"])), 1),
                      "note": "<- regression from here" if r["appBuildID"] == result.regression_build else ""}
                     for r in result.build_rows]
            echo(f"\nGC_MS on nightly per build (the fleet makes it "
                 f"{DEMO_SCENARIO.regression.factor - 1:.0%} slower from {result.regression_build} on):")
            echo(format_rows(shown, list(shown[0]) if shown else []))
    finally:
        if server is not None:
            server.stop()

    if replay:
        step("replay into a second receiver")
        second_dir = workdir / "raw-replayed"
        with start_receiver(ReceiverConfig(log_path=str(second_dir), port=0, workers=1)) as second:
            replayed = replay_logs(ReplayConfig(sources=[str(raw_dir)],
                                                dest=second.url + second.config.url_prefix + "%k",
                                                concurrency=16))
            second.stop()
        echo(replayed.describe())
        result.replayed_same = raw_pairs(second_dir) == raw_pairs(raw_dir)
        echo("the second receiver holds exactly the same (path, body) records"
             if result.replayed_same else "the second receiver's records DIFFER from the first's")
    return result


@click.command()
@click.option("--workdir", "--work-dir", "workdir", type=click.Path(path_type=Path), default=Path("demo-output"), show_default=True,
              help="Where everything is written: a new or empty directory, or one an earlier demo "
                   "made (emptied first).")
@click.option("--records", type=click.IntRange(1, 100_000), default=2000, show_default=True,
              help="How many simulated submissions to post.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Receiver and converter worker processes.")
@click.option("--mongo-url", envvar="TELEMETRY_MONGO_URL", default=None,
              help="Use this MongoDB instead of a throwaway embedded server.")
@click.option("--replay/--no-replay", default=True, show_default=True,
              help="Finally replay everything received into a second receiver and compare.")
@click.option("--serve", is_flag=True,
              help="Run the live pipeline (telemetry pipeline) with simulated traffic until Ctrl-C.")
@click.option("--rate", type=click.FloatRange(0, min_open=True), default=20.0, show_default=True,
              help="With --serve: simulated pings per second.")
@click.option("--seconds", type=click.FloatRange(0, min_open=True),
              help="With --serve: stop after this long [until Ctrl-C].")
def demo(workdir: Path, records: int, workers: int, mongo_url: str | None, replay: bool,
         serve: bool = False, rate: float = 20.0, seconds: float | None = None) -> None:
    """Run the whole pipeline once on embedded defaults and print what each stage did."""
    if serve:
        _serve(workdir, rate, seconds, mongo_url)
        return
    started = time.monotonic()
    try:
        result = run_demo(workdir, records, workers, mongo_url, replay, echo=click.echo)
    except DemoError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"\ndone in {time.monotonic() - started:.1f} s; everything is under {workdir}/")
    if result.accepted != result.posted or result.replayed_same is False:
        sys.exit(1)


def _serve(workdir: Path, rate: float, seconds: float | None, mongo_url: str | None) -> None:
    from pipeline.errors import PipelineError
    from pipeline.showcase import serve_demo

    workdir.mkdir(parents=True, exist_ok=True)
    try:
        code = serve_demo(workdir, rate, seconds, mongo_url=mongo_url, echo=click.echo)
    except PipelineError as e:
        raise click.ClickException(str(e)) from None
    sys.exit(code)


commands = [demo]

if __name__ == "__main__":
    demo()
