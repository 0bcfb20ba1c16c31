"""A dataset's keys as folders: the children of a prefix, one level at a time.

Keys are flat; ``/`` makes folders only by convention, as in S3's ``ListObjectsV2`` with a
delimiter. The *children* of a prefix ``P`` (empty, or ending in ``/``, though neither is
required) are, in key order:

* a **folder** ``P + name + "/"`` for every distinct ``name`` such that some key starts with
  ``P + name + "/"`` (an S3 "folder marker" object ``P + name + "/"`` is inside its folder);
* an **item** for every key ``P + rest`` whose ``rest`` has no ``/`` (``rest`` may be empty:
  the key ``P`` itself).

:func:`children` reads them with a *skip scan* of the key index, one recursive query per
page: each folder costs one index seek (the next key at or after the folder's upper bound),
never a read of the items inside it, so a page of a level costs about as many index seeks as
it shows entries, however many items lie below them, and one round trip to the catalog. :func:`bounded_count` counts a folder's items and bytes reading at
most ``cap + 1`` rows: a count over a million items below one folder would otherwise cost a
page a quarter of a second per folder.

Both are plain range reads of the ``(dataset_id, key)`` primary key, the same SQL on sqlite
and PostgreSQL (its ``key`` column compares by code point, ``COLLATE "C"``, as sqlite does).

:func:`query_window` pages through the items matching a query (:mod:`syncd.query`) reading at
most a *window* of keys per call, so a filter that matches few items or none never holds the
catalog for a read of the whole dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from syncd.store.catalog import Item, key_range, prefix_upper_bound

if TYPE_CHECKING:
    from syncd.query import Query
    from syncd.store.catalog import Catalog

_COLUMNS = ", ".join(Item.__dataclass_fields__)


@dataclass(frozen=True)
class Folder:
    """A child folder: ``prefix`` is the whole key prefix, ending in ``/``."""

    prefix: str


@dataclass(frozen=True)
class Level:
    """At most ``limit`` children of a prefix after a cursor, in key order (each a
    :class:`Folder` or an :class:`~syncd.store.catalog.Item`), and ``more``: whether the level
    has children after the last of them."""

    entries: list[Folder | Item]
    more: bool

    @property
    def last(self) -> str | None:
        """The cursor after the last entry: its folder prefix or its key."""
        if not self.entries:
            return None
        last = self.entries[-1]
        return last.prefix if isinstance(last, Folder) else last.key


def children(
    catalog: Catalog, dataset_id: int, prefix: str, *, after: str | None = None, limit: int = 100
) -> Level:
    """The children of ``prefix`` (see the module docstring) after ``after``, at most
    ``limit`` (>= 1) of them.

    ``after`` is a :attr:`Level.last` of an earlier page of the same prefix: a folder prefix
    (the page continues after every key in it) or an item's key. Keyset paging: what is added
    or removed before ``after`` never shifts a later page. ``ValueError`` for an ``after``
    that is not under ``prefix``, or a folder cursor that is not one level below it."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if after is None:
        bound, inclusive = prefix, True
    else:
        bound, inclusive = _resume(prefix, after)
    keys = _walk(catalog, dataset_id, prefix, bound, inclusive, limit + 1)
    entries: list[Folder | Item] = []
    items: dict[str, Item] = {}
    item_keys = [k for k in keys if k.find("/", len(prefix)) < 0]
    if item_keys:
        marks = ", ".join("?" * len(item_keys))
        rows = catalog.db.execute(
            f"SELECT {_COLUMNS} FROM items WHERE dataset_id = ? AND key IN ({marks})",
            [dataset_id, *item_keys],
        ).fetchall()
        make = catalog.item_maker(dataset_id)
        items = {row[0]: make(*row) for row in rows}
    for key in keys:
        slash = key.find("/", len(prefix))
        if slash >= 0:
            entries.append(Folder(key[: slash + 1]))
        elif key in items:  # (removed between the two reads: left out)
            entries.append(items[key])
    return Level(entries[:limit], len(keys) > limit)


