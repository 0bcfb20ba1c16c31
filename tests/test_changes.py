"""The change log (issue 22): every change that reaches the catalog is in the log once, in
cursor order, in the same transaction; a follower that replays it from cursor 0 ends equal to
the dataset; cursors become visible in order on PostgreSQL with concurrent writers; a cursor
older than the log holds is refused (CLI one line + exit 1, HTTP 410)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from hypothesis import example, given, settings
from hypothesis import strategies as st

import syncd
from providers.local import stat_object
from syncd import api
from syncd.config import load_daemon_config
from syncd.daemon.service import Daemon
from syncd.events.apply import apply_events
from syncd.events.parse import EventKind, ObjectEvent, parse_text
from syncd.store import changes
from syncd.store.catalog import Catalog
from syncd.store.db import transaction
from tests.conftest import CatalogMaker
from tests.emulators import free_port
from tests.test_cli_errors import one_line_error

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["a.txt", "b.txt", "d/c.txt", "d/e.txt", "z.bin"]


def replay(catalog: Catalog, after: int = 0) -> tuple[dict[str, dict[str, tuple]], list[int]]:
    """Apply every change record after ``after`` to an empty map, as a follower would:
    ``{dataset: {key: (size, etag)}}``, and the cursors read."""
    state: dict[str, dict[str, tuple]] = {}
    cursors = []
    for change in changes.follow(catalog.db, after=after, page=7):
        cursors.append(change.cursor)
        keys = state.setdefault(change.dataset, {})
        if change.kind == "dataset_removed":
            state.pop(change.dataset)
        elif change.kind == "deleted":
            assert change.key in keys, f"deleted {change.key!r} the follower never saw"
            del keys[change.key]
        else:
            assert change.item is not None
            assert (change.kind == "updated") == (change.key in keys), change
            keys[change.key] = (change.item["size"], change.item["etag"])
    return state, cursors


def items_of(catalog: Catalog, name: str) -> dict[str, tuple]:
    ds = catalog.get_dataset(name)
    return {i.key: (i.size, i.etag) for i in catalog.iter_items(ds.id)}


def sync(catalog: Catalog, name: str, source: str | None = None) -> None:
    asyncio.run(api.sync(catalog, name, source=source))


def watch_event(root: Path, key: str) -> ObjectEvent:
    """What the daemon's folder watch hands the intake for ``key`` now."""
    found = stat_object(str(root), key)
    if found is None:
        return ObjectEvent(EventKind.DELETED, "local", str(root), key,
                           event_time=datetime.now(UTC))  # fmt: skip
    return ObjectEvent(
        EventKind.CREATED, "local", str(root), key, size=found.size, etag=found.etag,
        event_time=found.last_modified,
    )  # fmt: skip


class Bucket:
    """The bucket of the s3 variant below, on moto, with the S3 notifications of every write
    to it (a push's uploads included, as S3 sends them) that have not been delivered yet."""

    def __init__(self, s3: Any, name: str) -> None:
        self.s3, self.name = s3, name
        self.pending: dict[str, list[dict[str, Any]]] = {}
        self._sequencer = itertools.count(0x1000)  # S3's per-key order of writes

    def written(self, key: str) -> None:
        """Note the notification for ``key`` as it is now (created, or removed)."""
        try:
            head = self.s3.head_object(Bucket=self.name, Key=key)
        except self.s3.exceptions.ClientError:
            head = None
        obj: dict[str, Any] = {"key": key, "sequencer": f"{next(self._sequencer):016X}"}
        if head is not None:
            obj.update(size=head["ContentLength"], eTag=head["ETag"].strip('"'))
        self.pending.setdefault(key, []).append(
            {
                "eventSource": "aws:s3",
                "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                "eventName": "ObjectCreated:Put" if head else "ObjectRemoved:Delete",
                "s3": {"bucket": {"name": self.name}, "object": obj},
            }
        )

    def etags(self, keys: list[str]) -> dict[str, Any]:
        """``{key: (ETag, LastModified)}`` of those of ``keys`` the bucket holds now."""
        out = {}
        for key in keys:
            with contextlib.suppress(self.s3.exceptions.ClientError):
                head = self.s3.head_object(Bucket=self.name, Key=key)
                out[key] = (head["ETag"], head["LastModified"])
        return out

    def deliver(self, catalog: Catalog, key: str, backwards: bool) -> None:
        """Apply the pending notifications of ``key`` as the events intake does: parsed from
        the JSON S3 sends, routed to the datasets on the bucket; in the order they were
        written, or ``backwards`` (a queue gives no order: the sequencers decide)."""
        records = self.pending.pop(key, [])
        if records:
            parsed = parse_text(json.dumps({"Records": records[::-1] if backwards else records}))
            assert not parsed.skipped and len(parsed.events) == len(records), parsed
            apply_events(catalog, parsed.events)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "delete", "sync", "notify", "push"]),
        st.sampled_from(NAMES),
        st.binary(max_size=3),
    ),
    min_size=1,
    max_size=14,
)


