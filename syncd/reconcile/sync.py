"""One sync of one dataset: list the bucket, march it against the items, apply in batches.

The pipeline, with bounded memory at every stage::

    driver.list() pages --(queue of 2 pages)--> filter --> march(listing, items) --> batches
                                                                                   |
            items + run progress, one transaction per batch  <---------------------+

Guarantees:

* Creates and updates are written batch by batch, each batch in one transaction together with
  the run's ``resume_key``, so a crash loses at most the batch in flight and the next run
  continues after the last key written.
* Deletes are only *parked* while listing. They are applied, in one transaction that also
  closes the run, only after the listing went through to the end without error. A listing
  that fails part-way deletes nothing.
* A run with nothing to change writes no item rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from providers import faults
from providers.base import Driver, ObjectInfo
from providers.errors import StorageError
from syncd.errors import SyncdError, SyncFailed
from syncd.reconcile import partition
from syncd.reconcile.march import Action, Change, march
from syncd.store import lease
from syncd.store.catalog import Catalog, Dataset, Item
from syncd.store.checkpoint import COUNTERS, DEFAULT_RESUME_WITHIN, Checkpoint, Run
from syncd.store.db import now, transaction

BATCH_SIZE = 500
#: save progress at least this often (in listed keys) even when nothing changes
PROGRESS_EVERY = 5000
PREFETCH_PAGES = 2
_COUNTER = {
    Action.CREATE: "created",
    Action.UPDATE: "updated",
    Action.DELETE: "deleted",
    Action.UNCHANGED: "unchanged",
}


class DeleteLimit(Protocol):
    """How many deletes one run may apply, given how many items the dataset held."""

    def limit(self, known_items: int) -> int: ...


class DatasetBusy(SyncFailed):
    """Another live process holds the dataset's lease."""

    def __init__(self, dataset: str, holder: lease.Holder) -> None:
        super().__init__(
            f"dataset {dataset!r} is being synced by {holder.describe()}; wait for it to "
            "finish, or pass --wait"
        )
        self.holder = holder


class DeletesHeldBack(SyncFailed):
    """A run would have deleted more than its limit allows; it deleted nothing."""


class LeaseLost(SyncFailed):
    """This process's lease expired and another process took the dataset over."""


class SyncStopped(SyncFailed):
    """The sync was asked to stop (daemon shutdown); what it decided so far is kept and the
    next run resumes from there."""


@dataclass
class SyncResult:
    """What one invocation did. ``counts`` are for the whole run (all attempts)."""

    dataset: str
    status: str
    counts: dict[str, int]
    seconds: float
    dry_run: bool = False
    run_id: int | None = None
    resumed_after: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "status": self.status,
            **self.counts,
            "seconds": round(self.seconds, 3),
            "dry_run": self.dry_run,
            "run_id": self.run_id,
            "resumed_after": self.resumed_after,
            "error": self.error,
        }


@dataclass
class SyncOptions:
    dry_run: bool = False
    restart: bool = False
    #: resume an interrupted run only if it started at most this many seconds ago
    resume_within: float = DEFAULT_RESUME_WITHIN
    batch_size: int = BATCH_SIZE
    #: hold back every delete of a run that would delete more than this (rclone --max-delete)
    max_delete: DeleteLimit | None = None
    #: set (from any thread) to stop the sync at the next listing page: the batch in flight is
    #: written, the run is left resumable, ``SyncStopped`` is raised
    stop: threading.Event | None = None
    #: called with each non-UNCHANGED change of a dry run, in key order
    on_plan: Callable[[Change], None] | None = None
    #: called after every listing page with the running counters and ``to_delete``, the
    #: number of keys parked for deletion so far
    on_progress: Callable[[dict[str, int]], None] | None = None
    #: key ranges listed at once (:mod:`syncd.reconcile.partition`); 1 lists serially
    list_concurrency: int = 1


