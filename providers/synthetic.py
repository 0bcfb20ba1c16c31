"""A synthetic, read-only source for benchmarks: ``bench://N?latency=80ms&page=1000``.

It serves N generated objects in key order, without storage, so a million-object sync needs no
upload, and its optional per-page latency stands in for a remote listing (real S3 answers a
1,000-key page in about 100 ms). Object ``i`` is::

    key           d<i // 1000, 5 digits>/obj-<i, 9 digits>
    size          i % 997
    etag          <i, 8 hex digits>
    last_modified 2026-01-01T00:00:00Z + i seconds

``SYNCD_BENCH_ROUND=K`` (K >= 1) makes the source as it is after round K of churn: 1% of the
objects changed (``i % 100 == 1``: ETag ``<i>-<K>``), 1% deleted (``i % 100 == 2``), 1% new
(``obj-<i>-new`` beside ``i % 100 == 3``). It is an environment variable, not part of the URL,
so the changed source stays the same dataset's source.
"""

from __future__ import annotations

import asyncio
import bisect
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import BinaryIO
from urllib.parse import parse_qs

from providers import errors
from providers.base import Driver, ObjectInfo, in_range

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def _seconds(text: str) -> float:
    """``80ms``, ``0.08s`` or ``0.08`` as seconds."""
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    return float(text.removesuffix("s"))


class SyntheticDriver(Driver):
    provider = "bench"

    def __init__(self, spec: str, *, page_size: int = 1000) -> None:
        count, _, query = spec.partition("?")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        super().__init__(spec, page_size=int(params.get("page", page_size)))
        try:
            self.count = int(count)
            self.latency = _seconds(params.get("latency", "0"))
            self.round = int(os.environ.get("SYNCD_BENCH_ROUND") or 0)
        except ValueError:
            raise errors.InvalidRequest(
                self.provider, spec, "expected bench://N[?latency=80ms&page=1000]"
            ) from None

    @staticmethod
    def key(i: int) -> str:
        return f"d{i // 1000:05d}/obj-{i:09d}"

    def _objects(self, start: int) -> Iterator[ObjectInfo]:
        churn = self.round
        for i in range(start, self.count):
            key = self.key(i)
            when = EPOCH + timedelta(seconds=i)
            etag = f"{i:08x}"
            if churn:
                rest = i % 100
                if rest == 2:
                    continue
                if rest == 1:
                    etag = f"{etag}-{churn}"
            yield ObjectInfo(key, i % 997, etag, when)
            if churn and i % 100 == 3:
                yield ObjectInfo(key + "-new", 7, f"new-{churn}", when)

    async def list(
        self, prefix: str = "", start_after: str | None = None, end_before: str | None = None
    ) -> AsyncIterator[list[ObjectInfo]]:
        # the first object whose key can come after start_after (keys grow with i)
        lo = max(start_after or "", prefix)
        start = bisect.bisect_left(range(self.count), lo, key=self.key)
        start = max(0, start - 1)  # the key just before may have a "-new" sibling after lo
        page: list[ObjectInfo] = []
        for obj in self._objects(start):
            if end_before is not None and obj.key >= end_before:
                break
            if not obj.key.startswith(prefix):
                if obj.key > prefix:
                    break
                continue
            if not in_range(obj.key, start_after, None):
                continue
            page.append(obj)
            if len(page) == self.page_size:
                if self.latency:
                    await asyncio.sleep(self.latency)
                yield page
                page = []
        if page:
            if self.latency:
                await asyncio.sleep(self.latency)
            yield page

    async def folders(self, prefix: str = "") -> list[str]:
        if prefix:
            return []
        return [f"d{n:05d}/" for n in range(-(-self.count // 1000))]

    async def head(self, key: str) -> ObjectInfo:
        for page in [p async for p in self.list(start_after=None, prefix=key)]:
            for obj in page:
                if obj.key == key:
                    return obj
        raise errors.NotFound(self.provider, self.bucket, "no such object", key=key)

    async def get(self, key: str) -> AsyncIterator[bytes]:
        yield b"x" * (await self.head(key)).size

    def _read_only(self, key: str) -> errors.StorageError:
        return errors.InvalidRequest(
            self.provider, self.bucket, "synthetic source is read-only", key=key
        )

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        raise self._read_only(key)

    async def upload(self, key: str, path: str, content_type: str | None = None) -> ObjectInfo:
        raise self._read_only(key)

    async def download(self, key: str, out: BinaryIO, size: int | None = None) -> ObjectInfo:
        info = await self.head(key)
        out.seek(0)
        out.truncate()
        out.write(b"x" * info.size)
        return info

    async def delete(self, key: str) -> None:
        raise self._read_only(key)

    async def presign(self, key: str, ttl: int = 3600) -> str:
        raise self._read_only(key)

    def uri(self, key: str) -> str:
        return f"bench://{self.bucket.partition('?')[0]}/{key}"

    def uris(self, keys: list[str]) -> list[str]:
        base = self.uri("")
        return [base + k for k in keys]
