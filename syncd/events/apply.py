"""Apply bucket events to datasets so that they converge whatever the delivery order.

Every event source is at-least-once and unordered, and a listing (a reconcile) can run at the
same time. For each (dataset, key) the catalog keeps in ``key_markers`` the newest state an
event applied, deletes included (tombstones): its ordering marker, the provider's event time,
and the catalog-wide event sequence of the batch. The newer state wins:

1. **Markers** (S3/Azure sequencers, GCS generation/metageneration) decide when the event and
   the stored state both have one: applied only if newer; at an equal marker a delete beats a
   create (a GCS delete of a live generation carries that generation's own marker). Where a
   reconcile's listing showed the key gone since (a tombstone marked ``LISTED_GONE``), an
   event with a newer marker must also not be older than the listing by rule 2's times.
2. Otherwise **GCS generations** decide against an item that has one (a delete of an
   overwritten generation never removes the live item), and else the **provider's times**: an
   event older than the item's modification time (from a listing or an earlier event) or than
   the last event applied to the key is stale. Equal times are not stale: such events apply
   in arrival order, and the periodic reconcile is the backstop.
3. Every batch stamps the keys it decided with the next value of the catalog's event
   sequence; a reconcile whose listing saw a key *before* that writes or deletes nothing for it
   (:meth:`syncd.store.catalog.Catalog.write_items`, parked deletes in
   :mod:`syncd.store.checkpoint`), unless the event is older than what the listing saw: a
   listed version modified after the event's time, or a key the listing showed gone on a page
   requested after it. A key a reconcile deletes gets a tombstone with its page's time, so an
   older event delivered later is stale by rule 2. So neither order of "listing saw the key"
   and "event applied" lets an older state win.

Consequently duplicates are no-ops; an old event arriving late neither resurrects a deleted
object nor removes a newer one; a stale listing never undoes an event.

Routing: an event goes to every dataset whose driver has the event's provider and bucket (and
Azure account, when both are known) and whose path contains the key. A key outside every
driver's path is counted as ``unrouted`` (in the result, and per bucket in the catalog's
``unrouted_events`` with one warning per bucket and process) and changes nothing else. A created
object that the dataset's filters reject removes the item if there was one.

All events of one :meth:`EventApplier.apply` call are applied in one transaction;
:meth:`EventApplier.apply_stream` applies an input of any length in batches, one transaction
each. A batch is decided in Python on the rows of its keys, read in a few queries, exactly as
applying its events one at a time would decide (tests/test_events_batch.py checks that).
"""

from __future__ import annotations

import functools
import logging
import operator
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

from providers import faults
from providers.base import object_uri
from providers.content_types import guessed_by_default
from syncd.events.parse import EventKind, ObjectEvent
from syncd.reconcile.metadata import item_fields
from syncd.store.catalog import Catalog, Dataset
from syncd.store.checkpoint import LISTED_GONE
from syncd.store.db import transaction
from syncd.store.sql import select_keys
from syncd.store.sqlite import insert_rows
from syncd.store.stamps import now, stamp_us

log = logging.getLogger("syncd.events")
#: (provider, bucket, account) already warned about in this process
_WARNED: set[tuple[str, str, str]] = set()
#: providers whose events are stamped with the object's modification time rather than the
#: time of the change (a folder watch): such a time cannot order an event against a listing
MTIME_STAMPED = frozenset({"local"})
#: events decided per round of queries (inside one transaction)
CHUNK = 1000
#: events per transaction of :meth:`EventApplier.apply_stream`
BATCH = 5000
_MARKER_UPSERT = (
    "INSERT INTO key_markers"
    " (dataset_id, key, marker, deleted, updated_at, seq, event_time, event_us)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dataset_id, key) DO UPDATE SET"
    " marker = CASE WHEN excluded.marker = '' THEN key_markers.marker ELSE excluded.marker END,"
    " deleted = excluded.deleted, updated_at = excluded.updated_at,"
    " seq = CASE WHEN excluded.seq = 0 THEN key_markers.seq ELSE excluded.seq END,"
    " event_time = coalesce(excluded.event_time, key_markers.event_time),"
    " event_us = coalesce(excluded.event_us, key_markers.event_us)"
)


