"""What ``syncd items export`` costs, run by hand (issue 25's target: Parquet >= 500k rows/s,
RSS <= 200 MB).

    python bench/bench_export.py --objects 1000000 [--format parquet] [--snapshot]
        [--db PATH] [--repeat 3]

Builds the dataset of ``bench/bench_query.py`` (N items, 10% with user metadata and tags, 10%
with provider metadata) in a fresh sqlite catalog (or in ``--db PATH``, kept, and reused when
it holds the N items already), then exports it in a fresh process (so the peak RSS is the
export's alone) to a file, through the command (``python -m syncd.cli items export``), and
prints rows/s, the child's CPU seconds and peak RSS. ``--snapshot`` takes a snapshot first and
exports that (the snapshot's items are read through the undo log).

The floor: a fresh process that only reads the same columns of the same rows in key order
(one ``SELECT``, ``fetchmany`` of a row group at a time), what any exporter through Python's
sqlite3 pays before it writes a byte. Since the Parquet export of a live dataset reads
through the ADBC SQLite driver instead (no Python object per value,
``syncd/store/arrow_read.py``), it can beat that floor. The machine may be shared: the ratio export / floor
(wall and CPU, each run next to its floor, medians of ``--repeat``) says more than rows/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_query import build  # noqa: E402

from syncd.export import ROW_GROUP, STORED  # noqa: E402
from syncd.store.catalog import Catalog  # noqa: E402

FLOOR = f"""
import sqlite3, sys
conn = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
ds = conn.execute("SELECT id FROM datasets WHERE name = 'bench'").fetchone()[0]
cur = conn.execute("SELECT {", ".join(STORED)} FROM items WHERE dataset_id = ? ORDER BY key", [ds])
while cur.fetchmany({ROW_GROUP}):
    pass
"""


def child(args: list[str]) -> tuple[float, float, float]:
    """Run ``python ARGS`` (this checkout first on the path): its wall seconds, CPU seconds
    (user + system) and peak RSS in MB (its own, from wait4)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status):
        sys.exit(err)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def ready(db: str, n: int) -> bool:
    """Whether ``db`` holds the bench dataset of ``n`` items already."""
    if not os.path.exists(db):
        return False
    catalog = Catalog.open(db)
    try:
        row = catalog.db.execute(
            "SELECT count(*) FROM items i JOIN datasets d ON d.id = i.dataset_id"
            " WHERE d.name = 'bench'"
        ).fetchone()
        return bool(row and row[0] == n)
    except Exception:
        return False
    finally:
        catalog.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--format", default="parquet", choices=["jsonl", "csv", "parquet"])
    parser.add_argument("--snapshot", action="store_true")
    parser.add_argument("--db", help="a catalog file to build in (kept) or reuse")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or os.path.join(tmp, "c.db")
        if not ready(db, args.objects):
            catalog = Catalog.open(db)
            started = time.monotonic()
            build(catalog, args.objects)
            catalog.close()
            print(f"built {args.objects:,} items in {time.monotonic() - started:.1f}s")
        snap: list[str] = []
        if args.snapshot:
            from syncd.store import snapshots

            catalog = Catalog.open(db)
            try:
                dataset = catalog.get_dataset("bench")
                if not any(s.tag == "b1" for s in snapshots.list_snapshots(catalog, dataset)):
                    snapshots.create(catalog, dataset, "b1")
            finally:
                catalog.close()
            snap = ["--snapshot", "b1"]
        out = os.path.join(tmp, f"m.{args.format}")
        export = ["-m", "syncd.cli", "items", "export", "--dataset", "bench", "--db", db,
                  "--format", args.format, "-o", out, *snap]  # fmt: skip
        runs, floors = [], []
        for _ in range(args.repeat):
            runs.append(child(export))
            floors.append(child(["-c", FLOOR, db]))
        wall, cpu = (statistics.median(r[k] for r in runs) for k in range(2))
        fwall, fcpu, frss = (statistics.median(r[k] for r in floors) for k in range(3))
        n = args.objects
        print(
            f"export {args.format}{' of a snapshot' if snap else ''}: {n:,} rows, "
            f"median of {args.repeat} (process start included): {wall:.2f}s = "
            f"{n / wall:,.0f} rows/s wall, {cpu:.2f}s CPU = {n / cpu:,.0f} rows/CPU-s, "
            f"{os.path.getsize(out) / 1e6:,.1f} MB, peak RSS {max(r[2] for r in runs):,.0f} MB"
        )
        print(
            f"floor (bare SELECT of the same columns): {fwall:.2f}s = {n / fwall:,.0f} rows/s "
            f"wall, {fcpu:.2f}s CPU = {n / fcpu:,.0f} rows/CPU-s, peak RSS {frss:,.0f} MB"
        )
        print(
            f"export / floor: wall {wall / fwall:.2f}x, CPU {cpu / fcpu:.2f}x; "
            f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
        )


if __name__ == "__main__":
    main()
