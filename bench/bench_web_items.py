"""What the item browser's first page costs server-side (issue 26's target: <= 100 ms for a
1M-item dataset), run by hand.

    python bench/bench_web_items.py --objects 1000000
    python bench/bench_web_items.py --objects 1000000 --store postgresql

Builds three datasets of N items each straight into a fresh catalog (the rows a sync writes,
through ``Catalog.write_rows``), shaped to cost the folder view the most in different ways:

* ``folders``: bench_query.py's dataset (``d<i // 1000>/obj-<i>.<ext>``: 1,000 folders of
  1,000 items, 10% with user metadata, 10% with provider metadata): the root page shows 100
  folders, each counted (to 100: :func:`syncd.web.browse.count_cap`);
* ``big``: 10 folders of N/10 items (``f<i % 10>/obj-<i>``): each folder's count stops at
  its cap (1,000);
* ``flat``: N items directly at the root (``obj-<i>``): the page is 100 items.

For each it times, ``--repeat`` times after one warm-up (the median and the slowest), the
whole ``GET /datasets/NAME/items`` answer of the daemon's app (aiohttp's test server on
loopback, the bearer token, the catalog thread, the template), and the data function alone
(:func:`syncd.web.browse.browse`: a folder level with its counts, or a filtered page's first
window of keys; the page itself searches on for up to ``SEARCH_SECONDS``), for: the root page, a folder's page, a next page (through
the page's own cursor), filtered pages (``content_type=image/*``, ``metadata.user.site=
berlin``, ``size>4999000``: a rare one), and the exact count a user may ask for.
``--store postgresql`` uses the tests' throwaway server (tests/pg.py).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_query import build  # noqa: E402

from providers.config import DriverConfig  # noqa: E402
from syncd.reconcile.filters import Filters  # noqa: E402
from syncd.store.catalog import Catalog  # noqa: E402
from syncd.store.db import transaction  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
TARGET_MS = 100.0


def build_keys(catalog: Catalog, name: str, n: int, key: Callable[[int], str]) -> None:
    ds = catalog.create_dataset(
        name, f"s3://{name}/", DriverConfig(type="s3", bucket=name), Filters()
    ).id
    stamp = "2026-06-01T00:00:00.000000Z"
    batch = 20_000
    for a in range(0, n, batch):
        rows = []
        for i in range(a, min(a + batch, n)):
            k = key(i)
            rows.append(
                (ds, k, "/" + k, f"s3://{name}/{k}", (i * 7919) % 5_000_000, f"e{i}",
                 "image/png" if i % 2 else "text/plain", "2026-01-01T00:00:00Z", None, stamp,
                 stamp, "{}", None)
            )  # fmt: skip
        with transaction(catalog.db):
            catalog.write_rows(ds, rows)
    if catalog.db.dialect == "postgresql":
        catalog.db.execute("ANALYZE items")
    else:
        catalog.db.execute("ANALYZE")


async def timed(fn: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, float, Any]:
    """(median ms, slowest ms, last result) of ``repeat`` awaited calls after one warm-up."""
    result = await fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = await fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times), result


async def measure(url: str, n: int, repeat: int, shapes: list[str]) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from syncd.daemon.catalog_thread import CatalogThread
    from syncd.daemon.metrics import Metrics
    from syncd.server.app import make_app
    from syncd.server.routes import Context
    from syncd.web import browse

    catalog = Catalog.open(url)
    t0 = time.perf_counter()
    if "folders" in shapes:
        build(catalog, n)  # the dataset "bench"
        catalog.db.execute("UPDATE datasets SET name = 'folders' WHERE name = 'bench'")
    if "big" in shapes:
        build_keys(catalog, "big", n, lambda i: f"f{i % 10}/obj-{i:09d}")
    if "flat" in shapes:
        build_keys(catalog, "flat", n, lambda i: f"obj-{i:09d}")
    print(f"built {len(shapes)} datasets of {n:,} items in {time.perf_counter() - t0:.0f} s")

    thread = CatalogThread(url, create=False)
    await thread.start()
    app = make_app(Context(thread, None, Metrics()), TOKEN)  # type: ignore[arg-type]
    client = TestClient(TestServer(app), headers={"Authorization": f"Bearer {TOKEN}"})
    await client.start_server()
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("folders", "root: 100 folders of 1,000", {}),
        ("folders", "a folder: 100 of its 1,000 items", {"prefix": f"d{n // 2000:05d}/"}),
        ("folders", "next page of the root", {"next": True}),
        ("folders", "flat, no filter", {"flat": "1"}),
        ("folders", "where content_type=image/*", {"where": ["content_type=image/*"]}),
        ("folders", "where metadata.user.site=berlin", {"where": ["metadata.user.site=berlin"]}),
        ("folders", "where size>4999000 (rare)", {"where": ["size>4999000"]}),
        ("big", "root: 10 folders of N/10", {}),
        ("flat", "root: 100 of N items", {}),
        ("folders", "exact count of the root (asked)", {"count": "1"}),
    ]
    print(f"{'dataset':<8} {'page':<36} {'HTTP median':>11} {'slowest':>9} {'data only':>10}")
    try:
        for ds_name, label, params in cases:
            if ds_name not in shapes:
                continue
            params = dict(params)
            path = f"/datasets/{ds_name}/items"
            if params.pop("next", False):
                first = await client.get(path)
                found = re.search(r'href="([^"]*cursor=[^"]*)" id="next-page"', await first.text())
                assert found, "the root page has a next-page link (N > 100,000)"
                path, params = found.group(1).replace("&amp;", "&"), {}
            query: list[tuple[str, str]] = []
            for k, v in params.items():
                query += [(k, x) for x in v] if isinstance(v, list) else [(k, v)]

            async def get(path: str = path, query: list[tuple[str, str]] = query) -> int:
                resp = await client.get(path, params=query)
                await resp.read()
                assert resp.status == 200, (path, resp.status)
                return resp.status

            med, worst, _ = await timed(get, repeat)
            ds = catalog.get_dataset(ds_name)
            cursor = dict(re.findall(r"([a-z]+)=([^&]*)", path)).get("cursor")
            from urllib.parse import unquote

            def data(ds: Any = ds, params: dict[str, Any] = params, cursor: Any = cursor) -> Any:
                return browse.browse(
                    catalog,
                    ds,
                    prefix=params.get("prefix"),
                    where=params.get("where"),
                    flat=params.get("flat") == "1",
                    cursor=unquote(cursor) if cursor else None,
                    total=params.get("count") == "1",
                )

            async def run_data(data: Callable[[], Any] = data) -> Any:
                return data()

            dmed, _, _ = await timed(run_data, repeat)
            flag = "" if worst <= TARGET_MS or params.get("count") else "  OVER"
            print(
                f"{ds_name:<8} {label:<36} {med:9.1f}ms {worst:7.1f}ms {dmed:8.1f}ms{flag}",
                flush=True,
            )
    finally:
        await client.close()
        await thread.close()
        catalog.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--shapes", default="folders,big,flat", help="the datasets to build (comma-separated)"
    )
    opts = parser.parse_args()
    pg = None
    if opts.store == "postgresql":
        from tests import pg as throwaway

        pg = throwaway.start_server()
    print(f"load before: {Path('/proc/loadavg').read_text().strip()}")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
            url = str(Path(tmp) / "w.db") if pg is None else pg.create_database("bench_w")
            asyncio.run(measure(url, opts.objects, opts.repeat, opts.shapes.split(",")))
    finally:
        if pg is not None:
            pg.stop()
    print(f"load after: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
