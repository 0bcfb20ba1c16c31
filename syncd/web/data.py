"""What the dashboard's pages show, gathered on the daemon's catalog thread.

Every number comes from the functions the JSON API and the CLI use (:mod:`syncd.api`: a
dataset's health and last run, the workers with their heartbeat ages; the scheduler's state;
the metrics' queue lag), never from a second computation of them.

The one exception to "read it when asked" is an item count and byte total: the catalog keeps
no running totals, and ``count(*)`` over a 10M-item dataset takes a second. :class:`Totals`
counts a dataset again only when its change log has moved since the last count (one index
lookup per dataset: the newest cursor of ``changes_dataset``) and not more often than every
:data:`RECOUNT_SECONDS`; otherwise the overview shows the count it has, with when it was
taken. Nothing is counted when nobody looks: the cache is filled by page requests only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from syncd import api
from syncd.store.catalog import Catalog, Dataset
from syncd.store.checkpoint import Checkpoint

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
    """Item counts and byte totals per dataset id, counted again when the log moved."""

    def __init__(self, *, recount_seconds: float = RECOUNT_SECONDS) -> None:
        self._counts: dict[int, _Count] = {}
        self.recount_seconds = recount_seconds

    def of(self, catalog: Catalog, dataset: Dataset) -> tuple[int, int]:
        """(items, bytes) of ``dataset``; runs on the catalog thread."""
        row = catalog.db.execute(
            "SELECT max(cursor) FROM changes WHERE dataset_id = ?", [dataset.id]
        ).fetchone()
        mark = int(row[0] or 0)
        now = time.monotonic()
        known = self._counts.get(dataset.id)
        if known is not None and (known.mark == mark or now - known.at < self.recount_seconds):
            return known.items, known.bytes
        items = catalog.count_items(dataset.id)
        size = catalog.total_size(dataset.id) if items else 0
        self._counts[dataset.id] = _Count(mark, items, size, now)
        return items, size

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
        items, size = totals.of(catalog, ds)
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


def dataset_page(catalog: Catalog, totals: Totals, name: str) -> dict[str, Any] | None:
    """One dataset: its summary, health, totals and its latest runs with every attempt
    (newest first); None when there is no such dataset."""
    ds = catalog.find_dataset(name)
    if ds is None:
        return None
    checkpoint = Checkpoint(catalog.db)
    items, size = totals.of(catalog, ds)
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
        "items_history": items_over_time(catalog, ds, items),
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
