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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from providers.base import object_uri
from providers.content_types import guessed_by_default, public_metadata
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
#: a change as the feed shows it (``syncd changes --json``, the HTTP answer): json's default
#: separators, non-ASCII text as it is (False) or escaped (True, as ``json.dumps`` and
#: aiohttp's ``json_response`` give it); with the C encoder's string escaping for each
_DUMPS = {
    False: json.JSONEncoder(ensure_ascii=False).encode,
    True: json.JSONEncoder(ensure_ascii=True).encode,
}
_STRING = {
    False: json.encoder.encode_basestring,
    True: json.encoder.encode_basestring_ascii,
}
_SELECT = (
    "SELECT c.cursor, c.last, c.source, c.at, c.dataset_id, coalesce(c.dataset, d.name),"
    " c.kinds, c.entries FROM changes c LEFT JOIN datasets d ON d.id = c.dataset_id"
)


#: entries per ``changes`` row at most: a reader decodes a whole row to take a few of its
#: entries, so a sync batch of 5,000 writes is logged in rows of this many
ROW_ENTRIES = 1000


def pack(
    kinds: str | list[str], rows: list[tuple[Any, ...]]
) -> Iterator[tuple[int, str, str | None, str, int]]:
    """The rows of ``changes`` for one buffered group (see
    :meth:`~syncd.store.sql.Database.record_changes`): ``(dataset_id, kinds, name, entries,
    count)``, one per dataset in the group and at most :data:`ROW_ENTRIES` each, in the
    group's order."""
    if kinds == "dataset_removed":
        ((dataset_id, name),) = rows
        yield dataset_id, "r", name, "[]", 1
        return
    start = 0
    while start < len(rows):
        dataset_id = rows[start][0]
        stop, most = start + 1, min(start + ROW_ENTRIES, len(rows))
        while stop < most and rows[stop][0] == dataset_id:
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
    ``dataset_removed`` record).

    :meth:`changes` and :meth:`lines` unpack one ``changes`` row, as :class:`Change` records
    or as the feed's JSON text of each (what ``_DUMPS(change.public())`` gives, built from
    the row without the records: the feed's read rate is bound by this per-change work)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.found: dict[int, tuple[str | None, Any]] = {}
        self.places: dict[int, _Place] = {}
        #: metadata texts as the feed prints them, per ``ascii`` (:meth:`metadata_json`)
        self.memo: dict[bool, dict[str, str]] = {False: {}, True: {}}
        #: the cursor of the last change :meth:`lines` returned
        self.last = 0

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

    def place(self, dataset_id: int, name: str | None) -> _Place:
        """The row's dataset name (its own for a removal, else the dataset's, ``?`` if
        unknown) and where its items are (:class:`_Place`)."""
        found = self.places.get(dataset_id)
        if found is None or name is not None:
            known, driver = self.of(dataset_id) if name is None else (name, None)
            found = _Place(name or known or "?", driver)
            if name is None:
                self.places[dataset_id] = found
        return found

    def changes(
        self, row: Sequence[Any], after: int, kinds: Sequence[str], room: int
    ) -> list[Change]:
        """Up to ``room`` changes of one ``changes`` row with a cursor above ``after`` (of
        ``kinds``)."""
        cursor, _last, source, at, dataset_id, name, letters, entries = row
        cursor = int(cursor)
        if letters == "r":
            if cursor > after and (not kinds or "dataset_removed" in kinds):
                name = self.place(int(dataset_id), name).name
                return [Change(cursor, "dataset_removed", source, at, name, None, None)]
            return []
        place = self.place(int(dataset_id), None)
        found: list[Change] = []
        first = max(after + 1 - cursor, 0)
        for i, entry in enumerate(json.loads(entries)[first:], cursor + first):
            kind = _KIND[letters[i - cursor] if len(letters) > 1 else letters]
            if kinds and kind not in kinds:
                continue
            key, size, etag, content_type, mtime, version, md5, metadata, *rest = entry
            item = {
                "key": key,
                "filename": place.filename(key),
                "uri": place.uri(key),
                "size": size,
                "etag": etag,
                "content_type": content_type,
                "mtime": mtime,
                "version": version,
                "md5": md5,
                "metadata": json.loads(public_metadata(metadata or "{}", place.guesses)),
            }
            _user_part(item, rest)  # item edits
            found.append(Change(i, kind, source, at, name or place.name, key, item))
            if len(found) == room:
                break
        return found

    def metadata_json(self, metadata: str | None, ascii: bool, guesses: bool) -> str:
        """An entry's metadata text as the feed prints it, in its public form
        (:func:`providers.content_types.public_metadata`; ``guesses``: the dataset's rule).
        Most entries share a few texts (``{}``, a guessed content type's marker): each is
        decoded and encoded once, not once per change (a million changes with the marker read
        at 235,000/s instead of 520,000)."""
        metadata = public_metadata(metadata or "{}", guesses)
        if metadata == "{}":
            return "{}"
        memo = self.memo[ascii]
        found = memo.get(metadata)
        if found is None:
            if len(memo) >= 4096:  # bounded: distinct metadata texts are not kept forever
                memo.clear()
            found = memo[metadata] = _DUMPS[ascii](json.loads(metadata))
        return found

    def lines(
        self, row: Sequence[Any], after: int, kinds: Sequence[str], room: int, ascii: bool
    ) -> list[str]:
        """What :meth:`changes` finds in the row, as the feed's JSON text of each
        (``ascii``: non-ASCII escaped); :attr:`last` becomes the last one's cursor."""
        cursor, _last, source, at, dataset_id, name, letters, entries = row
        cursor = int(cursor)
        dumps = _DUMPS[ascii]
        if letters == "r":
            removed = self.changes(row, after, kinds, room)
            if removed:
                self.last = cursor
            return [dumps(c.public()) for c in removed]
        string = _STRING[ascii]

        def value(v: Any) -> str:
            if v is None:
                return "null"
            return string(v) if v.__class__ is str else dumps(v)

        place = self.place(int(dataset_id), None)
        # everything of a line before the key is the group's but the cursor and the kind
        heads = {
            letter: f', "kind": "{_KIND[letter]}", "source": {value(source)}, "at": {value(at)},'
            f' "dataset": {string(name or place.name)}, "key": '
            for letter in set(letters)
            if not kinds or _KIND[letter] in kinds
        }
        if not heads:
            return []
        single = heads.get(letters) if len(letters) == 1 else None
        path, prefix, quoting = place.path, place.prefix, place.quoting
        found: list[str] = []
        first = max(after + 1 - cursor, 0)
        for i, entry in enumerate(json.loads(entries)[first:], cursor + first):
            head = single or heads.get(letters[i - cursor])
            if head is None:
                continue
            key, size, etag, content_type, mtime, version, md5, metadata, *rest = entry
            k = string(key)
            if path is None:
                filename = "null"
            elif not path:
                filename = '"/' + k[1:]  # the key escaped after a "/"
            else:
                filename = string("/" + key[len(path) :])
            if prefix is None:
                uri = "null"
            elif quoting and _NEEDS_QUOTING(key):
                uri = string(prefix + quote(key))
            else:
                uri = string(prefix + key)
            found.append(
                f'{{"cursor": {i}{head}{k}, "item": {{"key": {k}, "filename": {filename},'
                f' "uri": {uri}, "size": {size if size.__class__ is int else value(size)},'
                f' "etag": {value(etag)}, "content_type": {value(content_type)},'
                f' "mtime": {value(mtime)}, "version": {value(version)}, "md5": {value(md5)},'
                ' "metadata": '
                + self.metadata_json(metadata, ascii, place.guesses)
                # an item edit's tags (its user part is inside the metadata already)
                + (f', "tags": {dumps(json.loads(rest[0]))}' if rest else "")
                + "}}"
            )
            self.last = i
            if len(found) == room:
                break
        return found


