"""Events never lose to a stale listing (issue 9), in both interleavings, deterministically.

A reconcile's listing is paused right after the provider answered its first page and before
the sync uses it; while it waits, the bucket changes and the matching event is applied, as a
queue consumer or a folder watch would. When the listing resumes it carries the *older* view.
Whatever the sync decides about that key must not undo the event: afterwards the dataset
equals the bucket. Without the event-sequence guard both tests fail (the stale listing wins).
"""

from __future__ import annotations

import asyncio
import os
import time
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
from syncd.store.catalog import Catalog, Dataset
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


async def synced_folder_dataset(catalog: Catalog, root: Path) -> tuple[Dataset, str]:
    """Dataset ``ds`` on the folder ``root``, synced once, and the owner of its lease."""
    ds, _ = api.ensure_dataset(catalog, "ds", source=str(root))
    owner = lease.new_owner()
    with transaction(catalog.db):
        lease.acquire(catalog.db, lease.for_dataset(ds.id), owner)
    await sync_dataset(catalog, ds, LocalDriver(str(root)), owner=owner)
    return ds, owner


async def interleave(
    tmp_path: Path,
    catalogs: CatalogMaker,
    before: Callable[[Path], None],
    in_the_gap: Callable[[Path, list[str]], str],
    first_mtime: float | None = None,
) -> tuple[dict, dict]:
    """First sync of a, b, c, d (modified at ``first_mtime``, Unix time, if given);
    ``before(root)`` changes the bucket; a second sync lists, and between its first page and
    its use ``in_the_gap(root, page_keys)`` changes one key, whose event is applied. Returns
    (dataset, bucket) afterwards."""
    root = tmp_path / "bucket"
    root.mkdir()
    for name in ("a", "b", "c", "d"):
        (root / name).write_text(f"first {name}")
        if first_mtime is not None:
            os.utime(root / name, (first_mtime, first_mtime))
    catalog = catalogs()
    try:
        ds, owner = await synced_folder_dataset(catalog, root)
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


def restore_with_old_times(path: Path, text: str, age: float = 3600) -> None:
    """Put a file back as a restore from a backup does (``cp -p``, ``rsync -a``, ``tar x``,
    ``mv``): new content, a modification time ``age`` seconds in the past."""
    path.write_text(text)
    when = time.time() - age
    os.utime(path, (when, when))


async def test_a_listing_that_missed_a_key_keeps_it_when_it_comes_back_with_old_times(
    tmp_path: Path, catalogs: CatalogMaker
) -> None:
    """A folder watch stamps a created file with its modification time: b, restored from a
    backup while the listing runs, carries a time long before the listing's and must still
    win over the listing that saw it gone (a folder's listing claims no time:
    ``LocalDriver.observed_at``).

    Checked to fail: without ``LocalDriver.observed_at`` (the default clock), the listing's
    parked delete removed the restored b."""

    def restore_b(root: Path, keys: list[str]) -> str:
        assert keys == ["a", "c"]  # the listing's view: b is gone, its delete will be parked
        restore_with_old_times(root / "b", "b restored from a backup")
        return "b"

    dataset, bucket = await interleave(
        tmp_path,
        catalogs,
        lambda root: (root / "b").unlink(),
        restore_b,
        first_mtime=time.time() - 7200,
    )
    assert dataset == bucket
    assert "b" in dataset


async def test_a_file_restored_with_old_times_after_a_listing_deleted_it_comes_back(
    tmp_path: Path, catalogs: CatalogMaker
) -> None:
    """b is deleted, a sync removes its item, then b is restored with an old modification
    time: its watch event re-creates the item (no listing tombstone makes it stale).

    Checked to fail: without ``LocalDriver.observed_at``, the event was counted stale."""
    root = tmp_path / "bucket"
    root.mkdir()
    for name in ("a", "b"):
        restore_with_old_times(root / name, f"first {name}", age=7200)
    catalog = catalogs()
    try:
        ds, owner = await synced_folder_dataset(catalog, root)
        (root / "b").unlink()
        await sync_dataset(catalog, ds, LocalDriver(str(root)), owner=owner)
        assert set(catalog_state(catalog)) == {"a"}
        restore_with_old_times(root / "b", "b restored from a backup")
        result = apply_events(catalog, [event_for(root, "b")], dataset="ds")
        assert result.counts["created"] == 1
        assert catalog_state(catalog) == await bucket_state(root)
    finally:
        catalog.close()


