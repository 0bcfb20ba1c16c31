"""The catalog's bulk write path, on both stores: what PostgreSQL's pipelined batch (item rows as
one JSON parameter merged by one statement, change-log cursors computed by the server, errors
surfacing at the commit) must keep exactly as sqlite does.

* every item column round-trips byte for byte, whatever the text holds (quotes, backslashes,
  control characters, non-ASCII, placeholders), and an update keeps ``created_at`` and the
  user's metadata and tags;
* several change groups in one transaction get consecutive cursors, in order;
* a statement failing inside a transaction leaves nothing of it (items, change log, counter),
  and the connection works afterwards;
* a ``rowcount`` read inside a transaction is the server's answer (a lease not held is not
  renewed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from providers.config import DriverConfig
from syncd.reconcile.filters import Filters
from syncd.store import changes, lease
from syncd.store.catalog import Catalog
from syncd.store.db import transaction
from syncd.store.sql import item_rows
from tests.conftest import CatalogMaker

#: text a bulk encoder could get wrong: JSON and COPY escapes, SQL quoting, psycopg's and
#: sqlite's placeholders, control characters, non-ASCII of each UTF-8 length
AWKWARD = [
    'q"uote',
    "back\\slash",
    "new\nline",
    "tab\there",
    "cr\rhere",
    "ctl\x01\x1f",
    "it's",
    "%s %(x)s ? $1",
    "{}[],:",
    "é",
    "日本",
    "\U0001f600",
    "\\N",
    "null",
]


def dataset(catalog: Catalog):
    return catalog.create_dataset(
        "ds", "s3://bkt/", DriverConfig(type="s3", bucket="bkt"), Filters()
    )


def row(ds_id: int, key: str, n: int, *, stamp: str = "2026-01-01T00:00:00Z") -> tuple:
    """An item row (ITEM_COLUMNS order) whose every text column carries ``key``."""
    meta = json.dumps({"provider": {key: key}, "content_type_guessed": True})
    return (
        ds_id, key, "/" + key, f"s3://bkt/{key}", 2**62 + n, f"etag {key}", f"type/{key}",
        "2026-01-01T00:00:00Z", f"v {key}" if n % 2 else None, stamp, stamp, meta,
        None if n % 3 else f"md5 {key}",
    )  # fmt: skip


def stored(catalog: Catalog, ds_id: int, keys: list[str]) -> list[tuple]:
    """The rows as stored, the metadata parsed (PostgreSQL's jsonb prints its own spacing)."""
    return [(*r[:11], json.loads(r[11]), *r[12:]) for r in item_rows(catalog.db, ds_id, keys)]


def test_item_rows_round_trip_exactly_through_the_bulk_write(catalogs: CatalogMaker) -> None:
    catalog = catalogs()
    ds = dataset(catalog)
    keys = sorted(f"{text}/{n}" for n, text in enumerate(AWKWARD))
    many = [row(ds.id, k, n) for n, k in enumerate(keys)]
    # a batch of one and one of several (PostgreSQL once took two paths by size)
    with transaction(catalog.db):
        catalog.write_rows(ds.id, many[:1], source="listing", kinds=["created"])
    with transaction(catalog.db):
        catalog.write_rows(ds.id, many[1:], source="listing", kinds=["created"] * len(keys[1:]))
    want = [(*r[:11], json.loads(r[11]), *r[12:]) for r in many]
    assert stored(catalog, ds.id, keys) == want
    # the user's metadata and tags, set by an edit, survive a re-sync's update of every row;
    # the update keeps created_at and takes the rest
    with transaction(catalog.db):
        catalog.db.execute(
            "UPDATE items SET user_metadata = ?, tags = ? WHERE dataset_id = ?",
            ['{"owner": "me"}', '["keep"]', ds.id],
        )
    later = [row(ds.id, k, n + 1, stamp="2026-02-02T00:00:00Z") for n, k in enumerate(keys)]
    with transaction(catalog.db):
        catalog.write_rows(ds.id, later, source="listing", kinds=["updated"] * len(keys))
    got = stored(catalog, ds.id, keys)
    assert got == [
        (*r[:9], m[9], *r[10:11], json.loads(r[11]), *r[12:])
        for r, m in zip(later, want, strict=True)
    ]
    extra = catalog.db.execute(
        "SELECT DISTINCT user_metadata, tags FROM items WHERE dataset_id = ?", [ds.id]
    ).fetchall()
    assert [(json.loads(u), json.loads(t)) for u, t in extra] == [({"owner": "me"}, ["keep"])]


def test_change_groups_of_one_transaction_get_consecutive_cursors(catalogs: CatalogMaker) -> None:
    catalog = catalogs()
    ds = dataset(catalog)
    with transaction(catalog.db):
        catalog.write_rows(ds.id, [row(ds.id, "a", 1)], source="listing", kinds=["created"])
    with transaction(catalog.db):
        # three groups in one transaction: their records follow each other, in this order
        catalog.write_rows(
            ds.id, [row(ds.id, "b", 1), row(ds.id, "c", 2)], source="listing",
            kinds=["created", "created"],
        )  # fmt: skip
        catalog.delete_items(ds.id, ["a"], source="listing")
        catalog.write_rows(ds.id, [row(ds.id, "b", 3)], source="event", kinds=["updated"])
    got = [(c.cursor, c.kind, c.key, c.source) for c in changes.read(catalog.db, after=0)]
    assert got == [
        (1, "created", "a", "listing"),
        (2, "created", "b", "listing"),
        (3, "created", "c", "listing"),
        (4, "deleted", "a", "listing"),
        (5, "updated", "b", "event"),
    ]
    assert changes.head(catalog.db) == 5


def test_a_failing_statement_leaves_nothing_of_its_transaction(catalogs: CatalogMaker) -> None:
    catalog = catalogs()
    ds = dataset(catalog)
    with pytest.raises(Exception, match="no_such_table"), transaction(catalog.db):
        catalog.write_rows(ds.id, [row(ds.id, "a", 1)], source="listing", kinds=["created"])
        # PostgreSQL reports it at the commit (pipelined), sqlite at once: both roll back
        catalog.db.execute("INSERT INTO no_such_table VALUES (1)")
    assert item_rows(catalog.db, ds.id, ["a"]) == []
    assert changes.read(catalog.db, after=0) == []
    assert changes.head(catalog.db) == 0
    # the connection is usable again
    with transaction(catalog.db):
        catalog.write_rows(ds.id, [row(ds.id, "a", 1)], source="listing", kinds=["created"])
    assert [c.cursor for c in changes.read(catalog.db, after=0)] == [1]


def test_a_row_count_inside_a_transaction_is_the_servers(catalogs: CatalogMaker) -> None:
    catalog = catalogs()
    ds = dataset(catalog)
    name = lease.for_dataset(ds.id)
    with transaction(catalog.db):
        assert lease.acquire(catalog.db, name, "me:1:a") is None
    with transaction(catalog.db):
        assert lease.renew(catalog.db, name, "me:1:a")
        assert not lease.renew(catalog.db, name, "other:2:b")
        assert catalog.delete_items(ds.id, ["nothing"]) == 0
        catalog.write_rows(ds.id, [row(ds.id, "a", 1), row(ds.id, "b", 2)])
        assert catalog.delete_items(ds.id, ["a", "b", "c"]) == 2


def test_rows_recorded_as_created_whose_key_exists_meanwhile_are_merged(
    catalogs: CatalogMaker,
) -> None:
    """A batch the writer records as all ``created`` (its listing saw the keys absent) while
    one key was written meanwhile by a writer that leaves no event marker (a push): the row
    updates the item (``created_at`` kept), the others are inserted, no error. On PostgreSQL
    this is the plain insert's fallback to the merge (``syncd_insert_or_merge``)."""
    catalog = catalogs()
    ds = dataset(catalog)
    with transaction(catalog.db):
        catalog.write_rows(ds.id, [row(ds.id, "b", 1)], source="push", kinds=["created"])
    later = "2026-03-03T00:00:00Z"
    batch = [row(ds.id, k, n, stamp=later) for n, k in enumerate(["a", "b", "c"], start=5)]
    with transaction(catalog.db):
        catalog.write_rows(ds.id, batch, source="listing", kinds=["created"] * 3)
    got = stored(catalog, ds.id, ["a", "b", "c"])
    want = [(*r[:11], json.loads(r[11]), *r[12:]) for r in batch]
    want[1] = (*want[1][:9], "2026-01-01T00:00:00Z", *want[1][10:])  # b's first sighting
    assert got == want
    assert [c.key for c in changes.read(catalog.db, after=0)] == ["b", "a", "b", "c"]


@pytest.mark.parametrize("kind", ["created", "updated"])
def test_items_of_a_dataset_that_does_not_exist_are_refused(
    catalogs: CatalogMaker, kind: str
) -> None:
    """What the items' foreign key guaranteed, on both stores and both write paths: a row
    naming a dataset that does not exist fails the transaction, which leaves nothing."""
    catalog = catalogs()
    ds = dataset(catalog)
    with pytest.raises(Exception, match=r"(?i)foreign key|violates"), transaction(catalog.db):
        catalog.write_rows(ds.id, [row(ds.id, "a", 1)], source="listing", kinds=[kind])
        catalog.write_rows(ds.id + 1, [row(ds.id + 1, "x", 1)], source="listing", kinds=[kind])
    assert catalog.db.execute("SELECT count(*) FROM items").fetchone()[0] == 0
    assert changes.head(catalog.db) == 0
    # deleting a dataset that still has items is refused too
    with transaction(catalog.db):
        catalog.write_rows(ds.id, [row(ds.id, "a", 1)], source="listing", kinds=[kind])
    with pytest.raises(Exception, match=r"(?i)foreign key|violates"), transaction(catalog.db):
        catalog.db.execute("DELETE FROM datasets WHERE id = ?", [ds.id])
    assert [d.name for d in catalog.list_datasets()] == ["ds"]


DEADLINE = 60.0


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)  # polling a condition, under a deadline


