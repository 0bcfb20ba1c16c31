"""The catalog's connection: one small interface, two implementations (sqlite, PostgreSQL).

Everything above the store (:mod:`syncd.store.catalog`, the checkpoint, leases, events, the
daemon, the API) talks to a :class:`Database` and never knows which one it has. SQL is written
once, portably (``?`` placeholders, ``ON CONFLICT`` upserts, ``RETURNING``, times as ISO text,
key columns compared in code point order); what differs between the two engines is behind the
handful of methods below:

* :meth:`Database.transaction`: one write transaction (sqlite takes the file's write lock up
  front; PostgreSQL runs READ COMMITTED and relies on row locks, conditional writes and
  :meth:`Database.lock_writes`);
* :meth:`Database.upsert_items`: a batch of item rows in one go (sqlite multi-row
  ``INSERT`` statements of 100 rows, ``SqliteDatabase.insert_rows``;
  PostgreSQL one merge statement whose rows travel as one JSON parameter); the newer-state-wins
  guard is decided before, on the rows' markers (:meth:`syncd.store.catalog.Catalog.write_rows`),
  so the rows written are known for the change log;
* :meth:`Database.lock_writes`: on PostgreSQL, an event batch (which decides in Python from
  what it reads) excludes the sync batches and deletes that could race it, which share the
  lock among themselves; sqlite's single writer makes this a no-op;
* :meth:`Database.files`: the files the catalog lives in (a pull must never delete them).

Implementations: :class:`syncd.store.sqlite.SqliteDatabase` and
:class:`syncd.store.pg.PostgresDatabase`, chosen by :func:`syncd.store.db.open_db` from the
catalog's URL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, NamedTuple
from urllib.parse import urlsplit, urlunsplit

#: facts about the catalog itself, one value per key (``syncd_version``: the syncd that last
#: migrated it); the same statement on both stores (migration ``0012_catalog_info``)
CATALOG_INFO = "CREATE TABLE catalog_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)"

#: the columns of ``items`` in the order item rows carry them (see Catalog.write_rows)
ITEM_COLUMNS = (
    "dataset_id",
    "key",
    "filename",
    "uri",
    "size",
    "etag",
    "content_type",
    "mtime",
    "version",
    "created_at",
    "updated_at",
    "metadata",
    "md5",
)
#: an update of an item keeps its identity and the time it was first seen
ITEM_UPDATES = ", ".join(
    f"{c} = excluded.{c}" for c in ITEM_COLUMNS if c not in ("dataset_id", "key", "created_at")
)

#: one item row: insert, or update all but its identity and first-seen time
UPSERT = (
    f"INSERT INTO items ({', '.join(ITEM_COLUMNS)}) VALUES ({', '.join('?' * len(ITEM_COLUMNS))})"
    f" ON CONFLICT (dataset_id, key) DO UPDATE SET {ITEM_UPDATES}"
)
#: an event changed the key after a listing page was requested (a later sequence) and is not
#: older than what the page showed: parameters dataset_id, key, the page's sequence, and the
#: time in microseconds the page's state is from (a listed version's modification time; for a
#: key the page showed gone, when it was requested: :class:`Seen`). An event without a time
#: is never older.
NEWER_EVENT = (
    "EXISTS (SELECT 1 FROM key_markers km WHERE km.dataset_id = ? AND km.key = ?"
    " AND km.seq > ? AND (km.event_us IS NULL OR km.event_us >= ?))"
)


class Seen(NamedTuple):
    """What a listing page knew when it was requested: the catalog's event sequence ``seq``
    (an event batch applied later has a larger one) and ``us``, when the page shows the bucket
    on the provider's clock (microseconds since the epoch,
    :meth:`providers.base.Driver.observed_at`). A key the page shows gone is deleted unless an
    event with a later sequence is stamped at or after ``us``."""

    seq: int
    us: int

    def older(self, other: Seen) -> Seen:
        """What both knew: the smaller sequence and the earlier time."""
        return Seen(min(self.seq, other.seq), min(self.us, other.us))


#: a page that knew nothing: every event counts as newer (rows parked before the time was kept)
NEVER = Seen(0, 0)
#: where an item row holds its ``mtime``
MTIME = ITEM_COLUMNS.index("mtime")


class Database(ABC):
    """One connection to a catalog. Not thread-safe: one per thread (or task).

    ``execute`` and ``executemany`` take SQL with ``?`` placeholders; outside
    :meth:`transaction` each statement commits by itself.
    """

    #: ``"sqlite"`` or ``"postgresql"``
    dialect: ClassVar[str]
    #: where the catalog is, safe to print (no password)
    url: str
    #: the named migrations of this engine, in order (see :func:`syncd.store.db.migrate`)
    migrations: list[tuple[str, list[str]]]
    #: a sync's writes per batch, one transaction each, unless its options say (at most this
    #: many decided changes are redone after a crash; a batch is committed sooner when the
    #: listing keeps the writer waiting, syncd.reconcile.sync.STALL). On sqlite each commit
    #: costs its WAL frames and the run's progress row: 5,000 rather than 500 took 6% off the
    #: CPU of a 100k-file first sync; PostgreSQL's is 2,000 (its own figures, pg.py)
    sync_batch: ClassVar[int] = 5000

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; a cursor with ``fetchone``, ``fetchall`` and ``rowcount``."""

    @abstractmethod
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run one statement per row; the number of rows it changed in all."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """One write transaction: every statement of the block lands, or none does.
        Transactions do not nest."""

    @abstractmethod
    def upsert_items(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert or update item rows (tuples in :data:`ITEM_COLUMNS` order, no two with the
        same key); an update keeps the stored ``created_at``. In the caller's transaction."""

    @abstractmethod
    def lock_writes(self, *, exclusive: bool) -> None:
        """Order this transaction against concurrent ones on other connections: an event
        batch takes it ``exclusive``, sync batches and parked deletes shared. Called first
        thing in the transaction. A no-op where the engine has one writer at a time."""

    def files(self) -> list[str]:
        """The local files that hold the catalog (empty for a server)."""
        return []

    # -- the change log (syncd.store.changes) ----------------------------------------------

    #: change records of the open transaction, written by :meth:`flush_changes` at commit, in
    #: groups: ``(kinds, source, at, rows, undo)`` (``undo``: the group's snapshot undo
    #: entries or None, :func:`syncd.store.snapshots.capture`) with ``kinds`` one per row (or one for all) and
    #: each row an item row in :data:`ITEM_COLUMNS` order (``dataset_id`` first); a removed
    #: dataset is ``("dataset_removed", source, at, [(dataset_id, name)])``
    pending_changes: list[tuple[Any, ...]]

    def record_changes(
        self, kinds: str | list[str], source: str, at: str, rows: list[tuple[Any, ...]]
    ) -> None:
        """Buffer change records for the open transaction (see :data:`pending_changes`).
        Called *before* the rows are written: while a dataset has snapshots, the states the
        rows replace are read here and kept (:func:`syncd.store.snapshots.capture`)."""
        if rows:
            undo = None
            if kinds != "dataset_removed":
                from syncd.store.snapshots import capture

                undo = capture(self, rows)
            self.pending_changes.append((kinds, source, at, rows, undo))

    def flush_changes(self) -> None:
        """Give the buffered records their cursors and write them, one row per group. The
        transaction calls it as its last statement before ``COMMIT``: the ``change_cursor``
        row it updates stays locked until then, so cursors commit in cursor order (see
        syncd.store.changes)."""
        if not self.pending_changes:
            return
        from syncd.store.changes import INSERT, pack

        groups, self.pending_changes = self.pending_changes, []
        total = sum(len(g[3]) for g in groups)
        end = int(
            self.execute(
                "UPDATE counters SET value = value + ? WHERE name = 'change_cursor'"
                " RETURNING value",
                [total],
            ).fetchone()[0]
        )
        cursor = end - total + 1
        for kinds, source, at, rows, undo in groups:
            if undo:  # what the group replaced, for the dataset's snapshots
                from syncd.store.snapshots import write_undo

                write_undo(self, cursor, undo)
            for dataset_id, kind_letters, name, entries, n in pack(kinds, rows):
                self.execute(
                    INSERT,
                    [cursor, cursor + n - 1, source, at, dataset_id, name, kind_letters, entries],
                )
                cursor += n

    @abstractmethod
    def close(self) -> None:
        """Give the connection back; the object is unusable afterwards."""


