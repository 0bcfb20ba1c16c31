"""The synthetic benchmark source ``bench://N`` (providers.synthetic): ordered, resumable,
and its churn round changes exactly what it says, so benchmark figures mean what they claim."""

from __future__ import annotations

import pytest

from providers import open_driver
from syncd.reconcile.source import canonical, parse_source
from tests.test_sync_cli import summary, syncd


async def keys(source: str, **kwargs) -> list[list[str]]:
    async with open_driver(parse_source(source)) as driver:
        return [[o.key for o in page] async for page in driver.list(**kwargs)]


async def test_pages_in_key_order_and_ranges() -> None:
    pages = await keys("bench://2500?page=1000")
    assert [len(p) for p in pages] == [1000, 1000, 500]
    flat = [k for p in pages for k in p]
    assert flat == sorted(flat) and len(set(flat)) == 2500
    rest = [k for p in await keys("bench://2500", start_after=flat[1499]) for k in p]
    assert rest == flat[1500:]
    window = [
        k for p in await keys("bench://2500", start_after=flat[9], end_before=flat[20]) for k in p
    ]
    assert window == flat[10:20]
    folder = [k for p in await keys("bench://2500", prefix="d00001/") for k in p]
    assert folder == flat[1000:2000]


async def test_a_churn_round(monkeypatch: pytest.MonkeyPatch) -> None:
    before = {k for p in await keys("bench://1000") for k in p}
    monkeypatch.setenv("SYNCD_BENCH_ROUND", "1")
    after = {k for p in await keys("bench://1000") for k in p}
    assert len(before - after) == 10 and len(after - before) == 10
    assert all(k.endswith("-new") for k in after - before)
    assert canonical(parse_source("bench://1000?latency=80ms")) == "bench://1000?latency=80ms"


def test_sync_of_a_churn_round_counts_one_percent_each(tmp_path) -> None:
    db = str(tmp_path / "c.db")
    first = summary(syncd("sync", "bench://3000", "--dataset", "b", "--db", db, "--json"))
    assert first["created"] == 3000
    churned = summary(
        syncd("sync", "--dataset", "b", "--db", db, "--json", env={"SYNCD_BENCH_ROUND": "1"})
    )
    assert (churned["created"], churned["updated"], churned["deleted"]) == (30, 30, 30)


async def test_uris_of_a_page_are_each_keys_uri() -> None:
    async with open_driver(parse_source("bench://1500")) as driver:
        listed = [o.key async for page in driver.list() for o in page]
        assert driver.uris(listed) == [driver.uri(k) for k in listed]
