"""Items as Python values (``syncd.items``, ``syncd.get_item``) and an item's presigned URL
without a server (``syncd items url``, ``syncd.item_url``), on every provider."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

import syncd
from providers import open_driver
from syncd.errors import NotFound, UsageError
from syncd.model import Item
from tests.conftest import Backend


def cli(db: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "syncd.cli", *args, "--db", db],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_items_come_as_python_values(tmp_path: Path) -> None:
    src, db = tmp_path / "src", str(tmp_path / "c.db")
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.jpg").write_bytes(b"abc")
    when = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    os.utime(src / "sub" / "a.jpg", (when.timestamp(), when.timestamp()))
    syncd.sync(str(src), dataset="d", db=db)

    (item,) = list(syncd.items("d", db=db))
    assert isinstance(item, Item)
    assert (item.key, item.filename, item.size) == ("sub/a.jpg", "/sub/a.jpg", 3)
    assert item.mtime == when and item.mtime.tzinfo is not None
    assert isinstance(item.created_at, datetime) and item.created_at <= item.updated_at
    assert isinstance(item.metadata, dict) and item.metadata["user"] == {}
    assert item.tags == ()
    assert syncd.get_item("d", "sub/a.jpg", db=db) == item


def test_a_missing_item_is_not_found_in_one_line(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    (tmp_path / "src").mkdir()
    syncd.sync(str(tmp_path / "src"), dataset="d", db=db)
    with pytest.raises(NotFound, match=r"dataset 'd' has no item 'nope\.jpg'"):
        syncd.get_item("d", "nope.jpg", db=db)
    with pytest.raises(UsageError, match="unknown dataset 'x'"):
        syncd.get_item("x", "nope.jpg", db=db)

    out = cli(db, "items", "get", "--dataset", "d", "nope.jpg")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .endswith("has no item 'nope.jpg'; list them: syncd items ls")
    )
    out = cli(db, "items", "get", "--dataset", "d", "nope.jpg", "--json")
    assert out.returncode == 1 and "has no item" in json.loads(out.stdout or out.stderr)["error"]
    out = cli(db, "items", "url", "--dataset", "d", "nope.jpg", "--ttl", "0")
    assert out.returncode == 2 and "--ttl must be 1 to 604800 seconds" in out.stderr


def put(backend: Backend, bucket: str, key: str, data: bytes) -> None:
    async def go() -> None:
        async with open_driver(backend.config(bucket)) as driver:
            await driver.put(key, data, "image/jpeg")

    asyncio.run(go())


def test_the_presigned_url_reads_the_object_on_every_provider(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in backend.env.items():
        monkeypatch.setenv(name, value)
    bucket = backend.new_bucket()
    put(backend, bucket, "raw/cat one.jpg", b"the bytes of a cat")
    db = str(tmp_path / "c.db")
    syncd.sync(backend.source(bucket), dataset="d", db=db)

    url = syncd.item_url("d", "raw/cat one.jpg", db=db, ttl=600)
    with urllib.request.urlopen(url, timeout=30) as got:
        assert got.read() == b"the bytes of a cat"

    out = cli(db, "items", "url", "--dataset", "d", "raw/cat one.jpg", "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["key"] == "raw/cat one.jpg" and shown["ttl"] == 3600
    with urllib.request.urlopen(shown["url"], timeout=30) as got:
        assert got.read() == b"the bytes of a cat"

    out = cli(db, "items", "get", "--dataset", "d", "raw/cat one.jpg", "--json")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert (row["key"], row["size"]) == ("raw/cat one.jpg", 18)
    assert Item.from_public(row) == syncd.get_item("d", "raw/cat one.jpg", db=db)
