"""The catalog store's contract, on both stores (sqlite file, PostgreSQL database).

What the layers above rely on and what could differ between engines: keys in code point
order (PostgreSQL's default collations do not sort that way), keyset pages and prefix bounds,
a batch that is all or nothing, leases that exactly one of several racing connections wins,
migrations that several workers may start at once, and clear errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from providers.config import DriverConfig
from syncd.reconcile.filters import Filters
from syncd.store import lease
from syncd.store.catalog import Batch, Catalog, Item
from syncd.store.checkpoint import Checkpoint
from syncd.store.db import transaction
from syncd.store.stamps import now
from tests.conftest import CatalogMaker

#: sorted by code point (the order providers list in); a locale collation would put "B"
#: after "a", "é" near "e", and ignore the "-"/"_"/" " differences
KEYS = sorted(["B", "a", "a b", "a-b", "a_b", "a/b", "e", "é", "z", "ü/x", "日本", "\U0001f600"])


def item(key: str, size: int = 1, etag: str = "e") -> Item:
    stamp = now()
    return Item(key, "/" + key, f"s3://bkt/{key}", size, etag, None, stamp, None, stamp, stamp)


def dataset(catalog: Catalog, name: str = "ds"):
    return catalog.create_dataset(
        name, "s3://bkt/", DriverConfig(type="s3", bucket="bkt"), Filters()
    )


def test_keys_come_back_in_code_point_order_in_keyset_pages(catalogs: CatalogMaker) -> None:
    catalog = catalogs()
    ds = dataset(catalog)
    with transaction(catalog.db):
        catalog.write_items(ds.id, [item(k) for k in reversed(KEYS)])
    assert [i.key for i in catalog.iter_items(ds.id, page=5)] == KEYS
    assert [r[0] for page in catalog.iter_known_rows(ds.id, page=4) for r in page] == KEYS
    # range and prefix bounds are byte/code point comparisons, never LIKE
    assert [r[0] for r in catalog.known_range(ds.id, "a", "e")] == ["a b", "a-b", "a/b", "a_b", "e"]
    assert [i.key for i in catalog.iter_items(ds.id, prefix="a")] == [
        "a",
        "a b",
        "a-b",
        "a/b",
        "a_b",
    ]
    assert catalog.count_items(ds.id, prefix="ü") == 1
    assert catalog.total_size(ds.id) == len(KEYS)
    assert [i.key for i in catalog.iter_items(ds.id, after="z")] == [
        "é",
        "ü/x",
        "日本",
        "\U0001f600",
    ]


def test_sample_keys_split_the_dataset_evenly(catalogs: CatalogMaker) -> None:
    catalog = catalogs()
    ds = dataset(catalog)
    keys = [f"k{i:04d}" for i in range(100)]
    with transaction(catalog.db):
        catalog.write_items(ds.id, [item(k) for k in keys])
    assert catalog.sample_keys(ds.id, 4) == ["k0024", "k0049", "k0074"]
    assert catalog.sample_keys(ds.id, 2, prefix="k009") == ["k0094"]  # k0090-k0099 in two


def test_a_batch_whose_lease_was_lost_writes_nothing(catalogs: CatalogMaker) -> None:
    catalog = catalogs()
    ds = dataset(catalog)
    with transaction(catalog.db):
        assert lease.acquire(catalog.db, lease.for_dataset(ds.id), "me:1:a") is None
        run = Checkpoint(catalog.db).begin(ds.id, "fp", "me:1:a")
    row = (ds.id, "k", "/k", "s3://bkt/k", 1, "e", None, now(), None, now(), now(), "{}", None)
    batch = Batch(ds.id, run, "me:1:a", rows=[row], row_seqs=[0])
    run.resume_key = "k"
    assert catalog.commit_batch(batch)
    assert [i.key for i in catalog.iter_items(ds.id)] == ["k"]
    # another worker took the lease over (ours expired): our next batch must not land
    with transaction(catalog.db):
        catalog.db.execute("UPDATE leases SET owner = 'other:2:b'")
    later = (ds.id, "l", "/l", "s3://bkt/l", 1, "e", None, now(), None, now(), now(), "{}", None)
    run.resume_key = "l"
    assert not catalog.commit_batch(Batch(ds.id, run, "me:1:a", rows=[later], row_seqs=[0]))
    assert [i.key for i in catalog.iter_items(ds.id)] == ["k"]
    assert Checkpoint(catalog.db).unfinished(ds.id).resume_key == "k"


def test_of_connections_racing_for_a_lease_exactly_one_wins(catalogs: CatalogMaker) -> None:
    url = catalogs.new_url()
    setup = Catalog.open(url)
    ds = dataset(setup)
    setup.close()
    racers = 8
    start = threading.Barrier(racers)
    winners: list[str] = []

    def race(i: int) -> None:
        catalog = Catalog.open(url)
        try:
            start.wait()
            with transaction(catalog.db):
                # another host's owner id: a live holder is recognised by its expiry alone
                got = lease.acquire(catalog.db, lease.for_dataset(ds.id), f"host{i}:1:x")
            if got is None:
                winners.append(f"host{i}:1:x")
        finally:
            catalog.close()

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check = Catalog.open(url)
    try:
        holder = lease.holder(check.db, lease.for_dataset(ds.id))
    finally:
        check.close()
    assert len(winners) == 1
    assert holder is not None and holder.owner == winners[0]


def test_workers_starting_at_once_migrate_once(catalogs: CatalogMaker, tmp_path: Path) -> None:
    url = catalogs.new_url()
    if catalogs.store == "postgresql":
        # an empty database, as a new deployment has
        c = Catalog.open(url)
        tables = [r[0] for r in c.db.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()]  # fmt: skip
        with transaction(c.db):
            for table in tables:
                c.db.execute(f"DROP TABLE {table} CASCADE")
        c.close()
    else:
        url = str(tmp_path / "fresh.db")
    env = {**os.environ, "SYNCD_DB": url}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "db", "migrate", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outs]
    catalog = Catalog.open(url)
    try:
        names = [r[0] for r in catalog.db.execute("SELECT name FROM _syncd_migrations").fetchall()]
        assert sorted(names) == sorted(n for n, _ in catalog.db.migrations)
        assert catalog.list_datasets() == []
    finally:
        catalog.close()


def test_an_unreachable_server_is_one_line_without_the_password(tmp_path: Path) -> None:
    # a closed port on loopback; the password must not be printed anywhere
    proc = subprocess.run(
        [sys.executable, "-m", "syncd.cli", "items", "ls", "--dataset", "x", "--db",
         "postgresql://syncd:s3cret-pass-word@127.0.0.1:1/syncd"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("syncd: error: cannot reach catalog"), lines
    assert "s3cret-pass-word" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_a_database_without_tables_is_refused_by_readers(postgres_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "syncd.cli", "datasets", "ls", "--db", postgres_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "has no syncd tables yet" in proc.stderr and "syncd db migrate" in proc.stderr


def test_the_config_names_the_catalog(postgres_url: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("a")
    config = tmp_path / "syncd.toml"
    config.write_text(
        f'[catalog]\nurl = "{postgres_url}"\n'
        f'[drivers.d]\ntype = "local"\nbucket = "{src}"\n'
        '[datasets.ds]\ndriver = "d"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "SYNCD_DB"}
    proc = subprocess.run(
        [sys.executable, "-m", "syncd.cli", "sync", "--config", str(config)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "syncd.db").exists()
    catalog = Catalog.open_reader(postgres_url)
    try:
        ds = catalog.get_dataset("ds")
        assert [i.key for i in catalog.iter_items(ds.id)] == ["sub/a.txt"]
    finally:
        catalog.close()


def sync_with_catalog_url(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    """``syncd sync --config`` of a file whose ``[catalog] url`` is ``url``."""
    config = tmp_path / "syncd.toml"
    config.write_text(
        f'[catalog]\nurl = "{url}"\n'
        f'[drivers.d]\ntype = "local"\nbucket = "{tmp_path}"\n[datasets.ds]\ndriver = "d"\n'
    )
    return subprocess.run(
        [sys.executable, "-m", "syncd.cli", "sync", "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip


def test_a_password_in_the_config_is_refused(tmp_path: Path) -> None:
    proc = sync_with_catalog_url(tmp_path, "postgresql://u:hunter2hunter2@db/syncd")
    assert proc.returncode == 2
    assert "PGPASSWORD" in proc.stderr and "hunter2hunter2" not in proc.stderr


@pytest.mark.parametrize("text", ["mysql://db/x", "redis://h"])
def test_an_unknown_catalog_scheme_in_the_config_is_refused(tmp_path: Path, text: str) -> None:
    proc = sync_with_catalog_url(tmp_path, text)
    assert proc.returncode == 2
    assert "catalog.url" in proc.stderr and "postgresql://" in proc.stderr


def test_key_lists_are_looked_up_by_primary_key_on_sqlite(tmp_path: Path) -> None:
    """A list of keys (a listing's parked deletes, a bulk edit's keys) is one primary-key
    lookup per key, never a walk of the dataset: with a plain JOIN, sqlite walked every item
    in key order and probed the list per row (a 1% churn re-sync of 100,000 items took 8x as
    long). Checked on the plans of the statements the two callers run."""
    from syncd.store import edits
    from syncd.store.sql import item_rows

    catalog = Catalog.open(str(tmp_path / "c.db"))
    ds = catalog.create_dataset(
        "ds", "file:///nowhere/", DriverConfig(type="local", bucket="/nowhere"), Filters()
    )
    stamp = now()
    rows = [
        Item(f"k{i:05d}", "/", "u", 1, "e", None, stamp, None, stamp, stamp) for i in range(3000)
    ]
    with transaction(catalog.db):
        catalog.write_items(ds.id, rows, source="listing")
    seen: list[str] = []
    catalog.db.conn.set_trace_callback(seen.append)
    wanted = [f"k{i:05d}" for i in range(0, 3000, 6)]  # 500 keys: a full list
    assert [r[1] for r in item_rows(catalog.db, ds.id, [*wanted, "nope"])] == wanted
    found, _ = edits.Selection.of(wanted).page(catalog, ds.id, None, columns="t.key", lock=False)
    assert [r[0] for r in found] == wanted
    catalog.db.conn.set_trace_callback(None)
    lookups = [sql for sql in seen if "wanted(k)" in sql]
    assert len(lookups) == 3  # two lists of item_rows (500 keys, then "nope"), one of page
    for sql in lookups:
        plan = " | ".join(r[3] for r in catalog.db.execute("EXPLAIN QUERY PLAN " + sql))
        assert "SEARCH t USING PRIMARY KEY (dataset_id=? AND key=?)" in plan, plan
    catalog.close()