@dataclass
class ApplyResult:
    counts: Counter[str] = field(default_factory=Counter)
    #: the outcomes per (dataset name, outcome), for the daemon's per-dataset metrics
    by_dataset: Counter[tuple[str, str]] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int]:
        keys = ("created", "updated", "deleted", "unchanged", "stale", "unrouted", "incomplete")
        return {k: self.counts.get(k, 0) for k in keys}


def batched(events: Iterable[ObjectEvent], size: int) -> Iterator[list[ObjectEvent]]:
    """Lists of up to ``size`` events, read lazily from ``events`` (Python 3.11 has no
    ``itertools.batched``)."""
    it = iter(events)
    while chunk := list(islice(it, size)):
        yield chunk


def _rank(event: ObjectEvent) -> str | None:
    if event.marker is None:
        return None
    return f"{event.marker}/{1 if event.kind is EventKind.DELETED else 0}"


def _uri(ds: Dataset, event: ObjectEvent) -> str:
    if ds.driver.type == "local":
        return Path(ds.driver.bucket, *event.key.split("/")).as_uri()
    return object_uri(event.provider, event.bucket, event.key, ds.driver.account or event.account)


@functools.lru_cache(maxsize=4096)  # a delivery's events share a few times
def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(stamp: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _generation(version: str | None) -> tuple[int, ...] | None:
    """A GCS ``generation.metageneration`` as a comparable tuple; None for anything else."""
    if not version:
        return None
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return None


class EventApplier:
    """Routes and applies events for one catalog. Cheap to build; reads the datasets once."""

    def __init__(self, catalog: Catalog, *, dataset: str | None = None) -> None:
        self.catalog = catalog
        if dataset is not None:
            # an explicit target (a folder watch): every event goes to that dataset
            self.only: Dataset | None = catalog.get_dataset(dataset)
            self.datasets = [self.only]
        else:
            self.only = None
            self.datasets = [d for d in catalog.list_datasets() if d.driver.type != "local"]
        #: per (provider, bucket, account) of an event, the datasets on that bucket (a
        #: delivery's events name a few buckets: the driver fields are compared once each)
        self._on_bucket: dict[tuple[str, str, str | None], list[Dataset]] = {}
        #: per (provider, bucket, account): True when those datasets all cover the whole bucket
        self._whole: dict[tuple[str, str, str | None], bool] = {}
        #: per (dataset id, provider, bucket, account), what an item's URI is the key after
        #: (cloud datasets only: a local item's URI is a quoted path)
        self._uri_prefix: dict[tuple[int, str, str, str | None], str] = {}

    def routes(self, event: ObjectEvent) -> list[Dataset]:
        if self.only is not None:
            return [self.only] if event.key.startswith(self.only.driver.path) else []
        where = (event.provider, event.bucket, event.account)
        candidates = self._on_bucket.get(where)
        if candidates is None:
            candidates = self._on_bucket[where] = [
                ds
                for ds in self.datasets
                if ds.driver.type == event.provider
                and ds.driver.bucket == event.bucket
                and not (event.account and ds.driver.account and event.account != ds.driver.account)
            ]
            self._whole[where] = all(ds.driver.path == "" for ds in candidates)
        if self._whole.get(where):
            return candidates  # every dataset on the bucket takes every key (shared: read only)
        key = event.key
        return [ds for ds in candidates if key.startswith(ds.driver.path)]

    def _uri(self, ds: Dataset, event: ObjectEvent) -> str:
        """:func:`_uri`, by concatenation: a cloud object's URI is a prefix its dataset,
        provider, bucket and account decide, then the key."""
        if ds.driver.type == "local":
            return _uri(ds, event)
        where = (ds.id, event.provider, event.bucket, event.account)
        prefix = self._uri_prefix.get(where)
        if prefix is None:
            prefix = self._uri_prefix[where] = _uri(ds, replace(event, key=""))
        return prefix + event.key

    def apply(self, events: Iterable[ObjectEvent]) -> ApplyResult:
        """Apply ``events`` in one transaction under one event sequence value (a queue's
        delivery, an API call). Decided in chunks of :data:`CHUNK` events, so even a large
        list costs a few queries per chunk."""
        result = ApplyResult()
        unrouted: dict[tuple[str, str, str], tuple[int, str]] = {}
        with transaction(self.catalog.db):
            # decided in Python from what it reads: no other writer may commit in between
            # (a no-op on sqlite, whose transactions already take turns)
            self.catalog.db.lock_writes(exclusive=True)
            seq = self._next_seq()
            for chunk in batched(events, CHUNK):
                self._apply_chunk(chunk, seq, result, unrouted)
            self._record_unrouted(unrouted)
            faults.pause_point("event-commit")
        return result

    def apply_stream(
        self, events: Iterable[ObjectEvent], *, batch_size: int = BATCH
    ) -> Iterator[ApplyResult]:
        """Apply ``events`` (any iterable, read lazily) in batches of ``batch_size``, each batch
        one transaction with its own event sequence value; yields each committed batch's
        result. Memory holds one batch, never the whole input. An error stops the stream with
        the batches before it committed (applying them again changes nothing: duplicates are
        no-ops)."""
        for chunk in batched(events, batch_size):
            yield self.apply(chunk)

    def _record_unrouted(self, unrouted: dict[tuple[str, str, str], tuple[int, str]]) -> None:
        """Count events no dataset took, per bucket, in the batch's transaction; warn once
        per bucket and process (a misconfigured notification sends many)."""
        stamp = now()
        for (provider, bucket, account), (count, key) in unrouted.items():
            self.catalog.db.execute(
                "INSERT INTO unrouted_events"
                " (provider, bucket, account, count, first_seen, last_seen, last_key)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (provider, bucket, account) DO UPDATE"
                " SET count = unrouted_events.count + excluded.count, last_seen = excluded.last_seen,"
                " last_key = excluded.last_key",
                [provider, bucket, account, count, stamp, stamp, key],
            )
            if (provider, bucket, account) not in _WARNED:
                _WARNED.add((provider, bucket, account))
                log.warning(
                    "events for %s bucket %r%s reach no dataset (e.g. key %r): add a dataset "
                    "whose driver covers them, or stop sending them; see syncd events unrouted",
                    provider,
                    bucket,
                    f" (account {account})" if account else "",
                    key,
                )

    def _next_seq(self) -> int:
        db = self.catalog.db
        db.execute("UPDATE counters SET value = value + 1 WHERE name = 'event_seq'")
        return int(db.execute("SELECT value FROM counters WHERE name = 'event_seq'").fetchone()[0])

    def _is_stale(
        self,
        event: ObjectEvent,
        rank: str | None,
        stored: tuple[str, int, str | None] | None,
        existing: tuple[str, str, int, str, str | None] | None,
    ) -> bool:
        """Rules 1 and 2 of the module docstring."""
        stored_marker = stored[0] if stored else ""
        if rank is not None and stored_marker:
            if rank <= stored_marker:
                return True
            if stored is None or stored[1] != LISTED_GONE:
                return False
            # newer than the stored marker, but a listing showed the key gone after that
            # marker's change: the event may still be older than the listing (by its time)
        if existing is not None:
            event_gen, item_gen = _generation(event.version), _generation(existing[4])
            if event.provider == "gcs" and event_gen is not None and item_gen is not None:
                if event.kind is EventKind.DELETED:
                    return event_gen[:1] < item_gen[:1]  # an older generation's delete
                return event_gen < item_gen
        if event.event_time is None:
            return False
        when = event.event_time.astimezone(UTC)
        # compared as times, not strings: stored stamps vary in precision ("...:01Z" from a
        # listing with whole seconds, "...:01.5Z" from an event)
        newest = [
            _parse_time(t)
            for t in (stored[2] if stored else None, existing[3] if existing else None)
            if t
        ]
        return any(t is not None and when < t for t in newest)

    def _apply_chunk(
        self,
        events: Sequence[ObjectEvent],
        seq: int,
        result: ApplyResult,
        unrouted: dict[tuple[str, str, str], tuple[int, str]],
    ) -> None:
        """Decide ``events`` in order, as if one at a time, against the markers and items of
        their keys read in a few ``IN (...)`` queries; then write what changed with one
        ``executemany`` per table. Several events for one key see each other's effect: the
        decisions run on an in-memory copy of the rows that every decision updates."""
        routed: list[tuple[Dataset, ObjectEvent]] = []
        keys: defaultdict[int, set[str]] = defaultdict(set)
        routes = self.routes
        for event in events:
            targets = routes(event)
            if not targets:
                result.counts["unrouted"] += 1
                where = (event.provider, event.bucket, event.account or "")
                unrouted[where] = (unrouted.get(where, (0, ""))[0] + 1, event.key)
            for ds in targets:
                routed.append((ds, event))
                keys[ds.id].add(event.key)
        if not routed:
            return
        state = _ChunkState.read(self.catalog.db, keys)
        stamp = now()  # one transaction, one time of writing
        markers, items, marks, puts = state.markers, state.items, state.marks, state.puts
        outcomes: list[tuple[str, str]] = []  # (dataset name, outcome): counted once, in C
        created: list[str] = []  # the dataset names of the common creates, likewise
        uri_prefix = self._uri_prefix
        for ds, event in routed:
            key = event.key
            slot = (ds.id, key)
            size, etag = event.size, event.etag
            if (
                slot in markers
                or slot in items
                or event.kind is not _CREATED
                or size is None
                or etag is None
                or event.metadata
                or event.tags
                or not ds.filters.accepts_all
            ):
                outcomes.append((ds.name, self._decide(ds, event, seq, stamp, state)))
                continue
            # the common event, a create of a key with neither row: _decide's outcome for it
            # with its steps written out (not stale, kept, a new item, the marker stamped)
            rank = "" if event.marker is None else event.marker + "/0"
            when = _stamp(event.event_time) if event.event_time else None
            markers[slot] = (rank, 0, when)
            marks[slot] = (rank, 0, seq, when)
            content_type, meta = item_fields(
                key,
                event.content_type,
                rule=guessed_by_default(event.provider),
                guessed=event.provider == "local",
            )
            mtime = when or _stamp(datetime.now(UTC))
            version = event.version
            items[slot] = (stamp, etag, size, mtime, version)
            prefix = uri_prefix.get((ds.id, event.provider, event.bucket, event.account))
            puts[slot] = (
                ds.id,
                key,
                "/" + key[len(ds.driver.path) :],
                prefix + key if prefix is not None else self._uri(ds, event),
                size,
                etag,
                content_type,
                mtime,
                version,
                stamp,
                stamp,
                meta,
                None,
            )
            created.append(ds.name)
        for name, count in Counter(created).items():
            result.counts["created"] += count
            result.by_dataset[(name, "created")] += count
        for (name, outcome), count in Counter(outcomes).items():
            result.counts[outcome] += count
            result.by_dataset[(name, outcome)] += count
        # a folder watch names its dataset; bucket events are routed
        state.write(self.catalog, stamp, "watch" if self.only is not None else "event")

    def _decide(
        self, ds: Dataset, event: ObjectEvent, seq: int, stamp: str, state: _ChunkState
    ) -> str:
        """One event's outcome (a result count name), recorded in ``state``."""
        slot = (ds.id, event.key)
        rank = _rank(event)
        stored = state.markers.get(slot)
        existing = state.items.get(slot)
        # a key with neither row (a new object) cannot be stale: nothing to compare against
        if (stored is not None or existing is not None) and self._is_stale(
            event, rank, stored, existing
        ):
            return "stale"
        relative = event.key[len(ds.driver.path) :]
        keep = event.kind is EventKind.CREATED and (
            ds.filters.accepts_all or ds.filters.accepts(relative, event.size or 0)
        )
        if keep and (event.size is None or event.etag is None):
            return "incomplete"  # nothing to record; the next sync lists the object
        when = _stamp(event.event_time) if event.event_time else None
        # a create without a time that only confirms the item leaves the sequence alone: it
        # must not keep a reconcile from writing a newer state its listing saw (nothing
        # orders the two); a delete always stamps, so a listing that saw the key alive cannot
        # re-create it
        unchanged_create = (
            keep and existing is not None and (existing[1], existing[2]) == (event.etag, event.size)
        )
        # the marker stays the newest one seen: an unmarked event does not erase it. A create
        # that confirms the item stamps the sequence too if its time is when the change
        # happened (a re-upload of the same bytes after a listing saw the key gone must keep
        # it); the listing guards compare that time, so it holds back no listing that saw a
        # newer state. A folder watch's time is the file's modification time, which a restore
        # leaves in the past: there it would hold back a listing of the restored version.
        timed = when is not None and event.provider not in MTIME_STAMPED
        stamp_seq = 0 if unchanged_create and not timed else seq
        state.mark(slot, rank or "", int(not keep), stamp_seq, when)
        if not keep:
            if existing is None:
                return "unchanged"
            state.delete(slot)
            return "deleted"
        assert event.size is not None and event.etag is not None
        if unchanged_create:
            return "unchanged"
        # the event's content type, else a guess from the key (S3 events carry none), marked
        # as guessed; a folder watch's type is itself a guess from the name
        content_type, meta = item_fields(
            event.key,
            event.content_type,
            rule=guessed_by_default(event.provider),
            guessed=event.provider == "local",
            metadata=dict(event.metadata) if event.metadata else None,
            tags=dict(event.tags) if event.tags else None,
        )
        # a row of the items columns (Catalog.write_rows): dataset_id, then the Item fields
        state.put(
            slot,
            (
                ds.id,
                event.key,
                "/" + relative,
                self._uri(ds, event),
                event.size,
                event.etag,
                content_type,
                when or _stamp(datetime.now(UTC)),
                event.version,
                existing[0] if existing else stamp,
                stamp,
                meta,
                None,
            ),
        )
        return "updated" if existing else "created"


_KEY = operator.itemgetter(1)
_CREATED = EventKind.CREATED
#: (marker, deleted, event_time) of a key_markers row
MarkerRow = tuple[str, int, str | None]
#: (created_at, etag, size, mtime, version) of an items row
ItemRow = tuple[str, str, int, str, str | None]


@dataclass
class _ChunkState:
    """The rows of one chunk's keys, as the decisions change them, and what to write.

    ``marks`` holds, per key, the one marker upsert equal to the chunk's sequence of them: the
    upsert keeps the stored marker and sequence when given ``''`` and ``0`` and the stored
    event time when given None, so folding a later upsert onto an earlier one keeps the later
    value unless it is that "keep" value. Item writes collapse to the last state per key;
    a key whose item was deleted in the chunk is deleted before any re-create is written (so
    the re-created item gets a new ``created_at``, as one event at a time would give it)."""

    markers: dict[tuple[int, str], MarkerRow]
    items: dict[tuple[int, str], ItemRow | None]
    marks: dict[tuple[int, str], tuple[str, int, int, str | None]] = field(default_factory=dict)
    puts: dict[tuple[int, str], tuple[Any, ...]] = field(default_factory=dict)
    deletes: set[tuple[int, str]] = field(default_factory=set)
    #: the keys that had an item when the chunk was read (a write's change-log kind)
    stored: frozenset[tuple[int, str]] = frozenset()

    @classmethod
    def read(cls, db: Any, keys: dict[int, set[str]]) -> _ChunkState:
        markers: dict[tuple[int, str], MarkerRow] = {}
        items: dict[tuple[int, str], ItemRow | None] = {}
        for dataset_id, key_set in sorted(keys.items()):
            ordered = list(key_set)
            for key, marker, deleted, event_time in select_keys(
                db, "t.key, t.marker, t.deleted, t.event_time", "key_markers", dataset_id, ordered
            ):
                markers[(dataset_id, key)] = (marker, deleted, event_time)
            for key, *row in select_keys(
                db, "t.key, t.created_at, t.etag, t.size, t.mtime, t.version", "items",
                dataset_id, ordered,
            ):  # fmt: skip
                items[(dataset_id, key)] = tuple(row)  # type: ignore[assignment]
        return cls(markers, items, stored=frozenset(items))

    def mark(self, slot: tuple[int, str], marker: str, deleted: int, seq: int, when: str | None):
        """Record the marker upsert of one decision, and its effect on the stored row."""
        old = self.markers.get(slot)
        self.markers[slot] = (
            marker or (old[0] if old else ""),
            deleted,
            when if when is not None else (old[2] if old else None),
        )
        prev = self.marks.get(slot)
        if prev is not None:
            marker = marker or prev[0]
            seq = seq or prev[2]
            when = when if when is not None else prev[3]
        self.marks[slot] = (marker, deleted, seq, when)

    def delete(self, slot: tuple[int, str]) -> None:
        self.items[slot] = None
        self.puts.pop(slot, None)
        self.deletes.add(slot)

    def put(self, slot: tuple[int, str], row: tuple[Any, ...]) -> None:
        """Record an item write: ``row`` holds the ``items`` columns in order."""
        self.items[slot] = (row[9], row[5], row[4], row[7], row[8])
        self.puts[slot] = row

    def write(self, catalog: Catalog, stamp: str, source: str) -> None:
        """Write the chunk's marker upserts, deletes, then item upserts (the caller holds the
        transaction); the item changes are recorded in the change log with ``source``."""
        if self.marks:
            # the time also as microseconds: the listing write guard compares it (a chunk's
            # events share a few times: each text converted once)
            us: dict[str, int] = {}
            db = catalog.db
            write = (
                functools.partial(insert_rows, db.conn)  # several rows per statement
                if db.dialect == "sqlite"
                else db.executemany
            )
            write(
                _MARKER_UPSERT,
                [
                    (
                        ds,
                        key,
                        m,
                        d,
                        stamp,
                        s,
                        w,
                        (us.get(w) or us.setdefault(w, stamp_us(w))) if w else None,
                    )
                    for (ds, key), (m, d, s, w) in sorted(self.marks.items())
                ],
            )
        by_dataset: dict[int, tuple[list[str], list[tuple[Any, ...]]]] = {}
        for ds, key in self.deletes:
            by_dataset.setdefault(ds, ([], []))[0].append(key)
        for (ds, _key), row in self.puts.items():
            by_dataset.setdefault(ds, ([], []))[1].append(row)
        stored, deletes = self.stored, self.deletes
        for ds, (gone, written) in by_dataset.items():
            if gone:
                catalog.delete_items(ds, gone, source=source)
            if written:
                written.sort(key=_KEY)  # in key order: the index pages are written in turn
                # the change log's kind, as the key's row is now: the chunk's deletes are
                # written first, so a key deleted and re-created in it is created again (one
                # kind for all when no key had an item: the common chunk of new objects)
                kinds: str | list[str] = (
                    [
                        "updated"
                        if (ds, r[1]) in stored and (ds, r[1]) not in deletes
                        else "created"
                        for r in written
                    ]
                    if stored
                    else "created"
                )
                catalog.write_rows(ds, written, source=source, kinds=kinds)


def unrouted(catalog: Catalog) -> list[dict[str, object]]:
    """The buckets events arrived for that no dataset took, most recent first."""
    rows = catalog.db.execute(
        "SELECT provider, bucket, account, count, first_seen, last_seen, last_key"
        " FROM unrouted_events ORDER BY last_seen DESC"
    ).fetchall()
    cols = ("provider", "bucket", "account", "count", "first_seen", "last_seen", "last_key")
    return [dict(zip(cols, row, strict=True)) for row in rows]


def apply_events(
    catalog: Catalog, events: Iterable[ObjectEvent], *, dataset: str | None = None
) -> ApplyResult:
    """Apply ``events`` in one transaction to every dataset they route to, or, with
    ``dataset``, to that dataset only (a folder watch's events)."""
    return EventApplier(catalog, dataset=dataset).apply(events)
