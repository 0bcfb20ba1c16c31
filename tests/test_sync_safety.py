"""A dry run writes nothing; a mass deletion is held back; the catalog's edges say what is wrong;
every listed object is accounted for (issue 8: #5, #9, #10 read-only, #11 prefix, summary)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from syncd.store.catalog import prefix_upper_bound
from tests.test_cli_errors import one_line_error
from tests.test_sync_cli import summary, syncd


def folder(root: Path, names: list[str]) -> Path:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())
    return root


def dump(db: Path) -> list[tuple]:
    """Every row of every table (what "writes nothing" compares)."""
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(t, *row) for t in sorted(tables) for row in conn.execute(f"SELECT * FROM {t}")]


# -- dry run ---------------------------------------------------------------------------


def test_dry_run_of_a_new_dataset_creates_no_catalog_file(tmp_path: Path) -> None:
    src = folder(tmp_path / "src", ["a.txt", "b/c.txt"])
    db = tmp_path / "new.db"
    proc = syncd("sync", str(src), "--dataset", "d", "--db", str(db), "--dry-run", "--json")
    assert summary(proc)["created"] == 2
    assert not db.exists() and not list(tmp_path.glob("new.db*"))


def test_dry_run_writes_nothing_to_an_existing_catalog(tmp_path: Path) -> None:
    src = folder(tmp_path / "src", ["a.txt", "x/skip.txt", "b/c.txt"])
    db = tmp_path / "c.db"
    assert syncd("sync", str(src), "--dataset", "d", "--db", str(db)).returncode == 0
    (src / "a.txt").unlink()
    folder(src, ["new.txt"])
    before = dump(db)
    plan = syncd(
        "sync", "--dataset", "d", "--db", str(db), "--exclude", "x/*", "--dry-run", "--json"
    )
    s = summary(plan)
    assert (s["created"], s["deleted"], s["filtered"]) == (1, 2, 1), s
    # a dry run of another, new dataset in the same catalog leaves no dataset behind either
    other = syncd("sync", str(src), "--dataset", "other", "--db", str(db), "--dry-run")
    assert other.returncode == 0, other.stderr
    assert dump(db) == before  # no filters, no dataset, no run row, no item


# -- mass deletion guard ---------------------------------------------------------------


def test_max_delete_holds_back_every_delete_but_applies_the_rest(tmp_path: Path) -> None:
    names = [f"f{i:02d}.txt" for i in range(10)]
    src = folder(tmp_path / "src", names)
    db = str(tmp_path / "c.db")
    assert syncd("sync", str(src), "--dataset", "d", "--db", db).returncode == 0
    for name in names[:6]:
        (src / name).unlink()
    folder(src, ["new.txt"])
    (src / names[9]).write_bytes(b"changed")

    held = syncd("sync", "--dataset", "d", "--db", db, "--max-delete", "5")
    one_line_error(held, 1, "held back 6 deletes", "--max-delete")
    keys = {
        json.loads(x)["key"]
        for x in syncd("items", "ls", "--dataset", "d", "--db", db, "--json").stdout.splitlines()
    }
    assert keys == set(names) | {"new.txt"}  # the create landed, nothing was deleted
    run = json.loads(
        syncd("runs", "ls", "--dataset", "d", "--db", db, "--json", "--limit", "1").stdout
    )
    assert run["status"] == "held" and run["held_deletes"] == 6 and run["deleted"] == 0
    assert run["created"] == 1 and run["updated"] == 1

    # a percentage of the dataset's items (11 now): 6 is more than 50% of 11 (5)...
    one_line_error(
        syncd("sync", "--dataset", "d", "--db", db, "--max-delete", "50%"), 1, "held back 6"
    )
    # ...and within 60% (6); a held run is never resumed, so this one lists afresh
    done = summary(syncd("sync", "--dataset", "d", "--db", db, "--max-delete", "60%", "--json"))
    assert done["deleted"] == 6 and done["resumed_after"] is None
    assert syncd("items", "count", "--dataset", "d", "--db", db).stdout.strip() == "5"


def test_emptied_folder_with_max_delete_keeps_the_dataset(tmp_path: Path) -> None:
    src = folder(tmp_path / "src", [f"f{i}" for i in range(20)])
    db = str(tmp_path / "c.db")
    assert syncd("sync", str(src), "--dataset", "d", "--db", db).returncode == 0
    shutil.rmtree(src)
    src.mkdir()
    one_line_error(
        syncd("sync", "--dataset", "d", "--db", db, "--max-delete", "25%"), 1, "held back 20"
    )
    assert syncd("items", "count", "--dataset", "d", "--db", db).stdout.strip() == "20"


# -- catalog edges ---------------------------------------------------------------------


@pytest.fixture
def immutable(tmp_path: Path):
    """Make a file immutable (``chattr +i``): even root cannot write it, as on a read-only
    mount. Skipped where the filesystem or the sandbox does not allow it."""
    made: list[Path] = []

    def make(path: Path) -> None:
        proc = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"chattr +i not possible here: {proc.stderr.strip()}")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_read_only_catalog_is_one_line_before_any_work(tmp_path: Path, immutable) -> None:
    src = folder(tmp_path / "src", ["a.txt"])
    db = tmp_path / "c.db"
    assert syncd("sync", str(src), "--dataset", "d", "--db", str(db)).returncode == 0
    folder(src, ["b.txt"])
    # fold the WAL into the main file, then freeze it (and its WAL files' folder stays writable)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    immutable(db)
    err = one_line_error(syncd("sync", "--dataset", "d", "--db", str(db)), 2, "read-only", str(db))
    assert "internal error" not in err
    # reading still works
    listed = syncd("items", "ls", "--dataset", "d", "--db", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(x)["key"] for x in listed.stdout.splitlines()] == ["a.txt"]


@pytest.mark.parametrize(
    ("prefix", "bound"),
    [
        ("a", "b"),
        ("a\U0010ffff", "b"),
        ("\U0010ffff\U0010ffff", None),
        ("x\ud7ff", "x\ue000"),  # the next code point after U+D7FF that UTF-8 can hold
        ("", None),
    ],
)
def test_prefix_upper_bound(prefix: str, bound: str | None) -> None:
    assert prefix_upper_bound(prefix) == bound
    if bound is not None:
        assert prefix + "\U0010ffff" * 3 < bound


def test_items_prefix_includes_keys_continuing_with_the_last_code_point(tmp_path: Path) -> None:
    names = ["a\U0010ffffb.txt", "a\U0010ffff.txt", "a.txt", "b.txt", "ab"]
    src = folder(tmp_path / "src", names)
    db = str(tmp_path / "c.db")
    assert syncd("sync", str(src), "--dataset", "d", "--db", db).returncode == 0

    def keys(*args: str) -> list[str]:
        proc = syncd("items", "ls", "--dataset", "d", "--db", db, "--json", *args)
        return [json.loads(x)["key"] for x in proc.stdout.splitlines()]

    assert keys("--prefix", "a") == sorted(n for n in names if n.startswith("a"))
    assert keys("--prefix", "a\U0010ffff") == ["a\U0010ffff.txt", "a\U0010ffffb.txt"]
    assert keys("--limit", "2") == sorted(names)[:2]
    count = syncd("items", "count", "--dataset", "d", "--db", db, "--prefix", "a")
    assert count.stdout.strip() == "4"


# -- every object accounted for --------------------------------------------------------


def test_summary_accounts_for_filtered_and_skipped_objects(tmp_path: Path) -> None:
    src = folder(tmp_path / "src", ["keep.jpg", "drop.txt", "sub/keep2.jpg"])
    outside = folder(tmp_path / "outside", ["secret.jpg"])
    os.symlink(outside / "secret.jpg", src / "link.jpg")  # leaves the folder: never followed
    os.symlink(src / "sub", src / "dirlink")  # a folder link: never followed
    bad = os.fsencode(src) + b"/bad-\xff.jpg"  # a file name that is not UTF-8
    with open(bad, "wb") as fh:
        fh.write(b"x")
    proc = syncd(
        "sync",
        str(src),
        "--dataset",
        "d",
        "--db",
        str(tmp_path / "c.db"),
        "--include",
        "*.jpg",
        "--json",
    )
    s = summary(proc)
    assert s["created"] == 2 and s["filtered"] == 1 and s["skipped"] == 3, s
    assert s["listed"] == s["created"] + s["updated"] + s["unchanged"] + s["filtered"]
    warnings = [line for line in proc.stderr.splitlines() if "skipped" in line]
    assert len(warnings) == 3 and any("not valid UTF-8" in w for w in warnings), proc.stderr
    text = syncd("sync", str(src), "--dataset", "d", "--db", str(tmp_path / "c.db"))
    assert "1 filtered, 3 skipped" in text.stdout


# -- datasets show / rm ----------------------------------------------------------------


def test_datasets_show_and_rm(tmp_path: Path) -> None:
    src = folder(tmp_path / "src", ["a", "b"])
    db = str(tmp_path / "c.db")
    assert syncd("sync", str(src), "--dataset", "d", "--db", db).returncode == 0
    shown = json.loads(syncd("datasets", "show", "d", "--db", db, "--json").stdout)
    assert shown["items"] == 2 and shown["last_run"]["status"] == "completed"
    text = syncd("datasets", "show", "d", "--db", db).stdout
    assert "items:" in text and "2" in text
    header = syncd("datasets", "ls", "--db", db).stdout.splitlines()[0]
    assert header.split("\t") == ["NAME", "SOURCE", "ITEMS", "LAST RUN"]
    # not on a terminal and no --yes: refused, nothing removed
    one_line_error(syncd("datasets", "rm", "d", "--db", db), 2, "--yes")
    assert syncd("items", "count", "--dataset", "d", "--db", db).stdout.strip() == "2"
    gone = syncd("datasets", "rm", "d", "--db", db, "--yes")
    assert gone.returncode == 0 and "removed dataset 'd' (2 items)" in gone.stdout
    one_line_error(syncd("datasets", "show", "d", "--db", db), 2, "unknown dataset 'd'")
    with sqlite3.connect(db) as conn:
        for table in ("items", "runs", "run_attempts", "datasets", "drivers"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