#: an interleaving in which each path surely writes: a notification that creates and one that
#: deletes, a push, a listing that creates
EVERY_PATH = [("put", "a.txt", b"x"), ("notify", "a.txt", b""), ("push", "b.txt", b""),
              ("delete", "a.txt", b""), ("notify", "a.txt", b"\x01"), ("put", "z.bin", b""),
              ("sync", "z.bin", b"")]  # fmt: skip


@pytest.mark.parametrize("where", ["folder", "bucket"])
@settings(max_examples=12)
@given(ops=OPS)
@example(ops=EVERY_PATH)
def test_a_follower_replaying_the_log_ends_equal_to_the_dataset(
    catalogs: CatalogMaker,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    where: str,
    ops: list,
) -> None:
    """A reconcile, change notifications and pushes change one dataset in random order; the
    log, replayed from cursor 0, gives the dataset's items, with no cursor skipped or
    repeated. The notifications are, for a ``folder`` dataset, its folder watch's events,
    and for a ``bucket`` one (an s3 dataset on moto), the S3 notifications of the bucket's
    writes (the push's uploads too), delivered late, some backwards, through the bucket
    events path. Both kinds cannot reach one dataset: bucket events route by provider and
    bucket, and no bucket's notification names a local folder, whose only events are its
    watch's."""
    catalog = catalogs()
    staging = tmp_path_factory.mktemp("push")
    if where == "folder":
        root = tmp_path_factory.mktemp("src")
        (root / "seed.txt").write_text("seed")
        sync(catalog, "ds", str(root))
    else:
        moto = request.getfixturevalue("moto")
        request.getfixturevalue("monkeypatch").setenv("AWS_ENDPOINT_URL", moto.url)
        import boto3

        from tests.conftest import unique_bucket

        bucket = Bucket(boto3.client("s3", endpoint_url=moto.url), unique_bucket())
        bucket.s3.create_bucket(Bucket=bucket.name)
        bucket.s3.put_object(Bucket=bucket.name, Key="seed.txt", Body=b"seed")
        sync(catalog, "ds", f"s3://{bucket.name}")
    for op, name, data in ops:
        if op == "sync":
            sync(catalog, "ds")
        elif op == "push":  # a file from another folder, uploaded into the dataset's source
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"pushed" + data)
            if where == "folder":
                asyncio.run(api.push(catalog, "ds", str(staging)))
                continue
            staged = [str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()]
            before = bucket.etags(staged)
            asyncio.run(api.push(catalog, "ds", str(staging)))
            for key, now in bucket.etags(staged).items():
                if before.get(key) != now:  # uploaded: S3 notifies it
                    bucket.written(key)
        elif where == "folder":
            path = root / name
            if op == "put":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data + name.encode())
            elif op == "delete":
                path.unlink(missing_ok=True)
            else:
                apply_events(catalog, [watch_event(root, name)], dataset="ds")
        elif op == "put":
            bucket.s3.put_object(Bucket=bucket.name, Key=name, Body=data + name.encode())
            bucket.written(name)
        elif op == "delete":
            bucket.s3.delete_object(Bucket=bucket.name, Key=name)
            bucket.written(name)  # S3 notifies a delete of a missing key too
        else:
            bucket.deliver(catalog, name, backwards=bool(data) and data[0] % 2 == 1)
    state, cursors = replay(catalog)
    assert state["ds"] == items_of(catalog, "ds")
    assert cursors == list(range(1, changes.head(catalog.db) + 1))  # none skipped or repeated
    sources = {c.source for c in changes.read(catalog.db)}
    notified = "watch" if where == "folder" else "event"
    assert sources <= {"listing", notified, "push"}, sources
    if ops == EVERY_PATH:
        seen = {(c.kind, c.source) for c in changes.read(catalog.db)}
        assert {("created", notified), ("deleted", notified), ("created", "push"),
                ("created", "listing")} <= seen, seen  # fmt: skip


