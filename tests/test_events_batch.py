"""A batch of events decides exactly what applying them one at a time decides (hypothesis).

``EventApplier`` decides a chunk of events on an in-memory copy of their keys' rows and
writes the outcome once. With a chunk of one event it reads and writes the database around
every event: the one-at-a-time reference. Both run in one ``apply`` call (one transaction, one
event sequence value), from the same starting catalog, on events drawn with repeats from a
small pool so that one chunk holds several events for the same key: creates, overwrites,
deletes, in and out of order, duplicates, with and without markers and times, for two S3
datasets on one bucket (one filtered) or a GCS one. The per-event outcomes and every column of the
``items`` and ``key_markers`` rows must be equal (times of writing compared as "kept" or
"written by the batch").
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers.config import DriverConfig
from syncd.events import apply
from syncd.events.parse import EventKind, ObjectEvent, gcs_marker, pad_sequencer
from syncd.reconcile.filters import Filters
from syncd.store.catalog import Catalog, Item
from syncd.store.db import transaction

#: few keys, so that a batch holds several events for one key; the last is routed nowhere
KEYS = ["raw/a.jpg", "raw/ü b.png", "other/x"]
BASE = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
_counter = itertools.count()


def new_catalog(tmp: Path, empty: Catalog | None = None) -> Catalog:
    """``empty`` (an empty catalog of any store), else a new sqlite file, with the datasets."""
    catalog = empty if empty is not None else Catalog.open(str(tmp / f"c{next(_counter)}.db"))
    s3 = DriverConfig(type="s3", bucket="bkt", path="raw")
    catalog.create_dataset("all", "s3://bkt/raw/", s3, Filters())
    # the same bucket and path, objects over 2 bytes left out: a create removes the item
    catalog.create_dataset("small", "s3://bkt/raw/", s3, Filters(max_size=2))
    gcs = DriverConfig(type="gcs", bucket="gbkt", path="raw")
    catalog.create_dataset("gcs", "gs://gbkt/raw/", gcs, Filters())
    return catalog


@st.composite
def an_event(draw: st.DrawFn, provider: str) -> ObjectEvent:
    kind = draw(st.sampled_from(list(EventKind)))
    key = draw(st.sampled_from(KEYS))
    n = draw(st.none() | st.integers(1, 5))
    version = marker = None
    if n is not None:
        if provider == "s3":
            marker = pad_sequencer(f"{n:X}")
        else:
            meta = draw(st.integers(1, 2))
            marker, version = gcs_marker(n, meta), f"{n}.{meta}"
    seconds = draw(st.none() | st.integers(0, 3))
    return ObjectEvent(
        kind,
        provider,
        "bkt" if provider == "s3" else "gbkt",
        key,
        marker=marker,
        size=draw(st.sampled_from([1, 3, None])) if kind is EventKind.CREATED else None,
        etag=draw(st.sampled_from(["e1", "e2", None])) if kind is EventKind.CREATED else None,
        event_time=None if seconds is None else BASE + timedelta(seconds=seconds),
        version=version,
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list, list[ObjectEvent], list[ObjectEvent]]:
    """(listing items, events applied one at a time before, the batch): the batch is drawn
    with repeats from a pool of a few events, so it holds duplicates and several events for a
    key in any order."""
    provider = draw(st.sampled_from(["s3", "gcs"]))
    listed = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["all", "small"] if provider == "s3" else ["gcs"]),
                st.sampled_from(KEYS[:2]),
                st.sampled_from([1, 3]),
                st.sampled_from(["e1", "e2"]),
                st.integers(0, 3),
            ),
            max_size=4,
        )
    )
    before = draw(st.lists(an_event(provider), max_size=4))
    pool = draw(st.lists(an_event(provider), min_size=1, max_size=6))
    batch = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=14))
    return listed, before, batch


def prepare(
    tmp: Path, listed: list, before: list[ObjectEvent], empty: Catalog | None = None
) -> Catalog:
    catalog = new_catalog(tmp, empty)
    with transaction(catalog.db):
        for name, key, size, etag, seconds in listed:
            ds = catalog.get_dataset(name)
            mtime = (BASE + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
            version = "2.1" if name == "gcs" else None
            item = Item(
                key, "/" + key[4:], f"x://{key}", size, etag, None, mtime, version, "t", "t"
            )
            catalog.write_items(ds.id, [item])
    for event in before:
        apply.apply_events(catalog, [event])
    return catalog


def rows(catalog: Catalog) -> tuple[list, list]:
    """Both tables' rows, each with its dataset's name for its id (ids differ between
    stores), in (dataset, key) order."""
    names = {d.id: d.name for d in catalog.list_datasets()}
    items = catalog.db.execute(
        "SELECT dataset_id, key, filename, uri, size, etag, content_type, mtime, version,"
        " created_at, updated_at, metadata FROM items"
    ).fetchall()
    markers = catalog.db.execute(
        "SELECT dataset_id, key, marker, deleted, seq, event_time, updated_at FROM key_markers"
    ).fetchall()
    return (
        sorted((names[r[0]], *r[1:]) for r in items),
        sorted((names[r[0]], *r[1:]) for r in markers),
    )


def normalized(before: tuple[list, list], after: tuple[list, list]) -> tuple[list, list]:
    """``after`` with each time of writing replaced by "kept" (the value before the batch) or
    "new", and each modification time not from an event or a listing by "now"."""
    old_items = {(r[0], r[1]): r for r in before[0]}
    old_marks = {(r[0], r[1]): r for r in before[1]}
    known = {(BASE + timedelta(seconds=s)).isoformat().replace("+00:00", "Z") for s in range(4)}
    items = []
    for r in after[0]:
        old = old_items.get((r[0], r[1]))
        mtime = r[7] if r[7] in known else "now"
        created = "kept" if old and old[9] == r[9] else "new"
        updated = "kept" if old and old[10] == r[10] else "new"
        items.append((*r[:7], mtime, r[8], created, updated, r[11]))
    marks = []
    for r in after[1]:
        old = old_marks.get((r[0], r[1]))
        marks.append((*r[:6], "kept" if old and old[6] == r[6] else "new"))
    return items, marks


def run(catalog: Catalog, batch: list[ObjectEvent]) -> tuple[dict, tuple[list, list]]:
    start = rows(catalog)
    result = apply.apply_events(catalog, batch).as_dict()
    return result, normalized(start, rows(catalog))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(scenario=scenarios())
def test_a_batch_decides_what_one_event_at_a_time_decides(
    tmp_path_factory: pytest.TempPathFactory, catalogs, scenario
) -> None:
    """The reference runs on sqlite; the batch on each store (``catalogs`` gives a fresh
    empty catalog per example), so PostgreSQL's batch is checked against it too."""
    listed, before, batch = scenario
    tmp = tmp_path_factory.mktemp("batch")
    one_by_one = prepare(tmp, listed, before)
    batched = prepare(tmp, listed, before, catalogs())
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(apply, "CHUNK", 1)  # read and write the database around every event
            expected = run(one_by_one, batch)
        assert run(batched, batch) == expected
    finally:
        one_by_one.close()
        batched.close()


def test_the_reference_really_applies_one_event_per_chunk(tmp_path: Path) -> None:
    """The comparison above means something only if CHUNK = 1 takes the per-event path and
    the default takes the whole batch at once."""
    calls: list[int] = []
    catalog = new_catalog(tmp_path)
    original = apply.EventApplier._apply_chunk

    def counting(self, events, *args):
        calls.append(len(events))
        return original(self, events, *args)

    events = [
        ObjectEvent(EventKind.CREATED, "s3", "bkt", "raw/a.jpg", size=1, etag="e1"),
        ObjectEvent(EventKind.DELETED, "s3", "bkt", "raw/a.jpg"),
        ObjectEvent(EventKind.CREATED, "s3", "bkt", "raw/a.jpg", size=1, etag="e2"),
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(apply.EventApplier, "_apply_chunk", counting)
        apply.apply_events(catalog, events)
        mp.setattr(apply, "CHUNK", 1)
        apply.apply_events(catalog, events)
    assert calls == [3, 1, 1, 1]
    catalog.close()
