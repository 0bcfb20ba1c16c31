"""A pull of recorded items (``syncd pull --snapshot``): exactly the recorded bytes, or a clear
failure per object, on every backend.

The pinned tests take a dataset's items right after a sync (what a snapshot freezes), change
the bucket (overwrite, delete, add), sync again, and pull the pinned items. What each emulator
keeps is in ``tests/test_versioned_downloads.py``: moto and fake-gcs-server keep versions when
the bucket's versioning is on; Azurite and a folder never do.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from providers import open_driver
from syncd import api
from syncd.store.catalog import Catalog, Item
from syncd.transfer.pull import Pull
from tests.conftest import Backend, CatalogMaker
from tests.test_pull_push import PREFIX, put_all, syncd, tree
from tests.test_sync_cli import summary
from tests.test_sync_cli import syncd as run_syncd
from tests.test_versioned_downloads import VERSIONED, versioned_bucket

ORIGINAL = {
    "keep.txt": b"kept as it was\n",
    "over/written.bin": b"the recorded bytes",
    "deleted.txt": b"recorded, then deleted",
    "same-size.txt": b"AAAA",
    "ünï/日本.txt": "こんにちは".encode(),
}


#: what history() changes after the record (relative to PREFIX); "added.txt" is new
CHANGED = ("over/written.bin", "same-size.txt", "deleted.txt")


def md5s(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.md5(v).hexdigest() for k, v in files.items()}


async def history(
    backend: Backend,
    db: Path | str,
    *,
    versioned: bool,
    snapshot: str | None = None,
    s3_versions: bool = False,
) -> tuple[str, list[Item]]:
    """A bucket holding ORIGINAL under PREFIX, synced into dataset ``ds``; its items as
    recorded then (and, with ``snapshot``, ``syncd snapshot create`` of that tag); the bucket
    then changed (one overwritten, one deleted, one of the same size rewritten, one added)
    and synced again. Returns the bucket and the recorded items. ``s3_versions``: the
    dataset's S3 driver is declared ``versioned = true`` (a syncd.toml), so its items record
    VersionIds (else an S3 listing states none)."""
    bucket = versioned_bucket(backend) if versioned else backend.new_bucket()
    async with open_driver(backend.config(bucket)) as driver:
        await put_all(driver, ORIGINAL)
        if s3_versions:
            config = Path(str(db) + ".toml") if "://" not in str(db) else None
            config = config or Path(backend.tmp) / f"{bucket}.toml"
            config.write_text(
                f'[drivers.d]\ntype = "s3"\nbucket = "{bucket}"\npath = "{PREFIX}"\n'
                f'endpoint = "{backend.emulator.url}"\nversioned = true\n\n'
                '[datasets.ds]\ndriver = "d"\n'
            )
            args = ["sync", "--config", str(config), "--dataset", "ds", "--db", str(db)]
        else:
            args = ["sync", backend.source(bucket, PREFIX), "--dataset", "ds", "--db", str(db)]
        summary(syncd(*args, env=backend.env))
        if snapshot is not None:
            made = syncd("snapshot", "create", "--dataset", "ds", "--db", str(db), snapshot)
            assert made.returncode == 0, made.stderr
        catalog = Catalog.open(str(db))
        try:
            recorded = list(catalog.iter_items(catalog.get_dataset("ds").id))
        finally:
            catalog.close()
        if backend.name == "local":
            # a folder's ETag is size and mtime: make the rewrites visible whatever the clock
            for rel in ("over/written.bin", "same-size.txt"):
                os.utime(Path(bucket) / PREFIX / rel, ns=(10**9, 10**9))
        await driver.put(PREFIX + "over/written.bin", b"new bytes, another size")
        await driver.put(PREFIX + "same-size.txt", b"BBBB")
        await driver.delete(PREFIX + "deleted.txt")
        await driver.put(PREFIX + "added.txt", b"not in the record")
    summary(syncd(*args, env=backend.env))
    return bucket, recorded


async def pull_recorded(
    backend: Backend,
    db: Path,
    folder: Path,
    recorded: list[Item],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[object, list[tuple[str, str, str]]]:
    """Pull ``recorded`` as a snapshot's items into ``folder`` (in this process: the
    backend's environment set here too). Returns the result and the problems reported."""
    for name, value in backend.env.items():
        monkeypatch.setenv(name, value)
    problems: list[tuple[str, str, str]] = []
    catalog = Catalog.open(str(db))
    try:
        dataset = catalog.get_dataset("ds")
        folder.mkdir(exist_ok=True)
        async with api.open_dataset_driver(dataset) as driver:
            pull = Pull(
                catalog,
                dataset,
                driver,
                str(folder),
                snapshot="t1",
                items=lambda prefix: (i for i in recorded if i.key.startswith(prefix)),
                on_problem=lambda kind, key, reason: problems.append((kind, key, reason)),
            )
            result = await pull.run()
    finally:
        catalog.close()
    return result, problems