def test_what_changes_nothing_records_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    catalog = Catalog.open(str(tmp_path / "c.db"))
    try:
        sync(catalog, "ds", str(src))
        assert changes.head(catalog.db) == 1
        sync(catalog, "ds")  # nothing changed
        apply_events(catalog, [watch_event(src, "a.txt")], dataset="ds")  # a confirming event
        assert changes.head(catalog.db) == 1
    finally:
        catalog.close()


def test_a_listing_that_fails_part_way_records_no_delete(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}.txt").write_text(str(i))
    db = str(tmp_path / "c.db")
    catalog = Catalog.open(db)
    try:
        sync(catalog, "ds", str(src))
        (src / "f4.txt").unlink()
        (src / "f0.txt").write_text("changed")
        head = changes.head(catalog.db)
        proc = subprocess.run(
            [sys.executable, "-m", "syncd.cli", "sync", "--dataset", "ds", "--db", db],
            env={**os.environ, "SYNCD_FAULT_LIST_FAIL_AFTER": "2", "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 1, proc.stderr
        assert all(c.kind != "deleted" for c in changes.read(catalog.db, after=head))
        sync(catalog, "ds")
        state, _ = replay(catalog)
        assert state["ds"] == items_of(catalog, "ds")
    finally:
        catalog.close()


def test_a_removed_dataset_is_one_record(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"f{i}.txt").write_text(str(i))
    catalog = Catalog.open(str(tmp_path / "c.db"))
    try:
        sync(catalog, "ds", str(src))
        head = changes.head(catalog.db)
        catalog.drop_dataset(catalog.get_dataset("ds"))
        (gone,) = changes.read(catalog.db, after=head)
        assert (gone.kind, gone.dataset, gone.key, gone.item) == (
            "dataset_removed",
            "ds",
            None,
            None,
        )
        state, _ = replay(catalog)
        assert state == {}
    finally:
        catalog.close()


def test_bucket_events_are_recorded_as_events(moto: Any, tmp_path: Path) -> None:
    """An applied S3 event is in the log with source ``event``, a delete with the item as
    it was."""
    import boto3

    from tests.conftest import unique_bucket

    bucket = unique_bucket()
    s3 = boto3.client("s3", endpoint_url=moto.url)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k1", Body=b"one")
    os.environ["AWS_ENDPOINT_URL"] = moto.url
    catalog = Catalog.open(str(tmp_path / "c.db"))
    try:
        sync(catalog, "ds", f"s3://{bucket}")
        head = changes.head(catalog.db)
        when = datetime.now(UTC)
        apply_events(
            catalog,
            [
                ObjectEvent(EventKind.CREATED, "s3", bucket, "k2", size=5, etag="e2",
                            event_time=when),
                ObjectEvent(EventKind.DELETED, "s3", bucket, "k1", event_time=when),
            ],
        )  # fmt: skip
        found = changes.read(catalog.db, after=head)
        assert [(c.kind, c.source, c.key) for c in found] == [
            ("deleted", "event", "k1"),
            ("created", "event", "k2"),
        ]
        assert found[0].item is not None and found[0].item["size"] == 3
        state, _ = replay(catalog)
        assert state["ds"] == items_of(catalog, "ds")
    finally:
        catalog.close()
        os.environ.pop("AWS_ENDPOINT_URL", None)


# -- order on PostgreSQL -----------------------------------------------------------------


def test_cursors_become_visible_in_order_with_concurrent_writers(postgres_url: str) -> None:
    """Writer A takes its cursors and holds its transaction open; writer B's transaction,
    which would take the next cursors, waits at that statement until A has committed, so a
    reader can never see B's cursor while A's is missing (it would skip A's change)."""
    from syncd.store import pg as pg_store

    setup = Catalog.open(postgres_url)
    ds = setup.create_dataset("ds", "file:///x/", _local_driver(), _no_filters())
    a, b, reader = (
        Catalog.open(postgres_url),
        Catalog.open(postgres_url),
        Catalog.open(postgres_url),
    )
    a_took = threading.Event()
    a_may_commit = threading.Event()
    b_done = threading.Event()

    def writer_a() -> None:
        with transaction(a.db):
            a.write_rows(ds.id, [_row(ds.id, "from-a")], source="event")
            a.db.flush_changes()  # takes cursor 1 now; the commit waits
            a_took.set()
            assert a_may_commit.wait(60)

    def writer_b() -> None:
        with transaction(b.db):
            b.write_rows(ds.id, [_row(ds.id, "from-b")], source="event")
        b_done.set()

    ta = threading.Thread(target=writer_a)
    ta.start()
    assert a_took.wait(60)
    tb = threading.Thread(target=writer_b)
    tb.start()
    try:
        waiting = _wait_for(lambda: _lock_waiters(setup) >= 1, "B to wait for the cursor row")
        assert waiting and not b_done.is_set()
        assert changes.read(reader.db) == []  # neither is visible: no gap to skip past
        a_may_commit.set()
        ta.join(60)
        tb.join(60)
        assert b_done.is_set()
        seen = changes.read(reader.db)
        assert [(c.cursor, c.key) for c in seen] == [(1, "from-a"), (2, "from-b")]
    finally:
        a_may_commit.set()
        ta.join(60)
        tb.join(60)
        for c in (setup, a, b, reader):
            c.close()
        pg_store.close_pools()


def _lock_waiters(catalog: Catalog) -> int:
    row = catalog.db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND datname = current_database()"
    ).fetchone()
    return int(row[0])


def _wait_for(condition: Any, what: str, timeout: float = 60) -> bool:
    done = threading.Event()
    deadline = 0.0
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        done.wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _local_driver() -> Any:
    from providers.config import DriverConfig

    return DriverConfig(type="local", bucket="/x")


def _no_filters() -> Any:
    from syncd.reconcile.filters import Filters

    return Filters()


def _row(dataset_id: int, key: str) -> tuple:
    stamp = "2026-12-07T00:00:00.000000Z"
    return (dataset_id, key, "/" + key, f"file:///x/{key}", 1, "e", None, stamp, None, stamp,
            stamp, "{}", None)  # fmt: skip


# -- the feed's JSON text ------------------------------------------------------------------

#: text a key, a tag or metadata may hold: quotes, backslashes, control characters, U+2028,
#: astral characters (no NUL: PostgreSQL text cannot hold it)
TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"))
ENTRY = st.tuples(
    TEXT,  # key, after the dataset's path
    st.one_of(st.none(), st.integers(0, 2**63 - 1)),  # size
    st.one_of(st.none(), TEXT),  # etag; content_type, version, md5 below
    st.one_of(st.none(), TEXT),
    st.one_of(st.none(), TEXT),
    st.one_of(st.none(), st.just("{}"), st.dictionaries(TEXT, st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT
    ), max_size=3).map(lambda m: json.dumps(m, ensure_ascii=False))),  # metadata as stored
)  # fmt: skip
GROUPS = st.lists(
    st.tuples(
        st.sampled_from(["local", "s3", "azure", "gone"]),
        st.one_of(
            st.sampled_from(["created", "updated", "deleted"]),
            st.lists(st.sampled_from(["created", "updated", "deleted"]), min_size=3, max_size=3),
        ),
        st.sampled_from(["listing", "event", "watch", "push"]),
        st.lists(ENTRY, min_size=3, max_size=3),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=25)
@given(groups=GROUPS, picks=st.lists(st.tuples(st.integers(0, 16), st.integers(1, 17)), max_size=4))
def test_the_feeds_json_text_is_the_records_encoded(
    catalogs: CatalogMaker, groups: list, picks: list
) -> None:
    """``read_json`` (``syncd changes --json``, the HTTP feed) builds each line from the log's
    rows without making the records: it gives exactly what encoding :func:`changes.read`'s
    records gives, with non-ASCII as it is and escaped, for any key, tag and metadata, keys
    that need quoting in a folder's URI, a path prefix, mixed kinds in a group, a removed
    dataset, and any cursor, limit, kind and dataset filter."""
    from providers.config import DriverConfig

    catalog = catalogs()
    drivers = {
        "local": DriverConfig(type="local", bucket="/x y/ü"),
        "s3": DriverConfig(type="s3", bucket="bkt", path="pre/"),
        "azure": DriverConfig(type="azure", bucket="cont", account="acct"),
        "gone": DriverConfig(type="gcs", bucket="g"),
    }
    ids = {
        name: catalog.create_dataset(name, f"{name}://", driver, _no_filters()).id
        for name, driver in drivers.items()
    }
    stamp = "2026-12-07T00:00:00.000000Z"
    for name, kinds, source, entries in groups:
        path = drivers[name].path
        rows = [
            (ids[name], path + key, None, None, size, etag, ctype, "2026-01-01T00:00:00Z",
             version, stamp, stamp, metadata, None)
            for key, size, etag, ctype, version, metadata in entries
        ]  # fmt: skip
        with transaction(catalog.db):
            catalog.db.record_changes(kinds, source, stamp, rows)
    # an item edit's rows carry the user's part (metadata.user, tags) after the item's columns
    edited = [
        (ids["s3"], "pre/é d", None, None, 1, "e", None, "2026-01-01T00:00:00Z", None, stamp,
         stamp, '{"provider": {"k": "v"}}', None, '{"site": "Zürich"}', '["a", "ß"]'),
    ]  # fmt: skip
    with transaction(catalog.db):
        catalog.db.record_changes("updated", "edit", stamp, edited)
    catalog.drop_dataset(catalog.get_dataset("gone"))
    head = changes.head(catalog.db)
    last_edit = changes.read(catalog.db, after=head - 2, limit=2)
    assert [c.item["tags"] for c in last_edit if c.source == "edit"] == [["a", "ß"]]
    for ascii in (False, True):
        dumps = json.JSONEncoder(ensure_ascii=ascii).encode
        for after, limit in [(0, head + 1), *picks]:
            for filters in [{}, {"kinds": ("updated", "dataset_removed")},
                            {"dataset_id": ids["s3"]}, {"dataset_id": ids["gone"]}]:  # fmt: skip
                records = changes.read(catalog.db, after=after, limit=limit, **filters)
                lines, last = changes.read_json(
                    catalog.db, after=after, limit=limit, ascii=ascii, **filters
                )
                assert lines == [dumps(c.public()) for c in records]
                assert last == (records[-1].cursor if records else after)


# -- retention: a cursor too old ---------------------------------------------------------


def _pruned_catalog(tmp_path: Path) -> str:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}.txt").write_text(str(i))
    db = str(tmp_path / "c.db")
    catalog = Catalog.open(db)
    try:
        sync(catalog, "ds", str(src))
        (src / "f9.txt").write_text("new")
        api.prune_changes(catalog, older_than=0)  # the first 4 records go
        sync(catalog, "ds")
        assert changes.pruned(catalog.db) == 4 and changes.head(catalog.db) == 5
    finally:
        catalog.close()
    return db


