"""A worker process for tests/test_split_runs.py: what a daemon worker does with a split run.

``python -m tests.split_worker DB DATASET [--once] [--batch N]`` calls
:func:`syncd.api.sync_some` with ``start=False`` (it only joins the dataset's open split run):
with ``--once`` one call (one range, or nothing), else calls until the dataset has no open split
run left, looking again every 0.1 s while every unfinished range is held by a live worker (so a
range whose holder died is taken over). Each result is printed as one JSON line; a sync error
is printed as ``{"error": ...}`` and ends the process with exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from syncd import api
from syncd.errors import SyncdError
from syncd.reconcile.sync import SyncOptions
from syncd.store.catalog import Catalog
from syncd.store.checkpoint import Checkpoint


def open_split_run(catalog: Catalog, name: str) -> bool:
    run = Checkpoint(catalog.db).unfinished(catalog.get_dataset(name).id)
    return run is not None and run.ranges > 0


async def main(db: str, name: str, once: bool, batch: int) -> int:
    catalog = Catalog.open(db)
    options = SyncOptions(batch_size=batch)
    try:
        while True:
            try:
                result = await api.sync_some(catalog, name, options=options, start=False)
            except SyncdError as exc:
                print(json.dumps({"error": str(exc)}), flush=True)
                return 1
            print(json.dumps(result.as_dict()), flush=True)
            if once or not open_split_run(catalog, name):
                return 0
            if result.status == "idle":
                time.sleep(0.1)  # the ranges left are held by live workers: look again
    finally:
        catalog.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("dataset")
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.db, args.dataset, args.once, args.batch)))