def _walk(
    catalog: Catalog, dataset_id: int, prefix: str, bound: str, inclusive: bool, limit: int
) -> list[str]:
    """The first key of each of the level's next ``limit`` entries from ``bound`` (``>=`` or
    ``>``), in order: a recursive query, one index seek per entry, each starting past the
    entry before (past its whole folder for a folder), so the catalog is asked once per page.
    """
    pg = catalog.db.dialect == "postgresql"
    n = len(prefix)  # an int made here, the only value written into the SQL
    find = "strpos" if pg else "instr"
    collate = ' COLLATE "C"' if pg else ""
    upper = prefix_upper_bound(prefix)
    below = " AND key < ?" if upper is not None else ""
    below_args: list[object] = [upper] if upper is not None else []
    # past an entry, as one lower bound (the planner seeks on one): a folder's upper bound;
    # for an item, its key and U+0001, the smallest text above it that a key can be (no key
    # holds a NUL)
    rest = f"substr(walk.k, {n + 1})"
    one = "chr(1)" if pg else "char(1)"
    past = (
        f"(CASE WHEN {find}({rest}, '/') > 0"
        f" THEN substr(walk.k, 1, {n} + {find}({rest}, '/') - 1) || '0'"
        f" ELSE walk.k || {one} END){collate}"
    )
    first_cmp = ">=" if inclusive else ">"
    sql = (
        "WITH RECURSIVE walk(k, depth) AS ("
        f" SELECT (SELECT key FROM items WHERE dataset_id = ? AND key {first_cmp} ?{below}"
        " ORDER BY key LIMIT 1), 1"
        " UNION ALL"
        f" SELECT (SELECT key FROM items WHERE dataset_id = ? AND key >= {past}{below}"
        " ORDER BY key LIMIT 1), walk.depth + 1"
        " FROM walk WHERE walk.k IS NOT NULL AND walk.depth < ?"
        ") SELECT k FROM walk WHERE k IS NOT NULL ORDER BY depth"
    )
    args = [dataset_id, bound, *below_args, dataset_id, *below_args, limit]
    return [str(r[0]) for r in catalog.db.execute(sql, args).fetchall()]


def _resume(prefix: str, after: str) -> tuple[str, bool]:
    """Where a page after the cursor ``after`` starts: ``(bound, inclusive)``."""
    if not after.startswith(prefix):
        raise ValueError("the cursor is not under this prefix")
    rest = after[len(prefix) :]
    slash = rest.find("/")
    if slash < 0:
        return after, False  # an item's key: strictly after it
    if slash != len(rest) - 1:
        raise ValueError("the cursor is not a folder one level under this prefix")
    return after[:-1] + "0", True  # a folder: at its upper bound ("/" + 1 is "0")


@dataclass(frozen=True)
class Count:
    """Items and bytes under a prefix, counting at most ``cap`` items: with ``more`` there are
    more than ``items`` (== ``cap``) and more than ``bytes``."""

    items: int
    bytes: int
    more: bool


def bounded_count(catalog: Catalog, dataset_id: int, prefix: str, cap: int) -> Count:
    """How many items (and bytes) the dataset has under ``prefix``, reading at most
    ``cap + 1`` rows of the key index (``cap`` >= 1): past ``cap`` the answer is "more than
    ``cap``" (:attr:`Count.more`)."""
    if cap < 1:
        raise ValueError("cap must be at least 1")
    sql = "SELECT size FROM items WHERE dataset_id = ? AND key >= ?"
    args: list[object] = [dataset_id, prefix]
    upper = prefix_upper_bound(prefix)
    if upper is not None:
        sql += " AND key < ?"
        args.append(upper)
    sql = f"SELECT count(*), coalesce(sum(size), 0) FROM ({sql} ORDER BY key LIMIT ?) AS under"
    args.append(cap + 1)
    n, total = catalog.db.execute(sql, args).fetchone()
    n, total = int(n), int(total)
    if n > cap:
        # the bytes of the first cap items only would be as arbitrary as any: say "more than"
        # the count, and the bytes counted so far as a lower bound (they include the extra)
        return Count(cap, total, True)
    return Count(n, total, False)


