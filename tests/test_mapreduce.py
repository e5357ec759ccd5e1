"""The MapReduce job runner on the local process engine: API, CLI, filters, failures, memory."""

from __future__ import annotations

import json
import lzma
import multiprocessing
import os
import pstats
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from converter.layout import find_layout_files, read_layout_file
from converter.schema import Schema
from converter.synthetic import make_records, write_layout
from mapreduce.cli import mapreduce as mapreduce_command
from mapreduce.errors import ConfigError, JobError
from mapreduce.job import JobConfig, assign_files, run_job
from mapreduce.partition import partition_of
from mapreduce.reducer import Groups
from mapreduce.task import InputFile

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "mapreduce" / "examples"
FILTER_ALL = EXAMPLES / "filter_all.json"
DIMS = ["reason", "appName", "appUpdateChannel", "appVersion", "appBuildID", "submission_date"]


def write_filter(path: Path, **allowed) -> Path:
    path.write_text(json.dumps({"version": 1, "dimensions": [
        {"field_name": d, "allowed_values": allowed.get(d, "*")} for d in DIMS]}))
    return path


def write_job(directory: Path, source: str, name: str = "job.py") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path


def run(tmp_path: Path, script: Path, data: Path, filter: Path | None = FILTER_ALL, **options):
    output = tmp_path / "out" / f"{script.stem}.txt"
    output.parent.mkdir(parents=True, exist_ok=True)
    config = JobConfig(job_script=script, data_dir=data, work_dir=tmp_path / "work", output=output,
                       input_filter=filter, num_mappers=options.pop("num_mappers", 2), **options)
    result = run_job(config, log=lambda m: None)
    return result, output.read_bytes().decode("utf-8")


def lines(text: str) -> list[str]:
    return sorted(text.splitlines())


@pytest.fixture(scope="module")
def records():
    return make_records(400, seed=7, payload_kb=1)


@pytest.fixture(scope="module")
def layout(records, tmp_path_factory):
    base = tmp_path_factory.mktemp("layout")
    write_layout(base, records, records_per_file=40)
    return base


# --- the example jobs against counts computed in plain Python -----------------------------

def test_os_distribution_on_the_original_published_files(tmp_path, fixtures_dir):
    expected = Counter()
    for path in sorted((fixtures_dir / "converted").rglob("*.lzma")):
        with lzma.open(path, format=lzma.FORMAT_ALONE) as f:
            for line in f:
                expected[json.loads(line.split(b"\t", 1)[1])["info"]["OS"]] += 1
    result, out = run(tmp_path, EXAMPLES / "os_distribution.py", fixtures_dir / "converted")
    assert lines(out) == sorted(f"{os_}\t{n}" for os_, n in expected.items())
    assert result.records == sum(expected.values()) == 5
    assert result.files == 2 and result.bad_lines == 0 and result.cpu_seconds > 0


@pytest.mark.parametrize("mappers,reducers", [(1, 1), (3, 1), (1, 3), (3, 3)])
def test_os_distribution_same_for_any_number_of_tasks(tmp_path, layout, records, mappers, reducers):
    expected = Counter(r.payload["info"]["OS"] for r in records)
    result, out = run(tmp_path, EXAMPLES / "os_distribution.py", layout,
                      num_mappers=mappers, num_reducers=reducers)
    assert lines(out) == sorted(f"{k}\t{v}" for k, v in expected.items())
    assert (result.mappers, result.reducers, result.records) == (mappers, reducers, len(records))
    # Intermediate files are gone after a successful run; the output alone remains.
    work = tmp_path / "work"
    assert not list(work.glob("mapper_*")) and not list(work.glob("reducer_*"))


def test_record_count_and_dimensions(tmp_path, layout, records):
    _, out = run(tmp_path, EXAMPLES / "record_count.py", layout, num_reducers=2)
    assert out == f"total\t{len(records)}\n"
    _, out = run(tmp_path, EXAMPLES / "dimensions.py", layout, num_mappers=3, num_reducers=2)
    expected = Counter("/".join(d.replace("-", "_") for d in r.dimensions) for r in records)
    assert lines(out) == sorted(f"{k}\t{v}" for k, v in expected.items())


