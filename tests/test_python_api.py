"""The Python API (``syncd.sync / pull / push / items``): the CLI's engine, as blocking calls
that also work where an event loop is already running (a notebook)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import syncd
from syncd.errors import UsageError


def make(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_sync_items_pull_push_round_trip(tmp_path: Path) -> None:
    src, out, new, db = tmp_path / "src", tmp_path / "out", tmp_path / "new", str(tmp_path / "c.db")
    make(src, {"a.jpg": b"a", "sub/b.jpg": b"bb", "notes.txt": b"n"})

    run = syncd.sync(str(src), dataset="photos", db=db, include=("*.jpg",))
    assert (run.counts["created"], run.counts["filtered"]) == (2, 1)
    assert [(i.filename, i.size) for i in syncd.items("photos", db=db)] == [
        ("/a.jpg", 1),
        ("/sub/b.jpg", 2),
    ]

    got = syncd.pull("photos", str(out), db=db)
    assert got.ok and got.counts["transferred"] == 2
    assert (out / "sub" / "b.jpg").read_bytes() == b"bb"

    make(new, {"c.jpg": b"ccc", "skip.txt": b"filtered out"})
    sent = syncd.push(str(new), dataset="photos", db=db)
    assert (sent.counts["transferred"], sent.counts["filtered"]) == (1, 1)
    assert (src / "c.jpg").read_bytes() == b"ccc" and not (src / "skip.txt").exists()
    assert [i.filename for i in syncd.items("photos", db=db, prefix="c")] == ["/c.jpg"]


async def test_calls_work_inside_a_running_event_loop(tmp_path: Path) -> None:
    """Jupyter runs an event loop; asyncio.run would refuse to start inside it."""
    src, db = tmp_path / "src", str(tmp_path / "c.db")
    make(src, {"x.txt": b"x"})
    asyncio.get_running_loop()  # this test runs inside one
    assert syncd.sync(str(src), dataset="d", db=db).counts["created"] == 1
    assert syncd.pull("d", str(tmp_path / "out"), db=db).counts["transferred"] == 1


def test_errors_raise_with_the_cli_message(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    syncd.sync(str(tmp_path), dataset="d", db=db)
    with pytest.raises(UsageError, match="unknown dataset 'nope'"):
        syncd.pull("nope", str(tmp_path / "out"), db=db)
    with pytest.raises(UsageError, match="unknown dataset 'nope'"):
        list(syncd.items("nope", db=db))
