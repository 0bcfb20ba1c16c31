"""``syncd items export`` (issue 25): manifests read back equal to the catalog's items, in
every format, on both stores; a snapshot's manifest is the items at the snapshot; ``--where``
on a snapshot answers as the store's SQL does on the same items; the exporter streams;
presigned URLs fetch the right bytes from moto; bad input is one line, nothing half-written.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from providers.config import DriverConfig
from syncd import api, export
from syncd.reconcile.filters import Filters
from syncd.store import snapshots
from syncd.store.catalog import Catalog, Item
from syncd.store.db import transaction
from syncd.store.stamps import now
from tests.conftest import CatalogMaker, unique_bucket
from tests.test_item_queries import dataset_and_query
from tests.test_item_queries import put as put_rows

ROOT = Path(__file__).resolve().parent.parent

#: keys and values a CSV or JSON writer must quote or escape
HOSTILE = {
    "plain.jpg": ({"provider": {"site": "berlin"}}, {"label": "cat"}, ["train"]),
    'comma,and "quotes".txt': ({}, {"note": 'say "hi", twice'}, ["a,b"]),
    "line\nbreak\r\nkey.bin": ({"provider": {"x": "multi\nline"}}, {}, []),
    "=formula()": ({}, {"n": 5, "nested": {"deep": [1, "two", None]}}, ["x y"]),
    "ünïcødé/日本.txt": ({"content_type_guessed": True}, {"é": "ü"}, ["ü"]),
    " leading space": ({}, {}, []),
    "": None,  # placeholder removed below (no empty key)
}
del HOSTILE[""]


def fill(catalog: Catalog, name: str = "ds", provider: str = "s3") -> int:
    """Dataset ``name`` holding the HOSTILE items (provider metadata, user metadata, tags),
    one with a version and an MD5, one with no content type, on ``provider`` (whose rule
    says whether content types are guesses)."""
    ds = catalog.create_dataset(
        name, f"{provider}://bkt/", DriverConfig(type=provider, bucket="bkt"), Filters()
    ).id
    cast = "CAST(? AS JSONB)" if catalog.db.dialect == "postgresql" else "?"
    with transaction(catalog.db):
        catalog.write_items(
            ds,
            [
                Item(
                    key,
                    "/" + key,
                    f"s3://bkt/{key}",
                    n * 100,
                    f"etag-{n}",
                    None if n == 2 else "image/jpeg",
                    f"2026-01-0{n + 1}T00:00:00Z",
                    f"v{n}" if n % 2 else None,
                    now(),
                    now(),
                    json.dumps(provider),
                    "0123456789abcdef0123456789abcdef" if n == 1 else None,
                )
                for n, (key, (provider, _, _)) in enumerate(HOSTILE.items())
            ],
        )
        for key, (_, user, tags) in HOSTILE.items():
            catalog.db.execute(
                f"UPDATE items SET user_metadata = {cast}, tags = {cast}"
                " WHERE dataset_id = ? AND key = ?",
                [json.dumps(user), json.dumps(tags), ds, key],
            )
    return ds


def expected_rows(items: Any) -> list[dict[str, Any]]:
    return [export.row_of(i) for i in items]


def read_back(data: bytes, fmt: str) -> list[dict[str, Any]]:
    """The rows of a manifest, as :func:`syncd.export.row_of` gives them."""
    if fmt == "jsonl":
        return [json.loads(line) for line in data.decode().split("\n") if line]
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(data.decode(), newline="")))
        out = []
        for row in rows:
            got: dict[str, Any] = {c: (row[c] if row[c] != "" else None) for c in row}
            got["size"] = int(row["size"])
            got["metadata"] = json.loads(row["metadata"])
            got["tags"] = json.loads(row["tags"])
            out.append(got)
        return out
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    out = table.to_pylist()
    for row in out:
        row["metadata"] = json.loads(row["metadata"])
    return out


def run_export(catalog: Catalog, fmt: str, **kwargs: Any) -> tuple[int, bytes]:
    buf = io.BytesIO()
    n = asyncio.run(api.export_items(catalog, "ds", buf, fmt=fmt, **kwargs))
    return n, buf.getvalue()


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_export_round_trips_the_catalog_items(catalogs: CatalogMaker, fmt: str) -> None:
    """Each format reads back to exactly the catalog's items: hostile keys (commas, quotes,
    line breaks, a leading space, a formula), metadata with quotes and nesting, tags."""
    catalog = catalogs()
    ds = fill(catalog)
    n, data = run_export(catalog, fmt)
    want = expected_rows(catalog.iter_items(ds))
    assert n == len(HOSTILE) == len(want)
    assert read_back(data, fmt) == want
    assert {r["key"] for r in want} == set(HOSTILE)


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_export_of_a_snapshot_is_the_items_at_the_snapshot(
    catalogs: CatalogMaker, fmt: str
) -> None:
    """After the snapshot, items are deleted, changed and added: the snapshot's manifest is
    still what the items were (and --where applies to those), the live one is what they are."""
    catalog = catalogs()
    ds = fill(catalog)
    at_snapshot = expected_rows(catalog.iter_items(ds))
    snapshots.create(catalog, catalog.get_dataset("ds"), "t1")
    first, second = sorted(HOSTILE)[:2]
    with transaction(catalog.db):
        catalog.delete_items(ds, [first], source="test")
        changed = catalog.get_item(ds, second)
        catalog.write_items(
            ds,
            [
                Item(**{**changed.__dict__, "size": 999, "etag": "new"}),
                Item(
                    "added",
                    "/added",
                    "s3://bkt/added",
                    1,
                    "e",
                    None,
                    "2026-02-01T00:00:00Z",
                    None,
                    now(),
                    now(),
                ),
            ],
            source="test",
        )
    _, data = run_export(catalog, fmt, snapshot="t1")
    assert read_back(data, fmt) == at_snapshot
    _, data = run_export(catalog, fmt, snapshot="t1", where=("size<=200",))
    assert read_back(data, fmt) == [r for r in at_snapshot if r["size"] <= 200]
    _, live = run_export(catalog, fmt)
    assert read_back(live, fmt) == expected_rows(catalog.iter_items(ds))
    assert read_back(live, fmt) != at_snapshot


@settings(max_examples=60)
@given(dataset_and_query())
def test_where_on_a_snapshot_answers_as_the_stores_query(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[dict[str, dict[str, Any]], Any]
) -> None:
    """A snapshot's items are tested in Python (:func:`syncd.export.matcher`); on a snapshot
    just taken they are the live items, so its answer must be the store's SQL answer."""
    data, query = case
    catalog = Catalog.open(str(tmp_path_factory.mktemp("q") / "c.db"))
    try:
        ds = catalog.create_dataset(
            "ds", "s3://bkt/", DriverConfig(type="s3", bucket="bkt"), Filters()
        ).id
        put_rows(catalog, ds, data)
        dataset = catalog.get_dataset("ds")
        snapshots.create(catalog, dataset, "t")
        by_key = query.model_copy(update={"sort": "key", "order": "asc"})
        want = [i.key for i in catalog.iter_query(ds, by_key)]
        got = [i.key for i in api._snapshot_matching(catalog, dataset, "t", by_key)]
        assert got == want
    finally:
        catalog.close()


