"""Item queries (issue 23, item 4), on both stores.

The store's answer to a query is compared with a brute-force filter written here in plain
Python over the same items (its own glob matcher, times compared as datetimes, metadata walked
as dicts), for random datasets and random queries; pagination is checked while items are
added and removed between pages; hostile input (injection attempts, quotes and dots in metadata
names, absurd values) is refused with one line or answered as plain data, on both stores and
through the CLI and the HTTP API.

Items with user metadata and tags are written with SQL ``UPDATE`` (the edit API is another
part of the issue); provider metadata goes in with the item, as a sync writes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers.config import DriverConfig
from syncd.query import Query, QueryError, parse_where
from syncd.reconcile.filters import Filters
from syncd.store.catalog import Catalog, Item
from syncd.store.db import transaction
from syncd.store.stamps import now, stamp
from tests.conftest import CatalogMaker

BASE = datetime(2026, 1, 1, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789abcdef"

# -- random datasets ------------------------------------------------------------------------

#: key characters: folders, dots, glob wildcards and the escape as literal key characters,
#: SQL's LIKE wildcards, a quote, non-ASCII
key_chars = st.sampled_from(list("ab/.*?\\%_'é"))
keys = st.text(key_chars, min_size=1, max_size=7)
content_types = st.sampled_from(
    [None, "image/jpeg", "image/png", "imagex/y", "text/plain", "video/mp4", "image/"]
)
meta_names = st.sampled_from(["site", "n", "a.b", "x y", "0", "it's"])
#: few values, so that queries drawn from the same few find some items and miss others
scalars = st.one_of(
    st.sampled_from(["berlin", "paris", "5", "", "true", "x,y"]),
    st.integers(-1, 6),
    st.sampled_from([5.0, 2.5]),
    st.booleans(),
    st.none(),
)
meta_values = st.recursive(
    scalars,
    lambda inner: st.dictionaries(meta_names, inner, max_size=3) | st.lists(inner, max_size=2),
    max_leaves=4,
)
user_metadata = st.one_of(
    st.just({}),
    st.dictionaries(meta_names, meta_values, max_size=3),
    st.fixed_dictionaries(
        {}, optional={"site": scalars, "n": scalars, "a.b": st.dictionaries(meta_names, scalars)}
    ),
)
provider_metadata = st.one_of(
    st.just({}),
    st.just({"content_type_guessed": True}),
    st.fixed_dictionaries(
        {},
        optional={
            "provider": st.dictionaries(meta_names, st.sampled_from(["berlin", "5", "x"])),
            "object_tags": st.dictionaries(meta_names, st.sampled_from(["berlin", "team"])),
            "content_type_guessed": st.booleans(),
        },
    ),
)
tag_lists = st.lists(st.sampled_from(["review", "qa", "a,b", "x y", "5"]), max_size=3).map(
    lambda t: sorted(set(t))
)
#: object times in the form items keep them (``isoformat``: whole seconds without a fraction)
mtimes = st.tuples(st.integers(0, 4), st.sampled_from([0, 0, 1, 500000, 999999])).map(
    lambda t: (BASE + timedelta(seconds=t[0], microseconds=t[1])).isoformat().replace("+00:00", "Z")
)
updated = st.integers(0, 4).map(lambda s: stamp(BASE + timedelta(days=s)))

rows = st.fixed_dictionaries(
    {
        "size": st.integers(0, 3000),
        "content_type": content_types,
        "mtime": mtimes,
        "updated_at": updated,
        "metadata": provider_metadata,
        "user_metadata": user_metadata,
        "tags": tag_lists,
    }
)
datasets = st.dictionaries(keys, rows, min_size=2, max_size=25)

# -- random queries ---------------------------------------------------------------------------


def _quoted(name: str) -> str:
    return (
        name
        if name.replace("_", "").replace("-", "").isalnum() and name.isascii()
        else json.dumps(name)
    )


def _value_text(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v)  # quoted: exactly this string
    return json.dumps(v)


globs = st.text(st.sampled_from(list("ab/.*?")), min_size=1, max_size=6) | st.sampled_from(
    ["**/*.a", "a/**", "**", "a\\*", "*/b", "a?", "**/b/*"]
)
expressions = st.one_of(
    st.builds(lambda p: f"prefix={p}", st.text(key_chars, min_size=1, max_size=2)),
    st.builds(lambda g: f"key={g}", globs),
    st.builds(
        lambda c: f"content_type={c}",
        st.sampled_from(["image/jpeg", "image/*", "text/plain", "imagex/*", "video/mp4"]),
    ),
    st.builds(
        lambda op, n: f"size{op}{n}",
        st.sampled_from(["=", "<", "<=", ">", ">="]),
        st.integers(0, 3000),
    ),
    st.builds(
        lambda op, t: f"mtime{op}{t}",
        st.sampled_from(["=", "<", "<=", ">", ">="]),
        mtimes,
    ),
    st.builds(
        lambda op, t: f"updated{op}{t}",
        st.sampled_from(["<", ">="]),
        updated,
    ),
    st.builds(
        lambda section, path, values, raw: (
            f"metadata.{section}{'.'.join(_quoted(p) for p in path)}"
            + (
                ""
                if values is None
                else "=" + (raw if raw is not None else ",".join(map(_value_text, values)))
            )
        ),
        st.sampled_from(["user.", "user.", "user.", "provider.", "object_tags.", ""]),
        st.lists(meta_names, min_size=1, max_size=2)
        | st.sampled_from([["site"], ["n"], ["a.b", "n"]]),
        st.none() | st.lists(scalars, min_size=1, max_size=2),
        st.none() | st.sampled_from(["5", "true", "berlin", "null", "2.5", "5,berlin"]),
    ),
    st.builds(
        lambda op, tags: f"tags{op}{','.join(json.dumps(t) for t in tags)}",
        st.sampled_from(["~", "="]),
        st.lists(
            st.sampled_from(["review", "qa", "a,b", "x y", "5", "none"]), min_size=1, max_size=2
        ),
    ),
)
queries = st.builds(
    lambda where, sort, order: parse_where(where, sort=sort, order=order),
    st.lists(expressions, max_size=3),
    st.sampled_from(["key", "size", "mtime"]),
    st.sampled_from(["asc", "desc"]),
)


def _leaves(doc: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every (path, value) of a JSON object, objects walked by name."""
    out = []
    if isinstance(doc, dict):
        for name, value in doc.items():
            out.append(((*path, name), value))
            out += _leaves(value, (*path, name))
    return out


