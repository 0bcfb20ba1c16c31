"""Snapshots: a dataset's items frozen at one point of the change log, kept as an undo log.

A snapshot is one row of ``snapshots`` (dataset, tag, message, time, the change-log cursor
``cursor`` it freezes, its item count and bytes): creating one copies no item, so it costs the
same for ten items as for ten million (a count and a sum over the dataset, one insert).

The items stay in ``items``; what a later write replaces is kept in ``item_undo``. While a
dataset has a snapshot, every item write (all of them go through
:meth:`~syncd.store.sql.Database.record_changes`, called *before* the write) first saves the
key's previous state (its whole row, the user's metadata and tags included; ``present = 0``
for a key that did not exist) with the cursor of the change that replaces it, unless the key
has an entry after the newest snapshot already (the older state is kept: a later one is
needed by no snapshot). So:

* the items of a snapshot at cursor ``C`` are the live rows of the keys with no entry after
  ``C``, plus, for each key with entries after ``C``, the state in the earliest of them (none
  when it is an "absent" one): :func:`iter_items`;
* the keys that differ between two snapshots (or a snapshot and the live dataset) are among
  those with an entry between their cursors: :func:`diff` reads only those;
* a dataset with no snapshot pays one indexed look-up per written batch, no more
  (:func:`capture`); one with snapshots pays one row per key changed per snapshot interval
  (a 1% churn between two snapshots costs 1% of a copy).

Consistency. On sqlite a write transaction is the only writer. On PostgreSQL each item write
takes a transaction-level advisory lock of its dataset *shared* before it decides whether to
save undo entries, and :func:`create` takes it *exclusive*: a snapshot waits for the writes of
its dataset in flight (they commit, cursors included, before it reads the change-log head)
and a write that starts later sees the snapshot and saves what it replaces. The snapshot's
cursor is the committed head of the change log: every change up to it is committed, and every
change of the dataset after it has a larger cursor and its undo entry.

Removing a snapshot (:func:`remove`) deletes the entries no remaining snapshot needs (an
entry at cursor ``c`` whose key's previous entry is at ``p`` serves the snapshots with
``p <= cursor < c``); with the last snapshot all of the dataset's entries go.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from providers import faults
from syncd.errors import NotFound, UsageError
from syncd.store.sql import ITEM_COLUMNS, Database, select_keys
from syncd.store.stamps import now

if TYPE_CHECKING:
    from syncd.store.catalog import Catalog, Dataset, Item

#: the advisory-lock class of a dataset's snapshot lock (PostgreSQL): its second key is the
#: dataset id ("snap" in ASCII; any constant apart from syncd.store.pg's write lock)
_LOCK_CLASS = 0x736E6170
#: a tag: a letter or digit, then letters, digits, ``.``, ``_``, ``-`` (a URL path segment, a
#: file name, a git-like tag), at most 100 characters
TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: the columns of ``Item`` after its key, as both ``items`` and ``item_undo`` name them: a
#: sync's row after dataset id and key, then the user's two
STATE = (*ITEM_COLUMNS[2:], "user_metadata", "tags")
#: what a diff compares (an item whose filename or uri alone differ is the same object; the
#: times say when syncd saw it, not what it is)
COMPARED = (
    "size",
    "etag",
    "content_type",
    "mtime",
    "version",
    "metadata",
    "md5",
    "user_metadata",
    "tags",
)
_INSERT_UNDO = (
    f"INSERT INTO item_undo (dataset_id, key, cursor, present, {', '.join(STATE)})"
    f" VALUES ({', '.join('?' * (4 + len(STATE)))})"
)
_STATE_COLS = ", ".join("t." + c for c in STATE)
#: rows per page of :func:`iter_items`
PAGE = 2000


class UnknownSnapshot(NotFound):
    """No snapshot of that tag: a usage error on the command line (exit 2), 404 over HTTP."""

    exit_code = 2


@dataclass(frozen=True)
class Snapshot:
    """One snapshot of a dataset: ``cursor`` is the change-log cursor it freezes; ``items``
    and ``bytes`` what the dataset held then."""

    dataset: str
    tag: str
    message: str | None
    created_at: str
    cursor: int
    items: int
    bytes: int

    def public(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "tag": self.tag,
            "message": self.message,
            "created_at": self.created_at,
            "cursor": self.cursor,
            "items": self.items,
            "bytes": self.bytes,
        }


def check_tag(tag: str) -> None:
    """``UsageError`` for a tag no snapshot may have (see :data:`TAG`)."""
    if not isinstance(tag, str) or TAG.fullmatch(tag) is None:
        raise UsageError(
            f"snapshot tag {tag!r} is not valid: use 1-100 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit (e.g. 'v1' or '2024-05-01')"
        )


# -- the write path's hook (syncd.store.sql.Database.record_changes / flush_changes) -------


def lock_dataset(db: Database, dataset_id: int, *, exclusive: bool) -> None:
    """Order this transaction against snapshot creation of the dataset (PostgreSQL; sqlite
    has one writer). Writers take it shared, :func:`create` and :func:`remove` exclusive."""
    if db.dialect == "postgresql":
        fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        db.execute(f"SELECT {fn}(?, ?)", [_LOCK_CLASS, dataset_id & 0x7FFFFFFF])


def capture(db: Database, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]] | None:
    """The undo entries to save for a group of item rows about to be written (each row
    starts with ``dataset_id, key``): ``(index in rows, dataset_id, key, present, *STATE)``
    for each key whose dataset has a snapshot, that has no entry after the newest snapshot
    and was not captured earlier in this transaction. None when there is nothing to save.
    Called before the rows are written, in the writer's transaction."""
    ids = {r[0] for r in rows}
    out: list[tuple[Any, ...]] = []
    for dataset_id in ids:
        lock_dataset(db, dataset_id, exclusive=False)
        newest = db.execute(
            "SELECT max(cursor) FROM snapshots WHERE dataset_id = ?", [dataset_id]
        ).fetchone()[0]
        if newest is None:
            continue  # the common case: no snapshot, nothing to keep
        done = {
            e[2]
            for g in db.pending_changes
            if len(g) > 4 and g[4]
            for e in g[4]
            if e[1] == dataset_id
        }
        first: dict[str, int] = {}
        for i, r in enumerate(rows):
            if r[0] == dataset_id and r[1] not in done and r[1] not in first:
                first[r[1]] = i
        if not first:
            continue
        kept = {
            r[0]
            for r in select_keys(
                db, "DISTINCT t.key", "item_undo", dataset_id, list(first),
                where=" AND t.cursor > ?", args=[int(newest)],
            )
        }  # fmt: skip
        wanted = [k for k in first if k not in kept]
        if not wanted:
            continue
        old = {
            r[0]: r[1:]
            for r in select_keys(db, "t.key, " + _STATE_COLS, "items", dataset_id, wanted)
        }
        for key in wanted:
            state = old.get(key)
            if state is None:
                out.append((first[key], dataset_id, key, 0, *([None] * len(STATE))))
            else:
                out.append((first[key], dataset_id, key, 1, *state))
    return out or None