def fingerprint(dataset: Dataset) -> str:
    """Identifies what a run compares: the driver location and the filters."""
    raw = json.dumps(
        {"driver": dataset.driver.public(), "filters": dataset.filters.to_json()}, sort_keys=True
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


async def prefetch(
    pages: AsyncIterator[list[ObjectInfo]],
    depth: int = PREFETCH_PAGES,
    before_page: Callable[[], int] = lambda: 0,
) -> AsyncIterator[tuple[int, list[ObjectInfo]]]:
    """Fetch up to ``depth`` pages ahead in a task, so listing overlaps with applying.

    Yields ``(seen_seq, page)``: ``before_page()`` (the catalog's event sequence) is read just
    before each page is requested, so every event applied after the provider answered has a
    larger number. The last item is ``(seen_seq, [])`` with the last page's ``seen_seq`` (the
    answer that ended the listing).
    """
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=depth)
    end = object()

    async def produce() -> None:
        it = aiter(pages)
        last: int | None = None
        try:
            while True:
                seq = before_page()
                try:
                    page = await anext(it)
                except StopAsyncIteration:
                    # keys missing at the end were judged missing by the last page's answer
                    # (it said there was nothing more): keep that page's, older, sequence
                    await queue.put((seq if last is None else last, end))
                    return
                last = seq
                await queue.put((seq, page))
        except Exception as exc:  # handed to the consumer, which re-raises it
            await queue.put((0, exc))

    task = asyncio.create_task(produce())
    try:
        while True:
            seq, page = await queue.get()
            if isinstance(page, Exception):
                raise page
            if page is end:
                yield seq, []
                return
            yield seq, page
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class _Applier:
    """Collects changes and writes them batch by batch with the run's progress."""

    def __init__(
        self,
        catalog: Catalog,
        checkpoint: Checkpoint,
        dataset: Dataset,
        driver: Driver,
        run: Run,
        batch_size: int,
        owner: str,
    ) -> None:
        self.catalog, self.checkpoint, self.dataset, self.driver, self.run = (
            catalog,
            checkpoint,
            dataset,
            driver,
            run,
        )
        self.batch_size = batch_size
        self.owner = owner
        self.parked = 0
        self.writes: list[Item] = []
        self.write_seqs: list[int] = []
        self.deletes: list[str] = []
        self.delete_seqs: list[int] = []
        self.since_save = 0
        self.path = dataset.driver.path
        #: created_at / updated_at of the items of one batch: they are written together
        self.stamp = now()

    def item(self, obj: ObjectInfo) -> Item:
        """The item for a listed object. On an update the stored ``created_at`` is kept
        (``Catalog.write_items`` never overwrites it)."""
        stamp = self.stamp
        return Item(
            key=obj.key,
            filename="/" + obj.key[len(self.path) :],
            uri=self.driver.uri(obj.key),
            size=obj.size,
            etag=obj.etag,
            content_type=obj.content_type,
            mtime=obj.last_modified.isoformat().replace("+00:00", "Z"),
            version=obj.version,
            created_at=stamp,
            updated_at=stamp,
            md5=obj.md5,
        )

    def add(self, change: Change, seen_seq: int) -> None:
        """Take one change; ``seen_seq`` is the event sequence read before the listing page
        that decided it (an event applied later wins over it)."""
        if change.action is Action.DELETE:
            self.deletes.append(change.key)
            self.delete_seqs.append(seen_seq)
            self.parked += 1
            return
        if change.action is not Action.UNCHANGED:
            assert change.obj is not None
            self.writes.append(self.item(change.obj))
            self.write_seqs.append(seen_seq)
        self.run.resume_key = change.key
        self.since_save += 1
        if (
            len(self.writes) + len(self.deletes) >= self.batch_size
            or self.since_save >= PROGRESS_EVERY
        ):
            self.flush()

    def flush(self) -> None:
        with transaction(self.catalog.db):
            # checked in the same transaction as the writes: a process whose lease was taken
            # over (it stalled past the expiry) never writes beside the new holder
            if not lease.renew(self.catalog.db, lease.for_dataset(self.dataset.id), self.owner):
                raise LeaseLost(
                    f"dataset {self.dataset.name!r} was taken over by another process while "
                    "this sync stalled; it stopped without writing further"
                )
            if self.writes:
                self.catalog.write_items(self.dataset.id, self.writes, seen_seq=self.write_seqs)
            if self.deletes:
                self.checkpoint.park_deletes(self.run, self.deletes, self.delete_seqs)
            self.checkpoint.save_progress(self.run)
            faults.pause_point("batch-commit")
        self.writes, self.write_seqs, self.since_save = [], [], 0
        self.deletes, self.delete_seqs = [], []
        self.stamp = now()


