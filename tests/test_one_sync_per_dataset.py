"""One sync per dataset at a time, and a run history that tells the truth (issue 8, #6 and #7).

A sync that hangs part-way (``SYNCD_FAULT_LIST_HANG_AFTER``) stands in for a long listing; the
tests wait for the condition they need (the lease taken, progress recorded) by polling the
catalog with a deadline, never for a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd import api
from syncd.errors import SyncFailed
from syncd.store import lease
from syncd.store.db import transaction
from tests.conftest import CatalogMaker
from tests.test_cli_errors import one_line_error
from tests.test_sync_cli import summary, syncd
from tests.waiting import wait_for

SYNC = (sys.executable, "-m", "syncd.cli", "sync")


def make_folder(root: Path, n: int) -> Path:
    for i in range(n):
        sub = root / f"d{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:04d}").write_bytes(b"x" * (i % 7))
    return root


def query(db: Path, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def start_hanging_sync(src: Path, db: Path, dataset: str, after: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "syncd.cli",
            "sync",
            str(src),
            "--dataset",
            dataset,
            "--db",
            str(db),
        ],
        env={**os.environ, "SYNCD_FAULT_LIST_HANG_AFTER": str(after)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def hanging(tmp_path: Path) -> Iterator[tuple[Path, Path, subprocess.Popen]]:
    """A sync of 1,200 files that holds the lease and hangs after 700 objects listed."""
    src = make_folder(tmp_path / "src", 1200)
    db = tmp_path / "c.db"
    proc = start_hanging_sync(src, db, "ds", 700)
    wait_for(
        lambda: query(db, "SELECT pid FROM leases WHERE pid = ?", proc.pid),
        "the first sync to take the lease",
        60,
        tolerate=(sqlite3.OperationalError,),  # the catalog is being created
    )
    # progress recorded past the first batch: the run is well under way
    wait_for(
        lambda: query(db, "SELECT 1 FROM runs WHERE status = 'running' AND resume_key IS NOT NULL"),
        "the first sync to record progress",
        60,
        tolerate=(sqlite3.OperationalError,),
    )
    yield src, db, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_second_sync_refuses_naming_the_running_process(hanging) -> None:
    src, db, proc = hanging
    before = query(db, "SELECT id, status, attempts FROM runs")
    err = one_line_error(
        syncd("sync", str(src), "--dataset", "ds", "--db", str(db)),
        1,
        "is being synced by process",
        str(proc.pid),
        "--wait",
    )
    assert "Traceback" not in err
    # the refused sync neither took over nor touched the run
    assert query(db, "SELECT id, status, attempts FROM runs") == before
    assert query(db, "SELECT pid FROM leases") == [(proc.pid,)]


def test_killed_sync_shows_interrupted_then_wait_takes_over(hanging) -> None:
    src, db, proc = hanging
    waiter = subprocess.Popen(
        [*SYNC, str(src), "--dataset", "ds", "--db", str(db), "--wait", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # the waiter is waiting: it said so, and it has not taken the lease
        assert "waiting" in waiter.stderr.readline()
        assert query(db, "SELECT pid FROM leases") == [(proc.pid,)]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        out, err = waiter.communicate(timeout=120)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 0, err
    result = json.loads(out.splitlines()[-1])["summary"]
    assert result["status"] == "completed" and result["resumed_after"]
    rows = [
        json.loads(x)
        for x in syncd(
            "runs", "ls", "--dataset", "ds", "--db", str(db), "--json"
        ).stdout.splitlines()
    ]
    assert len(rows) == 1  # one run, resumed: never two runs side by side
    run = rows[0]
    assert run["status"] == "completed" and run["attempts"] == 2
    first, second = run["attempt_history"]
    assert first["status"] == "interrupted" and first["ended_at"] <= second["started_at"]
    assert second["status"] == "completed" and second["resumed_after"] == result["resumed_after"]
    assert query(db, "SELECT count(*) FROM items") == [(1200,)]
    assert query(db, "SELECT count(*) FROM leases") == [(0,)]


def test_killed_sync_shows_interrupted_without_a_new_sync(hanging) -> None:
    _, db, proc = hanging
    listed = json.loads(syncd("runs", "ls", "--dataset", "ds", "--db", str(db), "--json").stdout)
    assert listed["status"] == "running"  # its owner is alive
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = syncd("runs", "ls", "--dataset", "ds", "--db", str(db), "--json")
    run = json.loads(after.stdout)
    assert run["status"] == "interrupted"
    assert [a["status"] for a in run["attempt_history"]] == ["interrupted"]
    text = syncd("runs", "ls", "--dataset", "ds", "--db", str(db)).stdout.splitlines()
    assert text[0].split("\t")[:5] == ["ID", "STATUS", "STARTED", "DURATION", "ATTEMPTS"]
    assert text[1].split("\t")[1] == "interrupted"


def test_failed_run_counts_only_applied_deletes_and_keeps_every_error(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src", 30)
    db = str(tmp_path / "c.db")
    assert syncd("sync", str(src), "--dataset", "ds", "--db", db).returncode == 0
    for i in range(10):  # ten deletes at the front of the listing, parked by the failing run
        (src / f"d{i % 3}" / f"f{i:04d}").unlink()
    failed = syncd(
        "sync", str(src), "--dataset", "ds", "--db", db,
        env={"SYNCD_FAULT_LIST_FAIL_AFTER": "12"},
    )  # fmt: skip
    assert failed.returncode == 1
    run = json.loads(
        syncd("runs", "ls", "--dataset", "ds", "--db", db, "--json", "--limit", "1").stdout
    )
    assert run["status"] == "failed" and run["deleted"] == 0, run
    assert "injected listing fault" in run["error"]
    resumed = summary(syncd("sync", str(src), "--dataset", "ds", "--db", db, "--json"))
    assert resumed["deleted"] == 10 and resumed["resumed_after"]
    run = json.loads(
        syncd("runs", "ls", "--dataset", "ds", "--db", db, "--json", "--limit", "1").stdout
    )
    assert run["status"] == "completed" and run["attempts"] == 2 and run["deleted"] == 10
    first, second = run["attempt_history"]
    assert first["status"] == "failed" and "injected listing fault" in first["error"]
    assert second["status"] == "completed" and second["error"] is None
    assert run["seconds"] >= 0


async def test_wait_on_a_dataset_its_first_sync_removed_says_so(
    tmp_path: Path, catalogs: CatalogMaker
) -> None:
    """The other sync was the dataset's first and failed, so it removed the dataset: a waiter
    gets one clear error, never a foreign-key failure."""
    src = make_folder(tmp_path / "src", 3)
    catalog = catalogs()
    try:
        ds, created = api.ensure_dataset(catalog, "ds", source=str(src))
        assert created
        with transaction(catalog.db):
            assert lease.acquire(catalog.db, lease.for_dataset(ds.id), "other:1:x") is None
        catalog.drop_dataset(ds)
        with pytest.raises(SyncFailed, match="was removed while this sync waited"):
            await api.take_lease(catalog, ds, lease.new_owner(), wait=True)
    finally:
        catalog.close()


def test_lease_of_a_live_holder_is_refused_and_of_a_gone_one_taken(
    tmp_path: Path, catalogs: CatalogMaker
) -> None:
    catalog = catalogs()
    try:
        ds, _ = api.ensure_dataset(catalog, "ds", source=str(make_folder(tmp_path / "s", 1)))
        db, name = catalog.db, lease.for_dataset(ds.id)
        with transaction(db):
            assert lease.acquire(db, name, "me:1:a") is None
            # our own process is alive, whatever the owner id says
            held = lease.acquire(db, name, "me:1:b")
        assert held is not None and held.owner == "me:1:a"
        with transaction(db):  # expired: anyone may take it
            db.execute("UPDATE leases SET expires_at = '2000-01-01T00:00:00Z'")
            assert lease.acquire(db, name, "me:1:b") is None
            assert not lease.renew(db, name, "me:1:a")  # the old owner lost it
            assert lease.renew(db, name, "me:1:b")
    finally:
        catalog.close()
