"""One sync of one dataset: list the bucket, compare it with the items, apply in batches.

The pipeline, with bounded memory at every stage::

    driver.list() pages --(queue of 2 pages)--> filter --> diff_page(page, items of its range)
                                                                                   |
      batches: items + parked deletes + run progress, one commit_batch each  <-----+

Each page is compared with the catalog's items of the key range it covers, ``(previous page's
last key, its last key]``, read as plain tuples in one range query: a page of new keys or a page
equal to the catalog is decided in bulk, anything else by the plain merge
(:func:`syncd.reconcile.march.diff_page`, which decides what :func:`~syncd.reconcile.march.march`
decides). The items after the listing's last key are gone.

Guarantees:

* Creates and updates are written batch by batch, each batch in one transaction together with
  the run's ``resume_key``, so a crash loses at most the batch in flight and the next run
  continues after the last key written. A batch closes at ``batch_size`` writes, or sooner
  when the listing keeps the writer waiting (:data:`STALL`): while the writer is behind a
  fast listing (a local folder's walk) batches grow to ``batch_size``, and a listing that
  slows or hangs finds what it decided so far committed.
* Deletes are only *parked* while listing. They are applied, in one transaction that also
  closes the run, only after the listing went through to the end without error. A listing
  that fails part-way deletes nothing.
* A run with nothing to change writes no item rows.
* A split run (:mod:`syncd.reconcile.split`) is reconciled range by range, each range as the
  above with its own resume key; its deletes wait until every range is completed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import operator
import threading
import time
from bisect import bisect_right
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from providers import faults
from providers.base import Driver, ObjectInfo
from providers.errors import StorageError
from providers.redact import redact
from syncd.errors import SyncdError, SyncFailed
from syncd.reconcile import partition
from syncd.reconcile.march import Change, PageDiff, check_order, diff_page
from syncd.reconcile.metadata import MetadataMode, head_changed, page_fields
from syncd.store import lease, ranges
from syncd.store.catalog import Batch, Catalog, Dataset
from syncd.store.checkpoint import COUNTERS, DEFAULT_RESUME_WITHIN, Checkpoint, Run
from syncd.store.db import transaction
from syncd.store.ranges import KeyRange
from syncd.store.sql import NEVER, Seen
from syncd.store.stamps import now, stamp_us

#: the rows a listing page is compared with the catalog in (a piece of at most this many);
#: a batch's size is the catalog store's (:attr:`syncd.store.sql.Database.sync_batch`)
PIECE = 500
#: seconds the writer waits for the next listing page before it commits the batch in hand
STALL = 0.05
#: save progress at least this often (in listed keys) even when nothing changes
PROGRESS_EVERY = 50000
PREFETCH_PAGES = 2

log = logging.getLogger("syncd")
_key = operator.attrgetter("key")
#: why a listed key with a NUL byte is skipped (PostgreSQL's text cannot hold one; sqlite
#: skips it too, so both stores hold the same dataset, and events with one are refused)
NUL_REASON = "NUL byte in the key: no catalog can hold it"


def _storable(driver: Driver, page: list[ObjectInfo]) -> tuple[list[ObjectInfo], int]:
    """``page`` without the keys no catalog can hold, and how many it left out (each logged
    as a skip). Dropped before anything reads the page's keys: such a key must not become an
    item, a resume key or a bound of a catalog query either. Counted by the caller, not on
    the driver: the key ranges of a split run share one driver."""
    if not any("\x00" in o.key for o in page):
        return page, 0  # the common page: one scan, no copy
    kept = [o for o in page if "\x00" not in o.key]
    for o in page:
        if "\x00" in o.key:
            log.warning("skipped %r in %s: %s", o.key, driver.bucket, NUL_REASON)
    return kept, len(page) - len(kept)


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
    """What one invocation did. ``counts`` are for the whole run (all attempts); ``own``, where
    it differs, is what this invocation itself did: for one key range of a split run, that
    range's counts, with the run's deletes if this invocation closed the run (the other
    ranges' counts were reported by whoever reconciled them)."""

    dataset: str
    status: str
    counts: dict[str, int]
    seconds: float
    dry_run: bool = False
    run_id: int | None = None
    resumed_after: str | None = None
    error: str | None = None
    own: dict[str, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "status": self.status,
            **self.counts,
            # objects HEADed (metadata = "head"): this invocation's, not kept with the run
            "heads": self.counts.get("heads", 0),
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
    #: writes per batch; None: the catalog store's (:attr:`syncd.store.sql.Database.sync_batch`)
    batch_size: int | None = None
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
    #: key ranges a new run of the dataset is split into, each leased and resumed on its own
    #: (:mod:`syncd.store.ranges`); None: the automatic rule of :func:`syncd.store.ranges.wanted`
    #: (one range per 50,000 items, at most 32); 1 never splits
    ranges: int | None = None
    #: ranges of a split run one ``syncd sync`` reconciles at once in-process
    range_workers: int = 4
    #: what items record of the provider's metadata (:mod:`syncd.reconcile.metadata`):
    #: "listing" what the listing states, "head" also a HEAD of each new or changed object
    metadata: MetadataMode = "listing"
    #: record the objects' tags (S3 object tags, Azure index tags)
    tags: bool = False


def fingerprint(dataset: Dataset) -> str:
    """Identifies what a run compares: the driver location and the filters."""
    raw = json.dumps(
        {"driver": dataset.driver.public(), "filters": dataset.filters.to_json()}, sort_keys=True
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


async def prefetch(
    pages: AsyncIterator[list[ObjectInfo]],
    depth: int = PREFETCH_PAGES,
    before_page: Callable[[], Seen] = lambda: NEVER,
) -> AsyncIterator[tuple[Seen, list[ObjectInfo]]]:
    """Fetch up to ``depth`` pages ahead in a task, so listing overlaps with applying.

    Yields ``(seen, page)``: ``before_page()`` (the catalog's event sequence and the
    provider's time, :class:`~syncd.store.sql.Seen`) is read just before each page is
    requested, so every event applied after the provider answered has a larger sequence. The
    last item is ``(seen, [])`` with the last page's ``seen`` (the answer that ended the
    listing).
    """
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=depth)
    end = object()

    async def produce() -> None:
        it = aiter(pages)
        last: Seen | None = None
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
            await queue.put((NEVER, exc))

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
    """Collects the changes of listing pages and commits them batch by batch with the run's
    progress (one :meth:`Catalog.commit_batch` per batch)."""

    def __init__(
        self,
        catalog: Catalog,
        dataset: Dataset,
        driver: Driver,
        run: Run,
        batch_size: int,
        owner: str,
        key_range: KeyRange | None = None,
    ) -> None:
        self.catalog, self.dataset, self.driver, self.run = catalog, dataset, driver, run
        self.batch_size = batch_size
        self.owner = owner
        self.key_range = key_range
        #: whose resume_key each batch moves on: the range's for a split run, else the run's
        self.progress: Run | KeyRange = key_range if key_range is not None else run
        self.parked = 0
        self.since_save = 0
        self.plen = len(dataset.driver.path)
        self.batch = self._new_batch()

    def _new_batch(self) -> Batch:
        return Batch(self.dataset.id, self.run, self.owner, key_range=self.key_range)

    def rows(self, objs: list[ObjectInfo]) -> list[tuple[Any, ...]]:
        """Item rows for listed objects as plain tuples of the ``items`` columns (no
        :class:`Item` per object). ``created_at`` and ``updated_at`` are one stamp per page;
        on an update the stored ``created_at`` is kept (``Catalog.write_rows``)."""
        stamp = now()
        plen = self.plen
        ds = self.dataset.id
        uris = self.driver.uris([o.key for o in objs])
        return [
            (
                ds,
                o.key,
                "/" + o.key[plen:],
                uri,
                o.size,
                o.etag,
                content_type,
                mtime,
                o.version,
                stamp,
                stamp,
                meta,
                o.md5,
            )
            for o, uri, (content_type, meta), mtime in zip(
                objs,
                uris,
                page_fields(self.driver, objs),
                self.driver.mtime_texts(objs),
                strict=True,
            )
        ]

    async def add(self, diff: PageDiff, last_key: str | None, listed: int, seen: Seen) -> None:
        """Take one page's changes; ``last_key`` is the page's last listed key (every key up
        to it is decided: the next run may resume after it; None for the deletes after the
        end of the listing), ``listed`` how many keys it decided, ``seen`` what the listing
        page knew when it was requested (a newer event applied later wins over it)."""
        batch = self.batch
        if diff.deletes:
            batch.deletes.extend([k[0] for k in diff.deletes])
            batch.delete_seen.extend([seen] * len(diff.deletes))
            self.parked += len(diff.deletes)
        writes = diff.creates + diff.updates if diff.updates else diff.creates
        if writes:
            batch.rows.extend(self.rows(writes))
            batch.row_seqs.extend([seen.seq] * len(writes))
            batch.row_kinds.extend(
                ["created"] * len(diff.creates) + ["updated"] * len(diff.updates)
            )
        if last_key is not None:
            self.progress.resume_key = last_key
        self.since_save += listed
        if len(batch.rows) + len(batch.deletes) >= self.batch_size or (
            self.since_save >= PROGRESS_EVERY
        ):
            await self.close_batch()

    async def close_batch(self) -> None:
        """Commit the batch (one ``Catalog.commit_batch``)."""
        ok = self.catalog.commit_batch(self.batch)
        self.batch = self._new_batch()
        self.since_save = 0
        if not ok:
            raise self._lost()

    async def flush(self) -> None:
        """Commit the open batch."""
        await self.close_batch()

    def holds_writes(self) -> bool:
        """Whether the open batch holds item rows or deletes not committed yet."""
        return bool(self.batch.rows or self.batch.deletes)

    def _lost(self) -> LeaseLost:
        what = f"dataset {self.dataset.name!r}"
        if self.key_range is not None:
            what = f"key range {self.key_range.idx} of {what}"
        return LeaseLost(
            f"{what} was taken over by another process while "
            "this sync stalled; it stopped without writing further"
        )


async def sync_dataset(
    catalog: Catalog,
    dataset: Dataset,
    driver: Driver,
    options: SyncOptions | None = None,
    *,
    owner: str | None = None,
    key_range: KeyRange | None = None,
) -> SyncResult:
    """Make ``dataset`` equal to what ``driver`` lists under the dataset's path and filters.

    A real run needs ``owner`` to hold the dataset's lease (:func:`syncd.api.sync` takes
    it); a dry run writes nothing at all and needs no lease. Raises ``SyncFailed`` (nothing
    deleted) when the listing fails part-way, ``DeletesHeldBack`` when more deletes are due
    than ``options.max_delete`` allows (creates and updates are kept), ``LeaseLost`` if another
    process took the dataset over.

    With ``key_range`` (claimed by ``owner``, :func:`syncd.store.ranges.claim`), only that
    range of its split run is reconciled: the keys ``[lo, hi)`` are listed (after the range's
    ``resume_key`` when it is resumed) and compared with the dataset's items of that range
    only; each batch commits the range's progress; deletes are parked under the run. The
    range is then completed, and if it was the run's last one, the run's parked deletes are
    applied and the run closed, in the transaction that re-checks every range is completed.
    A failed or stopped range is left ``failed`` and resumable; its run applies no delete.
    """
    options = options or SyncOptions()
    batch_size = options.batch_size or catalog.db.sync_batch
    started = time.monotonic()
    checkpoint = Checkpoint(catalog.db)
    run: Run | None = None
    start_after: str | None = None
    counts = dict.fromkeys(COUNTERS, 0)  # a dry run's own tally; a real run uses the run's
    lease_name = lease.for_dataset(dataset.id)
    if key_range is not None:
        if options.dry_run or owner is None:
            raise ValueError("a key range is reconciled for real, by the owner of its lease")
        run = checkpoint.get(key_range.run_id)
        counts = key_range.counts
        start_after = key_range.resume_key
        lease_name = key_range.lease
    elif not options.dry_run:
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
    known_items = catalog.count_items(dataset.id) if dataset.id and key_range is None else 0
    # a key range [lo, hi): ``since`` bounds the catalog side from below until the first page
    # is decided (``decided`` takes over), ``until`` bounds the listing and the catalog above
    since = key_range.lo if key_range is not None and start_after is None else None
    until = key_range.hi if key_range is not None else None

    prefix = dataset.driver.path
    filters = dataset.filters
    skipped_before, skipped_base = driver.skipped, counts["skipped"]
    unstorable = 0  # listed keys no catalog can hold (:func:`_storable`)
    parked = 0  # a dry run's planned deletes; a real run's applier counts its own

    def report() -> None:
        if options.on_progress:
            to_delete = applier.parked if applier else parked
            options.on_progress({**counts, "to_delete": to_delete})

    def before_page() -> Seen:
        at = driver.observed_at()
        return Seen(catalog.event_seq(), stamp_us(at) if at is not None else 0)

    async def pages() -> AsyncIterator[tuple[Seen, list[ObjectInfo]]]:
        if key_range is not None:
            # the drivers' start_after is exclusive: start after ``lo`` minus its last
            # character and drop the few keys below ``lo`` (as partition.py does)
            start = start_after if since is None else since[:-1] or None
            async for seq, page in prefetch(
                driver.list(prefix, start_after=start, end_before=until),
                before_page=before_page,
            ):
                yield seq, page if since is None else [o for o in page if o.key >= since]
            return
        conc = options.list_concurrency
        parts = conc * partition.RANGES_PER_STREAM if conc > 1 else 1
        bounds = await partition.boundaries(catalog, dataset.id, driver, prefix, start_after, parts)
        if bounds:
            it = partition.pages(
                driver,
                prefix,
                start_after,
                bounds,
                before_page=before_page,
                depth=partition.depth_for(conc),
                window=conc,
            )
        else:
            it = prefetch(driver.list(prefix, start_after=start_after), before_page=before_page)
        async for item in it:
            yield item

    applier = (
        _Applier(catalog, dataset, driver, run, batch_size, owner or "", key_range) if run else None
    )
    # renewed while a listing page or a retry takes long (batches renew it too)
    keeper = (
        asyncio.create_task(lease.keep(catalog.db, lease_name, owner)) if run and owner else None
    )
    accepts_all = filters.accepts_all
    plen = len(prefix)
    # the key every item up to which is decided: items are compared page by page, each page
    # against the catalog's items of (previous page's last key, its own last key]
    decided = start_after
    seq = NEVER  # what the page being merged knew when it was requested

    counts.setdefault("heads", 0)  # not kept in the run's row: this invocation's HEADs
    driver.listing_tags = options.tags

    async def take(diff: PageDiff, last_key: str | None, listed: int, seen: Seen) -> None:
        nonlocal parked
        if options.metadata == "head" and applier:
            counts["heads"] += await head_changed(driver, diff, tags=options.tags)
        counts["created"] += len(diff.creates)
        counts["updated"] += len(diff.updates)
        counts["unchanged"] += diff.unchanged
        if applier:
            await applier.add(diff, last_key, listed, seen)
            return
        parked += len(diff.deletes)
        counts["deleted"] += len(diff.deletes)  # a dry run's plan: what would be deleted
        if options.on_plan:
            for change in diff.changes():
                options.on_plan(change)

    async def listed() -> AsyncIterator[tuple[Seen, list[ObjectInfo]]]:
        """:func:`pages`, committing the batch in hand whenever the next page keeps the writer
        waiting longer than :data:`STALL` (see the module's guarantees)."""
        it = aiter(pages())
        while True:
            following = asyncio.ensure_future(anext(it))
            try:
                if applier is not None and applier.holds_writes():
                    done, _ = await asyncio.wait({following}, timeout=STALL)
                    if not done:
                        await applier.close_batch()
                item = await following
            except StopAsyncIteration:
                return
            finally:
                following.cancel()  # a no-op once it is done (a commit failed, a stop)
            yield item

    try:
        async for seq, page in listed():
            if options.stop is not None and options.stop.is_set():
                raise SyncStopped("stopped before the listing completed (shutting down)")
            page, left_out = _storable(driver, page)
            unstorable += left_out
            if page:
                check_order(page, decided)
                if not accepts_all:
                    kept = [o for o in page if filters.accepts(o.key[plen:], o.size)]
                else:
                    kept = page
                # compared (and written) in pieces of at most a batch: a batch still closes
                # every batch_size writes, so a crash loses no more than before
                last, step = page[-1].key, min(batch_size, PIECE)
                counted = 0  # objects of the page up to the last piece, counted as listed
                for lo in range(0, max(len(kept), 1), step):
                    piece = kept[lo : lo + step]
                    upto = piece[-1].key if lo + step < len(kept) else last
                    # a batch commits the counters of the keys up to its resume point only,
                    # so a run resumed mid-page does not count that page's first part twice
                    upto_n = len(page) if upto == last else bisect_right(page, upto, key=_key)
                    counts["listed"] += upto_n - counted
                    counts["filtered"] += upto_n - counted - len(piece)
                    counted = upto_n
                    known = (
                        catalog.known_range(dataset.id, decided, upto, since=since)
                        if dataset.id
                        else []
                    )
                    await take(diff_page(piece, known), upto, len(piece), seq)
                    decided = upto
            counts["skipped"] = skipped_base + driver.skipped - skipped_before + unstorable
            report()
        # the listing is complete: the items after its last key are gone (``seq`` is what
        # the answer that ended it knew)
        if dataset.id:
            for rows in catalog.iter_known_rows(
                dataset.id, after=decided, since=since if decided is None else None, before=until
            ):
                await take(PageDiff(deletes=rows), None, 0, seq)
        if applier is not None:
            await applier.flush()  # every batch committed before the run is closed
    except BrokenPipeError:
        raise  # the reader of a dry run's plan went away: not a storage failure
    except (StorageError, SyncdError, OSError) as exc:
        if isinstance(exc, LeaseLost):
            raise
        error = str(exc)
        if run is not None and applier is not None:
            # keep everything decided so far (writes, parked deletes, resume_key): the next
            # run continues from here; the parked deletes still wait for a complete listing
            await applier.flush()
            with transaction(catalog.db):
                if key_range is not None:
                    ranges.finish(catalog.db, key_range, "failed", redact(error))
                    lease.release(catalog.db, lease_name, owner or "")
                else:
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

    if key_range is not None and run is not None:
        closed = _complete_range(catalog, dataset, run, key_range, owner or "", options)
        report()
        own = dict(counts)
        if closed is not None:
            own["deleted"] = closed.counts["deleted"]  # applied when this range closed the run
        return SyncResult(
            dataset=dataset.name,
            status="completed" if closed is not None else "range-completed",
            counts=dict(closed.counts if closed is not None else counts),
            seconds=time.monotonic() - started,
            run_id=run.id,
            resumed_after=resumed_after,
            own=own,
        )
    if run is not None and applier is not None:
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
            catalog.db.lock_writes(exclusive=False)  # the deletes' event guard, as a batch's
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


def _complete_range(
    catalog: Catalog,
    dataset: Dataset,
    run: Run,
    key_range: KeyRange,
    owner: str,
    options: SyncOptions,
) -> Run | None:
    """Mark ``key_range`` completed and give its lease up; if it was the run's last range,
    apply the run's parked deletes and close the run, in the same transaction (which re-checks
    that every range is completed, under the run's row lock, so exactly one worker closes it).
    Returns the closed run, or None if other ranges remain. Raises ``LeaseLost`` if the range
    was taken over, ``DeletesHeldBack`` as a serial run does."""
    checkpoint = Checkpoint(catalog.db)
    held: str | None = None
    with transaction(catalog.db):
        # first, as every transaction that may apply parked deletes (see syncd.store.pg)
        catalog.db.lock_writes(exclusive=False)
        ranges.lock_run(catalog.db, run.id)
        if not lease.renew(catalog.db, key_range.lease, owner):
            raise LeaseLost(
                f"key range {key_range.idx} of dataset {dataset.name!r} was taken over by "
                "another process while this sync stalled; it stopped without writing further"
            )
        ranges.finish(catalog.db, key_range, "completed")
        lease.release(catalog.db, key_range.lease, owner)
        if not ranges.all_completed(catalog.db, run.id):
            return None
        run = checkpoint.get(run.id)
        if run.status != "running":
            return None  # abandoned meanwhile (a serial sync started afresh)
        run.counts, run.attempts = ranges.totals(catalog.db, run.id)
        run.resume_key = None
        catalog.db.execute("UPDATE runs SET attempts = ? WHERE id = ?", [run.attempts, run.id])
        due = checkpoint.count_parked(run)
        # the dataset's size when the run began: its items now, less what the run created
        known_items = catalog.count_items(dataset.id) - run.counts["created"]
        limit = options.max_delete.limit(known_items) if options.max_delete else None
        if limit is not None and due > limit:
            held = (
                f"sync of dataset {dataset.name!r} held back {due:,} deletes, more than the "
                f"{limit:,} allowed by --max-delete / max_delete; nothing was deleted "
                f"({run.counts['created']:,} created, {run.counts['updated']:,} updated). If "
                "the deletions are intended, run again with a higher --max-delete"
            )
            run.held_deletes = due
            checkpoint.clear_parked(run)
            checkpoint.finish(run, "held", held)
        else:
            run.counts["deleted"] += checkpoint.apply_parked(run, dataset.id)
            checkpoint.clear_parked(run)
            checkpoint.finish(run, "completed")
            faults.pause_point("run-close")
    if held is not None:
        raise DeletesHeldBack(held)
    return run
