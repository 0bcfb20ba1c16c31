"""``syncd pull``: make a local folder mirror a dataset.

Contracts:

* Every file lands under its item's ``filename`` inside the folder, or nowhere: keys that could
  escape it are refused (:mod:`syncd.transfer.paths`), reported, and the rest goes on.
* A file is written to ``.<name>.syncd-tmp`` beside its final name (a hash of the name for a
  name too long to take the suffix, :func:`providers.local.temp_path`), checked against the size of
  the object it came from, given the object's modification time, then renamed: an interrupted
  pull never leaves a partial file under a final name, and the next pull of that file
  overwrites the temp (one whose item has gone meanwhile stays: temp files are never listed).
  How the bytes are written (small writes, space reserved first) is :mod:`syncd.transfer.writer`.
* What was written is recorded (:mod:`syncd.store.copies`), so the next pull compares a file by
  ``stat`` alone; a file it did not write is compared by size, then by MD5 where the provider
  states one. A complete file is never downloaded again.
* ``delete`` removes only regular files under the folder that are not in the dataset (never a
  symbolic link, never what it points to, never the paths in ``protect``: the catalog).
* Nothing ever writes over the paths in ``protect`` (the catalog and its sidecar files, in use
  by this very pull): an object that would land on one is refused, with the reason.
* A key that cannot be a file beside another (``a`` beside ``a/b``: a folder cannot hold both)
  is refused ("file/folder conflict"), not failed: no retry can write it.
* An object gone from the bucket since the last sync fails and is counted ``gone``: the
  catalog is stale, and only a sync (``syncd pull --sync``) makes the retry succeed.
* A folder marker (a key ending in ``/``) names a folder; one holding bytes is ``skipped``
  with a warning (a folder cannot hold them).
* A pull of a snapshot (``snapshot`` and ``items``: the snapshot's items, in key order) reads
  exactly the recorded state of each object (:meth:`providers.base.Driver.download_version`:
  its version, or without one the current bytes only while their ETag is the recorded one) and
  checks the file before the rename: the recorded size, the recorded ETag (GCS: a metadata
  change gives the same bytes a new one, so its generation and MD5 stand for it) and the MD5
  where the provider states one. A local file of the same size is taken as the same only when
  proven (a record or an equal MD5). An object whose recorded bytes are gone fails and is
  counted ``gone``, with one line saying why; nothing is written under its final name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO, cast

from providers import errors
from providers.base import ObjectInfo
from providers.local import local_etag, temp_path
from syncd.store.catalog import Item
from syncd.transfer.common import file_md5
from syncd.transfer.engine import Transfer
from syncd.transfer.paths import UnsafePath, check_relative, is_folder_marker, local_path
from syncd.transfer.plan import Row, Verdict, expected_md5
from syncd.transfer.writer import open_writer, trim

log = logging.getLogger("syncd")

_FOLDER_THERE = (
    "file/folder conflict: a folder stands at this path (holding other keys' files, such as "
    "'a/b' beside the key 'a'); a folder cannot hold both, as a bucket can"
)


def _open_temp(root: str, rel: str, size: int) -> tuple[str, str, BinaryIO]:
    """Create the folders of ``rel`` and its temp file, exclusively and never through a link
    (a stale temp file, or anything planted under that name, goes first), so the bytes land
    in DIR or nowhere. Returns the final path, the temp path and the open temp file, a
    :mod:`syncd.transfer.writer` for an object of ``size`` bytes."""
    final = local_path(root, rel)
    with contextlib.suppress(FileNotFoundError):
        # a folder (not a link: a rename replaces a link, never follows it) at the final
        # name: refused before any byte is fetched, no retry could place this file
        if stat.S_ISDIR(os.lstat(final).st_mode):
            raise UnsafePath(_FOLDER_THERE)
    tmp = temp_path(final)
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


def _finish(
    out: BinaryIO,
    tmp: str,
    final: str,
    info: ObjectInfo,
    *,
    size: int | None = None,
    md5: str | None = None,
) -> str:
    """Check the temp file against the object's size (and, for a snapshot, the recorded
    ``size`` and ``md5``), give it the object's modification time, close it and rename it
    to its final name; return the local ETag to record."""
    with out:
        trim(out)  # before utime: a truncate sets the mtime
        mtime = int(info.last_modified.timestamp() * 1_000_000_000)
        os.utime(out.fileno(), ns=(mtime, mtime))
        # one fstat after utime gives both the size to check and the ETag: the rename below
        # keeps the inode, so its size and mtime are what a stat of the final name shows
        st = os.fstat(out.fileno())
        if st.st_size != info.size:
            raise ValueError(f"wrote {st.st_size} bytes of an object of {info.size}")
        if size is not None and st.st_size != size:
            raise ValueError(f"read {st.st_size} bytes where the snapshot recorded {size}")
        if md5 is not None:
            out.flush()
            got = file_md5(tmp)
            if got != md5:
                raise ValueError(
                    f"the bytes read fail the snapshot's MD5 (recorded {md5}, read {got})"
                )
    try:
        os.replace(tmp, final)
    except IsADirectoryError:
        # another key's folder made meanwhile (a/b pulled beside a): refused, not failed
        # (the caller removes the temp file)
        raise UnsafePath(_FOLDER_THERE) from None
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

    def __init__(
        self,
        *args: Any,
        snapshot: str | None = None,
        items: Callable[[str], Iterable[Item]] | None = None,
        **kwargs: Any,
    ) -> None:
        """As :class:`Transfer`; with ``snapshot`` (its tag, for messages) and ``items``
        (``items(prefix)``: the snapshot's items whose keys start with ``prefix``, in key
        order), a pull of exactly those recorded objects (see the module docstring)."""
        super().__init__(*args, **kwargs)
        if (snapshot is None) != (items is None):
            raise ValueError("a snapshot pull needs both the snapshot's tag and its items")
        self.snapshot, self._source = snapshot, items
        self.result.snapshot = snapshot

    def source_items(self) -> Iterable[Item]:
        if self._source is None:
            return super().source_items()
        return self._source(self.path + self.prefix)

    def total_bytes(self) -> int | None:
        if self._source is not None:
            return None  # the meter's total grows as the snapshot's items are judged
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
            if row.item.size:
                # its bytes have nowhere to go: said, not dropped silently
                self.result.counts["skipped"] += 1
                log.warning(
                    "skipped %r: a folder marker holding %d bytes (a folder cannot hold "
                    "bytes; only its name is pulled)",
                    row.item.key,
                    row.item.size,
                )
            return  # a folder (the driver path's own marker too), not a file: nothing to write
        try:
            check_relative(row.rel)
        except UnsafePath as exc:
            self.result.problem("refused", row.item.key, str(exc), self.on_problem)
            self.unplan(row.item.size)
            return
        protected = self.protected(row.rel)
        if protected is not None:
            self.refuse_protected(row.item.key, protected)
            self.unplan(row.item.size)
            return
        if row.local is not None:
            # a snapshot's bytes must be proven in place: a file of the same size may well be
            # the object's later state
            unproven = Verdict.SAME if self.snapshot is None else Verdict.MOVE
            same = await self.matches(row, unproven=unproven)
            if same is None or same:
                if same:
                    self.result.counts["up_to_date"] += 1
                self.unplan(row.item.size)
                return
        await self.schedule(row, row.item.size, "+" if row.local is None else "~", row.item.key)

    def report(self, row: Row, exc: Exception) -> None:
        """As :meth:`Transfer.report`; an object not found is ``gone`` (and failed): it left
        the bucket after the last sync, so only a sync makes a retry succeed."""
        if isinstance(exc, errors.VersionGone) and row.item is not None:
            # the snapshot's bytes of this object no longer exist: the reason is the line
            self.result.counts["gone"] += 1
            self.result.problem("failed", row.item.key, exc.cause, self.on_problem)
            return
        if isinstance(exc, errors.NotFound) and row.item is not None:
            self.result.counts["gone"] += 1
            self.result.problem(
                "failed",
                row.item.key,
                "gone from the bucket since the last sync of the dataset (the catalog is "
                f"stale): run `syncd sync --dataset {self.dataset.name}`, or pull with --sync",
                self.on_problem,
            )
            return
        super().report(row, exc)

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
                if self.snapshot is None:
                    info = await self.driver.download(
                        item.key, cast(BinaryIO, temp), size=item.size
                    )
                else:
                    info = await self.driver.download_version(
                        item.key,
                        cast(BinaryIO, temp),
                        version=item.version,
                        etag=item.etag,
                        size=item.size,
                    )
            except Exception:
                if temp.error is not None:
                    raise temp.error from None
                raise
            out = temp.file or await asyncio.to_thread(temp.open)  # a driver that wrote nothing
            if self.snapshot is None:
                copy_etag = await asyncio.to_thread(_finish, out, temp.tmp, temp.final, info)
            else:
                if info.etag != item.etag and not (item.version and self.md5_provider == "gcs"):
                    raise ValueError(
                        f"read ETag {info.etag!r} where the snapshot recorded {item.etag!r}"
                    )
                copy_etag = await asyncio.to_thread(
                    _finish,
                    out,
                    temp.tmp,
                    temp.final,
                    info,
                    size=item.size,
                    md5=expected_md5(item, self.md5_provider),
                )
        except BaseException:
            await asyncio.shield(asyncio.to_thread(_discard, temp.file, temp.tmp))
            raise
        # the record names the bytes the file holds: the snapshot's ETag for a snapshot's
        self.record(row.rel, copy_etag, item.etag if self.snapshot else info.etag, info.size)
        self.done(info.size)

    async def extra(self, row: Row) -> None:
        """A local file the dataset does not have: counted, and removed with ``delete``."""
        if self.protected(row.rel):
            return  # syncd's own catalog: not part of the mirror, never removed
        self.result.counts["extra"] += 1
        if not self.delete:
            return
        path = os.path.join(self.root, *row.rel.split("/"))
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
        self.tell("-", self.path + row.rel)
