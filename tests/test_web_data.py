"""The dashboard's numbers without a browser (syncd.web.data): the counts cache recounts only
when the dataset's change log moved, and items over time walks the log back to the count."""

from __future__ import annotations

from pathlib import Path

import pytest

import syncd
from syncd.store.catalog import Catalog
from syncd.web import data


def _make(root: Path, names: list[str]) -> None:
    root.mkdir(exist_ok=True)
    for name in names:
        (root / name).write_bytes(name.encode())


def test_items_over_time_follows_every_sync_back_to_zero(tmp_path: Path) -> None:
    src, db = tmp_path / "src", str(tmp_path / "c.db")
    _make(src, ["a", "b", "c"])
    syncd.sync(str(src), dataset="d", db=db)
    _make(src, ["e", "f"])
    (src / "a").unlink()
    syncd.sync(str(src), dataset="d", db=db)
    (src / "b").write_bytes(b"changed, not counted")
    syncd.sync(str(src), dataset="d", db=db)
    catalog = Catalog.open(db)
    ds = catalog.find_dataset("d")
    assert ds is not None
    totals = data.Totals()
    items, size = totals.of(catalog, ds)
    assert (items, size) == (4, len(b"changed, not counted") + 3)
    series = [p["items"] for p in data.items_over_time(catalog, ds, items)]
    # before anything, after the first sync, then +2 and -1 (in some order), an update: 4
    assert series[0] == 0 and series[-1] == 4
    assert 3 in series and max(series) <= 5


def test_totals_count_again_only_when_the_log_moved(tmp_path: Path) -> None:
    src, db = tmp_path / "src", str(tmp_path / "c.db")
    _make(src, ["a", "b"])
    syncd.sync(str(src), dataset="d", db=db)
    catalog = Catalog.open(db)
    ds = catalog.find_dataset("d")
    assert ds is not None
    totals = data.Totals(recount_seconds=0)
    assert totals.of(catalog, ds)[0] == 2
    # a row written behind the log's back is not seen: the count is the cached one ...
    with catalog.db.transaction():
        catalog.db.execute(
            "UPDATE items SET size = size + 100 WHERE dataset_id = ? AND key = 'a'", [ds.id]
        )
    assert totals.of(catalog, ds)[1] == 2
    # ... until the log moves (this sync also puts a's size back: the folder is the truth)
    _make(src, ["c"])
    syncd.sync(str(src), dataset="d", db=db)
    assert totals.of(catalog, ds) == (3, 3)


def test_browser_tests_fail_in_ci_and_skip_elsewhere_without_chromium(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.web import chromium_path

    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium there
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        chromium_path()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        chromium_path()


def test_the_overview_puts_failing_then_held_datasets_first(tmp_path: Path) -> None:
    """``syncd serve`` on a catalog whose datasets' latest runs failed twice, held deletes,
    and completed: the overview's rows in that order, each saying so."""
    import os
    import re
    import subprocess
    import sys
    import urllib.request

    from tests.emulators import free_port
    from tests.waiting import wait_for
    from tests.web import TOKEN

    db = str(tmp_path / "c.db")
    for name in ("aaa-ok", "mmm-held", "zzz-failing"):
        _make(tmp_path / name, ["x"])
        syncd.sync(str(tmp_path / name), dataset=name, db=db)
    catalog = Catalog.open(db)
    with catalog.db.transaction():
        for name, statuses in (("zzz-failing", ["failed", "failed"]), ("mmm-held", ["held"])):
            ds = catalog.find_dataset(name)
            assert ds is not None
            for status in statuses:
                catalog.db.execute(
                    "INSERT INTO runs (dataset_id, fingerprint, status, started_at, ended_at,"
                    " error) VALUES (?, 'f', ?, '2026-12-01T00:00:00.000000Z',"
                    " '2026-12-01T00:00:01.000000Z', ?)",
                    [ds.id, status, "listing failed: <boom>" if status == "failed" else None],
                )
    catalog.db.close()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd.cli", "serve", "--db", db, "--port", str(port)],
        env={**os.environ, "SYNCD_API_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def overview() -> str | None:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/")
            request.add_header("Authorization", f"Bearer {TOKEN}")
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    return resp.read().decode()
            except OSError:
                return None

        page = wait_for(overview, "syncd serve to answer")
        assert re.findall(r'data-dataset="([^"]+)"', page) == ["zzz-failing", "mmm-held", "aaa-ok"]
        assert "failing 2 times" in page and "held by --max-delete" in page
        # the error is shown as text
        assert "listing failed: &lt;boom&gt;" in page
        assert "not scheduled here" in page  # syncd serve schedules nothing
    finally:
        proc.terminate()
        proc.wait(60)
