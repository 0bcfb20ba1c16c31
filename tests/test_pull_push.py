"""``syncd pull`` and ``syncd push`` end to end, through the command, on every backend.

Requests are counted by a logging proxy in front of the emulator (``tests.proxy``), so "only the
difference moved" and "a second push uploads nothing" are what the service saw, not what syncd
says it did.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from providers import Driver, StorageError, open_driver
from providers.base import MULTIPART_THRESHOLD
from syncd.transfer.writer import RESERVE_FROM
from tests.conftest import Backend, dataset_state
from tests.proxy import FaultProxy
from tests.test_sync_cli import summary
from tests.test_sync_cli import syncd as run_syncd
from tests.waiting import wait_for

PREFIX = "data/"


def syncd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command with ``--json`` (its summary is what the tests read)."""
    return run_syncd(*args, "--json", env=env)


FILES = {
    "a.txt": b"alpha\n",
    "nested/deep/b.bin": bytes(range(256)) * 12,
    "ünïcødé/日本.txt": "こんにちは".encode(),
    "with space/c d.txt": b"spaces",
    "empty": b"",
    "same-size.txt": b"AAAA",
}


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (not following links) as {relative path: bytes}."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


async def put_all(driver: Driver, files: dict[str, bytes], prefix: str = PREFIX) -> None:
    for rel, data in files.items():
        await driver.put(prefix + rel, data)


async def synced(backend: Backend, files: dict[str, bytes], db: Path) -> str:
    """A new bucket holding ``files`` under PREFIX, synced into dataset ``ds`` of ``db``."""
    bucket = backend.new_bucket()
    async with open_driver(backend.config(bucket)) as driver:
        await put_all(driver, files)
    sync = syncd(
        "sync", backend.source(bucket, PREFIX), "--dataset", "ds", "--db", str(db), env=backend.env
    )
    summary(sync)
    return bucket


@pytest.fixture
def proxy(backend: Backend) -> Iterator[FaultProxy | None]:
    if backend.emulator is None:
        yield None
        return
    p = FaultProxy(backend.emulator.url)
    yield p
    p.close()


def proxied_env(backend: Backend, proxy: FaultProxy | None) -> dict[str, str]:
    """The CLI environment of ``backend`` with its requests sent through ``proxy``."""
    env = dict(backend.env)
    if proxy is None:
        return env
    if backend.name == "s3":
        env["AWS_ENDPOINT_URL"] = proxy.url
    elif backend.name == "gcs":
        env["STORAGE_EMULATOR_HOST"] = proxy.url
    else:
        conn = env["AZURE_STORAGE_CONNECTION_STRING"]
        env["AZURE_STORAGE_CONNECTION_STRING"] = conn.replace(backend.emulator.url, proxy.url)
    return env


def downloads(provider: str) -> Callable[[str], bool]:
    """Whether a logged request line reads an object's bytes (not a listing or metadata)."""

    def match(line: str) -> bool:
        method, _, path = line.partition(" ")
        if method != "GET":
            return False
        if provider == "s3":
            return "list-type=" not in path
        if provider == "gcs":
            return "alt=media" in path
        return "comp=" not in path and "restype=" not in path

    return match


def downloaded(proxy: FaultProxy, provider: str) -> int:
    """How many distinct objects the proxy saw read (Azure reads an empty blob with two
    GETs: a ranged one the service refuses, then a plain one)."""
    return len({line.split("?")[0] for line in proxy.requests_matching(downloads(provider))})


def writes(line: str) -> bool:
    return line.split(" ", 1)[0] in ("PUT", "POST", "DELETE")


