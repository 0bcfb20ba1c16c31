"""What item queries cost, run by hand (issue 23's targets).

    python bench/bench_query.py --objects 1000000
    python bench/bench_query.py --objects 1000000 --store postgresql
    python bench/bench_query.py --first-sync 2471c9b --objects 1000000 [--store postgresql]

The default mode builds a dataset of N items straight into a fresh catalog (the rows a sync
writes, in batches through ``Catalog.write_rows``): keys ``d<i // 1000>/obj-<i>.<ext>`` with
five extensions and their content types, sizes spread over 0-5 MB, modification times over a
year; then 10% of the items get the user's metadata (``site``: one of 20 names, ``camera``: a
number unique to the item) and a tag, and another 10% provider metadata
(``metadata.provider.team``), written with SQL UPDATE as an edit and a HEAD would. It then times
the queries of the targets, each ``--repeat`` times after one warm-up run (the median and the
slowest), in this process through the Catalog methods the API, the CLI and Python call:

* the first page (100 items) of a content type + size range query (target <= 50 ms);
* metadata equality, common and rare values, user and provider sections (target <= 100 ms);
* ``count`` with a filter (target <= 500 ms).

``--first-sync BASE`` instead times only first syncs of ``bench://N`` (every object new) on
this checkout and on the commit BASE (a temporary git worktree), interleaved, ``--repeat``
times each, each in a fresh process on a fresh catalog: what the new indexes cost a sync.
``--store postgresql`` uses the tests' throwaway server (tests/pg.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from providers.config import DriverConfig  # noqa: E402
from syncd.query import parse_where  # noqa: E402
from syncd.reconcile.filters import Filters  # noqa: E402
from syncd.store.catalog import Catalog  # noqa: E402
from syncd.store.db import transaction  # noqa: E402

TYPES = [
    ("jpg", "image/jpeg"),
    ("png", "image/png"),
    ("txt", "text/plain"),
    ("mp4", "video/mp4"),
    ("json", "application/json"),
]
SITES = [f"site-{n:02d}" for n in range(19)] + ["berlin"]

#: (label, where expressions, sort, order, target ms) of the first-page queries
PAGES: list[tuple[str, list[str], str, str, float | None]] = [
    ("type + size range, by key", ["content_type=image/jpeg", "size>=1MB", "size<3MB"], "key", "asc", 50),
    ("image/* + size range, by key", ["content_type=image/*", "size>4MB"], "key", "asc", 50),
    ("type + size range, by size desc", ["content_type=image/jpeg", "size>=1MB", "size<3MB"], "size", "desc", None),
    ("user metadata = common value", ["metadata.user.site=berlin"], "key", "asc", 100),
    ("user metadata = rare value (1 item)", ["metadata.user.camera={rare}"], "key", "asc", 100),
    ("provider metadata = value", ["metadata.provider.team=vision"], "key", "asc", 100),
    ("tag", ["tags~review"], "key", "asc", 100),
    ("glob on the key", ["key={folder}/*.png"], "key", "asc", 50),
    ("rare size (0.02%), by key", ["size>4999000"], "key", "asc", None),
    ("no filter, newest first (mtime desc)", [], "mtime", "desc", None),
    ("no filter, largest first (size desc)", [], "size", "desc", None),
]  # fmt: skip
COUNTS: list[tuple[str, list[str]]] = [
    ("count type + size range", ["content_type=image/jpeg", "size>=1MB", "size<3MB"]),
    ("count image/*", ["content_type=image/*"]),
    ("count user metadata = value", ["metadata.user.site=berlin"]),
    ("count tag", ["tags~review"]),
    ("count mtime range", ["mtime>=2026-03-01", "mtime<2026-04-01"]),
]


def build(catalog: Catalog, n: int) -> int:
    """A dataset of ``n`` items as described in the module docstring; its id."""
    ds = catalog.create_dataset(
        "bench", "s3://bench/", DriverConfig(type="s3", bucket="bench"), Filters()
    ).id
    stamp = "2026-06-01T00:00:00.000000Z"
    batch = 20_000
    for a in range(0, n, batch):
        rows = []
        for i in range(a, min(a + batch, n)):
            ext, ctype = TYPES[i % len(TYPES)]
            key = f"d{i // 1000:05d}/obj-{i:09d}.{ext}"
            size = (i * 7919) % 5_000_000
            second = (i * 7907) % (365 * 86400)
            mtime = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1767225600 + second))
            rows.append(
                (ds, key, "/" + key, f"s3://bench/{key}", size, f"e{i}", ctype, mtime, None,
                 stamp, stamp, "{}", None)
            )  # fmt: skip
        with transaction(catalog.db):
            catalog.write_rows(ds, rows)
    cast = "CAST(? AS JSONB)" if catalog.db.dialect == "postgresql" else "?"
    for a in range(0, n, batch):
        users, providers = [], []
        for i in range(a, min(a + batch, n)):
            ext, _ = TYPES[i % len(TYPES)]
            key = f"d{i // 1000:05d}/obj-{i:09d}.{ext}"
            if i % 10 == 0:
                meta = {"site": SITES[(i // 10) % len(SITES)], "camera": i}
                users.append(
                    (json.dumps(meta), json.dumps(["review"] if i % 20 == 0 else ["ok"]), ds, key)
                )
            elif i % 10 == 5:
                team = "vision" if i % 100 == 5 else f"team-{i % 7}"
                providers.append((json.dumps({"provider": {"team": team}}), ds, key))
        with transaction(catalog.db):
            catalog.db.executemany(
                f"UPDATE items SET user_metadata = {cast}, tags = {cast}"
                " WHERE dataset_id = ? AND key = ?",
                users,
            )
            catalog.db.executemany(
                f"UPDATE items SET metadata = {cast} WHERE dataset_id = ? AND key = ?", providers
            )
    if catalog.db.dialect == "postgresql":
        catalog.db.execute("ANALYZE items")
    else:
        catalog.db.execute("ANALYZE")
    return ds


def timed(fn: Any, repeat: int) -> tuple[float, float, Any]:
    """(median ms, slowest ms, last result) of ``repeat`` calls after one warm-up."""
    result = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times), result


def queries(url: str, n: int, repeat: int) -> None:
    catalog = Catalog.open(url)
    t0 = time.perf_counter()
    ds = build(catalog, n)
    print(f"built {n:,} items in {time.perf_counter() - t0:.0f} s")
    print(f"{'query':<40} {'median':>9} {'slowest':>9} {'target':>8}  result")
    fill = {"rare": n // 2 // 10 * 10, "folder": f"d{n // 2000:05d}"}
    for label, where, sort, order, target in PAGES:
        q = parse_where([w.format(**fill) for w in where], sort=sort, order=order)
        med, worst, (items, _) = timed(lambda q=q: catalog.query_page(ds, q, limit=100), repeat)
        flag = "" if target is None or worst <= target else "  OVER"
        goal = "-" if target is None else f"{target:.0f}ms"
        print(f"{label:<40} {med:7.1f}ms {worst:7.1f}ms {goal:>8}  {len(items)} items{flag}")
    for label, where in COUNTS:
        q = parse_where(where)
        med, worst, (found, _) = timed(lambda q=q: catalog.count_query(ds, q), repeat)
        flag = "" if worst <= 500 else "  OVER"
        print(f"{label:<40} {med:7.1f}ms {worst:7.1f}ms {500:6.0f}ms  {found:,} items{flag}")
    q = parse_where(["content_type=image/*"])
    med, worst, found = timed(lambda: catalog.summarize(ds, q, by="folder"), 1)
    print(
        f"{'summary by folder, image/*':<40} {med:7.1f}ms {worst:7.1f}ms {'-':>8}  {len(found['groups'])} groups"
    )
    med, worst, found = timed(lambda: catalog.summarize(ds, parse_where([]), by="content_type"), 1)
    print(
        f"{'summary by content type':<40} {med:7.1f}ms {worst:7.1f}ms {'-':>8}  {len(found['groups'])} groups"
    )
    catalog.close()


def first_syncs(store: str, base_commit: str, n: int, repeat: int, pg: Any) -> None:
    import bench_changes

    times: dict[str, list[float]] = {"base": [], "head": []}
    k = 0
    with tempfile.TemporaryDirectory(prefix="bench-query-") as tmp_name:
        tmp = Path(tmp_name)
        base = bench_changes.worktree(base_commit, tmp)
        trees = {"base": base, "head": ROOT}
        try:
            for _ in range(repeat):
                for label, tree in trees.items():
                    k += 1
                    db = bench_changes.catalog_url(store, tmp, k, pg)
                    args = ["sync", f"bench://{n}", "--dataset", "b", "--db", db, "--ranges", "1"]
                    wall, _ = bench_changes.run(tree, args)
                    times[label].append(wall)
                    print(f"  {label}: {wall:.1f} s (load {os.getloadavg()[0]:.2f})", flush=True)
        finally:
            import subprocess

            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)])
    b, h = statistics.median(times["base"]), statistics.median(times["head"])
    print(
        f"first sync of {n:,} objects, {store}, medians of {repeat}: base {base_commit} {b:.1f} s,"
        f" head {h:.1f} s, ratio {h / b:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--first-sync", metavar="BASE", help="time first syncs against BASE")
    opts = parser.parse_args()
    pg = None
    if opts.store == "postgresql":
        from tests import pg as throwaway

        pg = throwaway.start_server()
    print(f"load before: {Path('/proc/loadavg').read_text().strip()}")
    try:
        if opts.first_sync:
            first_syncs(opts.store, opts.first_sync, opts.objects, opts.repeat, pg)
        else:
            with tempfile.TemporaryDirectory(prefix="bench-query-") as tmp:
                url = str(Path(tmp) / "q.db") if pg is None else pg.create_database("bench_q")
                queries(url, opts.objects, opts.repeat)
    finally:
        if pg is not None:
            pg.stop()
    print(f"load after: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
