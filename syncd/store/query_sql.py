"""A :class:`~syncd.query.Query` as SQL, per dialect.

Every value a user gives travels as a parameter, never as SQL text: keys, patterns, content
types, sizes, times, metadata values and metadata *paths* (sqlite: a JSON path built from
names :func:`~syncd.query.check_segment` accepted, each in double quotes, passed to
``json_type``/``json_extract`` as a parameter; PostgreSQL: a ``jsonb`` document for ``@>`` or a
``text[]`` path for ``#>``, both parameters). The only text this module puts in SQL comes from
its own constants, chosen by the query's shape.

The indexes these queries use (migrations ``0015_item_queries`` and ``0017_content_type_rule``, :mod:`syncd.store.schema`) are
chosen for what they cost a sync (every index is written with every item) as much as for
what they give queries:

* partial indexes over the items that *have* user metadata, tags, or provider metadata/object
  tags, which a sync writing items without them hardly touches (sqlite:
  ``(dataset_id, key, size, <the JSON>)``, so a query or a count reads the index alone;
  PostgreSQL: GIN ``jsonb_path_ops`` for the containment queries ``@>``). A condition on one
  of them adds the partial index's own predicate (:data:`HAS`), which the condition implies,
  so the planner may use the index: where 10% of the items have metadata, a metadata query
  reads a tenth of the rows;
* no index on content type, size or time: ``(dataset_id, content_type, key, size)`` cost a 1M
  first sync 15% on sqlite and 14% on PostgreSQL (an index led by size made it several times
  slower on sqlite), while the first page of a query in key order reads the dataset along its
  primary key and stops at the page's end (for the common filters a few thousand rows), and
  a count reads the dataset once (0.1-0.25 s per 1M items; bench/bench_query.py).

The ``mtime`` order is :func:`syncd.query.mtime_order` (the text without its ``Z``).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from syncd.query import (
    Compare,
    ContentType,
    KeyGlob,
    Meta,
    Query,
    Tags,
    glob_matcher,
)

#: what each sort orders by, per dialect (PostgreSQL compares text by code point, as sqlite
#: does: ``COLLATE "C"``)
SORT_SQL = {
    "sqlite": {"key": "key", "size": "size", "mtime": "rtrim(mtime, 'Z')"},
    "postgresql": {"key": "key", "size": "size", "mtime": "rtrim(mtime, 'Z') COLLATE \"C\""},
}
_CT = {"sqlite": "content_type", "postgresql": 'content_type COLLATE "C"'}
_OPS = frozenset({"=", "<", "<=", ">", ">="})

#: the predicate of each partial index over the items with metadata (the same text as in the
#: migration: a planner uses a partial index only when the query repeats its predicate)
HAS = {
    "sqlite": {
        "user_metadata": "user_metadata <> '{}'",
        "tags": "tags <> '[]'",
        # a comparison with a constant, not the JSON functions: every item a sync writes is
        # tested (migration 0017: the rows with any provider metadata, a few more than need it)
        "provider": "metadata <> '{}'",
        "object_tags": "metadata <> '{}'",
    },
    "postgresql": {
        "user_metadata": "user_metadata <> '{}'::jsonb",
        "tags": "tags <> '[]'::jsonb",
        "provider": "metadata <> '{}'::jsonb",
        "object_tags": "metadata <> '{}'::jsonb",
    },
}


def where(query: Query, dialect: str, guesses: bool = True) -> tuple[str, list[Any]]:
    """The ``WHERE`` terms (each starting `` AND``) and their parameters for ``query``'s
    prefix and conditions, after ``dataset_id = ?``. ``guesses``: the dataset's content types
    are guesses unless an item says otherwise (:func:`providers.content_types.guessed_by_default`),
    which ``metadata.content_type_guessed`` reads."""
    from syncd.store.catalog import key_range  # the one prefix-as-range rule

    sql, args = key_range(None, query.prefix)
    terms = [sql] if sql else []
    for cond in query.where:
        term, more = _condition(cond, dialect, guesses)
        terms.append(term)
        args.extend(more)
    return "".join(terms), args


def _condition(cond: Any, dialect: str, guesses: bool) -> tuple[str, list[Any]]:
    from syncd.store.catalog import key_range

    if isinstance(cond, KeyGlob):
        if cond.is_exact:
            return " AND key = ?", [cond.literal_prefix]
        sql, args = key_range(None, cond.literal_prefix)
        if dialect == "sqlite":
            return sql + " AND syncd_glob(?, key)", [*args, cond.pattern]
        return sql + " AND key ~ ?", [*args, cond.regex()]
    if isinstance(cond, ContentType):
        column = _CT[dialect]
        prefix = cond.prefix
        if prefix is None:
            return f" AND {column} = ?", [cond.value]
        from syncd.store.catalog import prefix_upper_bound

        upper = prefix_upper_bound(prefix)
        assert upper is not None  # the prefix ends in "/"
        return f" AND {column} >= ? AND {column} < ?", [prefix, upper]
    if isinstance(cond, Compare):
        assert cond.op in _OPS  # the model allows no other; it becomes SQL text
        if cond.field == "size":
            return f" AND size {cond.op} ?", [cond.value]
        if cond.field == "mtime":
            return f" AND {SORT_SQL[dialect]['mtime']} {cond.op} ?", [cond.value]
        return f" AND updated_at {cond.op} ?", [cond.value]
    if isinstance(cond, Tags):
        return _tags(cond, dialect)
    if isinstance(cond, Meta):
        if cond.column == "metadata" and list(cond.path) == ["content_type_guessed"]:
            return _guessed(cond, dialect, guesses)
        return _meta(cond, dialect)
    raise TypeError(f"not a query condition: {cond!r}")


def _tags(cond: Tags, dialect: str) -> tuple[str, list[Any]]:
    has = HAS[dialect]["tags"]
    tags = list(dict.fromkeys(cond.tags))
    if dialect == "sqlite":
        marks = ", ".join("?" * len(tags))
        if cond.mode == "any":
            return (
                f" AND {has} AND EXISTS (SELECT 1 FROM json_each(items.tags)"
                f" WHERE value IN ({marks}))",
                tags,
            )
        return (
            f" AND {has} AND (SELECT count(DISTINCT value) FROM json_each(items.tags)"
            f" WHERE value IN ({marks})) = ?",
            [*tags, len(tags)],
        )
    if cond.mode == "all":
        return f" AND {has} AND tags @> ?::jsonb", [json.dumps(tags)]
    ors = " OR ".join(["tags @> ?::jsonb"] * len(tags))
    return f" AND {has} AND ({ors})", [json.dumps([t]) for t in tags]


def _guessed(cond: Meta, dialect: str, guesses: bool) -> tuple[str, list[Any]]:
    """``metadata.content_type_guessed`` as the public item has it: ``true`` where the type
    is a guess, absent where it is not, while the row stores only the exceptions to its
    dataset's rule (``guesses``; :mod:`providers.content_types`)."""
    if cond.values and not any(v is True for v in cond.scalars()):
        return " AND 1 = 0", []  # the member is never anything but true
    if dialect == "sqlite":
        rule = "1" if guesses else "0"
        return f" AND coalesce(json_extract(metadata, '$.content_type_guessed'), {rule}) = 1", []
    rule = "TRUE" if guesses else "FALSE"
    return f" AND coalesce((metadata -> 'content_type_guessed') = 'true'::jsonb, {rule})", []