async def test_a_watch_event_confirming_the_old_file_does_not_hold_back_its_restore(
    tmp_path: Path, catalogs: CatalogMaker
) -> None:
    """A folder watch saw a as synced (its event is "unchanged"); a is then restored from a
    backup with an older modification time; a listing reads the restored a and, before it
    writes, the watch's confirming event is applied. The listing's newer version is written:
    a folder watch's time is a modification time, which cannot order the two.

    Checked to fail: with a confirming watch event stamping the event sequence (as a timed
    cloud event does), the listing's row was held back and the old a stayed."""
    root = tmp_path / "bucket"
    root.mkdir()
    restore_with_old_times(root / "a", "synced", age=3600)
    catalog = catalogs()
    try:
        ds, owner = await synced_folder_dataset(catalog, root)
        confirming = event_for(root, "a")
        restore_with_old_times(root / "a", "restored from a backup, longer", age=7200)
        driver = PausingDriver(str(root))
        options = SyncOptions(batch_size=1)
        task = asyncio.create_task(sync_dataset(catalog, ds, driver, options, owner=owner))
        await driver.first_page.get()
        assert apply_events(catalog, [confirming], dataset="ds").counts["unchanged"] == 1
        driver.release.set()
        await task
        apply_events(catalog, [event_for(root, "a")], dataset="ds")  # the restore's own event
        assert catalog_state(catalog) == await bucket_state(root)
    finally:
        catalog.close()


async def test_a_late_event_older_than_the_listed_state_is_stale(
    tmp_path: Path, catalogs: CatalogMaker
) -> None:
    """The other direction: a listing wrote the newer state; an older event arrives late."""

    root = tmp_path / "bucket"
    root.mkdir()
    (root / "a").write_text("current")
    catalog = catalogs()
    try:
        await synced_folder_dataset(catalog, root)
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


def s3_event(kind: EventKind, seconds: float | None, marker: int, **fields: object) -> ObjectEvent:
    """An S3 event for ``raw/a`` at ``T0 + seconds`` (None: no time), sequencer ``marker``."""
    return ObjectEvent(
        kind,
        "s3",
        "bkt",
        "raw/a",
        marker=pad_sequencer(f"{marker:016X}"),
        event_time=None if seconds is None else T0 + timedelta(seconds=seconds),
        **fields,  # type: ignore[arg-type]
    )


async def synced_s3_dataset(catalog: Catalog, keys: list[str]) -> tuple[Dataset, str]:
    """Dataset ``ds`` on s3://bkt/raw/, synced from a listing of ``keys`` (etag E, at T0),
    and the owner of its lease."""
    ds = catalog.create_dataset(
        "ds", "s3://bkt/raw/", DriverConfig(type="s3", bucket="bkt", path="raw"), Filters()
    )
    owner = lease.new_owner()
    with transaction(catalog.db):
        lease.acquire(catalog.db, lease.for_dataset(ds.id), owner)
    listed = {k: ObjectInfo(k, 1, "E", T0) for k in keys}
    await sync_dataset(catalog, ds, SnapshotDriver(listed, False, at=seen_at(1)), owner=owner)
    return ds, owner


async def test_an_identical_re_upload_keeps_a_key_the_listing_saw_gone(
    catalogs: CatalogMaker,
) -> None:
    """a is deleted at T0+1 (its event delayed); a listing at T0+1.5 sees it gone; a is
    uploaded again with the same bytes at T0+2 and that event is applied before the listing
    uses its page; then the delayed delete arrives. The bucket has a, so must the dataset.

    Checked to fail: with a create that confirms the item leaving the event sequence alone
    (as before), the parked delete removed a and the late delete was stale."""
    catalog = catalogs()
    try:
        ds, owner = await synced_s3_dataset(catalog, ["raw/a"])
        driver = SnapshotDriver({}, True, at=seen_at(2))
        task = asyncio.create_task(
            sync_dataset(catalog, ds, driver, SyncOptions(batch_size=1), owner=owner)
        )
        await driver.fetched.wait()
        put = s3_event(EventKind.CREATED, 2, 0x3000, size=1, etag="E")
        assert apply_events(catalog, [put]).counts["unchanged"] == 1
        driver.release.set()
        await task
        late_delete = s3_event(EventKind.DELETED, 1, 0x2000)
        assert apply_events(catalog, [late_delete]).counts["stale"] == 1
        assert catalog_state(catalog) == {"raw/a": (1, "E")}
    finally:
        catalog.close()


