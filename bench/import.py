#!/usr/bin/env python
"""Import speed: ``python -m importer`` against the original's method, on the embedded server.

The original (telemetry-server's ``mongodb/importer.py``) imported with one
process per CPU, each holding one ``MongoClient(w=0)``, one unacknowledged
insert of a whole file per call, the stdlib ``json`` parser and ``[dot]``
replacement in Python; here it stores the same documents as ours (``_id`` and
dimensions added) so both make the server do the same work per document.
Its time runs until the server holds every document (w=0 returns before
the server has written anything).  Ours is the
real command line, acknowledged writes, resumable bookkeeping and all.
Then each named pipeline is timed over the imported data.

    bench/import.py [--records 20000] [--sizes 5,30] [--memory] [--no-pipelines] [--layouts DIR]
        [--mongo-url URI]

The machine may be shared: run it once at a modest size, read the ratio
(measured in the same run), not the absolute figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bson  # noqa: E402
import pymongo  # noqa: E402

from aggregations.pipelines import run_pipeline  # noqa: E402
from converter.layout import find_layout_files, open_layout_file, read_layout_file  # noqa: E402
from converter.synthetic import make_records, write_layout  # noqa: E402
from importer.document import make_document  # noqa: E402
from importer.importer import ImportOptions  # noqa: E402
from importer.mongo import redact, start_embedded  # noqa: E402

DOTTED = ("slowSQL", "slowSQLStartup", "addonDetails", "addonHistograms")
DIMENSIONS = ImportOptions().dimension_names()  # the packaged schema's, as the importer uses


def _original_undot(value):
    if isinstance(value, dict):
        return {k.replace(".", "[dot]"): _original_undot(v) for k, v in value.items()}
    return value


_worker_client: pymongo.MongoClient | None = None


def _original_worker(url: str) -> None:
    """Each process opens one client and keeps it, as the original's workers did."""
    global _worker_client
    _worker_client = pymongo.MongoClient(url, w=0)


def _original_documents(path: str, dims: dict) -> list[dict]:
    """One file's documents, built the original's way: stdlib json, dots replaced in Python."""
    docs = []
    with open_layout_file(path) as f:
        for line in f:
            doc_id, _, text = line.decode("utf-8").rstrip("\n").partition("\t")
            doc = json.loads(text)
            for key in DOTTED:
                if key in doc:
                    doc[key] = _original_undot(doc[key])
            doc["_id"] = doc_id
            doc.update(dims)
            docs.append(doc)
    return docs


def _original_import_file(args):
    """One file, the original's way: one w=0 insert of the whole file."""
    database, path, dims = args
    assert _worker_client is not None
    docs = _original_documents(path, dims)
    if docs:
        _worker_client[database].payloads.insert_many(docs)
    return len(docs)


def client_cost(base: Path) -> tuple[float, float]:
    """Seconds one process spends making every document ready to send (BSON), each way.

    The server is left out: on the embedded server it dominates both
    methods alike, while against a real mongod this client-side work is
    what an importer process itself adds per document.
    """
    files = find_layout_files(base)
    start = time.perf_counter()
    for f in files:
        for doc in _original_documents(str(f.path), dict(zip(DIMENSIONS, f.dimensions))):
            bson.encode(doc)
    original = time.perf_counter() - start
    start = time.perf_counter()
    for f in files:
        meta = dict(zip(DIMENSIONS, f.dimensions), file=f.relpath)
        for _, doc_id, text in read_layout_file(f.path):
            bson.encode(make_document(doc_id, text, dict(meta)))
    return original, time.perf_counter() - start


def original_method(url: str, database: str, base: Path, expected: int) -> float:
    work = [
        (database, str(f.path), dict(zip(DIMENSIONS, f.dimensions))) for f in find_layout_files(base)
    ]
    client = pymongo.MongoClient(url)
    client.drop_database(database)
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(
        os.cpu_count(), initializer=_original_worker, initargs=(url,)
    ) as pool:
        sent = sum(pool.map(_original_import_file, work, chunksize=8))
    # w=0 returns at once: wait until the server really holds every document.
    deadline = time.perf_counter() + 600
    while (
        client[database].payloads.estimated_document_count() < expected
        and time.perf_counter() < deadline
    ):
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    held = client[database].payloads.count_documents({})
    client.close()
    if sent != expected or held != expected:
        print(f"  warning: original method sent {sent}, server holds {held} of {expected}")
    return elapsed


