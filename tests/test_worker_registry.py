"""The worker registry (``syncd.store.workers``), ``syncd workers ls``, the shared schedule's
"not due" check in :func:`syncd.api.sync` and ``[daemon] lease_ttl`` (issue 13).

The registry is written and read here directly; a dead worker is a row with the pid of a
process that has exited (this test's own child), or with an expiry in the past. The end-to-end
test with real workers is ``tests/test_workers.py``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from syncd import api
from syncd.api import NotDue
from syncd.config import load_daemon_config
from syncd.errors import UsageError
from syncd.store import lease, workers
from syncd.store.catalog import Catalog
from syncd.store.db import transaction
from syncd.store.stamps import now
from tests.conftest import CatalogMaker
from tests.test_sync_cli import syncd


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def catalog(catalogs: CatalogMaker) -> Catalog:
    """A fresh catalog on each store in turn."""
    return catalogs()


def folder(root: Path, n: int) -> str:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"f{i}.txt").write_text(str(i))
    return str(root)


def test_live_gone_and_leases_per_worker(catalog: Catalog, tmp_path: Path) -> None:
    db, dead = catalog.db, dead_pid()
    a, _ = api.ensure_dataset(catalog, "a", source=folder(tmp_path / "a", 1))
    b, _ = api.ensure_dataset(catalog, "b", source=folder(tmp_path / "b", 1))
    me = workers.new_worker_id()
    with transaction(db):
        workers.register(db, me, ttl=30, api="http://127.0.0.1:1")
        # a worker on this host whose process is gone (kill -9): gone at once
        db.execute(
            "INSERT INTO workers (id, host, pid, started_at, heartbeat_at, expires_at)"
            " SELECT 'dead', host, ?, started_at, heartbeat_at, expires_at FROM workers",
            [dead],
        )
        # one on another host whose expiry passed: gone after the ttl
        db.execute(
            "INSERT INTO workers (id, host, pid, started_at, heartbeat_at, expires_at)"
            " VALUES ('far', 'elsewhere', 1, ?, ?, '2000-01-01T00:00:00Z')",
            [now(), now()],
        )
        assert lease.acquire(db, lease.for_dataset(a.id), workers.lease_owner(me)) is None
        assert lease.acquire(db, lease.for_dataset(b.id), "dead/run1") is None
        db.execute("UPDATE leases SET pid = ? WHERE owner = 'dead/run1'", [dead])
    assert workers.live_workers(db) == [me]

    found = workers.listing(db)
    assert [w["id"] for w in found["workers"]] == [me]
    assert found["workers"][0]["api"] == "http://127.0.0.1:1"
    assert [(x["dataset"], x["live"]) for x in found["workers"][0]["leases"]] == [("a", True)]
    gone = {w["id"]: w for w in found["gone"]}
    assert set(gone) == {"dead", "far"}
    # the dead worker's lease shows under it, not live: anyone may take it over
    assert [(x["dataset"], x["live"]) for x in gone["dead"]["leases"]] == [("b", False)]
    assert found["other_leases"] == []

    with transaction(db):  # a one-shot sync's lease belongs to no worker
        assert lease.acquire(db, lease.for_dataset(b.id), lease.new_owner()) is None
        workers.unregister(db, me)
    found = workers.listing(db)
    assert found["workers"] == [] and found["gone"][0]["leases"] == []
    # a's holder unregistered without releasing it (it would have): shown with no worker
    assert sorted(x["dataset"] for x in found["other_leases"]) == ["a", "b"]


def test_heartbeat_renews_and_gone_rows_are_pruned(catalog: Catalog) -> None:
    db = catalog.db
    with transaction(db):
        workers.register(db, "w", ttl=30)
        db.execute("UPDATE workers SET expires_at = '2000-01-01T00:00:00Z'")
    assert workers.live_workers(db) == []
    with transaction(db):
        workers.heartbeat(db, "w", ttl=30)
    assert workers.live_workers(db) == ["w"]
    with transaction(db):  # a worker gone for longer than FORGET_AFTER is forgotten
        db.execute("UPDATE workers SET expires_at = '2000-01-01T00:00:00Z'")
        workers.register(db, "other", ttl=30)
    assert [w["id"] for w in workers.listing(db)["gone"]] == []
    with transaction(db):  # a heartbeat after its row was pruned registers it again
        workers.heartbeat(db, "w", ttl=30)
    assert set(workers.live_workers(db)) == {"other", "w"}


def test_sync_is_skipped_when_another_reconcile_finished_after_the_cutoff(
    catalog: Catalog, tmp_path: Path
) -> None:
    src = folder(tmp_path / "src", 3)
    before = now()
    first = asyncio.run(api.sync(catalog, "ds", source=src, unless_reconciled_after=before))
    assert first.counts["created"] == 3
    # a second worker that found it due at the same moment: not reconciled twice
    with pytest.raises(NotDue) as caught:
        asyncio.run(api.sync(catalog, "ds", source=src, unless_reconciled_after=before))
    assert caught.value.ended_at > before
    ds = catalog.get_dataset("ds")
    assert catalog.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    assert lease.holder(catalog.db, lease.for_dataset(ds.id)) is None  # released
    # a cutoff after that reconcile: due again
    again = asyncio.run(api.sync(catalog, "ds", source=src, unless_reconciled_after=now()))
    assert again.counts["unchanged"] == 3


def test_workers_ls_empty_text_and_json(catalogs: CatalogMaker, tmp_path: Path) -> None:
    db = catalogs.new_url()
    Catalog.open(db).close()
    empty = syncd("workers", "ls", "--db", db)
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.strip().startswith("no syncd run worker is registered on catalog")
    catalog = Catalog.open(db)
    try:
        with transaction(catalog.db):
            workers.register(catalog.db, "host:1:abc", ttl=600)
    finally:
        catalog.close()
    text = syncd("workers", "ls", "--db", db)
    assert text.returncode == 0 and text.stdout.startswith("host:1:abc\t"), text
    listed = syncd("workers", "ls", "--db", db, "--json")
    assert listed.returncode == 0
    assert [w["id"] for w in json.loads(listed.stdout)["workers"]] == ["host:1:abc"]
    missing = syncd("workers", "ls", "--db", str(tmp_path / "none.db"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_lease_ttl_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "syncd.toml"
    body = f'[drivers.d]\ntype = "local"\nbucket = "{tmp_path}"\n\n[datasets.d]\ndriver = "d"\n'
    path.write_text(body)
    assert load_daemon_config(str(path)).daemon.lease_ttl == 60
    path.write_text("[daemon]\nlease_ttl = 5\n" + body)
    assert load_daemon_config(str(path)).daemon.lease_ttl == 5
    path.write_text("[daemon]\nlease_ttl = 0\n" + body)
    with pytest.raises(UsageError, match="lease_ttl"):
        load_daemon_config(str(path))
