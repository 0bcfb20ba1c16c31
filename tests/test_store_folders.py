"""The children of a prefix, one level at a time (:mod:`syncd.store.folders`), on both stores.

The store's answer is compared with a brute-force split of the same keys written here: random
key sets (folders, folder markers, keys equal to the prefix, characters around ``/`` in code
point order: ``.`` and ``-`` sort just before it, ``0`` just after), random prefixes and page
sizes, and pages read while keys are added and removed between them.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers.config import DriverConfig
from syncd.query import Query
from syncd.reconcile.filters import Filters
from syncd.store import folders
from syncd.store.catalog import Catalog, Item
from syncd.store.db import transaction
from syncd.store.stamps import now
from tests import test_item_queries as item_queries
from tests.conftest import CatalogMaker

#: characters next to "/" in code point order, a multi-byte one, and "%" and "_" (LIKE's)
key_chars = st.sampled_from(list("ab/.-0é%_"))
keys = st.text(key_chars, min_size=1, max_size=6)
key_sets = st.dictionaries(keys, st.integers(0, 1000), min_size=0, max_size=30)
MTIME = "2026-01-01T00:00:00Z"
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def make_dataset(catalog: Catalog, name: str = "ds") -> int:
    return catalog.create_dataset(
        name, "s3://bkt/", DriverConfig(type="s3", bucket="bkt"), Filters()
    ).id


def put(catalog: Catalog, ds: int, sizes: dict[str, int]) -> None:
    with transaction(catalog.db):
        catalog.write_items(
            ds,
            [
                Item(k, "/" + k, f"s3://bkt/{k}", n, "e", None, MTIME, None, now(), now())
                for k, n in sizes.items()
            ],
        )


def expected(sizes: dict[str, int], prefix: str) -> list[tuple[str, str]]:
    """The level by brute force: ``("folder", prefix)`` / ``("item", key)`` in code point order
    of the entry's text."""
    out: set[tuple[str, str]] = set()
    for key in sizes:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if "/" in rest:
            out.add(("folder", prefix + rest[: rest.index("/") + 1]))
        else:
            out.add(("item", key))
    return sorted(out, key=lambda e: e[1])


def shown(level: folders.Level) -> list[tuple[str, str]]:
    return [
        ("folder", e.prefix) if isinstance(e, folders.Folder) else ("item", e.key)
        for e in level.entries
    ]


def read_all(catalog: Catalog, ds: int, prefix: str, page: int) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    after = None
    while True:
        level = folders.children(catalog, ds, prefix, after=after, limit=page)
        assert len(level.entries) <= page
        seen += shown(level)
        if not level.more:
            return seen
        assert level.entries, "a page with more after it is never empty"
        after = level.last


@st.composite
def prefixes(draw: Any, sizes: dict[str, int]) -> str:
    """A prefix: often a folder of the keys (up to one of their slashes), else anything."""
    folders_of = sorted({k[: i + 1] for k in sizes for i, c in enumerate(k) if c == "/"})
    choices = [st.just(""), keys]
    if folders_of:
        choices += [st.sampled_from(folders_of)] * 3
    if sizes:
        choices.append(st.sampled_from(sorted(sizes)))  # a key itself as the prefix
    return draw(st.one_of(choices))


@st.composite
def cases(draw: Any) -> tuple[dict[str, int], str]:
    sizes = draw(key_sets)
    return sizes, draw(prefixes(sizes))


@SETTINGS
@given(case=cases(), page=st.integers(1, 6))
def test_children_equal_a_brute_force_split(
    catalogs: CatalogMaker, case: tuple[dict[str, int], str], page: int
) -> None:
    sizes, prefix = case
    catalog = catalogs()
    ds = make_dataset(catalog)
    other = make_dataset(catalog, "other")  # another dataset's keys are never shown
    put(catalog, ds, sizes)
    put(catalog, other, {"a/zz": 1, "zz": 2, prefix + "q/x": 3} if prefix else {"q": 1})
    want = expected(sizes, prefix)
    assert read_all(catalog, ds, prefix, page) == want
    for kind, entry in want:
        under = {k: n for k, n in sizes.items() if k.startswith(entry)}
        if kind != "folder":
            continue
        for cap in (1, len(under), len(under) + 1):
            count = folders.bounded_count(catalog, ds, entry, cap)
            if len(under) > cap:
                assert (count.items, count.more) == (cap, True)
                # the bytes read: a lower bound, the first cap + 1 items in key order
                assert count.bytes == sum(under[k] for k in sorted(under)[: cap + 1])
            else:
                assert count == folders.Count(len(under), sum(under.values()), False)
    # all of the level's folders at once, as a page counts them
    named = [e for kind, e in want if kind == "folder"]
    for cap in (1, 3):
        assert folders.bounded_counts(catalog, ds, named, cap) == [
            folders.bounded_count(catalog, ds, p, cap) for p in named
        ]
    total = folders.bounded_count(catalog, ds, prefix, 10_000)
    under = [n for k, n in sizes.items() if k.startswith(prefix)]
    assert total == folders.Count(len(under), sum(under), False)


