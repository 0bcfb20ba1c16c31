"""``syncd pull``: make a local folder mirror a dataset.

Contracts:

* Every file lands under its item's ``filename`` inside the folder, or nowhere: keys that could
  escape it are refused (:mod:`syncd.transfer.paths`), reported, and the rest goes on.
* A file is written to ``.<name>.syncd-tmp`` beside its final name, checked against the size of
  the object it came from, given the object's modification time, then renamed: an interrupted
  pull never leaves a partial file under a final name, and the next pull of that file
  overwrites the temp (one whose item has gone meanwhile stays: temp files are never listed).
  How the bytes are written (small writes, space reserved first) is :mod:`syncd.transfer.writer`.
* What was written is recorded (:mod:`syncd.store.copies`), so the next pull compares a file by
  ``stat`` alone; a file it did not write is compared by size, then by MD5 where the provider
  states one. A complete file is never downloaded again.
* ``delete`` removes only regular files under the folder that are not in the dataset (never a
  symbolic link, never what it points to, never the paths in ``protect``: the catalog).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from typing import Any, BinaryIO, cast

from providers.base import ObjectInfo
from providers.local import TMP_SUFFIX, local_etag
from syncd.transfer.engine import Transfer
from syncd.transfer.paths import UnsafePath, check_relative, is_folder_marker, local_path
from syncd.transfer.plan import Row, Verdict
from syncd.transfer.writer import open_writer, trim


def _open_temp(root: str, rel: str, size: int) -> tuple[str, str, BinaryIO]:
    """Create the folders of ``rel`` and its temp file, exclusively and never through a link
    (a stale temp file, or anything planted under that name, goes first), so the bytes land
    in DIR or nowhere. Returns the final path, the temp path and the open temp file, a
    :mod:`syncd.transfer.writer` for an object of ``size`` bytes."""
    final = local_path(root, rel)
    tmp = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}{TMP_SUFFIX}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileExistsError:  # rare (an interrupted pull's), so not unlinked up front
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o644)
    return final, tmp, open_writer(fd, size)


class _LazyTemp:
    """The temp file of one download, created (:func:`_open_temp`) when the driver first
    touches it: in the driver's own worker thread, so the download costs one hop to a thread
    fewer (each is ~0.1 ms of the event loop's CPU and wakes a thread; small files pay it per
    file). A failure to create it is kept in :attr:`error` and re-raised by the caller in
    place of what the driver made of it, so it is judged as before (refused or failed)."""

    def __init__(self, root: str, rel: str, size: int) -> None:
        self.root, self.rel, self.size = root, rel, size
        self.file: BinaryIO | None = None
        self.final = self.tmp = ""
        self.error: BaseException | None = None

    def open(self) -> BinaryIO:
        """The temp file, created on the first call. Blocking: call from a thread."""
        if self.file is None:
            if self.error is not None:
                raise self.error
            try:
                self.final, self.tmp, self.file = _open_temp(self.root, self.rel, self.size)
            except BaseException as exc:
                self.error = exc
                raise
        return self.file

    def __getattr__(self, name: str) -> Any:
        # only what the object lacks reaches here: the file's own methods (seek, write, ...)
        return getattr(self.open(), name)


def _finish(out: BinaryIO, tmp: str, final: str, info: ObjectInfo) -> str:
    """Check the temp file against the object's size, give it the object's modification time,
    close it and rename it to its final name; return the local ETag to record."""
    with out:
        trim(out)  # before utime: a truncate sets the mtime
        mtime = int(info.last_modified.timestamp() * 1_000_000_000)
        os.utime(out.fileno(), ns=(mtime, mtime))
        # one fstat after utime gives both the size to check and the ETag: the rename below
        # keeps the inode, so its size and mtime are what a stat of the final name shows
        st = os.fstat(out.fileno())
        if st.st_size != info.size:
            raise ValueError(f"wrote {st.st_size} bytes of an object of {info.size}")
    os.replace(tmp, final)
    return local_etag(st)


def _discard(out: BinaryIO | None, tmp: str) -> None:
    """After a failed download: close and remove the temp file (never a final name)."""
    if out is None:
        return  # never created
    with contextlib.suppress(OSError):
        out.close()
    with contextlib.suppress(OSError):
        os.remove(tmp)


class Pull(Transfer):
    direction = "pull"

    def total_bytes(self) -> int:
        return self.catalog.total_size(self.dataset.id, prefix=self.path + self.prefix)

    async def row(self, row: Row) -> None:
        if row.item is None:
            if row.local is None:
                self.forget(row.rel)  # a record of a file gone from both sides
            else:
                await self.extra(row)
            return
        if not row.rel or is_folder_marker(row.rel):
            self.unplan(row.item.size)
            return  # a folder (the driver path's own marker too), not a file: nothing to write
        try:
            check_relative(row.rel)
        except UnsafePath as exc:
            self.result.problem("refused", row.item.key, str(exc), self.on_problem)
            self.unplan(row.item.size)
            return
        if row.local is not None:
            same = await self.matches(row, unproven=Verdict.SAME)
            if same is None or same:
                if same:
                    self.result.counts["up_to_date"] += 1
                self.unplan(row.item.size)
                return
        await self.schedule(row, row.item.size)

    async def move(self, row: Row) -> None:
        item = row.item
        assert item is not None
        # the file-system calls run in worker threads: on the event loop's thread every
        # blocking call gives the GIL away and waits to get it back from the threads busy in
        # the SDK (measured: open and mkdir took 0.6-1.5 ms each there, and the loop, not
        # the store, bounded a pull of small files). The temp file is made in the download's
        # own thread (_LazyTemp); checking and renaming it is one more hop after.
        temp = _LazyTemp(self.root, row.rel, item.size)
        try:
            try:
                info = await self.driver.download(item.key, cast(BinaryIO, temp), size=item.size)
            except Exception:
                if temp.error is not None:
                    raise temp.error from None
                raise
            out = temp.file or await asyncio.to_thread(temp.open)  # a driver that wrote nothing
            copy_etag = await asyncio.to_thread(_finish, out, temp.tmp, temp.final, info)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(_discard, temp.file, temp.tmp))
            raise
        self.record(row.rel, copy_etag, info.etag, info.size)
        self.done(info.size)

    async def extra(self, row: Row) -> None:
        """A local file the dataset does not have: counted, and removed with ``delete``."""
        self.result.counts["extra"] += 1
        if not self.delete:
            return
        path = os.path.join(self.root, *row.rel.split("/"))
        if self.protected(row.rel):
            return
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                return  # a symbolic link (listed when it points inside): never removed
            if not self.dry_run:
                await asyncio.to_thread(os.remove, path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.failed(row, exc)
            return
        self.forget(row.rel)
        self.result.counts["removed"] += 1