def waits_on_a_lock(observer: psycopg.Connection, pid: int) -> bool:
    """Whether the backend ``pid`` is waiting for a lock (seen from ``observer``)."""
    row = observer.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
        [pid],
    ).fetchone()
    return bool(row and row[0])


def delete_dataset(conn: psycopg.Connection, ds_id: int) -> None:
    """What ``Catalog.drop_dataset`` does to the items and the dataset row, in one transaction."""
    with conn.transaction():
        conn.execute("DELETE FROM items WHERE dataset_id = %s", [ds_id])
        conn.execute("DELETE FROM datasets WHERE id = %s", [ds_id])


@pytest.mark.parametrize("kind", ["created", "updated"])
def test_a_dataset_deleted_while_its_items_are_written_is_never_left_with_orphans(
    postgres_url: str, kind: str
) -> None:
    """PostgreSQL, two connections, each order of the race between a writer of a dataset's
    items and a delete of the dataset (items first, then the row, as ``drop_dataset``):

    * the writer first: the delete waits for it, then fails (the writer's items exist), and
      the dataset and its items stay;
    * the delete first: the writer waits for it, then fails, and writes nothing.

    The foreign key did this with a check per row; the statement-level guard
    (``syncd.store.pg._ITEMS_DATASET_GUARD``) must do the same on both write paths (a batch of
    new keys, a merge)."""
    from syncd.store import pg as pg_store

    catalog = Catalog.open(postgres_url)
    deleter = psycopg.connect(postgres_url, autocommit=True)
    observer = psycopg.connect(postgres_url, autocommit=True)
    deleter_pid = deleter.info.backend_pid
    writer_pid = catalog.db.conn.info.backend_pid
    try:
        ds = dataset(catalog)
        with ThreadPoolExecutor(1) as pool:
            # the writer first
            with transaction(catalog.db):
                catalog.write_rows(ds.id, [row(ds.id, "a", 1)], source="listing", kinds=[kind])
                catalog.db.execute("SELECT 1").fetchone()  # the pipelined write has run
                deleting = pool.submit(delete_dataset, deleter, ds.id)
                wait_for(
                    lambda: deleting.done() or waits_on_a_lock(observer, deleter_pid),
                    "the delete to wait for the writer",
                )
            with pytest.raises(psycopg.errors.ForeignKeyViolation):
                deleting.result(timeout=DEADLINE)
            assert [d.name for d in catalog.list_datasets()] == ["ds"]
            assert [r[1] for r in item_rows(catalog.db, ds.id, ["a"])] == ["a"]

            # the delete first
            def write() -> None:
                with transaction(catalog.db):
                    catalog.write_rows(ds.id, [row(ds.id, "b", 2)], source="listing", kinds=[kind])

            with deleter.transaction():
                delete_dataset(deleter, ds.id)
                writing = pool.submit(write)
                wait_for(
                    lambda: writing.done() or waits_on_a_lock(observer, writer_pid),
                    "the writer to wait for the delete",
                )
            with pytest.raises(psycopg.errors.ForeignKeyViolation):
                writing.result(timeout=DEADLINE)
            assert catalog.list_datasets() == []
            assert observer.execute("SELECT count(*) FROM items").fetchone()[0] == 0
    finally:
        deleter.close()
        observer.close()
        catalog.close()
        pg_store.close_pools()