def test_histogram_distribution(tmp_path, layout, records):
    sums: dict[str, list[int]] = {}
    for r in records:
        h = r.payload["histograms"]["GC_MS"]
        v = h[:-5] + [h[-5]]
        sums[r.dimensions[2]] = [a + b for a, b in zip(sums.get(r.dimensions[2], [0] * len(v)), v)]
    _, out = run(tmp_path, EXAMPLES / "histogram_distribution.py", layout,
                 num_mappers=3, num_reducers=2)
    got = {line.split("\t")[0]: json.loads(line.split("\t")[1]) for line in out.splitlines()}
    assert got == sums


COUNT_BY_VERSION = """
    def map(key, dims, value, context):
        context.write(dims[3], 1)
    {combine}
    def reduce(key, values, context):
        context.write(key, sum(values))
"""
COMBINE = """
    import os
    def combine(key, values, context):
        assert len(values) >= 50
        open(os.path.join(CALLS, f"{{os.getpid()}}-{{len(values)}}-{{key}}"), "a").close()
        context.write(key, sum(values))
"""


@pytest.mark.parametrize("mappers,reducers", [(1, 1), (3, 2)])
def test_combine_does_not_change_results(tmp_path, layout, records, mappers, reducers):
    calls = tmp_path / "combine_calls"
    calls.mkdir()
    combine = COMBINE.replace("CALLS", repr(str(calls)))
    with_combine = write_job(tmp_path / "a", COUNT_BY_VERSION.format(combine=combine))
    without = write_job(tmp_path / "b", COUNT_BY_VERSION.format(combine=""))
    counts = {"num_mappers": mappers, "num_reducers": reducers}
    _, out_with = run(tmp_path / "1", with_combine, layout, **counts)
    _, out_without = run(tmp_path / "2", without, layout, **counts)
    expected = Counter(r.dimensions[3] for r in records)
    assert lines(out_with) == lines(out_without) == sorted(f"{k}\t{v}" for k, v in expected.items())
    assert list(calls.iterdir()), "combine was never called"


SUM_PER_TASK = """
from collections import Counter
counts = {}  # per running task, by context

def setup_map(context):
    counts[id(context)] = Counter()

def map(key, dims, value, context):
    counts[id(context)][dims[3]] += 1

def finish_map(context):
    for version, n in counts.pop(id(context)).items():
        context.write(version, n)
    context.write("tasks", 1)

def reduce(key, values, context):
    context.write(key, sum(values))
"""


@pytest.mark.parametrize("mappers", [1, 3])
def test_a_job_may_sum_over_its_map_task_and_write_at_the_end(tmp_path, layout, records, mappers):
    job = write_job(tmp_path, SUM_PER_TASK)
    _, out = run(tmp_path, job, layout, num_mappers=mappers)
    expected = Counter(r.dimensions[3] for r in records)
    assert lines(out) == sorted([f"{k}\t{v}" for k, v in expected.items()] + [f"tasks\t{mappers}"])


def test_a_failing_finish_map_fails_the_job_naming_it(tmp_path, layout):
    job = write_job(tmp_path, SUM_PER_TASK.replace(
        "    context.write(\"tasks\", 1)", "    raise ValueError(\"no room\")"))
    with pytest.raises(JobError) as err:
        run(tmp_path, job, layout, num_mappers=2)
    assert "finish_map failed: ValueError: no room" in str(err.value)
    assert multiprocessing.active_children() == []


def test_map_only_job_writes_map_output_as_is(tmp_path, layout, records):
    job = write_job(tmp_path, """
        import json
        def map(key, dims, value, context):
            context.write(key, json.loads(value)["info"]["memsize"])
    """)
    result, out = run(tmp_path, job, layout, num_mappers=2, num_reducers=2)
    assert lines(out) == sorted(f"{r.doc_id}\t{r.payload['info']['memsize']}" for r in records)
    assert result.output_records == len(records)


def test_reduce_context_separators_csv_and_lines(tmp_path, fixtures_dir):
    job = write_job(tmp_path, """
        def map(key, dims, value, context):
            context.write(dims[3], key)
        def setup_reduce(context):
            context.field_separator = ","
            context.record_separator = "\\r\\n"
        def reduce(key, values, context):
            context.write(key, len(values))
            context.writecsv([key, "a,b", 1])
            context.writeline("# " + key)
    """)
    _, out = run(tmp_path, job, fixtures_dir / "converted", num_mappers=1)
    assert out == ('22.0a1,1\r\n22.0a1,"a,b",1\r\n# 22.0a1\r\n'
                   '28.0a1,4\r\n28.0a1,"a,b",1\r\n# 28.0a1\r\n')


