"""The Python API for notebooks and pipelines: blocking calls by dataset name, on the same
engine as the ``syncd`` command (:mod:`syncd.api`)::

    import syncd

    run = syncd.sync("s3://acme-images/raw/", dataset="birds", db="syncd.db")
    print(run.counts["created"], "new items")
    for item in syncd.items("birds", db="syncd.db", prefix="train/"):
        print(item.filename, item.size, item.uri)
    got = syncd.pull("birds", "data/birds", db="syncd.db")      # bytes to disk
    sent = syncd.push("field-photos/", dataset="birds", db="syncd.db")
    assert got.ok and sent.ok

Contracts:

* Each call opens the catalog (``db``, default ``$SYNCD_DB`` else ``./syncd.db``), does its
  work and closes it; :func:`items` streams, holding one page of items at a time.
* Failures raise, as the CLI reports them: :class:`syncd.errors.UsageError` (bad input,
  unknown dataset), :class:`syncd.errors.SyncFailed`, :class:`providers.errors.StorageError`.
  A pull or push that moved what it could returns a result with ``ok`` False and its
  ``problems`` (refused keys, failed files) instead of raising.
* The calls work inside a running event loop too (Jupyter runs one): the work then runs on a
  thread of its own, with its own catalog connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

from syncd import api
from syncd.errors import UsageError
from syncd.limits import MaxDelete
from syncd.query import Query, QueryError, parse_where
from syncd.reconcile.filters import Filters
from syncd.reconcile.sync import SyncOptions, SyncResult
from syncd.store.catalog import Catalog, Item
from syncd.store.changes import Change
from syncd.store.db import default_db_path
from syncd.transfer.common import TransferResult

T = TypeVar("T")


def _run(
    work: Callable[[Catalog], Awaitable[T]],
    db: str | None,
    *,
    dry_run: bool = False,
    create: bool = False,
) -> T:
    """Run ``work(catalog)`` to completion, on this thread, or on a new one if an event loop
    is already running here. The catalog is opened on the thread that uses it (sqlite
    connections belong to one thread)."""

    async def main() -> T:
        path = db or default_db_path()
        if dry_run:
            catalog = Catalog.open_preview(path) if create else Catalog.open_reader(path)
        else:
            catalog = Catalog.open(path, create=create)
        try:
            return await work(catalog)
        finally:
            catalog.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="syncd") as pool:
        return pool.submit(asyncio.run, main()).result()


def sync(
    source: str | None = None,
    *,
    dataset: str,
    db: str | None = None,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    max_size: int | None = None,
    max_delete: MaxDelete | None = None,
    dry_run: bool = False,
    wait: bool = False,
    replace_filters: bool = False,
) -> SyncResult:
    """Make ``dataset`` equal to ``source`` (``s3://``, ``gs://``, ``az://``, a folder), or to
    its bound source when ``source`` is None; ``syncd sync``. Filters that differ from the
    stored ones are refused (``UsageError`` showing both) unless ``replace_filters``."""
    filters = Filters(include, exclude, max_size) if (include or exclude or max_size) else None
    options = SyncOptions(dry_run=dry_run, max_delete=max_delete)
    return _run(
        lambda catalog: api.sync(
            catalog,
            dataset,
            source=source,
            filters=filters,
            options=options,
            wait=wait,
            replace_filters=replace_filters,
        ),
        db,
        dry_run=dry_run,
        create=True,  # a first sync creates the catalog
    )


def pull(
    dataset: str,
    target_dir: str,
    *,
    db: str | None = None,
    prefix: str = "",
    delete: bool = False,
    dry_run: bool = False,
    jobs: int = 8,
) -> TransferResult:
    """Make ``target_dir`` mirror ``dataset``: download what is missing or changed;
    ``syncd pull``."""
    return _run(
        lambda catalog: api.pull(
            catalog, dataset, target_dir, prefix=prefix, delete=delete, dry_run=dry_run, jobs=jobs
        ),
        db,
        dry_run=dry_run,
    )


def push(
    source_dir: str,
    *,
    dataset: str,
    db: str | None = None,
    delete: bool = False,
    dry_run: bool = False,
    jobs: int = 8,
    wait: bool = False,
) -> TransferResult:
    """Upload ``source_dir``'s new and changed files into ``dataset``'s bucket and update its
    items; ``syncd push``."""
    return _run(
        lambda catalog: api.push(
            catalog, dataset, source_dir, delete=delete, dry_run=dry_run, jobs=jobs, wait=wait
        ),
        db,
        dry_run=dry_run,
    )


def changes(
    dataset: str | None = None,
    *,
    after: int | None = None,
    follow: bool = False,
    kinds: tuple[str, ...] = (),
    db: str | None = None,
    poll: float = 0.5,
) -> Iterator[Change]:
    """The change log (``syncd changes``): :class:`~syncd.store.changes.Change` records after
    cursor ``after`` (default: from the start of what the log holds), in cursor order, of one
    dataset if given. With ``follow``, waits for new changes (looking every ``poll`` seconds)
    and never ends; otherwise stops at the newest. Keep the last ``cursor`` you processed and
    pass it as ``after`` to go on from there. Raises ``CursorGone`` for a cursor older than the
    log's retention. Consume it on the thread that started it."""
    import time

    catalog = Catalog.open_reader(db or default_db_path())
    cursor = after or 0
    try:
        while True:
            found, cursor = api.read_changes(
                catalog, after=cursor, limit=1000, dataset=dataset, kinds=kinds
            )
            yield from found
            if len(found) == 1000:
                continue
            if not follow:
                return
            time.sleep(poll)
    finally:
        catalog.close()


def items(
    dataset: str,
    *,
    db: str | None = None,
    prefix: str = "",
    limit: int | None = None,
    where: str | Sequence[str] = (),
    sort: str = "key",
    order: str = "asc",
) -> Iterator[Item]:
    """The dataset's items matching ``where`` (one ``--where`` expression or a list of them,
    all of which must hold; see :mod:`syncd.query`) under ``prefix``, ordered by ``sort``
    (``key``, ``size`` or ``mtime``; ties by key) ``order`` (``asc``/``desc``), at most
    ``limit``, streamed a page at a time; ``syncd items ls``. A bad expression raises
    ``UsageError`` here, when called (not when iterated). Consume it on the thread that
    started it."""
    query = _query(where, prefix, sort, order)

    def stream() -> Iterator[Item]:
        catalog = Catalog.open_reader(db or default_db_path())
        try:
            found = catalog.get_dataset(dataset)
            yield from catalog.iter_query(found.id, query, limit=limit)
        finally:
            catalog.close()

    return stream()


def count(
    dataset: str, *, db: str | None = None, prefix: str = "", where: str | Sequence[str] = ()
) -> tuple[int, int]:
    """``(items, total bytes)`` of the dataset's items matching ``where`` under ``prefix``;
    ``syncd items count``."""
    query = _query(where, prefix, "key", "asc")
    catalog = Catalog.open_reader(db or default_db_path())
    try:
        return catalog.count_query(catalog.get_dataset(dataset).id, query)
    finally:
        catalog.close()


def summary(
    dataset: str,
    *,
    by: str = "content_type",
    db: str | None = None,
    prefix: str = "",
    where: str | Sequence[str] = (),
) -> dict[str, Any]:
    """Items and bytes of the dataset's items matching ``where``, in total and per group
    ``by`` ``content_type`` or ``folder`` (see :meth:`~syncd.store.catalog.Catalog.summarize`);
    ``syncd items summary``."""
    query = _query(where, prefix, "key", "asc")
    catalog = Catalog.open_reader(db or default_db_path())
    try:
        return catalog.summarize(catalog.get_dataset(dataset).id, query, by=by)
    finally:
        catalog.close()


def _query(where: str | Sequence[str], prefix: str, sort: str, order: str) -> Query:
    """The :class:`~syncd.query.Query` of the Python API's arguments; ``UsageError`` for a
    bad one."""
    expressions = [where] if isinstance(where, str) else list(where)
    try:
        return parse_where(expressions, prefix=prefix, sort=sort, order=order)
    except QueryError as exc:
        raise UsageError(str(exc)) from None
