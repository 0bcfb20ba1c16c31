"""Split runs (issue 13): one dataset's run cut into key ranges, each leased, listed, committed
and resumed on its own, by several worker processes sharing one catalog.

Real parts only: moto server S3 and local folders, worker subprocesses
(``tests/split_worker.py``, what a daemon worker does: :func:`syncd.api.sync_some`), ``kill -9``
at a pause point. Waits are on catalog conditions with a generous deadline, never on a fixed
time. Every catalog is reached through :func:`catalog_url`, the one fixture to parametrize for
PostgreSQL; the checks read the catalog through :class:`~syncd.store.catalog.Catalog` with
portable SQL.

How each test was checked to fail (the code broken on purpose, the test run, the change
undone) is in its docstring.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import boto3
import pytest

from providers.config import DriverConfig
from syncd import api
from syncd.errors import SyncFailed
from syncd.limits import MaxDelete
from syncd.reconcile import split
from syncd.reconcile.filters import Filters
from syncd.reconcile.source import canonical
from syncd.reconcile.sync import DeletesHeldBack, SyncOptions, SyncStopped
from syncd.store import lease, ranges
from syncd.store.catalog import Catalog
from syncd.store.db import transaction
from tests.conftest import CatalogMaker, catalog_state, unique_bucket
from tests.test_cli_errors import one_line_error
from tests.test_sync_cli import summary, syncd
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
SYNC = (sys.executable, "-m", "syncd.cli", "sync")

#: keys around the boundaries a first sync cuts at (the folders "b/" and "ü/" of
#: ["a/", "b/", "c/", "ü/", "日本/"]): keys equal to a boundary ("b/", "ü/": S3 allows a key
#: ending in "/"), just below one ("b", "b.txt"), unicode keys on both sides
EDGE_KEYS = ["b", "b.txt", "b/", "z", "ü/", "ü/ß", "日本語.txt", "日本/一.txt", "😀.txt"]


@pytest.fixture
def catalog_url(catalogs: CatalogMaker) -> str:
    """The catalog all workers of a test share: a sqlite file, then a PostgreSQL database
    (the test runs on each store)."""
    return catalogs.new_url()


def query(url: str, sql: str, *args: object) -> list[tuple]:
    # a reader: a worker paused inside a batch commit holds the write lock
    catalog = Catalog.open_reader(url)
    try:
        return [tuple(r) for r in catalog.db.execute(sql, list(args)).fetchall()]
    finally:
        catalog.close()


def make_dataset(url: str, cfg: DriverConfig, name: str = "ds") -> None:
    catalog = Catalog.open(url)
    try:
        catalog.create_dataset(name, canonical(cfg), cfg, Filters())
    finally:
        catalog.close()


def open_split_run(url: str, parts: int, name: str = "ds") -> int:
    """Cut the dataset's next run into ``parts`` ranges (what the first worker of a due
    dataset does) without reconciling any; the run's id."""

    async def cut() -> int:
        catalog = Catalog.open(url)
        try:
            dataset = catalog.get_dataset(name)
            owner = lease.new_owner()
            await api.take_lease(catalog, dataset, owner, wait=False)
            try:
                async with api.open_dataset_driver(dataset) as driver:
                    run = await split.start_or_join(
                        catalog, dataset, driver, SyncOptions(ranges=parts), owner
                    )
            finally:
                with transaction(catalog.db):
                    lease.release(catalog.db, lease.for_dataset(dataset.id), owner)
            assert run is not None and run.ranges == parts, run
            return run.id
        finally:
            catalog.close()

    return asyncio.run(cut())


