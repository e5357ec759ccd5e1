"""``telemetry dashboard``: serve the aggregates API until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click

from dashboard.config import ConfigError, DashboardConfig
from importer.cli import connect_url, mongo_config, mongo_options


@click.command("dashboard")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON config file (keys: see docs/aggregates.md).")
@click.option("--host", help="Address to listen on [default: 127.0.0.1].")
@click.option("--port", type=click.IntRange(0, 65535),
              help="Port [default: 8000; 0 picks a free one, announced on stdout].")
@click.option("-d", "--database", help="Database holding the aggregates [default: telemetry].")
@click.option("--max-age", type=click.IntRange(0),
              help="Seconds a browser may reuse an answer [default: 60].")
@click.option("--private-channel", "private_channels", multiple=True,
              help="A channel answered only with a bearer token (repeatable).")
@click.option("--tokens-file", type=click.Path(dir_okay=False),
              help="File of bearer tokens, one per line.")
@mongo_options
@click.option("--pipeline-dir", type=click.Path(file_okay=False),
              help="A `telemetry pipeline` data directory: its stages' health and lag on /metrics.")
@click.option("--stats-log", type=click.Path(dir_okay=False),
              help="Operations view: the receiver's stats log file.")
@click.option("--raw-logs", type=click.Path(file_okay=False),
              help="Operations view: the receiver's raw log directory (for the import lag).")
@click.option("--errors-dir", type=click.Path(file_okay=False),
              help="Operations view: the converter's error output directory.")
@click.option("--receiver-url", metavar="URL", help="Operations view: a receiver, for its /metrics.")
def dashboard(config_path, host, port, database, max_age, private_channels, tokens_file,
              mongo_url, mongo_dir, pipeline_dir=None, stats_log=None, raw_logs=None, errors_dir=None,
              receiver_url=None):
    """Serve the aggregates API (telemetry.mozilla.org's URLs) over the imported data."""
    from dashboard.app import make_app, make_deps

    try:
        config = DashboardConfig.load(
            config_path, host=host, port=port, database=database, max_age=max_age,
            private_channels=list(private_channels) or None, tokens_file=tokens_file,
            mongo_url=mongo_url, pipeline_dir=pipeline_dir, stats_log=stats_log, raw_logs=raw_logs,
            errors_dir=errors_dir, receiver_url=receiver_url)
        url = connect_url(mongo_config(config.mongo_url, mongo_dir))
        deps = make_deps(config, url)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    asyncio.run(_serve(config, deps))


async def _serve(config: DashboardConfig, deps) -> None:
    from dashboard.app import make_app

    app = make_app(config, deps)
    try:
        server = app.listen(config.port, config.host, xheaders=True)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {config.host}:{config.port}: {e}") from None
    port = next(iter(server._sockets.values())).getsockname()[1]
    click.echo(f"serving the aggregates API at http://{config.host}:{port}/", err=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    await server.close_all_connections()
    await deps.db.client.close()


commands = [dashboard]
