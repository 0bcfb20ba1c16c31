"""What the dashboard's pages show, gathered on the daemon's catalog thread.

Every number comes from the functions the JSON API and the CLI use (:mod:`syncd.api`: a
dataset's health and last run, the workers with their heartbeat ages; the scheduler's state;
the metrics' queue lag), never from a second computation of them.

The one exception to "read it when asked" is an item count and byte total: the catalog keeps
no running totals, and ``count(*)`` over 10M items takes seconds. :class:`Totals` keeps the
counts it made; a page shows those at once ("counting" before the first) and has the stale
ones counted in the background: a dataset whose change log moved since its count (one index
lookup: the newest cursor of ``changes_dataset``), at most every :data:`RECOUNT_SECONDS`.
Nothing is counted when nobody looks: only page requests ask for counts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from syncd import api
from syncd.store.catalog import Catalog, Dataset
from syncd.store.checkpoint import Checkpoint

log = logging.getLogger("syncd.web")
#: a dataset whose log moved is counted again at most this often (seconds)
RECOUNT_SECONDS = 10.0
#: runs the dataset page charts and lists
RUN_HISTORY = 100


@dataclass
class _Count:
    mark: int  # the dataset's newest change cursor when counted
    items: int
    bytes: int
    at: float  # time.monotonic() of the count


class Totals:
    """Item counts and byte totals per dataset id (see the module docstring).

    :meth:`known` (on the catalog thread, in a page's one call) answers at once with the
    count it has, possibly ``None`` or a few seconds old, and notes the datasets to count
    (again); :meth:`refresh` (on the event loop, started by the page handler) counts them one
    dataset per catalog call, so the catalog thread's other work (syncs' writes, API calls)
    interleaves, and the page's next refresh shows the counts. So no request waits for a count
    of millions of items, and nothing is counted while nobody looks."""

    def __init__(self, *, recount_seconds: float = RECOUNT_SECONDS) -> None:
        self._counts: dict[int, _Count] = {}
        self._wanted: set[int] = set()
        self._lock = threading.Lock()  # _wanted: added on the catalog thread, taken on the loop
        self._task: asyncio.Task[None] | None = None
        self.recount_seconds = recount_seconds

    @staticmethod
    def _mark(catalog: Catalog, dataset_id: int) -> int:
        row = catalog.db.execute(
            "SELECT max(cursor) FROM changes WHERE dataset_id = ?", [dataset_id]
        ).fetchone()
        return int(row[0] or 0)

    def known(self, catalog: Catalog, dataset: Dataset) -> tuple[int, int] | None:
        """(items, bytes) as last counted, None before the first count; notes ``dataset``
        for :meth:`refresh` when its log moved since (catalog thread)."""
        known = self._counts.get(dataset.id)
        stale = known is None or (
            time.monotonic() - known.at >= self.recount_seconds
            and known.mark != self._mark(catalog, dataset.id)
        )
        if stale:
            with self._lock:
                self._wanted.add(dataset.id)
        return None if known is None else (known.items, known.bytes)

    def count(self, catalog: Catalog, dataset_id: int) -> None:
        """Count one dataset now (catalog thread)."""
        mark = self._mark(catalog, dataset_id)
        items = catalog.count_items(dataset_id)
        size = catalog.total_size(dataset_id) if items else 0
        self._counts[dataset_id] = _Count(mark, items, size, time.monotonic())

    def of(self, catalog: Catalog, dataset: Dataset) -> tuple[int, int]:
        """(items, bytes), counted now if unknown or stale (catalog thread; for tests and
        one-shot callers)."""
        if self.known(catalog, dataset) is None or dataset.id in self._wanted:
            self.count(catalog, dataset.id)
            with self._lock:
                self._wanted.discard(dataset.id)
        found = self._counts[dataset.id]
        return found.items, found.bytes

    def refresh(self, catalog_thread: Any) -> None:
        """Count the noted datasets in the background, one per catalog call (event loop;
        a refresh already under way takes the new ones too)."""
        if self._task is not None and not self._task.done():
            return
        with self._lock:
            if not self._wanted:
                return

        async def run() -> None:
            while True:
                with self._lock:
                    if not self._wanted:
                        return
                    dataset_id = self._wanted.pop()
                try:
                    await catalog_thread.call(lambda c, d=dataset_id: self.count(c, d))
                except Exception:  # a removed dataset, the catalog away: the next view asks
                    log.debug("counting dataset %d failed", dataset_id, exc_info=True)

        self._task = asyncio.get_running_loop().create_task(run(), name="web-totals")

    def forget(self, keep: set[int]) -> None:
        for gone in set(self._counts) - keep:
            del self._counts[gone]


def overview(catalog: Catalog, totals: Totals) -> dict[str, Any]:
    """Every dataset (source, items, bytes, last run, health, held deletes, settings),
    failing ones first, and the workers sharing the catalog. One catalog-thread call."""
    rows = []
    datasets = catalog.list_datasets()
    checkpoint = Checkpoint(catalog.db)
    for ds in datasets:
        items, size = totals.known(catalog, ds) or (None, None)
        last = next(iter(checkpoint.history(ds.id, limit=1)), None)
        rows.append(
            {
                "name": ds.name,
                "source": ds.source,
                "items": items,
                "bytes": size,
                "last_run": None if last is None else api.run_summary(last),
                "health": api.dataset_health(catalog, ds),
                "settings": api.dataset_settings_summary(catalog, ds),
            }
        )
    totals.forget({ds.id for ds in datasets})
    api.sort_by_health(rows)
    return {"datasets": rows, **api.workers_with_ages(catalog)}


def dataset_runs(catalog: Catalog, name: str) -> dict[str, Any] | None:
    """One dataset's latest runs with every attempt (newest first), for the runs table's
    refresh: nothing counted. None when there is no such dataset."""
    ds = catalog.find_dataset(name)
    if ds is None:
        return None
    checkpoint = Checkpoint(catalog.db)
    runs = [api.run_summary(r, checkpoint) for r in checkpoint.history(ds.id, RUN_HISTORY)]
    return {"name": ds.name, "runs": runs}


def dataset_page(catalog: Catalog, totals: Totals, name: str) -> dict[str, Any] | None:
    """One dataset: its summary, health, totals and its latest runs with every attempt
    (newest first); None when there is no such dataset."""
    ds = catalog.find_dataset(name)
    if ds is None:
        return None
    checkpoint = Checkpoint(catalog.db)
    items, size = totals.known(catalog, ds) or (None, None)
    runs = [api.run_summary(r, checkpoint) for r in checkpoint.history(ds.id, RUN_HISTORY)]
    return {
        "name": ds.name,
        "source": ds.source,
        "driver": ds.driver.public(),
        "created_at": ds.created_at,
        "items": items,
        "bytes": size,
        "health": api.dataset_health(catalog, ds),
        "settings": api.dataset_settings_summary(catalog, ds),
        "runs": runs,
        "items_history": [] if items is None else items_over_time(catalog, ds, items),
    }


#: change groups the items-over-time chart reads back (newest first), and the points it draws
ITEM_HISTORY_GROUPS = 5000
ITEM_HISTORY_POINTS = 400


def items_over_time(catalog: Catalog, dataset: Dataset, items: int) -> list[dict[str, Any]]:
    """``[{"at": ISO time, "items": n}, ...]``, oldest first: the dataset's item count after
    each of its latest change groups, walked back from ``items`` (its count now) by each
    group's creations and deletions (the change log records every item write: listings,
    events, watches, pushes). Covers what the log still holds (pruning drops the oldest), at
    most :data:`ITEM_HISTORY_POINTS` points."""
    rows = catalog.db.execute(
        "SELECT cursor, last, at, kinds FROM changes WHERE dataset_id = ?"
        " ORDER BY cursor DESC LIMIT ?",
        [dataset.id, ITEM_HISTORY_GROUPS],
    ).fetchall()
    points: list[dict[str, Any]] = []
    count = items
    for cursor, last, at, kinds in rows:
        points.append({"at": at, "items": count})
        if len(kinds) == 1:  # one kind for the whole group
            n = int(last) - int(cursor) + 1
            net = n if kinds == "c" else -n if kinds == "d" else 0
        else:
            net = kinds.count("c") - kinds.count("d")
        count -= net
    if rows:
        points.append({"at": rows[-1][2], "items": count})  # before the oldest group
    points.reverse()
    step = max(1, len(points) // ITEM_HISTORY_POINTS)
    kept = points[::step]
    if points and kept[-1] is not points[-1]:
        kept.append(points[-1])
    return kept


def queue_lags(metrics: Any) -> dict[str, float]:
    """The event lag of each queue the daemon consumes, in seconds: the value of the
    ``syncd_queue_lag_seconds`` gauge (set by the consumers, see syncd.daemon.service)."""
    found: dict[str, float] = {}
    for metric in metrics.queue_lag.collect():
        for sample in metric.samples:
            found[sample.labels.get("source", "")] = sample.value
    return found