def _path_text(path: tuple[str, ...]) -> str:
    return ".".join(_quoted(p) for p in path)


@st.composite
def expression_about(draw: Any, data: dict[str, dict[str, Any]]) -> str:
    """An expression drawn from one item of ``data``, so that it matches that item and,
    often, not all the others."""
    key = draw(st.sampled_from(sorted(data)))
    row = data[key]
    kinds = ["key", "size", "mtime"]
    kinds += ["ct"] if row["content_type"] else []
    kinds += ["user"] * 3 if _leaves(row["user_metadata"]) else []
    kinds += ["provider"] * 2 if _leaves(row["metadata"]) else []
    kinds += ["tags"] * 2 if row["tags"] else []
    kind = draw(st.sampled_from(kinds))
    op = draw(st.sampled_from(["=", "<", "<=", ">", ">="]))
    if kind == "key":
        cut = draw(st.integers(0, len(key)))
        tail = draw(st.sampled_from(["*", "**", "?" * max(0, len(key) - cut), ""]))
        escaped = "".join("\\" + c if c in "*?\\" else c for c in key[:cut])
        return f"key={escaped}{tail}" if escaped + tail else "key=**"
    if kind == "ct" and row["content_type"]:
        ct = row["content_type"]
        return "content_type=" + (ct.split("/")[0] + "/*" if draw(st.booleans()) else ct)
    if kind == "mtime":
        return f"mtime{op}{row['mtime']}"
    if kind in ("user", "provider"):
        doc = row["user_metadata"] if kind == "user" else row["metadata"]
        leaves = _leaves(doc)
        if leaves:
            path, value = draw(st.sampled_from(leaves))
            head = "metadata.user." if kind == "user" else "metadata."
            if isinstance(value, (dict, list)) or draw(st.booleans()):
                return head + _path_text(path)
            text = _value_text(value) if draw(st.booleans()) else json.dumps(value).strip('"')
            if "," in text or not text:
                text = _value_text(value)
            return f"{head}{_path_text(path)}={text}"
    if kind == "tags" and row["tags"]:
        return f"tags{draw(st.sampled_from(['~', '=']))}{json.dumps(draw(st.sampled_from(row['tags'])))}"
    return f"size{op}{row['size']}"