def our_method(url: str, database: str, base: Path, extra: list[str]) -> float:
    client = pymongo.MongoClient(url)
    client.drop_database(database)  # outside the clock, as for the original
    client.close()
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "importer",
            str(base),
            "-d",
            database,
            "--mongo-url",
            url,
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"python -m importer failed: {proc.stderr.strip()}")
    return elapsed


def server_cpu(pid: int | None) -> float | None:
    """CPU seconds the embedded server has used so far (Linux /proc), None if unknown.

    Both methods are limited by the one server process, so its CPU time per
    method says which one makes it do more work, whatever the wall clock.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_used(pid: int | None, before: float | None) -> str:
    after = server_cpu(pid)
    return f"  server CPU {after - before:.1f}s" if after is not None and before is not None else ""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=20000, help="records per payload size")
    parser.add_argument("--sizes", default="5,30", help="payload sizes in KB, comma separated")
    parser.add_argument(
        "--memory", action="store_true", help="server storage in memory instead of on disk"
    )
    parser.add_argument(
        "--no-pipelines", action="store_true", help="time the import only, not the pipelines"
    )
    parser.add_argument(
        "--mongo-url",
        help="a server of your own (a real mongod, say) instead of the embedded one; "
        "databases orig_N and ours_N are made and dropped there",
    )
    parser.add_argument(
        "--layouts",
        type=Path,
        help="keep the generated layouts in this directory and reuse them on the next run",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        tmp = Path(tmp)
        if args.mongo_url:
            server, url, pid = None, args.mongo_url, None
            print(f"server {redact(url)} (given), {os.cpu_count()} CPUs")
        else:
            server = start_embedded(
                tmp / "server",
                storage_path=":memory:" if args.memory else None,
                detach=False,
                pid_file=False,
            )
            url, pid = server.url, server.pid
            storage = "memory" if args.memory else "disk"
            print(f"embedded server {url} ({storage}), {os.cpu_count()} CPUs")
        try:
            for kb in (int(s) for s in args.sizes.split(",")):
                base = (args.layouts or tmp) / f"layout_{kb}k_{args.records}"
                if not base.is_dir():  # written aside first: a half-written one is never reused
                    partial = base.with_name(base.name + ".partial")
                    shutil.rmtree(partial, ignore_errors=True)
                    write_layout(partial, make_records(args.records, seed=kb, payload_kb=kb))
                    partial.rename(base)
                files = find_layout_files(base)
                mb = sum(f.size for f in files) / 2**20
                print(
                    f"\n{args.records} records of ~{kb} KB in {len(files)} files "
                    f"({mb:.1f} MB compressed)"
                )
                cpu = server_cpu(pid)
                base_s = original_method(url, f"orig_{kb}", base, args.records)
                used = cpu_used(pid, cpu)
                print(
                    f"  {'original (w=0, 1 proc/CPU, whole file)':38s} "
                    f"{args.records / base_s:9,.0f} docs/s  "
                    f"({base_s:.1f}s)  baseline{used}"
                )
                for label, extra in (
                    ("python -m importer (w=1, indexes)", []),
                    ("python -m importer (w=1, --no-indexes)", ["--no-indexes"]),
                ):
                    cpu = server_cpu(pid)
                    ours_s = our_method(url, f"ours_{kb}", base, extra)
                    used = cpu_used(pid, cpu)
                    print(
                        f"  {label:38s} {args.records / ours_s:9,.0f} docs/s  ({ours_s:.1f}s)  "
                        f"{base_s / ours_s:.2f}x{used}"
                    )
                original_client, ours_client = client_cost(base)
                print(
                    f"  client side only, 1 process: "
                    f"original {original_client / args.records * 1e3:.2f} ms/doc, "
                    f"ours {ours_client / args.records * 1e3:.2f} ms/doc, "
                    f"{original_client / ours_client:.2f}x"
                )
                client = pymongo.MongoClient(url)
                coll = client[f"ours_{kb}"].payloads
                pipelines = (
                    ("os_distribution", {}),
                    ("submissions", {}),
                    ("histogram", {"name": "GC_MS"}),
                    ("simple_measurement", {"name": "firstPaint"}),
                )
                for name, opts in () if args.no_pipelines else pipelines:
                    start = time.perf_counter()
                    rows = run_pipeline(coll, name, **opts)
                    seconds = time.perf_counter() - start
                    print(f"  pipeline {name:20s} {seconds:6.2f}s  ({len(rows)} rows)")
                client.drop_database(f"orig_{kb}")
                client.drop_database(f"ours_{kb}")
                client.close()
        finally:
            if server:
                server.stop()


if __name__ == "__main__":
    main()
