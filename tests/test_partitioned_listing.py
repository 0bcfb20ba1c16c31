"""Listing as concurrent key ranges (syncd.reconcile.partition) yields exactly the serial
listing, on every backend: boundaries that are keys, keys just below a boundary, unicode keys;
and a partitioned sync that fails part-way resumes to the same dataset."""

from __future__ import annotations

from pathlib import Path

from providers import Driver, open_driver
from syncd.reconcile import partition
from tests.conftest import Backend, dataset_state
from tests.test_conformance import populate
from tests.test_sync_cli import summary, syncd

KEYS = [
    "a/1.txt",
    "a/2.txt",
    "a-sibling.txt",  # sorts before "a/"
    "b.txt",  # just below the boundary "b/"
    "b/x",
    "b/y/z",
    "c/ü.txt",
    "ü/1",
    "ü/2",
    "日本/一.txt",
    "日本/二.txt",
    "日本語.txt",
    "z",
]


async def keys_of(pages) -> list[str]:
    return [o.key async for _, page in pages for o in page]


async def serial(driver: Driver, start_after: str | None = None) -> list[str]:
    return [o.key async for page in driver.list("", start_after=start_after) for o in page]


async def test_ranges_yield_exactly_the_serial_listing(backend: Backend) -> None:
    bucket = backend.new_bucket()
    # a bucket can hold "b" beside "b/x" (a folder cannot): a key equal to a boundary below
    keys = KEYS if backend.name == "local" else [*KEYS, "b"]
    async with open_driver(backend.config(bucket, page_size=2)) as driver:
        await populate(driver, keys)
        expected = await serial(driver)
        assert expected == sorted(keys)
        folders = await driver.folders("")
        assert folders == ["a/", "b/", "c/", "ü/", "日本/"]
        # boundaries from the folders, and boundaries that are keys themselves
        for bounds in (
            partition.spread(folders, 4),
            ["b", "b/x", "ü/2", "日本語.txt"],
            [KEYS[0], "z"],
        ):
            assert bounds
            got = await keys_of(partition.pages(driver, "", None, bounds, depth=1))
            assert got == expected, bounds
            # resuming after a key: only what follows it, whichever range it falls in
            for cut in (3, 5, 9):
                resumed = [b for b in bounds if b > expected[cut]]
                got = await keys_of(partition.pages(driver, "", expected[cut], resumed))
                assert got == expected[cut + 1 :], (bounds, cut)


def make_tree(root: Path, folders: int, per: int) -> None:
    for f in range(folders):
        d = root / f"f{f:02d}"
        d.mkdir(parents=True)
        for i in range(per):
            (d / f"{i:04d}-ü.bin").write_bytes(b"x" * (i % 13))


def test_partitioned_sync_fails_part_way_then_resumes(tmp_path: Path) -> None:
    src, db = tmp_path / "src", str(tmp_path / "c.db")
    make_tree(src, 24, 100)
    args = ("sync", str(src), "--dataset", "ds", "--db", db, "--list-concurrency", "8", "--json")
    # the fault budget is per listing call, i.e. per key range: below one folder's 100 files,
    # as ranges are as small as one folder with 8 ranges per stream
    failed = syncd(*args, env={"SYNCD_FAULT_LIST_FAIL_AFTER": "50", "SYNCD_RETRY_ATTEMPTS": "1"})
    assert failed.returncode == 1
    assert 0 < len(dataset_state(db)) < 2400
    resumed = summary(syncd(*args))
    assert resumed["resumed_after"] is not None and resumed["deleted"] == 0
    expected = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    assert set(dataset_state(db)) == expected
    idle = summary(syncd(*args))  # boundaries now come from the catalog's keys
    assert (idle["created"], idle["updated"], idle["deleted"], idle["unchanged"]) == (
        0,
        0,
        0,
        2400,
    )


def test_partitioned_resync_of_a_churned_source(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    summary(syncd("sync", "bench://5000", "--dataset", "b", "--db", db, "--json"))
    churn = summary(
        syncd(
            "sync",
            "--dataset",
            "b",
            "--db",
            db,
            "--list-concurrency",
            "16",
            "--json",
            env={"SYNCD_BENCH_ROUND": "1"},
        )
    )
    assert (churn["created"], churn["updated"], churn["deleted"]) == (50, 50, 50)
    assert churn["listed"] == 5000
