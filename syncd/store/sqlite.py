"""The embedded catalog: one sqlite file in WAL mode (the default store).

sqlite has one writer at a time: :meth:`SqliteDatabase.transaction` takes the file's write lock
up front (``BEGIN IMMEDIATE``), so "read, decide, write" inside it is atomic against every
other process, and :meth:`~syncd.store.sql.Database.lock_writes` has nothing to add.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any, ClassVar

from syncd.errors import UsageError
from syncd.store.sql import UPSERT, Database


class SqliteDatabase(Database):
    """A catalog in a sqlite file (or ``:memory:``)."""

    dialect: ClassVar[str] = "sqlite"

    def __init__(self, path: str, *, busy_timeout: float, write: bool) -> None:
        from syncd.store.db import MIGRATIONS

        self.migrations = MIGRATIONS
        self.path = path
        #: opened to write (a reader's connection never writes the file)
        self.writes = write
        self.url = path
        self.pending_changes = []
        # autocommit mode: transactions are explicit, see transaction()
        self.conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        # the hot paths (a listing page's range read, a batch's upsert) call sqlite directly
        self.execute = self.conn.execute  # type: ignore[method-assign]
        self.conn.execute("PRAGMA foreign_keys = ON")
        if path != ":memory:":
            if write:
                self.conn.execute("PRAGMA journal_mode = wal")
            # durable at each WAL checkpoint, safe on crash
            self.conn.execute("PRAGMA synchronous = NORMAL")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:  # replaced in __init__
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        return self.conn.executemany(sql, rows).rowcount

    @contextmanager
    def transaction(self) -> Iterator[None]:
        # BEGIN IMMEDIATE takes the write lock up front (DDL included, which Python's sqlite3
        # would otherwise run outside any transaction), so a second writer waits instead of
        # failing half-way through
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.flush_changes()  # last: the change log's records, with their cursors
        except BaseException:
            self.pending_changes = []
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def lock_writes(self, *, exclusive: bool) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already made this the only writer."""

    def upsert_items(self, rows: list[tuple[Any, ...]]) -> None:
        insert_rows(self.conn, UPSERT, rows)

    def check_writable(self) -> None:
        """A no-op write: sqlite opens a file it may not write (permissions, an immutable
        flag, a read-only mount) read-only without a word, and says so only at the first
        write, which could be half-way through a sync."""
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        self.conn.execute(f"PRAGMA user_version = {int(version)}")

    def files(self) -> list[str]:
        if self.path == ":memory:":
            return []
        row = self.conn.execute("PRAGMA database_list").fetchone()
        path = row[2] if row else ""
        return [path + suffix for suffix in ("", "-wal", "-shm", "-journal")] if path else []

    def close(self) -> None:
        self.conn.close()


#: rows per statement of :func:`insert_rows`: 100 rows of 13 columns are 1,300 variables, far
#: below sqlite's limit (32,766 since 3.32; 999 before, which 76 rows would reach)
ROWS_PER_STATEMENT = 100 if sqlite3.sqlite_version_info >= (3, 32) else 50


@functools.lru_cache(maxsize=16)
def _many(sql: str, count: int) -> str:
    """``sql`` (``INSERT ... VALUES (?, ...)`` and an optional tail such as ``ON CONFLICT``)
    with its one group of values repeated ``count`` times."""
    head, values, rest = sql.partition(" VALUES (")
    group, close, tail = rest.partition(")")
    if not values or not close or group.replace("?", "").replace(",", "").strip():
        raise ValueError(f"not an INSERT of one row of placeholders: {sql[:60]!r}")
    return f"{head} VALUES " + ",".join([f"({group})"] * count) + tail


def insert_rows(conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """``conn.executemany(sql, rows)`` for an ``INSERT`` of one row of placeholders (an upsert
    too), with the same effect: the rows in order, as if one at a time (sqlite applies a
    multi-row ``VALUES`` row by row, each row's ``ON CONFLICT`` seeing the rows before it).
    Sent :data:`ROWS_PER_STATEMENT` rows per statement: one statement of many rows costs
    sqlite about a third less than a statement run per row (100k item rows: 0.32 -> 0.23 s
    of CPU, bench/README.md)."""
    per = ROWS_PER_STATEMENT
    full = len(rows) - len(rows) % per
    width = sql.count("?")  # the placeholders of the one row
    if full and any(len(r) != width for r in rows):
        # a row of the wrong width would shift its neighbours' values into other columns
        # of a shared statement: executemany refuses it instead (ProgrammingError)
        full = 0
    if full:
        many = _many(sql, per)
        for start in range(0, full, per):
            conn.execute(many, list(chain.from_iterable(rows[start : start + per])))
    if full < len(rows):
        conn.executemany(sql, rows[full:])


def open_sqlite(path: str, *, create: bool, write: bool, busy_timeout: float) -> SqliteDatabase:
    """Open the sqlite catalog at ``path`` (see :func:`syncd.store.db.open_db`)."""
    p = Path(path)
    memory = path == ":memory:"
    if not memory and not create and not p.exists():
        raise UsageError(f"catalog {path!r} does not exist; run `syncd sync` first or pass --db")
    if not memory and p.parent and not p.parent.exists():
        raise UsageError(f"cannot create catalog {path!r}: folder {str(p.parent)!r} does not exist")
    return SqliteDatabase(path, busy_timeout=busy_timeout, write=write)
