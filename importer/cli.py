"""``telemetry import`` / ``python -m importer`` and ``telemetry mongo start|stop|status``.

Only flag checking and messages live here; the work is in
:mod:`importer.importer` and :mod:`importer.mongo`.  The environment
(``TELEMETRY_MONGO_URL``, the per-user data directory) is read here, at the
edge, and passed down in a :class:`~importer.mongo.MongoConfig`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from converter.schema import Schema, SchemaError
from importer.errors import DatasetError, ImporterError, MongoUnavailable
from importer.importer import (
    DEFAULT_SCHEMA,
    ON_DUPLICATE,
    ChunkResult,
    ImportOptions,
    default_workers,
    import_dataset,
    parse_write_concern,
)
from importer.mongo import (
    MongoConfig,
    default_data_dir,
    embedded_status,
    ensure_embedded,
    resolve_url,
    stop_embedded,
)

URL_ENV = "TELEMETRY_MONGO_URL"
DATA_DIR_ENV = "TELEMETRY_MONGO_DIR"


class BadSetup(click.ClickException):
    """A bad URI, an unreachable server, a missing directory: one line, exit 2, no usage dump."""

    exit_code = 2


_DATABASE_FORBIDDEN = set('/\\. "$*<>:|?\0')


def database_name(ctx, param, value: str) -> str:
    """A click callback: a MongoDB database name, checked before any server sees it."""
    bad = sorted(set(value) & _DATABASE_FORBIDDEN)
    if not value or bad or len(value.encode()) > 63:
        raise click.BadParameter(
            f"{value!r} is not a MongoDB database name (1-63 bytes, none of / \\ . space \" $ * < > : | ?)"
        )
    return value


def collection_name(ctx, param, value: str) -> str:
    """A click callback: a MongoDB collection name that is the user's to write and read."""
    if not value or "$" in value or "\0" in value or value.startswith("."):
        raise click.BadParameter(
            f"{value!r} is not a MongoDB collection name (not empty, no '$', not starting with '.')"
        )
    if value.startswith("system."):
        raise click.BadParameter(f"{value!r}: system.* collections are MongoDB's own")
    return value


def mongo_dir_option(f):
    """``--mongo-dir``: where the embedded server keeps its data (the ``mongo`` commands too)."""
    return click.option(
        "--mongo-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=DATA_DIR_ENV,
        help=f"Data directory of the embedded server (or ${DATA_DIR_ENV}) "
        "[default: ~/.local/share/telemetry/mongo].",
    )(f)


def mongo_options(f):
    """``--mongo-url`` and ``--mongo-dir``, shared by every command that talks to MongoDB."""
    f = mongo_dir_option(f)
    f = click.option(
        "--mongo-url",
        envvar=URL_ENV,
        metavar="URI",
        help=f"MongoDB URI (or ${URL_ENV}); without one the embedded server is used.",
    )(f)
    return f


def mongo_config(mongo_url: str | None, mongo_dir: Path | None) -> MongoConfig:
    """The MongoDB to use; a ``--mongo-dir`` given must exist or be creatable in an existing one.

    The default per-user directory is created with its parents; a directory
    the user names is never created below a directory that does not exist
    (a typo must not start a second server somewhere else).
    """
    if mongo_dir is not None and not mongo_url:
        mongo_dir = mongo_dir.absolute()
        if mongo_dir.exists() and not mongo_dir.is_dir():
            raise BadSetup(f"--mongo-dir {mongo_dir} is not a directory")
        if not mongo_dir.exists() and not mongo_dir.parent.is_dir():
            raise BadSetup(f"--mongo-dir {mongo_dir}: directory {mongo_dir.parent} does not exist")
    return MongoConfig(url=mongo_url or None, data_dir=mongo_dir or default_data_dir(os.environ))


def connect_url(config: MongoConfig) -> str:
    """The URI to use, starting the embedded server if needed.

    Failures become one-line errors with exit code 2.
    """
    try:
        return resolve_url(config, notify=lambda m: click.echo(m, err=True))
    except ImporterError as e:
        raise BadSetup(str(e)) from None


def _write_concern(value: str) -> int | str:
    try:
        return parse_write_concern(value)
    except ImporterError as e:
        raise click.BadParameter(str(e)) from None


