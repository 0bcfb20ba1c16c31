"""What ``syncd items export`` costs, run by hand (issue 25's target: Parquet >= 500k rows/s,
RSS <= 200 MB).

    python bench/bench_export.py --objects 1000000 [--format parquet] [--snapshot]

Builds the dataset of ``bench/bench_query.py`` (N items, 10% with user metadata and tags, 10%
with provider metadata) in a fresh sqlite catalog, then exports it in a fresh process (so the
peak RSS is the export's alone) to a file, through the command (``python -m syncd.cli items
export``), and prints rows/s and the child's peak RSS (``ru_maxrss``). ``--snapshot`` takes a
snapshot first and exports that (the snapshot's items are read through the undo log).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_query import build  # noqa: E402

from syncd.store.catalog import Catalog  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--format", default="parquet", choices=["jsonl", "csv", "parquet"])
    parser.add_argument("--snapshot", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "c.db")
        catalog = Catalog.open(db)
        started = time.monotonic()
        build(catalog, args.objects)
        snap: list[str] = []
        if args.snapshot:
            from syncd.store import snapshots

            snapshots.create(catalog, catalog.get_dataset("bench"), "b1")
            snap = ["--snapshot", "b1"]
        catalog.close()
        print(f"built {args.objects:,} items in {time.monotonic() - started:.1f}s")
        out = os.path.join(tmp, f"m.{args.format}")
        started = time.monotonic()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        proc = subprocess.run(
            [sys.executable, "-m", "syncd.cli", "items", "export", "--dataset", "bench",
             "--db", db, "--format", args.format, "-o", out, *snap],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
        )  # fmt: skip
        seconds = time.monotonic() - started
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if proc.returncode:
            sys.exit(proc.stderr)
        size = os.path.getsize(out)
        print(
            f"export {args.format}{' of a snapshot' if snap else ''}: {args.objects:,} rows in "
            f"{seconds:.2f}s = {args.objects / seconds:,.0f} rows/s (process start included), "
            f"{size / 1e6:,.1f} MB, peak RSS {max(rss, before) / 1024:,.0f} MB"
        )


if __name__ == "__main__":
    main()
