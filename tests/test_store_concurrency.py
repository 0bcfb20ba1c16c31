"""Two stores on one catalog apply conflicting events and syncs in every order; the newer state
wins every time (issue 13).

Two :class:`~syncd.store.catalog.Catalog` objects on one database, each on its own thread (as
two workers would be), carry the two sides of a conflict about one key: two events, or an event
and a sync whose listing saw another state of the bucket. Each side is stopped between what
it reads and what it writes:

* an event batch inside its transaction, after it read the key's stored state and before it
  writes the key (its ``INSERT INTO key_markers``);
* a sync after the provider answered its listing page and before it uses the page.

A schedule of four steps (each side's *read* and *write*) orders the two sides: one after the
other, and the other side's whole transaction between one side's read and write. Where the
store makes the second side wait for the first (sqlite's single writer; a PostgreSQL lock),
the schedule notes that the side is blocked and goes on: the store decided the order, and the
result must be the same. Steps wait on events and conditions, never on time.

Histories are those of :mod:`tests.test_events_vs_listing` (op ``i`` at ``T0 + i`` seconds,
etag ``etag-i``); the dataset was synced at op 0.

A listing of a newer version wins over an older event that commits between the listing's
read and its write (the write guard compares the listed version's time with the event's). A
listing that saw a key gone wins over an older event the same way: each parked delete keeps
when its page was requested, on the provider's clock (here the history's: after the listed
op, before the next), and a delete the listing applies leaves a tombstone with that time, so
an older event delivered afterwards is stale.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from providers.config import DriverConfig
from syncd.events.apply import apply_events
from syncd.reconcile.filters import Filters
from syncd.reconcile.sync import SyncOptions, sync_dataset
from syncd.store import lease
from syncd.store.catalog import Catalog
from syncd.store.db import transaction
from tests.conftest import STORES, catalog_state
from tests.test_events_vs_listing import event_of, play, snapshot
from tests.waiting import wait_for

KEY = "raw/a"
#: how long any one step may take on a loaded machine before the test gives up
DEADLINE = 120.0


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where both stores' catalog lives: each store implementation in turn (a fresh sqlite
    file; a fresh PostgreSQL database)."""
    if request.param == "sqlite":
        yield str(tmp_path / "catalog.db")
        return
    yield request.getfixturevalue("postgres_url")
    from syncd.store import pg as pg_store

    pg_store.close_pools()  # before the database is dropped


# -- the two stores, each on its own thread ---------------------------------------------------


class Store:
    """A catalog opened and used on one thread of its own (a catalog connection is not
    thread-safe; sqlite's refuse other threads)."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.thread = ThreadPoolExecutor(1, thread_name_prefix=name)
        self.catalog: Catalog = self.thread.submit(Catalog.open, url).result()
        self.dialect = getattr(self.catalog.db, "dialect", "sqlite")
        self.backend_pid: int | None = None
        if self.dialect == "postgresql":
            self.backend_pid = self.call(
                lambda c: c.db.execute("SELECT pg_backend_pid()").fetchone()[0]
            )

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self.thread.submit(fn, self.catalog, *args)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.submit(fn, *args).result(timeout=DEADLINE)

    def close(self) -> None:
        self.thread.submit(self.catalog.close).result(timeout=DEADLINE)
        self.thread.shutdown()


@pytest.fixture
def stores(store_url: str) -> Iterator[tuple[Store, Store]]:
    """Two stores on one fresh catalog with dataset ``ds`` (s3://bkt/raw/) created."""
    first = Store(store_url, "store-a")
    try:
        first.call(
            lambda c: c.create_dataset(
                "ds", "s3://bkt/raw/", DriverConfig(type="s3", bucket="bkt", path="raw"), Filters()
            )
        )
        second = Store(store_url, "store-b")
        try:
            yield first, second
        finally:
            second.close()
    finally:
        first.close()


# -- the two sides of a conflict ---------------------------------------------------------------


@dataclass
class Gate:
    """Where a side stops between its read and its write, until the schedule lets it go."""

    reached: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)

    def __call__(self) -> None:
        self.reached.set()
        if not self.go.wait(DEADLINE):
            raise TimeoutError("the schedule never let this side write")