def check_filter_levels(filter: Schema, schema: Schema) -> None:
    """A layout filter applies by position: each of its dimensions must be the schema's there.

    Otherwise a misspelled or misplaced dimension silently filters another one.
    """
    for i, name in enumerate(filter.names):
        expected = schema.names[i] if i < len(schema.names) else None
        if name != expected:
            raise BadSetup(
                f"filter dimension {i + 1} is {name!r} but the schema's is "
                f"{expected!r}: a filter lists the dimensions in schema order "
                f"({', '.join(schema.names)})"
            )


@click.command("import")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option(
    "-d",
    "--database",
    default="telemetry",
    show_default=True,
    callback=database_name,
    help="Database to import into.",
)
@click.option(
    "-c",
    "--collection",
    default="payloads",
    show_default=True,
    callback=collection_name,
    help="Collection to import into (its import records go to 'imports').",
)
@click.option("--drop", is_flag=True, help="Drop the collection and its import records first.")
@click.option(
    "--workers",
    type=click.IntRange(1),
    help="Worker processes [default: all CPUs; half of them for a server on this machine].",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Documents per insert.",
)
@click.option(
    "--batch-mb",
    type=click.FloatRange(0, min_open=True),
    default=2.0,
    show_default=True,
    help="Record megabytes (as JSON) per insert; an insert ends at whichever limit comes first.",
)
@click.option(
    "--writers",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Inserts in flight per worker (threads), while the next batch is parsed.",
)
@click.option(
    "--write-concern",
    default="1",
    show_default=True,
    help="w of every insert: a number or 'majority' (0 is accepted but loses error reports).",
    callback=lambda ctx, param, value: _write_concern(value),
)
@click.option(
    "--on-duplicate",
    type=click.Choice(ON_DUPLICATE),
    default="skip",
    show_default=True,
    help="What a second record with the same docId does.",
)
@click.option("--keep-dots", is_flag=True, help="Keep '.' in slowSQL/addonDetails keys (no [dot]).")
@click.option(
    "--schema",
    "schema_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="telemetry_schema.json naming the dimensions [default: the packaged one].",
)
@click.option(
    "--filter",
    "filter_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Import only files whose dimensions pass this filter.",
)
@click.option("--no-indexes", is_flag=True, help="Do not create the dimension indexes.")
@click.option(
    "--no-aggregates",
    is_flag=True,
    help="Do not update the aggregates (docs/aggregates.md) of the imported files.",
)
@click.option("--histogram-cache", help="Directory of cached Histograms.json revisions.")
@click.option("--histogram-server", help="Histogram server URL or host:port.")
@click.option(
    "--follow",
    is_flag=True,
    help="Keep running: import each published file as it appears (one process; "
    "SIGTERM finishes the files in hand and exits 0; SIGUSR1 drains).",
)
@click.option("--drain", is_flag=True, help="With --follow: import every file there is, then exit.")
@click.option(
    "--status-file",
    type=click.Path(dir_okay=False),
    help="With --follow: where to write health and lag [default: DATASET/.state/import-status.json].",
)
@mongo_options
def import_(
    dataset,
    database,
    collection,
    drop,
    workers,
    batch_size,
    batch_mb,
    writers,
    write_concern,
    on_duplicate,
    keep_dots,
    schema_path,
    filter_path,
    no_indexes,
    follow,
    drain,
    status_file,
    no_aggregates,
    histogram_cache,
    histogram_server,
    mongo_url,
    mongo_dir,
):
    """Load every layout file under DATASET into MongoDB, one document per record."""
    following = follow or drain
    if following and drop:
        raise click.UsageError("--drop does not go with --follow")
    if status_file and not following:
        raise click.UsageError("--status-file goes with --follow")
    if following and dataset.exists() and not dataset.is_dir():
        raise BadSetup(f"dataset {dataset} is not a directory")
    if not dataset.is_dir() and not following:
        raise BadSetup(f"dataset directory {dataset} does not exist")
    wc = write_concern
    try:
        schema = Schema.load(schema_path) if schema_path else None
        filter = Schema.load(filter_path) if filter_path else None
    except SchemaError as e:
        raise BadSetup(str(e)) from None
    if filter is not None:
        check_filter_levels(filter, schema or Schema.load(DEFAULT_SCHEMA))
    url = connect_url(mongo_config(mongo_url, mongo_dir))
    options = ImportOptions(
        database=database,
        collection=collection,
        drop=drop,
        workers=workers or default_workers(url),
        batch_size=batch_size,
        batch_bytes=max(1, int(batch_mb * 2**20)),
        writers=writers,
        write_concern=wc,
        on_duplicate=on_duplicate,
        keep_dots=keep_dots,
        schema=schema,
        filter=filter,
        create_indexes=not no_indexes,
        hook=None if no_aggregates else _aggregates_hook(histogram_cache, histogram_server),
    )
    if following:
        _follow(dataset, url, options, drain, status_file)
        return
    bar = _progress_bar()
    try:
        summary = import_dataset(dataset, url, options, progress=bar)
    except (MongoUnavailable, DatasetError) as e:
        raise BadSetup(str(e)) from None
    except ImporterError as e:
        raise click.ClickException(str(e)) from None
    finally:
        if bar:
            bar.close()
    for path, error in summary.failed:
        click.echo(f"failed: {error}", err=True)
    for example in summary.examples:
        click.echo(f"bad record: {example}", err=True)
    if summary.files == 0:
        click.echo(f"no layout files under {dataset}", err=True)
    click.echo(f"imported into {database}.{collection}: {summary.describe()}")
    if summary.hook_stats.get("aggregates_unknown_histogram") and not (
        histogram_cache or histogram_server
    ):
        from aggregations.importing import NO_HISTOGRAMS_NOTICE

        click.echo(NO_HISTOGRAMS_NOTICE, err=True)
    if not summary.ok:
        sys.exit(1)