@st.composite
def dataset_and_query(draw: Any) -> tuple[dict[str, dict[str, Any]], Query]:
    """A dataset, and a query of expressions drawn from its items or at random."""
    data = draw(datasets)
    about = expression_about(data)
    exprs = draw(st.lists(st.one_of(about, about, about, expressions), max_size=3))
    sort = draw(st.sampled_from(["key", "size", "mtime"]))
    order = draw(st.sampled_from(["asc", "desc"]))
    return data, parse_where(exprs, sort=sort, order=order)


# -- the brute-force reference -----------------------------------------------------------------


def glob_match(pattern: str, key: str) -> bool:
    """The glob rule, by recursion over the pattern (not through a regex)."""
    if not pattern:
        return not key
    if pattern.startswith("**/"):
        rest = pattern[3:]
        # none, or any run that ends in "/"
        return glob_match(rest, key) or any(
            glob_match(rest, key[i + 1 :]) for i, c in enumerate(key) if c == "/"
        )
    if pattern.startswith("**"):
        return any(glob_match(pattern[2:], key[i:]) for i in range(len(key) + 1))
    if pattern[0] == "*":
        for i in range(len(key) + 1):
            if glob_match(pattern[1:], key[i:]):
                return True
            if i < len(key) and key[i] == "/":
                return False
        return False
    if pattern[0] == "?":
        return bool(key) and key[0] != "/" and glob_match(pattern[1:], key[1:])
    if pattern[0] == "\\" and len(pattern) > 1:
        return bool(key) and key[0] == pattern[1] and glob_match(pattern[2:], key[1:])
    return bool(key) and key[0] == pattern[0] and glob_match(pattern[1:], key[1:])


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _compare(a: Any, op: str, b: Any) -> bool:
    return {
        "=": a == b,
        "<": a < b,
        "<=": a <= b,
        ">": a > b,
        ">=": a >= b,
    }[op]