def worker(url: str, *args: str, env: dict[str, str] | None = None, stderr=None):
    return subprocess.Popen(
        [sys.executable, "-m", "tests.split_worker", url, "ds", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=stderr if stderr is not None else subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> list[dict]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (out, err)
    return [json.loads(line) for line in out.splitlines()]


def range_rows(url: str, run_id: int) -> list[tuple]:
    return query(
        url,
        "SELECT idx, lo, hi, status, resume_key, attempts, listed FROM run_ranges"
        " WHERE run_id = ? ORDER BY idx",
        run_id,
    )


def attempts_of(url: str, run_id: int) -> dict[int, list[tuple]]:
    """``{range: [(attempt, owner, started_at, ended_at, status, resumed_after, last_key)]}``"""
    out: dict[int, list[tuple]] = {}
    for idx, *rest in query(
        url,
        "SELECT idx, attempt, owner, started_at, ended_at, status, resumed_after, last_key"
        " FROM range_attempts WHERE run_id = ? ORDER BY idx, attempt",
        run_id,
    ):
        out.setdefault(idx, []).append(tuple(rest))
    return out


def assert_one_holder_at_a_time(url: str, run_id: int) -> None:
    """No two attempts at one range overlap in time, and exactly one of them completed it
    (an interrupted attempt ended before the next began: it is closed by the claim that took
    the range over)."""
    rows = attempts_of(url, run_id)
    assert sorted(rows) == [r[0] for r in range_rows(url, run_id)]
    for idx, tries in rows.items():
        for before, after in itertools.pairwise(tries):
            assert before[3] is not None and before[3] <= after[2], (idx, before, after)
        assert [t[4] for t in tries].count("completed") == 1, (idx, tries)
        assert tries[-1][4] == "completed", (idx, tries)


def run_status(url: str, run_id: int) -> str:
    return query(url, "SELECT status FROM runs WHERE id = ?", run_id)[0][0]


def state(url: str) -> dict[str, tuple[int, str]]:
    catalog = Catalog.open_reader(url)
    try:
        return catalog_state(catalog)
    finally:
        catalog.close()


# -- S3: three workers on one split run ---------------------------------------------------


def s3_state(client, bucket: str) -> dict[str, tuple[int, str]]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = (obj["Size"], obj["ETag"].strip('"'))
    return out


def test_three_workers_share_a_split_run_of_an_s3_bucket(moto, catalog_url: str) -> None:
    """A first sync cut at the bucket's folders, then a re-sync cut at the catalog's keys,
    each done by worker processes that claim one range at a time: the dataset ends equal to
    the bucket (boundary keys and unicode keys included), every key is listed exactly once,
    and no range has two holders at once.

    Checked to fail: with ``key_range`` ignored by ``Catalog.commit_batch`` (every batch
    renewing the dataset lease, which no range worker holds), the workers stop with
    "key range 2 of dataset 'ds' was taken over" and exit 1."""
    s3 = boto3.client("s3", endpoint_url=moto.url)
    bucket = unique_bucket("split")
    s3.create_bucket(Bucket=bucket)
    keys = [f"{d}/{i:03d}" for d in ("a", "b", "c", "ü", "日本") for i in range(25)] + EDGE_KEYS
    for i, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x" * (i % 11))
    make_dataset(
        catalog_url, DriverConfig(type="s3", bucket=bucket, endpoint=moto.url, page_size=4)
    )

    # first sync: no items, so the boundaries are the folders (one delimiter listing)
    run1 = open_split_run(catalog_url, 3)
    assert [(r[1], r[2]) for r in range_rows(catalog_url, run1)] == [
        (None, "b/"),
        ("b/", "ü/"),
        ("ü/", None),
    ]
    procs = [worker(catalog_url, "--once", "--batch", "7") for _ in range(3)]
    results = [finish(p) for p in procs]
    # three ranges, three workers, one range each: each claim found a free range
    assert sorted(r[0]["status"] for r in results) == [
        "completed",
        "range-completed",
        "range-completed",
    ]
    assert run_status(catalog_url, run1) == "completed"
    assert state(catalog_url) == s3_state(s3, bucket)
    owners = {t[1] for tries in attempts_of(catalog_url, run1).values() for t in tries}
    assert len(owners) == 3
    assert_one_holder_at_a_time(catalog_url, run1)
    assert sum(r[6] for r in range_rows(catalog_url, run1)) == len(keys)

    # the bucket changes on both sides of the boundaries; the re-sync is cut at item keys
    for key in ("a/003", "b/", "ü/ß", "日本/010"):
        s3.delete_object(Bucket=bucket, Key=key)
    for key in ("b/007", "z", "😀.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"changed, longer than before")
    for key in ("b/", "c/new", "ü/ä", "😀😀"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"new")
    run2 = open_split_run(catalog_url, 3)
    bounds = [r[1] for r in range_rows(catalog_url, run2)[1:]]
    assert all(b in keys for b in bounds), bounds  # evenly spaced item keys
    procs = [worker(catalog_url, "--batch", "5") for _ in range(2)]
    for p in procs:
        finish(p)
    assert run_status(catalog_url, run2) == "completed"
    expected = s3_state(s3, bucket)
    assert state(catalog_url) == expected
    assert_one_holder_at_a_time(catalog_url, run2)
    rows = query(
        catalog_url,
        "SELECT listed, created, updated, deleted, ranges FROM runs WHERE id = ?",
        run2,
    )
    assert rows == [(len(expected), 3, 4, 3, 3)]


# -- kill -9 part-way, taken over and resumed ------------------------------------------


def make_folder(root: Path, per_folder: int = 40) -> Path:
    for d in ("a", "b", "c"):
        (root / d).mkdir(parents=True, exist_ok=True)
        for i in range(per_folder):
            (root / d / f"f{i:03d}.txt").write_bytes(b"y" * (i % 5))
    (root / "b.txt").write_bytes(b"just below the boundary b/")
    (root / "ü.txt").write_bytes(b"unicode, after every folder")
    return root


def items_of(url: str) -> list[dict]:
    catalog = Catalog.open(url)
    try:
        ds = catalog.get_dataset("ds")
        skip = ("created_at", "updated_at")
        return [
            {k: v for k, v in i.public().items() if k not in skip}
            for i in catalog.iter_items(ds.id)
        ]
    finally:
        catalog.close()


def test_a_killed_worker_s_range_is_resumed_by_another_from_its_resume_key(
    tmp_path: Path, catalog_url: str
) -> None:
    """Worker 1 completes range 0; worker 2 is killed with ``kill -9`` inside the second batch
    commit of range 1; worker 3 takes range 1 over at once (its holder's process is gone),
    resumes it after the key worker 2 committed, does range 2 and closes the run without
    re-listing range 0. The dataset then equals a serial sync of the same folder, field by
    field.

    Checked to fail: with ``start_after = key_range.resume_key`` replaced by None (a taken-over
    range listed from its start), the listed total is 132, not 122 (range 1's first batch
    listed twice); with the ``o.key >= since`` filter of a range's first page removed
    (sync.py), it is 123 ("b.txt", just below the boundary "b/", listed by two ranges)."""
    src = make_folder(tmp_path / "src")
    # pages of a batch: each commit's counters and resume key cover the same keys
    make_dataset(catalog_url, DriverConfig(type="local", bucket=str(src), page_size=10))
    run = open_split_run(catalog_url, 3)
    assert [(r[1], r[2]) for r in range_rows(catalog_url, run)] == [
        (None, "b/"),
        ("b/", "c/"),
        ("c/", None),
    ]
    assert finish(worker(catalog_url, "--once"))[0]["status"] == "range-completed"

    log = tmp_path / "worker2.log"
    with log.open("w") as err:
        second = worker(
            catalog_url,
            "--once",
            "--batch",
            "10",
            env={"SYNCD_FAULT_PAUSE_AT": "batch-commit:2"},
            stderr=err,
        )
        wait_for(lambda: "paused at batch-commit" in log.read_text(), "worker 2 to pause")
    # the first batch of range 1 is committed with its resume key; the second is not
    _, lo, _, status, resume_key, attempts, _ = range_rows(catalog_url, run)[1]
    assert (status, attempts) == ("running", 1)
    assert resume_key is not None and lo < resume_key < "b/f039.txt", resume_key
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=60)

    # the run shows one interrupted range attempt while nobody holds range 1
    shown = json.loads(
        syncd("runs", "ls", "--dataset", "ds", "--db", catalog_url, "--json").stdout.splitlines()[0]
    )
    assert shown["status"] == "interrupted" and shown["ranges"] == 3
    assert [a["status"] for a in shown["attempt_history"] if a["range"] == 1] == ["interrupted"]

    finish(worker(catalog_url))
    assert run_status(catalog_url, run) == "completed"
    tries = attempts_of(catalog_url, run)
    assert [t[4] for t in tries[0]] == ["completed"]  # range 0 was not listed again
    assert [(t[4], t[5]) for t in tries[1]] == [
        ("interrupted", None),
        ("completed", resume_key),
    ]
    assert tries[1][0][1] != tries[1][1][1]
    assert_one_holder_at_a_time(catalog_url, run)
    files = sum(1 for p in src.rglob("*") if p.is_file())
    assert sum(r[6] for r in range_rows(catalog_url, run)) == files

    serial = str(tmp_path / "serial.db")
    summary(syncd("sync", str(src), "--dataset", "ds", "--db", serial, "--ranges", "1", "--json"))
    assert items_of(catalog_url) == items_of(serial)
    assert len(items_of(serial)) == files


# -- deletes wait for every range ----------------------------------------------------------


def test_parked_deletes_wait_until_every_range_has_completed(
    tmp_path: Path, catalog_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deletes found by range 0 stay parked while range 1 is unfinished, and after range 1's
    listing failed part-way; only the worker completing the last range applies them (with
    range 2's own) and closes the run.

    Checked to fail: with the ``all_completed`` check of ``_complete_range`` removed, range 0
    alone closes the run and applies its deletes (status "completed", not
    "range-completed")."""
    src = make_folder(tmp_path / "src", per_folder=20)
    summary(syncd("sync", str(src), "--dataset", "ds", "--db", catalog_url, "--json"))
    gone = [src / "a" / f"f{i:03d}.txt" for i in range(5)] + [src / "c" / "f019.txt"]
    for path in gone:
        path.unlink()
    gone_keys = {str(p.relative_to(src)) for p in gone}
    run = open_split_run(catalog_url, 3)
    bounds = [(r[1], r[2]) for r in range_rows(catalog_url, run)]
    assert bounds[0][1] <= "b" and bounds[2][0] < "c/f019.txt", bounds

    def some(**env: str) -> str:
        for name in ("SYNCD_FAULT_LIST_FAIL_AFTER",):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)

        async def call() -> str:
            catalog = Catalog.open(catalog_url)
            try:
                result = await api.sync_some(catalog, "ds", start=False)
                return result.status
            finally:
                catalog.close()

        return asyncio.run(call())

    def parked() -> int:
        return query(catalog_url, "SELECT count(*) FROM pending_deletes WHERE run_id = ?", run)[0][
            0
        ]

    assert some() == "range-completed"  # range 0: five deletes parked
    assert gone_keys <= set(state(catalog_url)) and parked() == 5
    with pytest.raises(SyncFailed, match="nothing was deleted"):
        some(SYNCD_FAULT_LIST_FAIL_AFTER="3")  # range 1's listing fails part-way
    assert range_rows(catalog_url, run)[1][3] == "failed"
    assert gone_keys <= set(state(catalog_url)) and parked() == 5
    assert some() == "range-completed"  # range 1 resumed and completed; range 2 left
    assert gone_keys <= set(state(catalog_url)) and parked() == 5
    assert some() == "completed"  # range 2 parks its delete, applies all six, closes the run
    assert run_status(catalog_url, run) == "completed" and parked() == 0
    listing = {str(p.relative_to(src)) for p in src.rglob("*") if p.is_file()}
    assert set(state(catalog_url)) == listing
    assert query(catalog_url, "SELECT deleted FROM runs WHERE id = ?", run) == [(6,)]
    assert some() == "idle"  # nothing left to join: a joining worker starts nothing


# -- the one-shot sync, next to a live worker ----------------------------------------------


def test_one_shot_sync_refuses_a_live_worker_s_range_or_waits_and_takes_it_over(
    tmp_path: Path, catalog_url: str
) -> None:
    """``syncd sync`` of a dataset whose split run has a range held by a live worker refuses
    in one line naming it; with ``--wait`` it reconciles the free ranges, waits for the held
    one, takes it over when its holder is killed, and completes the run: one run, equal to
    the folder.

    Checked to fail: with ``ranges_ok=True`` always passed to ``take_lease``, the first sync
    joins the run instead of refusing, and waits for the hanging worker until ``syncd()``'s
    timeout; with the one-shot's wait loop returning as soon as no range is free, ``--wait``
    exits with the run still running (81 of 122 created)."""
    src = make_folder(tmp_path / "src")
    make_dataset(catalog_url, DriverConfig(type="local", bucket=str(src)))
    run = open_split_run(catalog_url, 3)
    holder = worker(catalog_url, "--once", env={"SYNCD_FAULT_LIST_HANG_AFTER": "3"})
    wait_for(
        lambda: query(catalog_url, "SELECT count(*) FROM range_attempts WHERE status = 'running'")[
            0
        ][0],
        "the worker to hold a range",
    )
    refused = syncd("sync", "--dataset", "ds", "--db", catalog_url)
    one_line_error(refused, 1, "being synced by process", str(holder.pid))

    waiting = subprocess.Popen(
        [*SYNC, "--dataset", "ds", "--db", catalog_url, "--wait", "--json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(
        lambda: (
            [r[3] for r in range_rows(catalog_url, run)] == ["running", "completed", "completed"]
        ),
        "the waiting sync to finish the free ranges",
    )
    assert run_status(catalog_url, run) == "running"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err
    result = json.loads(out.splitlines()[-1])["summary"]
    files = sum(1 for p in src.rglob("*") if p.is_file())
    assert (result["status"], result["run_id"], result["created"]) == ("completed", run, files)
    assert [t[4] for t in attempts_of(catalog_url, run)[0]] == ["interrupted", "completed"]
    assert_one_holder_at_a_time(catalog_url, run)
    assert len(state(catalog_url)) == files
    assert query(catalog_url, "SELECT count(*) FROM runs") == [(1,)]


def test_one_shot_sync_splits_by_config_and_by_size(tmp_path: Path) -> None:
    """``[datasets.X] ranges = 3`` splits a first sync at the folders; the automatic rule
    splits a dataset of N items into N // 50,000 ranges, at most 32, and never below 2; the
    whole run completes in one call either way.

    Checked to fail: with ``ranges=t.ranges`` dropped from load_config, the run is serial
    (no ``ranges`` in ``runs ls --json``)."""
    src = make_folder(tmp_path / "src", per_folder=10)
    db = tmp_path / "c.db"
    config = tmp_path / "syncd.toml"
    config.write_text(
        f'[drivers.here]\ntype = "local"\nbucket = "{src}"\n\n'
        '[datasets.ds]\ndriver = "here"\nranges = 3\n'
    )
    done = summary(syncd("sync", "--config", str(config), "--db", str(db), "--json"))
    assert done["status"] == "completed" and done["created"] == 32
    shown = json.loads(syncd("runs", "ls", "--dataset", "ds", "--db", str(db), "--json").stdout)
    assert shown["ranges"] == 3
    assert [r["status"] for r in shown["range_history"]] == ["completed"] * 3
    assert [ranges.wanted(None, n) for n in (0, 99_999, 100_000, 10**9)] == [0, 1, 2, 32]
    assert ranges.wanted(5, 0) == 5


def test_a_split_run_holds_back_a_mass_delete(tmp_path: Path, catalog_url: str) -> None:
    """``--max-delete`` applies to the whole split run: the worker completing the last range
    finds more deletes parked (over all ranges) than allowed, deletes none, and records the
    run as ``held``; a later run without the limit deletes them.

    Checked to fail: with the limit check of ``_complete_range`` removed, DeletesHeldBack is
    not raised."""
    src = make_folder(tmp_path / "src", per_folder=20)
    summary(syncd("sync", str(src), "--dataset", "ds", "--db", catalog_url, "--json"))
    before = state(catalog_url)
    for d in ("a", "c"):
        for i in range(4):
            (src / d / f"f{i:03d}.txt").unlink()

    def run_sync(**options: object):
        async def call():
            catalog = Catalog.open(catalog_url)
            try:
                return await api.sync(catalog, "ds", options=SyncOptions(ranges=3, **options))
            finally:
                catalog.close()

        return asyncio.run(call())

    with pytest.raises(DeletesHeldBack, match="held back 8 deletes"):
        run_sync(max_delete=MaxDelete(count=5))
    held = query(catalog_url, "SELECT status, ranges, held_deletes FROM runs ORDER BY id")
    assert held[-1] == ("held", 3, 8)
    assert state(catalog_url) == before
    assert query(catalog_url, "SELECT count(*) FROM pending_deletes") == [(0,)]
    result = run_sync()
    assert (result.status, result.counts["deleted"]) == ("completed", 8)
    assert len(state(catalog_url)) == len(before) - 8


def test_a_stopped_worker_leaves_its_range_to_the_next(tmp_path: Path, catalog_url: str) -> None:
    """A worker asked to stop (daemon shutdown: ``SyncOptions.stop``) while it holds a range
    leaves the range ``failed`` with its lease given up; the next worker takes it at once.

    Checked to fail: with the range's lease not released on failure (``lease.release``
    removed from sync_dataset's error path and split.work's ``finally``), the lease is still
    in the catalog after the stop."""
    src = make_folder(tmp_path / "src", per_folder=10)
    make_dataset(catalog_url, DriverConfig(type="local", bucket=str(src)))
    run = open_split_run(catalog_url, 3)
    halt = threading.Event()
    halt.set()

    async def call(options: SyncOptions) -> str:
        catalog = Catalog.open(catalog_url)
        try:
            return (await api.sync_some(catalog, "ds", options=options, start=False)).status
        finally:
            catalog.close()

    with pytest.raises(SyncStopped):
        asyncio.run(call(SyncOptions(stop=halt)))
    assert [r[3] for r in range_rows(catalog_url, run)] == ["failed", "pending", "pending"]
    assert query(catalog_url, "SELECT count(*) FROM leases") == [(0,)]
    assert asyncio.run(call(SyncOptions())) == "range-completed"
    assert [r[3] for r in range_rows(catalog_url, run)] == ["completed", "pending", "pending"]


async def test_a_daemon_counts_each_object_of_a_split_run_once(tmp_path: Path) -> None:
    """A daemon reconciling a dataset split into ranges (``ranges = 3``) one range after the
    other: its metrics count every object listed and created once, not the earlier ranges
    again when the last range closes the run (which reports the run's totals).

    Checked to fail: with the scheduler counting ``result.counts`` (the run's totals) as
    before, 62 objects listed were counted as 103."""
    from syncd.config import load_daemon_config
    from syncd.daemon.service import Daemon

    src = make_folder(tmp_path / "src", per_folder=20)
    files = sum(1 for p in src.rglob("*") if p.is_file())
    (tmp_path / "syncd.toml").write_text(
        f'[drivers.disk]\ntype = "local"\nbucket = "{src}"\n'
        '[datasets.files]\ndriver = "disk"\nwatch = false\nranges = 3\n'
    )
    db = str(tmp_path / "c.db")
    daemon = Daemon(load_daemon_config(str(tmp_path / "syncd.toml")), db, poll_seconds=1)
    task = asyncio.create_task(daemon.run())

    def sample(name: str, **labels: str) -> float | None:
        return daemon.metrics.registry.get_sample_value(name, {"dataset": "files", **labels})

    try:
        deadline = asyncio.get_running_loop().time() + 120
        while sample("syncd_sync_runs_total", outcome="completed") != 1.0:
            if task.done():
                task.result()  # raise what stopped it
            assert asyncio.get_running_loop().time() < deadline, "the split run never completed"
            await asyncio.sleep(0.05)  # polling a condition, under a deadline
    finally:
        daemon.stop.set()
        await asyncio.wait_for(task, 60)
    runs = query(db, "SELECT status, ranges, listed, created FROM runs")
    assert runs == [("completed", 3, files, files)]
    assert sample("syncd_sync_runs_total", outcome="range_completed") == 2.0
    assert sample("syncd_objects_listed_total") == files
    created = sample("syncd_items_changed_total", action="created", via="reconcile")
    assert created == files
