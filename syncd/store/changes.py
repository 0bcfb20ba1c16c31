"""The change log: every change to a dataset's items, once, in one catalog-wide order.

Every write that changes items records what it changed (:meth:`~syncd.store.sql.Database.
record_changes`): a reconcile's creates, updates and deletes (``source`` ``listing``), applied
bucket events (``event``), folder-watch events (``watch``), ``syncd push`` (``push``), item
edits of the user's metadata and tags (``edit``, :mod:`syncd.store.edits`; only these carry
the item's ``metadata.user`` and ``tags``), and the removal of a dataset (one
``dataset_removed`` record, not one per item, ``admin``). A write that changes nothing (a
confirming event, an unchanged listing, an edit to the values an item has) records nothing.

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
import functools
import json
import operator
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from providers.base import object_uri
from syncd.errors import SyncdError
from syncd.store.sql import ITEM_COLUMNS, Database

KINDS = ("created", "updated", "deleted", "dataset_removed")
SOURCES = ("listing", "event", "watch", "push", "admin", "edit")
#: one group of changes (see syncd.store.schema.CHANGES)
INSERT = (
    "INSERT INTO changes (cursor, last, source, at, dataset_id, dataset, kinds, entries)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_LETTER = {"created": "c", "updated": "u", "deleted": "d", "dataset_removed": "r"}
_KIND = {v: k for k, v in _LETTER.items()}
#: what an entry keeps of an item row (ITEM_COLUMNS): key, size, etag, content_type, mtime,
#: version, md5, metadata
_ENTRY = operator.itemgetter(1, 4, 5, 6, 7, 8, 12, 11)
assert (
    ITEM_COLUMNS[1] == "key"
    and ITEM_COLUMNS[4:9] == ("size", "etag", "content_type", "mtime", "version")
    and ITEM_COLUMNS[11:13] == ("metadata", "md5")
), "_ENTRY's columns drifted"
#: a key with a character ``quote`` would change (as providers.local decides)
_NEEDS_QUOTING = re.compile(r"[^A-Za-z0-9_.~/-]").search
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode
_SELECT = (
    "SELECT c.cursor, c.last, c.source, c.at, c.dataset_id, coalesce(c.dataset, d.name),"
    " c.kinds, c.entries FROM changes c LEFT JOIN datasets d ON d.id = c.dataset_id"
)


def pack(
    kinds: str | list[str], rows: list[tuple[Any, ...]]
) -> Iterator[tuple[int, str, str | None, str, int]]:
    """The rows of ``changes`` for one buffered group (see
    :meth:`~syncd.store.sql.Database.record_changes`): ``(dataset_id, kinds, name, entries,
    count)``, one per dataset in the group, in the group's order."""
    if kinds == "dataset_removed":
        ((dataset_id, name),) = rows
        yield dataset_id, "r", name, "[]", 1
        return
    start = 0
    while start < len(rows):
        dataset_id = rows[start][0]
        stop = start + 1
        while stop < len(rows) and rows[stop][0] == dataset_id:
            stop += 1
        part = rows[start:stop]
        if isinstance(kinds, str):
            letters = _LETTER[kinds]
        else:
            letters = "".join(_LETTER[k] for k in kinds[start:stop])
            if letters.count(letters[0]) == len(letters):
                letters = letters[0]
        entry = _ENTRY if len(part[0]) == len(ITEM_COLUMNS) else _edit_entry
        yield dataset_id, letters, None, _encode(list(map(entry, part))), len(part)
        start = stop


# -- item edits (source ``edit``, syncd.store.edits) ---------------------------------------
# An edit's rows carry the user's part after the item's columns: ``(*ITEM_COLUMNS,
# user_metadata, tags)``. Its entry is an item entry whose metadata text also holds the
# user's object under ``user`` (as the public item shows it), plus a ninth member: the tags
# (JSON text). Only edits carry the user's part: a follower replaces it only then.


def _edit_entry(row: tuple[Any, ...]) -> list[Any]:
    """The entry of an edited item's row (see above)."""
    entry = list(_ENTRY(row))
    user_metadata, tags = row[len(ITEM_COLUMNS) :]
    entry[-1] = _encode({**json.loads(entry[-1]), "user": json.loads(user_metadata)})
    entry.append(tags)
    return entry


