"""The item browser (issue 26, item 4): folders with counts, the query model's filter, keyset
paging, thumbnails through presigned URLs (a local folder's bytes from the daemon), the item
page, hostile keys and metadata.

Two halves:

* **server-side**, without a browser: the real app (:func:`syncd.server.app.make_app`, the
  dashboard included) through aiohttp's test client with the bearer token, on catalogs that
  ``syncd sync`` filled from a local folder and a moto bucket, or that the test wrote item
  rows into (a dataset of thousands of keys shaped for the paging edges): 404 and 400 pages
  (never a 500), paging at the page's edges and while keys change, the count caps, what the
  object route serves and what it refuses (keys outside the dataset, a symlink out of the
  folder, HTML served as a download);
* **in the browser** (after every async test: Playwright's sync API runs its own event loop
  while its browser is open): the distribution's Chromium (Playwright, :mod:`tests.web`) on ``syncd
  run`` with a watched folder and a moto bucket holding real PNG and JPEG files and keys,
  metadata and a dataset name built to run script if anything rendered them as HTML.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import struct
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from aiohttp.test_utils import TestClient, TestServer

from providers.config import DriverConfig
from syncd.reconcile.filters import Filters
from syncd.store.catalog import Catalog, Item
from syncd.store.db import transaction
from syncd.store.stamps import now
from syncd.web import browse
from tests.conftest import unique_bucket
from tests.emulators import Emulator, free_port

TOKEN = "items-token-0123456789abcdef"
MTIME = "2026-01-01T00:00:00Z"


def png(width: int, height: int, rgb: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A real PNG image (8-bit RGB, one colour), written by hand: no imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def sync(source: str, dataset: str, db: Path, env: dict[str, str] | None = None) -> None:
    """``syncd sync SOURCE --dataset NAME --db DB`` as a process: the catalog as a user's."""
    done = subprocess.run(
        [sys.executable, "-m", "syncd.cli", "sync", source, "--dataset", dataset, "--db", str(db)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


def write_items(catalog: Catalog, name: str, sizes: dict[str, int], **extra: Any) -> int:
    """A dataset ``name`` (an S3 binding no test presigns with) holding ``sizes``' keys."""
    found = catalog.find_dataset(name)
    ds = (
        found.id
        if found is not None
        else catalog.create_dataset(
            name, "s3://bkt/", DriverConfig(type="s3", bucket="bkt"), Filters()
        ).id
    )
    ctype = extra.get("content_type")
    with transaction(catalog.db):
        catalog.write_items(
            ds,
            [
                Item(k, "/" + k, f"s3://bkt/{k}", n, "e", ctype, MTIME, None, now(), now())
                for k, n in sizes.items()
            ],
        )
    return ds


def remove_items(catalog: Catalog, name: str, keys: list[str]) -> None:
    ds = catalog.get_dataset(name).id
    with transaction(catalog.db):
        catalog.delete_items(ds, keys)


# -- reading the pages -------------------------------------------------------------------------


@dataclass
class Shown:
    """What a browser page shows, read from its HTML."""

    status: int
    html: str

    def rows(self) -> list[tuple[str, str]]:
        """``("folder" | "item", name as shown)`` per row of the table, in order."""
        out = []
        for kind, name in re.findall(
            r'<tr class="(folder|item)">.*?<td class="key"><a [^>]*><bdi>(.*?)</bdi></a>',
            self.html,
            re.S,
        ):
            out.append((kind, unescape(name)))
        return out

    def counts(self) -> list[str]:
        return [unescape(c).strip() for c in re.findall(r'<td class="count">(.*?)</td>', self.html)]

    def link(self, id_: str) -> str | None:
        found = re.search(rf'href="([^"]*)" id="{id_}"', self.html)
        return unescape(found.group(1)) if found else None

    def error(self) -> str | None:
        found = re.search(r'<p class="error" role="alert"[^>]*>(.*?)</p>', self.html, re.S)
        return unescape(found.group(1)) if found else None


class Pages:
    """The app's pages through aiohttp's test client, signed in with the bearer token."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    async def get(self, path: str, params: Any = None) -> Shown:
        resp = await self.client.get(path, params=params, allow_redirects=False)
        return Shown(resp.status, await resp.text())

    async def browse(self, name: str, **params: Any) -> Shown:
        query: list[tuple[str, str]] = []
        for k, v in params.items():
            query += [(k, x) for x in v] if isinstance(v, list) else [(k, str(v))]
        return await self.get(f"/datasets/{name}/items", query)

    async def follow(self, shown: Shown, id_: str = "next-page") -> Shown:
        link = shown.link(id_)
        assert link is not None, f"no {id_} link"
        return await self.get(link)

    async def all_rows(self, name: str, **params: Any) -> list[tuple[str, str]]:
        shown = await self.browse(name, **params)
        rows = shown.rows()
        while shown.link("next-page"):
            shown = await self.follow(shown)
            assert shown.status == 200
            rows += shown.rows()
        return rows


@pytest.fixture
async def app_for(tmp_path: Path) -> AsyncIterator[Any]:
    """``await app_for(db)``: :class:`Pages` of the real app on the catalog ``db``."""
    from syncd.daemon.catalog_thread import CatalogThread
    from syncd.daemon.metrics import Metrics
    from syncd.server.app import make_app
    from syncd.server.routes import Context

    opened: list[tuple[CatalogThread, TestClient]] = []

    async def start(db: Path) -> Pages:
        thread = CatalogThread(str(db), create=False)
        await thread.start()
        app = make_app(Context(thread, None, Metrics()), TOKEN)  # type: ignore[arg-type]
        client = TestClient(TestServer(app), headers={"Authorization": f"Bearer {TOKEN}"})
        await client.start_server()
        opened.append((thread, client))
        return Pages(client)

    yield start
    for thread, client in opened:
        await client.close()
        await thread.close()


@pytest.fixture
def folder_catalog(tmp_path: Path) -> tuple[Path, Path]:
    """A local folder synced into a catalog as dataset ``disk``: a PNG, a text file two levels
    down, an HTML file, and ``link.png``, a file when synced, then a symlink to a file
    outside the folder. Returns (catalog, folder)."""
    folder = tmp_path / "folder"
    (folder / "a" / "b").mkdir(parents=True)
    (folder / "a" / "red.png").write_bytes(png(4, 3))
    (folder / "a" / "b" / "two.txt").write_text("two")
    (folder / "page.html").write_text("<script>window.__pwned = 'html'</script>")
    (folder / "link.png").write_bytes(png(2, 2))
    db = tmp_path / "catalog.db"
    sync(str(folder), "disk", db)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"SECRET-OUTSIDE-THE-FOLDER")
    (folder / "link.png").unlink()
    (folder / "link.png").symlink_to(secret)
    return db, folder


# -- server-side: errors ---------------------------------------------------------------------------


async def test_unknown_datasets_and_items_are_404_pages(
    app_for: Any, folder_catalog: tuple[Path, Path]
) -> None:
    pages = await app_for(folder_catalog[0])
    for path in (
        "/datasets/nope/items",
        "/datasets/nope/item?key=a/red.png",
        "/datasets/nope/object?key=a/red.png",
        "/datasets/disk/item?key=a/missing.png",
        "/datasets/disk/object?key=a/missing.png",
        "/datasets/disk/item?key=%00",
        "/datasets/disk/object?key=%ED%A0%80",
        "/datasets/%3Cscript%3E/items",
    ):
        shown = await pages.get(path)
        assert shown.status == 404, (path, shown.status, shown.html[-400:])
        assert shown.error() and "\n" not in shown.error()
        assert "Traceback" not in shown.html
    shown = await pages.get("/datasets/nope/items")
    assert shown.error() == "There is no dataset named 'nope'."
    shown = await pages.get("/datasets/%3Cscript%3E/items")
    assert "<script>" not in shown.html.split("<main", 1)[1]  # the name comes back escaped
    for path in ("/datasets/disk/item", "/datasets/disk/object?key="):
        shown = await pages.get(path)
        assert shown.status == 400 and "?key=" in (shown.error() or ""), path


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("where=size%3E%3E1", "is not a size"),
        ("where=colour%3Dred", "unknown field 'colour'"),
        ("where=metadata.user.%22a%5C%22b%22%3D1", "cannot be queried"),
        ("where=" + "x" * 5000, "at most 4096 characters"),
        ("where=size%3E1%00", "NUL"),
        ("where=key%3D%ED%B3%BF", None),  # not UTF-8: a replacement character, no match
        ("prefix=a%2F%00", "NUL"),
        ("prefix=%ED%A0%80", None),
        ("cursor=garbage", "malformed cursor"),
        ("cursor=L!!!", "malformed cursor"),
        ("cursor=LYS9i", "malformed cursor"),  # "a/b": under the root, but not one level down
        ("cursor=LAA", "malformed cursor"),  # a NUL
        ("cursor=WyJrZXkiLCJhc2MiLCJhIiwiYSJd&where=size%3E0", None),  # a flat view's cursor
        ("cursor=WyJrZXkiLCJhc2MiLCJhIiwiYSJd", "malformed cursor"),  # ... in the folder view
        ("cursor=WyJzaXplIiwiYXNjIiwxLCJhIl0&where=size%3E0", "malformed cursor"),  # other sort
        ("flat=1&cursor=Lw", "malformed cursor"),  # a folder view's cursor in the flat view
        ("where=&where=+", None),  # empty boxes of the form: no filter
    ],
)
async def test_bad_input_is_a_400_page_with_one_line(
    app_for: Any, folder_catalog: tuple[Path, Path], query: str, says: str | None
) -> None:
    """Whatever the URL carries, the answer is the page with one line saying what is wrong
    (400), or the page (200) for what is valid; never a 500."""
    pages = await app_for(folder_catalog[0])
    shown = await pages.get("/datasets/disk/items?" + query)
    if says is None:
        assert shown.status == 200, shown.error()
        return
    assert shown.status == 400, (query, shown.status, shown.html[-600:])
    error = shown.error()
    assert error is not None and says in error and "\n" not in error, error
    # the form is there to correct it
    assert 'id="where-new"' in shown.html


# -- server-side: folders and paging -----------------------------------------------------------


async def test_folders_with_counts_and_items_one_level_at_a_time(
    app_for: Any, folder_catalog: tuple[Path, Path]
) -> None:
    db, _ = folder_catalog
    pages = await app_for(db)
    root = await pages.browse("disk")
    assert root.status == 200
    assert root.rows() == [("folder", "a/"), ("item", "link.png"), ("item", "page.html")]
    assert root.counts() == ["2 items"]
    inside = await pages.browse("disk", prefix="a/")
    assert inside.rows() == [("folder", "b/"), ("item", "red.png")]
    assert inside.counts() == ["1 item"]
    # thumbnails for the images only, through the object route
    assert inside.html.count('<img src="/datasets/disk/object?key=a%2Fred.png"') == 1
    assert "two.txt" not in inside.html
    # the breadcrumbs lead back up
    assert (
        'href="/datasets/disk/items?prefix=a%2F"'
        in (await pages.browse("disk", prefix="a/b/")).html
    )
    # flat: every level, names relative to the root
    flat = await pages.browse("disk", flat="1")
    assert [n for _, n in flat.rows()] == ["a/b/two.txt", "a/red.png", "link.png", "page.html"]
    # the exact count, asked for
    counted = await pages.browse("disk", prefix="a/", count="1")
    assert re.search(r'<span id="total">2 items, <span title="(\d+) bytes">', counted.html)


async def test_paging_at_the_edges_of_a_page(app_for: Any, tmp_path: Path) -> None:
    """A level of exactly one page has no next link; one entry more makes a second page of
    one; a folder counted to the cap says "10,000+"; 21 folders on a page are counted to
    100 ("100+"); an empty level and an empty filter say so."""
    db = tmp_path / "c.db"
    catalog = Catalog.open(str(db))
    page = browse.PAGE
    write_items(catalog, "exact", {f"k{i:04d}": 1 for i in range(page)})
    write_items(catalog, "one-more", {f"k{i:04d}": 1 for i in range(page + 1)})
    big = {f"big/{i:05d}": 2 for i in range(10_001)}
    big.update({f"small/{i}": 3 for i in range(5)})
    write_items(catalog, "capped", big)
    crowded = {f"f{f:02d}/{i:04d}": 1 for f in range(21) for i in range(3)}
    crowded.update({f"f00/x{i:04d}": 1 for i in range(100)})
    crowded.update({f"f01/x{i:04d}": 1 for i in range(97)})  # 100 exactly: not capped
    write_items(catalog, "crowded", crowded)
    write_items(catalog, "empty", {})
    catalog.close()
    pages = await app_for(db)

    exact = await pages.browse("exact")
    assert len(exact.rows()) == page and exact.link("next-page") is None
    one_more = await pages.browse("one-more")
    assert len(one_more.rows()) == page
    second = await pages.follow(one_more)
    assert second.rows() == [("item", f"k{page:04d}")]
    assert second.link("next-page") is None and second.link("first-page") is not None
    assert (await pages.follow(second, "first-page")).rows() == one_more.rows()

    capped = await pages.browse("capped")
    assert capped.counts() == ["10,000+ items", "5 items"]
    assert "&gt; " in capped.html  # bytes of a capped folder are a lower bound
    crowded_page = await pages.browse("crowded")
    assert crowded_page.counts()[:2] == ["100+ items", "100 items"]
    assert crowded_page.counts()[2:] == ["3 items"] * 19
    assert "up to 100 " in crowded_page.html
    assert [browse.count_cap(n) for n in (0, 1, 2, 3, 20, 21, 100)] == [
        10_000, 10_000, 10_000, 1_000, 1_000, 100, 100
    ]  # fmt: skip

    empty = await pages.browse("empty")
    assert empty.status == 200 and empty.rows() == [] and 'id="empty"' in empty.html
    nothing = await pages.browse("capped", where="size>100")
    assert nothing.status == 200 and "No item under this prefix matches." in nothing.html


async def test_next_links_hold_the_last_entry_while_the_dataset_changes(
    app_for: Any, tmp_path: Path
) -> None:
    """Between pages: the first page's last entry is deleted, one entry is added before it
    and one right after it. The next pages hold exactly the entries after the first page's
    last one as the dataset now is (the new one after it included): nothing twice, nothing
    that stayed skipped. In the folder view, the flat view and a filtered one."""
    db = tmp_path / "c.db"
    catalog = Catalog.open(str(db))
    keys = {f"e{i:04d}": 1 for i in range(0, 500, 2)}  # 250 items
    keys.update({f"e{i:04d}/inner": 1 for i in range(1, 400, 2)})  # 200 folders among them
    write_items(catalog, "moving", keys)
    pages = await app_for(db)

    def entries(current: set[str], flat: bool) -> list[str]:
        return sorted(current if flat else {k.split("/")[0] + "/" if "/" in k else k
                                            for k in current})  # fmt: skip

    for view in ({}, {"flat": "1"}, {"where": "size>=1"}):
        flat = bool(view)
        current = set(keys)
        first = await pages.browse("moving", **view)
        seen = [n for _, n in first.rows()]
        assert seen == entries(current, flat)[: browse.PAGE]
        last = seen[-1]
        gone = last + "inner" if last.endswith("/") else last
        after = last.rstrip("/") + "x-after"
        remove_items(catalog, "moving", [gone])
        write_items(catalog, "moving", {"d-before": 1, after: 1})
        current = (current - {gone}) | {"d-before", after}
        shown = await pages.follow(first)
        rest = [n for _, n in shown.rows()]
        while shown.link("next-page"):
            shown = await pages.follow(shown)
            rest += [n for _, n in shown.rows()]
        assert rest == [e for e in entries(current, flat) if e > last], view
        assert after in rest and "d-before" not in rest
        # back as it was
        remove_items(catalog, "moving", ["d-before", after])
        write_items(catalog, "moving", {gone: 1})
    catalog.close()


# -- server-side: the object route ---------------------------------------------------------------


async def test_a_local_folder_serves_its_items_bytes_and_nothing_else(
    app_for: Any, folder_catalog: tuple[Path, Path], tmp_path: Path
) -> None:
    db, folder = folder_catalog
    # another dataset on a folder beside it: its keys are not disk's
    other = tmp_path / "other"
    other.mkdir()
    (other / "only-here.png").write_bytes(png(1, 1))
    sync(str(other), "other", db)
    pages = await app_for(db)
    client = pages.client

    resp = await client.get("/datasets/disk/object", params={"key": "a/red.png"})
    assert resp.status == 200 and await resp.read() == png(4, 3)
    assert resp.content_type == "image/png"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in resp.headers["Content-Security-Policy"]

    # HTML in the folder is a download, never a page of the daemon's origin
    resp = await client.get("/datasets/disk/object", params={"key": "page.html"})
    assert resp.status == 200 and resp.content_type == "application/octet-stream"
    assert resp.headers["Content-Disposition"].startswith("attachment;")
    assert "sandbox" in resp.headers["Content-Security-Policy"]

    # keys that are not disk's items, paths out of the folder, a symlink out of it
    for key in (
        "../other/only-here.png",
        "only-here.png",
        "a/../page.html",
        "/etc/passwd",
        str(folder / "page.html"),
        "a//red.png",
        "link.png",  # an item, but now a symlink to a file outside the folder
    ):
        resp = await client.get("/datasets/disk/object", params={"key": key})
        body = await resp.read()
        assert resp.status == 404, (key, resp.status)
        assert b"SECRET" not in body and b"root:" not in body
    # the other dataset serves its own
    resp = await client.get("/datasets/other/object", params={"key": "only-here.png"})
    assert resp.status == 200 and await resp.read() == png(1, 1)


async def test_a_bucket_item_is_a_redirect_to_a_presigned_url(
    app_for: Any, moto: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bytes go from the bucket to the browser: the daemon answers 302 to a URL signed
    with the dataset's credentials, which reads the object."""
    import urllib.request

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)  # as the daemon's environment says

    s3 = boto3.client("s3", endpoint_url=moto.url)
    bucket = unique_bucket("items")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="raw/red.png", Body=png(3, 3), ContentType="image/png")
    db = tmp_path / "c.db"
    sync(f"s3://{bucket}/raw/", "bucket", db, {"AWS_ENDPOINT_URL": moto.url})
    pages = await app_for(db)
    root = await pages.browse("bucket")
    assert root.rows() == [("item", "red.png")]  # the root is the dataset's path
    resp = await pages.client.get(
        "/datasets/bucket/object", params={"key": "raw/red.png"}, allow_redirects=False
    )
    assert resp.status == 302
    location = resp.headers["Location"]
    query = parse_qs(urlsplit(location).query)
    assert "X-Amz-Signature" in query and query["X-Amz-Expires"] == ["900"]
    assert TOKEN not in location
    with urllib.request.urlopen(location, timeout=30) as got:
        assert got.read() == png(3, 3)
    resp = await pages.client.get(
        "/datasets/bucket/object", params={"key": "raw/none.png"}, allow_redirects=False
    )
    assert resp.status == 404


