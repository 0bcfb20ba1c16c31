"""Snapshots (issue 25): a snapshot's items are the dataset as it was at its cursor, whatever
was created, overwritten, deleted or edited since; a diff equals a brute-force diff of two
item sets; removing snapshots frees what only they needed; on both stores."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers.config import DriverConfig
from syncd.errors import NotFound, UsageError
from syncd.reconcile.filters import Filters
from syncd.store import edits, snapshots
from syncd.store.catalog import Catalog, Dataset
from syncd.store.db import transaction
from tests.conftest import CatalogMaker
from tests.test_cli_errors import one_line_error

STAMP = "2026-12-07T00:00:00.000000Z"


def new_dataset(catalog: Catalog, name: str = "ds") -> Dataset:
    return catalog.create_dataset(
        name, "file:///x/", DriverConfig(type="local", bucket="/x"), Filters()
    )


def put(catalog: Catalog, ds: Dataset, key: str, size: int, etag: str) -> None:
    """Create or overwrite ``key`` as a push would."""
    row = (ds.id, key, "/" + key, f"file:///x/{key}", size, etag, None, STAMP, None, STAMP,
           STAMP, "{}", None)  # fmt: skip
    with transaction(catalog.db):
        catalog.write_rows(ds.id, [row], source="push")


def delete(catalog: Catalog, ds: Dataset, key: str) -> None:
    with transaction(catalog.db):
        catalog.delete_items(ds.id, [key], source="push")


def tag(catalog: Catalog, key: str, value: str) -> None:
    edits.update_item(catalog, "ds", key, edits.Edit.of(metadata={"label": value}))


def state(item: Any) -> tuple:
    """What a snapshot must keep of an item: its object and the user's part."""
    return (item.size, item.etag, item.user_metadata.replace(" ", ""), item.tags)


def live(catalog: Catalog, ds: Dataset) -> dict[str, tuple]:
    return {i.key: state(i) for i in catalog.iter_items(ds.id)}


def frozen(catalog: Catalog, name: str, t: str, **kw: Any) -> dict[str, tuple]:
    found = list(catalog.snapshot_items(name, t, **kw))
    assert [i.key for i in found] == sorted(i.key for i in found)  # key order
    return {i.key: state(i) for i in found}


def test_a_snapshot_keeps_its_items_through_every_kind_of_write(catalogs: CatalogMaker) -> None:
    catalog = catalogs()
    ds = new_dataset(catalog)
    for k in "abcd":
        put(catalog, ds, k, 1, "e1")
    tag(catalog, "d", "cat")
    before = live(catalog, ds)
    snap = snapshots.create(catalog, ds, "v1", "first")
    assert (snap.items, snap.bytes) == (4, 4)
    put(catalog, ds, "a", 2, "e2")  # overwritten
    delete(catalog, ds, "b")  # deleted
    put(catalog, ds, "e", 5, "e5")  # created
    tag(catalog, "c", "dog")  # edited
    tag(catalog, "d", "cow")  # edited again
    put(catalog, ds, "a", 3, "e3")  # overwritten again: the first state is kept
    assert frozen(catalog, "ds", "v1") == before
    assert frozen(catalog, "ds", "v1", after_key="b", limit=1) == {"c": before["c"]}
    assert frozen(catalog, "ds", "v1", prefix="d") == {"d": before["d"]}
    found = {d.key: d.kind for d in snapshots.differences(catalog, ds, "v1")}
    assert found == {"a": "changed", "b": "removed", "e": "added", "c": "changed", "d": "changed"}
    # one entry per changed key, however often it changed
    assert catalog.db.execute("SELECT count(*) FROM item_undo").fetchone()[0] == 5


def test_each_snapshot_reads_the_state_it_froze(catalogs: CatalogMaker) -> None:
    """A key changed after each of several snapshots: each reads its own state (the
    earliest entry after its cursor), and removing the middle one keeps the others whole."""
    catalog = catalogs()
    ds = new_dataset(catalog)
    seen = {}
    for n in range(4):
        put(catalog, ds, "a", n, f"e{n}")
        put(catalog, ds, "b", n, f"e{n}")
        snapshots.create(catalog, ds, f"v{n}")
        seen[f"v{n}"] = live(catalog, ds)
    delete(catalog, ds, "a")
    for t, want in seen.items():
        assert frozen(catalog, "ds", t) == want, t
    snapshots.remove(catalog, ds, "v1")
    del seen["v1"]
    for t, want in seen.items():
        assert frozen(catalog, "ds", t) == want, t
    assert {d.key: d.kind for d in snapshots.differences(catalog, ds, "v0", "v3")} == {
        "a": "changed", "b": "changed"
    }  # fmt: skip
    for t in list(seen):
        snapshots.remove(catalog, ds, t)
    assert catalog.db.execute("SELECT count(*) FROM item_undo").fetchone()[0] == 0