def _follow(dataset, url, options, drain, status_file):
    import logging

    from importer.follow import follow_dataset
    from pipeline.watcher import Stop

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s importer[%(process)d] %(levelname)s %(message)s"
    )
    stop = Stop.on_signals(drain)
    click.echo(f"following {dataset} into {options.database}.{options.collection}", err=True)
    try:
        summary = follow_dataset(dataset, url, options, stop, status_file=status_file)
    except MongoUnavailable as e:
        raise BadSetup(str(e)) from None
    except ImporterError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"imported into {options.database}.{options.collection}: {summary.describe()}")


def _aggregates_hook(histogram_cache: str | None, histogram_server: str | None):
    from aggregations.importing import AggregatesHook

    return AggregatesHook(histogram_cache, histogram_server)


class _progress_bar:
    """A tqdm bar over bytes with files and records alongside, only when stderr is a terminal."""

    def __new__(cls):
        if not sys.stderr.isatty():
            return None
        return super().__new__(cls)

    def __init__(self):
        self.bar = None
        self.files = self.records = 0

    def start(self, files: int, total_bytes: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="importing",
            file=sys.stderr,
        )

    def update(self, chunk: ChunkResult) -> None:
        self.files += len(chunk.files)
        self.records += chunk.records
        self.bar.set_postfix(files=self.files, records=self.records, refresh=False)
        self.bar.update(sum(f.size for f in chunk.files))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.group("mongo")
def mongo():
    """Manage the embedded MongoDB-wire server (SecantusDB)."""


@mongo.command("start")
@mongo_dir_option
def mongo_start(mongo_dir):
    """Start the embedded server if it is not running, and print its URI."""
    config = mongo_config(None, mongo_dir)
    try:
        server, started = ensure_embedded(config)
    except ImporterError as e:
        raise click.ClickException(str(e)) from None
    state = "started" if started else "already running"
    click.echo(f"{state}: {server.url} (pid {server.pid}, data in {server.storage_path})")


@mongo.command("stop")
@mongo_dir_option
def mongo_stop(mongo_dir):
    """Stop the embedded server."""
    config = mongo_config(None, mongo_dir)
    server = stop_embedded(config.data_dir, notify=lambda m: click.echo(m, err=True))
    click.echo(f"stopped pid {server.pid}" if server else "not running")


@mongo.command("status")
@mongo_dir_option
def mongo_status(mongo_dir):
    """Say whether the embedded server runs (exit 0) or not (exit 1)."""
    config = mongo_config(None, mongo_dir)
    server = embedded_status(config.data_dir, notify=lambda m: click.echo(m, err=True))
    if server is None:
        click.echo(f"not running (data dir {config.data_dir})")
        sys.exit(1)
    click.echo(f"running: {server.url} (pid {server.pid}, data in {server.storage_path})")


commands = [import_, mongo]
