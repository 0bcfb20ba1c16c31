"""Local folder driver: a directory tree seen as a bucket.

* The "bucket" is the absolute root directory; keys are paths below it joined with ``/``.
* Listing walks the tree in key order without collecting it: directory entries are sorted by
  their *key* (a sub-directory sorts as ``name + "/"``), so ``a-b`` comes before ``a/x`` exactly
  as in S3. Memory is bounded by the widest directory and the depth, not the tree size.
* Symbolic links are not followed outside the root: a link whose target resolves outside it is
  skipped, and linked directories are never descended (which also rules out cycles).
* A folder cannot hold both a file ``a`` and a file ``a/b`` as a bucket can: such a ``put``
  raises ``InvalidRequest``. Files ending in ``.syncd-tmp`` are writes in progress, never listed.
* ETag is derived from size and modification time (``"<size hex>-<mtime_ns hex>"``), not from
  content: listing a million files must not read a million files. An in-place rewrite of the
  same size within the filesystem's timestamp resolution is therefore not seen as a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

from providers import errors
from providers.base import Driver, ObjectInfo, in_range

CHUNK = 1024 * 1024
TMP_SUFFIX = ".syncd-tmp"


class LocalDriver(Driver):
    provider = "local"

    def __init__(self, root: str, *, page_size: int = 1000) -> None:
        real = os.path.realpath(root)
        super().__init__(real, page_size=page_size)
        self.root = real

    # -- helpers -------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
            raise errors.InvalidRequest(self.provider, self.bucket, "invalid key", key=key)
        return os.path.join(self.root, *key.split("/"))

    def _inside_root(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real == self.root or real.startswith(self.root + os.sep)

    def _info(self, key: str, st: os.stat_result) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=st.st_size,
            etag=f"{st.st_size:x}-{st.st_mtime_ns:x}",
            last_modified=datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=UTC),
            content_type=mimetypes.guess_type(key)[0],
        )

    def _check_root(self) -> None:
        if not os.path.isdir(self.root):
            raise errors.BucketNotFound(self.provider, self.bucket, "folder does not exist")

    def _walk(
        self, rel: str, prefix: str, start_after: str | None, end_before: str | None
    ) -> Iterator[ObjectInfo]:
        """Yield files under ``rel`` (a key prefix ending in ``/`` or empty) in key order."""
        directory = os.path.join(self.root, *rel.split("/")) if rel else self.root
        try:
            with os.scandir(directory) as it:
                entries = []
                for entry in it:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    entries.append((rel + entry.name + ("/" if is_dir else ""), is_dir, entry))
        except FileNotFoundError:
            return  # removed while we walked: nothing there any more
        entries.sort(key=lambda e: e[0])
        for key, is_dir, entry in entries:
            if end_before is not None and key >= end_before:
                return  # everything after this sorts later still
            if is_dir:
                # skip whole sub-trees that cannot hold a key in range or under prefix
                if not (key.startswith(prefix) or prefix.startswith(key)):
                    continue
                if (
                    start_after is not None
                    and key < start_after
                    and not start_after.startswith(key)
                ):
                    continue
                yield from self._walk(key, prefix, start_after, end_before)
                continue
            if not key.startswith(prefix) or not in_range(key, start_after, end_before):
                continue
            if key.endswith(TMP_SUFFIX):
                continue  # a put() in progress
            if entry.is_symlink():
                if not self._inside_root(entry.path):
                    self.skip(key, "symlink to a path outside the folder")
                    continue
                if os.path.isdir(entry.path):
                    self.skip(key, "symlink to a folder (never followed)")
                    continue
            try:
                st = entry.stat(follow_symlinks=True)
            except FileNotFoundError:
                continue  # removed (or a dangling link) while we walked
            if not os.path.isfile(entry.path):
                self.skip(key, "not a regular file")  # sockets, fifos, devices
                continue
            if not _utf8(key):
                # os.scandir hands undecodable bytes back as lone surrogates; no catalog,
                # URI or JSON can hold such a key
                self.skip(key, "file name is not valid UTF-8")
                continue
            yield self._info(key, st)

    # -- interface -----------------------------------------------------------------------

    async def list(
        self, prefix: str = "", start_after: str | None = None, end_before: str | None = None
    ) -> AsyncIterator[list[ObjectInfo]]:
        self._check_root()
        walker = self._walk("", prefix, start_after, end_before)

        def next_page() -> list[ObjectInfo]:
            page: list[ObjectInfo] = []
            for info in walker:
                page.append(info)
                if len(page) >= self.page_size:
                    break
            return page

        while True:
            page = await asyncio.to_thread(next_page)
            if not page:
                return
            yield page
            if len(page) < self.page_size:
                return

    def _stat(self, key: str) -> os.stat_result:
        path = self._path(key)
        self._check_root()
        try:
            if not self._inside_root(path) or not os.path.isfile(path):
                raise FileNotFoundError(path)
            return os.stat(path)
        except FileNotFoundError:
            raise errors.NotFound(self.provider, self.bucket, "no such object", key=key) from None

    async def head(self, key: str) -> ObjectInfo:
        st = await asyncio.to_thread(self._stat, key)
        return self._info(key, st)

    async def get(self, key: str) -> AsyncIterator[bytes]:
        await asyncio.to_thread(self._stat, key)
        handle = await asyncio.to_thread(open, self._path(key), "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK):
                yield chunk
        finally:
            handle.close()

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        path = self._path(key)
        self._check_root()

        def write() -> None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}{TMP_SUFFIX}")
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)  # readers never see a half-written file

        try:
            await asyncio.to_thread(write)
        except (IsADirectoryError, NotADirectoryError, FileExistsError):
            # a folder cannot hold both a file "a" and a file "a/b", unlike a bucket
            raise errors.InvalidRequest(
                self.provider,
                self.bucket,
                "key collides with a folder or file of the same name",
                key=key,
            ) from None
        return await self.head(key)

    async def delete(self, key: str) -> None:
        path = self._path(key)
        self._check_root()
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.remove, path)

    async def presign(self, key: str, ttl: int = 3600) -> str:
        return Path(self._path(key)).as_uri()

    def uri(self, key: str) -> str:
        return Path(self._path(key)).as_uri()


def _utf8(key: str) -> bool:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
