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
* **in the browser**: the distribution's Chromium (Playwright, :mod:`tests.web`) on ``syncd
  run`` with a watched folder and a moto bucket holding real PNG and JPEG files and keys,
  metadata and a dataset name built to run script if anything rendered them as HTML.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
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
from tests.emulators import Emulator

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
    one; a folder counted to the cap says "10,000+"; more than 20 folders on a page are
    counted to 1,000 ("1,000+"); an empty level and an empty filter say so."""
    db = tmp_path / "c.db"
    catalog = Catalog.open(str(db))
    page = browse.PAGE
    write_items(catalog, "exact", {f"k{i:04d}": 1 for i in range(page)})
    write_items(catalog, "one-more", {f"k{i:04d}": 1 for i in range(page + 1)})
    big = {f"big/{i:05d}": 2 for i in range(browse.COUNT_CAP + 1)}
    big.update({f"small/{i}": 3 for i in range(5)})
    write_items(catalog, "capped", big)
    crowded = {f"f{f:02d}/{i:04d}": 1 for f in range(browse.CROWDED + 1) for i in range(3)}
    crowded.update({f"f00/x{i:04d}": 1 for i in range(browse.COUNT_CAP_CROWDED)})
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
    assert crowded_page.counts()[0] == "1,000+ items"
    assert crowded_page.counts()[1:] == ["3 items"] * browse.CROWDED
    assert "up to 1,000" in crowded_page.html

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
    assert "<bdi>berlin</bdi>" in html and "<code>{\"a\": [1, 2]}</code>" in html
    assert "<li><bdi>qa</bdi></li><li><bdi>review</bdi></li>" in html
    assert 'id="preview"' in html  # an image: a preview through the object route
    # the item's own folder in the breadcrumbs
    assert 'href="/datasets/meta/items?prefix=x%2F"' in html
