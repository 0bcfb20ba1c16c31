"""kill -9 in the middle of a sync: the next run resumes after the last applied key."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.test_sync_cli import summary, syncd


def test_kill_9_mid_sync_resumes_and_completes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in range(3):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(700):
            (src / f"d{d}" / f"f{i:04d}").write_bytes(b"x" * (i % 7))
    db = tmp_path / "c.db"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "syncd.cli",
            "sync",
            str(src),
            "--dataset",
            "crash",
            "--db",
            str(db),
        ],
        env={**os.environ, "SYNCD_FAULT_LIST_HANG_AFTER": "1600"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    resume_key = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and resume_key is None:
        time.sleep(0.1)
        try:
            with sqlite3.connect(db) as conn:
                row = conn.execute(
                    "SELECT resume_key FROM runs WHERE status = 'running'"
                ).fetchone()
                resume_key = row[0] if row and row[0] and row[0] >= "d1/f0499" else None
        except sqlite3.OperationalError:
            pass  # not created yet
    assert resume_key is not None, "the sync never recorded progress"
    # killed wherever it is now: before the hang or at it, what it wrote is whole batches
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as conn:
        written = conn.execute("SELECT count(*) FROM items").fetchone()[0]
        status = conn.execute("SELECT status, resume_key FROM runs").fetchone()
    assert status[0] == "running" and 1000 <= written <= 1600

    (src / "d0" / "f0000").unlink()  # a delete behind the resume point, noticed by the resumed run
    done = summary(syncd("sync", "--dataset", "crash", "--db", str(db), "--json"))
    assert done["resumed_after"] == status[1]
    assert done["deleted"] == 0  # keys before the resume point were already reconciled this run
    assert done["created"] == 2100  # counts are for the whole run, both attempts
    count = syncd("items", "count", "--dataset", "crash", "--db", str(db))
    assert count.stdout.strip() == "2100"
    # the next, fresh run sees the delete
    again = summary(syncd("sync", "--dataset", "crash", "--db", str(db), "--json"))
    assert (again["created"], again["updated"], again["deleted"]) == (0, 0, 1)


def test_a_stale_interrupted_run_is_started_over(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i:02d}").write_text(str(i))
    db = str(tmp_path / "c.db")
    failed = syncd(
        "sync",
        str(src),
        "--dataset",
        "s",
        "--db",
        db,
        env={"SYNCD_FAULT_LIST_FAIL_AFTER": "10", "SYNCD_RETRY_ATTEMPTS": "1"},
    )
    assert failed.returncode == 1
    (src / "f00").unlink()  # behind the resume point
    fresh = summary(syncd("sync", "--dataset", "s", "--db", db, "--resume-within", "0", "--json"))
    assert fresh["resumed_after"] is None and fresh["deleted"] == 1
    count = syncd("items", "count", "--dataset", "s", "--db", db)
    assert count.stdout.strip() == "19"
