"""The march of two sorted streams, checked against a plain set-based model."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.base import ObjectInfo
from syncd.errors import ListingOrderError
from syncd.reconcile.march import Action, march

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class K:
    key: str
    size: int
    etag: str
    version: str | None = None


def obj(key: str, size: int = 1, etag: str = "e", version: str | None = None) -> ObjectInfo:
    return ObjectInfo(key, size, etag, T0, version=version)


async def aiter_of(items):
    for i in items:
        yield i


async def plan(listing, known):
    return [(c.action, c.key) async for c in march(aiter_of(listing), known)]


async def test_every_action_in_key_order() -> None:
    listing = [obj("a"), obj("b", etag="new"), obj("d"), obj("f", size=2)]
    known = [K("b", 1, "e"), K("c", 1, "e"), K("d", 1, "e"), K("f", 1, "e"), K("g", 1, "e")]
    assert await plan(listing, known) == [
        (Action.CREATE, "a"),
        (Action.UPDATE, "b"),
        (Action.DELETE, "c"),
        (Action.UNCHANGED, "d"),
        (Action.UPDATE, "f"),
        (Action.DELETE, "g"),
    ]


async def test_version_marker_counts_only_when_listed() -> None:
    known = [K("a", 1, "e", "1.1"), K("b", 1, "e", "1.1")]
    listing = [obj("a", version="1.2"), obj("b", version=None)]
    assert await plan(listing, known) == [(Action.UPDATE, "a"), (Action.UNCHANGED, "b")]


async def test_out_of_order_listing_is_refused() -> None:
    with pytest.raises(ListingOrderError):
        await plan([obj("b"), obj("a")], [])
    with pytest.raises(ListingOrderError):
        await plan([obj("a"), obj("a")], [])


async def test_empty_sides() -> None:
    assert await plan([], [K("x", 1, "e")]) == [(Action.DELETE, "x")]
    assert await plan([obj("x")], []) == [(Action.CREATE, "x")]
    assert await plan([], []) == []


keys = st.text(alphabet="ab/é\U0001f600 +%", min_size=1, max_size=4)
state = st.dictionaries(
    keys, st.tuples(st.integers(0, 3), st.sampled_from(["e1", "e2"])), max_size=25
)


@settings(max_examples=300, deadline=None)
@given(bucket=state, catalog=state)
async def test_march_matches_set_model(bucket, catalog) -> None:
    listing = [obj(k, s, e) for k, (s, e) in sorted(bucket.items())]
    known = [K(k, s, e) for k, (s, e) in sorted(catalog.items())]
    got = await plan(listing, known)
    expected = []
    for k in sorted(set(bucket) | set(catalog)):
        if k not in catalog:
            expected.append((Action.CREATE, k))
        elif k not in bucket:
            expected.append((Action.DELETE, k))
        elif bucket[k] != catalog[k]:
            expected.append((Action.UPDATE, k))
        else:
            expected.append((Action.UNCHANGED, k))
    assert got == expected