class _Place:
    """Where one dataset's items are: its name, the key prefix its folder starts at
    (``path``) and how a key becomes a URI (``prefix`` + the key, quoted when ``quoting`` and
    the key needs it, as the drivers do); ``path`` and ``prefix`` are None once the dataset
    is removed."""

    __slots__ = ("guesses", "name", "path", "prefix", "quoting")

    def __init__(self, name: str, driver: Any) -> None:
        self.name = name
        #: the dataset's content types are guesses unless an item says otherwise
        #: (:func:`providers.content_types.guessed_by_default`)
        self.guesses = guessed_by_default(driver.type) if driver is not None else True
        self.path: str | None = driver.path if driver is not None else None
        self.prefix: str | None = None
        self.quoting = False
        if driver is None:
            pass
        elif driver.type == "local":
            self.prefix, self.quoting = _local_uri_base(driver.bucket), True
        elif driver.type == "bench":
            self.prefix = f"bench://{driver.bucket}/"
        else:  # every cloud's URI is its bucket's URI and the key
            self.prefix = object_uri(driver.type, driver.bucket, "", driver.account)

    def filename(self, key: str) -> str | None:
        return "/" + key[len(self.path) :] if self.path is not None else None

    def uri(self, key: str) -> str | None:
        if self.prefix is None:
            return None
        if self.quoting and _NEEDS_QUOTING(key):
            return self.prefix + quote(key)
        return self.prefix + key


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
    bindings = _Bindings(db)
    return _read(db, after, limit, dataset_id, kinds, bindings.changes)


def read_json(
    db: Database,
    *,
    after: int = 0,
    limit: int = 1000,
    dataset_id: int | None = None,
    kinds: Sequence[str] = (),
    ascii: bool = False,
) -> tuple[list[str], int]:
    """What :func:`read` finds, as the JSON text of each record's :meth:`Change.public`
    (json's default separators; ``ascii``: non-ASCII escaped, as ``json.dumps`` does), and
    the cursor to pass next time: the last record's, or ``after`` when there is none. The
    text is the same as encoding the records, made without them (several times faster: the
    feed's read rate)."""
    bindings = _Bindings(db)
    bindings.last = after

    def unpack(row: Sequence[Any], after: int, kinds: Sequence[str], room: int) -> list[str]:
        return bindings.lines(row, after, kinds, room, ascii)

    found = _read(db, after, limit, dataset_id, kinds, unpack)
    return found, bindings.last


def _read(
    db: Database,
    after: int,
    limit: int,
    dataset_id: int | None,
    kinds: Sequence[str],
    unpack: Callable[[Sequence[Any], int, Sequence[str], int], list[Any]],
) -> list[Any]:
    """:func:`read`'s walk over the rows, each row's changes made by ``unpack(row, after,
    kinds, room)`` (at most ``room`` of them)."""
    check_cursor(db, after)
    where, args = "", []
    if dataset_id is not None:
        where, args = " AND c.dataset_id = ?", [dataset_id]
    # the group holding cursor after + 1 may start at or before ``after``
    start = db.execute(
        f"SELECT max(c.cursor) FROM changes c WHERE c.cursor <= ?{where}", [after, *args]
    ).fetchone()[0]
    from_cursor = int(start) if start is not None else after + 1
    found: list[Any] = []
    while len(found) < limit:
        rows = db.execute(
            f"{_SELECT} WHERE c.cursor >= ?{where} ORDER BY c.cursor LIMIT 16",
            [from_cursor, *args],
        ).fetchall()
        for row in rows:
            found += unpack(row, after, kinds, limit - len(found))
            if len(found) == limit:
                break
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