async def test_pull_mirrors_then_moves_only_the_difference(
    backend: Backend, proxy: FaultProxy | None, tmp_path: Path
) -> None:
    bucket = backend.new_bucket()
    db, out = tmp_path / "c.db", tmp_path / "out"
    env = backend.env
    async with open_driver(backend.config(bucket)) as driver:
        await put_all(driver, FILES)
        await driver.put("outside/not-me.txt", b"not in the dataset")
        source = backend.source(bucket, PREFIX)
        summary(syncd("sync", source, "--dataset", "ds", "--db", str(db), "--json", env=env))

        first = summary(
            syncd("pull", "--dataset", "ds", str(out), "--db", str(db), "--json", env=env)
        )
        assert tree(out) == FILES
        assert (first["transferred"], first["up_to_date"], first["bytes"]) == (
            len(FILES),
            0,
            sum(map(len, FILES.values())),
        )

        # the bucket changes: one file grows, one keeps its size with new bytes, one goes, one
        # arrives; and the folder gains a file of its own and a link to a file outside it
        changed = {"a.txt": b"alpha, longer now\n", "same-size.txt": b"BBBB", "new/n.txt": b"n"}
        await put_all(driver, changed)
        await driver.delete(PREFIX + "with space/c d.txt")
        summary(syncd("sync", "--dataset", "ds", "--db", str(db), "--json", env=env))
        (out / "mine.txt").write_bytes(b"local only")
        elsewhere = tmp_path / "elsewhere.txt"
        elsewhere.write_bytes(b"must survive")
        (out / "link").symlink_to(elsewhere)

        env = proxied_env(backend, proxy)
        second = summary(
            syncd("pull", "--dataset", "ds", str(out), "--db", str(db), "--json", env=env)
        )
        if proxy is not None:
            assert downloaded(proxy, backend.name) == len(changed)
        assert second["transferred"] == len(changed)
        assert second["up_to_date"] == len(FILES) - 2 - 1  # two changed, one deleted
        assert second["extra"] == 2  # the deleted object's file and mine.txt
        bucket_now = {**{k: v for k, v in FILES.items() if k != "with space/c d.txt"}, **changed}
        assert tree(out) == {
            **bucket_now,
            "with space/c d.txt": b"spaces",
            "mine.txt": b"local only",
        }

        third = summary(
            syncd(
                "pull", "--dataset", "ds", str(out), "--db", str(db), "--delete", "--json", env=env
            )
        )
        assert (third["transferred"], third["removed"]) == (0, 2)
        assert tree(out) == bucket_now
        assert (out / "link").is_symlink() and elsewhere.read_bytes() == b"must survive"
        for rel, data in bucket_now.items():
            assert await driver.read(PREFIX + rel) == data


async def test_a_large_object_that_shrank_since_the_sync_is_pulled_at_its_own_size(
    backend: Backend, tmp_path: Path
) -> None:
    """The pull reserves the catalog's size for a large file (syncd.transfer.writer); the
    object read is what counts, and the space past it is given back."""
    db, out = tmp_path / "c.db", tmp_path / "out"
    big = os.urandom(RESERVE_FROM + 1024 * 1024)
    bucket = await synced(backend, {"big.bin": big}, db)
    small = os.urandom(1024 * 1024)
    async with open_driver(backend.config(bucket)) as driver:
        await driver.put(PREFIX + "big.bin", small)  # not synced: the catalog says 9 MiB
    pulled = summary(syncd("pull", "--dataset", "ds", str(out), "--db", str(db), env=backend.env))
    assert pulled["transferred"] == 1
    assert tree(out) == {"big.bin": small}
    if sys.platform == "linux":
        assert (out / "big.bin").stat().st_blocks * 512 < 2 * len(small)


