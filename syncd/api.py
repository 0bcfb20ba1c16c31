"""The library API behind the CLI: bind a dataset to its source, open its driver, sync it.

Everything here raises :class:`~syncd.errors.SyncdError` subclasses (usage vs. sync failure)
or :class:`~providers.errors.StorageError`; the CLI maps those to one line and an exit code.
"""

from __future__ import annotations

import dataclasses
import os

from providers import faults, open_driver
from providers.base import Driver
from providers.config import ConfigError, DriverConfig
from syncd.catalog import Catalog, Dataset
from syncd.config import DatasetSpec
from syncd.errors import UsageError
from syncd.filters import Filters
from syncd.source import canonical, parse_source
from syncd.sync import SyncOptions, SyncResult, sync_dataset


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
    * With neither: the dataset must exist and not depend on a config-file integration.
    """
    existing = catalog.find_dataset(name)
    if spec is not None:
        cfg = _azure_account(spec.driver)
        src = canonical(cfg)
        if existing is None:
            return catalog.create_dataset(name, src, cfg, spec.filters)
        _check_binding(existing, src)
        return catalog.update_dataset(existing, cfg, spec.filters)
    if source is not None:
        cfg = _azure_account(parse_source(source))
        src = canonical(cfg)
        if existing is None:
            return catalog.create_dataset(name, src, cfg, filters or Filters())
        _check_binding(existing, src)
        if filters is not None and filters != existing.filters:
            return catalog.update_dataset(existing, existing.driver, filters)
        return existing
    if existing is None:
        catalog.get_dataset(name)  # raises the "unknown dataset" error with the known names
    assert existing is not None
    if existing.driver.integration is not None:
        raise UsageError(
            f"dataset {name!r} uses integration {existing.driver.integration.name!r} from a "
            "config file; pass --config with that file"
        )
    if filters is not None and filters != existing.filters:
        return catalog.update_dataset(existing, existing.driver, filters)
    return existing


def _check_binding(dataset: Dataset, source: str) -> None:
    if dataset.source != source:
        raise UsageError(
            f"dataset {dataset.name!r} is bound to {dataset.source}, not {source}; "
            "name the same source (or none), or use another dataset name"
        )


def open_dataset_driver(dataset: Dataset) -> Driver:
    """Open the driver of ``dataset``, with fault injection if the environment asks for it."""
    try:
        return faults.from_env(open_driver(dataset.driver))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


async def run_sync(
    catalog: Catalog, dataset: Dataset, options: SyncOptions, *, new: bool = False
) -> SyncResult:
    """Sync ``dataset``. If it was ``new`` (created for this sync) and the first sync fails
    before writing any item, the dataset is removed again, so a typo in a bucket name or bad
    credentials leave nothing half-made behind; a dry run of a new dataset is removed too."""
    try:
        async with open_dataset_driver(dataset) as driver:
            result = await sync_dataset(catalog, dataset, driver, options)
    except BaseException:
        if new and catalog.count_items(dataset.id) == 0:
            catalog.drop_dataset(dataset)
        raise
    if new and options.dry_run:
        catalog.drop_dataset(dataset)  # a dry run leaves the catalog as it found it
    return result