async def test_the_item_page_shows_every_field_and_its_metadata(
    app_for: Any, tmp_path: Path
) -> None:
    db = tmp_path / "c.db"
    catalog = Catalog.open(str(db))
    ds = write_items(catalog, "meta", {"x/y.jpg": 1234}, content_type="image/jpeg")
    cast = "?"
    catalog.db.execute(
        f"UPDATE items SET metadata = {cast}, user_metadata = {cast}, tags = {cast}"
        " WHERE dataset_id = ? AND key = ?",
        [
            json.dumps(
                {
                    "provider": {"camera": "<b>x</b>"},
                    "object_tags": {"team": "vision"},
                    "content_type_guessed": True,
                }
            ),
            json.dumps({"site": "berlin", "nested": {"a": [1, 2]}}),
            json.dumps(["qa", "review"]),
            ds,
            "x/y.jpg",
        ],
    )
    catalog.close()
    pages = await app_for(db)
    shown = await pages.get("/datasets/meta/item", {"key": "x/y.jpg"})
    assert shown.status == 200
    html = shown.html
    for field in browse.Item.__dataclass_fields__:
        if field not in ("user_metadata", "metadata", "tags"):
            assert f'<th scope="row">{field}</th>' in html, field
    assert "1,234 bytes" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert re.search(r"<th[^>]*><bdi>team</bdi></th><td[^>]*><bdi>vision</bdi>", html)
    assert "content_type_guessed" in html
    assert "<bdi>berlin</bdi>" in html and '<code>{"a": [1, 2]}</code>' in html
    assert "<li><bdi>qa</bdi></li><li><bdi>review</bdi></li>" in html
    assert 'id="preview"' in html  # an image: a preview through the object route
    # the item's own folder in the breadcrumbs
    assert 'href="/datasets/meta/items?prefix=x%2F"' in html