def write_undo(db: Database, start: int, entries: list[tuple[Any, ...]]) -> None:
    """Save a group's captured entries (:func:`capture`); the group's changes have the
    cursors ``start``, ``start + 1``, ... in row order."""
    db.executemany(_INSERT_UNDO, [(e[1], e[2], start + e[0], *e[3:]) for e in entries])


# -- snapshots ---------------------------------------------------------------------------


def _row(dataset: str, r: Sequence[Any]) -> Snapshot:
    return Snapshot(dataset, r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]))


_SELECT = "SELECT tag, message, created_at, cursor, items, bytes FROM snapshots"


def create(catalog: Catalog, dataset: Dataset, tag: str, message: str | None = None) -> Snapshot:
    """Freeze ``dataset`` as snapshot ``tag`` at the change log's committed head (see the
    module's docstring); ``UsageError`` for a bad or taken tag. One transaction: a crash
    leaves the snapshot there whole or not at all."""
    check_tag(tag)
    if message is not None and ("\x00" in message or len(message) > 10_000):
        raise UsageError("snapshot message must be text of at most 10000 characters, no NUL")
    from syncd.store import changes
    from syncd.store.db import transaction

    db = catalog.db
    with transaction(db):
        lock_dataset(db, dataset.id, exclusive=True)
        if db.execute(
            "SELECT 1 FROM datasets WHERE id = ?", [dataset.id]
        ).fetchone() is None:  # fmt: skip
            raise UsageError(f"dataset {dataset.name!r} was removed meanwhile")
        if _find(db, dataset, tag) is not None:
            raise UsageError(
                f"snapshot {tag!r} of dataset {dataset.name!r} exists already; pick another"
                " tag, or remove it first with `syncd snapshot rm`"
            )
        cursor = changes.head(db)
        n, total = db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM items WHERE dataset_id = ?",
            [dataset.id],
        ).fetchone()
        at = now()
        db.execute(
            "INSERT INTO snapshots (dataset_id, tag, message, created_at, cursor, items, bytes)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [dataset.id, tag, message, at, cursor, int(n), int(total)],
        )
        faults.pause_point("snapshot-create")  # a crash test kills the process here
    return Snapshot(dataset.name, tag, message, at, cursor, int(n), int(total))


