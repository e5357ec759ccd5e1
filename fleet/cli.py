"""``telemetry simulate``: a simulated Firefox fleet into raw logs or over HTTP."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from tqdm import tqdm

from fleet.channels import write_revisions
from fleet.population import Fleet
from fleet.rawlogs import write_raw_logs
from fleet.scenario import Scenario, ScenarioError
from fleet.sender import SendConfig, SendError, send


@click.command()
@click.option("--pings", type=click.IntRange(0), default=1000, show_default=True,
              help="How many submissions to make.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Same seed (and scenario), same submissions byte for byte.")
@click.option("--raw-log", "raw_log", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write finished v2 raw logs into this directory (no server needed).")
@click.option("--to", "to", default=None, metavar="URL",
              help="POST to a receiver, e.g. http://127.0.0.1:8080 (the /submit/telemetry/ prefix is "
                   "added unless the URL has a path).")
@click.option("--days", type=click.IntRange(1, 3660), default=None,
              help="Spread submissions over this many days [scenario: 7].")
@click.option("--scenario", "scenario_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON file overriding the population and the effects (see docs/fleet.md).")
@click.option("--describe", is_flag=True,
              help="Print the population and the effects that are on (alone: print and exit).")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="HTTP: connections at once.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="HTTP: requests per second at most [as fast as possible].")
@click.option("--retries", type=click.IntRange(0, 20), default=3, show_default=True,
              help="HTTP: retries of a 5xx/408/429 or a connection problem, with backoff.")
@click.option("--max-log-mb", type=click.IntRange(1), default=500, show_default=True,
              help="Raw logs: finish a file once it passes this size.")
@click.option("--histograms", "histograms_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Also lay out the Histograms.json revisions the pings name here: a "
                                 "--histogram-cache for telemetry process, a --dir for telemetry histogram-server.")
@click.option("--progress/--no-progress", default=None, help="A progress bar [when on a terminal].")
def simulate(pings: int, seed: int, raw_log: Path | None, to: str | None, days: int | None,
             scenario_file: Path | None, describe: bool, concurrency: int, rate: float | None,
             retries: int, max_log_mb: int, histograms_dir: Path | None, progress: bool | None) -> None:
    """Simulate a fleet of Firefox clients sending classic telemetry pings.

    Exactly one of --raw-log DIR or --to URL, unless --describe or --histograms alone.
    Exit status: 0 when every submission was written or answered 2xx,
    1 when any was not, 2 for bad usage or a bad scenario.
    """
    if raw_log is not None and to is not None:
        raise click.UsageError("give --raw-log or --to, not both")
    if raw_log is None and to is None and not describe and histograms_dir is None:
        raise click.UsageError("give --raw-log DIR or --to URL (or --describe, --histograms DIR)")
    try:
        scenario = (Scenario.load(scenario_file) if scenario_file else Scenario()).with_days(days)
        config = SendConfig(to, concurrency, rate, retries) if to is not None else None
    except (ScenarioError, SendError) as e:
        raise click.UsageError(str(e)) from None
    if histograms_dir is not None:
        try:
            written = write_revisions(histograms_dir)
        except OSError as e:
            raise click.ClickException(f"cannot write revisions in {histograms_dir}: {e.strerror or e}") from None
        click.echo(f"{len(written)} Histograms.json revisions laid out in {histograms_dir}")
    fleet = Fleet(pings, seed, scenario)
    if describe:
        for line in fleet.describe():
            click.echo(line)
    if raw_log is None and to is None:
        return
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=pings, unit="ping", disable=not show, file=sys.stderr) as bar:
        if raw_log is not None:
            try:
                written = write_raw_logs(fleet.submissions(), raw_log, max_log_size=max_log_mb << 20,
                                         progress=bar.update)
            except OSError as e:
                raise click.ClickException(f"cannot write raw logs in {raw_log}: {e.strerror or e}") from None
            bar.close()
            click.echo(written.describe())
            return
        summary = send(fleet.submissions(), config, progress=bar.update)
    for line in summary.lines():
        click.echo(line, err=line.startswith(("error:", "stopped:")))
    if summary.sent < pings:
        click.echo(f"{pings - summary.sent} submissions not sent", err=True)
    if not summary.ok:
        sys.exit(1)


commands = [simulate]
