"""Sync throughput and memory, run by hand: prints figures, asserts nothing.

    python bench/bench_sync.py --objects 100000            # local folder
    python bench/bench_sync.py --objects 20000 --s3        # moto server on loopback

For each size it runs an initial sync (all creates), an idle re-sync (all unchanged) and a
re-sync after deleting 1% of the objects, and prints objects/s and the process's peak RSS.
With ``--trace-memory`` it also prints each sync's Python heap peak (tracemalloc, which slows
Python down 2-4x, so throughput figures from such a run are not comparable). Constant memory
shows as a peak that does not grow with ``--objects``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from providers import DriverConfig, open_driver
from syncd.reconcile.filters import Filters
from syncd.reconcile.source import canonical
from syncd.reconcile.sync import SyncOptions, sync_dataset
from syncd.store import lease
from syncd.store.catalog import Catalog
from syncd.store.db import transaction


def make_local(root: Path, n: int) -> DriverConfig:
    for i in range(n):
        d = root / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            d.mkdir()
        (d / f"obj-{i:08d}.bin").write_bytes(b"x" * (i % 97))
    return DriverConfig(type="local", bucket=str(root))


async def make_s3(workdir: Path, n: int) -> tuple[DriverConfig, object]:
    from tests.emulators import start_moto

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    emu = start_moto(workdir)
    import boto3

    boto3.client("s3", endpoint_url=emu.url).create_bucket(Bucket="bench")
    cfg = DriverConfig(type="s3", bucket="bench", endpoint=emu.url)
    driver = open_driver(cfg)
    gate = asyncio.Semaphore(64)

    async def put(i: int) -> None:
        async with gate:
            await driver.put(f"d{i // 1000:04d}/obj-{i:08d}.bin", b"x" * (i % 97))

    await asyncio.gather(*(put(i) for i in range(n)))
    return cfg, emu


async def timed(
    label: str, catalog: Catalog, name: str, cfg: DriverConfig, n: int, trace: bool
) -> None:
    dataset = catalog.get_dataset(name)
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    owner = lease.new_owner()
    with transaction(catalog.db):
        lease.acquire(catalog.db, lease.for_dataset(dataset.id), owner)
    async with open_driver(cfg) as driver:
        result = await sync_dataset(catalog, dataset, driver, SyncOptions(), owner=owner)
    with transaction(catalog.db):
        lease.release(catalog.db, lease.for_dataset(dataset.id), owner)
    seconds = time.perf_counter() - t0
    heap = ""
    if trace:
        heap = f"heap peak {tracemalloc.get_traced_memory()[1] / 2**20:6.1f} MiB  "
        tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    c = result.counts
    print(
        f"{label:<22} {n:>9,} objects  {seconds:7.2f}s  {c['listed'] / seconds:>9,.0f} obj/s  "
        f"{heap}max RSS so far {rss:6.1f} MiB  +{c['created']} ~{c['updated']} -{c['deleted']}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=50_000)
    parser.add_argument(
        "--s3", action="store_true", help="list from moto server instead of a folder"
    )
    parser.add_argument(
        "--trace-memory", action="store_true", help="also print tracemalloc heap peaks"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        emu = None
        t0 = time.perf_counter()
        if args.s3:
            cfg, emu = await make_s3(work, args.objects)
        else:
            (work / "data").mkdir()
            cfg = make_local(work / "data", args.objects)
        print(f"prepared {args.objects:,} objects in {time.perf_counter() - t0:.1f}s")
        catalog = Catalog.open(str(work / "bench.db"))
        catalog.create_dataset("bench", canonical(cfg), cfg, Filters())
        try:
            trace = args.trace_memory
            await timed("initial sync", catalog, "bench", cfg, args.objects, trace)
            await timed("idle re-sync", catalog, "bench", cfg, args.objects, trace)
            async with open_driver(cfg) as driver:
                for i in range(0, args.objects, 100):
                    await driver.delete(f"d{i // 1000:04d}/obj-{i:08d}.bin")
            await timed("re-sync, 1% deleted", catalog, "bench", cfg, args.objects, trace)
        finally:
            catalog.close()
            if emu is not None:
                emu.stop()


if __name__ == "__main__":
    asyncio.run(main())
