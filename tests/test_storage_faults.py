"""The catalog's file in trouble: a disk that fills up, another process holding its lock.

* Disk full: the command runs with a file-size limit (``RLIMIT_FSIZE``, as ``ulimit -f``; with
  SIGXFSZ ignored a write past it fails with EFBIG, as one past a full disk fails with ENOSPC).
  It fails with one line, exit 1, and the catalog opened afterwards holds what it held before
  and passes ``PRAGMA integrity_check``. A pull whose files cannot be written leaves no file
  under a final name.
* Locked: a child process holds ``BEGIN EXCLUSIVE`` on the catalog. Commands that write it fail
  with one line once the busy timeout (``SYNCD_DB_BUSY_TIMEOUT``, 1 s here) has passed, not a
  hang; a reader goes on reading the last committed state (WAL), unless the holder keeps the
  file in exclusive locking mode, which shuts readers out too.

Local folders are the buckets here: what is tried is the catalog, not a provider.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import dataset_state
from tests.test_pull_push import finals, temp_files
from tests.test_sync_cli import summary

LOCK_WAIT = {"SYNCD_DB_BUSY_TIMEOUT": "1"}


def syncd(
    *args: str, env: dict[str, str] | None = None, preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command (with ``--json`` but for ``run``); the generous timeout is the bound for
    "not a hang"."""
    json_flag = [] if args[0] == "run" else ["--json"]
    return subprocess.run(
        [sys.executable, "-m", "syncd.cli", *args, *json_flag],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec,
        timeout=120,
    )


def file_size_limit(limit: int) -> Callable[[], None]:
    """For ``preexec_fn``: the child may write no file past ``limit`` bytes."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("syncd: error: "), proc.stderr
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def synced_folder(tmp_path: Path, n: int = 20) -> tuple[Path, Path, dict]:
    """A folder of ``n`` files synced into dataset ``ds`` of a new catalog."""
    src = folder(tmp_path / "bucket", {f"f{i:03d}.txt": b"x" * (i + 1) for i in range(n)})
    db = tmp_path / "c.db"
    summary(syncd("sync", str(src), "--dataset", "ds", "--db", str(db)))
    return src, db, dataset_state(str(db))


def test_sync_onto_a_full_disk_fails_in_one_line_and_keeps_the_catalog(tmp_path: Path) -> None:
    src, db, before = synced_folder(tmp_path)
    # far more than the limit lets the catalog grow by: hundreds of items with long keys
    folder(src, {f"more/{'k' * 150}-{i:04d}.txt": b"y" for i in range(600)})
    for rel in list(before)[:5]:
        (src / rel).unlink()  # deletes that must not be applied by a sync that failed
    limit = db.stat().st_size + 64 * 1024
    proc = syncd("sync", "--dataset", "ds", "--db", str(db), preexec=file_size_limit(limit))
    one_line_error(proc, "could not be written", "c.db")
    assert integrity(db) == "ok"
    assert dataset_state(str(db)) == before
    # room again: the next sync converges
    done = summary(syncd("sync", "--dataset", "ds", "--db", str(db)))
    assert done["created"] == 600 and done["deleted"] == 5
    assert integrity(db) == "ok"


def test_pull_into_a_full_target_leaves_no_file_under_a_final_name(tmp_path: Path) -> None:
    big = {f"big{i}.bin": os.urandom(300_000) for i in range(3)}
    src = folder(tmp_path / "bucket", {"small.txt": b"fits", **big})
    db, out = tmp_path / "c.db", tmp_path / "out"
    summary(syncd("sync", str(src), "--dataset", "ds", "--db", str(db)))
    before = dataset_state(str(db))
    # the catalog's writes fit; no downloaded file of 300 kB does
    limit = max(db.stat().st_size, 200_000)
    proc = syncd(
        "pull", "--dataset", "ds", str(out), "--db", str(db), preexec=file_size_limit(limit)
    )
    assert proc.returncode == 1, proc.stderr
    failed = [json.loads(line) for line in proc.stdout.splitlines() if '"failed"' in line]
    assert {f["failed"] for f in failed if "reason" in f} == set(big), proc.stdout
    one_line_error(proc, "3 failed")
    assert finals(out) == {"small.txt": b"fits"} and temp_files(out) == []
    assert dataset_state(str(db)) == before and integrity(db) == "ok"
    assert summary(syncd("pull", "--dataset", "ds", str(out), "--db", str(db)))["transferred"] == 3


LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "exclusive-mode":
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
conn.execute("CREATE TABLE IF NOT EXISTS held (x)")  # a write: the lock is really taken
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
conn.execute("ROLLBACK")
"""


@contextmanager
def held(db: Path, mode: str = "transaction") -> Iterator[None]:
    """Another process holds ``db``'s write lock (``mode="exclusive-mode"``: every lock)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(db), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0


EVENT = Path(__file__).parent / "fixtures" / "events" / "s3-put.json"


def test_a_locked_catalog_is_one_line_after_the_busy_timeout_not_a_hang(tmp_path: Path) -> None:
    src, db, before = synced_folder(tmp_path)
    (src / "new.txt").write_bytes(b"new")
    cfg = tmp_path / "syncd.toml"
    cfg.write_text(
        f'[drivers.d]\ntype = "local"\nbucket = "{src}"\n\n[datasets.ds]\ndriver = "d"\n'
    )
    with held(db):
        for args in (
            ("sync", "--dataset", "ds"),
            ("events", "apply", str(EVENT)),
            ("run", "--config", str(cfg)),
        ):
            one_line_error(syncd(*args, "--db", str(db), env=LOCK_WAIT), "locked", "c.db")
        # WAL: a reader is not kept out by a writer, and sees the last committed state
        listed = syncd("items", "ls", "--dataset", "ds", "--db", str(db), env=LOCK_WAIT)
        assert listed.returncode == 0, listed.stderr
        assert len(listed.stdout.splitlines()) == len(before)
    with held(db, "exclusive-mode"):
        proc = syncd("items", "ls", "--dataset", "ds", "--db", str(db), env=LOCK_WAIT)
        one_line_error(proc, "locked", "c.db")
    assert dataset_state(str(db)) == before and integrity(db) == "ok"
    assert summary(syncd("sync", "--dataset", "ds", "--db", str(db)))["created"] == 1


@pytest.mark.parametrize("value", ["soon", "-1"])
def test_a_bad_busy_timeout_is_one_line(tmp_path: Path, value: str) -> None:
    db = tmp_path / "new.db"
    proc = syncd(
        "sync",
        str(tmp_path),
        "--dataset",
        "ds",
        "--db",
        str(db),
        env={"SYNCD_DB_BUSY_TIMEOUT": value},
    )
    assert proc.returncode == 2 and "SYNCD_DB_BUSY_TIMEOUT" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not db.exists()