def _find(db: Database, dataset: Dataset, tag: str) -> Snapshot | None:
    row = db.execute(_SELECT + " WHERE dataset_id = ? AND tag = ?", [dataset.id, tag]).fetchone()
    return None if row is None else _row(dataset.name, row)


def get(catalog: Catalog, dataset: Dataset, tag: str) -> Snapshot:
    """Snapshot ``tag`` of the dataset; :class:`UnknownSnapshot` naming the known tags if
    none."""
    check_tag(tag)
    found = _find(catalog.db, dataset, tag)
    if found is None:
        tags = [s.tag for s in list_snapshots(catalog, dataset)]
        known = f"; its snapshots: {', '.join(tags)}" if tags else "; it has none"
        raise UnknownSnapshot(f"unknown snapshot {tag!r} of dataset {dataset.name!r}{known}")
    return found


def list_snapshots(catalog: Catalog, dataset: Dataset) -> list[Snapshot]:
    """The dataset's snapshots, oldest first."""
    rows = catalog.db.execute(
        _SELECT + " WHERE dataset_id = ? ORDER BY cursor, created_at, tag", [dataset.id]
    ).fetchall()
    return [_row(dataset.name, r) for r in rows]


def remove(catalog: Catalog, dataset: Dataset, tag: str) -> Snapshot:
    """Remove snapshot ``tag`` and the undo entries no other snapshot needs; the removed
    snapshot. ``NotFound`` if there is none."""
    from syncd.store.db import transaction

    db = catalog.db
    with transaction(db):
        lock_dataset(db, dataset.id, exclusive=True)
        found = get(catalog, dataset, tag)
        db.execute("DELETE FROM snapshots WHERE dataset_id = ? AND tag = ?", [dataset.id, tag])
        prune(db, dataset.id)
    return found


def prune(db: Database, dataset_id: int, *, page: int = 5000) -> int:
    """Delete the dataset's undo entries no snapshot needs (see the module's docstring);
    how many. In the caller's transaction."""
    cursors = sorted(
        int(r[0])
        for r in db.execute(
            "SELECT cursor FROM snapshots WHERE dataset_id = ?", [dataset_id]
        ).fetchall()
    )
    if not cursors:
        return db.execute("DELETE FROM item_undo WHERE dataset_id = ?", [dataset_id]).rowcount
    import bisect

    removed = 0
    after: tuple[str, int] | None = None
    prev_key, prev_cursor = None, -1
    while True:
        where, args = "", []
        if after is not None:
            where = " AND (key > ? OR (key = ? AND cursor > ?))"
            args = [after[0], after[0], after[1]]
        rows = db.execute(
            f"SELECT key, cursor FROM item_undo WHERE dataset_id = ?{where}"
            " ORDER BY key, cursor LIMIT ?",
            [dataset_id, *args, page],
        ).fetchall()
        gone = []
        for key, c in rows:
            c = int(c)
            p = prev_cursor if key == prev_key else -1
            i = bisect.bisect_left(cursors, p)  # the first snapshot at or after p
            if i == len(cursors) or cursors[i] >= c:
                gone.append((dataset_id, key, c))
            prev_key, prev_cursor = key, c
        if gone:
            removed += db.executemany(
                "DELETE FROM item_undo WHERE dataset_id = ? AND key = ? AND cursor = ?", gone
            )
        if len(rows) < page:
            return removed
        after = (rows[-1][0], int(rows[-1][1]))


