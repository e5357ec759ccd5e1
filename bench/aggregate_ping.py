#!/usr/bin/env python
"""CPU per ping of the aggregates model: ``Aggregate.add_ping`` on converted fleet pings.

Simulates ``--pings`` fleet pings (``fleet/``, seed 1), converts them
(``telemetry process`` with the fleet's revisions), reads the layout's
records once into memory, then measures in this one process, in CPU time
(``time.process_time``, so other load on the machine matters less):

- baseline: ``orjson.loads`` of every record (what the importer pays anyway);
- add_ping: ``make_document`` + ``Aggregate.add_ping`` of every record, the
  importer hook's path (one parse, then the model);
- merge: summing the per-file aggregates into one, as the sink does, and
  ``sorted_rows`` of every document (the write path's Python side).

Each is run ``--repeat`` times and the best is kept.  It prints pings/s and
the ratio to the baseline; compare ratios between versions of the code, e.g.

    bench/aggregate_ping.py --pings 2000 --keep /tmp/agg-ping
    bench/aggregate_ping.py --pings 2000 --keep /tmp/agg-ping --module OLD.py

(``--module`` loads ``aggregations.aggregates`` from another file, such as
``git show main:aggregations/aggregates.py > OLD.py``, to measure old code
against the same records in the same way.)
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from aggregates import make_layout  # noqa: E402  (bench/aggregates.py: the same simulated layout)


def load_records(layout: Path) -> list[tuple[str, dict, str, bytes]]:
    """(relpath, dimensions, doc id, JSON bytes) of every record in the layout."""
    from converter.layout import find_layout_files, read_layout_file
    from converter.schema import Schema
    from importer.importer import DEFAULT_SCHEMA

    names = Schema.load(DEFAULT_SCHEMA).names
    out = []
    for lf in find_layout_files(layout):
        dims = dict(zip(names, lf.dimensions))
        for _, doc_id, text in read_layout_file(lf.path):
            out.append((lf.relpath, dims, doc_id,
                        text.encode() if isinstance(text, str) else text))
    return out


def load_model(path: Path | None):
    if path is None:
        import aggregations.aggregates as module
        return module
    spec = importlib.util.spec_from_file_location("aggregates_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def best(repeat: int, fn) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.process_time()
        result = fn()
        times.append(time.process_time() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the simulated layout here")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--module", type=Path,
                        help="load the aggregates model from this file instead")
    parser.add_argument("--profile", action="store_true", help="cProfile one add_ping pass")
    opts = parser.parse_args()

    from converter.revisions import RevisionCache
    from importer.document import make_document

    tmp = Path(tempfile.mkdtemp(prefix="bench-aggregate-ping-"))
    try:
        layout, cache = make_layout(opts.pings, opts.keep or tmp / "data")
        records = load_records(layout)
        model = load_model(opts.module)
        definitions = model.Definitions(RevisionCache(str(cache), None))

        def parse_only():
            for _, _, _, text in records:
                orjson.loads(text)

        def aggregate():
            files: dict[str, object] = {}
            for relpath, dims, doc_id, text in records:
                agg = files.get(relpath)
                if agg is None:
                    agg = files[relpath] = model.Aggregate()
                agg.add_ping(make_document(doc_id, text, {}), dims, definitions)
            for agg in files.values():
                agg.data  # read, as the importer's hook does per file: the staged pings go to their cells
            return files

        aggregate()  # warm the definitions cache, as a long-running importer has
        if opts.profile:
            import cProfile
            import pstats
            prof = cProfile.Profile()
            prof.runcall(aggregate)
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)

        def merge_all(files=aggregate()):
            from aggregations.store import sorted_rows
            total = model.Aggregate()
            for agg in files.values():
                total.merge(agg)
            for rows in total.data.values():
                sorted_rows(rows)
            return total

        n = len(records)
        base, _ = best(opts.repeat, parse_only)
        spent, files = best(opts.repeat, aggregate)
        merged, total = best(opts.repeat, merge_all)
        print(f"{n} converted fleet pings, {len(files)} files, "
              f"{len(total.data)} aggregate documents; model {opts.module or 'aggregations'}")
        print(f"  baseline orjson.loads:        {n / base:9.0f} pings/s "
              f"({base / n * 1e6:7.1f} us CPU/ping)")
        print(f"  parse + add_ping:             {n / spent:9.0f} pings/s "
              f"({spent / n * 1e6:7.1f} us CPU/ping)  = {spent / base:.2f}x baseline")
        print(f"  merge files + sorted rows:    {n / merged:9.0f} pings/s "
              f"({merged / n * 1e6:7.1f} us CPU/ping)  = {merged / base:.2f}x baseline")
        print(f"  stats: {dict(sorted(total.stats.items()))}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
