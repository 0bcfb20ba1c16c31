"""The bulk page compare (``march.diff_page``, used by every sync) decides exactly what the plain
march of the two sorted streams decides: checked on random listings, catalogs and page splits,
page by page and through ``sync_dataset`` itself (plan, counts and the catalog afterwards)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers.base import ObjectInfo
from providers.config import DriverConfig
from syncd.errors import ListingOrderError
from syncd.reconcile.filters import Filters
from syncd.reconcile.march import Action, check_order, diff_page, march
from syncd.reconcile.sync import SyncOptions, sync_dataset
from syncd.store import lease
from syncd.store.db import transaction
from tests.conftest import catalog_state
from tests.test_events_vs_listing import SnapshotDriver

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEYS = st.text(alphabet="ab/é", min_size=1, max_size=4)
#: (size, etag, version): few values, so listed and known records often agree
RECORD = st.tuples(st.integers(0, 1), st.sampled_from(["e", "f"]), st.sampled_from([None, "1"]))


@st.composite
def bucket_and_catalog(draw):
    """A catalog, and a listing that is often equal to it or to part of it."""
    known = draw(st.dictionaries(KEYS, RECORD, max_size=12))
    listing = dict(known) if draw(st.booleans()) else {}
    listing.update(draw(st.dictionaries(KEYS, RECORD, max_size=12)))
    for key in draw(st.lists(st.sampled_from(sorted(listing)), max_size=4)) if listing else []:
        listing.pop(key, None)
    objects = [ObjectInfo(k, s, e, T0, version=v) for k, (s, e, v) in sorted(listing.items())]
    rows = [(k, s, e, v) for k, (s, e, v) in sorted(known.items())]
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(objects) - 1)), max_size=5)))
    pages = [objects[a:b] for a, b in zip([0, *cuts], [*cuts, len(objects)], strict=True)]
    return objects, rows, [p for p in pages if p]


class Row:
    def __init__(self, key, size, etag, version) -> None:
        self.key, self.size, self.etag, self.version = key, size, etag, version


async def plain_march(objects, rows) -> list[tuple[Action, str]]:
    async def listing():
        for obj in objects:
            yield obj

    return [(c.action, c.key) async for c in march(listing(), [Row(*r) for r in rows])]


def paged(pages, rows) -> list[tuple[Action, str]]:
    """diff_page over each page and the rows of its key range, then the rows after the last."""
    out: list[tuple[Action, str]] = []
    after = None
    for page in pages:
        check_order(page, after)
        last = page[-1].key
        span = [r for r in rows if (after is None or r[0] > after) and r[0] <= last]
        diff = diff_page(page, span)
        listed = {o.key for o in diff.creates} | {o.key for o in diff.updates}
        out += [(c.action, c.key) for c in diff.changes()]
        out += [(Action.UNCHANGED, o.key) for o in page if o.key not in listed]
        after = last
    out += [(Action.DELETE, r[0]) for r in rows if after is None or r[0] > after]
    return sorted(out, key=lambda c: c[1])


@settings(max_examples=300, deadline=None)
@given(bucket_and_catalog())
def test_diff_page_decides_what_march_decides(case) -> None:
    objects, rows, pages = case
    assert paged(pages, rows) == asyncio.run(plain_march(objects, rows))


def test_the_bulk_shortcuts_are_taken() -> None:
    page = [ObjectInfo(k, 1, "e", T0) for k in ("a", "b")]
    assert [o.key for o in diff_page(page, []).creates] == ["a", "b"]
    same = diff_page(page, [("a", 1, "e", None), ("b", 1, "e", None)])
    assert (same.unchanged, same.creates, same.updates, same.deletes) == (2, [], [], [])
    # a listing without versions against known versions: unchanged, like is_changed says
    loose = diff_page(page, [("a", 1, "e", "7"), ("b", 1, "e", None)])
    assert (loose.unchanged, loose.updates) == (2, [])


def test_an_out_of_order_page_is_refused() -> None:
    with pytest.raises(ListingOrderError):
        check_order([ObjectInfo("b", 1, "e", T0), ObjectInfo("a", 1, "e", T0)], None)
    with pytest.raises(ListingOrderError):
        check_order([ObjectInfo("a", 1, "e", T0)], "a")  # not above the previous page


class PagedDriver(SnapshotDriver):
    """The snapshot listed in the given pages."""

    def __init__(self, pages: list[list[ObjectInfo]]) -> None:
        super().__init__({o.key: o for p in pages for o in p}, False)
        self.pages = pages

    async def list(self, prefix="", start_after=None, end_before=None):  # type: ignore[override]
        for page in self.pages:
            yield page


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bucket_and_catalog(), st.integers(1, 5))
def test_a_sync_applies_what_march_decides(catalogs, case, batch_size) -> None:
    objects, rows, pages = case
    expected = asyncio.run(plain_march(objects, rows))

    async def scenario():
        catalog = catalogs()  # on each store
        try:
            ds = catalog.create_dataset(
                "ds", "s3://bkt/", DriverConfig(type="s3", bucket="bkt"), Filters()
            )
            owner = lease.new_owner()
            with transaction(catalog.db):
                lease.acquire(catalog.db, lease.for_dataset(ds.id), owner)
            # the catalog as it was: the rows, written by a sync of a bucket holding them
            before = [ObjectInfo(k, s, e, T0, version=v) for k, s, e, v in rows]
            await sync_dataset(catalog, ds, PagedDriver([before] if before else []), owner=owner)
            plan: list[tuple[Action, str]] = []
            dry = SyncOptions(dry_run=True, on_plan=lambda c: plan.append((c.action, c.key)))
            await sync_dataset(catalog, ds, PagedDriver(pages), dry)
            result = await sync_dataset(
                catalog, ds, PagedDriver(pages), SyncOptions(batch_size=batch_size), owner=owner
            )
            return plan, result.counts, catalog_state(catalog)
        finally:
            catalog.close()

    plan, counts, state = asyncio.run(scenario())
    assert plan == [c for c in expected if c[0] is not Action.UNCHANGED]
    for action, counter in [
        (Action.CREATE, "created"),
        (Action.UPDATE, "updated"),
        (Action.DELETE, "deleted"),
        (Action.UNCHANGED, "unchanged"),
    ]:
        assert counts[counter] == sum(1 for a, _ in expected if a is action)
    assert state == {o.key: (o.size, o.etag) for o in objects}
