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
    assert result.records_out == 24 and result.rejected == 0
    assert result.imported == 24
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
