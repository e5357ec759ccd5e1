"""``telemetry pipeline`` (run every stage, supervised) and ``telemetry pipeline status``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import orjson

from pipeline.config import PipelineConfig
from pipeline.errors import PipelineConfigError, PipelineError


@click.group("pipeline", invoke_without_command=True)
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Where raw logs, layout, the embedded MongoDB's data and status go.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="pipeline.json holding any of the settings (see docs/pipeline.md).")
@click.option("--host", help="Address the receiver and the API listen on [127.0.0.1].")
@click.option("--port", type=int, help="The receiver's port [8080; 0 picks a free one].")
@click.option("--dashboard-port", type=int, help="The API server's port [8000; 0 picks one].")
@click.option("--mongo-url", envvar="TELEMETRY_MONGO_URL", metavar="URI",
              help="MongoDB URI [the embedded server, data in DATA_DIR/mongo].")
@click.option("-d", "--database", help="Database name [telemetry].")
@click.option("--histogram-cache", help="Directory of cached Histograms.json revisions.")
@click.option("--histogram-server", help="Histogram server URL or host:port.")
@click.option("--rotation-age-ms", type=int,
              help="A raw log is finished this long after it was opened [3000].")
@click.pass_context
def pipeline_group(ctx: click.Context, config_path: str | None, **options) -> None:
    """Run receiver, converter, importer and API as one supervised service (SIGTERM drains)."""
    if ctx.invoked_subcommand is not None:
        return
    from pipeline.supervisor import Pipeline

    try:
        config = PipelineConfig.load(config_path, options)
    except PipelineConfigError as e:
        raise click.UsageError(str(e)) from None
    try:
        code = Pipeline(config).run()
    except PipelineError as e:
        raise click.ClickException(str(e)) from None
    sys.exit(code)


@pipeline_group.command("status")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False),
              help="The pipeline's data directory.")
@click.option("--json", "as_json", is_flag=True, help="The health document as JSON.")
def status_command(data_dir: str, as_json: bool) -> None:
    """Each stage's health, backlog and lag; exit 1 when a stage is down."""
    from pipeline.health import pipeline_health

    if not Path(data_dir).is_dir():
        raise click.ClickException(f"data directory {data_dir} does not exist")
    health = pipeline_health(data_dir)
    if as_json:
        click.echo(orjson.dumps(health, option=orjson.OPT_INDENT_2).decode())
    else:
        for line in status_lines(health):
            click.echo(line)
    if not all(s.get("up") for s in health["stages"].values()):
        sys.exit(1)


def status_lines(health: dict) -> list[str]:
    """The human table of ``pipeline status``."""
    out = [f"pipeline {health['supervisor_state']}"
           + (f" (pid {health['supervisor_pid']})" if health.get("supervisor_pid") else "")
           + f", {health['data_dir']}"]
    out.append(f"{'stage':<10} {'up':<4} {'state':<9} {'backlog':>8} {'lag s':>8} "
               f"{'done':>7} {'restarts':>8}  last error")
    for name, s in health["stages"].items():
        backlog = s.get("backlog_files", s.get("open_files"))
        lag = s.get("lag_seconds")
        out.append(f"{name:<10} {'yes' if s.get('up') else 'NO':<4} "
                   f"{s.get('state', 'running' if s.get('running') else '-'):<9} "
                   f"{'-' if backlog is None else backlog:>8} "
                   f"{'-' if lag is None else f'{lag:.1f}':>8} "
                   f"{'-' if s.get('units_done') is None else s['units_done']:>7} "
                   f"{s.get('restarts', '-'):>8}  {s.get('last_error') or ''}")
    out.append(f"end-to-end lag: {health['lag_seconds']:.1f} s (as of "
               f"{time.strftime('%H:%M:%S')})")
    return out


commands = [pipeline_group]
