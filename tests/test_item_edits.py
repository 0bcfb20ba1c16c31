"""Item edits (issue 23, part 3): the user's metadata (``metadata.user``) and tags.

What is proven here, each on real parts (sqlite and PostgreSQL through ``catalogs``, moto S3
for the bucket paths, a local folder for the quick ones, the daemon's real HTTP server):

* an edit merges a JSON merge patch (RFC 7386) into ``metadata.user`` and adds and removes
  tags, one item or many (bounded batches, each one transaction), and records one change per
  item changed, carrying the user's part; an edit that changes nothing records nothing;
* the user's part survives an object overwritten in the bucket (listing and event paths), a
  re-sync, a split run and a daemon restart, and vanishes with the object (deleted in the
  bucket then synced; deleted by an event);
* input past the limits (deep, huge, names with dots or quotes, non-object bodies, unknown
  fields, non-finite numbers, NUL, unpaired surrogates, bad tags) is a 400 / exit 2 /
  ``UsageError`` with one line, and nothing is written.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import ClientSession

import syncd
from providers.config import DriverConfig
from syncd import api, model, usermeta
from syncd.config import load_daemon_config
from syncd.daemon.service import Daemon
from syncd.errors import UsageError
from syncd.events.apply import apply_events
from syncd.events.parse import EventKind, ObjectEvent, pad_sequencer
from syncd.query import parse_where
from syncd.reconcile.filters import Filters
from syncd.reconcile.sync import SyncOptions
from syncd.store import changes, edits
from syncd.store.catalog import Catalog, Dataset, Item
from syncd.store.checkpoint import Checkpoint
from syncd.store.db import transaction
from syncd.store.edits import Edit, Selection
from tests.conftest import CatalogMaker, unique_bucket
from tests.emulators import free_port

T0 = "2026-01-01T00:00:00Z"
TOKEN = "edit-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- helpers -----------------------------------------------------------------------------


def seeded(catalog: Catalog, keys: list[str], name: str = "ds") -> Dataset:
    """A dataset of a (never opened) local folder holding ``keys``, written as a listing
    writes them."""
    ds = catalog.create_dataset(
        name, "file:///nowhere/", DriverConfig(type="local", bucket="/nowhere"), Filters()
    )
    rows = [Item(k, "/" + k, "file:///nowhere/" + k, 1, "e", None, T0, None, T0, T0) for k in keys]
    with transaction(catalog.db):
        catalog.write_items(ds.id, rows, source="listing")
    return ds


def item(catalog: Catalog, key: str, dataset: str = "ds") -> dict[str, Any] | None:
    found = catalog.get_item(catalog.get_dataset(dataset).id, key)
    return found.public() if found is not None else None


def user_part(catalog: Catalog, dataset: str = "ds") -> dict[str, tuple[dict, list]]:
    """Every item's ``(metadata.user, tags)``."""
    ds = catalog.get_dataset(dataset)
    return {
        i.key: (json.loads(i.user_metadata), json.loads(i.tags)) for i in catalog.iter_items(ds.id)
    }


def edit_changes(catalog: Catalog) -> list[changes.Change]:
    return [c for c in changes.follow(catalog.db) if c.source == "edit"]


def snapshot(catalog: Catalog) -> tuple[int, list[tuple]]:
    """The change log's head and every item row: what "nothing written" compares."""
    rows = catalog.db.execute(
        "SELECT key, user_metadata, tags, updated_at FROM items ORDER BY key"
    ).fetchall()
    return changes.head(catalog.db), [tuple(r) for r in rows]


def canon(text: str) -> Any:
    return json.loads(text)


# -- one item, many items, the change log (both stores) ------------------------------------