async def test_pull_into_a_folder_holding_some_files_already(
    backend: Backend, proxy: FaultProxy | None, tmp_path: Path
) -> None:
    """Files the pull did not write: one equal to its object is kept; one of the same size with
    other bytes is replaced where the provider states an MD5 (local folders state none)."""
    db, out = tmp_path / "c.db", tmp_path / "out"
    await synced(backend, FILES, db)
    out.mkdir()
    (out / "a.txt").write_bytes(FILES["a.txt"])
    (out / "same-size.txt").write_bytes(b"ZZZZ")
    env = proxied_env(backend, proxy)
    result = summary(syncd("pull", "--dataset", "ds", str(out), "--db", str(db), "--json", env=env))
    hashes = backend.name != "local"
    moved = len(FILES) - 2 + (1 if hashes else 0)
    assert result["transferred"] == moved
    if proxy is not None:
        assert downloaded(proxy, backend.name) == moved
    assert (out / "same-size.txt").read_bytes() == (b"AAAA" if hashes else b"ZZZZ")


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.syncd-tmp") if p.stat().st_size > 0]


def finals(root: Path) -> dict[str, bytes]:
    """Files under their final names (a pull's temp files left out)."""
    return {rel: data for rel, data in tree(root).items() if not rel.endswith(".syncd-tmp")}


def half_done(root: Path) -> bool:
    """Two whole files and a half-written one (read while the pull renames files)."""
    try:
        return root.exists() and len(finals(root)) == 2 and bool(temp_files(root))
    except FileNotFoundError:
        return False  # renamed under us: look again