@pytest.mark.parametrize("page", [1, 2, 3, 5])
def test_pages_merge_live_rows_and_entries_whatever_their_size(
    catalogs: CatalogMaker, monkeypatch: pytest.MonkeyPatch, page: int
) -> None:
    """A snapshot read in pages of a few rows, where live rows and undo entries of other keys
    fill pages unevenly: every key once, in order, in its frozen state."""
    monkeypatch.setattr(snapshots, "PAGE", page)
    catalog = catalogs()
    ds = new_dataset(catalog)
    for n in range(10):
        put(catalog, ds, f"k{n}", n, "e")
    snapshots.create(catalog, ds, "v1")
    want = live(catalog, ds)
    for n in (7, 9):
        put(catalog, ds, f"k{n}", 99, "x")
    delete(catalog, ds, "k8")
    put(catalog, ds, "k10", 1, "new")
    snapshots.create(catalog, ds, "v2")
    put(catalog, ds, "k7", 100, "y")
    assert frozen(catalog, "ds", "v1") == want
    assert frozen(catalog, "ds", "v1", after_key="k3", limit=4) == {
        k: want[k] for k in ("k4", "k5", "k6", "k7")
    }


def test_clear_errors_for_tags(catalogs: CatalogMaker) -> None:
    catalog = catalogs()
    ds = new_dataset(catalog)
    snapshots.create(catalog, ds, "v1")
    with pytest.raises(UsageError, match="exists already"):
        snapshots.create(catalog, ds, "v1")
    for bad in ["", "-x", "a b", "x" * 101, "a/b", "é"]:
        with pytest.raises(UsageError, match="not valid"):
            snapshots.create(catalog, ds, bad)
    with pytest.raises(NotFound, match=r"unknown snapshot 'v2'.*v1"):
        catalog.snapshot_items("ds", "v2")
    with pytest.raises(UsageError, match="has 1 snapshot"):
        catalog.drop_dataset(ds)
    assert catalog.find_dataset("ds") is not None
    catalog.drop_dataset(ds, with_snapshots=True)
    assert catalog.db.execute("SELECT count(*) FROM snapshots").fetchone()[0] == 0


def test_without_snapshots_writes_keep_nothing(catalogs: CatalogMaker) -> None:
    catalog = catalogs()
    ds = new_dataset(catalog)
    other = new_dataset(catalog, "other")
    snapshots.create(catalog, other, "v1")
    for k in "abc":
        put(catalog, ds, k, 1, "e")
    delete(catalog, ds, "a")
    assert catalog.db.execute("SELECT count(*) FROM item_undo").fetchone()[0] == 0


# -- random histories against a model ---------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c/d", "é"])
OP = st.one_of(
    st.tuples(st.just("put"), KEYS, st.integers(0, 3)),
    st.tuples(st.just("delete"), KEYS, st.just(0)),
    st.tuples(st.just("edit"), KEYS, st.integers(0, 3)),
    st.tuples(st.just("snap"), st.just(""), st.just(0)),
    st.tuples(st.just("rm"), st.just(""), st.integers(0, 5)),
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(OP, max_size=40))
def test_random_histories_match_a_model(
    catalogs: CatalogMaker, monkeypatch: pytest.MonkeyPatch, ops: list
) -> None:
    """Random creates, overwrites, deletes, edits, snapshots and snapshot removals: each
    snapshot's items equal the model's dataset when it was taken; every diff (between two
    snapshots, and against the live dataset) equals a brute-force diff of the two item sets;
    and after the removals no undo entry is kept that no snapshot needs. Pages of 2 rows,
    so a key's live row and entries fall on different pages."""
    monkeypatch.setattr(snapshots, "PAGE", 2)
    catalog = catalogs()
    ds = new_dataset(catalog)
    model: dict[str, tuple] = {}
    taken: dict[str, dict[str, tuple]] = {}
    n = 0
    for op, key, value in ops:
        if op == "put":
            put(catalog, ds, key, value, f"e{value}")
        elif op == "delete":
            delete(catalog, ds, key)
        elif op == "edit":
            if key in model:
                tag(catalog, key, str(value))
        elif op == "snap":
            n += 1
            snapshots.create(catalog, ds, f"s{n}")
            taken[f"s{n}"] = dict(model)
        elif taken:
            gone = sorted(taken)[value % len(taken)]
            snapshots.remove(catalog, ds, gone)
            del taken[gone]
        model = live(catalog, ds)
    versions = sorted(taken)
    for t in versions:
        assert frozen(catalog, "ds", t) == taken[t], t
    for a in versions:
        for b in [*versions, None]:
            other = taken[b] if b is not None else model
            want = brute_diff(taken[a], other)
            got = {d.key: d.kind for d in snapshots.differences(catalog, ds, a, b)}
            assert got == want, (a, b)
    # nothing kept that no snapshot needs: pruning again finds nothing
    with transaction(catalog.db):
        assert snapshots.prune(catalog.db, ds.id) == 0


