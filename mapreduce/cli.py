"""``telemetry mapreduce`` (and ``python -m mapreduce.job``): the original job runner's flags.

Only flag checking lives here; :func:`mapreduce.job.run_job` does the work.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from mapreduce.errors import MapReduceError
from mapreduce.job import ENGINES, JobConfig, run_job


@click.command("mapreduce", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("job_script", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-f", "--input-filter", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="File containing the filter spec (schema-shaped JSON).")
@click.option("-d", "--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Base data directory (a layout of published files).")
@click.option("-w", "--work-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Location for work files: mapper_M/part_R, reducer_R, the S3 cache, profiles.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File for the final job output.")
@click.option("-m", "--num-mappers", "--workers", "num_mappers", metavar="N", type=click.IntRange(min=1),
              default=os.cpu_count() or 1, show_default="the number of CPUs",
              help="Start N mapper processes.")
@click.option("-r", "--num-reducers", metavar="N", type=click.IntRange(min=1), default=1,
              show_default=True, help="Start N reducer processes.")
@click.option("-l", "--local-only", is_flag=True,
              help="Only process local files (exclude S3 data).")
@click.option("-b", "--bucket", metavar="NAME",
              help="S3 bucket name to read matching files from as well.")
@click.option("--endpoint-url", metavar="URL", help="S3 endpoint for S3-compatible stores.")
@click.option("-k", "--aws-key", metavar="KEY",
              help="AWS access key (default: boto3's usual sources).")
@click.option("-s", "--aws-secret-key", metavar="KEY", help="AWS secret key.")
@click.option("-X", "--delete-data", is_flag=True, help="Delete the input files once the job has succeeded.")
@click.option("-p", "--profile", is_flag=True,
              help="Write cProfile stats per task to WORK_DIR/profile.")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
              help="Run on local processes or on a Dask cluster.")
@click.option("--scheduler", metavar="ADDRESS",
              help="Dask scheduler (tcp://host:8786); default: a local cluster of N mappers.")
@click.option("--reduce-memory", "reduce_memory_mb", type=click.FloatRange(min=0, min_open=True),
              default=512.0, show_default=True, metavar="MB",
              help="Memory per reducer before it spills sorted runs to disk.")
@click.option("--keep-work", is_flag=True, help="Keep intermediate files after a successful run.")
@click.option("-v", "--verbose", is_flag=True, help="Print more about the run.")
def mapreduce(job_script: Path, **options) -> None:
    """Run the MapReduce JOB_SCRIPT over the layout files the filter allows."""
    if options["local_only"] and options["bucket"]:
        raise click.UsageError("--local-only and --bucket exclude each other")
    if not options["local_only"] and not options["bucket"]:
        raise click.UsageError("give --bucket NAME, or --local-only to read local files only")
    if options["scheduler"] and options["engine"] != "dask":
        raise click.UsageError("--scheduler needs --engine dask")
    config = JobConfig(job_script=job_script, **options)
    try:
        result = run_job(config, log=lambda message: click.echo(message, err=True))
    except MapReduceError as e:
        raise click.ClickException(str(e)) from None
    click.echo(result.summary(), err=True)


commands = [mapreduce]
