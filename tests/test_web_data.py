"""The dashboard's numbers without a browser (syncd.web.data): the counts cache recounts only
when the dataset's change log moved, and items over time walks the log back to the count."""

from __future__ import annotations

from pathlib import Path

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
