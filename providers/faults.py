"""Fault injection: a driver wrapper that fails on purpose, for crash and resume tests.

Read by :func:`from_env`:

* ``SYNCD_FAULT_LIST_FAIL_AFTER=N`` makes ``list`` raise a ``TransientError`` once N objects
  have been yielded, as a network failure part-way through a listing would.
* ``SYNCD_FAULT_LIST_HANG_AFTER=N`` makes ``list`` stop answering after N objects, so a test
  can ``kill -9`` the process mid-sync.
* ``SYNCD_FAULT_LIST_PREFIX=P`` limits both listing faults to listings under key prefix P
  (one dataset of several: the others list normally).
* ``SYNCD_FAULT_DOWNLOAD_HANG_AFTER=N`` lets N downloads finish; every later one writes half
  of its object to the file and then stops answering, so a test can ``kill -9`` a pull with a
  partial file on disk.
* ``SYNCD_FAULT_PAUSE_AT=POINT[:N]`` stops the thread that reaches the named point for the
  Nth time (default the first) for good, after logging ``fault injection: paused at POINT``,
  so a test can ``kill -9`` the process exactly there. The points (:data:`PAUSE_POINTS`):
  ``batch-commit`` (a reconcile's batch written, its transaction not committed),
  ``run-close`` (a run's parked deletes applied and the run closed, not committed),
  ``event-commit`` (an event batch applied, not committed) and ``event-ack`` (a queue batch
  committed, its messages not yet deleted) and ``webhook-sent`` (a webhook batch acknowledged
  by its endpoint, the delivered cursor not yet stored).

Everything else is passed through to the wrapped driver untouched.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
from collections.abc import AsyncIterator
from datetime import datetime
from typing import BinaryIO

from providers import errors
from providers.base import Driver, ObjectInfo

log = logging.getLogger("providers.faults")

#: the named points :func:`pause_point` can stop at (see the module docstring)
PAUSE_POINTS = ("batch-commit", "run-close", "event-commit", "event-ack", "webhook-sent")
PAUSE_VARIABLE = "SYNCD_FAULT_PAUSE_AT"
_reached: dict[str, itertools.count[int]] = {}
_reached_lock = threading.Lock()


def pause_point(name: str) -> None:
    """Stop here for good if ``SYNCD_FAULT_PAUSE_AT`` names this point and this is the Nth
    time the process reaches it; a no-op otherwise (one dictionary lookup). Blocks the calling
    thread only: the process stays alive, holding whatever it holds, until it is killed."""
    wanted = os.environ.get(PAUSE_VARIABLE)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    with _reached_lock:
        count = next(_reached.setdefault(name, itertools.count(1)))
    if count != int(nth or 1):
        return
    log.warning("fault injection: paused at %s (%d); waiting to be killed", name, count)
    threading.Event().wait()  # never set


class FaultyDriver(Driver):
    def __init__(
        self,
        inner: Driver,
        *,
        list_fail_after: int | None = None,
        hang: bool = False,
        download_hang_after: int | None = None,
        list_prefix: str | None = None,
    ) -> None:
        super().__init__(inner.bucket, page_size=inner.page_size)
        self.list_prefix = list_prefix
        self.inner = inner
        self.provider = inner.provider
        self.list_fail_after = list_fail_after
        self.hang = hang
        self.downloads_left = download_hang_after

    async def list(
        self, prefix: str = "", start_after: str | None = None, end_before: str | None = None
    ) -> AsyncIterator[list[ObjectInfo]]:
        spared = self.list_prefix is not None and not prefix.startswith(self.list_prefix)
        if self.list_fail_after is None or spared:
            async for page in self.inner.list(prefix, start_after, end_before):
                yield page
            return
        budget = self.list_fail_after
        async for page in self.inner.list(prefix, start_after, end_before):
            if len(page) > budget:
                if budget:
                    yield page[:budget]
                if self.hang:
                    log.warning(
                        "fault injection: listing paused after %d objects; waiting to be killed",
                        self.list_fail_after,
                    )
                    await asyncio.Event().wait()  # never set: wait to be killed
                raise errors.TransientError(self.provider, self.bucket, "injected listing fault")
            budget -= len(page)
            yield page

    @property  # type: ignore[override]
    def skipped(self) -> int:
        return self.inner.skipped

    @skipped.setter
    def skipped(self, value: int) -> None:
        pass  # Driver.__init__ sets it; the count lives on the wrapped driver

    @property  # type: ignore[override]
    def listing_tags(self) -> bool:
        return self.inner.listing_tags

    @listing_tags.setter
    def listing_tags(self, value: bool) -> None:
        if hasattr(self, "inner"):  # Driver.__init__ sets it before there is an inner
            self.inner.listing_tags = value

    @property  # type: ignore[override]
    def guesses_content_type(self) -> bool:
        return self.inner.guesses_content_type

    async def head(self, key: str) -> ObjectInfo:
        return await self.inner.head(key)

    async def object_tags(self, key: str) -> dict[str, str] | None:
        return await self.inner.object_tags(key)

    def observed_at(self) -> datetime | None:
        return self.inner.observed_at()

    async def folders(self, prefix: str = "") -> list[str]:
        return await self.inner.folders(prefix)

    def get(self, key: str) -> AsyncIterator[bytes]:
        return self.inner.get(key)

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        return await self.inner.put(key, data, content_type)

    async def upload(self, key: str, path: str, content_type: str | None = None) -> ObjectInfo:
        return await self.inner.upload(key, path, content_type)

    async def download(self, key: str, out: BinaryIO, size: int | None = None) -> ObjectInfo:
        if self.downloads_left is None or self.downloads_left > 0:
            if self.downloads_left is not None:
                self.downloads_left -= 1
            return await self.inner.download(key, out, size)
        data = await self.inner.read(key)
        out.write(data[: len(data) // 2])
        out.flush()
        await asyncio.Event().wait()  # never set: wait to be killed
        raise AssertionError("unreachable")

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def presign(self, key: str, ttl: int = 3600) -> str:
        return await self.inner.presign(key, ttl)

    def uri(self, key: str) -> str:
        return self.inner.uri(key)

    async def close(self) -> None:
        await self.inner.close()


def from_env(driver: Driver) -> Driver:
    """Wrap ``driver`` if a fault is requested in the environment, else return it as is."""
    fail = os.environ.get("SYNCD_FAULT_LIST_FAIL_AFTER")
    only = os.environ.get("SYNCD_FAULT_LIST_PREFIX") or None
    if fail:
        return FaultyDriver(driver, list_fail_after=int(fail), list_prefix=only)
    hang = os.environ.get("SYNCD_FAULT_LIST_HANG_AFTER")
    if hang:
        return FaultyDriver(driver, list_fail_after=int(hang), hang=True, list_prefix=only)
    download_hang = os.environ.get("SYNCD_FAULT_DOWNLOAD_HANG_AFTER")
    if download_hang:
        return FaultyDriver(driver, download_hang_after=int(download_hang))
    return driver