def test_script_imports_a_module_next_to_it(tmp_path, fixtures_dir):
    write_job(tmp_path / "jobdir", "LABEL = 'seen'\n", name="job_helper_mr.py")
    job = write_job(tmp_path / "jobdir", """
        from job_helper_mr import LABEL
        def map(key, dims, value, context):
            context.write(LABEL, 1)
        def reduce(key, values, context):
            context.write(key, sum(values))
    """)
    _, out = run(tmp_path, job, fixtures_dir / "converted", num_mappers=2)
    assert out == "seen\t5\n"


# --- filters -------------------------------------------------------------------------------

@pytest.mark.parametrize("allowed", [
    {},
    {"appName": ["Firefox"], "appUpdateChannel": ["nightly", "aurora"]},
    {"reason": "saved-session", "appVersion": "24.0"},
    {"submission_date": {"min": "20131102", "max": "20131103"}},
    {"submission_date": {"min": "20131103"}, "appBuildID": ["20130814063812"]},
])
def test_filter_selects_the_same_records_as_plain_python(tmp_path, layout, records, allowed):
    filter = write_filter(tmp_path / "filter.json", **allowed)
    schema = Schema.load(filter)
    expected = sum(1 for r in records if schema.allows(r.dimensions))
    assert 0 < expected < len(records) or not allowed
    result, out = run(tmp_path, EXAMPLES / "record_count.py", layout, filter)
    assert out == f"total\t{expected}\n" and result.records == expected
    assert result.files == len(find_layout_files(layout, schema))


def test_filter_that_matches_nothing_gives_empty_output_and_exit_0(tmp_path, layout):
    filter = write_filter(tmp_path / "f.json", appName="Thunderbird")
    out = tmp_path / "o.txt"
    res = CliRunner().invoke(mapreduce_command, [
        str(EXAMPLES / "os_distribution.py"), "-f", str(filter), "-d", str(layout),
        "-w", str(tmp_path / "w"), "-o", str(out), "--local-only"])
    assert res.exit_code == 0, res.output
    assert "matched no input files" in res.output
    assert out.read_text() == ""


def test_filter_prunes_directories_it_does_not_allow(tmp_path, layout, monkeypatch):
    import converter.layout

    visited = []
    real_walk = os.walk

    def recording_walk(top, *args, **kwargs):
        for entry in real_walk(top, *args, **kwargs):
            visited.append(os.path.relpath(entry[0], layout))
            yield entry

    monkeypatch.setattr(converter.layout.os, "walk", recording_walk)
    filter = write_filter(tmp_path / "f.json", reason="saved-session", appName="Firefox",
                          appUpdateChannel=["beta", "nightly"])
    result, _ = run(tmp_path, EXAMPLES / "record_count.py", layout, filter)
    assert result.records > 0
    assert "saved_session/Firefox/beta" in visited
    assert not [v for v in visited if "Fennec" in v or "idle_daily" in v or "release" in v]


# --- bad lines, options --------------------------------------------------------------------

def test_bad_lines_are_counted_not_fatal(tmp_path, records):
    data = tmp_path / "data"
    write_layout(data, records[:30], codec="log")
    victim = sorted(data.rglob("*.log"))[0]
    with open(victim, "a") as f:
        f.write("this line has no tab\n")
    result, out = run(tmp_path, EXAMPLES / "record_count.py", data)
    assert out == "total\t30\n"
    assert result.bad_lines == 1 and str(victim) in result.bad_examples[0]
    assert "1 bad lines" in result.summary()


def test_profile_writes_stats_per_task(tmp_path, fixtures_dir):
    run(tmp_path, EXAMPLES / "os_distribution.py", fixtures_dir / "converted",
        num_mappers=2, num_reducers=2, profile=True)
    names = sorted(p.name for p in (tmp_path / "work" / "profile").iterdir())
    assert names == ["mapper_0.prof", "mapper_1.prof", "reducer_0.prof", "reducer_1.prof"]
    stats = pstats.Stats(str(tmp_path / "work" / "profile" / "mapper_0.prof"))
    assert any(fn[2] == "map" for fn in stats.stats)