def test_an_edit_merges_metadata_and_tags_and_records_one_change(catalogs: CatalogMaker) -> None:
    """RFC 7386 semantics (set, null removes, objects merge, arrays replace), tags sorted and
    distinct; one change record of source ``edit`` carrying the user's part; the same edit
    again writes and records nothing (updated_at too stays)."""
    catalog = catalogs()
    seeded(catalog, ["a.jpg", "b.jpg"])
    head = changes.head(catalog.db)
    first = Edit.of(
        {"site": "berlin", "cam": {"id": 3, "lens": "35mm"}, "boxes": [1, 2], "ok": True},
        ["review", "b", "review"],
    )
    got = edits.update_item(catalog, "ds", "a.jpg", first)
    assert got.public()["metadata"]["user"] == {
        "site": "berlin",
        "cam": {"id": 3, "lens": "35mm"},
        "boxes": [1, 2],
        "ok": True,
    }
    assert got.public()["tags"] == ["b", "review"]
    patch = Edit.of({"cam": {"lens": None, "iso": 200}, "boxes": [3], "site": None}, ["a"], ["b"])
    got = edits.update_item(catalog, "ds", "a.jpg", patch)
    assert got.public()["metadata"]["user"] == {
        "cam": {"id": 3, "iso": 200},
        "boxes": [3],
        "ok": True,
    }
    assert got.public()["tags"] == ["a", "review"]
    # 1 == True in Python, not in JSON: changing one into the other is a change
    got = edits.update_item(catalog, "ds", "a.jpg", Edit.of({"ok": 1}))
    assert got.public()["metadata"]["user"]["ok"] == 1
    assert got.public()["metadata"]["user"]["ok"] is not True

    found = edit_changes(catalog)
    assert [c.cursor for c in found] == [head + 1, head + 2, head + 3]
    assert {(c.kind, c.key) for c in found} == {("updated", "a.jpg")}
    last = found[-1].item
    assert last is not None
    assert last["metadata"]["user"] == {"cam": {"id": 3, "iso": 200}, "boxes": [3], "ok": 1}
    assert last["tags"] == ["a", "review"]
    assert last["etag"] == "e" and last["filename"] == "/a.jpg"
    # the listing's changes carry no user part: a follower keeps what it has
    listed = [c for c in changes.follow(catalog.db) if c.source == "listing"]
    assert listed and all("tags" not in c.item and "user" not in c.item["metadata"] for c in listed)

    before = snapshot(catalog)
    again = edits.update_item(catalog, "ds", "a.jpg", Edit.of({"ok": 1, "site": None}, ["a"]))
    assert again.updated_at == got.updated_at
    assert snapshot(catalog) == before
    catalog.close()


def test_a_bulk_edit_goes_in_bounded_batches_over_keys_and_prefixes(
    catalogs: CatalogMaker,
) -> None:
    """1,203 items under a prefix: three batches of at most BATCH, each its own change-log
    group (one transaction each); keys and prefix together select their intersection; keys
    that are not items are counted and skipped; a second run changes nothing."""
    catalog = catalogs()
    keys = [f"raw/{i:05d}.jpg" for i in range(1203)] + ["other/x.jpg"]
    seeded(catalog, keys)
    result = edits.update(catalog, "ds", Selection.of(prefix="raw/"), Edit.of({"s": 1}, ["t"]))
    assert (result.matched, result.changed, result.missing) == (1203, 1203, 0)
    groups = catalog.db.execute(
        "SELECT last - cursor + 1 FROM changes WHERE source = 'edit' ORDER BY cursor"
    ).fetchall()
    assert [int(g[0]) for g in groups] == [edits.BATCH, edits.BATCH, 1203 - 2 * edits.BATCH]
    state = user_part(catalog)
    assert state["other/x.jpg"] == ({}, [])
    assert all(state[k] == ({"s": 1}, ["t"]) for k in keys[:-1])

    again = edits.update(catalog, "ds", Selection.of(prefix="raw/"), Edit.of({"s": 1}, ["t"]))
    assert (again.matched, again.changed) == (1203, 0)
    assert len(edit_changes(catalog)) == 1203

    picked = Selection.of(["raw/00001.jpg", "other/x.jpg", "raw/nope.jpg"], "raw/")
    result = edits.update(catalog, "ds", picked, Edit.of(None, None, ["t"]))
    assert (result.matched, result.changed, result.missing) == (1, 1, 1)
    assert result.missing_keys == ["raw/nope.jpg"]
    state = user_part(catalog)
    assert state["raw/00001.jpg"] == ({"s": 1}, []) and state["other/x.jpg"] == ({}, [])
    with pytest.raises(edits.ItemNotFound, match=r"raw/nope\.jpg"):
        edits.update(catalog, "ds", picked, Edit.of(None, ["z"]), require_all=True)
    assert user_part(catalog)["raw/00001.jpg"] == ({"s": 1}, [])
    catalog.close()


