"""The Dask engine: same job scripts, same output as the local engine, failures named."""

from __future__ import annotations

from pathlib import Path

import pytest

from converter.layout import find_layout_files, read_layout_file
from converter.synthetic import make_records, write_layout
from mapreduce.errors import JobError
from mapreduce.job import JobConfig, run_job

EXAMPLES = Path(__file__).resolve().parent.parent / "mapreduce" / "examples"


@pytest.fixture(scope="module")
def scheduler():
    """One cluster for the module, the one the engine starts without a scheduler address:
    two single-threaded worker processes on loopback."""
    from mapreduce.dask_engine import local_cluster

    with local_cluster(2) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    base = tmp_path_factory.mktemp("layout")
    write_layout(base, make_records(300, seed=11, payload_kb=1), records_per_file=30)
    return base


def run(tmp_path, script, data, engine, scheduler=None, **kw):
    out = tmp_path / f"{engine}-{script.stem}.txt"
    config = JobConfig(job_script=script, data_dir=data, work_dir=tmp_path / f"work-{engine}",
                       output=out, input_filter=EXAMPLES / "filter_all.json", engine=engine,
                       scheduler=scheduler, **kw)
    result = run_job(config, log=lambda m: None)
    return result, out.read_bytes()


@pytest.mark.parametrize("example", ["os_distribution", "histogram_distribution", "dimensions"])
def test_dask_output_is_the_local_output(tmp_path, scheduler, layout, example):
    script = EXAMPLES / f"{example}.py"
    local, local_out = run(tmp_path, script, layout, "local", num_mappers=3, num_reducers=2)
    dask, dask_out = run(tmp_path, script, layout, "dask", scheduler, num_mappers=3, num_reducers=2)
    assert sorted(dask_out.splitlines()) == sorted(local_out.splitlines())
    assert dask.records == local.records == 300 and dask_out


def test_dask_map_failure_names_file_and_line(tmp_path, scheduler, layout):
    f = max(find_layout_files(layout), key=lambda f: f.size)
    line_no, doc_id, _ = list(read_layout_file(f.path))[-1]
    job = tmp_path / "job.py"
    job.write_text(f"def map(k, d, v, cx):\n"
                   f"    if k == {doc_id!r}:\n"
                   f"        raise ValueError('boom')\n"
                   f"    cx.write(k, 1)\n")
    with pytest.raises(JobError) as err:
        run(tmp_path, job, layout, "dask", scheduler, num_mappers=2)
    assert f"{f.path} line {line_no}" in str(err.value) and "ValueError: boom" in str(err.value)


def test_cli_runs_the_dask_engine_on_a_scheduler(tmp_path, scheduler, fixtures_dir):
    from click.testing import CliRunner

    from mapreduce.cli import mapreduce

    out = tmp_path / "out.txt"
    res = CliRunner().invoke(mapreduce, [
        str(EXAMPLES / "os_distribution.py"), "-f", str(EXAMPLES / "filter_all.json"),
        "-d", str(fixtures_dir / "converted"), "-w", str(tmp_path / "w"), "-o", str(out), "-l",
        "--engine", "dask", "--scheduler", scheduler])
    assert res.exit_code == 0, res.output
    assert out.read_text() == "WINNT\t5\n"


def test_an_unreachable_scheduler_is_reported_at_once(tmp_path):
    import socket

    from mapreduce.dask_engine import DaskEngine
    from mapreduce.errors import JobError

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(JobError, match="cannot reach the Dask scheduler .*Connection refused"):
        with DaskEngine(address, 1):
            pass


def test_the_engines_own_cluster_runs_without_dashboard_chores(scheduler):
    """Its workers neither profile nor monitor every few ms (that took CPU and the GIL from
    the tasks), and the caller's own Dask configuration is left as it was."""
    import dask
    from distributed import Client

    from mapreduce.dask_engine import QUIET_CLUSTER

    with Client(scheduler, timeout="30s") as client:
        seen = client.run(lambda: {key: dask.config.get(key) for key in QUIET_CLUSTER})
    assert len(seen) == 2 and all(s == QUIET_CLUSTER for s in seen.values())
    assert dask.config.get("distributed.worker.profile.enabled") is True


def test_per_task_sums_stay_apart_when_a_worker_runs_tasks_in_threads(tmp_path, layout):
    """setup_map/finish_map state kept by context (docs/mapreduce.md) on a multi-threaded worker."""
    from collections import Counter

    from distributed import LocalCluster

    job = tmp_path / "job.py"
    job.write_text(
        "import time\n"
        "from collections import Counter\n"
        "counts = {}\n"
        "def setup_map(context):\n"
        "    counts[id(context)] = Counter()\n"
        "def map(key, dims, value, context):\n"
        "    time.sleep(0.001)  # let the other threads' tasks run in between\n"
        "    counts[id(context)][dims[3]] += 1\n"
        "def finish_map(context):\n"
        "    for version, n in counts.pop(id(context)).items():\n"
        "        context.write(version, n)\n"
        "def reduce(key, values, context):\n"
        "    context.write(key, sum(values))\n")
    expected = Counter()
    for lf in find_layout_files(layout):
        expected[lf.dimensions[3]] += sum(1 for _ in read_layout_file(lf.path))
    with LocalCluster(n_workers=1, threads_per_worker=4, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster:
        _, out = run(tmp_path, job, layout, "dask", cluster.scheduler_address, num_mappers=4)
    got = dict(line.split("\t") for line in out.decode().splitlines())
    assert {k: int(v) for k, v in got.items()} == dict(expected)
