"""Item edits: the user's metadata (``metadata.user``) and tags of one item or of many.

An edit is an :class:`Edit` (a JSON merge patch for the metadata, tags to add and to remove),
checked by :mod:`syncd.usermeta` before anything is read; it applies to the items a
:class:`Selection` picks (keys, a key prefix; a query later).

Contracts:

* **Only the user's part.** An edit writes ``user_metadata``, ``tags`` and ``updated_at``;
  a sync or an event never writes the first two (they are not among the columns a sync
  writes), so what an edit set survives every re-sync and event, and goes with the item when
  the object is deleted.
* **Bounded batches.** Many items are edited :data:`BATCH` at a time, in key order, each
  batch one transaction that reads its rows (locked on PostgreSQL, ``FOR UPDATE``; sqlite has
  one writer), merges, and writes: memory stays constant however many items match, and a
  concurrent edit of the same item is never lost.
* **Change log.** Every item an edit changes is one change record (kind ``updated``, source
  ``edit``, :meth:`~syncd.store.sql.Database.record_changes`) in the same transaction,
  carrying the item's whole user part as it now is (:mod:`syncd.store.changes`). An edit
  that changes nothing (the same values again, a tag already there) writes and records
  nothing.
* **Limits.** An edit that would take an item past a limit (:func:`syncd.usermeta.
  check_result`) is refused, ``UsageError``, and nothing is written: for many items, every
  matching item is checked before the first batch is written (a read-only pass, itself in
  batches), when the edit can grow an item at all.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from syncd import usermeta
from syncd.errors import UsageError
from syncd.query import Query, QueryError, parse_where
from syncd.store import query_sql
from syncd.store.catalog import Catalog, Item, key_range
from syncd.store.db import transaction
from syncd.store.sql import ITEM_COLUMNS
from syncd.store.stamps import now

#: items per transaction of a bulk edit: large enough that a transaction's cost is spread,
#: small enough that a batch's rows and its change record stay small (and that sqlite's
#: parameter limit is never near: a batch of keys is one VALUES list)
BATCH = 500
#: keys one bulk edit may name: a longer list is several requests (or a prefix or query)
MAX_KEYS = 10_000
#: the columns an edit reads: the item row as the change log records it, then the user's part
_COLUMNS = (*ITEM_COLUMNS, "user_metadata", "tags")
_SELECT = ", ".join(f"t.{c}" for c in _COLUMNS)
_UPDATED_AT = ITEM_COLUMNS.index("updated_at")
_KEY = ITEM_COLUMNS.index("key")


@dataclass(frozen=True)
class Edit:
    """What to change in each item: ``metadata``, a JSON merge patch (RFC 7386: members set,
    ``null`` removes, objects merge) of the user's metadata, or None; tags to add and remove
    (a tag in both is refused). Build with :meth:`of` to check it."""

    metadata: dict[str, Any] | None = None
    add_tags: tuple[str, ...] = ()
    remove_tags: tuple[str, ...] = ()

    @classmethod
    def of(cls, metadata: Any = None, add_tags: Any = None, remove_tags: Any = None) -> Edit:
        """A checked edit (None: not given); ``UsageError`` (one line) for anything past
        the limits, a tag both added and removed, or none of the three given."""
        if metadata is None and add_tags is None and remove_tags is None:
            raise UsageError("nothing to change: give metadata, tags to add or tags to remove")
        patch = usermeta.check_patch(metadata) if metadata is not None else None
        add = usermeta.check_tags(add_tags, "add_tags") if add_tags is not None else ()
        remove = usermeta.check_tags(remove_tags, "remove_tags") if remove_tags is not None else ()
        both = sorted(set(add) & set(remove))
        if both:
            raise UsageError(f"tag {both[0]!r} is both added and removed; give it once")
        return cls(patch, add, remove)

    def can_grow(self) -> bool:
        """Whether applying it can make an item bigger (then limits are checked first)."""
        if self.add_tags:
            return True
        return self.metadata is not None and _sets_something(self.metadata)

    def apply(self, metadata: dict[str, Any], tags: list[str]) -> tuple[dict[str, Any], list[str]]:
        """The user's metadata and tags after the edit."""
        if self.metadata is not None:
            metadata = usermeta.merge_patch(metadata, self.metadata)
        if self.add_tags or self.remove_tags:
            tags = usermeta.apply_tags(tags, self.add_tags, self.remove_tags)
        return metadata, tags