def _user_part(item: dict[str, Any], rest: list[Any]) -> None:
    """Add an edit's tags (an entry's ninth member) to its public item."""
    if rest:
        item["tags"] = json.loads(rest[0])


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
    was), as ``items ls --json`` shows items but for ``created_at``/``updated_at`` (the
    record's ``at`` is when it changed); ``filename`` and ``uri`` are None once the dataset is
    removed. None for ``dataset_removed``."""

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


class _Bindings:
    """Each dataset's name, path and URI rule, looked up once per read: an item's
    ``filename`` and ``uri`` follow from its dataset's binding and its key, so the log does
    not store them. A dataset removed since has neither (its name comes from its
    ``dataset_removed`` record)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.found: dict[int, tuple[str | None, Any]] = {}

    def of(self, dataset_id: int) -> tuple[str | None, Any]:
        if dataset_id not in self.found:
            from syncd.store.catalog import Catalog

            row = self.db.execute("SELECT name FROM datasets WHERE id = ?", [dataset_id]).fetchone()
            if row is not None:
                dataset = Catalog(self.db).find_dataset(row[0])
                self.found[dataset_id] = (row[0], dataset.driver if dataset else None)
            else:
                gone = self.db.execute(
                    "SELECT dataset FROM changes WHERE dataset_id = ? AND kinds = 'r'",
                    [dataset_id],
                ).fetchone()
                self.found[dataset_id] = (gone[0] if gone else None, None)
        return self.found[dataset_id]

    def unpack(self, row: Sequence[Any], after: int, kinds: Sequence[str]) -> Iterator[Change]:
        """The changes of one ``changes`` row with a cursor above ``after`` (of ``kinds``)."""
        cursor, _last, source, at, dataset_id, name, letters, entries = row
        known, driver = self.of(int(dataset_id)) if name is None or letters != "r" else (name, None)
        name = name or known or "?"
        if letters == "r":
            if int(cursor) > after and (not kinds or "dataset_removed" in kinds):
                yield Change(int(cursor), "dataset_removed", source, at, name, None, None)
            return
        path = driver.path if driver is not None else None
        for i, entry in enumerate(json.loads(entries)):
            n = int(cursor) + i
            kind = _KIND[letters[i] if len(letters) > 1 else letters]
            if n <= after or (kinds and kind not in kinds):
                continue
            key, size, etag, content_type, mtime, version, md5, metadata, *rest = entry
            item = {
                "key": key,
                "filename": "/" + key[len(path) :] if path is not None else None,
                "uri": _uri(driver, key) if driver is not None else None,
                "size": size,
                "etag": etag,
                "content_type": content_type,
                "mtime": mtime,
                "version": version,
                "md5": md5,
                "metadata": json.loads(metadata) if metadata and metadata != "{}" else {},
            }
            _user_part(item, rest)  # item edits
            yield Change(n, kind, source, at, name, key, item)


def _uri(driver: Any, key: str) -> str:
    """The object's URI, as its driver gives it (without opening the driver)."""
    if driver.type == "local":
        return _local_uri_base(driver.bucket) + (quote(key) if _NEEDS_QUOTING(key) else key)
    if driver.type == "bench":
        return f"bench://{driver.bucket}/{key}"
    return object_uri(driver.type, driver.bucket, key, driver.account)


@functools.lru_cache(maxsize=64)
def _local_uri_base(folder: str) -> str:
    # what providers.local.LocalDriver.uris builds: the folder's URI, "/", the quoted key
    base = Path(folder).as_uri()
    return base if base.endswith("/") else base + "/"


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
    where, args = "", []
    if dataset_id is not None:
        where, args = " AND c.dataset_id = ?", [dataset_id]
    # the group holding cursor after + 1 may start at or before ``after``
    start = db.execute(
        f"SELECT max(c.cursor) FROM changes c WHERE c.cursor <= ?{where}", [after, *args]
    ).fetchone()[0]
    from_cursor = int(start) if start is not None else after + 1
    bindings = _Bindings(db)
    found: list[Change] = []
    while len(found) < limit:
        rows = db.execute(
            f"{_SELECT} WHERE c.cursor >= ?{where} ORDER BY c.cursor LIMIT 16",
            [from_cursor, *args],
        ).fetchall()
        for row in rows:
            for change in bindings.unpack(row, after, kinds):
                found.append(change)
                if len(found) == limit:
                    check_cursor(db, after)
                    return found
        if len(rows) < 16:
            break
        from_cursor = int(rows[-1][0]) + 1
    # a prune that committed while this read ran may have removed changes it never saw
    # (each query reads its own snapshot): then the follower must start over, not skip them
    check_cursor(db, after)
    return found


def follow(db: Database, *, after: int = 0, page: int = 1000, **filters: Any) -> Iterator[Change]:
    """Every record after ``after`` that the log holds now, read a page at a time."""
    while True:
        found = read(db, after=after, limit=page, **filters)
        yield from found
        if len(found) < page:
            return
        after = found[-1].cursor


def prune(db: Database, *, before: str, keep_after: int | None = None, batch: int = 100) -> int:
    """Remove changes recorded before ``before`` (catalog time text), oldest first, a few
    groups per transaction, but none after ``keep_after`` (the cursor the slowest consumer
    has delivered, if any must be kept). The log is pruned as a prefix, so "pruned up to N"
    is exact. Returns how many changes were removed."""
    from syncd.store.db import transaction

    removed = 0
    while True:
        with transaction(db):
            sql = "SELECT cursor, last FROM changes WHERE at < ?"
            args: list[Any] = [before]
            if keep_after is not None:
                sql, args = sql + " AND last <= ?", [*args, keep_after]
            rows = db.execute(sql + " ORDER BY cursor LIMIT ?", [*args, batch]).fetchall()
            if not rows:
                return removed
            last = int(rows[-1][1])
            gone = db.execute(
                "SELECT coalesce(sum(last - cursor + 1), 0) FROM changes WHERE last <= ?", [last]
            ).fetchone()[0]
            db.execute("DELETE FROM changes WHERE last <= ?", [last])
            db.execute(
                "UPDATE counters SET value = ? WHERE name = 'changes_pruned' AND value < ?",
                [last, last],
            )
            removed += int(gone)