def bounded_counts(catalog: Catalog, dataset_id: int, prefixes: list[str], cap: int) -> list[Count]:
    """:func:`bounded_count` of each of ``prefixes``, in one statement (a page counts its
    folders with one round trip to the catalog, not one per folder)."""
    if cap < 1:
        raise ValueError("cap must be at least 1")
    out: list[Count] = []
    for start in range(0, len(prefixes), _COUNTS_PER_STATEMENT):
        chunk = prefixes[start : start + _COUNTS_PER_STATEMENT]
        parts, args = [], []
        for n, prefix in enumerate(chunk):
            sql, more = key_range(None, prefix)
            parts.append(
                f"SELECT {n} AS n, count(*) AS items, coalesce(sum(size), 0) AS bytes FROM"
                f" (SELECT size FROM items WHERE dataset_id = ?{sql} ORDER BY key LIMIT ?)"
                f" AS under{n}"
            )
            args += [dataset_id, *more, cap + 1]
        rows = dict(
            (int(r[0]), (int(r[1]), int(r[2])))
            for r in catalog.db.execute(" UNION ALL ".join(parts), args).fetchall()
        )
        for n in range(len(chunk)):
            items, total = rows[n]
            out.append(Count(cap, total, True) if items > cap else Count(items, total, False))
    return out


#: subqueries in one counting statement (sqlite allows 500 terms in a compound SELECT)
_COUNTS_PER_STATEMENT = 100


def query_window(
    catalog: Catalog,
    dataset_id: int,
    query: Query,
    *,
    after: str | None,
    limit: int,
    window: int,
) -> tuple[list[Item], str | None]:
    """The items matching ``query`` (its prefix and conditions; key order, whatever its sort)
    among the next ``window`` keys under its prefix after ``after``: at most ``limit`` of them,
    and the last key of that window, or None when the window holds the prefix's last key.

    Each call reads at most ``window`` keys however rare the matches (a filter no item
    matches would otherwise read every item of the dataset in one statement, holding the
    catalog for seconds on ten million): a caller scanning further calls again after the
    returned key, and the catalog serves others in between."""
    from syncd.store import query_sql

    if limit < 1 or window < 1:
        raise ValueError("limit and window must be at least 1")
    catalog.prepare_queries()
    dialect = catalog.db.dialect
    bound = " AND key > ?" if after is not None else ""
    bound_args: list[object] = [after] if after is not None else []
    prefix_sql, prefix_args = key_range(None, query.prefix)
    # the window's last key, and whether any key follows it (else the window is the rest)
    ends = catalog.db.execute(
        f"SELECT key FROM items WHERE dataset_id = ?{prefix_sql}{bound} ORDER BY key"
        " LIMIT 2 OFFSET ?",
        [dataset_id, *prefix_args, *bound_args, window - 1],
    ).fetchall()
    end = str(ends[0][0]) if len(ends) == 2 else None
    terms, args = query_sql.where(query, dialect, catalog.guesses_content_types(dataset_id))
    terms += bound
    args += bound_args
    if end is not None:
        terms += " AND key <= ?"
        args.append(end)
    if dialect == "sqlite":
        # the keys first, then their rows, as syncd.store.query_sql.page does: the inner
        # query can run on a partial metadata index alone
        sql = (
            f"SELECT {_COLUMNS} FROM items WHERE dataset_id = ? AND key IN"
            f" (SELECT key FROM items WHERE dataset_id = ?{terms} ORDER BY key LIMIT ?)"
            " ORDER BY key"
        )
        rows = catalog.db.execute(sql, [dataset_id, dataset_id, *args, limit]).fetchall()
    else:
        sql = f"SELECT {_COLUMNS} FROM items WHERE dataset_id = ?{terms} ORDER BY key LIMIT ?"
        rows = catalog.db.execute(sql, [dataset_id, *args, limit]).fetchall()
    make = catalog.item_maker(dataset_id)
    return [make(*row) for row in rows], end
