"""The whole pipeline as ./scripts/demo runs it: receive, convert, import, aggregate, replay."""

from collections import Counter

import orjson

from converter.layout import find_layout_files, read_layout_file
from telemetry.demo import run_demo


def test_demo_runs_the_pipeline_end_to_end(tmp_path):
    lines = []
    result = run_demo(tmp_path / "demo", records=24, workers=2, echo=lines.append)

    assert result.posted == result.accepted == 24
    assert result.raw.records == 24 and result.raw.skipped_bytes == 0
    # Only the fleet's malformed-on-purpose submissions are rejected.
    assert result.records_out == 24 - result.malformed and result.rejected == result.malformed
    assert result.imported == 24 - result.malformed
    assert result.replayed_same is True

    # The aggregates agree with the published layout read directly.
    os_counts = Counter()
    gc_counts = Counter()
    for f in find_layout_files(tmp_path / "demo" / "layout", include_plain=False):
        for _, _, text in read_layout_file(f.path):
            doc = orjson.loads(text)
            os_counts[doc["info"]["OS"]] += 1
            gc_counts[f.dimensions[2]] += "GC_MS" in doc["histograms"]
    assert {r["os"]: r["count"] for r in result.os_rows} == dict(os_counts)
    assert {r["appUpdateChannel"]: r["count"] for r in result.histogram_rows} == {
        k: v for k, v in gc_counts.items() if v}
    assert any("GC_MS summed per channel" in line for line in lines)
    assert any(line.strip().startswith("effect regression: GC_MS x1.3 on nightly") for line in lines)
    assert {r["appBuildID"] for r in result.build_rows} <= {
        d for d in (f.dimensions[4] for f in find_layout_files(tmp_path / "demo" / "layout",
                                                               include_plain=False)
                    if f.dimensions[2] == "nightly")}


def test_interpreter_search_prints_no_pyenv_noise(tmp_path):
    """A pyenv shim for a Python that is not installed must not reach a newcomer's screen."""
    import hashlib
    import os
    import shutil
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    (tmp_path / "scripts").mkdir()
    shutil.copy(repo / "scripts" / "_venv.sh", tmp_path / "scripts" / "_venv.sh")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    stamp = hashlib.sha1((tmp_path / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(shutil.which("python3") or "/usr/bin/python3")
    (tmp_path / ".venv" / f".installed-{stamp}").touch()
    shims = tmp_path / "shims"
    shims.mkdir()
    for name in ("python3.13", "python3.12"):
        shim = shims / name
        shim.write_text(f"#!/bin/sh\necho 'pyenv: {name}: command not found' >&2\nexit 127\n")
        shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{shims}:{os.environ['PATH']}")
    env.pop("PYTHON", None)
    done = subprocess.run(["bash", "-c", f"source {tmp_path}/scripts/_venv.sh && echo PY=$PY"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith("PY=python3")


def test_demo_refuses_a_directory_it_did_not_make(tmp_path):
    import pytest

    from telemetry.demo import DemoError, prepare_workdir

    foreign = tmp_path / "p"
    foreign.mkdir()
    (foreign / "f").write_text("x")
    with pytest.raises(DemoError, match="not empty and was not made by the demo"):
        run_demo(foreign, records=5, echo=lambda line: None)
    assert (foreign / "f").read_text() == "x"

    # A directory the demo made is emptied on the next run; an empty one is taken.
    ours = tmp_path / "ours"
    prepare_workdir(ours)
    (ours / "old-output").mkdir()
    (ours / "old-output" / "x").write_text("stale")
    prepare_workdir(ours)
    assert sorted(p.name for p in ours.iterdir()) == [".telemetry-demo"]
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_workdir(empty)
    assert (empty / ".telemetry-demo").is_file()


def test_demo_command_says_why_it_refuses(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from telemetry.demo import demo

    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text("x")
    result = CliRunner().invoke(demo, ["--workdir", ".", "--records", "5"])
    assert result.exit_code == 1
    assert "not empty and was not made by the demo" in result.output
    assert (tmp_path / "f").read_text() == "x"


def test_demo_serve_runs_the_live_pipeline_with_traffic(tmp_path, mongo_url):
    import subprocess
    import sys

    import pymongo

    r = subprocess.run([sys.executable, "-m", "telemetry.demo", "--serve", "--workdir",
                        str(tmp_path / "demo"), "--rate", "20", "--seconds", "6",
                        "--mongo-url", mongo_url],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "posting 20 simulated pings/s" in r.stdout
    assert "converter" in r.stdout and "end-to-end lag" in r.stdout
    acked = int(r.stdout.split("stopping: ", 1)[1].split(" pings", 1)[0])
    assert acked > 0
    with pymongo.MongoClient(mongo_url) as client:
        assert client["telemetry"]["payloads"].count_documents({}) == acked
        client.drop_database("telemetry")