async def test_a_rare_filter_is_searched_a_window_at_a_time(
    app_for: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter few items match reads a window of keys per catalog call: when the page's
    search time is up before it is full, it says how far it searched and links to the rest
    of the search, which finds every match exactly once; with time to spare, the windows
    fill the page in one request."""
    from syncd.web import items as web_items

    db = tmp_path / "c.db"
    catalog = Catalog.open(str(db))
    sizes = {f"k{i:04d}": (7 if i % 97 == 0 else 1) for i in range(1000)}  # 11 rare ones
    write_items(catalog, "rare", sizes)
    catalog.close()
    rare = [k for k, n in sizes.items() if n == 7]
    pages = await app_for(db)
    monkeypatch.setattr(browse, "WINDOW", 50)
    monkeypatch.setattr(browse, "FIRST_WINDOW", 50)
    monkeypatch.setattr(web_items, "SEARCH_SECONDS", 0.0)  # one window per request
    shown = await pages.browse("rare", where="size=7")
    assert shown.status == 200 and 'id="searched"' in shown.html
    assert "Searched the keys up to <code><bdi>k0049</bdi></code>: 1 match so far" in shown.html
    assert shown.link("next-page") is not None and "Search further" in shown.html
    found = [n for _, n in shown.rows()]
    requests = 1
    while shown.link("next-page"):
        shown = await pages.follow(shown)
        requests += 1
        found += [n for _, n in shown.rows()]
    assert found == rare and requests == 1000 // 50
    # time to spare: the page fills from window after window in one request, the windows
    # growing from the first (10 keys, then 40, then 50 each)
    monkeypatch.setattr(web_items, "SEARCH_SECONDS", 60.0)
    monkeypatch.setattr(browse, "FIRST_WINDOW", 10)
    windows: list[int] = []
    real = browse.folders.query_window

    def counted(*args: Any, **kwargs: Any) -> Any:
        windows.append(kwargs["window"])
        return real(*args, **kwargs)

    monkeypatch.setattr(browse.folders, "query_window", counted)
    shown = await pages.browse("rare", where="size=7")
    assert [n for _, n in shown.rows()] == rare and 'id="searched"' not in shown.html
    assert shown.link("next-page") is None
    assert windows == [10, 40] + [50] * 19


# -- in the browser ----------------------------------------------------------------------------

#: what a payload sets if it ever runs as script
PWNED = "window.__pwned"
SCRIPT_KEY = "hostile/<script>window.__pwned=1</script>.png"
IMG_KEY = 'hostile/"><img src=x onerror=window.__pwned=2>.png'
RTL_KEY = "hostile/\u202egnp.exe"
LONG_KEY = "hostile/" + "n" * 1000 + ".png"
META_PAYLOAD = '"><img src=x onerror=window.__pwned=3>'
#: metadata names are letters, digits, _ and - (the edit API refuses others): values carry it
USER_META = {
    "script": "<script>alert(4)</script>",
    "attr": '"><img src=x onerror=window.__pwned=5>',
    "rtl": "\u202eevil",
    "long": "m" * 1000,
}
USER_TAG = "<script>window.__pwned=6</script>"
HOSTILE_META = {"<script>alert(9)</script>": {'"><img src=x onerror=alert(10)>': [USER_TAG]}}
HOSTILE_DATASET = '"><img src=x onerror=window.__pwned=7>'
DISK_HOSTILE = '"><img src=x onerror=window.__pwned=8>.png'
DISK_RTL = "\u202eevil.txt"
#: the JPEG a browser encodes (no imaging library needed to make a real one)
JPEG_JS = """() => {
  const c = document.createElement('canvas'); c.width = 64; c.height = 40;
  const g = c.getContext('2d'); g.fillStyle = '#3050c0'; g.fillRect(0, 0, 64, 40);
  g.fillStyle = '#f0c020'; g.fillRect(16, 10, 24, 16);
  return c.toDataURL('image/jpeg', 0.9);
}"""


@dataclass
class World:
    daemon: Any
    folder: Path
    bucket: str
    jpeg: bytes

    @property
    def base(self) -> str:
        return self.daemon.base


@pytest.fixture(scope="module")
def world(
    moto: Emulator, web_browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """``syncd run`` on a watched folder (``disk``) and a moto bucket (``bucket``, its
    provider metadata recorded by HEAD), both holding real PNG and JPEG files, keys and
    metadata that would run script if rendered as HTML, 130 items in ``many/`` (two pages),
    and a dataset whose name is such a payload; each synced once before the tests look."""
    import base64
    from urllib.parse import quote

    from tests.emulators import moto_env
    from tests.waiting import wait_for
    from tests.web import start_daemon

    tab = web_browser.new_page()
    jpeg = base64.b64decode(tab.evaluate(JPEG_JS).split(",", 1)[1])
    tab.close()
    assert jpeg[:2] == b"\xff\xd8"

    tmp = tmp_path_factory.mktemp("items")
    folder = tmp / "folder"
    (folder / "photos").mkdir(parents=True)
    (folder / "photos" / "red.png").write_bytes(png(56, 40))
    (folder / "photos" / "blue.jpg").write_bytes(jpeg)
    (folder / "notes.txt").write_text("notes")
    (folder / DISK_HOSTILE).write_bytes(png(6, 6, (10, 160, 10)))
    (folder / DISK_RTL).write_text("rtl")
    s3 = boto3.client("s3", endpoint_url=moto.url)
    bucket = unique_bucket("items")
    s3.create_bucket(Bucket=bucket)
    put = s3.put_object
    put(Bucket=bucket, Key="img/red.png", Body=png(48, 32), ContentType="image/png",
        Metadata={"note": META_PAYLOAD, "camera": "x100"})  # fmt: skip
    put(Bucket=bucket, Key="img/blue.jpg", Body=jpeg, ContentType="image/jpeg")
    for key in (SCRIPT_KEY, IMG_KEY, LONG_KEY):
        put(Bucket=bucket, Key=key, Body=png(8, 8, (20, 20, 200)), ContentType="image/png")
    put(Bucket=bucket, Key=RTL_KEY, Body=b"rtl", ContentType="application/octet-stream")
    for i in range(130):
        put(Bucket=bucket, Key=f"many/k{i:03d}.txt", Body=b"x" * i, ContentType="text/plain")
    port = free_port()
    config = tmp / "syncd.toml"
    config.write_text(
        f"""
[daemon]
interval = 3600

[drivers.bucket]
type = "s3"
bucket = "{bucket}"
endpoint = "{moto.url}"

[drivers.disk]
type = "local"
bucket = "{folder}"

[datasets.bucket]
driver = "bucket"
metadata = "head"

[datasets.disk]
driver = "disk"
watch = true

[server]
host = "127.0.0.1"
port = {port}
"""
    )
    env = moto_env(moto)
    daemon = start_daemon(config, tmp / "catalog.db", port, env)
    try:
        status, body = daemon.api(
            "/api/v1/datasets",
            method="POST",
            body=json.dumps(
                {
                    "name": HOSTILE_DATASET,
                    "driver": {
                        "type": "s3",
                        "bucket": bucket,
                        "path": "img/",
                        "endpoint": moto.url,
                    },
                }
            ).encode(),
        )
        assert status == 201, body

        def synced(name: str) -> bool:
            status, body = daemon.api(f"/api/v1/datasets/{quote(name, safe='')}/runs")
            return status == 200 and any(r["status"] == "completed" for r in body["runs"])

        for name in ("bucket", "disk", HOSTILE_DATASET):
            wait_for(lambda n=name: synced(n), f"the first reconcile of {name!r}")
        status, body = daemon.api(
            "/api/v1/datasets/bucket/items/img/red.png",
            method="PATCH",
            body=json.dumps({"metadata": USER_META, "add_tags": ["qa", "site:berlin"]}).encode(),
        )
        assert status == 200, body
        # names and tags the edit API refuses, as another writer of the catalog could leave
        # them: the pages must show them as text too
        with sqlite3.connect(tmp / "catalog.db") as db:
            db.execute(
                "UPDATE items SET user_metadata = ?, tags = ? WHERE key = ?",
                [json.dumps(HOSTILE_META), json.dumps(sorted([USER_TAG, "qa"])), RTL_KEY],
            )
        yield World(daemon, folder, bucket, jpeg)
    finally:
        code = daemon.stop()
        assert code == 0, "".join(daemon.log[-40:])


def signed_in(world: World, page: Any) -> Any:
    from tests.web import sign_in

    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.dialogs = dialogs
    sign_in(page, world.daemon)
    return page


def thumbnails_load(page: Any, at_least: int) -> None:
    """Wait until every thumbnail of the table has loaded a real image (``naturalWidth``)."""
    page.wait_for_function(
        """n => { const imgs = [...document.querySelectorAll('table.items img')];
                   return imgs.length >= n && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
        arg=at_least,
    )


def names(page: Any) -> list[str]:
    return page.eval_on_selector_all("table.items td.key bdi", "els => els.map(e => e.textContent)")


def no_script_ran(page: Any) -> None:
    """Nothing a payload would do happened: no variable set, no dialog, no element it would
    have made; the only scripts are the page's own files and its JSON data."""
    assert page.evaluate(f"() => {PWNED}") is None
    assert page.dialogs == []
    assert page.locator("img[src=x]").count() == 0
    inline = page.eval_on_selector_all(
        "script", "els => els.filter(s => !s.src && s.type !== 'application/json').length"
    )
    assert inline == 0
    assert page.eval_on_selector_all("[onerror], [onload]", "els => els.length") == 0


def test_browse_folders_of_a_folder_and_a_bucket_with_thumbnails(
    world: World, web_page: Any
) -> None:
    page = signed_in(world, web_page)
    for name, folder, images in (("disk", "photos/", 2), ("bucket", "img/", 2)):
        page.goto(f"{world.base}/datasets/{name}")
        page.click("#browse-items")
        page.wait_for_selector("table.items")
        assert folder in names(page)
        row = page.locator("tr.folder", has=page.locator(f"bdi:text-is('{folder}')"))
        assert row.locator("td.count").inner_text() == f"{images} items"
        row.locator("a").click()
        page.wait_for_url(f"**prefix={folder.rstrip('/')}%2F")
        thumbnails_load(page, images)
        assert sorted(names(page)) == ["blue.jpg", "red.png"]
        sizes = page.eval_on_selector_all(
            "table.items img", "els => els.map(e => [e.naturalWidth, e.naturalHeight])"
        )
        assert sorted(sizes) == sorted([[64, 40], [48, 32] if name == "bucket" else [56, 40]])
        # the breadcrumbs lead back to the root
        page.click(f"nav.crumbs a[href='/datasets/{name}/items']")
        page.wait_for_selector("tr.folder")
    # the bucket's thumbnails come from the bucket: presigned URLs, not the daemon's bytes
    # (with the browser's cache off: it may hold them from the visit above, and a cached
    # answer fires no response event)
    page.context.new_cdp_session(page).send("Network.setCacheDisabled", {"cacheDisabled": True})
    with page.expect_response(lambda r: "X-Amz-Signature=" in r.url) as got:
        page.goto(f"{world.base}/datasets/bucket/items?prefix=img%2F")
    assert got.value.status == 200 and got.value.url.startswith("http://127.0.0.1")


def test_filter_by_a_where_query_and_page_through(world: World, web_page: Any) -> None:
    page = signed_in(world, web_page)
    page.goto(f"{world.base}/datasets/bucket/items?prefix=many%2F")
    assert len(names(page)) == 100 and names(page)[0] == "k000.txt"
    page.click("#next-page")
    page.wait_for_selector("#first-page")
    assert names(page) == [f"k{i:03d}.txt" for i in range(100, 130)]
    assert page.locator("#next-page").count() == 0
    # a filter: images at every level below the root
    page.goto(f"{world.base}/datasets/bucket/items")
    page.fill("#where-new", "content_type=image/*")
    page.click("form.filter button[type=submit]")
    page.wait_for_selector("#summary:has-text('matching the filter')")
    assert sorted(names(page)) == sorted(
        ["img/blue.jpg", "img/red.png", SCRIPT_KEY, IMG_KEY, LONG_KEY]
    )
    thumbnails_load(page, 5)
    # and another expression on top: the form keeps the first
    page.fill("#where-new", "size<300")
    page.click("form.filter button[type=submit]")
    page.wait_for_url("**size%3C300**")
    assert "img/blue.jpg" not in names(page) and len(names(page)) == 4
    # a bad expression: the one-line error, the form to fix it
    page.fill("#where-new", "size>>1")
    page.click("form.filter button[type=submit]")
    error = page.wait_for_selector("#query-error")
    assert error.inner_text().startswith("'size>>1'") and "\n" not in error.inner_text()
    page.errors.clear()  # the 400 answer: Chromium logs it as a console error


def test_the_item_page_shows_every_field_and_its_metadata_in_the_browser(
    world: World, web_page: Any
) -> None:
    page = signed_in(world, web_page)
    page.goto(f"{world.base}/datasets/bucket/items?prefix=img%2F")
    page.click("td.key a:has-text('red.png')")
    page.wait_for_selector("#fields")
    assert page.inner_text("#item-key") == "img/red.png"
    page.wait_for_function(
        "() => { const i = document.querySelector('#preview'); return i && i.complete && i.naturalWidth === 48; }"
    )
    fields = dict(
        page.eval_on_selector_all(
            "#fields tr", "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])"
        )
    )
    assert fields["key"] == "img/red.png" and fields["uri"] == f"s3://{world.bucket}/img/red.png"
    assert fields["content_type"] == "image/png" and fields["etag"]
    provider = dict(
        page.eval_on_selector_all(
            "#provider tr:has(td)",
            "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])",
        )
    )
    assert provider == {"note": META_PAYLOAD, "camera": "x100"}
    user = dict(
        page.eval_on_selector_all(
            "#user tr:has(td)",
            "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])",
        )
    )
    assert user == USER_META
    assert page.eval_on_selector_all("#tags li", "els => els.map(e => e.textContent)") == [
        "qa",
        "site:berlin",
    ]
    no_script_ran(page)


def test_hostile_keys_metadata_and_names_render_as_text(world: World, web_page: Any) -> None:
    """Keys, folder names, metadata, tags and a dataset name written to run script (``<script>``,
    an ``<img onerror>`` breaking out of an attribute), an RTL override and a 1,000-character
    name: each page shows them as the exact text, and no script runs (no variable set, no
    dialog, no element made; the fixture fails on any console error, a CSP refusal included)."""
    from urllib.parse import quote

    page = signed_in(world, web_page)
    # the overview: the hostile dataset's name is text
    page.goto(world.base + "/")
    page.wait_for_selector("#datasets")
    assert HOSTILE_DATASET in page.inner_text("#datasets")
    no_script_ran(page)
    # the bucket's hostile folder
    page.goto(f"{world.base}/datasets/bucket/items?prefix=hostile%2F")
    shown = names(page)
    assert shown == sorted(shown)
    assert set(shown) == {
        "<script>window.__pwned=1</",
        IMG_KEY.removeprefix("hostile/"),
        RTL_KEY.removeprefix("hostile/"),
        LONG_KEY.removeprefix("hostile/"),
    }
    thumbnails_load(page, 2)
    no_script_ran(page)
    # into the folder the <script> key makes, then each hostile item's page
    page.click("td.key a:has-text('<script>')")
    page.wait_for_selector("td.key bdi:text-is('script>.png')")
    thumbnails_load(page, 1)
    no_script_ran(page)
    for key in (SCRIPT_KEY, IMG_KEY, RTL_KEY, LONG_KEY):
        page.goto(f"{world.base}/datasets/bucket/item?key={quote(key, safe='')}")
        assert page.inner_text("#item-key") == key
        no_script_ran(page)
    # the RTL key carries the user's hostile metadata and tags too
    assert page.inner_text("#item-key") == LONG_KEY
    page.goto(f"{world.base}/datasets/bucket/item?key={quote(RTL_KEY, safe='')}")
    assert page.eval_on_selector_all("#tags li", "els => els.map(e => e.textContent)") == sorted(
        [USER_TAG, "qa"]
    )
    user = page.eval_on_selector_all(
        "#user tr:has(td)",
        "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])",
    )
    assert [(k, json.loads(v)) for k, v in user] == list(HOSTILE_META.items())
    no_script_ran(page)
    # the folder's hostile file names, and the hostile dataset's own pages
    page.goto(f"{world.base}/datasets/disk/items")
    assert {DISK_HOSTILE, DISK_RTL, "notes.txt", "photos/"} == set(names(page))
    thumbnails_load(page, 1)
    no_script_ran(page)
    hostile = quote(HOSTILE_DATASET, safe="")
    page.goto(f"{world.base}/datasets/{hostile}/items")
    assert sorted(names(page)) == ["blue.jpg", "red.png"]
    thumbnails_load(page, 2)
    no_script_ran(page)
    page.goto(f"{world.base}/datasets/{hostile}/item?key=img%2Fblue.jpg")
    no_script_ran(page)


def test_the_item_pages_read_and_filter_with_javascript_off(world: World, web_browser: Any) -> None:
    """Every part of the browser is HTML: folders, thumbnails, the filter form (a GET),
    paging links and the item page work with JavaScript off."""
    from tests.waiting import wait_for
    from tests.web import sign_in

    context = web_browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        sign_in(page, world.daemon)
        page.goto(f"{world.base}/datasets/bucket/items")
        page.click("td.key a:has-text('img/')")
        page.wait_for_selector("td.key bdi:text-is('red.png')")
        wait_for(
            lambda: (
                sorted(
                    page.eval_on_selector_all(
                        "table.items img", "els => els.map(e => e.naturalWidth)"
                    )
                )
                == [48, 64]
            ),
            "the thumbnails without JavaScript",
        )
        page.fill("#where-new", "size<300")
        page.click("form.filter button[type=submit]")
        page.wait_for_selector("#summary:has-text('matching the filter')")
        assert names(page) == ["img/red.png"]  # under img/, named from the root
        page.goto(f"{world.base}/datasets/bucket/items?prefix=many%2F")
        page.click("#next-page")
        page.wait_for_selector("td.key bdi:text-is('k129.txt')")
        page.click("td.key a:has-text('k129.txt')")
        assert page.inner_text("#item-key") == "many/k129.txt"
        if os.environ.get("SYNCD_UPDATE_SCREENSHOTS") == "1":  # as the dashboard's tests do
            page.goto(f"{world.base}/datasets/disk/items?prefix=photos%2F")
            shot = page.screenshot(full_page=True)
            (Path(__file__).parent.parent / "docs" / "dashboard-items.png").write_bytes(shot)
    finally:
        context.close()


@pytest.mark.parametrize(
    "path",
    [
        "/datasets/bucket/items",
        "/datasets/bucket/items?prefix=img%2F",
        "/datasets/bucket/items?where=content_type%3Dimage%2F*",
        "/datasets/bucket/item?key=img%2Fred.png",
        "/datasets/disk/items?prefix=photos%2F&count=1",
    ],
)
def test_the_item_pages_pass_axe(world: World, web_page: Any, path: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    page = signed_in(world, web_page)
    page.goto(world.base + path)
    page.wait_for_load_state("networkidle")
    results = Axe().run(page)
    critical = [v for v in results.response["violations"] if v.get("impact") == "critical"]
    assert not critical, json.dumps(critical, indent=1)[:4000]