async def sync_dataset(
    catalog: Catalog,
    dataset: Dataset,
    driver: Driver,
    options: SyncOptions | None = None,
    *,
    owner: str | None = None,
) -> SyncResult:
    """Make ``dataset`` equal to what ``driver`` lists under the dataset's path and filters.

    A real run needs ``owner`` to hold the dataset's lease (:func:`syncd.api.run_sync` takes
    it); a dry run writes nothing at all and needs no lease. Raises ``SyncFailed`` (nothing
    deleted) when the listing fails part-way, ``DeletesHeldBack`` when more deletes are due
    than ``options.max_delete`` allows (creates and updates are kept), ``LeaseLost`` if another
    process took the dataset over.
    """
    options = options or SyncOptions()
    started = time.monotonic()
    checkpoint = Checkpoint(catalog.db)
    run: Run | None = None
    start_after: str | None = None
    counts = dict.fromkeys(COUNTERS, 0)  # a dry run's own tally; a real run uses the run's
    if not options.dry_run:
        if owner is None:
            raise ValueError("a sync that writes needs the owner of the dataset's lease")
        with transaction(catalog.db):
            if not lease.renew(catalog.db, lease.for_dataset(dataset.id), owner):
                raise ValueError(f"{owner} does not hold the lease of dataset {dataset.name!r}")
            run = checkpoint.begin(
                dataset.id,
                fingerprint(dataset),
                owner,
                restart=options.restart,
                resume_within=options.resume_within,
            )
        counts = run.counts
        start_after = run.resume_key
    resumed_after = start_after
    known_items = catalog.count_items(dataset.id) if dataset.id else 0

    prefix = dataset.driver.path
    filters = dataset.filters
    skipped_before, skipped_base = driver.skipped, counts["skipped"]
    parked = 0  # a dry run's planned deletes; a real run's applier counts its own

    def report() -> None:
        if options.on_progress:
            to_delete = applier.parked if applier else parked
            options.on_progress({**counts, "to_delete": to_delete})

    seen = [0]  # the event sequence read before the page being merged

    async def listing() -> AsyncIterator[ObjectInfo]:
        bounds = await partition.boundaries(
            catalog, dataset.id, driver, prefix, start_after, options.list_concurrency
        )
        pages = (
            partition.pages(driver, prefix, start_after, bounds, before_page=catalog.event_seq)
            if bounds
            else prefetch(
                driver.list(prefix, start_after=start_after), before_page=catalog.event_seq
            )
        )
        async for seq, page in pages:
            if options.stop is not None and options.stop.is_set():
                raise SyncStopped("stopped before the listing completed (shutting down)")
            seen[0] = seq
            for obj in page:
                counts["listed"] += 1
                if filters.accepts(obj.key[len(prefix) :], obj.size):
                    yield obj
                else:
                    counts["filtered"] += 1
            counts["skipped"] = skipped_base + driver.skipped - skipped_before
            report()

    known = catalog.iter_known(dataset.id, after=start_after) if dataset.id else iter(())
    applier = (
        _Applier(catalog, checkpoint, dataset, driver, run, options.batch_size, owner or "")
        if run
        else None
    )
    # renewed while a listing page or a retry takes long (batches renew it too)
    keeper = (
        asyncio.create_task(lease.keep(catalog.db, lease.for_dataset(dataset.id), owner))
        if run and owner
        else None
    )
    try:
        async for change in march(listing(), known):
            if change.action is not Action.DELETE:
                counts[_COUNTER[change.action]] += 1
            if applier:
                applier.add(change, seen[0])
                continue
            if change.action is Action.DELETE:
                parked += 1
                counts["deleted"] += 1  # a dry run's plan: what would be deleted
            if change.action is not Action.UNCHANGED and options.on_plan:
                options.on_plan(change)
    except BrokenPipeError:
        raise  # the reader of a dry run's plan went away: not a storage failure
    except (StorageError, SyncdError, OSError) as exc:
        if isinstance(exc, LeaseLost):
            raise
        error = str(exc)
        if run is not None and applier is not None:
            # keep everything decided so far (writes, parked deletes, resume_key): the next
            # run continues from here; the parked deletes still wait for a complete listing
            applier.flush()
            with transaction(catalog.db):
                checkpoint.finish(run, "failed", error)
        if isinstance(exc, SyncStopped):
            raise SyncStopped(f"sync of dataset {dataset.name!r} {error}") from None
        raise SyncFailed(
            f"sync of dataset {dataset.name!r} failed, nothing was deleted: {error}"
        ) from exc
    finally:
        if keeper:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    if run is not None and applier is not None:
        applier.flush()
        due = checkpoint.count_parked(run)
        limit = options.max_delete.limit(known_items) if options.max_delete else None
        if limit is not None and due > limit:
            # a mass deletion is more often a mistake (an emptied folder, a wrong prefix) than
            # intent: keep creates and updates, delete nothing, and never resume this run
            # (a later run compares afresh)
            message = (
                f"sync of dataset {dataset.name!r} held back {due:,} deletes, more than the "
                f"{limit:,} allowed by --max-delete / max_delete; nothing was deleted "
                f"({counts['created']:,} created, {counts['updated']:,} updated). If the "
                "deletions are intended, run again with a higher --max-delete"
            )
            with transaction(catalog.db):
                run.held_deletes = due
                checkpoint.clear_parked(run)
                checkpoint.finish(run, "held", message)
            raise DeletesHeldBack(message)
        # the listing is complete: apply parked deletes and close the run, all at once
        with transaction(catalog.db):
            deleted = checkpoint.apply_parked(run, dataset.id)
            checkpoint.clear_parked(run)
            counts["deleted"] += deleted
            checkpoint.finish(run, "completed")
            faults.pause_point("run-close")
    report()
    return SyncResult(
        dataset=dataset.name,
        status="completed" if run else "planned",
        counts=dict(counts),
        seconds=time.monotonic() - started,
        dry_run=options.dry_run,
        run_id=run.id if run else None,
        resumed_after=resumed_after,
    )
