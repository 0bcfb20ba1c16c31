"""Issue 21: what ``syncd pull`` and ``syncd push`` must never do, and what they must say.

* the catalog (and its sidecar files) is never written, replaced or removed by a transfer;
* a symbolic link loop is skipped and counted by sync, push and pull, never an error;
* a file name holding ``\\`` round-trips on every backend (Azure: refused, with the name it
  would get), so push and sync converge;
* ``a`` beside ``a/b`` is a refusal (permanent), not a retryable failure;
* names of 245-255 bytes are pulled and put (the temp name fits);
* a folder marker holding bytes is counted and named, not dropped;
* an object gone since the last sync says so, and ``pull --sync`` fixes it;
* ``pull --prefix`` is a key prefix, as in ``items ls``;
* dry runs and ``-v`` list each file (``+``/``~``/``-`` KEY).

Every test goes through the command against the real emulators (``backend`` fixture).
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from providers import open_driver
from providers.base import ObjectInfo
from providers.local import TMP_SUFFIX, LocalDriver
from syncd.transfer.paths import UnsafePath
from syncd.transfer.pull import _finish
from tests.conftest import Backend, dataset_state
from tests.test_pull_push import PREFIX, syncd, synced, tree
from tests.test_sync_cli import summary
from tests.test_sync_cli import syncd as run_syncd

CATALOG_FILES = ("syncd.db", "syncd.db-wal", "syncd.db-shm", "syncd.db-journal")


def lines(proc: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines()]


def last_summary(proc: subprocess.CompletedProcess[str]) -> dict:
    """The summary of a run that may have exited 1 (refused or failed files)."""
    return lines(proc)[-1]["summary"]


def problems(proc: subprocess.CompletedProcess[str], kind: str) -> dict[str, str]:
    return {line[kind]: line["reason"] for line in lines(proc) if kind in line}


def catalog_readable(db: Path) -> None:
    proc = run_syncd("datasets", "ls", "--db", str(db), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "ds" in {json.loads(line)["name"] for line in proc.stdout.splitlines()}


# -- 1. the catalog is never written over ----------------------------------------------------


@pytest.mark.parametrize("backend", ["local", "s3"], indirect=True)
async def test_pull_refuses_objects_named_like_its_own_catalog(
    backend: Backend, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    db = out / "syncd.db"  # the catalog lives in the folder pulled into
    files = {name: b"not a database" for name in CATALOG_FILES} | {"a.txt": b"a"}
    await synced(backend, files, db)
    for extra in ([], ["--delete"]):
        proc = syncd("pull", "--dataset", "ds", str(out), "--db", str(db), *extra, env=backend.env)
        assert proc.returncode == 1, proc.stderr
        refused = problems(proc, "refused")
        # a folder dataset's keys are relative to its folder (PREFIX included)
        prefix = "" if backend.name == "local" else PREFIX
        assert set(refused) == {prefix + name for name in CATALOG_FILES}
        assert all("syncd's own catalog file" in why for why in refused.values())
        result = last_summary(proc)
        assert (result["refused"], result["failed"], result["removed"]) == (4, 0, 0)
        assert (out / "a.txt").read_bytes() == b"a"
        catalog_readable(db)
        assert b"not a database" not in db.read_bytes()


def test_push_never_writes_over_or_deletes_a_catalog_in_the_folder_dataset(
    tmp_path: Path,
) -> None:
    """A folder dataset whose folder holds the catalog: the objects ``syncd.db`` (and its
    sidecars) are the catalog's files, so a push neither replaces nor deletes them."""
    bucket, src, cfg = tmp_path / "bucket", tmp_path / "src", tmp_path / "syncd.toml"
    bucket.mkdir()
    src.mkdir()
    (bucket / "a.txt").write_bytes(b"a")
    db = bucket / "syncd.db"
    cfg.write_text(
        f'[drivers.d]\ntype = "local"\nbucket = "{bucket}"\nallow_external_delete = true\n\n'
        '[datasets.ds]\ndriver = "d"\n'
    )
    summary(syncd("sync", "--config", str(cfg), "--dataset", "ds", "--db", str(db)))
    assert "syncd.db" in dataset_state(str(db))  # the folder's own files are its items

    (src / "a.txt").write_bytes(b"a")
    (src / "syncd.db").write_bytes(b"not a database")
    (src / "syncd.db-wal").write_bytes(b"not a log")
    proc = syncd("push", str(src), "--dataset", "ds", "--db", str(db))
    assert proc.returncode == 1, proc.stderr
    refused = problems(proc, "refused")
    assert set(refused) == {"syncd.db", "syncd.db-wal"}
    assert all("syncd's own catalog file" in why for why in refused.values())
    catalog_readable(db)

    (src / "syncd.db").unlink()
    (src / "syncd.db-wal").unlink()
    proc = syncd("push", str(src), "--dataset", "ds", "--db", str(db), "--delete")
    assert proc.returncode == 1, proc.stderr
    refused = problems(proc, "refused")
    assert "syncd.db" in refused and set(refused) <= set(CATALOG_FILES)
    assert last_summary(proc)["removed"] == 0
    catalog_readable(db)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_catalog_in_the_folder_pushed_is_skipped_and_said(
    backend: Backend, tmp_path: Path
) -> None:
    bucket = backend.new_bucket()
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    db = src / "syncd.db"
    summary(syncd("sync", bucket, "--dataset", "ds", "--db", str(db)))
    proc = syncd("push", str(src), "--dataset", "ds", "--db", str(db))
    result = summary(proc)
    # the catalog and whichever of its sidecars exist while it is open
    assert result["transferred"] == 1 and 1 <= result["skipped"] <= 4
    assert "'syncd.db': syncd's own catalog file, never pushed" in proc.stderr
    assert sorted(os.listdir(bucket)) == ["a.txt"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_link_of_another_name_to_the_catalog_is_not_pushed(
    backend: Backend, tmp_path: Path
) -> None:
    """A symbolic link named otherwise (``snap.db -> catalog``) is the catalog all the same."""
    bucket = backend.new_bucket()
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    db = src / "c.db"  # in the folder pushed: a link inside it is listed like a file
    summary(syncd("sync", bucket, "--dataset", "ds", "--db", str(db)))
    os.symlink("c.db", src / "snap.db")
    proc = syncd("push", str(src), "--dataset", "ds", "--db", str(db))
    assert summary(proc)["transferred"] == 1
    assert "'snap.db': syncd's own catalog file, never pushed" in proc.stderr
    assert sorted(os.listdir(bucket)) == ["a.txt"]


# -- 2. symbolic link loops ------------------------------------------------------------------


def loop(folder: Path) -> None:
    """Two links pointing at each other: any stat through them fails with ELOOP."""
    folder.mkdir(parents=True, exist_ok=True)
    os.symlink("l1", folder / "l2")
    os.symlink("l2", folder / "l1")


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_symlink_loop_is_skipped_by_sync_push_and_pull(backend: Backend, tmp_path: Path) -> None:
    src = tmp_path / "s"
    loop(src)
    (src / "a.txt").write_bytes(b"a")
    db = tmp_path / "c.db"
    for _ in range(2):  # every run, not only the first
        proc = syncd("sync", str(src), "--dataset", "ds", "--db", str(db))
        result = summary(proc)
        assert (result["created"] + result["unchanged"], result["skipped"]) == (1, 2)
        assert "symbolic link loop" in proc.stderr

    bucket = backend.new_bucket()
    summary(syncd("sync", bucket, "--dataset", "up", "--db", str(db)))
    proc = syncd("push", str(src), "--dataset", "up", "--db", str(db))
    result = summary(proc)
    assert (result["transferred"], result["skipped"]) == (1, 2)
    assert os.listdir(bucket) == ["a.txt"]

    out = tmp_path / "out"
    loop(out)
    proc = syncd("pull", "--dataset", "ds", str(out), "--db", str(db), "--delete")
    result = summary(proc)
    assert (result["transferred"], result["skipped"], result["removed"]) == (1, 2, 0)
    assert (out / "a.txt").read_bytes() == b"a"
    assert os.path.islink(out / "l1") and os.path.islink(out / "l2")


# -- 3. a backslash in a file name -----------------------------------------------------------


async def test_a_backslash_name_round_trips_push_sync_push(
    backend: Backend, tmp_path: Path
) -> None:
    bucket = backend.new_bucket()
    db, src = tmp_path / "c.db", tmp_path / "src"
    src.mkdir()
    (src / "back\\slash.txt").write_bytes(b"backslash")
    (src / "plain.txt").write_bytes(b"plain")
    if backend.name == "local":
        Path(bucket, "up").mkdir()
    summary(syncd("sync", backend.source(bucket, "up/"), "--dataset", "ds", "--db", str(db),
                  env=backend.env))  # fmt: skip
    strip = "up/" if backend.name == "local" else ""
    azure = backend.name == "azure"

    async def dataset_equals_bucket() -> None:
        async with open_driver(backend.config(bucket)) as driver:
            listed = {o.key: (o.size, o.etag) async for page in driver.list("up/") for o in page}
        assert {strip + k: v for k, v in dataset_state(str(db)).items()} == listed
        want = {"up/plain.txt"} if azure else {"up/plain.txt", "up/back\\slash.txt"}
        assert set(listed) == want

    def push(sent: int) -> None:
        proc = syncd("push", str(src), "--dataset", "ds", "--db", str(db), env=backend.env)
        result = last_summary(proc)
        assert (result["transferred"], result["extra"]) == (sent, 0), proc.stderr
        if azure:
            assert proc.returncode == 1
            assert problems(proc, "refused") == {
                "up/back\\slash.txt": "Azure Blob stores '\\' as '/': this file would become "
                "'up/back/slash.txt', another name, and never match its item; rename the file"
            }
        else:
            assert proc.returncode == 0, proc.stderr
            assert result["up_to_date"] == 2 - sent

    push(1 if azure else 2)
    await dataset_equals_bucket()
    resync = summary(syncd("sync", "--dataset", "ds", "--db", str(db), env=backend.env))
    assert (resync["created"], resync["updated"], resync["deleted"]) == (0, 0, 0)
    await dataset_equals_bucket()
    push(0)
    await dataset_equals_bucket()


# -- 4. a key beside a folder of the same name -----------------------------------------------


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
async def test_a_key_beside_a_folder_of_the_same_name_is_refused_for_good(
    backend: Backend, tmp_path: Path
) -> None:
    db = tmp_path / "c.db"
    await synced(backend, {"a": b"file a", "a/b": b"file b"}, db)
    # one at a time: "a" (sorted first) is written, then "a/b" finds a file for its folder
    out = tmp_path / "out"
    for _ in range(2):
        proc = syncd("pull", "--dataset", "ds", str(out), "--db", str(db), "--jobs", "1",
                     env=backend.env)  # fmt: skip
        assert proc.returncode == 1
        refused = problems(proc, "refused")
        assert list(refused) == [PREFIX + "a/b"]
        assert refused[PREFIX + "a/b"].startswith("file/folder conflict: ")
        assert last_summary(proc)["failed"] == 0
    assert tree(out) == {"a": b"file a"}

    # a folder "a" already there (an earlier pull, or the user's): "a" can never land
    other = tmp_path / "other"
    (other / "a").mkdir(parents=True)
    for _ in range(2):
        proc = syncd("pull", "--dataset", "ds", str(other), "--db", str(db), env=backend.env)
        assert proc.returncode == 1
        refused = problems(proc, "refused")
        assert list(refused) == [PREFIX + "a"]
        assert refused[PREFIX + "a"].startswith("file/folder conflict: a folder stands")
        assert last_summary(proc)["failed"] == 0
        assert "retry the failed" not in proc.stderr
    assert tree(other) == {"a/b": b"file b"}


def test_a_folder_made_while_a_file_downloaded_is_a_refusal(tmp_path: Path) -> None:
    """The race of the two: ``a/b``'s folder made after ``a``'s temp file, before its rename."""
    tmp = tmp_path / ".a.syncd-tmp"
    (tmp_path / "a").mkdir()
    out = open(tmp, "wb")  # noqa: SIM115 - _finish closes it
    out.write(b"abc")
    info = ObjectInfo("a", 3, "e", datetime.now(UTC))
    with pytest.raises(UnsafePath, match="file/folder conflict"):
        _finish(out, str(tmp), str(tmp_path / "a"), info)


# -- 5. long names ---------------------------------------------------------------------------

LONG = {
    "x" * 245: b"245",
    "é" * 127 + "y": b"255 bytes of UTF-8",  # 127 * 2 + 1
    "d/" + "z" * 255: b"255",
}


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
async def test_names_up_to_255_bytes_are_pulled(backend: Backend, tmp_path: Path) -> None:
    assert max(len(os.fsencode(k.split("/")[-1])) for k in LONG) == 255
    db, out = tmp_path / "c.db", tmp_path / "out"
    await synced(backend, LONG, db)
    result = summary(syncd("pull", "--dataset", "ds", str(out), "--db", str(db), env=backend.env))
    assert (result["transferred"], result["failed"]) == (len(LONG), 0)
    assert tree(out) == LONG  # and no temp file left


async def test_the_folder_driver_puts_names_up_to_255_bytes(tmp_path: Path) -> None:
    driver = LocalDriver(str(tmp_path))
    for key, data in LONG.items():
        await driver.put(key, data)
        await driver.upload(key, str(tmp_path / key))
    (tmp_path / ("." + "0" * 40 + TMP_SUFFIX)).write_bytes(b"a temp file of a long name")
    listed = {o.key async for page in driver.list() for o in page}
    assert listed == set(LONG)
    assert {k: await driver.read(k) for k in LONG} == LONG


# -- 6. a folder marker holding bytes --------------------------------------------------------


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
async def test_a_folder_marker_with_content_is_counted_and_named(
    backend: Backend, tmp_path: Path
) -> None:
    db, out = tmp_path / "c.db", tmp_path / "out"
    await synced(backend, {"raw/dir/": b"8 bytes!", "raw/dir/f.txt": b"f", "empty/": b""}, db)
    proc = syncd("pull", "--dataset", "ds", str(out), "--db", str(db), env=backend.env)
    result = summary(proc)
    assert (result["transferred"], result["skipped"]) == (1, 1)
    assert f"skipped '{PREFIX}raw/dir/': a folder marker holding 8 bytes" in proc.stderr
    assert "empty/" not in proc.stderr  # an empty marker is just a folder
    human = run_syncd("pull", "--dataset", "ds", str(out), "--db", str(db), env=backend.env)
    assert human.returncode == 0 and "1 skipped" in human.stdout


# -- 7. a stale catalog ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["s3", "local"], indirect=True)
async def test_an_object_gone_since_the_sync_says_so_and_pull_sync_fixes_it(
    backend: Backend, tmp_path: Path
) -> None:
    db, out = tmp_path / "c.db", tmp_path / "out"
    bucket = await synced(backend, {"a.txt": b"a", "b.txt": b"b"}, db)
    async with open_driver(backend.config(bucket)) as driver:
        await driver.delete(PREFIX + "b.txt")
    gone = "b.txt" if backend.name == "local" else PREFIX + "b.txt"
    proc = syncd("pull", "--dataset", "ds", str(out), "--db", str(db), env=backend.env)
    assert proc.returncode == 1
    assert problems(proc, "failed") == {
        gone: "gone from the bucket since the last sync of the dataset (the catalog is stale): "
        "run `syncd sync --dataset ds`, or pull with --sync"
    }
    assert last_summary(proc)["gone"] == 1
    assert "run it again to retry" not in proc.stderr
    assert (
        "1 of the failed left the bucket since the last sync: run `syncd sync --dataset ds` "
        f"then pull again, or in one go `syncd pull --sync --dataset ds {out}`" in proc.stderr
    )

    result = summary(
        syncd("pull", "--dataset", "ds", str(out), "--db", str(db), "--sync", env=backend.env)
    )
    assert (result["failed"], result["up_to_date"]) == (0, 1)
    assert tree(out) == {"a.txt": b"a"}
    assert len(dataset_state(str(db))) == 1


# -- 8. --prefix is a key prefix -------------------------------------------------------------


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
async def test_pull_prefix_is_the_object_key_as_in_items_ls(
    backend: Backend, tmp_path: Path
) -> None:
    db, out = tmp_path / "c.db", tmp_path / "out"
    await synced(backend, {"raw/2026/a": b"a", "raw/2026/b": b"bb", "raw/2025/c": b"c"}, db)
    listed = run_syncd("items", "count", "--dataset", "ds", "--db", str(db), "--prefix",
                       PREFIX + "raw/2026/")  # fmt: skip
    assert listed.stdout.strip() == "2"
    plan = summary(syncd("pull", "--dataset", "ds", str(out), "--db", str(db), "--dry-run",
                         "--prefix", PREFIX + "raw/2026/", env=backend.env))  # fmt: skip
    assert (plan["transferred"], plan["bytes"]) == (2, 3)
    done = summary(syncd("pull", "--dataset", "ds", str(out), "--db", str(db),
                         "--prefix", PREFIX + "raw/2026/", env=backend.env))  # fmt: skip
    assert tree(out) == {"raw/2026/a": b"a", "raw/2026/b": b"bb"} and done["transferred"] == 2

    # a prefix outside the driver path selects nothing, and says so once
    proc = syncd("pull", "--dataset", "ds", str(out), "--db", str(db), "--dry-run",
                 "--prefix", "raw/2026/", env=backend.env)  # fmt: skip
    assert summary(proc)["transferred"] == 0
    warned = [line for line in proc.stderr.splitlines() if "--prefix" in line]
    assert len(warned) == 1 and "driver path 'data/'" in warned[0]


# -- 9. dry runs and -v name each file -------------------------------------------------------


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_dry_run_and_verbose_list_each_file(backend: Backend, tmp_path: Path) -> None:
    bucket = Path(backend.new_bucket())
    for rel, data in {"new.txt": b"n", "changed.txt": b"bucket", "same.txt": b"s"}.items():
        (bucket / rel).write_bytes(data)
    db, out = tmp_path / "c.db", tmp_path / "out"
    summary(syncd("sync", str(bucket), "--dataset", "ds", "--db", str(db)))
    summary(syncd("pull", "--dataset", "ds", str(out), "--db", str(db)))
    (out / "new.txt").unlink()
    (out / "changed.txt").write_bytes(b"local!!")
    (out / "extra.txt").write_bytes(b"x")

    args = ("pull", "--dataset", "ds", str(out), "--db", str(db), "--delete")
    human = run_syncd(*args, "--dry-run")
    assert human.returncode == 0, human.stderr
    planned = human.stdout.splitlines()
    assert planned[:3] == ["~ changed.txt", "- extra.txt", "+ new.txt"]
    assert "would have downloaded" in planned[3] and "MB/s" not in planned[3]
    as_json = run_syncd(*args, "--dry-run", "--json")
    assert lines(as_json)[:3] == [
        {"action": "~", "key": "changed.txt"},
        {"action": "-", "key": "extra.txt"},
        {"action": "+", "key": "new.txt"},
    ]
    quiet = run_syncd(*args)  # no -v: counts only
    assert quiet.returncode == 0 and len(quiet.stdout.splitlines()) == 1
    (out / "new.txt").unlink()
    verbose = run_syncd("-v", *args)
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stdout.splitlines()[:1] == ["+ new.txt"]

    (out / "pushed.txt").write_bytes(b"p")
    push = run_syncd("push", str(out), "--dataset", "ds", "--db", str(db), "--dry-run")
    assert push.returncode == 0, push.stderr
    assert push.stdout.splitlines()[0] == "+ pushed.txt"
