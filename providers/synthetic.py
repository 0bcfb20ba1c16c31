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
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from itertools import repeat
from typing import BinaryIO
from urllib.parse import parse_qs

from providers import errors
from providers.base import Driver, ObjectInfo, in_range

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
EPOCH_TS = EPOCH.timestamp()
fromtimestamp = datetime.fromtimestamp


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

    def _objects(self, a: int, b: int) -> list[ObjectInfo]:
        """The objects of indexes ``[a, b)``, in key order. Built as cheaply as Python can
        (one formatted key, one ``fromtimestamp``, one ``ObjectInfo`` each): the source must
        not hide the cost of the sync it feeds."""
        churn = self.round
        if not churn:
            # one C-level pass per field, then one constructor call per object
            keys = [f"d{i // 1000:05d}/obj-{i:09d}" for i in range(a, b)]
            sizes = [i % 997 for i in range(a, b)]
            etags = [f"{i:08x}" for i in range(a, b)]
            whens = map(fromtimestamp, range(int(EPOCH_TS) + a, int(EPOCH_TS) + b), repeat(UTC))
            return list(map(ObjectInfo, keys, sizes, etags, whens))
        out: list[ObjectInfo] = []
        append = out.append
        for i in range(a, b):
            rest = i % 100
            if rest == 2:
                continue
            key = f"d{i // 1000:05d}/obj-{i:09d}"
            when = fromtimestamp(EPOCH_TS + i, UTC)
            etag = f"{i:08x}-{churn}" if rest == 1 else f"{i:08x}"
            append(ObjectInfo(key, i % 997, etag, when))
            if rest == 3:
                append(ObjectInfo(key + "-new", 7, f"new-{churn}", when))
        return out

    async def list(
        self, prefix: str = "", start_after: str | None = None, end_before: str | None = None
    ) -> AsyncIterator[list[ObjectInfo]]:
        # the first object whose key can come after start_after (keys grow with i)
        lo = max(start_after or "", prefix)
        start = bisect.bisect_left(range(self.count), lo, key=self.key)
        start = max(0, start - 1)  # the key just before may have a "-new" sibling after lo

        def inside(key: str) -> bool:
            return key.startswith(prefix) and in_range(key, start_after, end_before)

        def beyond(key: str) -> bool:  # this key and every later one are out of range
            return (end_before is not None and key >= end_before) or (
                key > prefix and not key.startswith(prefix)
            )

        size = self.page_size
        buf: list[ObjectInfo] = []
        done = False
        for a in range(start, self.count, size):
            objs = self._objects(a, min(a + size, self.count))
            if objs and not (inside(objs[0].key) and inside(objs[-1].key)):
                # only the chunks at the ends of the range need a look at each key (keys
                # are ordered and the range is one interval of them)
                kept = []
                for obj in objs:
                    if beyond(obj.key):
                        done = True
                        break
                    if inside(obj.key):
                        kept.append(obj)
                objs = kept
            buf += objs
            while len(buf) >= size or ((done or a + size >= self.count) and buf):
                page, buf = buf[:size], buf[size:]
                if self.latency:
                    await asyncio.sleep(self.latency)
                yield page
            if done:
                return

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