class GatedDatabase:
    """The catalog's database, stopping at ``gate`` before the first statement (``execute``
    or ``executemany``) that starts with ``statement``; everything else passes through
    untouched."""

    def __init__(self, inner: Any, statement: str, gate: Gate) -> None:
        self._inner = inner
        self._statement = statement
        self._gate = gate
        self._fired = False

    def _maybe_stop(self, sql: str) -> None:
        if not self._fired and sql.lstrip().startswith(self._statement):
            self._fired = True
            self._gate()

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        self._maybe_stop(sql)
        return self._inner.execute(sql, *args, **kwargs)

    def executemany(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        # an event batch writes its markers with one executemany (syncd.events.apply)
        self._maybe_stop(sql)
        return self._inner.executemany(sql, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def apply_gated(catalog: Catalog, op: int, ops: list, marked: bool, gate: Gate) -> str:
    """Apply the event of op ``op``, stopping before the key's write; returns its outcome."""
    key, size = ops[op]
    real = catalog.db
    catalog.db = GatedDatabase(real, "INSERT INTO key_markers", gate)
    try:
        counts = apply_events(catalog, [event_of(op, key, size, marked)]).counts
    finally:
        catalog.db = real
    return next(iter(counts))  # created, updated, deleted, unchanged or stale


def sync_gated(catalog: Catalog, upto: int, ops: list, gate: Gate | None) -> str:
    """Sync the dataset from a listing of the bucket after the first ``upto`` ops, stopping
    (with ``gate``) after the provider answered and before the sync uses the page."""
    ds = catalog.get_dataset("ds")
    owner = lease.new_owner()
    name = lease.for_dataset(ds.id)
    with transaction(catalog.db):
        assert lease.acquire(catalog.db, name, owner) is None

    async def run() -> str:
        driver = snapshot(ops, upto, pause=gate is not None)
        task = asyncio.create_task(
            sync_dataset(catalog, ds, driver, SyncOptions(batch_size=1), owner=owner)
        )
        if gate is not None:
            await driver.fetched.wait()
            await asyncio.to_thread(gate)  # the schedule may run the other side now
            driver.release.set()
        return (await task).status

    try:
        return asyncio.run(run())
    finally:
        with transaction(catalog.db):
            lease.release(catalog.db, name, owner)


@dataclass(frozen=True)
class Side:
    """An event of op ``op``, or a sync whose listing saw the bucket after op ``op``."""

    kind: str  # "event" or "listing"
    op: int


@dataclass
class Running:
    """One side on its store: where it is in its read/write."""

    side: Side
    store: Store
    gate: Gate = field(default_factory=Gate)
    future: Future | None = None

    @property
    def holds_transaction(self) -> bool:
        """Stopped inside a write transaction (an event batch; a sync stops between them)."""
        return (
            self.side.kind == "event"
            and self.gate.reached.is_set()
            and not self.gate.go.is_set()
            and not self.done
        )

    @property
    def done(self) -> bool:
        return self.future is not None and self.future.done()

    def start(self, ops: list, marked: bool) -> None:
        if self.side.kind == "event":
            self.future = self.store.submit(apply_gated, self.side.op, ops, marked, self.gate)
        else:
            self.future = self.store.submit(sync_gated, self.side.op + 1, ops, self.gate)


def waits_on_pg_lock(observer: Catalog, store: Store) -> bool:
    """Whether ``store``'s PostgreSQL connection is waiting for a lock (seen from
    ``observer``, a connection of its own)."""
    row = observer.db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = ? AND wait_event_type = 'Lock'",
        [store.backend_pid],
    ).fetchone()
    return bool(row[0])


def waits_on_a_lock(side: Running, other: Running, observer: Catalog | None) -> bool:
    """Whether ``side`` is held up by the store until ``other`` commits."""
    if side.future is None or side.done:
        return False
    if side.store.dialect == "sqlite":
        # one writer at a time: while the other side holds a write transaction, this side
        # cannot take one, and it must before it reads (an event) or writes (a sync)
        return other.holds_transaction
    assert observer is not None
    return waits_on_pg_lock(observer, side.store)


def run_schedule(
    stores: tuple[Store, Store],
    sides: tuple[Side, Side],
    schedule: str,
    ops: list,
    marked: bool,
) -> list[str]:
    """Play ``schedule`` (steps like ``"X.read Y.read Y.write X.write"``; X is the first
    side, on the first store) and return each side's outcome."""
    running = {"X": Running(sides[0], stores[0]), "Y": Running(sides[1], stores[1])}
    observer = Catalog.open(stores[0].url) if stores[0].dialect == "postgresql" else None
    try:
        for step in schedule.split():
            name, what = step.split(".")
            side = running[name]
            other = running["Y" if name == "X" else "X"]

            def progressed(side: Running = side, other: Running = other, what: str = what) -> bool:
                if what == "read" and side.gate.reached.is_set():
                    return True
                return side.done or waits_on_a_lock(side, other, observer)

            if what == "read":
                side.start(ops, marked)
            else:
                side.gate.go.set()
            wait_for(progressed, f"{step} of {schedule!r}")
        for side in running.values():
            side.gate.go.set()  # a side blocked at its read reaches its gate later
        return [side.future.result(timeout=DEADLINE) for side in running.values()]
    finally:
        for side in running.values():
            side.gate.go.set()
        if observer is not None:
            observer.close()


# -- the conflicts -----------------------------------------------------------------------------

UPDATES = [(KEY, 1), (KEY, 2), (KEY, 3)]
CREATE_THEN_DELETE = [(KEY, 1), (KEY, 2), (KEY, None)]
DELETE_THEN_CREATE = [(KEY, 1), (KEY, None), (KEY, 3)]

LATE_UPDATE = "an old event delivered late vs a listing of the newer version"
LATE_UPDATE_AFTER_DELETE = "an old update delivered late vs a listing that saw the key deleted"

#: (history, older side, newer side)
CONFLICTS = {
    "two updates": (UPDATES, Side("event", 1), Side("event", 2)),
    "an update then a delete": (CREATE_THEN_DELETE, Side("event", 1), Side("event", 2)),
    "a delete then a re-create": (DELETE_THEN_CREATE, Side("event", 1), Side("event", 2)),
    "a listing of an older version vs an update": (
        UPDATES,
        Side("listing", 1),
        Side("event", 2),
    ),
    "a listing of a live key vs its delete": (
        CREATE_THEN_DELETE,
        Side("listing", 1),
        Side("event", 2),
    ),
    "a listing that missed a key vs its re-create": (
        DELETE_THEN_CREATE,
        Side("listing", 1),
        Side("event", 2),
    ),
    LATE_UPDATE: (
        UPDATES,
        Side("event", 1),
        Side("listing", 2),
    ),
    LATE_UPDATE_AFTER_DELETE: (
        CREATE_THEN_DELETE,
        Side("event", 1),
        Side("listing", 2),
    ),
}

#: every order of two events (delivery is unordered): X older, Y newer
EVENT_SCHEDULES = [
    "X.read X.write Y.read Y.write",
    "Y.read Y.write X.read X.write",
    "X.read Y.read Y.write X.write",
    "Y.read X.read X.write Y.write",
]
#: a listing (X) that saw an older state than an event (Y): the listing read before the
#: change the event reports happened, so it reads first
OLDER_LISTING_SCHEDULES = [
    "X.read X.write Y.read Y.write",
    "X.read Y.read Y.write X.write",
    "X.read Y.read X.write Y.write",
]
#: an old event (X) delivered at any time around a listing of the newer state (Y)
LATE_EVENT_SCHEDULES = EVENT_SCHEDULES


def schedules_of(conflict: str) -> list[str]:
    _, older, newer = CONFLICTS[conflict]
    if older.kind == "listing":
        return OLDER_LISTING_SCHEDULES
    if newer.kind == "listing":
        return LATE_EVENT_SCHEDULES
    return EVENT_SCHEDULES


CASES = [
    pytest.param(conflict, schedule, id=f"{conflict}: {schedule}")
    for conflict in CONFLICTS
    for schedule in schedules_of(conflict)
]


@pytest.mark.parametrize("marked", [True, False], ids=["markers", "times"])
@pytest.mark.parametrize(("conflict", "schedule"), CASES)
def test_the_newer_state_wins_whatever_the_order(
    stores: tuple[Store, Store],
    conflict: str,
    schedule: str,
    marked: bool,
) -> None:
    """Events carry S3 sequencers (``markers``) or only their times (``times``)."""
    ops, older, newer = CONFLICTS[conflict]
    first, second = stores
    assert first.call(sync_gated, 1, ops, None) == "completed"  # the dataset as of op 0
    assert first.call(catalog_state) == {KEY: (1, "etag-0")}

    outcomes = run_schedule(stores, (older, newer), schedule, ops, marked)

    newest = play(ops, newer.op + 1)
    expected = {k: (o.size, o.etag) for k, o in newest.items()}
    assert second.call(catalog_state) == expected, outcomes
    assert first.call(catalog_state) == expected, outcomes


def test_two_stores_creating_one_dataset_at_once_make_one(store_url: str) -> None:
    """Two workers start together and both create dataset ``new``: the first is stopped after
    its existence check, before its insert, while the second runs. Exactly one creates it; the
    other gets the one-line "already exists" error (UsageError), on both stores.

    Checked to fail: without ``lock_writes`` in ``Catalog.create_dataset``, on PostgreSQL the
    second also finds no dataset and commits first, and the first then fails on a unique key
    with a raw psycopg ``UniqueViolation`` (``drivers_name_key``)."""
    from syncd.errors import UsageError

    cfg = DriverConfig(type="s3", bucket="bkt", path="new")
    first, second = Store(store_url, "store-a"), Store(store_url, "store-b")
    gate = Gate()

    def create(catalog: Catalog, gated: bool) -> str:
        real = catalog.db
        if gated:
            catalog.db = GatedDatabase(real, "INSERT INTO datasets", gate)
        try:
            catalog.create_dataset("new", "s3://bkt/new/", cfg, Filters())
            return "created"
        except UsageError as exc:
            return str(exc)
        finally:
            catalog.db = real

    try:
        one = first.submit(create, True)
        wait_for(gate.reached.is_set, "the first store's existence check")
        other = second.submit(create, False)
        if second.dialect == "postgresql":
            observer = Catalog.open(store_url)
            try:
                wait_for(
                    lambda: other.done() or waits_on_pg_lock(observer, second),
                    "the second store to finish or wait",
                )
            finally:
                observer.close()
        # sqlite: the second waits for the first's write transaction by itself
        gate.go.set()
        outcomes = sorted([one.result(timeout=DEADLINE), other.result(timeout=DEADLINE)])
        assert outcomes == ["created", "dataset 'new' already exists"]
        assert [d.name for d in first.call(lambda c: c.list_datasets())] == ["new"]
    finally:
        gate.go.set()
        second.close()
        first.close()