def brute_diff(a: dict[str, tuple], b: dict[str, tuple]) -> dict[str, str]:
    out = {k: "removed" for k in a if k not in b}
    out.update({k: "added" for k in b if k not in a})
    out.update({k: "changed" for k in a if k in b and a[k] != b[k]})
    return out


# -- the command, the Python API, HTTP ---------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncd.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_the_commands_and_their_errors(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.txt", "b.txt"):
        (src / name).write_text(name)
    db = str(tmp_path / "c.db")
    assert cli("sync", str(src), "--dataset", "ds", "--db", db).returncode == 0
    made = cli("snapshot", "create", "--dataset", "ds", "v1", "-m", "first", "--db", db, "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout) | {"created_at": "", "cursor": 0} == {
        "dataset": "ds", "tag": "v1", "message": "first", "items": 2, "bytes": 10,
        "created_at": "", "cursor": 0,
    }  # fmt: skip
    (src / "a.txt").write_text("changed a")
    (src / "b.txt").unlink()
    (src / "c.txt").write_text("c")
    assert cli("sync", "--dataset", "ds", "--db", db).returncode == 0
    assert cli("snapshot", "create", "--dataset", "ds", "v2", "--db", db).returncode == 0
    diff = cli("snapshot", "diff", "--dataset", "ds", "v1", "v2", "--db", db, "--json")
    found = json.loads(diff.stdout)
    assert (found["added"]["keys"], found["removed"]["keys"], found["changed"]["keys"]) == (
        ["c.txt"], ["b.txt"], ["a.txt"]
    )  # fmt: skip
    assert (found["added"]["bytes"], found["removed"]["bytes"], found["changed"]["bytes"]) == (
        1, 5, 9
    )  # fmt: skip
    text = cli("snapshot", "diff", "--dataset", "ds", "v1", "--db", db)
    assert text.stdout.splitlines() == ["+ c.txt", "- b.txt", "~ a.txt"]
    listed = cli("items", "ls", "--dataset", "ds", "--snapshot", "v1", "--db", db, "--json")
    assert [json.loads(line)["key"] for line in listed.stdout.splitlines()] == ["a.txt", "b.txt"]
    ls = cli("snapshot", "ls", "--dataset", "ds", "--db", db, "--json")
    assert [json.loads(line)["tag"] for line in ls.stdout.splitlines()] == ["v1", "v2"]
    one_line_error(cli("snapshot", "create", "--dataset", "ds", "v1", "--db", db), 2,
                   "exists already")  # fmt: skip
    one_line_error(cli("snapshot", "show", "--dataset", "ds", "v9", "--db", db), 2,
                   "unknown snapshot 'v9'", "v1, v2")  # fmt: skip
    one_line_error(cli("snapshot", "create", "--dataset", "ds", "a b", "--db", db), 2,
                   "not valid")  # fmt: skip
    one_line_error(cli("snapshot", "diff", "--dataset", "nope", "v1", "--db", db), 2,
                   "unknown dataset")  # fmt: skip
    one_line_error(cli("datasets", "rm", "ds", "--yes", "--db", db), 2, "--with-snapshots")
    assert cli("snapshot", "rm", "--dataset", "ds", "v1", "--db", db).returncode == 0
    gone = cli("datasets", "rm", "ds", "--yes", "--with-snapshots", "--db", db)
    assert gone.returncode == 0, gone.stderr


