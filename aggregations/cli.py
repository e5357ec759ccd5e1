"""``telemetry aggregate`` and ``telemetry compare``: flags in, library calls, rows out."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson
from pymongo.errors import PyMongoError

from aggregations.compare import compare as compare_both
from aggregations.formats import FORMATS, format_rows
from aggregations.pipelines import (
    PIPELINES,
    AggregationError,
    build_pipeline,
    check_custom,
    run_custom,
)
from converter.schema import Schema, SchemaError
from importer.cli import (
    BadSetup,
    collection_name,
    connect_url,
    database_name,
    mongo_config,
    mongo_options,
)
from importer.errors import MongoUnavailable
from importer.importer import DEFAULT_SCHEMA
from importer.mongo import connect


def _collection(mongo_url, mongo_dir, database, collection):
    url = connect_url(mongo_config(mongo_url, mongo_dir))
    try:
        client = connect(url)
    except MongoUnavailable as e:
        raise BadSetup(str(e)) from None
    return client, client[database][collection]


def _load_schema(path: Path | None, what: str) -> Schema | None:
    if path is None:
        return None
    try:
        return Schema.load(path)
    except SchemaError as e:
        raise click.UsageError(f"{what}: {e}") from None


def _check_by(by: str | None, schema: Schema) -> None:
    if by is not None and by not in schema.names:
        raise click.UsageError(f"--by must be a dimension: {', '.join(schema.names)}")


def _check_filter(filter: Schema | None, schema: Schema) -> None:
    """A filter naming a dimension the schema does not have would silently match nothing."""
    if filter is None:
        return
    unknown = [n for n in filter.names if n not in schema.names]
    if unknown:
        raise click.UsageError(
            f"filter: unknown dimension {unknown[0]!r}{_did_you_mean(unknown[0], schema.names)}; "
            f"the dimensions are {', '.join(schema.names)}"
        )


def _did_you_mean(word: str, choices: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        close = [c for c in choices if c.lower() == word.lower()]
    return f" (did you mean {close[0]!r}?)" if close else ""


SECTIONS = {"histogram": "histograms", "simple_measurement": "simpleMeasurements"}


def _why_no_rows(coll, name: str | None, measure: str | None, database: str, collection: str):
    """Why a pipeline gave no rows: an empty collection, or an unknown --name (an error)."""
    if coll.estimated_document_count() == 0:
        return f"no rows: {database}.{collection} is empty; is it imported?"
    section = SECTIONS.get(name or "")
    if section and measure:
        known: set[str] = set()
        for doc in coll.find({}, {section: 1}).limit(50):  # a sample: cheap on any server
            if isinstance(doc.get(section), dict):
                known.update(doc[section])
        if known and measure not in known:
            raise click.UsageError(
                f"--name {measure!r} is in none of the documents"
                f"{_did_you_mean(measure, sorted(known))}; {section} names in a sample of "
                f"{database}.{collection}: {', '.join(sorted(known)[:20])}"
                + (f" ... ({len(known)} in all)" if len(known) > 20 else "")
            )
    return f"no rows: no document of {database}.{collection} matches"


def collection_options(f):
    f = click.option(
        "-c",
        "--collection",
        default="payloads",
        show_default=True,
        callback=collection_name,
        help="Collection of the imported pings.",
    )(f)
    f = click.option(
        "-d",
        "--database",
        default="telemetry",
        show_default=True,
        callback=database_name,
        help="Database of the imported pings.",
    )(f)
    return f


def pipeline_options(f):
    f = click.option(
        "--by",
        help="Dimension to group by (histogram, simple_measurement) "
        "[default: appUpdateChannel].",
    )(f)
    f = click.option("--name", "measure", help="Histogram or simpleMeasurements key.")(f)
    f = click.option(
        "--filter",
        "filter_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="A MapReduce-style filter (telemetry_schema.json shape) on the dimensions.",
    )(f)
    f = click.option(
        "--schema",
        "schema_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="telemetry_schema.json naming the dimensions [default: the packaged one].",
    )(f)
    return f


@click.command()
@click.argument("name", required=False)
@pipeline_options
@collection_options
@click.option(
    "--pipeline",
    "pipeline_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Run your own pipeline (a JSON list of stages) instead of a named one.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="How rows are printed.",
)
@click.option("--list", "list_", is_flag=True, help="List the named pipelines and exit.")
@click.option("--show", is_flag=True, help="Print the pipeline as JSON instead of running it.")
@mongo_options
def aggregate(
    name,
    measure,
    by,
    filter_path,
    schema_path,
    database,
    collection,
    pipeline_path,
    fmt,
    list_,
    show,
    mongo_url,
    mongo_dir,
):
    """Run the named aggregation pipeline NAME (see --list) over the imported pings."""
    if list_:
        for p in PIPELINES.values():
            needs = "".join(f" --{o} X" for o in p.options)
            click.echo(f"{p.name}{needs}: {p.help}")
        return
    if (name is None) == (pipeline_path is None):
        raise click.UsageError("give a pipeline NAME or --pipeline FILE (see --list)")
    schema = _load_schema(schema_path, "schema") or Schema.load(DEFAULT_SCHEMA)
    filter = _load_schema(filter_path, "filter")
    _check_by(by, schema)
    _check_filter(filter, schema)
    if pipeline_path is not None:
        try:
            custom = orjson.loads(pipeline_path.read_bytes())
        except FileNotFoundError:
            raise click.UsageError(f"pipeline file {pipeline_path} does not exist") from None
        except orjson.JSONDecodeError as e:
            raise click.UsageError(f"pipeline file {pipeline_path} is not JSON: {e}") from None
        try:
            check_custom(custom)
        except AggregationError as e:
            raise click.UsageError(f"pipeline file {pipeline_path}: {e}") from None
    else:
        try:
            pipeline, columns = build_pipeline(name, filter=filter, **_options(measure, by))
        except AggregationError as e:
            raise click.UsageError(str(e)) from None
        if show:
            click.echo(orjson.dumps(pipeline, option=orjson.OPT_INDENT_2).decode())
            return
    client, coll = _collection(mongo_url, mongo_dir, database, collection)
    why = None
    try:
        if pipeline_path is not None:
            rows, columns = run_custom(coll, custom, filter)
        else:
            rows = [{c: r.get(c) for c in columns} for r in coll.aggregate(pipeline)]
        if not rows:
            why = _why_no_rows(coll, name, measure, database, collection)
    except AggregationError as e:
        raise click.UsageError(str(e)) from None
    except PyMongoError as e:
        raise click.ClickException(f"the pipeline failed: {e}") from None
    finally:
        client.close()
    if why:
        click.echo(why, err=True)
    click.echo(format_rows(rows, columns, fmt), nl=False)


@click.command()
@click.argument("name")
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The layout the MapReduce job reads (the dataset that was imported).",
)
@pipeline_options
@collection_options
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the job keeps its intermediate files [default: a temporary directory].",
)
@click.option(
    "--num-mappers",
    "--workers",
    "num_mappers",
    type=click.IntRange(1),
    help="Mapper processes [default: one per CPU].",
)
@mongo_options
def compare(
    name,
    data_dir,
    measure,
    by,
    filter_path,
    schema_path,
    database,
    collection,
    work_dir,
    num_mappers,
    mongo_url,
    mongo_dir,
):
    """Answer NAME twice, by a MapReduce job over --data-dir and by the Mongo pipeline, and compare.

    Exit 0 when both agree (floats within a relative 1e-9), 1 when they differ.
    """
    if not data_dir.is_dir():
        raise BadSetup(f"data directory {data_dir} does not exist")
    if name not in PIPELINES:
        raise click.UsageError(f"no pipeline named {name!r}; known: {', '.join(sorted(PIPELINES))}")
    schema = _load_schema(schema_path, "schema") or Schema.load(DEFAULT_SCHEMA)
    _check_filter(_load_schema(filter_path, "filter"), schema)
    _check_by(by, schema)
    if work_dir is not None:
        if not work_dir.is_dir() and not work_dir.absolute().parent.is_dir():
            raise BadSetup(f"--work-dir {work_dir}: directory {work_dir.absolute().parent} "
                           f"does not exist")
        work_dir.mkdir(exist_ok=True)
    client, coll = _collection(mongo_url, mongo_dir, database, collection)
    try:
        result = compare_both(
            name,
            coll,
            data_dir,
            schema,
            filter_path,
            work_dir,
            num_mappers,
            log=lambda m: click.echo(m, err=True),
            **_options(measure, by),
        )
    except AggregationError as e:
        raise click.UsageError(str(e)) from None
    except PyMongoError as e:
        raise click.ClickException(f"the pipeline failed: {e}") from None
    except Exception as e:  # the MapReduce package's own errors, named in its message
        from mapreduce.errors import MapReduceError

        if isinstance(e, MapReduceError):
            raise click.ClickException(f"the MapReduce job failed: {e}") from None
        raise
    finally:
        client.close()
    click.echo(result.describe(), nl=False)
    if not result.agree:
        sys.exit(1)


def _options(measure: str | None, by: str | None) -> dict:
    return {k: v for k, v in (("name", measure), ("by", by)) if v is not None}


@click.group("aggregates")
def aggregates():
    """The pre-computed aggregates behind the dashboard API (docs/aggregates.md)."""


@aggregates.command("rebuild")
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The layout to recompute the aggregates from.",
)
@click.option(
    "--filter",
    "filter_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Rebuild the channels and major versions of the files this filter picks [default: all].",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "dask"]),
    default="local",
    show_default=True,
    help="Run the MapReduce job on local processes or on a Dask cluster.",
)
@click.option("--scheduler", help="Dask scheduler address (with --engine dask).")
@click.option(
    "--num-mappers",
    "--workers",
    "num_mappers",
    type=click.IntRange(1),
    help="Mapper processes [default: one per CPU].",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the job keeps its intermediate files [default: a temporary directory].",
)
@click.option("--histogram-cache", help="Directory of cached Histograms.json revisions.")
@click.option("--histogram-server", help="Histogram server URL or host:port.")
@click.option(
    "--schema",
    "schema_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="telemetry_schema.json naming the dimensions [default: the packaged one].",
)
@click.option(
    "-d",
    "--database",
    default="telemetry",
    show_default=True,
    callback=database_name,
    help="Database the aggregates are written to.",
)
@mongo_options
def aggregates_rebuild(
    data_dir,
    filter_path,
    engine,
    scheduler,
    num_mappers,
    work_dir,
    histogram_cache,
    histogram_server,
    schema_path,
    database,
    mongo_url,
    mongo_dir,
):
    """Recompute the aggregates from the layout (a MapReduce job) and replace what it covers."""
    from aggregations.importing import NO_HISTOGRAMS_NOTICE
    from aggregations.rebuild import RebuildConfig, RebuildError, rebuild

    if not data_dir.is_dir():
        raise BadSetup(f"data directory {data_dir} does not exist")
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    config = RebuildConfig(
        data_dir=data_dir,
        filter=filter_path,
        engine=engine,
        scheduler=scheduler,
        work_dir=work_dir,
        histogram_cache=histogram_cache,
        histogram_server=histogram_server,
        schema=schema_path,
        **({"num_mappers": num_mappers} if num_mappers else {}),
    )
    url = connect_url(mongo_config(mongo_url, mongo_dir))
    try:
        client = connect(url)
    except MongoUnavailable as e:
        raise BadSetup(str(e)) from None
    try:
        result = rebuild(config, client[database], log=lambda m: click.echo(m, err=True))
    except RebuildError as e:
        raise click.ClickException(str(e)) from None
    except PyMongoError as e:
        raise click.ClickException(f"writing the aggregates failed: {e}") from None
    finally:
        client.close()
    click.echo(result.describe())
    if result.stats.get("unknown_histogram") and not (histogram_cache or histogram_server):
        click.echo(NO_HISTOGRAMS_NOTICE, err=True)


commands = [aggregate, compare, aggregates]