def test_delete_data_removes_inputs_after_mapping(tmp_path, fixtures_dir):
    data = tmp_path / "data"
    shutil.copytree(fixtures_dir / "converted", data)
    filter = write_filter(tmp_path / "f.json", appVersion="28.0a1")
    _, out = run(tmp_path, EXAMPLES / "record_count.py", data, filter, delete_data=True)
    assert out == "total\t4\n"
    assert [p.name.split(".")[0] for p in data.rglob("*.lzma")] == ["20130226031002"]


def test_assign_files_largest_first_to_least_loaded():
    files = [InputFile(f"f{size}", ("a", "b"), size) for size in (10, 70, 30, 40, 50, 20)]
    groups = assign_files(files, 3)
    assert [[f.size for f in g] for g in groups] == [[70, 10], [50, 20], [40, 30]]


def test_partition_is_stable_across_processes():
    keys = ["WINNT", ("Firefox", 23), 42, "ünïcode"]
    code = ("from mapreduce.partition import partition_of; "
            f"print([partition_of(k, 7) for k in {keys!r}])")
    seen = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                           capture_output=True, text=True, check=True).stdout
            for seed in ("1", "2")}
    assert seen == {f"{[partition_of(k, 7) for k in keys]}\n"}
    assert len({partition_of(f"k{i}", 7) for i in range(100)}) == 7


# --- bounded memory ------------------------------------------------------------------------

def test_reducer_spills_past_its_budget_and_gives_the_same_result(tmp_path, layout, records):
    job = write_job(tmp_path, """
        def map(key, dims, value, context):
            for i in range(25):
                context.write(f"{key}/{i}", i)
            context.write("shared", 1)
        def reduce(key, values, context):
            context.write(key, sum(values))
    """)
    small, out_small = run(tmp_path / "s", job, layout, num_reducers=2, reduce_memory_mb=0.02)
    big, out_big = run(tmp_path / "b", job, layout, num_reducers=2)
    assert small.spills > 10 and big.spills == 0
    assert out_small == out_big      # same bytes, same order: spilling does not reorder output
    assert small.output_records == len(records) * 25 + 1
    assert f"shared\t{len(records)}" in out_small.splitlines()


def test_groups_merge_runs_in_key_order(tmp_path):
    groups = Groups(memory_bytes=1, spill_dir=tmp_path / "spill")
    for frame in ([("b", 1), ("a", 1)], [("a", 2), (3, 1)], [("b", 5)]):
        groups.add_frame(frame, 100)
    assert groups.spills == 3
    assert list(groups.items()) == [("a", [1, 2]), ("b", [1, 5]), (3, [1])]  # by repr


# --- failures ------------------------------------------------------------------------------

def failing_record(data: Path, index: int) -> tuple[str, int, str]:
    files = find_layout_files(data)
    seen = 0
    for f in files:
        for line_no, doc_id, _ in read_layout_file(f.path):
            if seen == index:
                return str(f.path), line_no, doc_id
            seen += 1
    raise AssertionError("not enough records")


def test_map_exception_fails_the_job_naming_file_and_line(tmp_path, layout):
    path, line_no, doc_id = failing_record(layout, 57)
    job = write_job(tmp_path, f"""
        def map(key, dims, value, context):
            if key == {doc_id!r}:
                raise KeyError("no such field")
            context.write("n", 1)
        def reduce(key, values, context):
            context.write(key, sum(values))
    """)
    with pytest.raises(JobError) as err:
        run(tmp_path, job, layout, num_mappers=3)
    message = str(err.value)
    assert f"{path} line {line_no}" in message and "KeyError" in message and "mapper" in message
    assert multiprocessing.active_children() == []
    # Through the CLI the same failure is exit 1 with the message, no traceback of ours.
    res = CliRunner().invoke(mapreduce_command, [
        str(job), "-f", str(FILTER_ALL), "-d", str(layout), "-w", str(tmp_path / "w"),
        "-o", str(tmp_path / "o"), "-l", "-m", "2"])
    assert res.exit_code == 1 and f"line {line_no}" in res.output