def test_the_python_api(tmp_path: Path) -> None:
    import syncd

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    db = str(tmp_path / "c.db")
    syncd.sync(str(src), dataset="ds", db=db)
    made = syncd.snapshot("ds", "v1", message="m", db=db)
    assert (made["tag"], made["items"]) == ("v1", 1)
    (src / "a.txt").write_text("aa")
    syncd.sync(dataset="ds", db=db)
    assert [i.size for i in syncd.items("ds", snapshot="v1", db=db)] == [1]
    assert [i.size for i in syncd.items("ds", db=db)] == [2]
    assert [s["tag"] for s in syncd.snapshot.ls("ds", db=db)] == ["v1"]
    assert syncd.snapshot.diff("ds", "v1", db=db)["changed"]["keys"] == ["a.txt"]
    with pytest.raises(UsageError):
        syncd.items("ds", snapshot="v1", where="size>1", db=db)
    syncd.snapshot.rm("ds", "v1", db=db)
    assert syncd.snapshot.ls("ds", db=db) == []


async def test_http_snapshots(tmp_path: Path) -> None:
    from aiohttp import ClientSession

    from syncd.config import load_daemon_config
    from syncd.daemon.service import Daemon
    from tests.emulators import free_port
    from tests.test_daemon_api import until

    src = tmp_path / "src"
    src.mkdir()
    keys = [f"k{i:03d}" for i in range(250)]
    for k in keys:
        (src / k).write_text(k)
    db = str(tmp_path / "c.db")
    port = free_port()
    (tmp_path / "syncd.toml").write_text(
        f'[drivers.disk]\ntype = "local"\nbucket = "{src}"\n'
        '[datasets.files]\ndriver = "disk"\nwatch = false\n'
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    token = "snap-token-0123456789abcdef"
    auth = {"Authorization": f"Bearer {token}"}
    daemon = Daemon(load_daemon_config(str(tmp_path / "syncd.toml")), db, api_token=token,
                    poll_seconds=1)  # fmt: skip
    task = asyncio.create_task(daemon.run())
    base = f"http://127.0.0.1:{port}/api/v1/datasets/files"

    async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with session.request(method, base + path, json=body, headers=auth) as resp:
            return resp.status, await resp.json(content_type=None)

    async def ready() -> bool:
        if task.done():
            task.result()
        return daemon.ready.is_set()

    await until(ready, "the daemon to start")
    async with ClientSession() as session:

        async def synced() -> bool:
            status, body = await call("GET", "")
            return status == 200 and body["items"] == len(keys) and body["last_run"] is not None

        await until(synced, "the first reconcile")
        status, made = await call("POST", "/snapshots", {"tag": "v1", "message": "m"})
        assert (status, made["items"]) == (201, 250), made
        assert (await call("POST", "/snapshots", {"tag": "v1"}))[0] == 409
        assert (await call("POST", "/snapshots", {"tag": "a b"}))[0] == 400
        assert (await call("POST", "/snapshots", {"tagg": "v2"}))[0] == 400
        assert (await call("GET", "/snapshots/v9"))[0] == 404
        assert (await call("GET", "/snapshots/v1"))[1]["tag"] == "v1"
        # change the dataset behind the snapshot: another connection writes as a push would
        writer = Catalog.open(db)
        try:
            ds = writer.get_dataset("files")
            put(writer, ds, "k000", 99, "new")
            delete(writer, ds, "k001")
        finally:
            writer.close()
        seen: list[str] = []
        cursor = None
        while True:
            path = "/snapshots/v1/items?limit=100" + (f"&cursor={cursor}" if cursor else "")
            status, page = await call("GET", path)
            assert status == 200, page
            seen += [i["key"] for i in page["items"]]
            assert page["items"][0]["size"] == 4 if not cursor else True
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == keys
        status, diff = await call("GET", "/snapshots/v1/diff?limit=1")
        assert status == 200, diff
        assert (diff["changed"]["count"], diff["removed"]["keys"], diff["b"]) == (1, ["k001"], None)
        assert (await call("GET", "/snapshots/v1/diff?against=v9"))[0] == 404
        assert [s["tag"] for s in (await call("GET", "/snapshots"))[1]["snapshots"]] == ["v1"]
        status, gone = await call("DELETE", "/snapshots/v1")
        assert (status, gone["removed"]) == (200, True)
        assert (await call("GET", "/snapshots"))[1]["snapshots"] == []
    daemon.stop.set()
    await asyncio.wait_for(task, 60)


def test_removing_a_dataset_with_snapshots_is_refused_by_the_api(catalogs: CatalogMaker) -> None:
    from syncd import api

    catalog = catalogs()
    ds = new_dataset(catalog)
    snapshots.create(catalog, ds, "v1")
    with pytest.raises(api.Conflict, match="with_snapshots"):
        api.remove_dataset(catalog, "ds")
    assert api.remove_dataset(catalog, "ds", with_snapshots=True) == 0
    assert catalog.find_dataset("ds") is None


# -- consistency under concurrent writers (PostgreSQL) -----------------------------------------


def test_snapshots_taken_while_a_reconcile_and_events_write_equal_the_log_at_their_cursor(
    postgres_url: str, tmp_path: Path
) -> None:
    """A reconcile (repeated syncs of a folder), folder-watch events and item edits write one
    dataset from three threads, each on its own connection, while snapshots are taken: each
    snapshot's items equal the dataset at its recorded cursor, i.e. the change log replayed
    up to that cursor (keys, sizes, etags), and its count and bytes."""
    import random
    import threading

    from syncd import api
    from syncd.events.apply import apply_events
    from syncd.store import changes
    from syncd.store import pg as pg_store
    from tests.test_changes import watch_event

    src = tmp_path / "src"
    src.mkdir()
    names = [f"d{i % 4}/f{i:02d}" for i in range(40)]
    for name in names[:20]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)
    main = Catalog.open(postgres_url)
    asyncio.run(api.sync(main, "ds", source=str(src)))
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker(work: Any) -> None:
        catalog = Catalog.open(postgres_url)
        try:
            while not stop.is_set():
                work(catalog)
        except BaseException as exc:
            errors.append(exc)
            stop.set()
        finally:
            catalog.close()

    rnd = random.Random(25)

    def reconcile(catalog: Catalog) -> None:
        asyncio.run(api.sync(catalog, "ds", wait=True))

    def events(catalog: Catalog) -> None:
        name = rnd.choice(names)
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if rnd.random() < 0.3:
            path.unlink(missing_ok=True)
        else:
            path.write_text(name * rnd.randint(1, 5))
        apply_events(catalog, [watch_event(src, name)], dataset="ds")

    def edit(catalog: Catalog) -> None:
        found = [i.key for i in catalog.iter_items(catalog.get_dataset("ds").id, limit=40)]
        if found:
            with contextlib.suppress(UsageError):  # deleted meanwhile
                edits.update_item(catalog, "ds", rnd.choice(found),
                                  edits.Edit.of(metadata={"n": rnd.randint(0, 9)}))  # fmt: skip

    threads = [threading.Thread(target=worker, args=(w,)) for w in (reconcile, events, edit)]
    for t in threads:
        t.start()
    ds = main.get_dataset("ds")
    taken = []
    try:
        while len(taken) < 15 and not stop.is_set():
            before = changes.head(main.db)
            # wait for the writers to move on, on a condition (not a sleep)
            deadline = threading.Event()
            for _ in range(2000):
                if changes.head(main.db) > before + 2 or stop.is_set():
                    break
                deadline.wait(0.005)
            taken.append(snapshots.create(main, ds, f"s{len(taken)}"))
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not errors, errors
    assert len(taken) == 15
    assert len({s.cursor for s in taken}) > 5  # the writers did write in between
    log = list(changes.follow(main.db, dataset_id=ds.id))
    for snap in taken:
        state: dict[str, tuple] = {}
        for change in log:
            if change.cursor > snap.cursor:
                break
            if change.kind == "deleted":
                state.pop(change.key, None)
            elif change.item is not None:
                state[change.key] = (change.item["size"], change.item["etag"])
        found = {i.key: (i.size, i.etag) for i in main.snapshot_items("ds", snap.tag)}
        assert found == state, snap
        assert (snap.items, snap.bytes) == (len(state), sum(s for s, _ in state.values()))
    main.close()
    pg_store.close_pools()


def test_kill_9_during_create_leaves_no_half_snapshot(
    catalogs: CatalogMaker, tmp_path: Path
) -> None:
    """``syncd snapshot create`` killed (SIGKILL) after writing its row, before the commit:
    no snapshot is listed, and the same command then succeeds."""
    import os
    import signal
    import time

    url = catalogs.new_url()
    catalog = Catalog.open(url)
    ds = new_dataset(catalog)
    put(catalog, ds, "a", 1, "e")
    catalog.close()
    log = tmp_path / "create.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "snapshot", "create", "--dataset", "ds", "v1",
             "--db", url],
            stderr=err, stdout=subprocess.DEVNULL,
            env={**os.environ, "SYNCD_FAULT_PAUSE_AT": "snapshot-create"},
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while b"paused at snapshot-create" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the command never reached the pause point"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(60)
    listed = cli("snapshot", "ls", "--dataset", "ds", "--db", url, "--json")
    assert listed.returncode == 0 and listed.stdout == "", listed
    again = cli("snapshot", "create", "--dataset", "ds", "v1", "--db", url, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["items"] == 1
