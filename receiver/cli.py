"""Receiver commands: ``telemetry serve`` and ``telemetry rawlog cat|stats``.

Thin layer: options become a :class:`ReceiverConfig` (command line > config
file > defaults) and library functions do the work.  ``python -m receiver``
runs the same ``serve`` command.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
import orjson

from receiver.config import DURABILITY_MODES, EVENT_LOOPS, HTTP_SERVERS, ReceiverConfig
from receiver.errors import ConfigError, ReceiverError
from receiver.rawlog import (
    MAX_INFLATED,
    DataTooLarge,
    RawLogError,
    RawLogReader,
    ReadStats,
    finished_files,
)
from receiver.replay import replay


@click.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="JSON config file (the original receiver.json works).")
@click.option("--host", help="Address to listen on (default 127.0.0.1; 0.0.0.0 for all).")
@click.option("--port", type=int,
              help="Port (default 8080; 0 picks a free one, announced on stdout).")
@click.option("--log-path", help="Directory for raw logs.")
@click.option("--log-base", help="Raw-log file name prefix.")
@click.option("--workers", type=int, help="Worker processes (0 = one per CPU).")
@click.option("--durability", type=click.Choice(DURABILITY_MODES),
              help="fsync: 200 after fdatasync (default); os: after write().")
@click.option("--http-server", type=click.Choice(HTTP_SERVERS),
              help="fast (default) or tornado front end.")
@click.option("--event-loop", type=click.Choice(EVENT_LOOPS),
              help="Event loop of the workers (default uvloop).")
@click.option("--max-data-length", type=int, help="Largest body in bytes (413 above).")
@click.option("--max-path-length", type=int, help="Longest path after the prefix (414 above).")
@click.option("--max-log-size", type=int, help="Rotate a raw log past this many bytes.")
@click.option("--max-log-age-ms", type=int, help="Rotate a raw log this long after it was opened.")
@click.option("--include-request-ip/--no-include-request-ip", default=None,
              help="Store the client IP (v2 records).")
@click.option("--stats-log-file", help="Append one JSON line per request here.")
@click.option("--url-prefix", help="Submission URL prefix (default /submit/telemetry/).")
@click.option("--metrics/--no-metrics", default=None, help="Serve GET /metrics.")
@click.option("--shutdown-timeout", type=float,
              help="Seconds to let in-flight requests finish at shutdown.")
@click.option("--idle-connection-timeout", type=float,
              help="Close connections idle this many seconds.")
@click.option("--header-timeout", type=float,
              help="Seconds a client gets to send a request's headers.")
@click.option("--body-timeout", type=float,
              help="Seconds a client gets to send a request's body.")
@click.option("--max-header-length", type=int,
              help="Largest header block in bytes, request line excluded (431 above).")
@click.option("--max-connections", type=int, help="Open connections per worker.")
@click.option("--stats-flush-ms", type=int, help="How often the stats log is written out.")
@click.option("--hostname", help="Host name used in raw-log file names.")
@click.option("--motd", help="Message printed at start-up.")
def serve_command(config_path: str | None, **options) -> None:
    """Run the receiver: accept submissions and write them to raw logs."""
    from receiver.supervisor import serve

    try:
        config = ReceiverConfig.load(config_path) if config_path else ReceiverConfig()
        config = config.replace(**options)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="receiver[%(process)d] %(levelname)s %(message)s")
    try:
        code = serve(config)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    except ReceiverError as e:
        raise click.ClickException(str(e)) from None
    sys.exit(code)


@click.group("rawlog")
def rawlog_group() -> None:
    """Inspect raw log files (any version, finished or not)."""


@rawlog_group.command("cat")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--raw", is_flag=True, help="Do not gunzip bodies before showing them.")
@click.option("--no-data", is_flag=True, help="Leave the body out of the output.")
@click.option("--max-uncompressed", type=click.IntRange(1), default=MAX_INFLATED, show_default=True,
              help="Largest inflated body shown, in bytes (as the converter's max_uncompressed); "
                   "a larger one is left out, with data_error saying so.")
def cat_command(files: tuple[str, ...], raw: bool, no_data: bool, max_uncompressed: int) -> None:
    """Print each record as a JSON line (path, timestamp, ip, data length, data as text).

    FILES are raw logs of any name, or directories (their .finished files), as
    ``process`` and ``replay`` take them.
    """
    out = sys.stdout.buffer
    too_large = 0
    for name in expand_files(files):
        reader = RawLogReader(name)
        try:
            for rec in reader:
                summary = record_summary(rec, name, raw=raw, with_data=not no_data,
                                         max_size=max_uncompressed)
                too_large += summary.get("data_too_large", False)
                summary.pop("data_too_large", None)
                out.write(orjson.dumps(summary) + b"\n")
        except OSError as e:
            raise click.ClickException(f"cannot read {name}: {e.strerror or e}") from None
        for line in reader.stats.errors:
            click.echo(f"warning: {line}", err=True)
    out.flush()
    if too_large:
        click.echo(f"warning: {too_large} bodies inflate past {max_uncompressed} bytes and were "
                   f"left out (--max-uncompressed; --raw shows them compressed)", err=True)


@rawlog_group.command("stats")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file, then the total.")
def stats_command(files: tuple[str, ...], as_json: bool) -> None:
    """Count records, bytes, skipped bytes and errors per file and in total.

    FILES are raw logs or directories (their .finished files).  Exit 1 when a
    file holds bytes but not one record: it is not a raw log.
    """
    total = ReadStats()
    rows = []
    not_raw_logs = []
    for name in _progress(expand_files(files)):
        try:
            stats = file_stats(name)
        except OSError as e:
            raise click.ClickException(f"cannot read {name}: {e.strerror or e}") from None
        total.add(stats)
        rows.append((name, stats))
        for line in stats.errors:
            click.echo(f"warning: {line}", err=True)
        if stats.records == 0 and stats.skipped_bytes:
            not_raw_logs.append(name)
    if len(rows) > 1:
        rows.append(("total", total))
    for name, s in rows:
        if as_json:
            click.echo(orjson.dumps({"file": name, "records": s.records, "bytes": s.bytes,
                                     "skipped_bytes": s.skipped_bytes, "errors": len(s.errors),
                                     "truncated": s.truncated}).decode())
        else:
            click.echo(f"{name}: records={s.records} bytes={s.bytes} skipped={s.skipped_bytes} "
                       f"errors={len(s.errors)} truncated={'yes' if s.truncated else 'no'}")
    if not_raw_logs:
        raise click.ClickException(f"not a raw log (no record found): {', '.join(not_raw_logs)}")


def expand_files(paths: tuple[str, ...]) -> list[str]:
    """Files as given, and the .finished files of directories (sorted), as ``process`` reads them."""
    out = []
    for p in paths:
        if Path(p).is_dir():
            found = finished_files(p)
            if not found:
                click.echo(f"warning: no .finished raw logs in {p}", err=True)
            out.extend(str(f) for f in found)
        else:
            out.append(p)
    return out


def file_stats(path: str | Path) -> ReadStats:
    """Read a whole raw log and return what the reader saw."""
    reader = RawLogReader(path)
    for _ in reader:
        pass
    return reader.stats


def record_summary(rec, file: str | None = None, *, raw: bool = False,
                   with_data: bool = True, max_size: int = MAX_INFLATED) -> dict:
    """A JSON-ready view of one record, as ``rawlog cat`` prints it.

    A body inflating past ``max_size`` is not inflated further (a decompression
    bomb must not take the memory): ``data`` is None, ``data_error`` says why,
    and ``data_too_large`` is set for the caller to count.
    """
    out = {"path": rec.path, "timestamp": rec.timestamp, "ip": rec.ip, "data_length": len(rec.data)}
    if file is not None:
        out = {"file": str(file), "offset": rec.offset, **out}
    if with_data:
        data, problem = rec.data, None
        if not raw:
            try:
                data = rec.inflate(max_size)
            except DataTooLarge as e:
                out["data"], out["data_too_large"] = None, True
                out["data_error"] = f"{e}: left out"
                return out
            except RawLogError as e:
                problem = str(e)
        try:
            out["data"] = data.decode("utf-8")
        except UnicodeDecodeError:
            out["data"] = None
            problem = problem or "body is not UTF-8 text"
        if problem:
            out["data_error"] = problem
    return out


def _progress(items):
    if sys.stderr.isatty() and len(items) > 1:
        from tqdm import tqdm

        return tqdm(items, unit="file", leave=False)
    return items


commands = [serve_command, rawlog_group, replay]
