"""Split runs, the reconciler's side: start or join a dataset's split run, then work its ranges.

A large dataset's run is cut into key ranges (:mod:`syncd.store.ranges`) that several workers
(daemon workers on other machines, or tasks of one ``syncd sync``) reconcile side by side, each
range under its own lease. :func:`start_or_join` runs under the dataset's lease (taken and
given back by the caller, :mod:`syncd.api`): it joins the dataset's open split run, or cuts a
new one, or says the run should be serial. :func:`work` then claims free ranges one at a time
and reconciles each (:func:`syncd.reconcile.sync.sync_dataset` with ``key_range``).

How many ranges: ``SyncOptions.ranges`` (``[datasets.X] ranges``, ``--ranges``), else one per
50,000 items of the dataset, at most 32 (:func:`syncd.store.ranges.wanted`); fewer than two
means a serial run. Boundaries are evenly spaced item keys (``Catalog.sample_keys``), else for
a first sync the folders one level under the source path (``Driver.folders``, one delimiter
listing), else there is one range and the run is serial.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Callable

from providers.base import Driver
from syncd.errors import SyncFailed
from syncd.reconcile import partition
from syncd.reconcile.sync import (
    DatasetBusy,
    DeletesHeldBack,
    SyncOptions,
    SyncResult,
    SyncStopped,
    fingerprint,
    sync_dataset,
)
from syncd.store import lease, ranges
from syncd.store.catalog import Catalog, Dataset
from syncd.store.checkpoint import Checkpoint, Run
from syncd.store.db import transaction
from syncd.store.ranges import KeyRange
from syncd.store.stamps import now

log = logging.getLogger("syncd")

#: how often a sync waiting for ranges other workers hold looks again
POLL_SECONDS = 0.5


def open_run(catalog: Catalog, dataset: Dataset, options: SyncOptions) -> Run | None:
    """The dataset's open split run if this worker may join it (same driver and filters,
    started within ``options.resume_within``, no ``restart``), else None."""
    checkpoint = Checkpoint(catalog.db)
    previous = checkpoint.unfinished(dataset.id)
    if previous is None or not previous.ranges or options.restart:
        return None
    if previous.fingerprint != fingerprint(dataset):
        return None
    return previous if checkpoint.fresh(previous, options.resume_within) else None


async def start_or_join(
    catalog: Catalog, dataset: Dataset, driver: Driver, options: SyncOptions, owner: str
) -> Run | None:
    """The dataset's split run to work on: its open one (same driver and filters, started
    within ``options.resume_within``, no ``restart``), or a new one cut into ranges; None when
    the run is to be serial (the dataset is small, no boundaries could be found, or a serial
    run is unfinished and will be resumed).

    ``owner`` holds the dataset's lease. An open split run that cannot be resumed is
    abandoned, unless a live worker still holds one of its ranges (``DatasetBusy``)."""
    db, checkpoint = catalog.db, Checkpoint(catalog.db)
    fp = fingerprint(dataset)
    joined = open_run(catalog, dataset, options)
    if joined is not None:
        return joined
    previous = checkpoint.unfinished(dataset.id)
    if previous is not None and previous.ranges:
        with transaction(db):
            ranges.lock_run(db, previous.id)
            holders = ranges.live_holders(db, previous.id)
            if holders:
                raise DatasetBusy(dataset.name, holders[0])
            # superseded: its ranges are not resumed, its parked deletes not applied
            db.execute(
                "UPDATE runs SET status = 'abandoned', ended_at = ? WHERE id = ?",
                [now(), previous.id],
            )
            db.execute("DELETE FROM pending_deletes WHERE run_id = ?", [previous.id])
        previous = None
    if previous is not None:
        return None  # an unfinished serial run: sync_dataset resumes (or abandons) it
    if options.ranges is None and dataset.driver.type == "local":
        # a folder's listing is a walk of one machine's disk, which key ranges only repeat
        # (measured: a 100k-file idle re-sync 1.7 s serial, 3.1 s in the automatic 2 ranges);
        # a folder is split only when asked (ranges = N)
        return None
    parts = ranges.wanted(options.ranges, catalog.count_items(dataset.id))
    if parts < 2:
        return None
    bounds = await partition.boundaries(
        catalog, dataset.id, driver, dataset.driver.path, None, parts
    )
    if not bounds:
        return None
    with transaction(db):
        if not lease.renew(db, lease.for_dataset(dataset.id), owner):
            raise SyncFailed(f"dataset {dataset.name!r} was taken over while its run was cut")
        run = checkpoint.begin_split(dataset.id, fp, owner)
        ranges.create(db, run.id, bounds)
        run.ranges = len(bounds) + 1
    log.info("dataset %r: run %d split into %d key ranges", dataset.name, run.id, run.ranges)
    return run


def claim(
    catalog: Catalog, run: Run, owner: str, skip: frozenset[int] = frozenset()
) -> KeyRange | None:
    """Claim a free range of ``run`` for ``owner`` (see :func:`syncd.store.ranges.claim`);
    None while the run is closed, or while a live process holds the dataset's own lease (a
    ``syncd push``, or a worker joining or cutting the run)."""
    with transaction(catalog.db):
        # the run's row lock before the dataset lease is read (see api._range_holder)
        ranges.lock_run(catalog.db, run.id)
        if Checkpoint(catalog.db).get(run.id).status != "running":
            return None
        if lease.live_owner(catalog.db, lease.for_dataset(run.dataset_id)) is not None:
            return None
        return ranges.claim(catalog.db, run.id, owner, skip=skip)


def outcome(catalog: Catalog, dataset: Dataset, run: Run, seconds: float) -> SyncResult:
    """The result of the whole split run as it stands (counts summed over its ranges)."""
    checkpoint = Checkpoint(catalog.db)
    current = checkpoint.get(run.id)
    counts = current.counts
    if current.status == "running":
        counts = ranges.totals(catalog.db, run.id)[0]
    return SyncResult(
        dataset=dataset.name,
        status=current.status,
        counts=dict(counts),
        seconds=seconds,
        run_id=run.id,
        error=current.error,
    )


async def work(
    catalog: Catalog,
    dataset: Dataset,
    driver: Driver,
    run: Run,
    options: SyncOptions,
    owner: str,
    *,
    one: bool = False,
) -> SyncResult:
    """Reconcile free ranges of ``run`` with ``owner`` (the caller gave the dataset's lease
    back, so other workers can join).

    * ``one``: claim one free range and reconcile it (a daemon worker's unit of work); status
      ``"idle"`` when every unfinished range is held by a live worker.
    * Otherwise (``syncd sync``): ``options.range_workers`` tasks claim and reconcile ranges
      until none is free, then wait for the ranges other live workers hold (taking over a
      range whose holder is gone) until the run is closed. The first failure stops the claiming
      (the other tasks finish their range) and is raised; the failed range stays resumable and
      the run applies no delete.
    """
    started = asyncio.get_running_loop().time()
    if one:
        rng = claim(catalog, run, owner)
        if rng is None:
            result = outcome(catalog, dataset, run, 0.0)
            if result.status == "running":
                result.status = "idle"
            return result
        try:
            return await sync_dataset(catalog, dataset, driver, options, owner=owner, key_range=rng)
        finally:
            with transaction(catalog.db):
                lease.release(catalog.db, rng.lease, owner)

    failures: list[BaseException] = []
    failed: set[int] = set()
    halt = threading.Event()
    shown: dict[int, dict[str, int]] = {}  # each range's latest counters, for one progress line
    heads = 0  # HEADs of this invocation's ranges (a run's row keeps no such counter)

    def progress_of(idx: int) -> Callable[[dict[str, int]], None] | None:
        report = options.on_progress
        if report is None:
            return None

        def add_up(counts: dict[str, int]) -> None:
            shown[idx] = counts
            report({k: sum(c.get(k, 0) for c in shown.values()) for k in counts})

        return add_up

    async def worker() -> None:
        nonlocal heads
        while not halt.is_set():
            rng = claim(catalog, run, owner, frozenset(failed))
            if rng is None:
                return
            try:
                done = await sync_dataset(
                    catalog,
                    dataset,
                    driver,
                    dataclasses.replace(options, on_progress=progress_of(rng.idx)),
                    owner=owner,
                    key_range=rng,
                )
                heads += (done.own or done.counts).get("heads", 0)
            except DeletesHeldBack as exc:  # this task closed the run: raised once, below
                failures.append(exc)
                return
            except Exception as exc:
                failures.append(exc)
                failed.add(rng.idx)
                halt.set()
                return
            finally:
                with transaction(catalog.db):
                    lease.release(catalog.db, rng.lease, owner)

    announced = False
    while True:
        await asyncio.gather(*(worker() for _ in range(max(1, options.range_workers))))
        if failures:
            raise failures[0]
        result = outcome(catalog, dataset, run, asyncio.get_running_loop().time() - started)
        if result.status == "held":
            raise DeletesHeldBack(result.error or "deletes held back")
        if result.status != "running":
            result.counts["heads"] = heads
            return result
        if options.stop is not None and options.stop.is_set():
            raise SyncStopped(f"sync of dataset {dataset.name!r} stopped (shutting down)")
        # the ranges left are held by other live workers: wait for them to finish, or to
        # vanish (their ranges are then taken over by the next claim)
        if not announced:
            with transaction(catalog.db):
                holders = ranges.live_holders(catalog.db, run.id)
            if holders:
                log.warning(
                    "dataset %r: waiting for key ranges held by %s",
                    dataset.name,
                    holders[0].describe(),
                )
            announced = True
        await asyncio.sleep(POLL_SECONDS)