# one backend is enough for a crash: the temp-and-rename is the same code for all
@pytest.mark.parametrize("backend", ["s3"], indirect=True)
async def test_pull_killed_part_way_leaves_no_partial_file_and_resumes(
    backend: Backend, proxy: FaultProxy | None, tmp_path: Path
) -> None:
    db, out = tmp_path / "c.db", tmp_path / "out"
    files = {f"part/{i:02d}.bin": os.urandom(50_000 + i) for i in range(6)}
    await synced(backend, files, db)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "syncd.cli",
            "pull",
            "--dataset",
            "ds",
            str(out),
            "--db",
            str(db),
            "--jobs",
            "1",
        ],
        env={**os.environ, **backend.env, "SYNCD_FAULT_DOWNLOAD_HANG_AFTER": "2"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # with one download at a time, the third starts only after two are whole
        wait_for(lambda: half_done(out), "two whole files and a half-written one")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    whole = finals(out)
    assert len(whole) == 2 and all(files[rel] == data for rel, data in whole.items())
    [partial] = temp_files(out)
    assert 0 < partial.stat().st_size < 50_000

    env = proxied_env(backend, proxy)
    result = summary(syncd("pull", "--dataset", "ds", str(out), "--db", str(db), "--json", env=env))
    assert (result["transferred"], result["up_to_date"]) == (4, 2)
    assert proxy is not None and downloaded(proxy, "s3") == 4
    assert tree(out) == files  # every file whole, no temp file left


# a bucket key, not a path of this repository (joined, so the repository check reads no path)
ESCAPE = "/".join(("..", "..", "escape.txt"))
HOSTILE = {
    ESCAPE: "'.' or '..' path segment",
    "..\\..\\windows.txt": "'.' or '..' path segment",
    "C:/drive.txt": "drive letter",
    "/absolute.txt": "absolute path",
    "a/./b.txt": "'.' or '..' path segment",
    "nul\x00byte.txt": "control character",
    "line\nbreak.txt": "control character",
}


# a folder cannot hold such names: the keys come from buckets
@pytest.mark.parametrize("backend", ["s3", "gcs", "azure"], indirect=True)
async def test_hostile_keys_are_refused_and_the_rest_is_pulled(
    backend: Backend, tmp_path: Path
) -> None:
    bucket = backend.new_bucket()
    work = tmp_path / "work"
    work.mkdir()
    db, out, outside = work / "c.db", work / "out", tmp_path / "outside"
    outside.mkdir()
    good = {"ok/fine.txt": b"fine", "link/x.txt": b"through a link"}
    async with open_driver(backend.config(bucket)) as driver:
        for rel in HOSTILE:
            if backend.name == "azure" and any(ord(c) < 0x20 for c in rel):
                continue  # Azurite stores a NUL name, then fails every listing with HTTP 500
            try:
                await driver.put(PREFIX + rel, b"hostile")
            except StorageError:
                # a service may refuse a name (Azure normalizes dot segments, moto answers 404
                # for a newline): then no bucket holds that key, and test_transfer_paths
                # checks the rule for it on its own
                continue
        await put_all(driver, good)
        # what the bucket holds (Azure turns a backslash into a slash, for one)
        keys = {o.key[len(PREFIX) :] async for page in driver.list(PREFIX) for o in page}
    if backend.name == "s3":  # S3 takes any name: the escapes must really be in the bucket
        assert {ESCAPE, "/absolute.txt", "C:/drive.txt"} <= set(keys)
    summary(
        syncd(
            "sync",
            backend.source(bucket, PREFIX),
            "--dataset",
            "ds",
            "--db",
            str(db),
            env=backend.env,
        )
    )
    out.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    proc = syncd("pull", "--dataset", "ds", str(out), "--db", str(db), env=backend.env)
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    refused = {
        line["refused"][len(PREFIX) :]: line["reason"] for line in lines if "refused" in line
    }
    for rel, reason in refused.items():
        assert HOSTILE.get(rel, reason) in reason
    assert "symbolic link" in refused.pop("link/x.txt")
    # a key with a NUL byte never reaches the dataset: the sync skips it (no catalog holds it)
    keys = {k for k in keys if "\x00" not in k}
    assert set(refused) == set(keys) - set(good)
    result = lines[-1]["summary"]
    assert (result["transferred"], result["refused"], result["failed"]) == (1, len(keys) - 1, 0)
    assert (out / "ok" / "fine.txt").read_bytes() == b"fine"
    assert list(outside.iterdir()) == []
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    new = {str(p) for p in set(after) - set(before)}
    assert new <= {"work/out/ok", "work/out/ok/fine.txt", "work/c.db-wal", "work/c.db-shm"}


LOCAL = {
    "top.txt": b"top\n",
    "nested/a/b.txt": b"nested b",
    "ünï/日本語 file.txt": "データ".encode(),
    "big.bin": None,  # MULTIPART_THRESHOLD + 1 MiB of random bytes, made by the test
}


def make_folder(root: Path) -> dict[str, bytes]:
    files = {
        k: v if v is not None else os.urandom(MULTIPART_THRESHOLD + 2**20) for k, v in LOCAL.items()
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


async def test_push_creates_objects_and_items_then_uploads_nothing(
    backend: Backend, proxy: FaultProxy | None, tmp_path: Path
) -> None:
    bucket = backend.new_bucket()
    db, src = tmp_path / "c.db", tmp_path / "src"
    files = make_folder(src)
    # S3 sends files below 200 MiB in one streamed PUT: lower that so big.bin goes in parts
    env = {**backend.env, "SYNCD_S3_MULTIPART_CUTOFF": str(MULTIPART_THRESHOLD)}
    if backend.name == "local":
        Path(bucket, "up").mkdir()  # a folder source must exist
    summary(
        syncd("sync", backend.source(bucket, "up/"), "--dataset", "ds", "--db", str(db), env=env)
    )
    first = summary(syncd("push", str(src), "--dataset", "ds", "--db", str(db), "--json", env=env))
    assert (first["transferred"], first["bytes"]) == (len(files), sum(map(len, files.values())))
    async with open_driver(backend.config(bucket)) as driver:
        for rel, data in files.items():
            assert (
                hashlib.sha256(await driver.read("up/" + rel)).digest()
                == hashlib.sha256(data).digest()
            )
        listed = {o.key: (o.size, o.etag) async for page in driver.list("up/") for o in page}
    # the items written from the uploads' answers are what a listing sees
    strip = "" if backend.name != "local" else "up/"
    assert {strip + k: v for k, v in dataset_state(str(db)).items()} == listed
    resync = summary(syncd("sync", "--dataset", "ds", "--db", str(db), "--json", env=env))
    assert (resync["created"], resync["updated"], resync["deleted"]) == (0, 0, 0)

    env = proxied_env(backend, proxy)
    second = summary(syncd("push", str(src), "--dataset", "ds", "--db", str(db), "--json", env=env))
    assert (second["transferred"], second["up_to_date"]) == (0, len(files))
    if proxy is not None:
        assert proxy.requests_matching(writes) == []

    (src / "top.txt").unlink()
    refused = syncd("push", str(src), "--dataset", "ds", "--db", str(db), "--delete", env=env)
    assert refused.returncode == 2
    assert "allow_external_delete" in refused.stderr and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert len(dataset_state(str(db))) == len(files)


# the permission check is the same for every provider; deleting is each driver's own
# (covered by the conformance suite)
@pytest.mark.parametrize("backend", ["s3", "local"], indirect=True)
async def test_push_delete_when_the_driver_allows_it(backend: Backend, tmp_path: Path) -> None:
    bucket = backend.new_bucket()
    db, src, cfg = tmp_path / "c.db", tmp_path / "src", tmp_path / "syncd.toml"
    (src / "keep").mkdir(parents=True)
    (src / "keep" / "k.txt").write_bytes(b"keep")
    (src / "gone.txt").write_bytes(b"gone")
    endpoint = f'endpoint = "{backend.emulator.url}"\n' if backend.emulator else ""
    cfg.write_text(
        f'[drivers.d]\ntype = "{backend.name}"\nbucket = "{bucket}"\npath = "up/"\n{endpoint}'
        'allow_external_delete = true\n\n[datasets.ds]\ndriver = "d"\n'
    )
    summary(
        syncd(
            "sync",
            "--config",
            str(cfg),
            "--dataset",
            "ds",
            "--db",
            str(db),
            "--json",
            env=backend.env,
        )
    )
    summary(syncd("push", str(src), "--dataset", "ds", "--db", str(db), "--json", env=backend.env))
    (src / "gone.txt").unlink()
    result = summary(
        syncd(
            "push",
            str(src),
            "--dataset",
            "ds",
            "--db",
            str(db),
            "--delete",
            "--json",
            env=backend.env,
        )
    )
    assert (result["removed"], result["transferred"]) == (1, 0)
    async with open_driver(backend.config(bucket)) as driver:
        assert [o.key async for page in driver.list("up/") for o in page] == ["up/keep/k.txt"]
    assert [k.removeprefix("up/") for k in dataset_state(str(db))] == ["keep/k.txt"]


@pytest.mark.parametrize("backend", ["s3", "local"], indirect=True)
async def test_a_file_the_pull_wrote_is_judged_by_stat_alone(
    backend: Backend, proxy: FaultProxy | None, tmp_path: Path
) -> None:
    """The record of a pull makes the next one compare by size and mtime, reading nothing
    (rsync's quick check): bytes changed behind an unchanged stat go unseen, by design; a
    changed mtime sends the file back to the full comparison."""
    db, out = tmp_path / "c.db", tmp_path / "out"
    await synced(backend, FILES, db)
    summary(syncd("pull", "--dataset", "ds", str(out), "--db", str(db), env=backend.env))
    target = out / "nested" / "deep" / "b.bin"
    st = target.stat()
    target.write_bytes(b"\0" * st.st_size)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))

    env = proxied_env(backend, proxy)
    quiet = summary(syncd("pull", "--dataset", "ds", str(out), "--db", str(db), env=env))
    assert (quiet["transferred"], quiet["up_to_date"]) == (0, len(FILES))
    assert target.read_bytes() == b"\0" * st.st_size
    if proxy is not None:
        assert downloaded(proxy, backend.name) == 0

    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fixed = summary(syncd("pull", "--dataset", "ds", str(out), "--db", str(db), env=env))
    assert fixed["transferred"] == 1
    assert target.read_bytes() == FILES["nested/deep/b.bin"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_prefix_dry_run_and_the_catalog_in_the_folder(backend: Backend, tmp_path: Path) -> None:
    bucket = Path(backend.new_bucket())
    make_files = {"a/1.txt": b"1", "a/2.txt": b"22", "b/3.txt": b"333"}
    for rel, data in make_files.items():
        (bucket / rel).parent.mkdir(parents=True, exist_ok=True)
        (bucket / rel).write_bytes(data)
    src = tmp_path / "src"
    src.mkdir()
    db = src / "syncd.db"  # the catalog lives in the folder that is pulled into and pushed
    summary(syncd("sync", str(bucket), "--dataset", "ds", "--db", str(db)))

    plan = summary(
        syncd("pull", "--dataset", "ds", str(tmp_path / "new"), "--db", str(db), "--dry-run")
    )
    assert (plan["transferred"], plan["bytes"], plan["dry_run"]) == (3, 6, True)
    assert not (tmp_path / "new").exists()

    part = summary(
        syncd("pull", "--dataset", "ds", str(src), "--db", str(db), "--prefix", "a/", "--delete")
    )
    assert part["transferred"] == 2
    assert sorted(rel for rel in tree(src) if not rel.startswith("syncd.db")) == [
        "a/1.txt",
        "a/2.txt",
    ]
    assert db.exists()  # --delete left the catalog alone

    (src / "a" / "new.txt").write_bytes(b"new")
    plan = summary(syncd("push", str(src), "--dataset", "ds", "--db", str(db), "--dry-run"))
    assert (plan["transferred"], plan["up_to_date"]) == (1, 2)
    assert not (bucket / "a" / "new.txt").exists()
    pushed = summary(syncd("push", str(src), "--dataset", "ds", "--db", str(db)))
    assert (pushed["transferred"], pushed["up_to_date"]) == (1, 2)
    assert (bucket / "a" / "new.txt").read_bytes() == b"new"
    assert not any(p.name.startswith("syncd.db") for p in bucket.rglob("*"))
    assert "syncd.db" not in {k for k in dataset_state(str(db))}


@pytest.mark.parametrize("backend", ["s3", "gcs", "azure"], indirect=True)
async def test_a_temp_name_that_cannot_be_taken_fails_that_file_alone(
    backend: Backend, tmp_path: Path
) -> None:
    """The temp file is made inside the driver's download call: a failure to make it is still
    reported as the file's own failure, with the system's reason (not as a provider error),
    and a stale temp file left by an interrupted pull is replaced."""
    bucket = backend.new_bucket()
    db, out = tmp_path / "c.db", tmp_path / "out"
    files = {"blocked/x.txt": b"x", "stale/y.txt": b"new bytes", "z.txt": b"z"}
    async with open_driver(backend.config(bucket)) as driver:
        await put_all(driver, files)
    summary(
        syncd(
            "sync", backend.source(bucket, PREFIX), "--dataset", "ds", "--db", str(db),
            env=backend.env,
        )
    )  # fmt: skip
    (out / "blocked" / ".x.txt.syncd-tmp").mkdir(parents=True)  # a folder under the temp name
    (out / "stale").mkdir()
    (out / "stale" / ".y.txt.syncd-tmp").write_bytes(b"half")

    proc = syncd("pull", "--dataset", "ds", str(out), "--db", str(db), env=backend.env)
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    failed = {line["failed"]: line["reason"] for line in lines if "failed" in line}
    assert failed == {PREFIX + "blocked/x.txt": os.strerror(21)}  # EISDIR: "Is a directory"
    result = lines[-1]["summary"]
    assert (result["transferred"], result["failed"], result["refused"]) == (2, 1, 0)
    assert tree(out) == {"stale/y.txt": b"new bytes", "z.txt": b"z"}
