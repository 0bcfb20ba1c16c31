"""Listing a dataset's key space as key ranges, concurrently, merged back into one ordered stream.

One listing stream yields about 10,000 objects a second from S3 (1,000 keys a page, about 100
ms a page); ranges listed side by side go as fast as the service lets them. The reconciler
still sees one stream in key order: ranges are disjoint and ordered, and :func:`pages` hands
them over one after the other, each listed ahead in its own task into a queue of a few pages.
A sync with concurrency N cuts the key space into about 8N ranges and lists N of them at once
in key order (a window moving on as each range is handed over), each up to
``WINDOW_PAGES / N`` pages ahead: ranges small enough to be listed whole while they wait keep
N streams busy all along (with only N ranges, each but the first could list just its few
pages ahead, and the listing went little faster than one stream). Memory: ``WINDOW_PAGES``
pages, whatever the bucket size.

Boundaries (:func:`boundaries`) come from the previous run's keys (evenly spaced items of the
catalog), else from the folders one level under the driver path (:meth:`Driver.folders`),
else there is one range. A range is ``[lo, hi)``: the drivers take an exclusive
``start_after``, so a range asks for keys after ``lo`` minus its last character and drops the
few keys below ``lo`` that brings (a key equal to ``lo`` is kept, which ``start_after=lo``
would lose).

Resuming is unchanged: the reconciler consumes keys in order and checkpoints the last one
applied; a resumed run partitions what lies after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from providers.base import Driver, ObjectInfo
from syncd.store.catalog import Catalog
from syncd.store.sql import NEVER, Seen

#: pages each range may list ahead of the reconciler (at least)
DEPTH = 2
#: ranges per listing stream: the key space is cut finer than the concurrency, and ranges are
#: listed ``concurrency`` at a time in key order (see :func:`pages`)
RANGES_PER_STREAM = 8
#: pages all the ranges in flight may hold together (about 128,000 objects of 1,000-key pages)
WINDOW_PAGES = 128


def depth_for(concurrency: int) -> int:
    """Pages each of ``concurrency`` ranges in flight may list ahead."""
    return max(DEPTH, WINDOW_PAGES // max(1, concurrency))


def spread(keys: list[str], parts: int) -> list[str]:
    """``parts - 1`` of ``keys`` (sorted, distinct), evenly spaced."""
    if parts <= 1 or not keys:
        return []
    step = len(keys) / parts
    picked = {keys[int(step * i)] for i in range(1, parts) if int(step * i) < len(keys)}
    return sorted(picked)


async def boundaries(
    catalog: Catalog,
    dataset_id: int,
    driver: Driver,
    prefix: str,
    start_after: str | None,
    parts: int,
) -> list[str]:
    """Up to ``parts - 1`` increasing keys after ``start_after`` under ``prefix`` that split
    the listing into ``parts`` ranges of similar size; ``[]`` for one range."""
    if parts <= 1:
        return []
    cut = catalog.sample_keys(dataset_id, parts, prefix=prefix, after=start_after)
    if len(cut) < parts - 1:
        folders = [
            f for f in await driver.folders(prefix) if start_after is None or f > start_after
        ]
        cut = spread(folders, parts) if len(folders) > len(cut) else cut
    # a folder name with a NUL byte cannot bound a range a catalog stores (the sync skips
    # its keys; see syncd.reconcile.sync.NUL_REASON)
    return [
        b
        for b in cut
        if b.startswith(prefix) and (start_after is None or b > start_after) and "\x00" not in b
    ]


async def _range(
    driver: Driver,
    prefix: str,
    lo: str | None,
    after: str | None,
    hi: str | None,
    queue: asyncio.Queue[Any],
    before_page: Callable[[], Seen],
) -> None:
    """List ``[lo, hi)`` (or ``(after, hi)`` for the first range) into ``queue`` as
    ``(seq, page)``, then ``(seq of the last answer, None)``; an error goes in as is."""
    start = after if lo is None else lo[:-1]
    last = before_page()
    try:
        it = aiter(driver.list(prefix, start_after=start or None, end_before=hi))
        while True:
            seq = before_page()
            try:
                page = await anext(it)
            except StopAsyncIteration:
                await queue.put((last if last is not None else seq, None))
                return
            last = seq
            if lo is not None:
                page = [o for o in page if o.key >= lo]
            if page:
                await queue.put((seq, page))
    except Exception as exc:  # handed to the consumer, which re-raises it
        await queue.put((NEVER, exc))


async def pages(
    driver: Driver,
    prefix: str,
    start_after: str | None,
    bounds: list[str],
    before_page: Callable[[], Seen] = lambda: NEVER,
    depth: int = DEPTH,
    window: int | None = None,
) -> AsyncIterator[tuple[Seen, list[ObjectInfo]]]:
    """The listing of ``(start_after, end)`` under ``prefix`` as ``(seen, page)`` in key
    order, like :func:`syncd.reconcile.sync.prefetch`, listed as ``len(bounds) + 1`` ranges,
    ``window`` of them at once (all by default): the ranges after the one being handed over
    list ahead, each into a queue of ``depth`` pages, and a range starts when the one
    ``window`` places before it is done. Memory: ``window x depth`` pages. The last item is
    ``(seen, [])``.

    With ranges of at most ``depth`` pages, ``window`` streams list side by side all along:
    a range waiting for its turn has its pages ready when the reconciler reaches it.

    ``seen`` (the event sequence and the provider's time read before the answer) of a range's
    first page is the older of its own and the previous range's last answer's: a key missing at
    the boundary is proven missing by both answers, so the older one is the safe one to judge
    events by."""
    edges: list[str | None] = [None, *bounds, None]
    queues: list[asyncio.Queue[Any]] = [asyncio.Queue(maxsize=depth) for _ in range(len(edges) - 1)]
    width = len(queues) if window is None else max(1, window)
    tasks: list[asyncio.Task[None]] = []

    def start_next() -> None:
        i = len(tasks)
        if i < len(queues):
            tasks.append(
                asyncio.create_task(
                    _range(
                        driver, prefix, edges[i], start_after, edges[i + 1], queues[i], before_page
                    )
                )
            )

    for _ in range(width):
        start_next()
    try:
        carried: Seen | None = None
        for queue in queues:
            first = True
            while True:
                seq, page = await queue.get()
                if isinstance(page, Exception):
                    raise page
                if page is None:
                    # a range with no page leaves the older answer in force too
                    carried = seq if carried is None else carried.older(seq)
                    start_next()  # this range is done: the window moves on by one
                    break
                if first and carried is not None:
                    seq = seq.older(carried)
                first = False
                carried = None
                yield seq, page
        yield (carried or NEVER), []
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