def display_url(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


#: keys per query of :func:`select_keys`: under sqlite's oldest variable limit (999)
IN_KEYS = 500


def select_keys(
    db: Database,
    columns: str,
    table: str,
    dataset_id: int,
    keys: list[str],
    *,
    where: str = "",
    args: Sequence[Any] = (),
) -> list[tuple[Any, ...]]:
    """``SELECT columns`` (naming the table ``t``) of ``table``'s rows of the dataset whose key
    is one of ``keys``, plus ``where`` (terms starting `` AND``, with ``args``), in key order.

    The keys are a ``VALUES`` list joined to the table, so each is one primary-key lookup on
    both stores: an ``IN (...)`` list let PostgreSQL's planner, with no statistics yet for a
    freshly loaded table, read every row of the dataset per query (42 ms against 0.7 ms for
    500 keys of 300,000; a 1% churn re-sync of 1M items took 1.9x as long). ``CROSS JOIN``
    because sqlite keeps that join's order: with a plain ``JOIN`` it chose to walk the whole
    dataset in key order (to spare the sort) and probe the list per row, 1.5 s instead of
    2 ms for 500 keys of 100,000; PostgreSQL plans a cross join with a ``WHERE`` as any
    inner join."""
    found: list[tuple[Any, ...]] = []
    ordered = sorted(set(keys))
    for i in range(0, len(ordered), IN_KEYS):
        part = ordered[i : i + IN_KEYS]
        found += db.execute(
            f"WITH wanted(k) AS (VALUES {', '.join(['(?)'] * len(part))})"
            f" SELECT {columns} FROM wanted CROSS JOIN {table} t"
            f" WHERE t.dataset_id = ? AND t.key = wanted.k{where} ORDER BY t.key",
            [*part, dataset_id, *args],
        ).fetchall()
    return found


def item_rows(db: Database, dataset_id: int, keys: list[str]) -> list[tuple[Any, ...]]:
    """The ``items`` rows (all of :data:`ITEM_COLUMNS`) of those of ``keys`` the dataset has,
    in key order (:func:`select_keys`)."""
    return select_keys(db, ", ".join("t." + c for c in ITEM_COLUMNS), "items", dataset_id, keys)