def test_the_cli_refuses_a_cursor_older_than_the_log_in_one_line(tmp_path: Path) -> None:
    db = _pruned_catalog(tmp_path)
    run = [sys.executable, "-m", "syncd.cli", "changes", "--db", db, "--json"]
    proc = subprocess.run([*run, "--after", "2"], capture_output=True, text=True, timeout=60)
    err = one_line_error(proc, 1, "older than the change log holds", "follow from cursor 5")
    assert "Traceback" not in err
    proc = subprocess.run([*run, "--after", "4"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["key"] for line in proc.stdout.splitlines()] == ["f9.txt"]


def test_the_python_api_follows_the_log(tmp_path: Path) -> None:
    db = _pruned_catalog(tmp_path)
    assert [c.key for c in syncd.changes(db=db, after=4)] == ["f9.txt"]
    assert [c.cursor for c in syncd.changes("ds", db=db, after=4)] == [5]
    with pytest.raises(changes.CursorGone):
        list(syncd.changes(db=db))


def test_cli_follow_prints_new_changes_as_they_come(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    db = str(tmp_path / "c.db")
    catalog = Catalog.open(db)
    sync(catalog, "ds", str(src))
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd.cli", "changes", "--db", db, "--follow", "--json"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["key"] == "a.txt"
        (src / "b.txt").write_text("b")
        sync(catalog, "ds")
        line = json.loads(proc.stdout.readline())  # blocks until --follow prints it
        assert (line["cursor"], line["key"], line["kind"]) == (2, "b.txt", "created")
    finally:
        proc.terminate()
        proc.wait(30)
        catalog.close()


# -- HTTP ----------------------------------------------------------------------------------

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_the_http_feed_long_polls_and_answers_410(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    port = free_port()
    (tmp_path / "syncd.toml").write_text(
        f'[drivers.disk]\ntype = "local"\nbucket = "{src}"\n'
        '[datasets.files]\ndriver = "disk"\nwatch = false\n'
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    config = load_daemon_config(str(tmp_path / "syncd.toml"))
    db = str(tmp_path / "c.db")
    daemon = Daemon(config, db, api_token=TOKEN, poll_seconds=1)
    task = asyncio.create_task(daemon.run())
    base = f"http://127.0.0.1:{port}/api/v1"

    async def ready() -> bool:
        if task.done():
            task.result()  # raise what stopped it
        return daemon.ready.is_set()

    try:
        await _until(ready, "the daemon to start")
        async with ClientSession(headers=AUTH) as http:

            async def get(path: str) -> tuple[int, Any]:
                async with http.get(base + path) as resp:
                    return resp.status, await resp.json()

            async def first() -> Any:
                status, body = await get("/changes?after=0")
                return body["changes"] if status == 200 and body["changes"] else None

            (created,) = await _until(first, "the first reconcile's change")
            assert created["key"] == "a.txt" and created["source"] == "listing"
            # an empty answer waits (wait=30) until an event's change arrives
            waiting = asyncio.create_task(get("/datasets/files/changes?after=1&wait=30"))

            async def held() -> bool:
                return daemon.changed.waiters > 0

            await _until(held, "the request to wait on the server")
            assert not waiting.done()
            (src / "b.txt").write_text("b")
            daemon.scheduler.trigger("files")
            status, body = await asyncio.wait_for(waiting, 60)
            assert status == 200
            assert [(c["cursor"], c["key"]) for c in body["changes"]] == [(2, "b.txt")]
            assert body["next"] == 2
            # the answer's text is what json.dumps gives for the records (built from the log's
            # rows without them: read_json's text, checked against the records above)
            async with http.get(base + "/changes?after=0") as resp:
                text = await resp.text()
            reader = Catalog.open_reader(db)
            try:
                records = [c.public() for c in changes.read(reader.db)]
            finally:
                reader.close()
            assert text == json.dumps({"changes": records, "next": 2})
            status, body = await get("/changes?after=2&wait=0")
            assert (status, body) == (200, {"changes": [], "next": 2})
            # prune everything, then an old cursor is 410 with the oldest and newest cursor
            catalog = Catalog.open(db)
            try:
                api.prune_changes(catalog, older_than=0)
            finally:
                catalog.close()
            status, body = await get("/changes?after=1")
            assert status == 410 and body["oldest"] == 2 and body["head"] == 2
            for bad in ("after=-1", "after=１", "kind=nope", "wait=61", "dataset=none"):
                status, body = await get(f"/changes?{bad}")
                assert status in (400, 404) and "error" in body, bad
    finally:
        daemon.stop.set()
        await asyncio.wait_for(task, 60)


async def _until(condition: Any, what: str, timeout: float = 60) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_new_dataset_never_takes_the_id_of_a_removed_one(tmp_path: Path) -> None:
    """sqlite gives the largest rowid again once it is deleted; the log names datasets by id,
    so a new dataset with a removed one's id would inherit its history."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "old.txt").write_text("old")
    (b / "new.txt").write_text("new")
    catalog = Catalog.open(str(tmp_path / "c.db"))
    try:
        sync(catalog, "a", str(a))
        gone = catalog.get_dataset("a")
        catalog.drop_dataset(gone)
        sync(catalog, "b", str(b))
        assert catalog.get_dataset("b").id != gone.id
        found = changes.read(catalog.db, dataset_id=catalog.get_dataset("b").id)
        assert [(c.dataset, c.key) for c in found] == [("b", "new.txt")]
        state, _ = replay(catalog)
        assert state == {"b": {"new.txt": items_of(catalog, "b")["new.txt"]}}
    finally:
        catalog.close()


def test_a_prune_during_a_read_is_a_cursor_gone_not_a_skip(tmp_path: Path) -> None:
    """The read takes several queries (several snapshots): a prune that commits between them
    must not let it return what follows the pruned changes as if nothing were missing."""
    src = tmp_path / "src"
    src.mkdir()
    db = str(tmp_path / "c.db")
    catalog = Catalog.open(db)
    try:
        for i in range(3):  # three groups: cursors 1, 2, 3
            (src / f"f{i}.txt").write_text(str(i))
            sync(catalog, "ds", str(src) if i == 0 else None)
        pruner = Catalog.open(db)
        real = catalog.db.execute

        def execute(sql: str, params: Any = ()) -> Any:
            if "LIMIT 16" in sql:  # between the cursor check and the page: prune 2 groups
                changes.prune(pruner.db, before="9999", keep_after=2)
            return real(sql, params)

        catalog.db.execute = execute  # type: ignore[method-assign]
        with pytest.raises(changes.CursorGone):
            changes.read(catalog.db, after=1)
        pruner.close()
    finally:
        catalog.close()


def test_a_large_sync_batch_is_logged_in_rows_of_bounded_size(
    catalogs: CatalogMaker, tmp_path: Path
) -> None:
    # a sync commits up to 5,000 writes at once (Database.sync_batch: sqlite 5,000, PostgreSQL
    # 2,000); a reader
    # decodes a whole changes row to take a few of its entries, so each row holds at most
    # ROW_ENTRIES, and the log still has every change once, in cursor order
    src = tmp_path / "src"
    src.mkdir()
    n = 2 * changes.ROW_ENTRIES + 500
    for i in range(n):
        (src / f"f{i:05d}").write_bytes(b"x" * (i % 5))
    catalog = catalogs()
    try:
        sync(catalog, "ds", str(src))
        sizes = [
            r[0] for r in catalog.db.execute("SELECT last - cursor + 1 FROM changes").fetchall()
        ]
        assert sum(sizes) == n and max(sizes) <= changes.ROW_ENTRIES
        state, cursors = replay(catalog)
        assert cursors == list(range(1, n + 1))
        assert state["ds"] == items_of(catalog, "ds")
        first = changes.read(catalog.db, after=changes.ROW_ENTRIES - 2, limit=3)
        assert [c.key for c in first] == [f"f{i:05d}" for i in range(998, 1001)]
    finally:
        catalog.close()