class CountingSink(io.BytesIO):
    """A sink that counts the lines written to it so far."""

    def __init__(self) -> None:
        super().__init__()
        self.lines = 0

    def write(self, data: Any) -> int:
        self.lines += bytes(data).count(b"\n")
        return super().write(data)


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_the_exporter_streams_what_it_is_given(fmt: str) -> None:
    """Constant memory by design: the exporter takes the items from an iterator and writes
    each before asking for many more (one row group ahead at most, for Parquet), so it never
    holds the dataset. The source here would fail if anything asked for it as a whole."""
    n = 3 * export.ROW_GROUP + 7
    sink = CountingSink()
    behind: list[int] = []

    def items() -> Any:
        for i in range(n):
            if i and i % 1000 == 0:
                # rows handed over but not yet in the sink
                written = sink.lines if fmt != "parquet" else sink.tell()
                behind.append(i - written if fmt != "parquet" else written)
            yield Item(f"k{i:08d}", f"/k{i:08d}", f"s3://b/k{i:08d}", i, "e", None,
                       "2026-01-01T00:00:00Z", None, "t", "t")  # fmt: skip

    rows = asyncio.run(export.write_manifest(items(), sink, fmt))
    assert rows == n
    if fmt == "parquet":
        # the first row groups are in the sink before the last rows are even read
        assert behind[-1] > 0 and behind[len(behind) // 2] > 0
    else:
        # the text is buffered a little; never the whole: well under a thousand rows behind
        assert max(behind) < 1000


# -- the fast path (raw columns, a column at a time) equals the Item path -----------------


def awkward(catalog: Catalog, provider: str) -> int:
    """The HOSTILE items plus rows whose stored provider metadata is each case of
    :func:`providers.content_types.public_metadata` (the rule's exception either way, custom
    metadata and object tags, unicode, nesting), some with a user part and tags, some not."""
    ds = fill(catalog, provider=provider)
    provider_parts = [
        {"content_type_guessed": False},
        {"content_type_guessed": True},
        {"provider": {"a": "1", "ü": "日本"}, "object_tags": {"k": 'v,"q"'}},
        {"provider": {"team": "vision"}, "content_type_guessed": False},
        {"object_tags": {"t": "x"}},
    ]
    users = [{}, {"label": "dog", "n": [1, 2.5, None, True]}, {}, {"user": {"x": 1}}, {}]
    tags = [[], ["a", "b"], ["ü"], [], ["train"]]
    cast = "CAST(? AS JSONB)" if catalog.db.dialect == "postgresql" else "?"
    with transaction(catalog.db):
        catalog.write_items(
            ds,
            [
                Item(
                    f"more/{n}.jpg",
                    f"/more/{n}.jpg",
                    f"{provider}://bkt/more/{n}.jpg",
                    n,
                    f'"etag {n}"',
                    "image/jpeg" if n % 2 else None,
                    "2026-01-01T00:00:00Z",
                    None,
                    now(),
                    now(),
                    json.dumps(part),
                )
                for n, part in enumerate(provider_parts)
            ],
        )
        for n in range(len(provider_parts)):
            catalog.db.execute(
                f"UPDATE items SET user_metadata = {cast}, tags = {cast}"
                " WHERE dataset_id = ? AND key = ?",
                [json.dumps(users[n]), json.dumps(tags[n]), ds, f"more/{n}.jpg"],
            )
    return ds


@pytest.mark.parametrize("provider", ["s3", "gcs"])  # content types guessed or stated
@pytest.mark.parametrize("fmt", export.FORMATS)
def test_the_fast_path_writes_what_the_item_path_writes(
    catalogs: CatalogMaker, fmt: str, provider: str
) -> None:
    """The raw-column path (:func:`syncd.export.write_pages`, pages small enough that
    every page and row group boundary is crossed) gives the same bytes (JSON Lines, CSV) or
    the same table, types and all (Parquet), as :func:`syncd.export.write_manifest` of the
    catalog's Items, for hostile keys, provider and user metadata, tags and nulls; and the
    whole live dataset, or a prefix of it, takes that path."""
    from syncd.query import parse_where

    catalog = catalogs()
    ds = awkward(catalog, provider)
    guesses = catalog.guesses_content_types(ds)
    for prefix, page in [("", 2), ("", export.ROW_GROUP), ("more/", 3)]:
        items = catalog.iter_query(ds, parse_where([], prefix=prefix))
        slow = io.BytesIO()
        asyncio.run(export.write_manifest(items, slow, fmt))
        fast = io.BytesIO()
        pages = catalog.iter_item_pages(ds, export.STORED, prefix=prefix, page=page)
        rows = asyncio.run(export.write_pages(pages, fast, fmt, guesses=guesses))
        assert rows == (len(HOSTILE) + 5 if not prefix else 5)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            want = pq.read_table(io.BytesIO(slow.getvalue()))
            got = pq.read_table(io.BytesIO(fast.getvalue()))
            assert got.schema == want.schema
            assert got.to_pylist() == want.to_pylist()
            assert got.equals(want)
        else:
            assert fast.getvalue() == slow.getvalue()
        assert read_back(fast.getvalue(), fmt) == expected_rows(
            i for i in catalog.iter_items(ds) if i.key.startswith(prefix)
        )

    def no_items(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the live export made Items")

    catalog.iter_query = no_items  # type: ignore[method-assign]
    _, data = run_export(catalog, fmt, prefix="more/")
    assert [r["key"] for r in read_back(data, fmt)] == [f"more/{n}.jpg" for n in range(5)]


@pytest.mark.parametrize("provider", ["s3", "gcs"])
def test_the_arrow_reader_writes_what_the_item_path_writes(
    catalogs: CatalogMaker, provider: str
) -> None:
    """On a sqlite catalog opened to read, the Parquet export reads Arrow batches without a
    Python object per value (:mod:`syncd.store.arrow_read`), and writes the same table as
    the Item path: pages of one row make a first page whose nullable columns are all NULL
    (the driver must not take them for integers) followed by text; a read with no value at
    all in ``md5`` and ``version``; a stored value that is a lone NUL stays one, not a null.
    PostgreSQL, or a catalog opened to write, has no such reader: the caller reads pages."""
    import pyarrow.parquet as pq

    from syncd.query import parse_where

    catalog = catalogs()
    ds = awkward(catalog, provider)
    assert catalog.item_batches(ds, export.STORED, page=1) is None  # postgresql, or a writer
    if catalog.db.dialect == "postgresql":
        return
    with transaction(catalog.db):
        catalog.db.execute(
            "UPDATE items SET content_type = ? WHERE dataset_id = ? AND key = ?",
            ["\x00", ds, "more/3.jpg"],
        )
    # "//" before the path: a path, not a host, in the driver's file: URI
    reader = Catalog.open_reader("/" + catalog.db.path)  # type: ignore[attr-defined]
    try:
        guesses = reader.guesses_content_types(ds)
        for prefix, page in [("", 1), ("", 3), ("more/", 1), ("more/", export.ROW_GROUP)]:
            slow = io.BytesIO()
            items = reader.iter_query(ds, parse_where([], prefix=prefix))
            asyncio.run(export.write_manifest(items, slow, "parquet"))
            fast = io.BytesIO()
            found = reader.item_batches(ds, export.STORED, prefix=prefix, page=page)
            assert found is not None
            rows = export.write_batches(found, fast, guesses=guesses)
            assert rows == (len(HOSTILE) + 5 if not prefix else 5)
            want = pq.read_table(io.BytesIO(slow.getvalue()))
            got = pq.read_table(io.BytesIO(fast.getvalue()))
            assert got.schema == want.schema
            assert got.to_pylist() == want.to_pylist()
            assert "\x00" in got.column("content_type").to_pylist()
        # a prefix nothing has, and one no key can have, read nothing
        for prefix in ("nothing/", "a\x00"):
            found = reader.item_batches(ds, export.STORED, prefix=prefix)
            assert found is not None and list(found) == []
    finally:
        reader.close()


def test_the_arrow_reader_holds_no_read_transaction_between_pages(tmp_path: Path) -> None:
    """A page read by the Arrow reader is one short statement: while the export waits on its
    consumer between pages, a writer's checkpoint moves every WAL frame into the file."""
    import sqlite3

    path = str(tmp_path / "c.db")
    writer = Catalog.open(path)
    ds = fill(writer)
    writer.close()
    reader = Catalog.open_reader(path)
    try:
        batches = reader.item_batches(ds, export.STORED, page=2)
        assert batches is not None
        first = next(batches)
        assert first.num_rows == 2
        other = sqlite3.connect(path)
        other.execute("UPDATE items SET size = size + 1 WHERE dataset_id = ?", [ds])
        other.commit()
        busy, frames, moved = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        other.close()
        assert busy == 0 and frames == moved > 0
        assert sum(b.num_rows for b in batches) == len(HOSTILE) - 2
    finally:
        reader.close()


def test_item_pages_refuse_columns_that_are_not_items_columns(catalogs: CatalogMaker) -> None:
    """Column names go into the SQL: only ``items`` columns, key first, are taken."""
    catalog = catalogs()
    ds = fill(catalog)
    for columns in [("uri", "key"), ("key", "uri; DROP TABLE items"), ("key", "dataset_id")]:
        with pytest.raises(ValueError, match="not a key-first list of items columns"):
            next(catalog.iter_item_pages(ds, columns))
    assert [len(p) for p in catalog.iter_item_pages(ds, ("key",), page=4)] == [4, 2]


# -- the command -------------------------------------------------------------------------


def syncd(
    *args: str, env: dict[str, str] | None = None, pre: str = ""
) -> subprocess.CompletedProcess[str]:
    """``python -m syncd.cli ARGS`` (``pre``: Python run first, in the same process)."""
    code = f"import sys\n{pre}\nfrom syncd.cli import main\nsys.argv[0] = 'syncd'\nmain()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=120,
    )


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "c.db")
    catalog = Catalog.open(path)
    try:
        fill(catalog)
        snapshots.create(catalog, catalog.get_dataset("ds"), "t1")
    finally:
        catalog.close()
    return path


