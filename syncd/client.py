"""The Python API for notebooks and pipelines: blocking calls by dataset name, on the same
engine as the ``syncd`` command (:mod:`syncd.api`)::

    import syncd

    run = syncd.sync("s3://acme-images/raw/", dataset="birds", db="syncd.db")
    print(run.counts["created"], "new items")
    for item in syncd.items("birds", db="syncd.db", prefix="train/"):
        print(item.filename, item.size, item.uri)
    syncd.items.update("birds", "train/0001.jpg", metadata={"site": "berlin"},
                       add_tags=["review"], db="syncd.db")   # metadata.user and tags
    got = syncd.pull("birds", "data/birds", db="syncd.db")      # bytes to disk
    sent = syncd.push("field-photos/", dataset="birds", db="syncd.db")
    assert got.ok and sent.ok

Contracts:

* Each call opens the catalog (``db``, default ``$SYNCD_DB`` else ``./syncd.db``), does its
  work and closes it; ``items`` streams, holding one page of items at a time.
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
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from syncd import api
from syncd.errors import UsageError
from syncd.limits import MaxDelete
from syncd.model import Item
from syncd.query import Query, QueryError, parse_where
from syncd.reconcile.filters import Filters
from syncd.reconcile.sync import SyncOptions, SyncResult
from syncd.store import edits
from syncd.store.catalog import Catalog
from syncd.store.changes import Change
from syncd.store.db import default_db_path
from syncd.store.edits import Edit, Selection
from syncd.store.edits import Result as UpdateResult
from syncd.transfer.common import TransferResult

T = TypeVar("T")


def _run(
    work: Callable[[Catalog], Awaitable[T]],
    db: str | None,
    *,
    dry_run: bool = False,
    create: bool = False,
    reader: bool = False,
) -> T:
    """Run ``work(catalog)`` to completion, on this thread, or on a new one if an event loop
    is already running here. The catalog is opened on the thread that uses it (sqlite
    connections belong to one thread); only to read it with ``dry_run`` or ``reader``."""

    async def main() -> T:
        path = db or default_db_path()
        if dry_run or reader:
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
    snapshot: str | None = None,
) -> TransferResult:
    """Make ``target_dir`` mirror ``dataset``: download what is missing or changed;
    ``syncd pull``. ``snapshot``: mirror that snapshot instead, each object exactly as
    recorded (``syncd pull --snapshot``); objects whose recorded bytes are gone are in the
    result's ``problems``, with why."""
    return _run(
        lambda catalog: api.pull(
            catalog,
            dataset,
            target_dir,
            prefix=prefix,
            delete=delete,
            dry_run=dry_run,
            jobs=jobs,
            snapshot=snapshot,
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


class Items:
    """``syncd.items``: the items of a dataset, and edits of their user metadata and tags.

    ``syncd.items(dataset, db=..., prefix=..., limit=...)`` iterates the dataset's items (see
    :meth:`__call__`); ``syncd.items.update(dataset, key_or_keys, metadata=..., add_tags=...,
    remove_tags=...)`` edits them (see :meth:`update`)::

        syncd.items.update("birds", "raw/0001.jpg", metadata={"site": "berlin"},
                           add_tags=["review"], db="syncd.db")
        syncd.items.update("birds", prefix="raw/2026/", remove_tags=["draft"], db="syncd.db")
    """

    def __call__(
        self,
        dataset: str,
        *,
        db: str | None = None,
        prefix: str = "",
        limit: int | None = None,
        where: str | Sequence[str] = (),
        sort: str = "key",
        order: str = "asc",
        snapshot: str | None = None,
    ) -> Iterator[Item]:
        """The dataset's items matching ``where`` (one ``--where`` expression or a list of
        them, all of which must hold; see :mod:`syncd.query`) under ``prefix``, ordered by
        ``sort`` (``key``, ``size`` or ``mtime``; ties by key) ``order`` (``asc``/``desc``), at
        most ``limit``, streamed a page at a time as Python values (:class:`syncd.model.Item`);
        ``syncd items ls``. A bad expression raises ``UsageError`` here, when called (not when
        iterated). Consume it on the thread that started it.

        ``snapshot``: the items of that snapshot instead (``syncd items ls --snapshot``), in
        key order under ``prefix``, at most ``limit`` (``where`` and ``sort`` are refused)."""
        if snapshot is not None:
            if where or sort != "key" or order != "asc":
                raise UsageError("snapshot= lists in key order with prefix= and limit= only")
            return _iter_snapshot_items(dataset, db, snapshot, prefix, limit)
        query = _query(where, prefix, sort, order)
        return _iter_items(dataset, db, query, limit)

    def get(self, dataset: str, key: str, *, db: str | None = None) -> Item:
        """The item ``key``; :func:`get_item`."""
        return get_item(dataset, key, db=db)

    def url(self, dataset: str, key: str, *, db: str | None = None, ttl: int = 3600) -> str:
        """A presigned URL of the item's object; :func:`item_url`."""
        return item_url(dataset, key, db=db, ttl=ttl)

    def update(
        self,
        dataset: str,
        key_or_keys: str | Sequence[str] | None = None,
        *,
        prefix: str | None = None,
        where: str | Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        add_tags: Iterable[str] | None = None,
        remove_tags: Iterable[str] | None = None,
        db: str | None = None,
    ) -> Item | UpdateResult:
        """Edit the user's part of items; ``syncd items meta`` / ``syncd items tag``.

        ``metadata`` is merged into each item's ``metadata.user`` as a JSON merge patch
        (RFC 7386): a member set replaces the item's, ``None`` removes it, nested dicts merge
        member by member, lists and other values are replaced whole. ``add_tags`` and
        ``remove_tags`` add and remove tags (a tag in both is refused).

        With one key (a ``str``): edits that item and returns it as it now is
        (``UsageError`` if the dataset has no such item). With a list of keys, or
        ``prefix`` (``""``: every item), or ``where`` (query expressions, as for
        :meth:`__call__`), or several (items matching all): edits every item
        selected, :data:`~syncd.store.edits.BATCH` per transaction, and returns an
        :class:`~syncd.store.edits.Result` (``matched``, ``changed``, ``missing``: keys
        given that are not items, which are skipped).

        Each item changed is one change-log record (kind ``updated``, source ``edit``); an
        edit to the values an item already has records and writes nothing. Input past the
        limits of :mod:`syncd.usermeta` (size, depth, names, tags) raises ``UsageError`` and
        nothing is written. The user's metadata and tags survive re-syncs and bucket events
        and are deleted with the item when its object is deleted."""
        edit = Edit.of(
            dict(metadata) if metadata is not None else None,
            _tags(add_tags, "add_tags"),
            _tags(remove_tags, "remove_tags"),
        )
        path = db or default_db_path()
        if isinstance(key_or_keys, str):
            if prefix is not None or where is not None:
                raise UsageError("give one key, or keys, a prefix or where: not one key and more")
            key = key_or_keys
            return _with_catalog(path, lambda c: edits.update_item(c, dataset, key, edit).value())
        keys = list(key_or_keys) if key_or_keys is not None else None
        selection = Selection.of(keys, prefix, where)
        return _with_catalog(path, lambda c: edits.update(c, dataset, selection, edit))


def _tags(tags: Iterable[str] | None, name: str) -> list[str] | None:
    if tags is None:
        return None
    if isinstance(tags, str):  # one tag, not its characters
        raise UsageError(f"{name} must be a list of tags, like [{tags!r}]")
    return list(tags)


def _with_catalog(path: str, work: Callable[[Catalog], T]) -> T:
    catalog = Catalog.open(path, create=False)
    try:
        return work(catalog)
    finally:
        catalog.close()


def _iter_items(dataset: str, db: str | None, query: Query, limit: int | None) -> Iterator[Item]:
    catalog = Catalog.open_reader(db or default_db_path())
    try:
        found = catalog.get_dataset(dataset)
        for row in catalog.iter_query(found.id, query, limit=limit):
            yield row.value()
    finally:
        catalog.close()


def _iter_snapshot_items(
    dataset: str, db: str | None, tag: str, prefix: str, limit: int | None
) -> Iterator[Item]:
    catalog = Catalog.open_reader(db or default_db_path())
    try:
        for row in catalog.snapshot_items(dataset, tag, prefix=prefix, limit=limit):
            yield row.value()
    finally:
        catalog.close()


class Snapshots:
    """``syncd.snapshot``: a dataset frozen under a tag (``syncd snapshot``)::

        syncd.snapshot("birds", "v1", message="model 42", db="syncd.db")   # create
        syncd.snapshot.ls("birds", db="syncd.db")                           # [{tag, ...}]
        syncd.snapshot.diff("birds", "v1", "v2", db="syncd.db")            # added/removed/...
        for item in syncd.items("birds", snapshot="v1", db="syncd.db"): ...

    Each returns plain dicts as ``--json`` prints them. ``UsageError`` for an unknown
    dataset, a bad or taken tag; ``NotFound`` for an unknown tag."""

    def __call__(
        self, dataset: str, tag: str, *, message: str | None = None, db: str | None = None
    ) -> dict[str, Any]:
        """Create snapshot ``tag`` of the dataset (``syncd snapshot create``)."""
        return _with_catalog(
            db or default_db_path(),
            lambda c: api.create_snapshot(c, dataset, tag, message=message),
        )

    def ls(self, dataset: str, *, db: str | None = None) -> list[dict[str, Any]]:
        """The dataset's snapshots, oldest first."""
        return _read_catalog(db, lambda c: api.list_snapshots(c, dataset))

    def show(self, dataset: str, tag: str, *, db: str | None = None) -> dict[str, Any]:
        """One snapshot."""
        return _read_catalog(db, lambda c: api.get_snapshot(c, dataset, tag))

    def rm(self, dataset: str, tag: str, *, db: str | None = None) -> dict[str, Any]:
        """Remove a snapshot (the items are not touched)."""
        return _with_catalog(
            db or default_db_path(), lambda c: api.remove_snapshot(c, dataset, tag)
        )

    def diff(
        self, dataset: str, a: str, b: str | None = None, *, db: str | None = None
    ) -> dict[str, Any]:
        """What changed from snapshot ``a`` to ``b`` (None: the live dataset)."""
        return _read_catalog(db, lambda c: api.diff_snapshots(c, dataset, a, b))


def _read_catalog(db: str | None, work: Callable[[Catalog], T]) -> T:
    catalog = Catalog.open_reader(db or default_db_path())
    try:
        return work(catalog)
    finally:
        catalog.close()


#: ``syncd.snapshot(dataset, tag)`` creates a snapshot; ``.ls``, ``.show``, ``.rm``, ``.diff``
snapshot = Snapshots()


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


def get_item(dataset: str, key: str, *, db: str | None = None) -> Item:
    """The dataset's item ``key`` (``syncd items get``); :class:`syncd.errors.NotFound` if the
    dataset has none."""
    catalog = Catalog.open_reader(db or default_db_path())
    try:
        return api.get_item(catalog, catalog.get_dataset(dataset), key).value()
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


def item_url(dataset: str, key: str, *, db: str | None = None, ttl: int = 3600) -> str:
    """A presigned URL that reads the item's object for ``ttl`` seconds (``syncd items url``),
    signed in this process with the dataset's credentials; no server involved."""

    async def call(catalog: Catalog) -> str:
        return await api.item_url(catalog, catalog.get_dataset(dataset), key, ttl=ttl)

    return _run(call, db, reader=True)


#: ``syncd.items(...)`` iterates a dataset's items, ``syncd.items.update(...)`` edits them
items = Items()


def _query(where: str | Sequence[str], prefix: str, sort: str, order: str) -> Query:
    """The :class:`~syncd.query.Query` of the Python API's arguments; ``UsageError`` for a
    bad one."""
    expressions = [where] if isinstance(where, str) else list(where)
    try:
        return parse_where(expressions, prefix=prefix, sort=sort, order=order)
    except QueryError as exc:
        raise UsageError(str(exc)) from None