@pytest.mark.parametrize("death,expected", [
    ("os.kill(os.getpid(), signal.SIGKILL)", "killed by SIGKILL"),
    ("os._exit(3)", "exited with code 3"),
    ("sys.exit(4)", "SystemExit: 4"),
])
def test_dead_mapper_fails_the_job_and_rerun_gives_the_right_answer(tmp_path, layout, records,
                                                                    death, expected):
    path, line_no, doc_id = failing_record(layout, 200)
    job = write_job(tmp_path, f"""
        import os, signal, sys
        def map(key, dims, value, context):
            if key == {doc_id!r}:
                {death}
            context.write("n", 1)
        def reduce(key, values, context):
            context.write(key, sum(values))
    """)
    with pytest.raises(JobError) as err:
        run(tmp_path, job, layout, num_mappers=2, num_reducers=2)
    assert expected in str(err.value)
    assert path in str(err.value) and f"line {line_no}" in str(err.value)
    assert multiprocessing.active_children() == []
    # The work dir is left for inspection ...
    work = tmp_path / "work"
    assert [p for p in work.glob("mapper_*/part_1")]
    # ... and a rerun from scratch in the same work dir gives the right answer.
    _, out = run(tmp_path, EXAMPLES / "record_count.py", layout, num_mappers=2, num_reducers=2)
    assert out == f"total\t{len(records)}\n"


def test_reduce_exception_names_the_reducer_and_key(tmp_path, fixtures_dir):
    job = write_job(tmp_path, """
        def map(key, dims, value, context):
            context.write(dims[3], 1)
        def reduce(key, values, context):
            raise ValueError("bad reduce")
    """)
    with pytest.raises(JobError, match=r"reducer 0 failed on key '22.0a1'.*ValueError: bad reduce"):
        run(tmp_path, job, fixtures_dir / "converted")


@pytest.mark.parametrize("source,message", [
    ("def reduce(k, v, cx):\n    pass\n", "has no map"),
    ("def map(k, d, v, cx)\n    pass\n", "line 1: syntax error"),
    ("import no_such_module_anywhere\n", "ModuleNotFoundError"),
])
def test_bad_job_scripts_are_config_errors(tmp_path, fixtures_dir, source, message):
    job = write_job(tmp_path, source)
    with pytest.raises(ConfigError, match=message):
        run(tmp_path, job, fixtures_dir / "converted")


@pytest.mark.parametrize("change,message", [
    ({"num_mappers": 0}, "mappers must be greater than zero"),
    ({"num_reducers": 0}, "reducers must be greater than zero"),
    ({"engine": "spark"}, "unknown engine"),
    ({"data_dir": Path("/nonexistent/dir")}, "is not a directory"),
    ({"input_filter": Path("/nonexistent/filter.json")}, "is not a file"),
    # never creates directories it was not pointed at (MISSING: a directory under tmp_path)
    ({"output": Path("MISSING/o.txt")}, "MISSING does not exist"),
    ({"work_dir": Path("MISSING/w")}, "MISSING does not exist"),
])
def test_bad_configs_are_config_errors(tmp_path, fixtures_dir, change, message):
    config = JobConfig(job_script=EXAMPLES / "os_distribution.py",
                       data_dir=fixtures_dir / "converted", work_dir=tmp_path / "w",
                       output=tmp_path / "o", input_filter=FILTER_ALL)
    missing = tmp_path / "missing"
    for k, v in change.items():
        setattr(config, k, Path(str(v).replace("MISSING", str(missing))) if "MISSING" in str(v) else v)
    with pytest.raises(ConfigError, match=message.replace("MISSING", str(missing))):
        run_job(config)
    assert not missing.exists()


def test_bad_filter_is_a_config_error(tmp_path, fixtures_dir):
    bad = tmp_path / "bad.json"
    bad.write_text('{"dimensions": [{"field_name": "reason", "allowed_values": 5}]}')
    with pytest.raises(ConfigError, match="input filter"):
        run(tmp_path, EXAMPLES / "os_distribution.py", fixtures_dir / "converted", bad)


