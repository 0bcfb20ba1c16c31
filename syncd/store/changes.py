"""The change log: every change to a dataset's items, once, in one catalog-wide order.

Every write that changes items records what it changed (:meth:`~syncd.store.sql.Database.
record_changes`): a reconcile's creates, updates and deletes (``source`` ``listing``), applied
bucket events (``event``), folder-watch events (``watch``), ``syncd push`` (``push``), and the
removal of a dataset (one ``dataset_removed`` record, not one per item, ``admin``). A write that changes
nothing (a confirming event, an unchanged listing) records nothing.

Contracts:

* **Same transaction.** Records are buffered on the connection and written by
  :meth:`~syncd.store.sql.Database.transaction` just before it commits, together with the items
  they describe: a change is in the log exactly when it is in the catalog.
* **One order, visible in order.** Each transaction takes its cursors from the ``counters`` row
  ``change_cursor`` (``UPDATE ... RETURNING``) as its last statement before ``COMMIT``. On
  PostgreSQL that row lock is held until the commit, so a second writer waits at that statement
  until the first has committed: cursors become visible strictly in cursor order, and a
  follower that has read cursor N never later meets a cursor below N (the classic trap with
  sequences, where a later cursor can commit before an earlier one). sqlite has one writer.
* **Retention.** :func:`prune` removes records older than a time, in small batches, never past
  a cursor some consumer still needs; ``changes_pruned`` remembers the last cursor pruned, and
  reading after an older cursor raises :class:`CursorGone` (HTTP 410): the follower must read
  the dataset afresh and follow from :func:`head`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from syncd.errors import SyncdError
from syncd.store.sql import ITEM_COLUMNS, Database

KINDS = ("created", "updated", "deleted", "dataset_removed")
SOURCES = ("listing", "event", "watch", "push", "admin")
#: the columns of ``changes`` after ``cursor``, in the order a record carries them
COLUMNS = ("kind", "source", "at", "dataset", *ITEM_COLUMNS)
INSERT = (
    f"INSERT INTO changes (cursor, {', '.join(COLUMNS)})"
    f" VALUES ({', '.join('?' * (len(COLUMNS) + 1))})"
)
#: the fields of an item in a change (``dataset_id`` is the change's own)
_ITEM_FIELDS = ITEM_COLUMNS[1:]
_SELECT = f"SELECT cursor, {', '.join(COLUMNS)} FROM changes"


class ChangeSignal:
    """Wakes the followers waiting in this process (the API's ``wait=`` long polls) when it
    has committed changes: :meth:`pulse` and :meth:`wait` on one event loop's thread.
    Changes other processes commit are found by the followers' own periodic look."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None
        #: how many are waiting now
        self.waiters = 0

    def pulse(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None  # the next waiters wait for the next pulse

    async def wait(self) -> None:
        if self._event is None:
            self._event = asyncio.Event()
        event = self._event
        self.waiters += 1
        try:
            await event.wait()
        finally:
            self.waiters -= 1


class CursorGone(SyncdError):
    """The cursor is older than what the log still holds (pruned): changes after it are lost
    to this follower. ``oldest``: the oldest cursor one may still read after; ``head``: the
    newest cursor (re-read the dataset, then follow from there)."""

    def __init__(self, after: int, oldest: int, head: int) -> None:
        super().__init__(
            f"change cursor {after} is older than the change log holds (changes up to "
            f"{oldest} were pruned): read the dataset again, then follow from cursor {head}"
        )
        self.after, self.oldest, self.head = after, oldest, head


@dataclass(frozen=True)
class Change:
    """One record of the log. ``item`` is the item after the change (for ``deleted``, as it
    was), as ``items ls --json`` shows items; None for ``dataset_removed``."""

    cursor: int
    kind: str
    source: str
    at: str
    dataset: str
    key: str | None
    item: dict[str, Any] | None

    def public(self) -> dict[str, Any]:
        return {
            "cursor": self.cursor,
            "kind": self.kind,
            "source": self.source,
            "at": self.at,
            "dataset": self.dataset,
            "key": self.key,
            "item": self.item,
        }


def _change(row: Sequence[Any]) -> Change:
    import json

    cursor, kind, source, at, dataset, _dataset_id, key, *item = row
    fields = dict(zip(_ITEM_FIELDS, (key, *item), strict=True))
    if key is None:
        return Change(int(cursor), kind, source, at, dataset, None, None)
    fields["metadata"] = json.loads(fields["metadata"] or "{}")
    return Change(int(cursor), kind, source, at, dataset, key, fields)


def head(db: Database) -> int:
    """The newest cursor handed out (0 for an empty log)."""
    return _counter(db, "change_cursor")


def pruned(db: Database) -> int:
    """The newest cursor removed by pruning (0 if none was)."""
    return _counter(db, "changes_pruned")


def _counter(db: Database, name: str) -> int:
    row = db.execute("SELECT value FROM counters WHERE name = ?", [name]).fetchone()
    return int(row[0]) if row else 0


def check_cursor(db: Database, after: int) -> None:
    """Raise :class:`CursorGone` if records after ``after`` were pruned."""
    gone = pruned(db)
    if after < gone:
        raise CursorGone(after, gone, head(db))


def read(
    db: Database,
    *,
    after: int = 0,
    limit: int = 1000,
    dataset_id: int | None = None,
    kinds: Sequence[str] = (),
) -> list[Change]:
    """Up to ``limit`` records with a cursor above ``after``, in cursor order (of one dataset,
    of some kinds). :class:`CursorGone` if ``after`` is older than the log holds."""
    check_cursor(db, after)
    sql, args = _SELECT + " WHERE cursor > ?", [after]
    if dataset_id is not None:
        sql, args = sql + " AND dataset_id = ?", [*args, dataset_id]
    if kinds:
        sql += f" AND kind IN ({', '.join('?' * len(kinds))})"
        args += list(kinds)
    rows = db.execute(sql + " ORDER BY cursor LIMIT ?", [*args, limit]).fetchall()
    return [_change(r) for r in rows]


def follow(db: Database, *, after: int = 0, page: int = 1000, **filters: Any) -> Iterator[Change]:
    """Every record after ``after`` that the log holds now, read a page at a time."""
    while True:
        found = read(db, after=after, limit=page, **filters)
        yield from found
        if len(found) < page:
            return
        after = found[-1].cursor


def prune(db: Database, *, before: str, keep_after: int | None = None, batch: int = 1000) -> int:
    """Remove records written before ``before`` (catalog time text), oldest first, in
    transactions of at most ``batch`` records, but none after ``keep_after`` (the cursor the
    slowest consumer has delivered, if any must be kept). Returns how many were removed."""
    from syncd.store.db import transaction

    removed = 0
    while True:
        with transaction(db):
            sql = "SELECT cursor FROM changes WHERE at < ?"
            args: list[Any] = [before]
            if keep_after is not None:
                sql, args = sql + " AND cursor <= ?", [*args, keep_after]
            rows = db.execute(sql + " ORDER BY cursor LIMIT ?", [*args, batch]).fetchall()
            if not rows:
                return removed
            last = int(rows[-1][0])
            # every record up to ``last`` goes, also one written later than ``before`` with
            # a smaller cursor: the log is pruned as a prefix, so "pruned up to N" is exact
            db.execute("DELETE FROM changes WHERE cursor <= ?", [last])
            db.execute(
                "UPDATE counters SET value = ? WHERE name = 'changes_pruned' AND value < ?",
                [last, last],
            )
            removed += len(rows)