def test_a_bulk_edit_by_query_changes_exactly_the_items_the_query_lists(
    catalogs: CatalogMaker,
) -> None:
    """``where`` selects like ``items ls --where``: the items edited are the ones the same
    query lists, with keys and prefix intersecting it; a bad or empty query writes nothing."""
    catalog = catalogs()
    keys = [f"raw/{i:04d}.{'jpg' if i % 3 else 'png'}" for i in range(1100)] + ["top.jpg"]
    ds = seeded(catalog, keys)
    edits.update(catalog, "ds", Selection.of(prefix="raw/00"), Edit.of({"site": "berlin"}))
    where = ["key=raw/**/*.png", "metadata.user.site=berlin"]
    listed = [i.key for i in catalog.iter_query(ds.id, parse_where(where))]
    assert 0 < len(listed) < 100  # some match, most do not
    result = edits.update(catalog, "ds", Selection.of(where=where), Edit.of(None, ["png"]))
    assert (result.matched, result.changed) == (len(listed), len(listed))
    assert sorted(k for k, (_, tags) in user_part(catalog).items() if tags) == listed

    both = Selection.of([listed[0], "top.jpg"], None, "tags~png")
    result = edits.update(catalog, "ds", both, Edit.of(None, None, ["png"]))
    assert (result.matched, result.changed) == (1, 1)
    assert user_part(catalog)[listed[0]][1] == []

    many = edits.update(catalog, "ds", Selection.of(where="key=raw/**"), Edit.of({"n": 1}))
    assert (many.matched, many.changed) == (1100, 1100)  # three batches of matching items
    groups = catalog.db.execute(
        "SELECT last - cursor + 1 FROM changes WHERE source = 'edit' ORDER BY cursor DESC LIMIT 3"
    ).fetchall()
    assert sorted(int(g[0]) for g in groups) == [100, edits.BATCH, edits.BATCH]
    assert user_part(catalog)["top.jpg"] == ({}, [])

    before = snapshot(catalog)
    for bad, says in [("size>>1", "size"), ([], "names no condition"), (3, "where must be")]:
        with pytest.raises(UsageError, match=says):
            edits.update(catalog, "ds", Selection.of(where=bad), Edit.of(None, ["x"]))
    assert snapshot(catalog) == before
    catalog.close()


def test_concurrent_edits_of_one_item_lose_nothing(catalogs: CatalogMaker) -> None:
    """Two writers, each setting its own members and tags on the same item 15 times: every
    write is kept (each edit reads and writes its item under a lock: PostgreSQL's row lock,
    sqlite's write lock)."""
    url = catalogs.new_url()
    setup = Catalog.open(url)
    seeded(setup, ["a"])
    setup.close()
    errors: list[BaseException] = []

    def writer(who: str) -> None:
        catalog = Catalog.open(url)
        try:
            for n in range(15):
                edits.update_item(catalog, "ds", "a", Edit.of({f"{who}{n}": n}, [f"{who}{n}"]))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            catalog.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    catalog = Catalog.open(url)
    metadata, tags = user_part(catalog)["a"]
    assert metadata == {f"{w}{n}": n for w in "xy" for n in range(15)}
    assert tags == sorted(f"{w}{n}" for w in "xy" for n in range(15))
    assert len(edit_changes(catalog)) == 30
    catalog.close()


HOSTILE_PATCHES: list[tuple[Any, str]] = [
    ({"a.b": 1}, "'.'"),
    ({"a": {"x.y": 1}}, "'.'"),
    ({'say"hi': 1}, "letters, digits"),
    ({"it's": 1}, "letters, digits"),
    ({"": 1}, "empty"),
    ({"tab\there": 1}, "letters, digits"),
    ({"x" * 129: 1}, "129 characters"),
    ({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}, "deeper than 8"),
    ({"a": [[[[[[[[1]]]]]]]]}, "deeper than 8"),
    ({"a": float("nan")}, "finite"),
    ({"a": float("inf")}, "finite"),
    ({"a": "nul\x00byte"}, "U+0000"),
    ({"a": "\ud800"}, "surrogate"),
    ({"big": "x" * (usermeta.MAX_PATCH_BYTES + 1)}, "patch is"),
    ([1, 2], "JSON object"),
    ("text", "JSON object"),
    ({"a": {1, 2}}, "JSON values"),
]


