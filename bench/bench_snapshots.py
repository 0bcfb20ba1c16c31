"""What snapshots cost, run by hand (issue 25's targets: 1M items, create <= 3 s, a second
snapshot after 1% churn <= 1 s and <= 5% of the first one's storage, diff <= 2 s, RSS <= 200 MB).

    python bench/bench_snapshots.py --objects 1000000
    python bench/bench_snapshots.py --objects 1000000 --store postgresql

On a fresh catalog: a first sync of ``bench://N`` (``syncd sync``, its own process), then in
this process ``snapshot create v1`` (timed), one round of churn (``SYNCD_BENCH_ROUND=1``: 1%
changed, 1% deleted, 1% added; the re-sync timed, as it now keeps what it replaces), ``snapshot
create v2``, ``diff v1 v2``, ``diff v1`` (against live), and a full read of v1's items. Space:
the snapshot rows (constant) and the undo entries (``item_undo``) against the items table
(sqlite: its pages from ``dbstat``; PostgreSQL: ``pg_total_relation_size``). Peak RSS of this
process and of the syncs. ``--store postgresql`` uses the tests' throwaway server (tests/pg.py).
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

from syncd.store import snapshots  # noqa: E402
from syncd.store.catalog import Catalog  # noqa: E402


def sync(db: str, source: str | None, env: dict[str, str] | None = None) -> tuple[float, float]:
    """``syncd sync`` in its own process: (wall seconds, peak RSS MiB)."""
    args = ["sync", *([source] if source else []), "--dataset", "ds", "--db", db]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd.cli", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"sync failed: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    return wall, usage.ru_maxrss / 1024


def table_bytes(catalog: Catalog, table: str) -> int | None:
    """The bytes ``table`` (with its indexes) takes, where the store can say."""
    db = catalog.db
    if db.dialect == "postgresql":
        return int(db.execute(f"SELECT pg_total_relation_size('{table}')").fetchone()[0])
    try:  # sqlite: a WITHOUT ROWID table is its primary-key b-tree
        row = db.execute("SELECT sum(pgsize) FROM dbstat WHERE name = ?", [table]).fetchone()
    except Exception:
        return None  # sqlite built without dbstat
    return int(row[0] or 0)


def check_cost(url: str) -> None:
    """The write path's cost for a dataset without snapshots (another one has a snapshot):
    the check :func:`syncd.store.snapshots.capture` makes per batch, against writing a whole
    1000-row batch (upsert and change log), in this process."""
    from providers.config import DriverConfig
    from syncd.reconcile.filters import Filters
    from syncd.store.db import transaction

    stamp = "2026-12-07T00:00:00.000000Z"
    catalog = Catalog.open(url)
    ds = catalog.create_dataset(
        "plain", "file:///x/", DriverConfig(type="local", bucket="/x"), Filters()
    )
    other = catalog.create_dataset(
        "other", "file:///y/", DriverConfig(type="local", bucket="/y"), Filters()
    )
    snapshots.create(catalog, other, "v1")

    def rows(prefix: str) -> list[tuple]:
        return [
            (
                ds.id,
                f"{prefix}{i:06d}",
                "/k",
                "file:///x/k",
                1,
                "e",
                None,
                stamp,
                None,
                stamp,
                stamp,
                "{}",
                None,
            )
            for i in range(1000)
        ]

    batch = rows("k")
    with transaction(catalog.db):
        t0 = time.perf_counter()
        for _ in range(200):
            snapshots.capture(catalog.db, batch)
        check = (time.perf_counter() - t0) / 200
    t0 = time.perf_counter()
    for b in range(20):
        with transaction(catalog.db):
            catalog.write_rows(ds.id, rows(f"b{b:03d}"), source="listing", kinds=["created"] * 1000)
    write = (time.perf_counter() - t0) / 20
    catalog.close()
    print(
        f"  snapshot check per 1000-row batch (dataset without snapshots): {check * 1e6:.0f} us,"
        f" {check / write:.2%} of writing the batch ({write * 1e3:.1f} ms)"
    )


def timed(what: str, work: object) -> object:
    t0 = time.perf_counter()
    out = work()  # type: ignore[operator]
    print(f"  {what:<44} {time.perf_counter() - t0:7.3f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    opts = parser.parse_args()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-snapshots-") as tmp:
        server = None
        if opts.store == "postgresql":
            from tests import pg

            server = pg.start_server()
            db = server.create_database("bench_snapshots")
            cost_db = server.create_database("bench_snapshot_check")
        else:
            db = str(Path(tmp) / "c.db")
            cost_db = str(Path(tmp) / "cost.db")
        try:
            print(f"{opts.objects:,} objects, {opts.store}; load average {load_start:.2f}")
            check_cost(cost_db)
            wall, rss = sync(db, f"bench://{opts.objects}")
            print(f"  {'first sync (no snapshot)':<44} {wall:7.3f} s   (RSS {rss:.0f} MiB)")
            catalog = Catalog.open(db)
            ds = catalog.get_dataset("ds")
            v1 = timed("snapshot create v1", lambda: snapshots.create(catalog, ds, "v1"))
            wall, rss = sync(db, None, {"SYNCD_BENCH_ROUND": "1"})
            print(
                f"  {'re-sync after 1% churn (keeps undo)':<44} {wall:7.3f} s   (RSS {rss:.0f} MiB)"
            )
            v2 = timed(
                "snapshot create v2 (after churn)", lambda: snapshots.create(catalog, ds, "v2")
            )
            d12 = timed(
                "diff v1 v2",
                lambda: snapshots.diff_summary(snapshots.differences(catalog, ds, "v1", "v2")),
            )
            timed(
                "diff v1 live",
                lambda: snapshots.diff_summary(snapshots.differences(catalog, ds, "v1")),
            )
            t0 = time.perf_counter()
            n = sum(1 for _ in catalog.snapshot_items("ds", "v1"))
            took = time.perf_counter() - t0
            print(f"  {'read all of v1':<44} {took:7.3f} s   ({n / took:,.0f} items/s)")
            t0 = time.perf_counter()
            m = sum(1 for _ in catalog.iter_items(ds.id))
            took = time.perf_counter() - t0
            print(
                f"  {'read all live items (for comparison)':<44} {took:7.3f} s   ({m / took:,.0f} items/s)"
            )
            print(
                f"  v1: {v1.items:,} items, v2: {v2.items:,} items;"  # type: ignore[attr-defined]
                f" diff v1 v2: +{d12['added']['count']:,} -{d12['removed']['count']:,}"  # type: ignore[index]
                f" ~{d12['changed']['count']:,}"  # type: ignore[index]
            )
            undo = int(catalog.db.execute("SELECT count(*) FROM item_undo").fetchone()[0])
            items_b, undo_b = table_bytes(catalog, "items"), table_bytes(catalog, "item_undo")
            print(f"  undo entries kept: {undo:,} ({undo / max(v1.items, 1):.2%} of v1's items)")  # type: ignore[attr-defined]
            if items_b is not None and undo_b is not None:
                print(
                    f"  space: items {items_b / 2**20:,.1f} MiB; undo entries {undo_b / 2**20:,.2f} MiB"
                    f" ({undo_b / items_b:.2%} of a full copy); snapshot rows: one each"
                )
            catalog.close()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"  peak RSS of this process (create, diff, reads): {peak:.0f} MiB")
            print(f"  load average at the end: {os.getloadavg()[0]:.2f}")
        finally:
            if server is not None:
                from syncd.store import pg as pg_store

                pg_store.close_pools()
                server.stop()


if __name__ == "__main__":
    main()
