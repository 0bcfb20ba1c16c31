"""Multi-row inserts on sqlite write exactly what a statement per row writes (hypothesis).

``syncd.store.sqlite.insert_rows`` sends the item upserts of a batch (and the event markers'
upserts) several rows per statement instead of ``executemany``'s statement per row. For any
rows, duplicates of one key inside one statement included, and for both upserts (the items'
plain one and the markers' one with CASE and coalesce on conflict), the table it leaves must
equal the table ``executemany`` leaves, from the same starting rows. Statements are made of 3
rows here, so a batch spans several statements and a remainder.
"""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.config import DriverConfig
from syncd.events.apply import _MARKER_UPSERT
from syncd.reconcile.filters import Filters
from syncd.store import sqlite as sqlite_store
from syncd.store.catalog import Catalog
from syncd.store.db import transaction
from syncd.store.sql import UPSERT

KEYS = ["a", "b/c.jpg", "ü"]
TEXT = st.sampled_from(["", "x", "2026-11-20T10:00:00Z", "2026-11-20T10:00:01.5Z"])

ITEM = st.tuples(
    st.just(1),
    st.sampled_from(KEYS),
    TEXT,
    TEXT,
    st.integers(0, 2**63 - 1),
    TEXT,
    st.none() | TEXT,
    TEXT,
    st.none() | TEXT,
    TEXT,
    TEXT,
    st.sampled_from(["{}", '{"content_type_guessed": true}']),
    st.none() | TEXT,
)
MARKER = st.tuples(
    st.just(1),
    st.sampled_from(KEYS),
    st.sampled_from(["", "0A/0", "0B/1"]),
    st.integers(0, 2),
    TEXT,
    st.integers(0, 3),
    st.none() | TEXT,
    st.none() | st.integers(0, 10),
)


def _catalog() -> Catalog:
    catalog = Catalog.open(":memory:")
    catalog.create_dataset("d", "s3://bkt/", DriverConfig(type="s3", bucket="bkt"), Filters())
    return catalog


def _table(catalog: Catalog, table: str) -> list[tuple[object, ...]]:
    return catalog.db.execute(f"SELECT * FROM {table} ORDER BY dataset_id, key").fetchall()


def _both(sql: str, table: str, before: list[tuple], rows: list[tuple]) -> None:
    """Write ``before`` then ``rows`` with ``executemany`` into one catalog and with
    ``insert_rows`` into another; the tables must be equal."""
    expected, actual = _catalog(), _catalog()
    try:
        for catalog, write in (
            (expected, lambda c, r: c.db.conn.executemany(sql, r)),
            (actual, lambda c, r: sqlite_store.insert_rows(c.db.conn, sql, r)),
        ):
            with transaction(catalog.db):
                catalog.db.conn.executemany(sql, before)
                write(catalog, rows)
        assert _table(actual, table) == _table(expected, table)
    finally:
        expected.close()
        actual.close()


@pytest.fixture(autouse=True)
def three_rows_per_statement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "ROWS_PER_STATEMENT", 3)


@settings(max_examples=150, deadline=None)
@given(before=st.lists(ITEM, max_size=3), rows=st.lists(ITEM, max_size=11))
def test_item_upserts_equal_a_statement_per_row(before: list[tuple], rows: list[tuple]) -> None:
    _both(UPSERT, "items", before, rows)


@settings(max_examples=150, deadline=None)
@given(before=st.lists(MARKER, max_size=3), rows=st.lists(MARKER, max_size=11))
def test_marker_upserts_equal_a_statement_per_row(before: list[tuple], rows: list[tuple]) -> None:
    _both(_MARKER_UPSERT, "key_markers", before, rows)


def test_a_row_of_the_wrong_width_is_refused_not_shifted_into_its_neighbours() -> None:
    """A row one value short beside one a value long add up to whole rows (6 values, 3 rows of
    2): sent together they would be written with every value after the gap in the wrong
    column."""
    catalog = _catalog()
    sql = "INSERT INTO counters (name, value) VALUES (?, ?)"
    try:
        with pytest.raises(sqlite3.ProgrammingError), transaction(catalog.db):
            sqlite_store.insert_rows(catalog.db.conn, sql, [("a",), ("b", 1, "c"), ("d", 2)])
        assert catalog.db.execute(
            "SELECT count(*) FROM counters WHERE name IN ('a', 'b', 'd', 1)"
        ).fetchone() == (0,)
    finally:
        catalog.close()


def test_only_an_insert_of_one_row_of_placeholders_is_repeated() -> None:
    assert sqlite_store._many("INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT DO NOTHING", 2) == (
        "INSERT INTO t (a, b) VALUES (?, ?),(?, ?) ON CONFLICT DO NOTHING"
    )
    for sql in ("UPDATE t SET a = ?", "INSERT INTO t (a) VALUES (lower(?))"):
        with pytest.raises(ValueError, match="not an INSERT of one row of placeholders"):
            sqlite_store._many(sql, 2)