@pytest.mark.parametrize(("patch", "says"), HOSTILE_PATCHES)
def test_patches_past_the_limits_are_refused_in_one_line(patch: Any, says: str) -> None:
    with pytest.raises(UsageError) as info:
        Edit.of(patch)
    assert says in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("tags", "says"),
    [
        (["a b"], "characters other"),
        (["a,b"], "characters other"),
        (['"q"'], "characters other"),
        ([""], "empty"),
        (["x" * 65], "65 characters"),
        ([1], "string"),
        ("review", "list of tags"),
        ([f"t{i}" for i in range(101)], "at most 100"),
    ],
)
def test_bad_tags_are_refused(tags: Any, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        Edit.of(None, tags)


def test_an_edit_that_would_pass_a_limit_writes_nothing(catalogs: CatalogMaker) -> None:
    """An item whose metadata would grow past 16 KiB, or past 100 tags: refused, for one item
    and in bulk, where the check runs before the first batch (no item of any batch is
    written); a tag both added and removed, nothing to change: refused."""
    catalog = catalogs()
    keys = [f"k{i:04d}" for i in range(edits.BATCH + 10)]
    seeded(catalog, keys)
    half = "x" * (usermeta.MAX_METADATA_BYTES // 2)
    last = keys[-1]  # in the second batch
    edits.update_item(catalog, "ds", last, Edit.of({"a": half}, [f"t{i}" for i in range(100)]))
    before = snapshot(catalog)
    with pytest.raises(UsageError, match="over the limit of 16,384"):
        edits.update_item(catalog, "ds", last, Edit.of({"b": half}))
    with pytest.raises(UsageError, match="101 tags"):
        edits.update_item(catalog, "ds", last, Edit.of(None, ["one-more"]))
    with pytest.raises(UsageError, match="over the limit"):
        edits.update(catalog, "ds", Selection.of(prefix=""), Edit.of({"b": half}))
    with pytest.raises(UsageError, match="both added and removed"):
        Edit.of(None, ["x"], ["x"])
    with pytest.raises(UsageError, match="nothing to change"):
        Edit.of()
    with pytest.raises(UsageError, match="name the items"):
        Selection.of()
    with pytest.raises(edits.ItemNotFound):
        edits.update_item(catalog, "ds", "nope", Edit.of({"a": 1}))
    with pytest.raises(UsageError, match="unknown dataset"):
        edits.update_item(catalog, "nope", "a", Edit.of({"a": 1}))
    assert snapshot(catalog) == before
    catalog.close()


# -- survival: bucket, events, re-syncs, split runs (moto S3, both stores) -----------------


def s3_event(s3: Any, bucket: str, key: str, marker: int, deleted: bool = False) -> ObjectEvent:
    """The event S3 sends for ``key`` as it is now in the bucket (or its deletion)."""
    if deleted:
        return ObjectEvent(
            EventKind.DELETED, "s3", bucket, key, marker=pad_sequencer(f"{marker:016X}"),
            event_time=datetime.now(UTC),
        )  # fmt: skip
    head = s3.head_object(Bucket=bucket, Key=key)
    return ObjectEvent(
        EventKind.CREATED, "s3", bucket, key, marker=pad_sequencer(f"{marker:016X}"),
        size=head["ContentLength"], etag=head["ETag"].strip('"'),
        event_time=head["LastModified"],
    )  # fmt: skip


def sync(catalog: Catalog, **options: Any) -> Any:
    return asyncio.run(api.sync(catalog, "ds", options=SyncOptions(**options)))


def test_the_user_part_survives_the_bucket_and_vanishes_with_the_object(
    moto: Any, catalogs: CatalogMaker
) -> None:
    """On moto S3: a.jpg and b.jpg get metadata and tags. a.jpg is overwritten and re-synced
    (listing path), b.jpg overwritten and its event applied (event path), an unchanged
    re-sync and a split run (3 key ranges) go by: both keep their user part while their
    ETags follow the bucket. Then a.jpg is deleted in the bucket and synced, b.jpg deleted by
    an event: both items are gone, and uploaded again they come back without it."""
    s3 = boto3.client("s3", endpoint_url=moto.url)
    bucket = unique_bucket("edits")
    s3.create_bucket(Bucket=bucket)
    keys = ["a.jpg", "b.jpg", "m/c.jpg", "z/d.jpg"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"v1")
    catalog = catalogs()
    catalog.create_dataset(
        "ds",
        f"s3://{bucket}/",
        DriverConfig(type="s3", bucket=bucket, endpoint=moto.url),
        Filters(),
    )
    sync(catalog)
    mine = {"site": "berlin", "box": {"x": 1}}
    for key in ("a.jpg", "b.jpg"):
        edits.update_item(catalog, "ds", key, Edit.of(mine, ["review"]))
    kept = (mine, ["review"])

    def etag(key: str) -> str:
        return s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')

    # listing path: overwritten, re-synced
    s3.put_object(Bucket=bucket, Key="a.jpg", Body=b"version two")
    assert sync(catalog).counts["updated"] == 1
    assert item(catalog, "a.jpg")["etag"] == etag("a.jpg")
    # event path: overwritten, the event applied
    s3.put_object(Bucket=bucket, Key="b.jpg", Body=b"version two, by event")
    assert apply_events(catalog, [s3_event(s3, bucket, "b.jpg", 10)]).counts["updated"] == 1
    assert item(catalog, "b.jpg")["etag"] == etag("b.jpg")
    # an unchanged re-sync; then a split run that updates both
    assert sync(catalog).counts["unchanged"] == 4
    s3.put_object(Bucket=bucket, Key="a.jpg", Body=b"three")
    s3.put_object(Bucket=bucket, Key="b.jpg", Body=b"three")
    split = sync(catalog, ranges=3)
    assert split.counts["updated"] == 2
    run = Checkpoint(catalog.db).history(catalog.get_dataset("ds").id, limit=1)[0]
    assert run.ranges == 3
    state = user_part(catalog)
    assert state["a.jpg"] == kept and state["b.jpg"] == kept
    assert state["m/c.jpg"] == ({}, [])
    assert {k: item(catalog, k)["etag"] for k in keys} == {k: etag(k) for k in keys}
    # the listing's and the event's changes never carried the user part
    for change in changes.follow(catalog.db):
        if change.source != "edit":
            assert "tags" not in change.item and "user" not in change.item["metadata"]

    # gone with the object: deleted in the bucket then synced; deleted by an event
    s3.delete_object(Bucket=bucket, Key="a.jpg")
    assert sync(catalog).counts["deleted"] == 1
    s3.delete_object(Bucket=bucket, Key="b.jpg")
    assert (
        apply_events(catalog, [s3_event(s3, bucket, "b.jpg", 20, deleted=True)]).counts["deleted"]
        == 1
    )
    assert item(catalog, "a.jpg") is None and item(catalog, "b.jpg") is None
    s3.put_object(Bucket=bucket, Key="a.jpg", Body=b"back")
    s3.put_object(Bucket=bucket, Key="b.jpg", Body=b"back")
    sync(catalog)
    assert apply_events(catalog, [s3_event(s3, bucket, "b.jpg", 30)]).counts["unchanged"] == 1
    state = user_part(catalog)
    assert state["a.jpg"] == ({}, []) and state["b.jpg"] == ({}, [])
    catalog.close()


# -- the daemon: HTTP edits, hostile bodies, a restart (local folder) ----------------------


class Http:
    def __init__(self, session: ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        auth: bool = True,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        headers = {**(AUTH if auth else {}), "Content-Type": "application/json"}
        async with self.session.request(method, self.base + path, data=data, headers=headers) as r:
            return r.status, await r.json(content_type=None)


async def until(condition: Callable[[], Awaitable[Any]], what: str, timeout: float = 60) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def completed_runs(http: Http) -> int:
    status, body = await http.call("GET", "/api/v1/datasets/files/runs")
    return sum(r["status"] == "completed" for r in body["runs"]) if status == 200 else 0


class Served:
    """A daemon on a local folder (watch off, interval an hour), started and stopped."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.src = tmp / "src"
        self.db = str(tmp / "c.db")
        self.port = free_port()
        (tmp / "syncd.toml").write_text(
            f'[drivers.disk]\ntype = "local"\nbucket = "{self.src}"\n'
            '[datasets.files]\ndriver = "disk"\nwatch = false\n'
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}\n'
        )

    async def start(self, runs: int) -> tuple[Daemon, asyncio.Task[Any]]:
        """Start it and wait for its ``runs``-th completed reconcile (one per start)."""
        daemon = Daemon(
            load_daemon_config(str(self.tmp / "syncd.toml")), self.db, api_token=TOKEN,
            poll_seconds=1,
        )  # fmt: skip
        task = asyncio.create_task(daemon.run())

        async def ready() -> bool:
            if task.done():
                task.result()
            return daemon.ready.is_set()

        await until(ready, "the daemon to start")
        async with ClientSession() as session:
            http = Http(session, f"http://127.0.0.1:{daemon.port}")
            await until(lambda: _at_least(completed_runs(http), runs), f"reconcile {runs}")
        return daemon, task


async def _at_least(value: Awaitable[int], n: int) -> bool:
    return await value >= n


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Served, Http]]:
    world = Served(tmp_path)
    for key in ["a.jpg", "b.jpg", "x/url", "dir/c.jpg", "dir/d.jpg"]:
        (world.src / key).parent.mkdir(parents=True, exist_ok=True)
        (world.src / key).write_text(key)
    daemon, task = await world.start(1)
    async with ClientSession() as session:
        yield world, Http(session, f"http://127.0.0.1:{daemon.port}")
    daemon.stop.set()
    await asyncio.wait_for(task, 60)


async def test_http_edits_one_item_and_many(served: tuple[Served, Http]) -> None:
    """PATCH answers the item as it now is; items:update answers the counts; both need the
    bearer token; a key ending in /url is edited as itself; the change feed shows the edits."""
    _, http = served
    status, body = await http.call(
        "PATCH", "/api/v1/datasets/files/items/a.jpg", {"metadata": {"site": "berlin"},
        "add_tags": ["review"]}, auth=False,
    )  # fmt: skip
    assert status == 401
    status, body = await http.call(
        "PATCH",
        "/api/v1/datasets/files/items/a.jpg",
        {"metadata": {"site": "berlin", "cam": {"id": 3}}, "add_tags": ["review", "b"]},
    )
    assert status == 200, body
    assert body["key"] == "a.jpg" and body["tags"] == ["b", "review"]
    assert body["metadata"]["user"] == {"site": "berlin", "cam": {"id": 3}}
    status, body = await http.call(
        "PATCH",
        "/api/v1/datasets/files/items/a.jpg",
        {"metadata": {"cam": None}, "remove_tags": ["b"]},
    )
    assert status == 200 and body["metadata"]["user"] == {"site": "berlin"}
    assert body["tags"] == ["review"]
    status, body = await http.call(
        "PATCH", "/api/v1/datasets/files/items/x/url", {"add_tags": ["u"]}
    )
    assert status == 200 and body["key"] == "x/url" and body["tags"] == ["u"]
    status, body = await http.call("GET", "/api/v1/datasets/files/items/a.jpg")
    assert body["metadata"]["user"] == {"site": "berlin"} and body["tags"] == ["review"]
    assert (await http.call("PATCH", "/api/v1/datasets/files/items/nope", {"add_tags": ["x"]}))[
        0
    ] == 404
    assert (await http.call("PATCH", "/api/v1/datasets/nope/items/a.jpg", {"add_tags": ["x"]}))[
        0
    ] == 404

    status, body = await http.call(
        "POST", "/api/v1/datasets/files/items:update", {"prefix": "dir/", "add_tags": ["d"]}
    )
    assert status == 200, body
    assert body == {
        "dataset": "files",
        "matched": 2,
        "changed": 2,
        "missing": 0,
        "missing_keys": [],
    }
    status, body = await http.call(
        "POST",
        "/api/v1/datasets/files/items:update",
        {"keys": ["a.jpg", "gone.jpg"], "metadata": {"n": 1}},
    )
    assert status == 200 and body["matched"] == 1 and body["missing_keys"] == ["gone.jpg"]
    status, body = await http.call("GET", "/api/v1/changes?limit=1000")
    edited = [c for c in body["changes"] if c["source"] == "edit"]
    assert [c["key"] for c in edited] == [
        "a.jpg",
        "a.jpg",
        "x/url",
        "dir/c.jpg",
        "dir/d.jpg",
        "a.jpg",
    ]
    assert edited[-1]["item"]["metadata"]["user"] == {"site": "berlin", "n": 1}
    assert edited[-1]["item"]["tags"] == ["review"]


HOSTILE_BODIES: list[tuple[bytes, str]] = [
    (b"[" * 100_000 + b"]" * 100_000, "nests too deep"),
    (json.dumps({"metadata": {"a": "x" * 40_000}}).encode(), "patch is"),
    (json.dumps({"metadata": {"a.b": 1}}).encode(), "'.'"),
    (json.dumps({"metadata": {'a"b': 1}}).encode(), "letters, digits"),
    (
        json.dumps(
            {"metadata": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}}}
        ).encode(),
        "deeper",
    ),
    (b"[]", "JSON object"),
    (b'"text"', "JSON object"),
    (b"42", "JSON object"),
    (b"null", "JSON object"),
    (b"", "not valid JSON"),
    (b"\xff\xfe{}", "not"),
    (b'{"metadata": {"a": NaN}}', "not JSON"),
    (b'{"metadata": {"a": 1e999}}', "finite"),
    (b'{"metadata": {"a": "\\ud800"}}', "surrogate"),
    (b'{"metadata": {"a": "\\u0000"}}', "U+0000"),
    (json.dumps({"metadata": {"a": 1}, "color": "red"}).encode(), "unknown member 'color'"),
    (json.dumps({"metadata": None}).encode(), "may not be null"),
    (json.dumps({"metadata": [1]}).encode(), "JSON object"),
    (json.dumps({"add_tags": "review"}).encode(), "list of tags"),
    (json.dumps({"add_tags": ["has space"]}).encode(), "characters other"),
    (json.dumps({"add_tags": ["x"], "remove_tags": ["x"]}).encode(), "both added and removed"),
    (b"{}", "nothing to change"),
]


@pytest.mark.parametrize(("raw", "says"), HOSTILE_BODIES, ids=range(len(HOSTILE_BODIES)))
async def test_hostile_bodies_are_a_400_and_write_nothing(
    served: tuple[Served, Http], raw: bytes, says: str
) -> None:
    world, http = served
    catalog = Catalog.open_reader(world.db)
    before = snapshot(catalog)
    status, body = await http.call("PATCH", "/api/v1/datasets/files/items/a.jpg", raw=raw)
    assert status == 400, body
    assert says in body["error"] and "\n" not in body["error"]
    bulk = raw
    if raw.startswith(b"{") and raw != b"{}" and b"NaN" not in raw:
        bulk = json.dumps({**json.loads(raw), "prefix": ""}).encode()
    status, body = await http.call("POST", "/api/v1/datasets/files/items:update", raw=bulk)
    assert status == 400, body
    assert "\n" not in body["error"]
    assert snapshot(catalog) == before
    catalog.close()


async def test_bulk_selections_that_are_wrong_are_a_400(served: tuple[Served, Http]) -> None:
    _, http = served
    for body, says in [
        ({"add_tags": ["x"]}, "name the items"),
        ({"add_tags": ["x"], "keys": "a.jpg"}, "list of item keys"),
        ({"add_tags": ["x"], "keys": [""]}, "non-empty"),
        ({"add_tags": ["x"], "keys": ["\ud800"]}, "valid Unicode"),
        ({"add_tags": ["x"], "prefix": 3}, "prefix must be"),
        ({"add_tags": ["x"], "keys": ["k"] * (edits.MAX_KEYS + 1)}, "at most 10,000"),
        ({"add_tags": ["x"], "where": "size>>1"}, "size"),
        ({"add_tags": ["x"], "where": ['metadata.user."a\\"b"=1']}, "metadata"),
        ({"add_tags": ["x"], "where": {"size": 1}}, "where must be"),
    ]:
        status, answer = await http.call("POST", "/api/v1/datasets/files/items:update", body)
        assert status == 400 and says in answer["error"], (body, answer)


async def test_the_user_part_survives_a_daemon_restart(tmp_path: Path) -> None:
    """Edited over HTTP; the file overwritten while the daemon is down: the restarted
    daemon's reconcile (its first, at start) updates the item and keeps its user part."""
    world = Served(tmp_path)
    world.src.mkdir()
    (world.src / "b.jpg").write_text("b")
    (world.src / "c.jpg").write_text("c")
    daemon, task = await world.start(1)
    async with ClientSession() as session:
        http = Http(session, f"http://127.0.0.1:{daemon.port}")
        status, _ = await http.call(
            "PATCH",
            "/api/v1/datasets/files/items/b.jpg",
            {"metadata": {"k": "v"}, "add_tags": ["t"]},
        )
        assert status == 200
        etag = (await http.call("GET", "/api/v1/datasets/files/items/b.jpg"))[1]["etag"]
    daemon.stop.set()
    await asyncio.wait_for(task, 60)

    (world.src / "b.jpg").write_text("b, changed while the daemon was down")
    daemon, task = await world.start(2)
    try:
        async with ClientSession() as session:
            http = Http(session, f"http://127.0.0.1:{daemon.port}")
            status, body = await http.call("GET", "/api/v1/datasets/files/items/b.jpg")
            assert status == 200 and body["etag"] != etag
            assert body["metadata"]["user"] == {"k": "v"} and body["tags"] == ["t"]
            status, body = await http.call("GET", "/api/v1/datasets/files/items/c.jpg")
            assert body["metadata"]["user"] == {} and body["tags"] == []
    finally:
        daemon.stop.set()
        await asyncio.wait_for(task, 60)


# -- the CLI ------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncd.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def folder_catalog(tmp_path: Path) -> str:
    src = tmp_path / "src"
    for key in ["raw/1.jpg", "raw/2.jpg", "raw/3.jpg", "top.txt"]:
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_text(key)
    db = str(tmp_path / "c.db")
    done = cli("sync", str(src), "--dataset", "ds", "--db", db)
    assert done.returncode == 0, done.stderr
    return db


def test_cli_tag_and_meta_say_what_they_changed(folder_catalog: str) -> None:
    db = folder_catalog
    out = cli(
        "items", "tag", "--dataset", "ds", "raw/1.jpg", "raw/2.jpg", "--add", "review,b", "--db", db
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "+review +b in dataset 'ds': 2 items changed\n"
    out = cli("items", "tag", "--dataset", "ds", "--prefix", "raw/", "--add", "review", "--remove", "b",
              "--db", db, "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "dataset": "ds", "matched": 3, "changed": 3, "missing": 0, "missing_keys": [],
        "added": ["review"], "removed": ["b"],
    }  # fmt: skip
    out = cli("items", "meta", "--dataset", "ds", "raw/1.jpg", "--set", "site=berlin", "--set", "cam.id=3",
              "--set", "zip=01234", "--json-merge", '{"box": [1, 2]}', "--db", db)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "raw/1.jpg: set box = [1, 2]",
        "raw/1.jpg: set cam.id = 3",
        'raw/1.jpg: set site = "berlin"',
        'raw/1.jpg: set zip = "01234"',
    ]
    out = cli("items", "meta", "--dataset", "ds", "raw/1.jpg", "--unset", "cam.id", "--set", "site=paris",
              "--db", db, "--json")  # fmt: skip
    shown = json.loads(out.stdout)
    assert shown["changed"] == ["removed cam.id (was 3)", 'set site = "paris" (was "berlin")']
    assert shown["item"]["metadata"]["user"] == {
        "box": [1, 2],
        "cam": {},
        "site": "paris",
        "zip": "01234",
    }
    assert shown["item"]["tags"] == ["review"]
    out = cli("items", "meta", "--dataset", "ds", "raw/1.jpg", "--set", "site=paris", "--db", db)
    assert out.stdout == "raw/1.jpg: unchanged (it already had these values)\n"
    out = cli("items", "meta", "--dataset", "ds", "raw/1.jpg", "--db", db)
    assert out.stdout.splitlines() == [
        "box = [1, 2]",
        "cam = {}",
        'site = "paris"',
        'zip = "01234"',
    ]
    listed = cli("items", "ls", "--dataset", "ds", "--db", db, "--json")
    rows = {r["key"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert rows["raw/3.jpg"]["tags"] == ["review"] and rows["top.txt"]["tags"] == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["tag", "--dataset", "ds", "raw/1.jpg", "--add", "a b"], "tag 'a b' holds characters"),
        (
            ["tag", "--dataset", "ds", "raw/1.jpg", "nope.jpg", "--add", "x"],
            "'nope.jpg'; nothing was changed",
        ),
        (["tag", "--dataset", "ds", "raw/1.jpg"], "nothing to change"),
        (["tag", "--dataset", "ds", "--add", "x"], "KEY arguments or as --prefix"),
        (
            ["tag", "--dataset", "ds", "raw/1.jpg", "--prefix", "raw/", "--add", "x"],
            "one of the two",
        ),
        (["tag", "--dataset", "nope", "raw/1.jpg", "--add", "x"], "unknown dataset 'nope'"),
        (["meta", "--dataset", "ds", "raw/1.jpg", "--set", "a.b.c.d.e.f.g.h.i=1"], "deeper than 8"),
        (["meta", "--dataset", "ds", "raw/1.jpg", "--set", 'q"uote=1'], "letters, digits"),
        (["meta", "--dataset", "ds", "raw/1.jpg", "--set", "a..b=1"], "is empty"),
        (["meta", "--dataset", "ds", "raw/1.jpg", "--set", "novalue"], "PATH=VALUE"),
        (["meta", "--dataset", "ds", "raw/1.jpg", "--json-merge", "[1]"], "JSON object"),
        (["meta", "--dataset", "ds", "raw/1.jpg", "--json-merge", "{nope"], "not valid JSON"),
        (
            [
                "meta",
                "--dataset",
                "ds",
                "raw/1.jpg",
                "--json-merge",
                '{"a": "' + "x" * 40_000 + '"}',
            ],
            "patch is",
        ),
        (["meta", "--dataset", "ds", "gone.jpg", "--set", "a=1"], "has no item 'gone.jpg'"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(
    folder_catalog: str, args: list[str], says: str
) -> None:
    db = folder_catalog
    catalog = Catalog.open_reader(db)
    before = snapshot(catalog)
    out = cli("items", *args, "--db", db)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.count("\n") == 1 and says in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    as_json = cli("items", *args, "--db", db, "--json")
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["exit_code"] == 2
    assert snapshot(catalog) == before
    catalog.close()


# -- the Python API ---------------------------------------------------------------------


def test_python_items_still_iterates_and_update_edits(folder_catalog: str) -> None:
    db = folder_catalog
    assert [i.key for i in syncd.items("ds", db=db)] == [
        "raw/1.jpg",
        "raw/2.jpg",
        "raw/3.jpg",
        "top.txt",
    ]
    assert [i.key for i in syncd.items("ds", db=db, prefix="raw/", limit=1)] == ["raw/1.jpg"]
    got = syncd.items.update("ds", "top.txt", metadata={"a": {"b": 1}}, add_tags=["t"], db=db)
    assert isinstance(got, model.Item)
    assert got.metadata["user"] == {"a": {"b": 1}} and got.tags == ("t",)
    result = syncd.items.update(
        "ds", ["raw/1.jpg", "nope"], remove_tags=["t"], add_tags=["u"], db=db
    )
    assert (result.matched, result.changed, result.missing) == (1, 1, 1)
    result = syncd.items.update("ds", prefix="raw/", metadata={"s": None}, db=db)
    assert result.matched == 3
    with pytest.raises(UsageError, match=r"'\.'"):
        syncd.items.update("ds", "top.txt", metadata={"a.b": 1}, db=db)
    with pytest.raises(UsageError, match="list of tags"):
        syncd.items.update("ds", "top.txt", add_tags="review", db=db)
    with pytest.raises(UsageError, match="has no item"):
        syncd.items.update("ds", "nope", add_tags=["x"], db=db)
    assert "update" in (syncd.items.__doc__ or "") and "RFC 7386" in (
        syncd.items.update.__doc__ or ""
    )
