"""``syncd push``: send a local folder's new and changed files to a dataset's bucket.

Contracts:

* Each file ``DIR/rel`` goes to the key ``<driver path>rel``, through the driver's ``upload``
  (the SDK's transfer manager for large files), with a content type guessed from its name.
  Files the dataset's filters leave out are not sent (they could never be items).
* The dataset's item is written from what the upload returned (no listing), in the same
  transaction as the record of the local file, so a second push with no local change sends
  nothing. A file is re-sent unless it is proven the same: a matching record, or equal MD5.
* ``delete`` removes objects (and their items) that have no local file; the caller allows it
  only when the driver's ``allow_external_delete`` is true.
* The caller holds the dataset's lease, so no sync rewrites the items meanwhile.
* A file whose key the provider would store under another name is refused, with that name:
  Azure Blob turns ``\\`` into ``/`` (``AzureBlobDriver.stored_name``), so such a push
  could never converge (its item and its blob would differ for ever). S3, GCS and folders
  keep ``\\`` as it is.
* Nothing ever writes over or removes the paths in ``protect`` (the catalog's files): one in
  the folder pushed is ``skipped`` with a warning; an object that is one (a folder dataset
  holding the catalog) is refused, not written or deleted.
"""

from __future__ import annotations

import logging
import mimetypes
import os

from providers import errors
from providers.base import mtime_text_of
from providers.local import local_etag
from syncd.store.catalog import Item
from syncd.store.stamps import now
from syncd.transfer.engine import FATAL, Transfer
from syncd.transfer.plan import Row, Verdict

log = logging.getLogger("syncd")


class Push(Transfer):
    direction = "push"

    async def row(self, row: Row) -> None:
        if row.local is None:
            if row.item is None:
                self.forget(row.rel)
            else:
                await self.extra(row)
            return
        if self.protected(row.rel):
            # the catalog itself, in the folder being pushed: a snapshot of a file in use
            # is no object anyone wants
            self.result.counts["skipped"] += 1
            log.warning("skipped %r: syncd's own catalog file, never pushed", row.rel)
            return
        if not self.dataset.filters.accepts(row.rel, row.local.size):
            self.result.counts["filtered"] += 1
            return
        key = self.path + row.rel
        # only a driver that stores some keys under another name has stored_name (Azure)
        stored_name = getattr(self.driver, "stored_name", None)
        if stored_name is not None and stored_name(key) != key:
            self.result.problem(
                "refused",
                key,
                f"Azure Blob stores '\\' as '/': this file would become {stored_name(key)!r}, "
                "another name, and never match its item; rename the file",
                self.on_problem,
            )
            return
        protected = self.protected_object(key)
        if protected is not None:
            self.refuse_protected(key, protected)
            return
        if row.item is not None:
            same = await self.matches(row, unproven=Verdict.MOVE)
            if same is None:
                return
            if same:
                self.result.counts["up_to_date"] += 1
                return
        await self.schedule(row, row.local.size, "+" if row.item is None else "~", key)

    async def move(self, row: Row) -> None:
        path = os.path.join(self.root, *row.rel.split("/"))
        key = self.path + row.rel
        st = os.stat(path)
        before = local_etag(st)
        info = await self.driver.upload(key, path, mimetypes.guess_type(row.rel)[0])
        stamp = now()
        self._items.append(
            Item(
                key=key,
                filename="/" + row.rel,
                uri=self.driver.uri(key),
                size=info.size,
                etag=info.etag,
                content_type=info.content_type,
                mtime=mtime_text_of(info.last_modified),
                version=info.version,
                created_at=stamp,  # kept as it was for an item that existed
                updated_at=stamp,
                md5=info.md5,
            )
        )
        # the item says what the bucket holds now; the record, that the file holds those
        # bytes, only if the file did not change while it was sent (else the next push
        # sends it again)
        if info.size == st.st_size and local_etag(os.stat(path)) == before:
            self.record(row.rel, before, info.etag, info.size)
        else:
            log.warning("%s changed while it was uploaded; the next push sends it again", path)
        self.done(info.size)

    async def extra(self, row: Row) -> None:
        """An object with no local file: counted, and removed (object, then item) with
        ``delete``."""
        assert row.item is not None
        self.result.counts["extra"] += 1
        if not self.delete:
            return
        protected = self.protected_object(row.item.key)
        if protected is not None:
            self.refuse_protected(row.item.key, protected)
            return
        if not self.dry_run:
            try:
                await self.driver.delete(row.item.key)
            except FATAL:
                raise
            except errors.StorageError as exc:
                self.failed(row, exc)
                return
            self._gone.append(row.item.key)
            self.forget(row.rel)
        self.result.counts["removed"] += 1
        self.tell("-", row.item.key)