def check_drop(db: Database, dataset: Dataset, *, with_snapshots: bool) -> None:
    """Before a dataset is removed (in its transaction): refuse (``UsageError``) while it has
    snapshots, unless ``with_snapshots``, which removes them and their undo entries."""
    lock_dataset(db, dataset.id, exclusive=True)
    n = db.execute("SELECT count(*) FROM snapshots WHERE dataset_id = ?", [dataset.id]).fetchone()[
        0
    ]
    if n and not with_snapshots:
        raise UsageError(
            f"dataset {dataset.name!r} has {n} snapshot(s); remove them first (`syncd snapshot"
            " rm`) or pass --with-snapshots to remove the dataset with them"
        )
    db.execute("DELETE FROM snapshots WHERE dataset_id = ?", [dataset.id])
    db.execute("DELETE FROM item_undo WHERE dataset_id = ?", [dataset.id])


# -- reading a snapshot ------------------------------------------------------------------

_ITEM_COLS = "key, " + ", ".join(STATE)


def iter_items(
    catalog: Catalog,
    dataset: Dataset,
    tag: str,
    *,
    after_key: str | None = None,
    limit: int | None = None,
    prefix: str = "",
) -> Iterator[Item]:
    """The items of snapshot ``tag`` (:class:`~syncd.store.catalog.Item`, as live listings
    give them) with a key after ``after_key`` (and starting with ``prefix``), in key order,
    at most ``limit``; read in pages of one statement each (constant memory; each page
    consistent whatever writes run meanwhile). ``NotFound`` for an unknown tag."""
    snap = get(catalog, dataset, tag)
    yield from items_at(catalog, dataset.id, snap.cursor, after_key=after_key, limit=limit,
                        prefix=prefix)  # fmt: skip