@pytest.mark.parametrize("backend", VERSIONED, indirect=True)
async def test_pull_of_recorded_items_brings_the_recorded_bytes_back(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Versioned buckets (moto, fake-gcs-server): every recorded object comes back with the
    checksum it had when recorded, overwritten and deleted ones too, and nothing added since.
    Without versions (Azurite, a folder: nothing to read old bytes from), the next test."""
    db = tmp_path / "c.db"
    _, recorded = await history(backend, db, versioned=True)
    out = tmp_path / "out"
    result, problems = await pull_recorded(backend, db, out, recorded, monkeypatch)
    assert problems == []
    assert result.ok and result.counts["transferred"] == len(ORIGINAL)
    assert md5s(tree(out)) == md5s(ORIGINAL)
    # a second pull proves every file in place (records), fetching nothing
    again, _ = await pull_recorded(backend, db, out, recorded, monkeypatch)
    assert again.counts["transferred"] == 0
    assert again.counts["up_to_date"] == len(ORIGINAL)


async def test_pull_of_recorded_items_without_versions_fails_the_changed_ones(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unversioned bucket (every backend): the overwritten, rewritten and deleted objects
    fail with one line each naming the key and why; nothing is written under their names
    (nor left as a temp file); the unchanged ones arrive."""
    db = tmp_path / "c.db"
    _, recorded = await history(backend, db, versioned=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "same-size.txt").write_bytes(b"BBBB")  # the live bytes, same size: not proven
    result, problems = await pull_recorded(backend, db, out, recorded, monkeypatch)
    key_of = {i.filename[1:]: i.key for i in recorded}  # keys lack PREFIX in a folder's
    failed = {key: reason for kind, key, reason in problems if kind == "failed"}
    changed = {key_of[k] for k in ("over/written.bin", "same-size.txt", "deleted.txt")}
    assert set(failed) == changed
    for key in changed:
        if backend.name == "gcs":  # every record names a generation, gone without versioning
            assert "generation" in failed[key] and "gone from the bucket" in failed[key]
        elif key == key_of["deleted.txt"]:
            assert "deleted since it was recorded" in failed[key]
        else:
            assert "changed since it was recorded" in failed[key]
    assert all("\n" not in reason for reason in failed.values())
    assert not result.ok
    assert result.counts["gone"] == result.counts["failed"] == 3
    assert result.as_dict()["snapshot"] == "t1"
    kept = {k: v for k, v in ORIGINAL.items() if key_of[k] not in changed}
    # the file that was there stays as it was; no temp file is left behind
    assert tree(out) == {**kept, "same-size.txt": b"BBBB"}


# -- acceptance (issue 25): the command, on every backend and both stores ------------------


def _variants(backend: Backend) -> list[tuple[bool, bool]]:
    """(versioned bucket, S3 driver declared ``versioned = true``) of each run on ``backend``."""
    if backend.name == "s3":
        return [(True, True), (True, False), (False, False)]
    return [(True, False), (False, False)] if backend.name in VERSIONED else [(False, False)]


async def test_pull_snapshot_brings_back_the_snapshot_or_says_what_is_gone(
    backend: Backend, catalogs: CatalogMaker, tmp_path: Path
) -> None:
    """sync, ``snapshot create``, overwrite / rewrite / delete / add in the bucket, sync
    again, ``pull --snapshot``: on a versioned bucket (moto, fake-gcs-server) every file has
    the checksum it had at snapshot time (exit 0); on an unversioned one (every backend) the
    changed objects fail with one line each naming the key and why, exit 1, nothing is under
    their names, and the rest arrive."""
    for versioned, s3_versions in _variants(backend):
        db = catalogs.new_url()
        _, recorded = await history(
            backend, db, versioned=versioned, snapshot="t1", s3_versions=s3_versions
        )
        # recorded versions where the listing states them (GCS always, S3 when declared)
        assert all(i.version for i in recorded) == (backend.name == "gcs" or s3_versions)
        out = tmp_path / f"out-{versioned}-{s3_versions}"
        proc = run_syncd(
            "pull", str(out), "--dataset", "ds", "--db", db, "--snapshot", "t1", env=backend.env
        )
        changed = {i.key for i in recorded if i.filename[1:] in CHANGED}
        if versioned:
            assert proc.returncode == 0, proc.stderr
            assert md5s(tree(out)) == md5s(ORIGINAL)
            assert "pull of snapshot 't1' of dataset 'ds'" in proc.stdout
            continue
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.splitlines()
        failed = [line for line in lines if line.startswith("syncd: failed ")]
        assert sorted(failed) == sorted(
            line for line in failed if any(f"failed {k}: " in line for k in changed)
        )
        assert {k for k in changed if any(f"failed {k}: " in line for line in failed)} == changed
        assert len(failed) == len(changed)
        assert "Traceback" not in proc.stderr
        assert "no recorded bytes left in the bucket" in lines[-1]
        kept = {k: v for k, v in ORIGINAL.items() if k not in CHANGED}
        assert tree(out) == kept  # the rest arrived; nothing under a changed one's name


def test_pull_snapshot_refuses_an_unknown_tag_and_sync(tmp_path: Path) -> None:
    """An unknown tag, or --sync with --snapshot: one line, exit 2, no folder made."""
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "x.txt").write_bytes(b"x")
    db = str(tmp_path / "c.db")
    summary(syncd("sync", str(folder), "--dataset", "ds", "--db", db))
    for extra, message in (
        ([], "snapshot 'nope'"),
        (["--sync"], "--sync and --snapshot"),
    ):
        out = tmp_path / "out"
        proc = run_syncd("pull", str(out), "--dataset", "ds", "--db", db, "--snapshot", "nope",
                         *extra)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr
        assert not out.exists()