@SETTINGS
@given(
    case=cases(),
    page=st.integers(1, 3),
    churn=st.lists(st.tuples(st.lists(keys, max_size=3), key_sets), max_size=6),
)
def test_pages_neither_skip_nor_repeat_while_keys_change(
    catalogs: CatalogMaker,
    case: tuple[dict[str, int], str],
    page: int,
    churn: list[tuple[list[str], dict[str, int]]],
) -> None:
    """Between pages some keys are removed and others added. Every entry that is there
    throughout (a folder with a key that stays in it, an item that stays) is shown exactly
    once, in order; nothing is shown twice."""
    sizes, prefix = case
    catalog = catalogs()
    ds = make_dataset(catalog)
    put(catalog, ds, sizes)
    current = dict(sizes)
    stays = set(sizes)
    seen: list[tuple[str, str]] = []
    rounds = iter(churn)
    after = None
    while True:
        level = folders.children(catalog, ds, prefix, after=after, limit=page)
        seen += shown(level)
        if not level.more:
            break
        after = level.last
        gone, added = next(rounds, ([], {}))
        gone = [k for k in dict.fromkeys(gone) if k in current]
        with transaction(catalog.db):
            catalog.delete_items(ds, gone)
        for k in gone:
            current.pop(k)
        stays -= set(gone)
        added = {k: n for k, n in added.items() if k not in current}
        put(catalog, ds, added)
        current.update(added)
    assert len(seen) == len(set(seen)), "an entry came twice"
    throughout = set(expected({k: 0 for k in stays}, prefix))
    assert [e for e in seen if e in throughout] == [
        e for e in expected(sizes, prefix) if e in throughout
    ]


def test_cursors_from_another_prefix_are_refused(catalogs: CatalogMaker) -> None:
    catalog = catalogs()
    ds = make_dataset(catalog)
    put(catalog, ds, {"a/b/c": 1, "a/d": 2})
    for after in ("b/x", "a/b/c/", "a/b/c"):
        with pytest.raises(ValueError):
            folders.children(catalog, ds, "a/", after=after)
    with pytest.raises(ValueError):
        folders.children(catalog, ds, "a/", limit=0)
    with pytest.raises(ValueError):
        folders.bounded_count(catalog, ds, "a/", 0)


def test_a_level_is_one_walk_of_the_index_and_one_read_of_its_items(
    catalogs: CatalogMaker,
) -> None:
    """A page of a level asks the catalog twice, whatever lies inside its folders: the keys
    of its entries (one recursive query, a seek per entry), then its items' rows. A level of
    3 folders holding 3,000 items and 2 items between them."""
    catalog = catalogs()
    ds = make_dataset(catalog)
    sizes = {f"{f}/{i:04d}": 1 for f in ("a", "b", "c") for i in range(1000)}
    sizes.update({"a.txt": 1, "b.txt": 1})
    put(catalog, ds, sizes)
    catalog.guesses_content_types(ds)  # the dataset's content-type rule, read once per catalog
    statements: list[str] = []
    real = catalog.db.execute

    def counting(sql: str, *args: Any) -> Any:
        statements.append(sql)
        return real(sql, *args)

    catalog.db.execute = counting  # type: ignore[method-assign]
    try:
        level = folders.children(catalog, ds, "", limit=100)
    finally:
        catalog.db.execute = real  # type: ignore[method-assign]
    assert shown(level) == [
        ("item", "a.txt"), ("folder", "a/"), ("item", "b.txt"), ("folder", "b/"), ("folder", "c/")
    ]  # fmt: skip
    assert len(statements) == 2, statements


@SETTINGS
@given(
    case=item_queries.dataset_and_query(),
    window=st.integers(1, 6),
    limit=st.integers(1, 5),
)
def test_query_windows_equal_a_brute_force_filter(
    catalogs: CatalogMaker,
    case: tuple[dict[str, dict[str, Any]], Query],
    window: int,
    limit: int,
) -> None:
    """Reading window after window (each call at most ``window`` keys, at most ``limit``
    matches: the next call starts after the last match when the limit was reached, else after
    the window's end) finds exactly the query's items, in key order, whatever its sort; no
    call reads more than its window of keys."""
    data, query = case
    catalog = catalogs()
    ds = item_queries.make_dataset(catalog)
    item_queries.put(catalog, ds, data)
    want = sorted(item_queries.expected(query, data))
    under = sorted(k for k in data if k.startswith(query.prefix))
    found: list[str] = []
    after = None
    for _ in range(len(data) + 2):
        items, end = folders.query_window(
            catalog, ds, query, after=after, limit=limit, window=window
        )
        keys = [i.key for i in items]
        found += keys
        # only keys of this window: after `after`, up to its end
        window_keys = [k for k in under if after is None or k > after][:window]
        assert set(keys) <= set(window_keys)
        rest = [k for k in under if after is None or k > after]
        assert end == (window_keys[-1] if len(rest) > window else None)
        if len(keys) == limit:
            after = keys[-1]
        elif end is not None:
            after = end
        else:
            break
    else:
        raise AssertionError("the windows never reached the end")
    assert found == want


def test_counts_of_more_folders_than_one_statement_holds(catalogs: CatalogMaker) -> None:
    catalog = catalogs()
    ds = make_dataset(catalog)
    put(catalog, ds, {f"f{i:03d}/{j}": i for i in range(150) for j in range(i % 4)})
    prefixes = [f"f{i:03d}/" for i in range(150)]
    assert folders.bounded_counts(catalog, ds, prefixes, 2) == [
        folders.Count(min(i % 4, 2), i * min(i % 4, 3), i % 4 > 2) for i in range(150)
    ]
