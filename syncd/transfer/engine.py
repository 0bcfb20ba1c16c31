"""The loop pull and push share: walk the aligned rows, judge each, move files in parallel.

A subclass says what a row means (:meth:`Transfer.row`) and how one file moves
(:meth:`Transfer.move`). This class holds the rest: bounded concurrency, the batch of catalog
writes (records of local copies, and for push the items it uploaded) committed together every
:data:`FLUSH_EVERY` files and at the end (a crash loses at most one batch of records, which only
costs a re-check), and the one rule for errors: a file that cannot move is reported and the run
goes on; credentials, permissions or a missing bucket stop it, since every file would fail alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from typing import Protocol

from providers import errors
from providers.base import Driver, ObjectInfo
from providers.local import LocalDriver
from syncd.errors import SyncFailed
from syncd.reconcile.sync import LeaseLost
from syncd.store import lease
from syncd.store.catalog import Catalog, Dataset, Item
from syncd.store.copies import Copy, LocalCopies
from syncd.store.db import transaction
from syncd.transfer.common import Bounded, FileHook, ProblemHook, TransferResult, file_md5
from syncd.transfer.paths import UnsafePath
from syncd.transfer.plan import Row, Verdict, align, expected_md5, judge

log = logging.getLogger("syncd")

FLUSH_EVERY = 200

#: errors that would fail every file the same way: the run stops at the first one
FATAL = (errors.Unauthenticated, errors.PermissionDenied, errors.BucketNotFound)


class Meter(Protocol):
    """A progress display: ``total`` bytes planned (grows and shrinks as rows are judged),
    ``advance`` when bytes are moved."""

    def plan(self, n: int) -> None: ...

    def advance(self, n: int) -> None: ...


class Transfer:
    direction = ""

    def __init__(
        self,
        catalog: Catalog,
        dataset: Dataset,
        driver: Driver,
        root: str,
        *,
        prefix: str = "",
        delete: bool = False,
        dry_run: bool = False,
        jobs: int = 8,
        on_problem: ProblemHook | None = None,
        meter: Meter | None = None,
        owner: str | None = None,
        protect: Iterable[str] = (),
        on_file: FileHook | None = None,
    ) -> None:
        """``prefix``: only files whose path relative to the driver path starts with it;
        ``owner``: the holder of the dataset's lease, renewed and checked at every commit
        (push writes items); ``protect``: files never written, replaced or removed, on
        either side (the catalog's own: a pull into its folder, a push into a folder
        dataset that holds it); ``on_file``: told of each file moved or removed (on a dry
        run: that would be), see :data:`~syncd.transfer.common.FileHook`."""
        self.catalog, self.dataset, self.driver, self.root = catalog, dataset, driver, root
        self.owner = owner
        self.protect = {os.path.realpath(p) for p in protect}
        # a cheap first test (most names are not the catalog's), casefolded for the file
        # systems that ignore case; then the real path, or the same file by inode
        self._protect_names = {os.path.basename(p).casefold() for p in self.protect}
        self._protect_ids: set[tuple[int, int]] = set()
        for path in self.protect:
            with contextlib.suppress(OSError):
                st = os.stat(path)
                self._protect_ids.add((st.st_dev, st.st_ino))
        self.prefix, self.delete, self.dry_run = prefix, delete, dry_run
        self.on_problem, self.meter, self.on_file = on_problem, meter, on_file
        self.path = dataset.driver.path
        self.md5_provider = dataset.driver.type
        self.copies = LocalCopies(catalog.db, dataset.id, root)
        self.result = TransferResult(self.direction, dataset.name, root, dry_run)
        self.work = Bounded(jobs)
        self.fatal: BaseException | None = None
        self.upfront = False
        self._records: list[Copy] = []
        self._forget: list[str] = []
        self._items: list[Item] = []
        self._gone: list[str] = []

    # -- what subclasses provide -----------------------------------------------------------

    async def row(self, row: Row) -> None:
        raise NotImplementedError

    async def move(self, row: Row) -> None:
        raise NotImplementedError

    def source_items(self) -> Iterable[Item]:
        """The items to mirror or compare with, in key order, each under the driver path and
        ``prefix``: the dataset's live items (a pull of a snapshot: the snapshot's)."""
        return self.catalog.iter_items(self.dataset.id, prefix=self.path + self.prefix)

    def total_bytes(self) -> int | None:
        """The bytes the run may move, if known before it starts (for the progress ETA)."""
        return None

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> TransferResult:
        started = time.monotonic()
        total = self.total_bytes()
        self.upfront = total is not None
        if self.meter is not None and total is not None:
            self.meter.plan(total)
        path_len = len(self.path)
        items = ((item.key[path_len:], item) for item in self.source_items())
        keeper = (
            asyncio.create_task(
                lease.keep(self.catalog.db, lease.for_dataset(self.dataset.id), self.owner)
            )
            if self.owner
            else None
        )
        try:
            async for row in align(items, self._local_files(), self.copies.iter(self.prefix)):
                if self.fatal is not None or self.work.error is not None:
                    break
                await self.row(row)
                pending = len(self._records) + len(self._forget) + len(self._items)
                if pending + len(self._gone) >= FLUSH_EVERY:
                    self.flush()
            await self.work.join()
        finally:
            await self.work.cancel()
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            self.flush()
        if self.fatal is not None:
            raise self.fatal
        self.result.seconds = time.monotonic() - started
        return self.result

    async def _local_files(self) -> AsyncIterator[ObjectInfo]:
        if not os.path.isdir(self.root):
            return  # a dry run into a folder that does not exist yet
        local = LocalDriver(self.root)
        try:
            async for page in local.list(prefix=self.prefix):
                for obj in page:
                    yield obj
        except PermissionError as exc:
            # stop: going on would take the unreadable folder's files for missing ones
            raise SyncFailed(
                f"cannot read {exc.filename}: {exc.strerror}; fix its permissions or move it "
                f"out of {self.root} (the run stopped there; nothing was removed)"
            ) from None
        finally:
            # entries the listing left out (a symbolic link loop, a socket, a name that is
            # not UTF-8), each already named in a warning by the driver
            self.result.counts["skipped"] += local.skipped

    def _protected_path(self, path: str) -> str | None:
        """The ``protect`` file ``path`` is (its real path), or None."""
        # the name test spares a realpath per file; a symbolic link of another name may
        # still lead to the catalog (one lstat to know)
        if os.path.basename(path).casefold() not in self._protect_names and not (
            os.path.islink(path)
        ):
            return None
        real = os.path.realpath(path)
        if real in self.protect:
            return real
        try:
            st = os.stat(path)
        except OSError:
            return None
        return real if (st.st_dev, st.st_ino) in self._protect_ids else None

    def protected(self, rel: str) -> str | None:
        """The ``protect`` file the local file ``rel`` is, or None."""
        return self._protected_path(os.path.join(self.root, *rel.split("/")))

    def protected_object(self, key: str) -> str | None:
        """The ``protect`` file the object ``key`` is, if the dataset is a local folder
        holding it (writing or deleting that object would replace or remove it)."""
        if not isinstance(self.driver, LocalDriver):
            return None
        return self._protected_path(os.path.join(self.driver.root, *key.split("/")))

    def refuse_protected(self, key: str, path: str) -> None:
        """Report ``key`` refused: moving it would write over or remove syncd's own ``path``."""
        where = (
            "pull into another folder, or keep the catalog elsewhere (--db)"
            if self.direction == "pull"
            else "keep the catalog outside the dataset's folder (--db)"
        )
        self.result.problem(
            "refused",
            key,
            f"{path} is syncd's own catalog file (or one of its sidecars), in use; it is never "
            f"written, replaced or removed: {where}",
            self.on_problem,
        )

    def tell(self, action: str, key: str) -> None:
        """Report a file moved or removed (on a dry run: that would be) to ``on_file``."""
        if self.on_file is not None:
            self.on_file(action, key)

    async def schedule(self, row: Row, size: int, action: str, key: str) -> None:
        """Count ``row`` as moved (a dry run stops here) or start moving it; ``action`` and
        ``key`` are what :meth:`tell` says of it (at once on a dry run, else once moved)."""
        if self.dry_run:
            self.result.counts["transferred"] += 1
            self.result.counts["bytes"] += size
            self.tell(action, key)
            return
        if self.meter is not None and not self.upfront:
            self.meter.plan(size)

        async def one() -> None:
            try:
                await self.move(row)
            except Exception as exc:
                self.report(row, exc)
            else:
                self.tell(action, key)

        await self.work.start(one)

    def report(self, row: Row, exc: Exception) -> None:
        """Classify a failure of one file: refused (unsafe path), fatal (credentials,
        permissions, bucket: the run stops), or failed (reported; the run goes on)."""
        if isinstance(exc, UnsafePath):
            key = row.item.key if row.item is not None else self.path + row.rel
            self.result.problem("refused", key, str(exc), self.on_problem)
        elif isinstance(exc, FATAL):
            self.fatal = self.fatal or exc
        elif isinstance(exc, errors.StorageError | OSError | ValueError):
            self.failed(row, exc)
        else:
            raise exc

    async def matches(self, row: Row, unproven: Verdict) -> bool | None:
        """Whether the local file and the object hold the same bytes (see :func:`judge`);
        a match proven by hashing is recorded, so it is not hashed again. ``None``: the
        check itself failed (reported; leave the file alone)."""
        item, local = row.item, row.local
        assert item is not None and local is not None
        md5 = expected_md5(item, self.md5_provider)
        verdict = judge(item, local, row.copy, md5, unproven=unproven)
        try:
            if (
                md5 is None
                and row.copy is None
                and local.size == item.size
                and self.md5_provider in ("gcs", "azure")
            ):
                # items from events or an older catalog may lack the MD5 the provider keeps:
                # one HEAD (no transfer) turns an unproven match into a hash comparison
                info = await self.driver.head(item.key)
                if info.etag == item.etag and info.md5:
                    md5, verdict = info.md5, Verdict.HASH
            if verdict is not Verdict.HASH:
                return verdict is Verdict.SAME
            path = os.path.join(self.root, *row.rel.split("/"))
            same = await asyncio.to_thread(file_md5, path) == md5
        except Exception as exc:
            self.report(row, exc)
            return None
        if same and not self.dry_run:
            self.record(row.rel, local.etag, item.etag, item.size)
        return same

    # -- outcomes --------------------------------------------------------------------------

    def unplan(self, size: int) -> None:
        """``size`` bytes counted in the up-front total will not move (already in place)."""
        if self.meter is not None and self.upfront:
            self.meter.plan(-size)

    def done(self, size: int) -> None:
        self.result.counts["transferred"] += 1
        self.result.counts["bytes"] += size
        if self.meter is not None:
            self.meter.advance(size)

    def failed(self, row: Row, exc: BaseException) -> None:
        reason = exc.cause if isinstance(exc, errors.StorageError) else str(exc)
        if isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        key = row.item.key if row.item is not None else self.path + row.rel
        self.result.problem("failed", key, reason, self.on_problem)

    def record(self, rel: str, local_etag: str, etag: str, size: int) -> None:
        self._records.append(Copy(rel, local_etag, etag, size))

    def forget(self, rel: str) -> None:
        self._forget.append(rel)

    def flush(self) -> None:
        """Commit the pending records (and items) in one transaction; with an ``owner``,
        only while it still holds the dataset's lease (``LeaseLost`` otherwise)."""
        if self.dry_run or not (self._records or self._forget or self._items or self._gone):
            return
        with transaction(self.catalog.db):
            # ordered against event batches (which decide from what they read, holding the
            # lock exclusively): the change log's created/updated/deleted are decided here too
            self.catalog.db.lock_writes(exclusive=False)
            name = lease.for_dataset(self.dataset.id)
            if self.owner and not lease.renew(self.catalog.db, name, self.owner):
                raise LeaseLost(
                    f"dataset {self.dataset.name!r} was taken over by another process while "
                    f"this {self.direction} stalled; it stopped without writing further"
                )
            self.catalog.write_items(self.dataset.id, self._items, source="push")
            self.catalog.delete_items(self.dataset.id, self._gone, source="push")
            self.copies.save(self._records, self._forget)
        self._records, self._forget, self._items, self._gone = [], [], [], []
