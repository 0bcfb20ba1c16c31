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
* :func:`stat_object` holds these rules for one key; the listing and the daemon's folder watch
  both use it, so they report the same size, ETag and skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import operator
import os
import re
import shutil
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO
from urllib.parse import quote

from providers import errors
from providers.base import Driver, ObjectInfo
from providers.content_types import guess as content_type

CHUNK = 1024 * 1024
#: a character urllib.parse.quote (safe="/") would percent-encode: keys without one are
#: their own quoted form (checked in C, not quoted character by character)
_NEEDS_QUOTING = re.compile(r"[^A-Za-z0-9_.~/-]")
TMP_SUFFIX = ".syncd-tmp"
#: the longest file name (bytes) most file systems take (ext4, XFS, btrfs, APFS, NTFS)
NAME_MAX = 255


def temp_path(path: str) -> str:
    """The temp file a write of ``path`` goes through, in the same folder: ``.<name>`` plus
    :data:`TMP_SUFFIX`, or, where that would exceed :data:`NAME_MAX` bytes (a name of 244 or
    more), ``.<SHA-256 of the name, 40 hex digits>`` plus the suffix: every name that fits
    the file system has a temp name that fits too. Both end in the suffix, so no listing
    shows them, and no key can be one (keys ending in the suffix are refused or unlisted)."""
    folder, name = os.path.split(path)
    tmp = f".{name}{TMP_SUFFIX}"
    if len(os.fsencode(tmp)) > NAME_MAX:
        tmp = f".{hashlib.sha256(os.fsencode(name)).hexdigest()[:40]}{TMP_SUFFIX}"
    return os.path.join(folder, tmp)


class LocalDriver(Driver):
    provider = "local"
    guesses_content_type = True

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
        return _inside(self.root, path)

    def _info(self, key: str, st: os.stat_result) -> ObjectInfo:
        return _object_info(key, st)

    def observed_at(self) -> None:
        """None: a folder watch stamps a created file with its modification time, which a
        copy that keeps times (``cp -p``, ``rsync -a``, ``tar x``, ``mv``) leaves in the
        past, so a listing's time cannot tell an older event from a newer one."""
        return None

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
        entries.sort(key=_FIRST)
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
            if not key.startswith(prefix) or (start_after is not None and key <= start_after):
                continue
            if not entry.is_symlink() and not key.endswith(TMP_SUFFIX):
                # the common case, a plain entry that is a regular file with a UTF-8 name,
                # in one stat; anything else (links, odd files, races) takes stat_object's
                # full rules below
                try:
                    st = entry.stat()
                except OSError:
                    st = None
                if st is not None and S_ISREG(st.st_mode) and (key.isascii() or is_utf8(key)):
                    yield _object_info(key, st)
                    continue
            found = stat_object(self.root, key, entry)
            if isinstance(found, Skipped):
                self.skip(key, found.reason)
            elif found is not None:
                yield found

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

    async def folders(self, prefix: str = "") -> list[str]:
        if prefix and not prefix.endswith("/"):
            return []
        directory = os.path.join(self.root, *prefix.rstrip("/").split("/")) if prefix else self.root

        def scan() -> list[str]:
            try:
                with os.scandir(directory) as it:
                    return sorted(
                        prefix + e.name + "/" for e in it if e.is_dir(follow_symlinks=False)
                    )
            except (FileNotFoundError, NotADirectoryError):
                return []

        return await asyncio.to_thread(scan)

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

    async def _write(self, key: str, fill: Callable[[str], None]) -> ObjectInfo:
        """Create or replace ``key`` by ``fill(temp_path)`` then a rename, so readers never
        see a half-written file."""
        path = self._path(key)
        self._check_root()

        def write() -> None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = temp_path(path)
            fill(tmp)
            os.replace(tmp, path)

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

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        return await self._write(key, lambda tmp: Path(tmp).write_bytes(data))

    async def upload(self, key: str, path: str, content_type: str | None = None) -> ObjectInfo:
        return await self._write(key, lambda tmp: shutil.copyfile(path, tmp))

    async def download(self, key: str, out: BinaryIO, size: int | None = None) -> ObjectInfo:
        info = await self.head(key)

        def copy() -> None:
            out.seek(0)
            out.truncate()
            with open(self._path(key), "rb") as src:
                shutil.copyfileobj(src, out, CHUNK)

        await asyncio.to_thread(copy)
        return info

    async def delete(self, key: str) -> None:
        path = self._path(key)
        self._check_root()
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.remove, path)

    async def presign(self, key: str, ttl: int = 3600) -> str:
        return Path(self._path(key)).as_uri()

    def uri(self, key: str) -> str:
        return Path(self._path(key)).as_uri()

    def uris(self, keys: list[str]) -> list[str]:
        # what uri() gives for a listed (valid, UTF-8) key: the root's URI, "/", and the key
        # percent-encoded as Path.as_uri() encodes it (quote, "/" kept); no Path per key
        base = Path(self.root).as_uri()
        if not base.endswith("/"):
            base += "/"
        unsafe = _NEEDS_QUOTING.search
        return [base + (quote(k) if unsafe(k) else k) for k in keys]