def _meta(cond: Meta, dialect: str) -> tuple[str, list[Any]]:
    column = cond.column  # one of two names (the model's Literal), never user text
    assert column in ("user_metadata", "metadata")
    path = list(cond.path)
    if column == "user_metadata":
        has = " AND " + HAS[dialect]["user_metadata"]
    elif path[0] in ("provider", "object_tags"):
        has = " AND " + HAS[dialect][path[0]]
    else:
        has = ""
    if dialect == "sqlite":
        jpath = "$" + "".join(f'."{segment}"' for segment in path)
        if not cond.values:
            return f"{has} AND json_type({column}, ?) IS NOT NULL", [jpath]
        # sqlite compares a JSON string (TEXT) and a number (INTEGER/REAL) as different
        # values, so one IN over the path's value finds strings and numbers exactly, the
        # cheap test first; json_type then keeps out true/false (read as 1/0) and an object
        # or array (read as JSON text), and only runs on the rows that passed
        ors, args = [], []
        plain = [v for v in cond.scalars() if v is not None and not isinstance(v, bool)]
        special = [json.dumps(v) for v in cond.scalars() if v is None or isinstance(v, bool)]
        if plain:
            marks = ", ".join("?" * len(plain))
            ors.append(
                f"(json_extract({column}, ?) IN ({marks})"
                f" AND json_type({column}, ?) IN ('integer', 'real', 'text'))"
            )
            args += [jpath, *plain, jpath]
        if special:
            ors.append(f"json_type({column}, ?) IN ({', '.join('?' * len(special))})")
            args += [jpath, *special]
        return f"{has} AND ({' OR '.join(ors)})", args
    if not cond.values:
        # the parent is an object holding the name (jsonb_exists is the function behind the
        # ``?`` operator, which the placeholder syntax cannot carry)
        parent = path[:-1]
        return (
            f"{has} AND jsonb_typeof({column} #> ?::text[]) = 'object'"
            f" AND jsonb_exists({column} #> ?::text[], ?)",
            [parent, parent, path[-1]],
        )
    ors, args = [], []
    for value in cond.scalars():
        doc: Any = value
        for segment in reversed(path):
            doc = {segment: doc}
        ors.append(f"{column} @> ?::jsonb")
        args.append(json.dumps(doc))
    return f"{has} AND ({' OR '.join(ors)})", args


