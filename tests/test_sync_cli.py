"""End to end through the ``syncd`` command on every backend: the dataset equals the bucket."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from providers import Driver, open_driver
from tests.conftest import BAD_SECRET, BAD_SECRET_B64, Backend, private_key_of
from tests.test_conformance import populate

PREFIX = "data/"
INSIDE = [
    "data/a.jpg",
    "data/sub dir/b+c.png",
    "data/%41 percent.txt",
    "data/ünïcødé/日本.txt",
    "data/deep/1/2/3/4/leaf.bin",
    "data/empty",
]
OUTSIDE = ["data2/not-me.jpg", "other/x.jpg", "dat"]
FILTERS = ("--include", "*.jpg", "--exclude", "tmp/*", "--max-size", "1000")


def syncd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncd.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def summary(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return next(line["summary"] for line in lines if "summary" in line)


def items(db: Path, dataset: str, env: dict[str, str]) -> dict[str, dict]:
    proc = syncd("items", "ls", "--dataset", dataset, "--db", str(db), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return {row["key"]: row for row in map(json.loads, proc.stdout.splitlines())}


async def bucket_state(driver: Driver, prefix: str = PREFIX) -> dict[str, tuple[int, str]]:
    return {o.key: (o.size, o.etag) async for page in driver.list(prefix) for o in page}


async def assert_dataset_equals_bucket(driver: Driver, db: Path, dataset: str, env) -> dict:
    """Same keys, sizes and ETags as the bucket under PREFIX; filenames relative to PREFIX.

    A local SOURCE folder is the driver's root, so its item keys are relative to it already.
    """
    rows = items(db, dataset, env)
    strip = PREFIX if driver.provider == "local" else ""
    expected = {k[len(strip) :]: v for k, v in (await bucket_state(driver)).items()}
    assert {k: (r["size"], r["etag"]) for k, r in rows.items()} == expected
    for key, row in rows.items():
        full = strip + key
        assert row["filename"] == "/" + full[len(PREFIX) :]
        assert row["uri"] == driver.uri(full)
        assert row["mtime"].endswith("Z")
    return rows


def counts(s: dict) -> tuple[int, int, int]:
    return s["created"], s["updated"], s["deleted"]


async def test_sync_create_update_delete_and_idle(backend: Backend, tmp_path: Path) -> None:
    bucket = backend.new_bucket()
    db = tmp_path / "catalog.db"
    source = backend.source(bucket, PREFIX)
    async with open_driver(backend.config(bucket)) as driver:
        await populate(driver, INSIDE + OUTSIDE)

        first = summary(
            syncd("sync", source, "--dataset", "ds", "--db", str(db), "--json", env=backend.env)
        )
        assert counts(first) == (len(INSIDE), 0, 0)
        initial = await assert_dataset_equals_bucket(driver, db, "ds", backend.env)

        await driver.put("data/a.jpg", b"overwritten with more bytes")
        await driver.delete("data/sub dir/b+c.png")
        await driver.delete("data/empty")
        await driver.put("data/new one.jpg", b"new")
        await driver.put("data2/also-not-me.jpg", b"outside the prefix")

        # a later sync may name the same source, or none
        second = summary(
            syncd("sync", "--dataset", "ds", "--db", str(db), "--json", env=backend.env)
        )
        assert counts(second) == (1, 1, 2)
        before = await assert_dataset_equals_bucket(driver, db, "ds", backend.env)
        # an update keeps the item's identity: created_at stays, updated_at moves
        a_key = ("" if backend.name == "local" else PREFIX) + "a.jpg"
        assert before[a_key]["created_at"] == initial[a_key]["created_at"]
        assert before[a_key]["updated_at"] > initial[a_key]["updated_at"]

        third = summary(
            syncd("sync", source, "--dataset", "ds", "--db", str(db), "--json", env=backend.env)
        )
        assert counts(third) == (0, 0, 0)
        assert third["unchanged"] == len(INSIDE) - 2 + 1
        # nothing written: every row, timestamps included, is exactly as before
        assert items(db, "ds", backend.env) == before


async def test_listing_failure_deletes_nothing_and_next_run_resumes(
    backend: Backend, tmp_path: Path
) -> None:
    bucket = backend.new_bucket()
    db = tmp_path / "catalog.db"
    source = backend.source(bucket, PREFIX)
    keys = [f"data/k{i:02d}" for i in range(30)]
    async with open_driver(backend.config(bucket)) as driver:
        await populate(driver, keys)
        assert counts(
            summary(
                syncd("sync", source, "--dataset", "ds", "--db", str(db), "--json", env=backend.env)
            )
        ) == (30, 0, 0)

        for key in keys[:3] + keys[-3:]:
            await driver.delete(key)
        await populate(driver, ["data/k05a", "data/k20a", "data/zz"])

        failed = syncd(
            "sync",
            "--dataset",
            "ds",
            "--db",
            str(db),
            "--json",
            env={**backend.env, "SYNCD_FAULT_LIST_FAIL_AFTER": "10", "SYNCD_RETRY_ATTEMPTS": "1"},
        )
        assert failed.returncode == 1
        assert "injected listing fault" in failed.stderr and "nothing was deleted" in failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1 and "Traceback" not in failed.stderr
        strip = PREFIX if backend.name == "local" else ""
        after_failure = {strip + k for k in items(db, "ds", backend.env)}
        assert set(keys) <= after_failure  # nothing deleted
        assert "data/k05a" in after_failure  # creates before the fault were kept

        resumed = summary(
            syncd("sync", "--dataset", "ds", "--db", str(db), "--json", env=backend.env)
        )
        assert resumed["resumed_after"] is not None
        assert strip + resumed["resumed_after"] >= "data/k05a"
        assert resumed["deleted"] == 6
        await assert_dataset_equals_bucket(driver, db, "ds", backend.env)


async def test_filters_and_dry_run(backend: Backend, tmp_path: Path) -> None:
    bucket = backend.new_bucket()
    db = tmp_path / "catalog.db"
    source = backend.source(bucket, PREFIX)
    async with open_driver(backend.config(bucket)) as driver:
        await populate(driver, ["data/a.jpg", "data/b.png", "data/tmp/c.jpg", "data/big.jpg"])
        await driver.put("data/big.jpg", b"x" * 5000)
        plan = syncd(
            "sync",
            source,
            "--dataset",
            "f",
            "--db",
            str(db),
            *FILTERS,
            "--dry-run",
            "--json",
            env=backend.env,
        )
        assert plan.returncode == 0, plan.stderr
        lines = [json.loads(line) for line in plan.stdout.splitlines()]
        strip = PREFIX if backend.name == "local" else ""
        planned = [(x["action"], strip + x["key"]) for x in lines if "action" in x]
        assert planned == [("create", "data/a.jpg")]
        # the dry run left no dataset behind (not even the catalog)
        ls = syncd("datasets", "ls", "--db", str(db), "--json", env=backend.env)
        assert ls.returncode == 2 and "does not exist" in json.loads(ls.stdout)["error"]
        done = summary(
            syncd(
                "sync",
                source,
                "--dataset",
                "f",
                "--db",
                str(db),
                *FILTERS,
                "--json",
                env=backend.env,
            )
        )
        assert counts(done) == (1, 0, 0)
        assert [strip + k for k in items(db, "f", backend.env)] == ["data/a.jpg"]


async def test_missing_bucket_is_one_line_and_leaves_nothing(
    backend: Backend, tmp_path: Path
) -> None:
    db = tmp_path / "catalog.db"
    name = backend.missing_bucket()
    proc = syncd("sync", backend.source(name), "--dataset", "m", "--db", str(db), env=backend.env)
    assert proc.returncode in (1, 2)
    assert proc.returncode == (2 if backend.name == "local" else 1)
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("syncd: error:") and name in err
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM datasets").fetchone()[0] == 0


async def test_wrong_credentials_are_one_line_and_never_printed(
    backend: Backend, tmp_path: Path
) -> None:
    if backend.name == "local":
        pytest.xfail("local folders have no credentials to get wrong")
    bucket = backend.new_bucket()
    db = tmp_path / "catalog.db"
    if backend.name == "s3":
        env = {
            **backend.env,
            "AWS_ENDPOINT_URL": backend.auth_emulator.url,
            "AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1",
            "AWS_SECRET_ACCESS_KEY": BAD_SECRET,
        }
    elif backend.name == "gcs":
        env = {**backend.env, "GOOGLE_APPLICATION_CREDENTIALS": backend.env["SYNCD_TEST_BAD_SA"]}
    else:
        env = {
            **backend.env,
            "AZURE_STORAGE_CONNECTION_STRING": os.environ["SYNCD_TEST_BAD_AZURE_CONN"],
        }
    proc = syncd("sync", backend.source(bucket), "--dataset", "w", "--db", str(db), env=env)
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert backend.name in err and bucket in err and "credentials" in err
    secrets = [BAD_SECRET, BAD_SECRET_B64]
    if backend.name == "gcs":
        secrets.append(private_key_of(backend.env["SYNCD_TEST_BAD_SA"])[:64])
    for secret in secrets:
        assert secret not in proc.stdout + proc.stderr
        assert secret.encode() not in b"".join(p.read_bytes() for p in tmp_path.glob("catalog.db*"))