def items_at(
    catalog: Catalog,
    dataset_id: int,
    cursor: int,
    *,
    after_key: str | None = None,
    limit: int | None = None,
    prefix: str = "",
) -> Iterator[Item]:
    """The dataset's items at change-log ``cursor`` (a snapshot's), as :func:`iter_items`."""
    from syncd.store.catalog import key_range

    make = catalog.item_maker(dataset_id)

    if "\x00" in prefix or (after_key is not None and "\x00" in after_key):
        return
    db = catalog.db
    left = limit
    after = after_key
    size = PAGE
    # the undo part's LIMIT follows what the last page used of it: entries are sparse after
    # light churn (a full LIMIT of them reached far past the live rows, read again and again)
    undo_size = PAGE
    while left is None or left > 0:
        where, args = key_range(after, prefix)
        # one statement (one consistent read): the next ``size`` live rows and the next
        # ``undo_size`` undo entries after the snapshot's cursor, each along its primary key
        # (a LIMIT per part: one union under one LIMIT made PostgreSQL's planner, without
        # statistics, sort every remaining row per page), then key, cursor: a live row
        # (cursor 0) before its key's entries (each > the snapshot's cursor >= 0)
        rows = db.execute(
            f"SELECT * FROM (SELECT 0, 0 AS c, 1, {_ITEM_COLS} FROM items"
            f" WHERE dataset_id = ?{where} ORDER BY key LIMIT ?) AS l"
            f" UNION ALL SELECT * FROM (SELECT 1, cursor, present, {_ITEM_COLS} FROM item_undo"
            f" WHERE dataset_id = ?{where} AND cursor > ? ORDER BY key, cursor LIMIT ?) AS u"
            " ORDER BY 4, 2",
            [dataset_id, *args, size, dataset_id, *args, cursor, undo_size],
        ).fetchall()
        # a part that filled its LIMIT may go on past its last key: the keys up to the
        # smaller such last key are complete (for that key itself: its live row, and its
        # earliest entry, which is all that counts, as entries come by key, then cursor)
        bound = None
        live_n = sum(1 for r in rows if r[0] == 0)
        if live_n == size:
            bound = max(r[3] for r in rows if r[0] == 0)
        undo_full = len(rows) - live_n == undo_size
        if undo_full:
            last_undo = max(r[3] for r in rows if r[0] == 1)
            bound = last_undo if bound is None else min(bound, last_undo)
        full = bound is not None
        if full:
            rows = [r for r in rows if r[3] <= bound]
            used = sum(1 for r in rows if r[0] == 1)
            if undo_full and bound == last_undo:
                undo_size = min(undo_size * 2, PAGE)  # the entries held the page back
            else:
                undo_size = max(2 * used, 16, PAGE // 16)
        for item in _resolve(rows, make):
            yield item
            if left is not None:
                left -= 1
                if left == 0:
                    return
        if not full:
            return
        after = rows[-1][3]


def _resolve(rows: list[tuple[Any, ...]], item: Any) -> Iterator[Any]:
    """The items of rows ordered by key, then live (0) before undo entries (1) by cursor:
    per key, the earliest undo entry if any (nothing for an absent one), else the live row."""
    i, n = 0, len(rows)
    while i < n:
        key = rows[i][3]
        j = i
        while j < n and rows[j][3] == key:
            j += 1
        chosen = rows[i]
        if rows[i][0] == 0 and j - i > 1:
            chosen = rows[i + 1]  # the earliest entry after the cursor
        if chosen[2]:
            yield item(*chosen[3:])
        i = j


# -- diffs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """One key that differs: ``kind`` ``added``, ``removed`` or ``changed``; ``old`` its item
    in the first version (None if added), ``new`` in the second (None if removed)."""

    kind: str
    key: str
    old: Item | None
    new: Item | None


def differences(
    catalog: Catalog, dataset: Dataset, a: str, b: str | None = None, *, page: int = 500
) -> Iterator[Difference]:
    """What changed from snapshot ``a`` to snapshot ``b`` (None: the live dataset), key by
    key in key order. Reads only the keys with undo entries between the two cursors (every
    key that changed between them has one; see the module's docstring)."""
    make = catalog.item_maker(dataset.id)
    ca = get(catalog, dataset, a).cursor
    cb = get(catalog, dataset, b).cursor if b is not None else None
    lo = ca if cb is None else min(ca, cb)
    hi = None if cb is None else max(ca, cb)
    db = catalog.db
    after: str | None = None
    while True:
        where, args = " AND cursor > ?", [lo]
        if hi is not None:
            where, args = where + " AND cursor <= ?", [*args, hi]
        if after is not None:
            where, args = where + " AND key > ?", [*args, after]
        keys = [
            r[0]
            for r in db.execute(
                f"SELECT DISTINCT key FROM item_undo WHERE dataset_id = ?{where}"
                " ORDER BY key LIMIT ?",
                [dataset.id, *args, page],
            ).fetchall()
        ]
        if not keys:
            return
        rows = db.execute(*_states_of(db.dialect, dataset.id, keys, lo)).fetchall()
        by_key: dict[str, list[tuple[Any, ...]]] = {}
        for r in rows:
            by_key.setdefault(r[3], []).append(r)
        for key in keys:
            found = by_key.get(key, [])
            old = _state_at(found, ca, make)
            new = _state_at(found, cb, make)
            if old is None and new is None:
                continue
            if old is None:
                yield Difference("added", key, None, new)
            elif new is None:
                yield Difference("removed", key, old, None)
            elif any(getattr(old, f) != getattr(new, f) for f in COMPARED):
                yield Difference("changed", key, old, new)
        if len(keys) < page:
            return
        after = keys[-1]


def _states_of(dialect: str, dataset_id: int, keys: list[str], after: int) -> tuple[str, list[Any]]:
    """One statement (one consistent read) of the live rows of ``keys`` and their undo
    entries after cursor ``after``, ordered as :func:`_resolve` reads them. Each key is a
    primary-key look-up: on sqlite a ``VALUES`` list cross-joined (it keeps the join's order,
    see :func:`syncd.store.sql.select_keys`); on PostgreSQL a ``LATERAL`` look-up per key,
    since its planner, without statistics for a fresh table, hashed the whole dataset per
    500 keys (a 1M-item diff took 6.4 s instead of under 2); ``OFFSET 0`` keeps it from
    flattening the look-up back into that join."""
    values = ", ".join(["(?)"] * len(keys))
    if dialect == "postgresql":
        wanted = f"(VALUES {values}) AS w(k)"
        live = (
            f"SELECT 0, 0, 1, t.key, {_STATE_COLS} FROM {wanted} CROSS JOIN LATERAL"
            f' (SELECT * FROM items WHERE dataset_id = ? AND key = w.k COLLATE "C" OFFSET 0) t'
        )
        undo = (
            f"SELECT 1, t.cursor, t.present, t.key, {_STATE_COLS} FROM {wanted} CROSS JOIN"
            " LATERAL (SELECT * FROM item_undo WHERE dataset_id = ? AND key = w.k COLLATE"
            ' "C" AND cursor > ? OFFSET 0) t'
        )
        return f"{live} UNION ALL {undo} ORDER BY 4, 2", [
            *keys, dataset_id, *keys, dataset_id, after,
        ]  # fmt: skip
    sql = (
        f"WITH wanted(k) AS (VALUES {values})"
        f" SELECT 0, 0, 1, t.key, {_STATE_COLS} FROM wanted CROSS JOIN items t"
        " WHERE t.dataset_id = ? AND t.key = wanted.k"
        f" UNION ALL SELECT 1, t.cursor, t.present, t.key, {_STATE_COLS}"
        " FROM wanted CROSS JOIN item_undo t"
        " WHERE t.dataset_id = ? AND t.key = wanted.k AND t.cursor > ?"
        " ORDER BY 4, 2"
    )
    return sql, [*keys, dataset_id, dataset_id, after]


def _state_at(rows: list[tuple[Any, ...]], cursor: int | None, item: Any) -> Any:
    """A key's item at ``cursor`` (None: live) from its live row and undo entries (ordered
    as :func:`_resolve` reads them), or None where it did not exist."""
    live = None
    for r in rows:
        if r[0] == 0:
            live = r
        elif cursor is not None and int(r[1]) > cursor:
            return item(*r[3:]) if r[2] else None
    return item(*live[3:]) if live is not None else None


def diff_summary(found: Iterator[Difference], *, keys: int | None = None) -> dict[str, Any]:
    """Counts and bytes of each kind of difference, with the keys (at most ``keys`` per kind;
    ``truncated`` says whether any were left out): ``{"added": {"count", "bytes", "keys"},
    "removed": {...}, "changed": {"count", "bytes", "bytes_before", "keys"}, "truncated"}``.
    ``bytes`` is the size in the second version (removed: in the first)."""
    out: dict[str, Any] = {
        "added": {"count": 0, "bytes": 0, "keys": []},
        "removed": {"count": 0, "bytes": 0, "keys": []},
        "changed": {"count": 0, "bytes": 0, "bytes_before": 0, "keys": []},
        "truncated": False,
    }
    for d in found:
        part = out[d.kind]
        part["count"] += 1
        if d.kind == "removed":
            assert d.old is not None
            part["bytes"] += d.old.size
        else:
            assert d.new is not None
            part["bytes"] += d.new.size
        if d.kind == "changed":
            assert d.old is not None
            part["bytes_before"] += d.old.size
        if keys is None or len(part["keys"]) < keys:
            part["keys"].append(d.key)
        else:
            out["truncated"] = True
    return out
