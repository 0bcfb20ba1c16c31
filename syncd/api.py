"""The library API behind the CLI: bind a dataset to its source, open its driver, sync it.

Everything here raises :class:`~syncd.errors.SyncdError` subclasses (usage vs. sync failure)
or :class:`~providers.errors.StorageError`; the CLI maps those to one line and an exit code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from providers import faults, open_driver
from providers.base import Driver
from providers.config import ConfigError, DriverConfig
from syncd.errors import NotFound, SyncFailed, UsageError
from syncd.reconcile import split
from syncd.reconcile.filters import Filters
from syncd.reconcile.source import canonical, parse_source
from syncd.reconcile.sync import DatasetBusy, SyncOptions, SyncResult, sync_dataset
from syncd.store import lease, ranges, workers
from syncd.store.catalog import Catalog, Dataset, Item
from syncd.store.checkpoint import COUNTERS, Checkpoint, Run
from syncd.store.db import transaction
from syncd.transfer.common import FileHook, ProblemHook, TransferResult
from syncd.transfer.engine import Meter
from syncd.transfer.pull import Pull
from syncd.transfer.push import Push

if TYPE_CHECKING:  # the config module loads pydantic (a quarter second): only when used
    from syncd.config import DatasetSpec

log = logging.getLogger("syncd")


def _azure_account(cfg: DriverConfig) -> DriverConfig:
    """Fill in the storage account (needed for ``az://account/container/key`` URIs)."""
    if cfg.type != "azure" or cfg.account:
        return cfg
    account = os.environ.get("AZURE_STORAGE_ACCOUNT")
    conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
    for part in conn.split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() == "accountname" and value:
            account = value.strip()
    return dataclasses.replace(cfg, account=account) if account else cfg


def describe_filters(filters: Filters) -> str:
    """Filters as one short line: ``include=[...] exclude=[...] max_size=N`` (or ``none``)."""
    parts = []
    if filters.include:
        parts.append(f"include={list(filters.include)}")
    if filters.exclude:
        parts.append(f"exclude={list(filters.exclude)}")
    if filters.max_size is not None:
        parts.append(f"max_size={filters.max_size}")
    return " ".join(parts) or "none"


def _wanted(
    catalog: Catalog,
    name: str,
    source: str | None,
    spec: DatasetSpec | None,
    filters: Filters | None,
    replace_filters: bool = True,
) -> tuple[Dataset | None, str | None, DriverConfig | None, Filters | None]:
    """The existing dataset and what SOURCE / spec / filters ask it to be (not written).

    Returns ``(existing, canonical source, driver config, filters)``; the last three are None
    where nothing asks for a change. Raises ``UsageError`` for an unknown dataset with nothing
    to create it from, for a SOURCE that does not match the dataset's binding, or for
    ``filters`` that differ from the stored ones without ``replace_filters`` (a later sync's
    ``--exclude`` alone must not silently drop the stored ``--include``: the message shows both).
    """
    existing = catalog.find_dataset(name)
    if (
        existing is not None
        and filters is not None
        and not replace_filters
        and filters != existing.filters
    ):
        raise UsageError(
            f"dataset {name!r} has filters {describe_filters(existing.filters)}; this sync "
            f"would replace them with {describe_filters(filters)}: pass --replace-filters to "
            "replace them, or give no filters to keep them"
        )
    if spec is not None:
        cfg = _azure_account(spec.driver)
        wanted = (canonical(cfg), cfg, spec.filters)
    elif source is not None:
        cfg = _azure_account(parse_source(source))
        wanted = (canonical(cfg), cfg, filters)
    else:
        if existing is None:
            catalog.get_dataset(name)  # raises the "unknown dataset" error with the known names
        wanted = (None, None, filters)
    src, cfg, flt = wanted
    if existing is not None and src is not None and existing.source != src:
        raise UsageError(
            f"dataset {name!r} is bound to {existing.source}, not {src}; "
            "name the same source (or none), or use another dataset name"
        )
    if existing is not None and source is not None:
        cfg = None  # a SOURCE only names the binding; the stored driver settings stay
    return existing, src, cfg, flt


def preview_dataset(
    catalog: Catalog,
    name: str,
    *,
    source: str | None = None,
    spec: DatasetSpec | None = None,
    filters: Filters | None = None,
) -> Dataset:
    """The dataset as :func:`bind_dataset` would make it, without writing anything (dry run).

    A dataset that does not exist yet comes back with id 0 (no items)."""
    existing, src, cfg, flt = _wanted(catalog, name, source, spec, filters)
    if existing is None:
        assert src is not None and cfg is not None
        return Dataset(0, name, src, cfg, flt or Filters(), "")
    return dataclasses.replace(
        existing,
        driver=cfg or existing.driver,
        filters=flt if flt is not None else existing.filters,
    )


def ensure_dataset(
    catalog: Catalog,
    name: str,
    *,
    source: str | None = None,
    spec: DatasetSpec | None = None,
    filters: Filters | None = None,
    replace_filters: bool = True,
) -> tuple[Dataset, bool]:
    """The dataset, created from SOURCE or spec if it does not exist; ``(dataset, created)``.

    An existing dataset is not changed here (that waits for its lease, see :func:`sync`)."""
    existing, src, cfg, flt = _wanted(catalog, name, source, spec, filters, replace_filters)
    if existing is not None:
        return existing, False
    assert src is not None and cfg is not None
    try:
        return catalog.create_dataset(name, src, cfg, flt or Filters()), True
    except UsageError:
        # another process created it first (two workers starting together)
        found = catalog.find_dataset(name)
        if found is None:
            raise
        return found, False


def bind_dataset(
    catalog: Catalog,
    name: str,
    *,
    source: str | None = None,
    spec: DatasetSpec | None = None,
    filters: Filters | None = None,
) -> Dataset:
    """The dataset to sync, created or updated from SOURCE or a config spec.

    * With ``spec`` (from ``--config``): create the dataset, or update its driver settings and
      filters; its location must not move.
    * With ``source``: the first sync creates the dataset bound to SOURCE; later syncs must name
      the same SOURCE. ``filters``, when given, replace the stored ones.
    * With neither: the dataset must exist; ``filters``, when given, replace the stored ones.
      An integration's credential references are stored with it, so no config file is needed.
    """
    existing, src, cfg, flt = _wanted(catalog, name, source, spec, filters)
    if existing is None:
        assert src is not None and cfg is not None
        return catalog.create_dataset(name, src, cfg, flt or Filters())
    driver = cfg or existing.driver
    new_filters = flt if flt is not None else existing.filters
    if driver != existing.driver or new_filters != existing.filters:
        return catalog.update_dataset(existing, driver, new_filters)
    return existing


async def refuse_object_source(dataset: Dataset, driver: Driver) -> None:
    """A SOURCE is a bucket or a folder (a key prefix ending in ``/``); one that names an
    object (``az://c/raw/file.txt``) lists nothing under ``raw/file.txt/``. Called when a new
    dataset's first listing found nothing: if an object has the path's own name, raise a
    ``UsageError`` saying so (the dataset is then not created), else return."""
    from providers.errors import StorageError

    path = dataset.driver.path.rstrip("/")
    if not path:
        return
    try:
        await driver.head(path)
    except (StorageError, OSError):
        return  # no such object (or it cannot be told): an empty folder is a valid source
    folder, _, name = path.rpartition("/")
    where = dataset.source.removesuffix("/").removesuffix(path).rstrip("/")
    raise UsageError(
        f"SOURCE {dataset.source.rstrip('/')!r} names an object, not a folder: a SOURCE is a "
        f"bucket or a folder in it; to sync that one object use {where}/"
        f"{folder + '/' if folder else ''} --include {name!r}"
    )


def open_dataset_driver(dataset: Dataset, spec: DatasetSpec | None = None) -> Driver:
    """Open the driver of ``dataset``, with fault injection if the environment asks for it.

    The catalog stores what names the bucket, not how to page through it: ``spec`` (the
    config file's declaration, if any) supplies the listing page size."""
    cfg = dataset.driver
    if spec is not None and spec.driver.page_size != cfg.page_size:
        cfg = dataclasses.replace(cfg, page_size=spec.driver.page_size)
    try:
        return faults.from_env(open_driver(cfg))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def get_item(catalog: Catalog, dataset: Dataset, key: str) -> Item:
    """The dataset's item ``key``; :class:`NotFound` saying so if it has none."""
    found = catalog.get_item(dataset.id, key)
    if found is None:
        raise NotFound(f"dataset {dataset.name!r} has no item {key!r}; list them: syncd items ls")
    return found


#: the longest a presigned URL may live: S3's SigV4 limit, the shortest of the providers'
MAX_URL_TTL = 7 * 24 * 3600


async def item_url(catalog: Catalog, dataset: Dataset, key: str, *, ttl: int = 3600) -> str:
    """A URL that reads the item's object for ``ttl`` seconds, signed here with the dataset's
    credentials (no server involved; a local folder's item: its ``file://`` URL).
    :class:`NotFound` for a key the dataset does not have: it signs only what it lists."""
    if not 1 <= ttl <= MAX_URL_TTL:
        raise UsageError(f"--ttl must be 1 to {MAX_URL_TTL} seconds (7 days), not {ttl}")
    get_item(catalog, dataset, key)
    async with open_dataset_driver(dataset) as driver:
        return await driver.presign(key, ttl=ttl)


#: how often a sync started with ``wait=True`` asks again for a busy dataset's lease
WAIT_POLL_SECONDS = 0.5


async def take_lease(
    catalog: Catalog, dataset: Dataset, owner: str, *, wait: bool, ranges_ok: bool = False
) -> None:
    """Take ``dataset``'s lease for ``owner``; if another live process holds it, raise
    ``DatasetBusy`` naming it, or with ``wait`` ask again until it is free.

    A live worker holding a key range of the dataset's open split run counts as holding the
    dataset too, unless ``ranges_ok`` (a worker joining that run)."""
    announced = False
    while True:
        with transaction(catalog.db):
            if catalog.find_dataset(dataset.name) is None:
                raise SyncFailed(
                    f"dataset {dataset.name!r} was removed while this sync waited for it "
                    "(the other sync was its first and failed); run the sync again"
                )
            holder = lease.acquire(catalog.db, lease.for_dataset(dataset.id), owner)
            if holder is None and not ranges_ok:
                holder = _range_holder(catalog, dataset)
                if holder is not None:
                    lease.release(catalog.db, lease.for_dataset(dataset.id), owner)
        if holder is None:
            return
        if not wait:
            raise DatasetBusy(dataset.name, holder)
        if not announced:
            log.warning(
                "dataset %r is being synced by %s; waiting", dataset.name, holder.describe()
            )
            announced = True
        await asyncio.sleep(WAIT_POLL_SECONDS)


def _range_holder(catalog: Catalog, dataset: Dataset) -> lease.Holder | None:
    """A live holder of a key range of the dataset's open split run, if any. The caller holds
    the transaction."""
    open_run = Checkpoint(catalog.db).unfinished(dataset.id)
    if open_run is None or not open_run.ranges:
        return None
    # a range claimed concurrently (PostgreSQL) either committed before this read or sees
    # this transaction's dataset lease: both take the run's row lock first
    ranges.lock_run(catalog.db, open_run.id)
    return next(iter(ranges.live_holders(catalog.db, open_run.id)), None)


class NotDue(Exception):
    """The dataset was reconciled after the caller's cutoff (by another worker, or a one-shot
    sync): nothing to do until ``ended_at`` plus the interval. Not an error."""

    def __init__(self, dataset: str, ended_at: str) -> None:
        super().__init__(f"dataset {dataset!r} was reconciled at {ended_at}")
        self.dataset = dataset
        self.ended_at = ended_at


async def sync(
    catalog: Catalog,
    name: str,
    *,
    source: str | None = None,
    spec: DatasetSpec | None = None,
    filters: Filters | None = None,
    options: SyncOptions | None = None,
    wait: bool = False,
    owner: str | None = None,
    unless_reconciled_after: str | None = None,
    replace_filters: bool = True,
) -> SyncResult:
    """Sync dataset ``name`` (created from ``source`` or ``spec`` on first use); the library
    call behind ``syncd sync`` and every reconcile of ``syncd run``.

    * A dry run writes nothing at all: no dataset, no filters, no run row.
    * Otherwise the dataset's lease is taken first for ``owner`` (default: a fresh one;
      a worker passes one named after it, see :func:`syncd.store.workers.lease_owner`),
      ``DatasetBusy`` if another process syncs it, unless ``wait``; then the binding is
      updated and the sync runs under the lease.
    * ``unless_reconciled_after`` (an ISO time as :func:`syncd.store.stamps.now` writes): once
      the lease is held, if a reconcile of the dataset finished after it, release the lease
      and raise :class:`NotDue` instead of syncing. Checked under the lease, so two workers
      that both found the dataset due never reconcile it twice in a row.
    * A dataset created by this call whose first sync fails before writing any item is
      removed again, so a typo in a bucket name or bad credentials leave nothing half-made.
    * A large dataset's run is split into key ranges (``options.ranges``, else one per 50,000
      items; :mod:`syncd.reconcile.split`): this call works through every free range,
      ``options.range_workers`` at once, and returns when the run is closed. Ranges other live
      workers hold count as the dataset being busy (``DatasetBusy``); with ``wait`` this call
      joins the run, and waits for those ranges (or takes them over when their holder is gone).
    """
    options = options or SyncOptions()
    if options.dry_run:
        # a dry run replaces nothing: it previews what the given filters would do
        dataset = preview_dataset(catalog, name, source=source, spec=spec, filters=filters)
        async with open_dataset_driver(dataset, spec) as driver:
            result = await sync_dataset(catalog, dataset, driver, options)
            if not dataset.id and result.counts["listed"] == 0:
                await refuse_object_source(dataset, driver)
            return result
    return await _sync(
        catalog,
        name,
        source=source,
        spec=spec,
        filters=filters,
        options=options,
        wait=wait,
        owner=owner,
        unless_reconciled_after=unless_reconciled_after,
        replace_filters=replace_filters,
    )


async def sync_some(
    catalog: Catalog,
    name: str,
    *,
    spec: DatasetSpec | None = None,
    options: SyncOptions | None = None,
    worker: str | None = None,
    start: bool = True,
    unless_reconciled_after: str | None = None,
) -> SyncResult:
    """One unit of a daemon worker's work on dataset ``name``: reconcile one free key range of
    its open split run (joining it), or start its run (a split run: cut it and reconcile its
    first free range; a small dataset: the whole serial sync, as :func:`sync`).

    ``worker`` is the lease owner (default: a new one). The result's ``status`` is
    ``"range-completed"`` (a range done, others remain), ``"completed"`` (this call closed the
    run), or ``"idle"``: nothing for this worker, every unfinished range is held by a live
    worker. Raises ``DatasetBusy`` when a serial sync or a push holds the dataset, like
    :func:`sync` without ``wait``.

    ``start=False`` only joins: with no open split run to help with (none, or another driver
    or filters than the dataset's), the status is ``"idle"`` and nothing is started. It takes
    no dataset lease (a range is claimed only while no live process holds that lease), so a
    daemon can offer spare workers to other workers' runs without ever starting one.

    ``unless_reconciled_after``: as for :func:`sync` (``NotDue``), when this call would start
    or join the dataset's run."""
    options = options or SyncOptions()
    if options.dry_run:
        raise UsageError("sync_some writes: use sync() for a dry run")
    if start:
        return await _sync(
            catalog,
            name,
            spec=spec,
            options=options,
            owner=worker,
            one=True,
            unless_reconciled_after=unless_reconciled_after,
        )
    dataset = catalog.get_dataset(name)
    run = split.open_run(catalog, dataset, options)
    if run is None:
        return SyncResult(dataset=name, status="idle", counts=dict.fromkeys(COUNTERS, 0), seconds=0)
    async with open_dataset_driver(dataset, spec) as driver:
        return await split.work(
            catalog, dataset, driver, run, options, worker or lease.new_owner(), one=True
        )


async def _sync(
    catalog: Catalog,
    name: str,
    *,
    source: str | None = None,
    spec: DatasetSpec | None = None,
    filters: Filters | None = None,
    options: SyncOptions,
    wait: bool = False,
    owner: str | None = None,
    one: bool = False,
    unless_reconciled_after: str | None = None,
    replace_filters: bool = True,
) -> SyncResult:
    """:func:`sync` (all of the run) or :func:`sync_some` (``one``: a range of it)."""
    if options.ranges is None and spec is not None and spec.ranges is not None:
        options = dataclasses.replace(options, ranges=spec.ranges)
    dataset, new = ensure_dataset(
        catalog, name, source=source, spec=spec, filters=filters, replace_filters=replace_filters
    )
    owner = owner or lease.new_owner()
    await take_lease(catalog, dataset, owner, wait=wait, ranges_ok=wait or one)
    try:
        if unless_reconciled_after is not None:
            ended = workers.last_reconciled(catalog.db, dataset.id)
            if ended is not None and ended > unless_reconciled_after:
                raise NotDue(dataset.name, ended)
        dataset = bind_dataset(catalog, name, source=source, spec=spec, filters=filters)
        try:
            async with open_dataset_driver(dataset, spec) as driver:
                run = await split.start_or_join(catalog, dataset, driver, options, owner)
                if run is None:
                    result = await sync_dataset(catalog, dataset, driver, options, owner=owner)
                    if new and result.counts["listed"] == 0:
                        await refuse_object_source(dataset, driver)
                    return result
                # other workers join the run while this one works on its ranges
                with transaction(catalog.db):
                    lease.release(catalog.db, lease.for_dataset(dataset.id), owner)
                return await split.work(catalog, dataset, driver, run, options, owner, one=one)
        except BaseException:
            if not one and new and catalog.count_items(dataset.id) == 0:
                catalog.drop_dataset(dataset)  # with its lease
            raise
    finally:
        with transaction(catalog.db):
            lease.release(catalog.db, lease.for_dataset(dataset.id), owner)


def run_summary(run: Run, checkpoint: Checkpoint | None = None) -> dict[str, Any]:
    """A run as the CLI's ``--json`` and the HTTP API show it; with ``checkpoint``, every
    attempt too."""
    out: dict[str, Any] = {
        "id": run.id,
        "status": run.status,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "seconds": round(run.seconds, 3),
        "attempts": run.attempts,
        **run.counts,
        "held_deletes": run.held_deletes,
        "error": run.error,
    }
    if run.ranges:
        out["ranges"] = run.ranges
    if checkpoint is not None:
        if run.ranges:
            # a split run's attempts are its ranges': each names its range
            out["attempt_history"] = ranges.attempts(checkpoint.db, run.id)
            out["range_history"] = [r.public() for r in ranges.load(checkpoint.db, run.id)]
        else:
            out["attempt_history"] = [a.public() for a in checkpoint.attempts(run)]
    return out


def dataset_summary(catalog: Catalog, dataset: Dataset) -> dict[str, Any]:
    """A dataset as the CLI's ``--json`` and the HTTP API show it: binding, driver settings
    (no secrets), filters, item count, last run."""
    last = next(iter(Checkpoint(catalog.db).history(dataset.id, limit=1)), None)
    return {
        "name": dataset.name,
        "source": dataset.source,
        "driver": dataset.driver.public(),
        "filters": json.loads(dataset.filters.to_json()),
        "items": catalog.count_items(dataset.id),
        "created_at": dataset.created_at,
        "last_run": None if last is None else run_summary(last),
    }


def dataset_health(catalog: Catalog, dataset: Dataset, *, history: int = 20) -> dict[str, Any]:
    """How a dataset is doing, from its run history: ``state`` is ``ok`` (its latest finished
    run completed), ``failing`` (its latest runs failed: ``failures`` in a row), ``held`` (the
    latest run held its deletes back, see ``--max-delete``), ``running``, ``interrupted`` or
    ``never synced``; ``last_success`` is when a run last completed."""
    runs = Checkpoint(catalog.db).history(dataset.id, limit=history)
    failures = 0
    for run in runs:
        if run.status != "failed":
            break
        # a failed serial run is resumed by the next sync: each attempt was one more failure
        failures += max(run.attempts, 1)
    last_success = next((r.ended_at for r in runs if r.status == "completed"), None)
    if not runs:
        state = "never synced"
    elif failures:
        state = "failing"
    else:
        state = {"completed": "ok"}.get(runs[0].status, runs[0].status)
    return {"state": state, "failures": failures, "last_success": last_success}


def sort_by_health(rows: list[dict[str, Any]]) -> None:
    """Sort rows that carry ``name`` and ``health`` (:func:`dataset_health`) in place: failing
    datasets first, then held, interrupted, the rest; by name within each."""
    order = {"failing": 0, "held": 1, "interrupted": 2}
    rows.sort(key=lambda r: (order.get(r["health"]["state"], 3), r["name"]))


def workers_with_ages(catalog: Catalog) -> dict[str, Any]:
    """:func:`syncd.store.workers.listing` with each worker's ``heartbeat_age_seconds``."""
    from datetime import UTC, datetime

    from syncd.store.stamps import parse

    found = workers.listing(catalog.db)
    at = datetime.now(UTC)
    for kind in ("workers", "gone"):
        for w in found[kind]:
            w["heartbeat_age_seconds"] = round((at - parse(w["heartbeat_at"])).total_seconds(), 1)
    return found


def status(catalog: Catalog) -> dict[str, Any]:
    """One look at a catalog (``syncd status``): where it is, every dataset with its item
    count, last run and health (:func:`dataset_health`), failing ones first, and the
    workers sharing it with how long ago each last heartbeat came."""
    rows = []
    for ds in catalog.list_datasets():
        row = dataset_summary(catalog, ds)
        row["health"] = dataset_health(catalog, ds)
        rows.append(row)
    sort_by_health(rows)
    found = workers_with_ages(catalog)
    return {
        "catalog": catalog.db.url,
        "datasets": rows,
        "workers": found["workers"],
        "gone": found["gone"],
    }


def read_changes(
    catalog: Catalog,
    *,
    after: int = 0,
    limit: int = 1000,
    dataset: str | None = None,
    kinds: tuple[str, ...] = (),
) -> tuple[list[Any], int]:
    """Up to ``limit`` change records after cursor ``after`` (of one dataset, of some kinds)
    and the cursor to pass next time: the last record's, or ``after`` when there is none.
    ``CursorGone`` if ``after`` is older than the log holds; ``UsageError`` for an unknown
    dataset or kind."""
    from syncd.store import changes

    dataset_id = _change_filter(catalog, after, dataset, kinds)
    found = changes.read(catalog.db, after=after, limit=limit, dataset_id=dataset_id, kinds=kinds)
    return found, found[-1].cursor if found else after


def read_change_lines(
    catalog: Catalog,
    *,
    after: int = 0,
    limit: int = 1000,
    dataset: str | None = None,
    kinds: tuple[str, ...] = (),
    ascii: bool = False,
) -> tuple[list[str], int]:
    """:func:`read_changes` as the JSON text of each record's ``public()`` (json's default
    separators; ``ascii``: non-ASCII escaped), made without the records: the feed's fast
    path (``syncd changes --json``, the HTTP feed)."""
    from syncd.store import changes

    dataset_id = _change_filter(catalog, after, dataset, kinds)
    return changes.read_json(
        catalog.db, after=after, limit=limit, dataset_id=dataset_id, kinds=kinds, ascii=ascii
    )


def _change_filter(
    catalog: Catalog, after: int, dataset: str | None, kinds: tuple[str, ...]
) -> int | None:
    """The dataset id to read the change log of (None: all); ``UsageError`` for an unknown
    dataset or kind or a negative cursor."""
    from syncd.store import changes

    bad = [k for k in kinds if k not in changes.KINDS]
    if bad:
        raise UsageError(f"unknown change kind {bad[0]!r}; kinds are {', '.join(changes.KINDS)}")
    if after < 0:
        raise UsageError("a change cursor is a whole number >= 0")
    return catalog.get_dataset(dataset).id if dataset is not None else None


#: no bucket notification arrives later than this (SQS keeps a message at most 14 days, the
#: longest of the queues syncd reads): an event tombstone older than it can be forgotten
TOMBSTONE_HORIZON = 14 * 24 * 3600


def prune_changes(
    catalog: Catalog, *, older_than: float, keep_after: int | None = None
) -> tuple[int, int]:
    """Remove change records older than ``older_than`` seconds (none after ``keep_after``,
    a cursor a consumer still needs) and deleted-key tombstones older than
    :data:`TOMBSTONE_HORIZON`, in small transactions. Returns how many of each."""
    from datetime import UTC, datetime, timedelta

    from syncd.store import changes
    from syncd.store.stamps import stamp

    at = datetime.now(UTC)
    before = stamp(at - timedelta(seconds=older_than))
    removed = changes.prune(catalog.db, before=before, keep_after=keep_after)
    horizon = stamp(at - timedelta(seconds=TOMBSTONE_HORIZON))
    tombstones = 0
    while True:
        with transaction(catalog.db):
            # a tombstone of a key whose item exists cannot be (an item re-created by an
            # event re-marks it live); older than the horizon, no event can contradict it
            n = catalog.db.execute(
                "DELETE FROM key_markers WHERE (dataset_id, key) IN (SELECT dataset_id, key"
                " FROM key_markers WHERE deleted <> 0 AND updated_at < ? LIMIT 1000)",
                [horizon],
            ).rowcount
        tombstones += max(n, 0)
        if n < 1000:
            return removed, tombstones


def _transfer_folder(dataset: Dataset, folder: str, *, must_exist: bool) -> str:
    """The real path of a pull's or push's folder, checked."""
    root = os.path.realpath(folder)
    if os.path.exists(root) and not os.path.isdir(root):
        raise UsageError(f"{folder!r} is not a folder")
    if must_exist and not os.path.isdir(root):
        raise UsageError(f"folder {folder!r} does not exist")
    cfg = dataset.driver
    if cfg.type == "local":
        source = os.path.realpath(os.path.join(cfg.bucket, cfg.path))
        if root == source or root.startswith(source + os.sep) or source.startswith(root + os.sep):
            raise UsageError(
                f"{folder!r} overlaps the folder dataset {dataset.name!r} mirrors ({source}); "
                "pull into or push from another folder"
            )
    return root


def _catalog_files(catalog: Catalog) -> list[str]:
    """The catalog's own files (the database and its sidecars, whether they exist yet or
    not), which no pull or push ever writes, replaces or removes."""
    return catalog.db.files()


def _relative_prefix(dataset: Dataset, prefix: str) -> str | None:
    """A key prefix as a prefix of paths relative to the dataset's driver path (what the
    transfer walks), or None when no key under the driver path can start with it."""
    path = dataset.driver.path
    if prefix.startswith(path):
        return prefix[len(path) :]
    if path.startswith(prefix):
        return ""  # shorter than the driver path: every key of the dataset starts with it
    return None


async def pull(
    catalog: Catalog,
    name: str,
    folder: str,
    *,
    prefix: str = "",
    delete: bool = False,
    dry_run: bool = False,
    jobs: int = 8,
    on_problem: ProblemHook | None = None,
    meter: Meter | None = None,
    on_file: FileHook | None = None,
    sync_first: bool = False,
    wait: bool = False,
    snapshot: str | None = None,
) -> TransferResult:
    """Make ``folder`` mirror dataset ``name`` (see :mod:`syncd.transfer.pull`); the library
    call behind ``syncd pull``. Reads the catalog's items; the bucket is read, never written.

    ``snapshot``: the items of that snapshot of the dataset instead, each read exactly as
    recorded (its version); an object whose recorded bytes are gone fails with the reason.

    ``prefix`` limits it to objects whose key starts with it, as in ``items ls``; a prefix
    no key under the dataset's driver path can start with selects nothing (one warning).
    ``sync_first``: reconcile the dataset with its bucket first (:func:`sync`, waiting for a
    running one with ``wait``), so objects gone since the last sync are not asked for.
    ``on_file``: told of each file downloaded or removed (on a dry run: that would be)."""
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if sync_first and dry_run:
        raise UsageError("--sync writes the catalog; it cannot be combined with --dry-run")
    if sync_first and snapshot is not None:
        raise UsageError(
            "--sync and --snapshot: a snapshot's items never change, so no sync is needed "
            "to pull it; drop --sync"
        )
    dataset = catalog.get_dataset(name)
    source = None if snapshot is None else snapshot_source(catalog, dataset, snapshot)
    root = _transfer_folder(dataset, folder, must_exist=False)
    relative = _relative_prefix(dataset, prefix)
    if relative is None:
        log.warning(
            "pull: no object of dataset %r can start with --prefix %r: its keys all start "
            "with its driver path %r (the prefix is a key prefix, as in `syncd items ls`); "
            "nothing selected",
            name,
            prefix,
            dataset.driver.path,
        )
        return TransferResult("pull", name, root, dry_run)
    if sync_first:
        await sync(catalog, name, wait=wait)
        dataset = catalog.get_dataset(name)
    if not dry_run:
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create folder {folder!r}: {exc.strerror}") from None
    async with open_dataset_driver(dataset) as driver:
        return await Pull(
            catalog,
            dataset,
            driver,
            root,
            prefix=relative,
            delete=delete,
            dry_run=dry_run,
            jobs=jobs,
            on_problem=on_problem,
            meter=meter,
            protect=_catalog_files(catalog),
            on_file=on_file,
            snapshot=snapshot,
            items=source,
        ).run()


def snapshot_source(
    catalog: Catalog, dataset: Dataset, tag: str
) -> Callable[[str], Iterator[Item]]:
    """``items(prefix)``: the items of snapshot ``tag`` of ``dataset`` whose keys start with
    ``prefix``, in key order, read in pages (:meth:`Catalog.snapshot_items`). ``NotFound``
    for a snapshot the dataset does not have, raised here, before any item is asked for."""
    from syncd.store import snapshots

    snapshots.get(catalog, dataset, tag)
    return lambda prefix: catalog.snapshot_items(dataset.name, tag, prefix=prefix)


async def push(
    catalog: Catalog,
    name: str,
    folder: str,
    *,
    delete: bool = False,
    dry_run: bool = False,
    jobs: int = 8,
    wait: bool = False,
    on_problem: ProblemHook | None = None,
    meter: Meter | None = None,
    on_file: FileHook | None = None,
) -> TransferResult:
    """Upload ``folder``'s new and changed files into dataset ``name``'s bucket and update its
    items (see :mod:`syncd.transfer.push`); the library call behind ``syncd push``. Takes the
    dataset's lease like a sync (``DatasetBusy``, or with ``wait`` waits)."""
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    dataset = catalog.get_dataset(name)
    root = _transfer_folder(dataset, folder, must_exist=True)
    if delete and not dataset.driver.allow_external_delete:
        raise UsageError(
            f"push --delete refused: dataset {name!r}'s driver does not allow deleting objects "
            "(set allow_external_delete = true on its driver in the config, then sync once)"
        )

    async def run(owner: str | None) -> TransferResult:
        async with open_dataset_driver(dataset) as driver:
            return await Push(
                catalog,
                dataset,
                driver,
                root,
                delete=delete,
                dry_run=dry_run,
                jobs=jobs,
                on_problem=on_problem,
                meter=meter,
                owner=owner,
                protect=_catalog_files(catalog),
                on_file=on_file,
            ).run()

    if dry_run:
        return await run(None)
    owner = lease.new_owner()
    await take_lease(catalog, dataset, owner, wait=wait)
    try:
        return await run(owner)
    finally:
        with transaction(catalog.db):
            lease.release(catalog.db, lease.for_dataset(dataset.id), owner)


# -- datasets and integrations at run time (the HTTP API's POST/PATCH/DELETE) ---------------

#: the SOURCE schemes a dataset created over the HTTP API may name: buckets and containers.
#: A local folder (or a benchmark's synthetic source) is the server's own disk: only a config
#: file, which the server's operator writes, may declare one
REMOTE_TYPES = ("s3", "gcs", "azure")


class Conflict(UsageError):
    """The request is well-formed but the catalog's state refuses it (a name that exists, a
    dataset a config declares, one being synced): HTTP ``409``."""


def _request(model: Any, body: Any, what: str) -> Any:
    """``body`` validated by the pydantic ``model``; ``UsageError`` (one line) if it is not."""
    from pydantic import ValidationError

    from syncd.config import describe_errors

    if not isinstance(body, dict):
        raise UsageError(f"{what} must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise UsageError(f"{what}: {describe_errors(exc, body, whole_file=False)}") from None


def _declared_refusal(name: str, declared: Any, doing: str) -> None:
    if name in declared:
        raise Conflict(
            f"dataset {name!r} is declared in the daemon's config file; {doing} it there "
            "(a config's declaration wins over the API)"
        )


def _settings_of(body: Any, base: Any = None) -> Any:
    """The :class:`~syncd.store.catalog.DatasetSettings` a request asks for (a patch: over
    ``base``, only the members it sets)."""
    from syncd.store.catalog import DatasetSettings

    given = body.model_fields_set
    base = base or DatasetSettings()

    def pick(member: str, old: Any, convert: Any = lambda v: v) -> Any:
        if member not in given:
            return old
        value = getattr(body, member)
        return None if value is None else convert(value)

    return DatasetSettings(
        interval=pick("interval", base.interval),
        max_delete=pick("max_delete", base.max_delete, str),
        watch=base.watch if "watch" not in given or body.watch is None else body.watch,
        metadata=base.metadata if getattr(body, "metadata", None) is None else body.metadata,
        tags=base.tags if getattr(body, "tags", None) is None else body.tags,
    )


def create_dataset(catalog: Catalog, body: Any, *, declared: Any = ()) -> Dataset:
    """Create the dataset a ``POST /api/v1/datasets`` body describes (see
    :class:`syncd.config.DatasetRequest`), with its run-time settings, in one transaction: it
    is then scheduled by every daemon sharing the catalog. Nothing is listed here; its first
    reconcile fills it.

    ``UsageError`` (400) for a body that is malformed, a SOURCE that is no bucket URI, an
    unknown integration or one of another type; :class:`Conflict` (409) for a name that
    exists or that ``declared`` (the daemon's config) holds."""
    from syncd.config import DatasetRequest

    req = _request(DatasetRequest, body, "request body")
    _declared_refusal(req.name, declared, "change")
    integration_name = req.integration
    if req.source is not None:
        if "://" not in req.source:
            raise UsageError(
                f"source {req.source!r} is not a bucket URI; expected s3://, gs:// or az:// URIs"
            )
        cfg = _azure_account(parse_source(req.source))
    else:
        table = req.driver
        integration_name = integration_name or table.integration
        cfg = DriverConfig(**table.model_dump(exclude={"integration", "page_size"}))
        cfg = _azure_account(cfg)
    if cfg.type not in REMOTE_TYPES:
        raise UsageError(
            f"a {cfg.type} source cannot be added over the API (it is the server's own disk); "
            "declare it in the config file"
        )
    if integration_name is not None:
        integration = catalog.find_integration(integration_name)
        if integration is None:
            raise UsageError(
                f"unknown integration {integration_name!r}; create it first: "
                "POST /api/v1/integrations"
            )
        if integration.type != cfg.type:
            raise UsageError(
                f"integration {integration_name!r} is of type {integration.type}, not {cfg.type}"
            )
        cfg = dataclasses.replace(cfg, integration=integration)
    filters = Filters(tuple(req.include), tuple(req.exclude), req.max_size)
    try:
        return catalog.create_dataset(
            req.name, canonical(cfg), cfg, filters, settings=_settings_of(req)
        )
    except UsageError as exc:
        if "already exists" in str(exc):
            raise Conflict(str(exc)) from None
        raise


def patch_dataset(catalog: Catalog, name: str, body: Any, *, declared: Any = ()) -> Dataset:
    """Change a dataset's filters and run-time settings (a ``PATCH /api/v1/datasets/{name}``
    body, :class:`syncd.config.DatasetPatch`), in one transaction; the next reconcile uses
    them. A dataset the CLI made gets run-time settings by it, and so is scheduled by the
    daemons from then on. A ``source`` other than the dataset's is refused as on the CLI
    (``UsageError``); ``NotFound`` for an unknown dataset, :class:`Conflict` for one the
    config declares."""
    from syncd.config import DatasetPatch

    req = _request(DatasetPatch, body, "request body")
    existing = catalog.find_dataset(name)
    if existing is None:
        raise NotFound(f"unknown dataset {name!r}")
    _declared_refusal(name, declared, "change")
    if req.source is not None:
        _wanted(catalog, name, req.source, None, None)  # raises for another source
    given = req.model_fields_set
    old = existing.filters
    filters = Filters(
        tuple(req.include) if req.include is not None else old.include,
        tuple(req.exclude) if req.exclude is not None else old.exclude,
        req.max_size if "max_size" in given else old.max_size,
    )
    settings = _settings_of(req, catalog.dataset_settings(existing.id))
    return catalog.update_dataset(existing, existing.driver, filters, settings=settings)


def remove_dataset(
    catalog: Catalog, name: str, *, declared: Any = (), with_snapshots: bool = False
) -> int:
    """Remove a dataset with its items and run history, as ``syncd datasets rm`` does (the
    bucket is not touched); return how many items it had. ``NotFound`` for an unknown
    dataset; :class:`Conflict` while a sync of it runs (its lease is held), for one the
    config declares, or while it has snapshots (unless ``with_snapshots``: they go too)."""
    existing = catalog.find_dataset(name)
    if existing is None:
        raise NotFound(f"unknown dataset {name!r}")
    _declared_refusal(name, declared, "remove")
    refuse_snapshots(catalog, existing, with_snapshots)
    count = catalog.count_items(existing.id)
    owner = lease.new_owner()
    with transaction(catalog.db):
        holder = lease.acquire(catalog.db, lease.for_dataset(existing.id), owner)
        if holder is None:
            holder = _range_holder(catalog, existing)
    if holder is not None:
        with transaction(catalog.db):
            lease.release(catalog.db, lease.for_dataset(existing.id), owner)
        raise Conflict(
            f"dataset {name!r} is being synced by {holder.describe()}; try again when it is done"
        )
    drop_leased(catalog, existing, owner, with_snapshots=with_snapshots)
    return count


def refuse_snapshots(catalog: Catalog, dataset: Dataset, with_snapshots: bool) -> None:
    """:class:`Conflict` for removing a dataset that has snapshots without
    ``with_snapshots`` (checked again when it is removed, in that transaction)."""
    if with_snapshots:
        return
    n = catalog.db.execute(
        "SELECT count(*) FROM snapshots WHERE dataset_id = ?", [dataset.id]
    ).fetchone()[0]
    if n:
        raise Conflict(
            f"dataset {dataset.name!r} has {n} snapshot(s); remove them first (`syncd snapshot"
            " rm`) or pass --with-snapshots (HTTP: with_snapshots=true) to remove them with it"
        )


def drop_leased(catalog: Catalog, dataset: Dataset, owner: str, *, with_snapshots: bool) -> None:
    """Remove a dataset whose lease ``owner`` holds (with the lease); if that is refused (a
    snapshot taken meanwhile), the lease is given back."""
    try:
        catalog.drop_dataset(dataset, with_snapshots=with_snapshots)  # with its lease
    except UsageError as exc:
        with transaction(catalog.db):
            lease.release(catalog.db, lease.for_dataset(dataset.id), owner)
        raise Conflict(str(exc)) from None


def dataset_settings_summary(catalog: Catalog, dataset: Dataset) -> dict[str, Any] | None:
    """A dataset's run-time settings as the API shows them (None: not created over the API)."""
    found = catalog.dataset_settings(dataset.id)
    return None if found is None else found.public()


def create_integration(catalog: Catalog, body: Any) -> dict[str, Any]:
    """Record the integration a ``POST /api/v1/integrations`` body declares (references
    only: a literal secret is refused, ``UsageError``); :class:`Conflict` if the name exists.
    Returns it as :func:`integration_summary` shows it."""
    from syncd.config import integration_request

    integration = integration_request(body)
    try:
        catalog.create_integration(integration)
    except UsageError as exc:
        raise Conflict(str(exc)) from None
    return integration_summary(integration)


def integration_summary(integration: Any, created_at: str | None = None) -> dict[str, Any]:
    """An integration as the API shows it: name, kind and its fields as stored (references
    and plain values; a secret's value is never read here)."""
    out = {"name": integration.name, "type": integration.type, "fields": dict(integration.fields)}
    if created_at is not None:
        out["created_at"] = created_at
    return out


async def export_items(
    catalog: Catalog,
    name: str,
    out: BinaryIO,
    *,
    fmt: str = "jsonl",
    snapshot: str | None = None,
    where: tuple[str, ...] | list[str] = (),
    prefix: str = "",
    urls: bool = False,
    ttl: int = 3600,
) -> int:
    """Write the manifest of dataset ``name``'s items (or of its ``snapshot``'s), those
    matching ``where`` and ``prefix`` (:mod:`syncd.query`), to ``out`` in format ``fmt``
    (:mod:`syncd.export`), with a presigned URL per row with ``urls`` (valid ``ttl``
    seconds; a snapshot's rows signed for their recorded versions). Streams: the items are
    read in keyset pages and written as they come. Returns the rows written; the library call
    behind ``syncd items export``."""
    from syncd import export
    from syncd.query import QueryError, parse_where

    if fmt not in export.FORMATS:
        raise UsageError(f"--format must be one of {', '.join(export.FORMATS)}, not {fmt!r}")
    if fmt == "parquet":
        export.need_pyarrow()  # before anything is read or written
    if urls and not 1 <= ttl <= MAX_URL_TTL:
        raise UsageError(f"--expires must be 1 second to 7 days, not {ttl} seconds")
    try:
        query = parse_where(where, prefix=prefix)
    except QueryError as exc:
        raise UsageError(f"--where: {exc}") from None
    dataset = catalog.get_dataset(name)
    if snapshot is None and not query.where and not urls:
        # the common case, a whole live dataset (or a prefix of it): raw columns in pages,
        # transformed a column at a time, no Item per row (the same output: test_export);
        # Parquet from Arrow batches read without a Python object per value where it can
        guesses = catalog.guesses_content_types(dataset.id)
        if fmt == "parquet":
            batches = catalog.item_batches(
                dataset.id, export.STORED, prefix=query.prefix, page=export.ROW_GROUP
            )
            if batches is not None:
                return export.write_batches(export.read_ahead(batches), out, guesses=guesses)
        pages = catalog.iter_item_pages(
            dataset.id, export.STORED, prefix=query.prefix, page=export.ROW_GROUP
        )
        return await export.write_pages(pages, out, fmt, guesses=guesses)
    items: Iterator[Item]
    if snapshot is None:
        items = catalog.iter_query(dataset.id, query)
    else:
        items = _snapshot_matching(catalog, dataset, snapshot, query)
    if not urls:
        return await export.write_manifest(items, out, fmt)
    async with open_dataset_driver(dataset) as driver:

        async def presign(item: Item) -> str:
            if snapshot is None:
                return await driver.presign(item.key, ttl)
            return await driver.presign_version(item.key, item.version, ttl)

        return await export.write_manifest(items, out, fmt, presign=presign)


def _snapshot_matching(catalog: Catalog, dataset: Dataset, tag: str, query: Any) -> Iterator[Item]:
    """The items of snapshot ``tag`` matching ``query``, in key order: the snapshot's items
    under the query's prefix, read in pages, each tested by :func:`syncd.export.matcher` (a
    snapshot's items are the live rows and the undo log's, which no SQL query spans)."""
    from syncd.export import matcher

    source = snapshot_source(catalog, dataset, tag)
    if not query.where:
        return source(query.prefix)
    test = matcher(query)
    return (item for item in source(query.prefix) if test(item))


# -- snapshots (issue 25; storage and contracts in syncd.store.snapshots) ----------------------


def create_snapshot(
    catalog: Catalog, dataset: str, tag: str, *, message: str | None = None
) -> dict[str, Any]:
    """Freeze dataset ``dataset`` as snapshot ``tag`` (``syncd snapshot create``); the
    snapshot as :meth:`~syncd.store.snapshots.Snapshot.public` shows it. ``UsageError`` for an
    unknown dataset, a bad tag or one the dataset has already (:class:`Conflict`)."""
    from syncd.store import snapshots

    found = catalog.get_dataset(dataset)
    snapshots.check_tag(tag)
    try:
        return snapshots.create(catalog, found, tag, message).public()
    except UsageError as exc:
        if "exists already" in str(exc):
            raise Conflict(str(exc)) from None
        raise


def list_snapshots(catalog: Catalog, dataset: str) -> list[dict[str, Any]]:
    """The dataset's snapshots, oldest first (``syncd snapshot ls``)."""
    from syncd.store import snapshots

    return [s.public() for s in snapshots.list_snapshots(catalog, catalog.get_dataset(dataset))]


def get_snapshot(catalog: Catalog, dataset: str, tag: str) -> dict[str, Any]:
    """One snapshot (``syncd snapshot show``); ``NotFound`` for an unknown tag."""
    from syncd.store import snapshots

    return snapshots.get(catalog, catalog.get_dataset(dataset), tag).public()


def remove_snapshot(catalog: Catalog, dataset: str, tag: str) -> dict[str, Any]:
    """Remove a snapshot and what only it kept (``syncd snapshot rm``); the removed one."""
    from syncd.store import snapshots

    found = catalog.get_dataset(dataset)
    snapshots.check_tag(tag)
    return snapshots.remove(catalog, found, tag).public()


def diff_snapshots(
    catalog: Catalog, dataset: str, a: str, b: str | None = None, *, keys: int | None = None
) -> dict[str, Any]:
    """What changed from snapshot ``a`` to snapshot ``b`` (None: the live dataset), as
    :func:`syncd.store.snapshots.diff_summary` counts it, with ``dataset``, ``a`` and ``b``
    (``null``: live); at most ``keys`` keys listed per kind."""
    from syncd.store import snapshots

    found = catalog.get_dataset(dataset)
    summary = snapshots.diff_summary(snapshots.differences(catalog, found, a, b), keys=keys)
    return {"dataset": dataset, "a": a, "b": b, **summary}