def test_cli_export_to_a_file_reads_back(db: str, tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    proc = syncd("items", "export", "--dataset", "ds", "--db", db, "--format", "csv",
                 "--snapshot", "t1", "-o", str(out), "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"rows": len(HOSTILE), "file": str(out), "format": "csv"}
    catalog = Catalog.open_reader(db)
    try:
        want = expected_rows(catalog.iter_items(catalog.get_dataset("ds").id))
    finally:
        catalog.close()
    assert read_back(out.read_bytes(), "csv") == want
    assert sorted(os.listdir(tmp_path)) == ["c.db", "m.csv"]  # no temp file left
    proc = syncd("items", "export", "--dataset", "ds", "--db", db, "--where", "tags~train")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["key"] for line in proc.stdout.splitlines()] == ["plain.jpg"]


@pytest.mark.parametrize(
    ("args", "pre", "message"),
    [
        (["--format", "parquet"], "sys.modules['pyarrow'] = None",
         "--format parquet needs pyarrow, which is not installed: pip install 'syncd[parquet]'"),
        (["--snapshot", "nope"], "", "snapshot 'nope'"),
        (["--expires", "1h"], "", "--expires sets how long --urls work; add --urls"),
        (["--urls", "--expires", "8d"], "", "--expires must be 1 second to 7 days"),
        (["--urls", "--expires", "soon"], "", "'soon' is not a duration"),
        (["--where", "size>>1"], "", "--where:"),
    ],
    ids=["no-pyarrow", "no-snapshot", "expires-alone", "expires-long", "expires-bad", "where"],
)  # fmt: skip
def test_cli_bad_input_is_one_line_and_writes_nothing(
    db: str, tmp_path: Path, args: list[str], pre: str, message: str
) -> None:
    out = tmp_path / "m.out"
    proc = syncd("items", "export", "--dataset", "ds", "--db", db, "-o", str(out), *args, pre=pre)
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["c.db"]


def test_a_failed_export_leaves_no_file(tmp_path: Path) -> None:
    """Written to a temp file renamed at the end: a failure part-way leaves neither."""
    from syncd.cli import _export_to_file

    target = tmp_path / "m.jsonl"

    def run(out: Any) -> int:
        out.write(b'{"key": "a"}\n')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        _export_to_file(str(target), run)
    assert os.listdir(tmp_path) == []


# -- presigned URLs on moto --------------------------------------------------------------


def test_export_urls_fetch_the_bytes_from_moto(moto: Any, tmp_path: Path) -> None:
    """Each row's URL reads its object's bytes from moto; a snapshot's rows are signed for
    the recorded versions, so after an overwrite they still read the recorded bytes."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto.url)
    bucket = unique_bucket()
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    files = {"a.txt": b"alpha", "dir/b c.bin": os.urandom(1000), 'ü,"q".txt': b"quoted"}
    src = tmp_path / "src"
    for key, data in files.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(data)
    env = {"AWS_ENDPOINT_URL": moto.url}
    dbp = str(tmp_path / "c.db")
    proc = syncd("sync", f"s3://{bucket}", "--dataset", "ds", "--db", dbp, env=env)
    assert proc.returncode == 0, proc.stderr
    # a push records each object's VersionId from its PUT (a ListObjectsV2 sync states none)
    proc = syncd("push", str(src), "--dataset", "ds", "--db", dbp, env=env)
    assert proc.returncode == 0, proc.stderr
    catalog = Catalog.open(dbp)
    try:
        snapshots.create(catalog, catalog.get_dataset("ds"), "t1")
    finally:
        catalog.close()
    for key in files:
        s3.put_object(Bucket=bucket, Key=key, Body=b"overwritten")
    for snap in ([], ["--snapshot", "t1"]):
        proc = syncd("items", "export", "--dataset", "ds", "--db", dbp, "--urls",
                     "--expires", "10m", *snap, env=env)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        assert {r["key"] for r in rows} == set(files)
        for row in rows:
            with urllib.request.urlopen(row["url"], timeout=30) as resp:
                got = resp.read()
            assert got == (files[row["key"]] if snap else b"overwritten"), row["key"]


def test_read_ahead_keeps_the_order_raises_in_order_and_closes_on_an_early_stop() -> None:
    """export.read_ahead: the consumer sees every batch in order; the reader's error after
    its good batches; a consumer that stops early stops the thread, which closes the source
    (the Arrow reader's connection)."""
    assert list(export.read_ahead(iter(range(50)), depth=2)) == list(range(50))

    def failing() -> Any:
        yield from (1, 2)
        raise OSError("the catalog went away")

    got: list[int] = []
    with pytest.raises(OSError, match="went away"):
        for value in export.read_ahead(failing()):
            got.append(value)
    assert got == [1, 2]

    closed: list[bool] = []

    def endless() -> Any:
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.append(True)

    reader = export.read_ahead(endless(), depth=2)
    assert [next(reader) for _ in range(3)] == [0, 1, 2]
    reader.close()  # joins the thread, which closed the source on its way out
    assert closed == [True]