def page(
    query: Query,
    dialect: str,
    dataset_id: int,
    columns: str,
    *,
    after: tuple[Any, str] | None,
    limit: int,
    guesses: bool = True,
) -> tuple[str, list[Any]]:
    """``SELECT columns`` of the next at most ``limit`` matching items of the dataset in the query's order, after ``after`` (``(sort value, key)`` of the last
    item of the previous page): keyset pagination, so rows added or removed elsewhere never
    shift a page."""
    terms, args = where(query, dialect, guesses)
    sort = SORT_SQL[dialect][query.sort]
    direction = "DESC" if query.order == "desc" else "ASC"
    if after is not None:
        cmp = "<" if query.order == "desc" else ">"
        if query.sort == "key":
            terms += f" AND key {cmp} ?"
            args.append(after[1])
        else:
            terms += f" AND ({sort}, key) {cmp} (?, ?)"
            args.extend(after)
    order = f"key {direction}" if query.sort == "key" else f"{sort} {direction}, key {direction}"
    if dialect == "sqlite" and columns != "key":
        # the keys first, then their rows: the inner query can run on an index alone (the
        # partial metadata indexes hold the JSON they test), where selecting every column
        # looks up each candidate's row in the table before testing it (116 ms instead of
        # a few for a metadata value one item of 1M has)
        inner = f"SELECT key FROM items WHERE dataset_id = ?{terms} ORDER BY {order} LIMIT ?"
        sql = (
            f"SELECT {columns} FROM items WHERE dataset_id = ? AND key IN ({inner})"
            f" ORDER BY {order}"
        )
        return sql, [dataset_id, dataset_id, *args, limit]
    sql = f"SELECT {columns} FROM items WHERE dataset_id = ?{terms} ORDER BY {order} LIMIT ?"
    return sql, [dataset_id, *args, limit]


def count(
    query: Query, dialect: str, dataset_id: int, guesses: bool = True
) -> tuple[str, list[Any]]:
    """``SELECT count, total bytes`` of the dataset's matching items."""
    terms, args = where(query, dialect, guesses)
    return (
        f"SELECT count(*), coalesce(sum(size), 0) FROM items WHERE dataset_id = ?{terms}",
        [dataset_id, *args],
    )


def summary(
    query: Query, dialect: str, dataset_id: int, by: str, limit: int, guesses: bool = True
) -> tuple[str, list[Any]]:
    """``SELECT group, count, bytes`` of the matching items grouped ``by`` ``content_type``
    or ``folder`` (the part of the key after the query's prefix up to and including the next
    ``/``, with the prefix; NULL for an object directly under the prefix), in group order,
    at most ``limit`` groups."""
    terms, args = where(query, dialect, guesses)
    if by == "content_type":
        group, gargs = _CT[dialect], []
    elif by == "folder":
        n = len(query.prefix)
        find = "instr" if dialect == "sqlite" else "strpos"
        rest = "substr(key, ?)"
        group = (
            f"CASE WHEN {find}({rest}, '/') > 0 THEN substr(key, 1, ? + {find}({rest}, '/')) END"
        )
        gargs = [n + 1, n, n + 1]
    else:
        raise ValueError(f"cannot group by {by!r}")
    nulls = " NULLS FIRST" if dialect == "postgresql" else ""
    grouped = 'grp COLLATE "C"' if dialect == "postgresql" else "grp"
    sql = (
        f"SELECT grp, count(*), coalesce(sum(size), 0) FROM"
        f" (SELECT {group} AS grp, size FROM items"
        f" WHERE dataset_id = ?{terms}) AS matched"
        f" GROUP BY grp ORDER BY {grouped}{nulls} LIMIT ?"
    )
    return sql, [*gargs, dataset_id, *args, limit]


def register(conn: Any) -> None:
    """Give a sqlite connection the ``syncd_glob(pattern, key)`` function the glob condition
    uses (sqlite's own ``GLOB`` lets ``*`` match ``/``)."""
    if isinstance(conn, sqlite3.Connection):
        conn.create_function("syncd_glob", 2, _glob, deterministic=True)


def _glob(pattern: str, key: str) -> bool:
    return glob_matcher(pattern)(key)
