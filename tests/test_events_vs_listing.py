"""Events never lose to a stale listing (issue 9), in both interleavings, deterministically.

A reconcile's listing is paused right after the provider answered its first page and before
the sync uses it; while it waits, the bucket changes and the matching event is applied, as a
queue consumer or a folder watch would. When the listing resumes it carries the *older* view.
Whatever the sync decides about that key must not undo the event: afterwards the dataset
equals the bucket. Without the event-sequence guard both tests fail (the stale listing wins).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers.base import Driver, ObjectInfo
from providers.config import DriverConfig
from providers.local import LocalDriver
from syncd import api
from syncd.events.apply import apply_events
from syncd.events.parse import EventKind, ObjectEvent, pad_sequencer
from syncd.reconcile.filters import Filters
from syncd.reconcile.sync import SyncOptions, sync_dataset
from syncd.store import lease
from syncd.store.db import transaction
from tests.conftest import CatalogMaker, catalog_state


class PausingDriver(LocalDriver):
    """The real local driver, whose listing stops after fetching its first page until the
    test releases it (pages of two keys)."""

    def __init__(self, root: str) -> None:
        super().__init__(root, page_size=2)
        self.first_page: asyncio.Queue[list[ObjectInfo]] = asyncio.Queue()
        self.release = asyncio.Event()

    async def list(
        self, prefix: str = "", start_after: str | None = None, end_before: str | None = None
    ) -> AsyncIterator[list[ObjectInfo]]:
        first = True
        async for page in super().list(prefix, start_after, end_before):
            if first:
                await self.first_page.put(page)  # the provider has answered: this is its view
                await self.release.wait()
                first = False
            yield page


def event_for(root: Path, key: str) -> ObjectEvent:
    """The event a folder watch sends for ``key`` as it is now (the driver's own rules)."""
    path = root / key
    if not path.exists():
        return ObjectEvent(EventKind.DELETED, "local", str(root), key, event_time=datetime.now(UTC))
    info = LocalDriver(str(root))._info(key, path.stat())
    return ObjectEvent(
        EventKind.CREATED,
        "local",
        str(root),
        key,
        size=info.size,
        etag=info.etag,
        event_time=info.last_modified,
    )


async def bucket_state(root: Path) -> dict[str, tuple[int, str]]:
    return {o.key: (o.size, o.etag) async for page in LocalDriver(str(root)).list() for o in page}


async def interleave(
    tmp_path: Path,
    catalogs: CatalogMaker,
    before: Callable[[Path], None],
    in_the_gap: Callable[[Path, list[str]], str],
) -> tuple[dict, dict]:
    """First sync of a, b, c, d; ``before(root)`` changes the bucket; a second sync lists, and
    between its first page and its use ``in_the_gap(root, page_keys)`` changes one key, whose
    event is applied. Returns (dataset, bucket) afterwards."""
    root = tmp_path / "bucket"
    root.mkdir()
    for name in ("a", "b", "c", "d"):
        (root / name).write_text(f"first {name}")
    catalog = catalogs()
    try:
        ds, _ = api.ensure_dataset(catalog, "ds", source=str(root))
        owner = lease.new_owner()
        with transaction(catalog.db):
            lease.acquire(catalog.db, lease.for_dataset(ds.id), owner)
        await sync_dataset(catalog, ds, LocalDriver(str(root)), owner=owner)
        before(root)

        driver = PausingDriver(str(root))
        options = SyncOptions(batch_size=1)  # every change is written as soon as it is decided
        task = asyncio.create_task(sync_dataset(catalog, ds, driver, options, owner=owner))
        page = await driver.first_page.get()
        key = in_the_gap(root, [o.key for o in page])
        result = apply_events(catalog, [event_for(root, key)], dataset="ds")
        assert result.counts["created"] + result.counts["updated"] == 1  # the event is news
        driver.release.set()
        await task
        return catalog_state(catalog), await bucket_state(root)
    finally:
        catalog.close()


async def test_a_listing_that_saw_the_old_version_does_not_undo_an_update(
    tmp_path: Path, catalogs: CatalogMaker
) -> None:
    newer = "second version, longer than the first"

    def overwrite_first_key(root: Path, keys: list[str]) -> str:
        (root / keys[0]).write_text(newer)
        return keys[0]

    def change_a(root: Path) -> None:
        # the listing will see this version, newer than the dataset's: an update to apply
        (root / "a").write_text("middle version")

    dataset, bucket = await interleave(tmp_path, catalogs, change_a, overwrite_first_key)
    assert dataset == bucket
    assert dataset["a"][0] == len(newer)


async def test_a_listing_that_missed_a_key_does_not_delete_it_after_a_create(
    tmp_path: Path, catalogs: CatalogMaker
) -> None:
    def recreate_b(root: Path, keys: list[str]) -> str:
        assert keys == ["a", "c"]  # the listing's view: b is gone, its delete will be parked
        (root / "b").write_text("b is back")
        return "b"

    dataset, bucket = await interleave(
        tmp_path, catalogs, lambda root: (root / "b").unlink(), recreate_b
    )
    assert dataset == bucket
    assert "b" in dataset


async def test_a_late_event_older_than_the_listed_state_is_stale(
    tmp_path: Path, catalogs: CatalogMaker
) -> None:
    """The other direction: a listing wrote the newer state; an older event arrives late."""

    root = tmp_path / "bucket"
    root.mkdir()
    (root / "a").write_text("current")
    catalog = catalogs()
    try:
        ds, _ = api.ensure_dataset(catalog, "ds", source=str(root))
        owner = lease.new_owner()
        with transaction(catalog.db):
            lease.acquire(catalog.db, lease.for_dataset(ds.id), owner)
        await sync_dataset(catalog, ds, LocalDriver(str(root)), owner=owner)
        listed = catalog_state(catalog)
        now = event_for(root, "a")
        assert now.event_time is not None
        old = now.event_time - timedelta(seconds=30)
        late_create = ObjectEvent(
            EventKind.CREATED, "local", str(root), "a", size=3, etag="old", event_time=old
        )
        late_delete = ObjectEvent(EventKind.DELETED, "local", str(root), "a", event_time=old)
        result = apply_events(catalog, [late_create, late_delete], dataset="ds")
        assert result.counts["stale"] == 2
        assert catalog_state(catalog) == listed == await bucket_state(root)
        # a delete newer than the listed state applies, and then the old create stays stale
        gone = ObjectEvent(
            EventKind.DELETED, "local", str(root), "a", event_time=now.event_time + timedelta(1)
        )
        assert apply_events(catalog, [gone, late_create], dataset="ds").counts["deleted"] == 1
        assert "a" not in catalog_state(catalog)
    finally:
        catalog.close()


# -- the convergence property, with a reconcile running among the events ---------------------


T0 = datetime(2026, 1, 1, tzinfo=UTC)


class SnapshotDriver(Driver):
    """A bucket frozen at one moment, listed in one page, pausing after the provider's answer
    until released (the storage interface over a dict; no SDK is involved)."""

    provider = "s3"

    def __init__(
        self, objects: dict[str, ObjectInfo], pause: bool, at: datetime | None = None
    ) -> None:
        super().__init__("bkt")
        self.objects = objects
        #: the moment the bucket is frozen at, on the clock of the history's events (None:
        #: the driver's default, this machine's clock)
        self.at = at
        self.fetched = asyncio.Event()
        self.release = asyncio.Event()
        if not pause:
            self.release.set()

    async def list(self, prefix="", start_after=None, end_before=None):  # type: ignore[override]
        page = [o for k, o in sorted(self.objects.items()) if k.startswith(prefix)]
        self.fetched.set()
        await self.release.wait()
        if page:
            yield page

    async def head(self, key: str) -> ObjectInfo:
        raise NotImplementedError

    def get(self, key: str):  # type: ignore[override]
        raise NotImplementedError

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        raise NotImplementedError

    async def upload(self, key: str, path: str, content_type: str | None = None) -> ObjectInfo:
        raise NotImplementedError

    async def download(self, key: str, out: BinaryIO, size: int | None = None) -> ObjectInfo:
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        raise NotImplementedError

    async def presign(self, key: str, ttl: int = 3600) -> str:
        raise NotImplementedError

    def uri(self, key: str) -> str:
        return f"s3://bkt/{key}"

    def observed_at(self) -> datetime:
        return super().observed_at() if self.at is None else self.at


def play(ops: list[tuple[str, int | None]], upto: int) -> dict[str, ObjectInfo]:
    """The bucket after the first ``upto`` operations (op i happens at T0 + i seconds)."""
    state: dict[str, ObjectInfo] = {}
    for i, (key, size) in enumerate(ops[:upto]):
        if size is None:
            state.pop(key, None)
        else:
            state[key] = ObjectInfo(key, size, f"etag-{i}", T0 + timedelta(seconds=i))
    return state


def seen_at(upto: int) -> datetime:
    """When a listing of the bucket after the first ``upto`` operations was requested: after
    op ``upto - 1``, before op ``upto``."""
    return T0 + timedelta(seconds=upto - 0.5)


def snapshot(ops: list[tuple[str, int | None]], upto: int, pause: bool) -> SnapshotDriver:
    """The bucket after the first ``upto`` operations, listed when it was in that state."""
    return SnapshotDriver(play(ops, upto), pause, at=seen_at(upto))


def event_of(i: int, key: str, size: int | None, marked: bool) -> ObjectEvent:
    marker = pad_sequencer(f"{0x1000 + i:012X}") if marked else None
    when = T0 + timedelta(seconds=i)
    if size is None:
        return ObjectEvent(EventKind.DELETED, "s3", "bkt", key, marker=marker, event_time=when)
    return ObjectEvent(
        EventKind.CREATED, "s3", "bkt", key, marker=marker, size=size, etag=f"etag-{i}",
        event_time=when,
    )  # fmt: skip


operations = st.lists(
    st.tuples(
        st.sampled_from(["raw/a", "raw/b", "raw/c d", "raw/ü"]),
        st.one_of(st.none(), st.integers(1, 9)),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations, data=st.data(), marked=st.booleans())
def test_events_and_a_concurrent_reconcile_converge(
    catalogs: CatalogMaker, ops: list[tuple[str, int | None]], data: st.DataObject, marked: bool
) -> None:
    """Any history; the dataset was synced at t0; a reconcile lists the bucket as it was at
    t >= t0 while every event is applied in a random order, duplicates included: those of
    operations before t either before the listing or after it, those after t only after the
    provider answered (they had not happened yet). Afterwards the dataset equals the bucket."""
    n = len(ops)
    t0 = data.draw(st.integers(0, n), label="t0")
    t = data.draw(st.integers(t0, n), label="t")
    events = [event_of(i, key, size, marked) for i, (key, size) in enumerate(ops)]
    before, after = [], []
    for i, event in enumerate(events):
        copies = data.draw(st.integers(1, 2), label=f"copies {i}")
        for _ in range(copies):
            early = i < t and data.draw(st.booleans(), label=f"early {i}")
            (before if early else after).append(event)
    rnd = data.draw(st.randoms(use_true_random=False), label="order")
    rnd.shuffle(before)
    rnd.shuffle(after)

    async def scenario() -> dict[str, tuple[int, str]]:
        catalog = catalogs()
        try:
            ds = catalog.create_dataset(
                "ds", "s3://bkt/raw/", DriverConfig(type="s3", bucket="bkt", path="raw"), Filters()
            )
            owner = lease.new_owner()
            with transaction(catalog.db):
                lease.acquire(catalog.db, lease.for_dataset(ds.id), owner)
            await sync_dataset(catalog, ds, snapshot(ops, t0, False), owner=owner)
            apply_events(catalog, before)
            driver = snapshot(ops, t, True)
            task = asyncio.create_task(
                sync_dataset(catalog, ds, driver, SyncOptions(batch_size=1), owner=owner)
            )
            await driver.fetched.wait()
            # every later event lands while the reconcile holds its (older) view: the worst case
            apply_events(catalog, after)
            driver.release.set()
            await task
            return catalog_state(catalog)
        finally:
            catalog.close()

    final = {k: (o.size, o.etag) for k, o in play(ops, n).items()}
    assert asyncio.run(scenario()) == final


async def test_an_event_later_in_the_same_second_as_the_listed_state_applies(
    catalogs: CatalogMaker,
) -> None:
    """Times are compared as times: a listing's whole-second "...:00Z" and an event's
    "...:00.5Z" (which sorts first as text) are ordered correctly."""
    catalog = catalogs()
    try:
        ds = catalog.create_dataset(
            "ds", "s3://bkt/raw/", DriverConfig(type="s3", bucket="bkt", path="raw"), Filters()
        )
        owner = lease.new_owner()
        with transaction(catalog.db):
            lease.acquire(catalog.db, lease.for_dataset(ds.id), owner)
        listed = {"raw/a": ObjectInfo("raw/a", 1, "old", T0)}  # a whole second
        await sync_dataset(catalog, ds, SnapshotDriver(listed, False), owner=owner)
        newer = ObjectEvent(
            EventKind.CREATED, "s3", "bkt", "raw/a", size=2, etag="new",
            event_time=T0 + timedelta(milliseconds=500),
        )  # fmt: skip
        assert apply_events(catalog, [newer]).counts["updated"] == 1
        assert catalog_state(catalog) == {"raw/a": (2, "new")}
    finally:
        catalog.close()
