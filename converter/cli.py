"""Converter commands: ``telemetry process`` and ``histogram-server`` (``export`` lives in converter/export.py).

Thin layer: options become a :class:`~converter.process.ConverterConfig`
(command line > config file > defaults) and library functions do the work;
their errors become one-line messages.
"""

from __future__ import annotations

import signal
import sys

import click

from converter.errors import ConfigError, ConverterError
from converter.process import ConverterConfig, process
from converter.revisions import serve_histograms


@click.command("process")
@click.argument("raw", nargs=-1, type=click.Path())
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="JSON config file (the original converter's keys work).")
@click.option("--output", "storage_path", help="Layout output directory (storage_path).")
@click.option("--schema", "telemetry_schema",
              help="telemetry_schema.json naming the dimensions [default: the packaged one].")
@click.option("--histogram-cache", help="Directory of cached Histograms.json revisions.")
@click.option("--histogram-server", help="Histogram server URL or host:port.")
@click.option("--errors", "errors_path", help="Error output directory (default {output}/.errors).")
@click.option("--retry-errors", type=click.Path(),
              help="Convert the error files of an earlier run again.")
@click.option("--workers", type=int, help="Worker processes (default 1).")
@click.option("--dedup", is_flag=True, default=None,
              help="Drop repeated submissions of a docId within the run.")
@click.option("--codec", type=click.Choice(["zst", "lzma"]),
              help="Published compression (default zst).")
@click.option("--level", "compression_preset", type=int,
              help="Compression level (zst 3, lzma 0 by default).")
@click.option("--max-file-size", type=int,
              help="Rotate a layout file past this many uncompressed bytes.")
@click.option("--max-uncompressed", type=int,
              help="Largest inflated body in bytes (default 1 MiB).")
@click.option("--memory-constraint", type=int,
              help="MiB of unpublished output per worker before layout files are rotated early.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar (default: on a terminal).")
@click.option("--follow", is_flag=True,
              help="Keep running: convert each raw log of the directories as it is finished "
                   "(SIGTERM finishes the file in hand and exits 0; SIGUSR1 drains).")
@click.option("--drain", is_flag=True,
              help="With --follow: convert every finished file there is, then exit.")
@click.option("--status-file", type=click.Path(dir_okay=False),
              help="With --follow: where to write health and lag "
                   "[default: {output}/.state/follow-status.json].")
def process_command(raw: tuple[str, ...], config_path: str | None, retry_errors: str | None,
                    progress: bool | None, follow: bool, drain: bool, status_file: str | None,
                    **options) -> None:
    """Convert raw logs (files of any name, or the .finished files of directories)."""
    if follow or drain:
        if retry_errors or not raw:
            raise click.UsageError("--follow takes the raw-log directories to follow "
                                   "(and no --retry-errors)")
    elif status_file:
        raise click.UsageError("--status-file goes with --follow")
    if not raw and not retry_errors:
        raise click.UsageError("name raw files or directories, or --retry-errors DIR")
    try:
        if config_path:
            config = ConverterConfig.load(config_path, options)
        else:
            config = ConverterConfig.from_dict({k: v for k, v in options.items() if v is not None})
        for notice in config.notices:
            click.echo(f"note: {notice}", err=True)
        if follow or drain:
            summary = _follow(config, raw, drain, status_file)
        else:
            summary = process(config, raw, retry_errors=retry_errors, progress=progress)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    except ConverterError as e:
        raise click.ClickException(str(e)) from None
    for line in summary.lines():
        click.echo(line)
    if summary.error_files:
        click.echo(f"rejected records are in {config.errors}")
    if summary.infrastructure:
        # Not the records' fault: say why on stderr and fail, so no one takes the run for done.
        for problem in summary.infrastructure_problems():
            click.echo(f"Error: {problem}", err=True)
        click.echo(f"Error: those records are kept in {config.errors}; once the cause is fixed, "
                   f"convert them with --retry-errors {config.errors}", err=True)
        sys.exit(1)


def _follow(config, raw: tuple[str, ...], drain: bool, status_file: str | None):
    import logging

    from converter.follow import follow
    from pipeline.watcher import Stop

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s converter[%(process)d] %(levelname)s %(message)s")
    stop = Stop.on_signals(drain)
    click.echo(f"following {', '.join(raw)} into {config.output}", err=True)
    return follow(config, raw, stop, status_file=status_file)


@click.command("histogram-server")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False),
              help="Directory laid out as {repo}/{rev}/Histograms.json.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=0, type=int, help="Port (0 picks a free one, announced on stdout).")
def histogram_server_command(directory: str, host: str, port: int) -> None:
    """Serve Histograms.json revisions at hg's raw-file URLs until Ctrl-C or SIGTERM."""
    try:
        server = serve_histograms(directory, host, port)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    click.echo(f"serving {directory} at {server.url}")
    sys.stdout.flush()
    server.wait()


commands = [process_command, histogram_server_command]