# --- command line --------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--input-filter", "F", "--data-dir", "D", "--work-dir", "W", "--local-only"], "--output"),
    (["--data-dir", "D", "--work-dir", "W", "--output", "O", "--local-only"], "--input-filter"),
    (["-f", "F", "-d", "D", "-o", "O", "--local-only"], "--work-dir"),
    (["-f", "F", "-w", "W", "-o", "O", "--local-only"], "--data-dir"),
    (["-f", "F", "-d", "D", "-w", "W", "-o", "O"], "--bucket NAME, or --local-only"),
    (["-f", "F", "-d", "D", "-w", "W", "-o", "O", "-l", "-b", "x"], "exclude each other"),
    (["-f", "F", "-d", "D", "-w", "W", "-o", "O", "-l", "--frobnicate"], "No such option"),
    (["-f", "F", "-d", "D", "-w", "W", "-o", "O", "-l", "-m", "0"], "num-mappers"),
    (["-f", "F", "-d", "D", "-w", "W", "-o", "O", "-l", "--scheduler", "tcp://127.0.0.1:1"],
     "needs --engine dask"),
])
def test_usage_errors_exit_2(args, message):
    res = CliRunner().invoke(mapreduce_command, ["job.py", *args])
    assert res.exit_code == 2 and message in res.output