@dataclass(frozen=True, slots=True)
class Skipped:
    """An entry a listing leaves out and reports (``Driver.skip``), with why."""

    reason: str


def stat_object(
    root: str, key: str, entry: os.DirEntry[str] | None = None
) -> ObjectInfo | Skipped | None:
    """What a listing of the folder ``root`` reports for ``key``, from a fresh look at the disk.

    The one place the folder's rules live, shared by :meth:`LocalDriver.list` and the daemon's
    folder watch (``syncd.daemon.watch``), so the two cannot disagree on a key's size, ETag or
    whether it is an object at all:

    * :class:`ObjectInfo`: a regular file, or a symlink to one inside ``root``;
    * :class:`Skipped`: an entry the listing leaves out *and reports*: a symlink leaving the
      folder or pointing to a folder, a symlink loop or other entry ``stat`` cannot read, a
      socket/fifo/device, a name that is not UTF-8;
    * ``None``: nothing the listing would mention: no such entry (or it vanished while we
      looked), a folder, a driver temp file (``TMP_SUFFIX``), or a path below a symlinked
      folder (listings never descend those).

    ``root`` must be a real path (``os.path.realpath``), as ``LocalDriver.root`` is. ``entry``
    is the ``os.scandir`` entry of ``key`` when the caller is walking: its cached type saves
    system calls, and a walk never descends a link, so the parent check is skipped. ``key``
    must be a well-formed key (``/``-separated, no empty, ``.`` or ``..`` part): it is not
    validated here. Blocking: call it from a worker thread in async code.
    """
    if key.endswith(TMP_SUFFIX):
        return None  # a put() in progress
    if entry is not None:
        path = entry.path
        is_link = entry.is_symlink()
    else:
        path = os.path.join(root, *key.split("/"))
        parent = os.path.dirname(path)
        # a key reached through a linked folder is not in any listing (which never follows
        # one); checking the parent chain also stops a watcher's stale path from escaping
        if parent != root and os.path.realpath(parent) != parent:
            return None
        try:
            is_link = stat.S_ISLNK(os.lstat(path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return None
    if is_link and not _inside(root, path):
        return Skipped("symlink to a path outside the folder")
    try:
        st = entry.stat(follow_symlinks=True) if entry is not None else os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None  # removed (or a dangling link) while we looked
    except OSError as exc:
        # a link loop (ELOOP), a file the stat cannot reach: left out and reported, like
        # any entry no key can stand for; raising would fail every listing of the folder
        if exc.errno == errno.ELOOP:
            return Skipped("symbolic link loop (never followed)")
        return Skipped(f"cannot read it: {exc.strerror or exc}")
    if stat.S_ISDIR(st.st_mode):
        return Skipped("symlink to a folder (never followed)") if is_link else None
    if not stat.S_ISREG(st.st_mode):
        return Skipped("not a regular file")  # sockets, fifos, devices
    if not is_utf8(key):
        # os.scandir and inotify hand undecodable bytes back as lone surrogates; no
        # catalog, URI or JSON can hold such a key
        return Skipped("file name is not valid UTF-8")
    return _object_info(key, st)


def is_utf8(name: str) -> bool:
    """True when ``name`` encodes to UTF-8 (it holds no lone surrogates from bad bytes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _inside(root: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


def local_etag(st: os.stat_result) -> str:
    """The ETag of a local file: its size and modification time, never its content."""
    return f"{st.st_size:x}-{st.st_mtime_ns:x}"


def _object_info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(
        key,
        st.st_size,
        f"{st.st_size:x}-{st.st_mtime_ns:x}",  # local_etag(st), inlined: once per file
        _fromtimestamp(st.st_mtime_ns / 1e9, UTC),
        content_type(key),
    )


_FIRST = operator.itemgetter(0)
_fromtimestamp = datetime.fromtimestamp