def _same(a: Any, b: Any) -> bool:
    """JSON equality with types: true is not 1, "5" is not 5, 5 is 5.0."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return False


def matches(query: Query, key: str, row: dict[str, Any]) -> bool:
    if not key.startswith(query.prefix):
        return False
    for cond in query.where:
        data = cond.model_dump()
        kind = data["kind"]
        if kind == "glob":
            if not glob_match(data["pattern"], key):
                return False
        elif kind == "content_type":
            ct, want = row["content_type"], data["value"]
            if ct is None:
                return False
            if want.endswith("/*"):
                if not ct.startswith(want[:-1]):
                    return False
            elif ct != want:
                return False
        elif kind == "compare":
            field, op, value = data["field"], data["op"], data["value"]
            if field == "size":
                if not _compare(row["size"], op, value):
                    return False
            else:
                mine = when(row[field])
                theirs = when(value if value.endswith("Z") else value + "Z")
                if not _compare(mine, op, theirs):
                    return False
        elif kind == "meta":
            doc: Any = row[data["column"]]
            for segment in data["path"]:
                if not isinstance(doc, dict) or segment not in doc:
                    return False
                doc = doc[segment]
            if data["values"] and not any(_same(doc, json.loads(v)) for v in data["values"]):
                return False
        elif kind == "tags":
            have = set(row["tags"])
            want = set(data["tags"])
            ok = bool(have & want) if data["mode"] == "any" else want <= have
            if not ok:
                return False
    return True


def order_key(query: Query, key: str, row: dict[str, Any]) -> tuple[Any, ...]:
    if query.sort == "size":
        return (row["size"], key)
    if query.sort == "mtime":
        return (when(row["mtime"]), key)
    return (key,)


def expected(query: Query, data: dict[str, dict[str, Any]]) -> list[str]:
    found = [k for k, row in data.items() if matches(query, k, row)]
    found.sort(key=lambda k: order_key(query, k, data[k]), reverse=query.order == "desc")
    return found


# -- writing items --------------------------------------------------------------------------


def make_dataset(catalog: Catalog, name: str = "ds") -> int:
    return catalog.create_dataset(
        name, "s3://bkt/", DriverConfig(type="s3", bucket="bkt"), Filters()
    ).id


def put(catalog: Catalog, ds: int, data: dict[str, dict[str, Any]]) -> None:
    """Write items as a sync would, then their user metadata and tags by SQL (as an edit)."""
    cast = "CAST(? AS JSONB)" if catalog.db.dialect == "postgresql" else "?"
    with transaction(catalog.db):
        catalog.write_items(
            ds,
            [
                Item(
                    key,
                    "/" + key,
                    f"s3://bkt/{key}",
                    r["size"],
                    "e",
                    r["content_type"],
                    r["mtime"],
                    None,
                    now(),
                    r["updated_at"],
                    json.dumps(r["metadata"]),
                )
                for key, r in data.items()
            ],
        )
        for key, r in data.items():
            # updated_at as written: a sync stamps it now; the test needs its own values
            catalog.db.execute(
                f"UPDATE items SET user_metadata = {cast}, tags = {cast}, updated_at = ?"
                " WHERE dataset_id = ? AND key = ?",
                [json.dumps(r["user_metadata"]), json.dumps(r["tags"]), r["updated_at"], ds, key],
            )


def remove(catalog: Catalog, ds: int, keys: list[str]) -> None:
    with transaction(catalog.db):
        catalog.delete_items(ds, keys)


SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- the tests ------------------------------------------------------------------------------


@SETTINGS
@given(case=dataset_and_query(), page=st.integers(1, 7))
def test_query_results_equal_a_brute_force_filter(
    catalogs: CatalogMaker,
    case: tuple[dict[str, dict[str, Any]], Query],
    page: int,
) -> None:
    data, query = case
    catalog = catalogs()
    ds = make_dataset(catalog)
    put(catalog, ds, data)
    want = expected(query, data)
    # every item at once, and page by page through cursors
    assert [i.key for i in catalog.iter_query(ds, query, page=page)] == want
    seen: list[str] = []
    cursor = None
    while True:
        items, cursor = catalog.query_page(ds, query, cursor=cursor, limit=page)
        seen += [i.key for i in items]
        if cursor is None:
            break
    assert seen == want
    n, total = catalog.count_query(ds, query)
    assert (n, total) == (len(want), sum(data[k]["size"] for k in want))
    assert [k for batch in catalog.query_keys(ds, query, page=page) for k in batch] == sorted(want)
    for by in ("content_type", "folder"):
        summary = catalog.summarize(ds, query, by=by)
        groups: dict[Any, list[int]] = {}
        for k in want:
            if by == "content_type":
                g = data[k]["content_type"]
            else:
                rest = k[len(query.prefix) :]
                g = query.prefix + rest[: rest.index("/") + 1] if "/" in rest else None
            groups.setdefault(g, [0, 0])
            groups[g][0] += 1
            groups[g][1] += data[k]["size"]
        assert summary["items"] == len(want) and summary["truncated"] is False
        assert {g["group"]: [g["items"], g["bytes"]] for g in summary["groups"]} == groups
        named = [g["group"] for g in summary["groups"] if g["group"] is not None]
        assert named == sorted(named)


@SETTINGS
@given(
    case=dataset_and_query(),
    page=st.integers(1, 4),
    churn=st.lists(st.tuples(st.lists(keys, max_size=3), datasets), max_size=6),
)
def test_pages_neither_skip_nor_repeat_items_while_the_dataset_changes(
    catalogs: CatalogMaker,
    case: tuple[dict[str, dict[str, Any]], Query],
    page: int,
    churn: list[tuple[list[str], dict[str, dict[str, Any]]]],
) -> None:
    """Between pages, some items are removed and others added (new keys only: an item that
    exists throughout keeps its values). Every item that exists and matches throughout is
    returned exactly once, and nothing is returned twice."""
    data, query = case
    catalog = catalogs()
    ds = make_dataset(catalog)
    put(catalog, ds, data)
    current = dict(data)
    throughout = set(data)
    seen: list[str] = []
    cursor = None
    rounds = iter(churn)
    while True:
        items, cursor = catalog.query_page(ds, query, cursor=cursor, limit=page)
        seen += [i.key for i in items]
        if cursor is None:
            break
        gone, added = next(rounds, ([], {}))
        gone = list(dict.fromkeys(k for k in gone if k in current))
        remove(catalog, ds, gone)
        for k in gone:
            current.pop(k)
        throughout -= set(gone)
        added = {k: r for k, r in added.items() if k not in current}
        put(catalog, ds, added)
        current.update(added)
    assert len(seen) == len(set(seen)), "an item came twice"
    stayed = [k for k in expected(query, data) if k in throughout]
    assert [k for k in seen if k in throughout] == stayed


# -- hostile input --------------------------------------------------------------------------

INJECTIONS = [
    "x' OR '1'='1",
    'x" OR "1"="1',
    "1; DROP TABLE items; --",
    "') OR 1=1 --",
    "$.a') OR 1=1 --",
    "%",
    "_",
    "\\",
]


def _table_intact(catalog: Catalog, ds: int, n: int) -> None:
    assert catalog.count_items(ds) == n


def test_injection_attempts_are_data_on_both_stores(catalogs: CatalogMaker) -> None:
    catalog = catalogs()
    ds = make_dataset(catalog)
    data = {
        f"k{i}": {
            "size": i,
            "content_type": "image/jpeg",
            "mtime": "2026-01-01T00:00:00Z",
            "updated_at": now(),
            "metadata": {"provider": {"a.b": "1", "it's": "q"}},
            "user_metadata": {"a.b": {"c": 1}, "site": "berlin", "x y": True},
            "tags": ["review"],
        }
        for i in range(5)
    }
    put(catalog, ds, data)
    for bad in INJECTIONS:
        for expr in (
            f"metadata.user.site={json.dumps(bad)}",
            f"metadata.user.site={bad.replace(',', '')}",
            f"key={bad}",
            f"prefix={bad}",
            f"content_type={bad}",
            f"tags~{json.dumps(bad)}",
            f"metadata.provider.{json.dumps(bad.replace(chr(34), '').replace(chr(92), ''))}=1",
        ):
            try:
                query = parse_where([expr])
            except QueryError:
                continue  # refused before anything ran
            assert list(catalog.iter_query(ds, query)) == [], expr
            assert catalog.count_query(ds, query) == (0, 0), expr
    _table_intact(catalog, ds, 5)
    # dots and a quote in names work when quoted; a double quote or a backslash is refused
    assert catalog.count_query(ds, parse_where(['metadata.user."a.b".c=1']))[0] == 5
    assert catalog.count_query(ds, parse_where(['metadata.user."x y"=true']))[0] == 5
    assert catalog.count_query(ds, parse_where(['metadata.provider."a.b"=1']))[0] == 5
    assert catalog.count_query(ds, parse_where(['metadata.provider."it\'s"']))[0] == 5
    assert catalog.count_query(ds, parse_where(["metadata.user.a.b"]))[0] == 0
    for bad in ['metadata.user."a\\"b"=1', 'metadata.user."a\\\\b"', 'metadata.user."a\\u0000"']:
        with pytest.raises(QueryError, match=r"cannot be queried|NUL"):
            parse_where([bad])
    _table_intact(catalog, ds, 5)


@pytest.mark.parametrize(
    "expr",
    [
        "size>1ZB",
        "size>-1",
        "size>99999999999999999999999TB",
        "mtime>=yesterday",
        "mtime>=99999-01-01",
        "updated>2026-13-01",
        "metadata.user.n=1e999",
        "metadata.user.n=99999999999999999999",
        "metadata.user." + ".".join(["a"] * 40),
        "metadata.user." + "a" * 300,
        "metadata.user",
        "metadata",
        "tags~",
        "key=",
        "colour=red",
        "size~5",
        "size",
        "content_type=*",
        "metadata.user.site=" + ",".join(["x"] * 200),
        "x" * 5000,
        "size>1MB; DROP TABLE items",
        'metadata.user."unterminated=1',
    ],
)
def test_absurd_expressions_are_refused_with_one_line(expr: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_where([expr])
    message = str(caught.value)
    assert message and "\n" not in message and len(message) < 400


def test_the_where_syntax_reads_as_documented() -> None:
    q = parse_where(
        [
            "size>1MB",
            "content_type=image/*",
            "metadata.user.site=berlin",
            "tags~review",
            "key=raw/**/*.jpg",
            "mtime>=2026-01-01",
            "updated>=2026-03-01T12:00:00+01:00",
        ],
        sort="size",
        order="desc",
    )
    dumped = [c.model_dump() for c in q.where]
    assert dumped[0] == {"kind": "compare", "field": "size", "op": ">", "value": 1_000_000}
    assert dumped[1] == {"kind": "content_type", "value": "image/*"}
    assert dumped[2]["column"] == "user_metadata" and dumped[2]["path"] == ("site",)
    assert dumped[3] == {"kind": "tags", "mode": "any", "tags": ("review",)}
    assert dumped[5]["value"] == "2026-01-01T00:00:00"
    assert dumped[6]["value"] == "2026-03-01T11:00:00.000000Z"
    assert glob_match("raw/**/*.jpg", "raw/a.jpg") and glob_match("raw/**/*.jpg", "raw/x/y/a.jpg")
    assert not glob_match("raw/*.jpg", "raw/x/a.jpg")


# -- CLI and HTTP ---------------------------------------------------------------------------


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncd.cli", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture
def small_catalog(tmp_path: Path) -> str:
    path = str(tmp_path / "c.db")
    catalog = Catalog.open(path)
    ds = make_dataset(catalog, "photos")
    data = {
        f"raw/{d}/{i}.{ext}": {
            "size": 1000 * i,
            "content_type": ct,
            "mtime": f"2026-01-0{1 + i % 5}T00:00:00Z",
            "updated_at": now(),
            "metadata": {},
            "user_metadata": {"site": "berlin"} if i % 2 else {},
            "tags": ["review"] if i % 3 == 0 else [],
        }
        for d in ("a", "b")
        for i in range(6)
        for ext, ct in (("jpg", "image/jpeg"), ("txt", "text/plain"))
    }
    put(catalog, ds, data)
    catalog.close()
    return path


def test_cli_ls_count_summary_and_bad_queries(tmp_path: Path, small_catalog: str) -> None:
    db = ["--dataset", "photos", "--db", small_catalog]
    out = _cli(
        tmp_path,
        "items",
        "ls",
        *db,
        "--where",
        "key=raw/**/*.jpg",
        "--where",
        "size>=3kB",
        "--where",
        "metadata.user.site=berlin",
        "--sort",
        "size",
        "--desc",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    got = [json.loads(line)["key"] for line in out.stdout.splitlines()]
    assert got == ["raw/b/5.jpg", "raw/a/5.jpg", "raw/b/3.jpg", "raw/a/3.jpg"]
    out = _cli(tmp_path, "items", "count", *db, "--where", "tags~review", "--json")
    assert json.loads(out.stdout) == {"items": 8, "bytes": 2 * 2 * (0 + 3000)}
    out = _cli(tmp_path, "items", "summary", *db, "--by", "folder", "--prefix", "raw/")
    assert out.returncode == 0, out.stderr
    assert "raw/a/\t12\t30000" in out.stdout and "Total Objects: 24" in out.stdout
    for bad in ("size>lots", 'metadata.user."a\\"b"=1', "x' OR 1=1 --"):
        out = _cli(tmp_path, "items", "ls", *db, "--where", bad)
        assert out.returncode == 2, (bad, out)
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    out = _cli(tmp_path, "items", "count", *db, "--where", "size>lots", "--json")
    assert out.returncode == 2 and "error" in json.loads(out.stdout or out.stderr)
    # the Python API takes the same expressions
    import syncd

    assert syncd.count("photos", db=small_catalog, where="content_type=image/*") == (12, 30000)
    first = next(syncd.items("photos", db=small_catalog, where=["size>4kB"], sort="mtime"))
    assert first.key == "raw/a/5.jpg"
    assert syncd.summary("photos", db=small_catalog)["groups"][0]["group"] == "image/jpeg"
    with pytest.raises(syncd.errors.UsageError):
        syncd.items("photos", db=small_catalog, where="size>>1")


async def test_http_items_count_summary_and_400s(small_catalog: str) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from syncd.daemon.catalog_thread import CatalogThread
    from syncd.daemon.metrics import Metrics
    from syncd.server.app import make_app
    from syncd.server.routes import Context

    catalog = CatalogThread(small_catalog, create=False)
    await catalog.start()
    app = make_app(Context(catalog, None, Metrics()), TOKEN)  # type: ignore[arg-type]
    client = TestClient(TestServer(app), headers={"Authorization": f"Bearer {TOKEN}"})
    async with client:
        base = "/api/v1/datasets/photos/items"
        resp = await client.get(
            base, params=[("where", "content_type=image/*"), ("where", "size<2kB"), ("limit", "1")]
        )
        body = await resp.json()
        assert resp.status == 200 and [i["key"] for i in body["items"]] == ["raw/a/0.jpg"]
        resp = await client.get(
            base,
            params=[
                ("where", "content_type=image/*"),
                ("where", "size<2kB"),
                ("cursor", body["next_cursor"]),
            ],
        )
        assert [i["key"] for i in (await resp.json())["items"]] == [
            "raw/a/1.jpg",
            "raw/b/0.jpg",
            "raw/b/1.jpg",
        ]
        resp = await client.get(base + ":count", params={"where": "metadata.user.site=berlin"})
        assert await resp.json() == {"items": 12, "bytes": 2 * 2 * 9000}
        resp = await client.get(base + ":summary", params={"by": "folder"})
        assert (await resp.json())["groups"] == [{"group": "raw/", "items": 24, "bytes": 60000}]
        for params in (
            {"where": "size>lots"},
            {"where": "x' OR 1=1; --"},
            {"where": 'metadata.user."a\\"b"=1'},
            {"sort": "colour"},
            {"cursor": "bm9wZQ"},
            {"by": "owner"},
        ):
            path = base + (":summary" if "by" in params else "")
            resp = await client.get(path, params=params)
            body = await resp.json()
            assert resp.status == 400 and "\n" not in body["error"], (params, body)
    await catalog.close()


def test_metadata_paths_through_arrays_and_json_types(catalogs: CatalogMaker) -> None:
    """A path walks objects only (an array is not indexed by a name like ``0``), and equality
    keeps JSON types (``true`` is not ``1``, ``"5"`` is not ``5``; ``5`` is ``5.0``; a bare
    number also matches its text) on both stores, as the brute force says."""
    catalog = catalogs()
    ds = make_dataset(catalog)

    def row(user: Any) -> dict[str, Any]:
        return {
            "size": 1,
            "content_type": None,
            "mtime": "2026-01-01T00:00:00Z",
            "updated_at": now(),
            "metadata": {},
            "user_metadata": user,
            "tags": [],
        }

    data = {
        "arr5": row({"a": [5]}), "arrobj": row({"a": [{"b": 1}]}), "obj": row({"a": {"b": 1}}),
        "s": row({"a": "5"}), "n": row({"a": 5.0}), "t": row({"a": True}), "one": row({"a": 1}),
        "zero": row({"a": {"0": 1}}), "arr1": row({"a": [1]}), "null": row({"a": None}),
    }  # fmt: skip
    put(catalog, ds, data)
    cases = {
        "metadata.user.a=5": ["n", "s"],
        "metadata.user.a.b=1": ["obj"],
        "metadata.user.a.b": ["obj"],
        "metadata.user.a.0": ["zero"],
        "metadata.user.a.0=1": ["zero"],
        "metadata.user.a=true": ["t"],
        "metadata.user.a=1": ["one"],
        "metadata.user.a=null": ["null"],
        'metadata.user.a="5"': ["s"],
        "metadata.user.a": sorted(data),
    }
    for expr, want in cases.items():
        query = parse_where([expr])
        assert [i.key for i in catalog.iter_query(ds, query)] == want == expected(query, data)


@settings(max_examples=500, deadline=None)
@given(pattern=globs | st.text(st.sampled_from(list("ab/*?\\")), max_size=10), key=keys)
def test_both_glob_matchers_agree_with_the_reference(pattern: str, key: str) -> None:
    """The bounded-time automaton (patterns with many stars), the regex (few stars) and the
    recursive reference say the same for every pattern and key."""
    from syncd.query import _GlobNFA, compiled_glob, glob_matcher

    want = glob_match(pattern, key)
    assert _GlobNFA(pattern).matches(key) == want
    assert (compiled_glob(pattern).match(key) is not None) == want
    assert glob_matcher(pattern)(key) == want


def test_a_pattern_of_many_stars_is_matched_by_the_automaton(catalogs: CatalogMaker) -> None:
    """``*a*a*...*b`` against a long key of ``a``s: a backtracking regex would try every way
    to place the ``a``s (it would not return); sqlite's matcher uses the automaton for such a
    pattern, PostgreSQL's regex engine does not backtrack. Both stores answer."""
    from syncd.query import _GlobNFA, glob_matcher

    pattern = "*a" * 15 + "*b"
    assert isinstance(glob_matcher(pattern).__self__, _GlobNFA)  # type: ignore[attr-defined]
    assert glob_matcher(pattern)("a" * 1000) is False
    with pytest.raises(QueryError, match="at most 16 wildcards"):
        parse_where(["key=" + "*a" * 17])
    catalog = catalogs()
    ds = make_dataset(catalog)
    row = {
        "size": 1, "content_type": None, "mtime": "2026-01-01T00:00:00Z", "updated_at": now(),
        "metadata": {}, "user_metadata": {}, "tags": [],
    }  # fmt: skip
    put(catalog, ds, {"a" * 1000: row, "a" * 20 + "b": row})
    found = catalog.iter_query(ds, parse_where(["key=" + pattern]))
    assert [i.key for i in found] == ["a" * 20 + "b"]