class PagedSnapshot(SnapshotDriver):
    """A frozen bucket listed one object per page; stops before its last page until released
    (by then the sync may have decided the keys up to the first page's)."""

    async def list(self, prefix="", start_after=None, end_before=None):  # type: ignore[override]
        page = [o for k, o in sorted(self.objects.items()) if k.startswith(prefix)]
        for obj in page[:-1]:
            yield [obj]
        self.fetched.set()
        await self.release.wait()
        yield page[-1:]


async def test_a_listing_tombstone_keeps_the_marker_for_events_without_a_time(
    catalogs: CatalogMaker,
) -> None:
    """a, b, c synced. a is updated (sequencer m1, an event with no time, as a GCS message
    without one), then deleted at T0+1 (m2). A listing at T0+1.5 decides that a is gone and
    parks it; the delete event is applied meanwhile; the listing applies its deletes; then the
    late update arrives. Its marker is older than the delete's: stale, whatever the listing's
    tombstone holds.

    Checked to fail: with the tombstone clearing the stored marker, the update re-created a."""
    catalog = catalogs()
    try:
        ds, owner = await synced_s3_dataset(catalog, ["raw/a", "raw/b", "raw/c"])
        listed = {k: ObjectInfo(k, 1, "E", T0) for k in ("raw/b", "raw/c")}
        driver = PagedSnapshot(listed, True, at=T0 + timedelta(seconds=1.5))
        task = asyncio.create_task(
            sync_dataset(catalog, ds, driver, SyncOptions(batch_size=1), owner=owner)
        )

        def parked() -> int:
            return catalog.db.execute("SELECT count(*) FROM pending_deletes").fetchone()[0]

        deadline = asyncio.get_running_loop().time() + 60
        while not parked():  # the first page's batch parked a's delete
            assert not task.done() and asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)  # polling a condition, under a deadline
        assert apply_events(catalog, [s3_event(EventKind.DELETED, 1, 0x2000)]).counts == {
            "deleted": 1
        }
        driver.release.set()
        await task
        late_update = s3_event(EventKind.CREATED, None, 0x1000, size=2, etag="F")
        assert apply_events(catalog, [late_update]).counts["stale"] == 1
        assert catalog_state(catalog) == {"raw/b": (1, "E"), "raw/c": (1, "E")}
    finally:
        catalog.close()


async def test_an_event_with_a_newer_marker_but_older_than_a_listing_s_delete_is_stale(
    catalogs: CatalogMaker,
) -> None:
    """a's create event (sequencer m0, T0) was applied; its update (m1, T0+1) and delete (m2,
    T0+2) are delayed; a listing at T0+2.5 deletes a. The late update's marker is newer than
    the stored m0, but the listing showed a gone after it: stale, and a stays gone.

    Checked to fail: with markers deciding alone against a listing's tombstone, the update
    re-created a."""
    catalog = catalogs()
    try:
        ds, owner = await synced_s3_dataset(catalog, ["raw/a"])
        create = s3_event(EventKind.CREATED, 0, 0x1000, size=1, etag="E")
        assert apply_events(catalog, [create]).counts["unchanged"] == 1
        gone = SnapshotDriver({}, False, at=T0 + timedelta(seconds=2.5))
        assert (await sync_dataset(catalog, ds, gone, owner=owner)).counts["deleted"] == 1
        late_update = s3_event(EventKind.CREATED, 1, 0x2000, size=2, etag="F")
        late_delete = s3_event(EventKind.DELETED, 2, 0x3000)
        assert apply_events(catalog, [late_update]).counts["stale"] == 1
        assert apply_events(catalog, [late_delete]).counts["stale"] == 1
        assert catalog_state(catalog) == {}
    finally:
        catalog.close()