def _is_text(text: str) -> bool:
    """Whether ``text`` can be stored (UTF-8: no unpaired surrogates, which a JSON body or a
    URL path can smuggle in; keys hold none)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _sets_something(patch: dict[str, Any]) -> bool:
    return any(
        v is not None and (not isinstance(v, dict) or _sets_something(v)) for v in patch.values()
    )


@dataclass(frozen=True)
class Selection:
    """Which items of a dataset a bulk edit applies to: those matching *every* criterion
    given (``keys``: the key is one of them; ``prefix``: the key starts with it, ``""`` for
    every item; ``where``: the item matches the query, :mod:`syncd.query`). At least one must
    be given, so an edit never applies to a whole dataset by omission."""

    keys: tuple[str, ...] | None = None
    prefix: str | None = None
    where: Query | None = None

    @classmethod
    def of(cls, keys: Any = None, prefix: Any = None, where: Any = None) -> Selection:
        """A checked selection; ``UsageError`` for a malformed or missing one. ``where`` is
        one ``--where`` expression or a list of them (all must hold)."""
        if keys is None and prefix is None and where is None:
            raise UsageError('name the items to change: keys (a list), a prefix ("": all) or where')
        query = None
        if where is not None:
            exprs = [where] if isinstance(where, str) else where
            if not isinstance(exprs, list | tuple) or not all(isinstance(e, str) for e in exprs):
                raise UsageError("where must be a query expression or a list of them")
            if not exprs:
                raise UsageError('where names no condition; to change every item give prefix ""')
            try:
                query = parse_where(list(exprs))
            except QueryError as exc:
                raise UsageError(str(exc)) from None
        if keys is not None:
            if isinstance(keys, str) or not isinstance(keys, list | tuple):
                raise UsageError("keys must be a list of item keys")
            if not all(isinstance(k, str) and k and _is_text(k) for k in keys):
                raise UsageError("keys must be non-empty strings of text (valid Unicode)")
            if len(keys) > MAX_KEYS:
                raise UsageError(
                    f"{len(keys):,} keys given; at most {MAX_KEYS:,} per update (use a prefix, "
                    "or several updates)"
                )
            keys = tuple(sorted(set(keys)))
        if prefix is not None and not (isinstance(prefix, str) and _is_text(prefix)):
            raise UsageError("prefix must be a string of text (valid Unicode)")
        return cls(keys, prefix, query)

    def candidates(self, after: str | None) -> list[str]:
        """The next :data:`BATCH` listed keys after ``after`` that the prefix admits."""
        assert self.keys is not None
        found: list[str] = []
        start = bisect.bisect_right(self.keys, after) if after is not None else 0
        for key in itertools.islice(self.keys, start, None):  # sorted
            if key.startswith(self.prefix or ""):
                found.append(key)
                if len(found) == BATCH:
                    break
        return found

    def page(
        self, catalog: Catalog, dataset_id: int, after: str | None, *, columns: str, lock: bool
    ) -> tuple[list[tuple[Any, ...]], str | None]:
        """The selected rows (``columns`` of ``items t``) of the next batch after key
        ``after``, in key order, and the cursor for the batch after it (None: done).
        ``lock``: lock the rows for this transaction (PostgreSQL)."""
        db = catalog.db
        suffix = " FOR UPDATE OF t" if lock and db.dialect == "postgresql" else ""
        # a query's terms name ``items`` unaliased: they filter a subquery of their own,
        # bounded to this batch's keys (else each batch would match the whole dataset again)
        matching, margs = "", []
        if self.where is not None:
            catalog.prepare_queries()
            matching, margs = query_sql.where(
                self.where, db.dialect, catalog.guesses_content_types(dataset_id)
            )
        if self.keys is not None:
            listed = self.candidates(after)
            following = listed[-1] if len(listed) == BATCH else None
            wanted = [k for k in listed if "\x00" not in k]  # no key holds a NUL byte
            if not wanted:
                return [], following
            terms, targs = "", []
            if self.where is not None:
                terms = (
                    " AND t.key IN (SELECT key FROM items WHERE dataset_id = ?"
                    f" AND key >= ? AND key <= ?{matching})"
                )
                targs = [dataset_id, wanted[0], wanted[-1], *margs]
            rows = db.execute(
                f"WITH wanted(k) AS (VALUES {', '.join(['(?)'] * len(wanted))})"
                # CROSS JOIN: the list drives the lookups on sqlite (see sql.select_keys)
                f" SELECT {columns} FROM wanted CROSS JOIN items t"
                f" WHERE t.dataset_id = ? AND t.key = wanted.k{terms} ORDER BY t.key{suffix}",
                [*wanted, dataset_id, *targs],
            ).fetchall()
            return rows, following
        if "\x00" in (self.prefix or "") or (after is not None and "\x00" in after):
            return [], None
        where, args = key_range(after, self.prefix or "")
        if self.where is not None:
            inner = (
                f"SELECT key FROM items WHERE dataset_id = ?{where}{matching} ORDER BY key LIMIT ?"
            )
            keyed = db.execute(
                f"SELECT t.key, {columns} FROM items t WHERE t.dataset_id = ? AND t.key IN"
                f" ({inner}) ORDER BY t.key{suffix}",
                [dataset_id, dataset_id, *args, *margs, BATCH],
            ).fetchall()
        else:
            keyed = db.execute(
                f"SELECT t.key, {columns} FROM items t WHERE t.dataset_id = ?{where}"
                f" ORDER BY t.key LIMIT ?{suffix}",
                [dataset_id, *args, BATCH],
            ).fetchall()
        return [tuple(r[1:]) for r in keyed], (keyed[-1][0] if len(keyed) == BATCH else None)


@dataclass
class Result:
    """What a bulk edit did: ``matched`` items selected, ``changed`` of them written (the
    others already were so), ``missing`` keys named that are not items of the dataset."""

    dataset: str
    matched: int = 0
    changed: int = 0
    missing: int = 0
    #: a few of the missing keys, to show
    missing_keys: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "matched": self.matched,
            "changed": self.changed,
            "missing": self.missing,
            "missing_keys": self.missing_keys,
        }


#: missing keys a result names
SHOW_MISSING = 20


def precheck(
    catalog: Catalog,
    dataset_id: int,
    selection: Selection,
    edit: Edit,
    *,
    require_all: bool = False,
) -> None:
    """Refuse (``UsageError``) an edit that would take any selected item past a limit, and
    with ``require_all`` one naming keys the dataset has no item for, reading the selected
    items' user part a batch at a time; nothing is written. (A concurrent write may still
    change an item before its batch: :func:`edit_batch` checks again.)"""
    if not edit.can_grow() and not (require_all and selection.keys is not None):
        return
    after: str | None = None
    missing: list[str] = []
    count = 0
    while True:
        listed = selection.candidates(after) if selection.keys is not None else []
        rows, following = selection.page(
            catalog, dataset_id, after, columns="t.key, t.user_metadata, t.tags", lock=False
        )
        for key, metadata, tags in rows:
            usermeta.check_result(*edit.apply(json.loads(metadata), json.loads(tags)), key)
        if require_all and listed:
            found = {r[0] for r in rows}
            gone = [k for k in listed if k not in found]
            count += len(gone)
            missing += gone[: max(SHOW_MISSING - len(missing), 0)]
        if following is None:
            break
        after = following
    if missing:
        shown = ", ".join(repr(k) for k in missing[:5]) + (", ..." if count > 5 else "")
        raise ItemNotFound(
            f"{count} of the keys given {'is' if count == 1 else 'are'} not an item of the "
            f"dataset: {shown}; nothing was changed (see `syncd items ls`)"
        )


def edit_batch(
    catalog: Catalog,
    dataset_id: int,
    selection: Selection,
    edit: Edit,
    after: str | None,
    result: Result,
) -> str | None:
    """Edit one batch of the selected items after key ``after`` in one transaction (see the
    module's contracts), counting into ``result``; the cursor of the next batch, or None
    when every batch is done. ``UsageError`` (the batch rolled back) if an item would pass
    a limit."""
    with transaction(catalog.db):
        rows, following = selection.page(catalog, dataset_id, after, columns=_SELECT, lock=True)
        if selection.keys is not None:
            found = {r[_KEY] for r in rows}
            wanted = selection.candidates(after)
            gone = [k for k in wanted if k not in found]
            result.missing += len(gone)
            room = SHOW_MISSING - len(result.missing_keys)
            result.missing_keys += gone[: max(room, 0)]
        changed = _write(catalog, rows, edit)
        result.matched += len(rows)
        result.changed += changed
    return following


def _write(catalog: Catalog, rows: Sequence[tuple[Any, ...]], edit: Edit) -> int:
    """Apply ``edit`` to ``rows`` (:data:`_COLUMNS`), write and record those it changes;
    how many. In the caller's transaction."""
    at = now()
    writes: list[tuple[str, str, str, int, str]] = []
    records: list[tuple[Any, ...]] = []
    n_items = len(ITEM_COLUMNS)
    for row in rows:
        old_meta, old_tags = json.loads(row[n_items]), json.loads(row[n_items + 1])
        metadata, tags = edit.apply(old_meta, old_tags)
        usermeta.check_result(metadata, tags, row[_KEY])
        new_meta, new_tags = usermeta.dumps(metadata), usermeta.dumps(tags)
        # compared as canonical text: on PostgreSQL the stored text is jsonb's own format,
        # and 1 == True in Python where JSON tells them apart
        if new_meta == usermeta.dumps(old_meta) and new_tags == usermeta.dumps(old_tags):
            continue
        writes.append((new_meta, new_tags, at, row[0], row[_KEY]))
        item_row = list(row[:n_items])
        item_row[_UPDATED_AT] = at
        records.append((*item_row, new_meta, new_tags))
    if writes:
        # first: it keeps what the edit replaces for the dataset's snapshots
        catalog.db.record_changes("updated", "edit", at, records)
        catalog.db.executemany(
            "UPDATE items SET user_metadata = ?, tags = ?, updated_at = ?"
            " WHERE dataset_id = ? AND key = ?",
            writes,
        )
    return len(writes)


def update(
    catalog: Catalog, dataset: str, selection: Selection, edit: Edit, *, require_all: bool = False
) -> Result:
    """Apply ``edit`` to the selected items of ``dataset``, batch by batch (``UsageError``
    for an unknown dataset or an edit past the limits, nothing written; with
    ``require_all``, also for keys given that are not items of the dataset)."""
    ds = catalog.get_dataset(dataset)
    precheck(catalog, ds.id, selection, edit, require_all=require_all)
    result = Result(ds.name)
    after: str | None = None
    while True:
        after = edit_batch(catalog, ds.id, selection, edit, after, result)
        if after is None:
            return result


def update_item(catalog: Catalog, dataset: str, key: str, edit: Edit) -> Item:
    """Apply ``edit`` to the item ``key`` of ``dataset`` in one transaction and return the
    item as it now is; ``UsageError`` for an unknown dataset or item, or an edit past the
    limits (nothing written)."""
    return edit_item(catalog, dataset, key, edit)[1]


def edit_item(catalog: Catalog, dataset: str, key: str, edit: Edit) -> tuple[Item, Item]:
    """:func:`update_item`, returning the item before and after the edit."""
    ds = catalog.get_dataset(dataset)
    if not _is_text(key):
        raise ItemNotFound(f"dataset {ds.name!r} has no item {key!r} (see `syncd items ls`)")
    with transaction(catalog.db):
        rows, _ = Selection(keys=(key,)).page(catalog, ds.id, None, columns=_SELECT, lock=True)
        before = catalog.get_item(ds.id, key) if rows else None
        if before is None:
            raise ItemNotFound(f"dataset {ds.name!r} has no item {key!r} (see `syncd items ls`)")
        _write(catalog, rows, edit)
        after = catalog.get_item(ds.id, key)
    assert after is not None  # locked in this transaction: it cannot have gone
    return before, after


class ItemNotFound(UsageError):
    """The dataset has no item with that key (HTTP 404, exit 2)."""