def test_python_m_mapreduce_job_runs_the_original_command_line(tmp_path, fixtures_dir):
    out = tmp_path / "out.txt"
    proc = subprocess.run([sys.executable, "-m", "mapreduce.job",
                           str(EXAMPLES / "os_distribution.py"), "--input-filter", str(FILTER_ALL),
                           "--data-dir", str(fixtures_dir / "converted"),
                           "--work-dir", str(tmp_path / "w"), "--output", str(out), "--local-only",
                           "--num-mappers", "2"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "WINNT\t5\n"
    assert "5 records from 2 files" in proc.stderr
    assert "map:" not in proc.stderr   # no progress bar when stderr is not a terminal
    bad = subprocess.run([sys.executable, "-m", "mapreduce.job", "job.py"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Missing option" in bad.stderr


def test_cli_module_exports_the_command_for_the_telemetry_group():
    from mapreduce.cli import commands

    assert [c.name for c in commands] == ["mapreduce"]
    res = CliRunner().invoke(commands[0], ["--help"])
    assert res.exit_code == 0 and "--num-reducers" in res.output and "--input-filter" in res.output


def test_docs_cover_every_option():
    docs = (REPO / "docs" / "mapreduce.md").read_text()
    for param in mapreduce_command.params:
        for opt in param.opts:
            if opt.startswith("--"):
                assert opt in docs, f"{opt} is not documented"


def test_killed_job_stops_its_tasks_and_a_rerun_is_right(tmp_path, layout, records):
    import signal
    import time

    pids = tmp_path / "pids"
    pids.mkdir()
    job = write_job(tmp_path, f"""
        import os, time
        def map(key, dims, value, context):
            open(os.path.join({str(pids)!r}, str(os.getpid())), "w").close()
            time.sleep(0.2)
            context.write("n", 1)
    """)
    work, out = tmp_path / "work", tmp_path / "out.txt"
    proc = subprocess.Popen([sys.executable, "-m", "mapreduce.job", str(job), "-f", str(FILTER_ALL),
                             "-d", str(layout), "-w", str(work), "-o", str(out), "-l", "-m", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    mappers = [int(p.name) for p in pids.iterdir()]
    assert len(mappers) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10   # left alone, the mappers would run for 40 s more

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:  # it ended between the two looks
            return False

    while any(alive(p) for p in mappers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in mappers), "mappers ran on after their job was killed"
    assert (work / "mapper_0").is_dir() and not out.exists()
    _, text = run(tmp_path, EXAMPLES / "record_count.py", layout)
    assert text == f"total\t{len(records)}\n"


def test_progress_bar_on_a_terminal(tmp_path, fixtures_dir):
    import fcntl
    import pty
    import struct
    import termios

    main_fd, child_fd = pty.openpty()
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "mapreduce.job", str(EXAMPLES / "record_count.py"),
                             "-f", str(FILTER_ALL), "-d", str(fixtures_dir / "converted"),
                             "-w", str(tmp_path / "w"), "-o", str(tmp_path / "o"), "-l", "-m", "2"],
                            stdin=child_fd, stdout=child_fd, stderr=child_fd)
    os.close(child_fd)
    seen = b""
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:   # the terminal closes when the job exits
            break
        if not chunk:
            break
        seen += chunk
    os.close(main_fd)
    assert proc.wait() == 0
    text = seen.decode("utf-8", "replace")
    assert "map:" in text and "/2 [" in text and "reduce:" in text
    assert "5 records from 2 files" in text


def test_corrupt_input_file_fails_the_job_naming_it(tmp_path, records):
    data = tmp_path / "data"
    written = write_layout(data, records[:20], records_per_file=5)
    victim = written[0]
    victim.write_bytes(victim.read_bytes()[:20])   # truncated zstd frame
    with pytest.raises(JobError, match=f"mapper . cannot read its input {victim}"):
        run(tmp_path, EXAMPLES / "record_count.py", data)


def test_every_frame_of_a_multi_frame_zstd_file_is_mapped(tmp_path, records):
    import zstandard

    data = tmp_path / "data"
    rel = "saved_session/Firefox/nightly/26.0a1/20131001004003.20131101.v2.log"
    target = data / f"{rel}.{'ab' * 16}.zst"
    target.parent.mkdir(parents=True)
    lines = [f"{r.doc_id}\t{json.dumps(r.payload)}\n".encode() for r in records[:30]]
    compressor = zstandard.ZstdCompressor(level=3)
    target.write_bytes(b"".join(compressor.compress(b"".join(lines[i:i + 7]))
                                for i in range(0, 30, 7)))
    _, out = run(tmp_path, EXAMPLES / "record_count.py", data)
    assert out == "total\t30\n"


def test_a_filter_whose_names_are_not_the_schemas_is_warned_about(tmp_path, fixtures_dir):
    bad = tmp_path / "filter.json"
    bad.write_text('{"dimensions": [{"field_name": "reason", "allowed_values": "*"},'
                   ' {"field_name": "appUpdateChannel", "allowed_values": "*"}]}')
    messages = []
    output = tmp_path / "o.txt"
    run_job(JobConfig(job_script=EXAMPLES / "os_distribution.py",
                      data_dir=fixtures_dir / "converted", work_dir=tmp_path / "w",
                      output=output, input_filter=bad, num_mappers=1), log=messages.append)
    assert any("input filter dimension 2 is 'appUpdateChannel', but the packaged schema's is "
               "'appName'" in m for m in messages)


# --- fixed costs: what a run does besides mapping ---------------------------------------------

def test_task_processes_start_without_importing_the_framework_again(tmp_path, fixtures_dir):
    """The fork server holds the framework, so a task imports only the job script's own needs.

    Each task used to import the local engine, tqdm (and importlib.metadata) for itself,
    about 0.1 s of CPU per task; this checks what a task process had imported before its
    script ran, and that the job's parent did not import tqdm with no bar to show.
    """
    job = write_job(tmp_path, """
        import os, sys
        LOADED = sorted(sys.modules)        # before anything of the map runs
        def map(key, dims, value, context):
            context.write(os.getpid(), "tqdm" in LOADED)
            context.write(os.getpid(), "mapreduce.local_engine" in LOADED)
        def reduce(key, values, context):
            context.write(key, ",".join(sorted({str(v) for v in values})))
    """)
    result, out = run(tmp_path, job, fixtures_dir / "converted", num_mappers=2)
    assert result.mappers == 2
    found = dict(line.split("\t") for line in out.splitlines())
    # Two mapper processes, each with the engine already loaded and without tqdm.
    assert len(found) == 2 and set(found.values()) == {"False,True"}
    check = subprocess.run([sys.executable, "-c", "import sys, mapreduce.job, mapreduce.cli; "
                            "print('tqdm' in sys.modules)"], capture_output=True, text=True,
                           cwd=REPO)
    assert check.stdout.strip() == "False", check.stderr


def test_result_times_each_phase(tmp_path, fixtures_dir):
    result, _ = run(tmp_path, EXAMPLES / "record_count.py", fixtures_dir / "converted")
    assert list(result.phases) == ["setup", "inputs", "map", "reduce", "output"]
    assert all(s >= 0 for s in result.phases.values())
    assert sum(result.phases.values()) <= result.seconds
    res = CliRunner().invoke(mapreduce_command, [
        str(EXAMPLES / "record_count.py"), "-f", str(FILTER_ALL), "-d",
        str(fixtures_dir / "converted"), "-w", str(tmp_path / "w2"), "-o", str(tmp_path / "o2"),
        "-l", "-m", "2", "-v"])
    assert res.exit_code == 0 and "phases: setup " in res.output and " reduce " in res.output
