"""Apply bucket events to datasets so that they converge whatever the delivery order.

Every event source is at-least-once and unordered. For each (dataset, key) the catalog keeps
in ``key_markers`` the newest ordering marker it has applied, deletes included (tombstones).
An event is applied only if its marker is newer than the stored one; at an equal marker a
delete beats a create (a GCS delete of a live generation carries that generation's own
marker). So:

* duplicates are no-ops (same marker);
* an old event arriving late neither resurrects a deleted object nor removes a newer one;
* a GCS delete of an *overwritten* generation (older generation) never removes the live item.

Events without a marker (emulators such as moto send no sequencer) are applied in arrival
order: last delivered wins, and the periodic ``syncd sync`` is the backstop.

Routing: an event goes to every dataset whose driver has the event's provider and bucket (and
Azure account, when both are known) and whose path contains the key. A key outside every
driver's path is counted as ``unrouted`` and changes nothing else in the batch. A created
object that the dataset's filters reject removes the item if there was one.

All events of one call are applied in one transaction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from providers.base import object_uri
from syncd.events.parse import EventKind, ObjectEvent
from syncd.store.catalog import Catalog, Dataset, Item
from syncd.store.db import now, transaction


@dataclass
class ApplyResult:
    counts: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int]:
        keys = ("created", "updated", "deleted", "unchanged", "stale", "unrouted", "incomplete")
        return {k: self.counts.get(k, 0) for k in keys}


def _rank(event: ObjectEvent) -> str | None:
    if event.marker is None:
        return None
    return f"{event.marker}/{1 if event.kind is EventKind.DELETED else 0}"


class EventApplier:
    """Routes and applies events for one catalog. Cheap to build; reads the datasets once."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.datasets = [d for d in catalog.list_datasets() if d.driver.type != "local"]

    def routes(self, event: ObjectEvent) -> list[Dataset]:
        out = []
        for ds in self.datasets:
            cfg = ds.driver
            if cfg.type != event.provider or cfg.bucket != event.bucket:
                continue
            if event.account and cfg.account and event.account != cfg.account:
                continue
            if event.key.startswith(cfg.path):
                out.append(ds)
        return out

    def apply(self, events: Iterable[ObjectEvent]) -> ApplyResult:
        result = ApplyResult()
        with transaction(self.catalog.db):
            for event in events:
                targets = self.routes(event)
                if not targets:
                    result.counts["unrouted"] += 1
                for ds in targets:
                    result.counts[self._apply_one(ds, event)] += 1
        return result

    def _apply_one(self, ds: Dataset, event: ObjectEvent) -> str:
        db = self.catalog.db
        rank = _rank(event)
        if rank is not None:
            row = db.execute(
                "SELECT marker FROM key_markers WHERE dataset_id = ? AND key = ?",
                [ds.id, event.key],
            ).fetchone()
            if row is not None and rank <= row[0]:
                return "stale"
        existing = db.execute(
            "SELECT created_at, etag, size FROM items WHERE dataset_id = ? AND key = ?",
            [ds.id, event.key],
        ).fetchone()
        relative = event.key[len(ds.driver.path) :]
        keep = event.kind is EventKind.CREATED and ds.filters.accepts(relative, event.size or 0)
        if keep and (event.size is None or event.etag is None):
            return "incomplete"  # nothing to record; the next sync lists the object
        if rank is not None:
            db.execute(
                "INSERT INTO key_markers (dataset_id, key, marker, deleted, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (dataset_id, key) DO UPDATE SET"
                " marker = excluded.marker, deleted = excluded.deleted, updated_at = excluded.updated_at",
                [ds.id, event.key, rank, int(not keep), now()],
            )
        if not keep:
            if existing is None:
                return "unchanged"
            self.catalog.delete_items(ds.id, [event.key])
            return "deleted"
        assert event.size is not None and event.etag is not None
        if existing is not None and (existing[1], existing[2]) == (event.etag, event.size):
            return "unchanged"
        stamp = now()
        mtime = (event.event_time or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
        item = Item(
            key=event.key,
            filename="/" + relative,
            uri=object_uri(
                event.provider, event.bucket, event.key, ds.driver.account or event.account
            ),
            size=event.size,
            etag=event.etag,
            content_type=event.content_type,
            mtime=mtime,
            version=event.version,
            created_at=existing[0] if existing else stamp,
            updated_at=stamp,
        )
        self.catalog.write_items(ds.id, [item])
        return "updated" if existing else "created"


def apply_events(catalog: Catalog, events: Iterable[ObjectEvent]) -> ApplyResult:
    """Apply ``events`` to every dataset they belong to, in one transaction."""
    return EventApplier(catalog).apply(events)
