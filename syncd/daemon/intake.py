"""Where bucket events enter the daemon: completed, applied off the event loop, counted.

Every event source (queue consumers, folder watches, the HTTP API) hands its events to
:meth:`Intake.deliver`. It

1. completes events that lack a size or an ETag (some notification formats and configurations
   omit them) with a HEAD of the object through the dataset's driver, at most ``HEADS`` at a
   time; a HEAD that finds no object means the event is stale (the object is gone again) and
   the event is dropped, never applied as a create; for a dataset with ``metadata = "head"``
   a create that carries no metadata (S3, Azure) is HEADed for it too;
2. applies the batch in one catalog transaction on the catalog thread;
3. counts the outcomes per source for ``/metrics`` (and the items changed per dataset, with
   ``via`` the source: a queue's name, ``api``, ``watch:NAME``) and logs one line per batch.

It raises if the batch could not be committed, so the caller does not acknowledge it and the
queue delivers it again (every source is at-least-once; applying twice is harmless).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from datetime import UTC, datetime

from providers import open_driver
from providers.base import Driver, ObjectInfo
from providers.errors import NotFound
from syncd.config import DatasetSpec
from syncd.daemon.catalog_thread import CatalogThread
from syncd.daemon.metrics import Metrics
from syncd.events.apply import ApplyResult, apply_events
from syncd.events.parse import EventKind, ObjectEvent

log = logging.getLogger("syncd.daemon")

#: HEAD requests in flight at once while completing events
HEADS = 16
#: the outcomes that change an item (``syncd_items_changed_total``)
CHANGES = ("created", "updated", "deleted")


class Intake:
    """Completes, applies and counts event batches for one daemon."""

    def __init__(
        self, catalog: CatalogThread, specs: dict[str, DatasetSpec], metrics: Metrics
    ) -> None:
        self.catalog = catalog
        self.specs = specs
        self.metrics = metrics
        self._drivers: dict[str, Driver] = {}
        self._heads = asyncio.Semaphore(HEADS)

    async def deliver(
        self, events: list[ObjectEvent], *, source: str, dataset: str | None = None
    ) -> ApplyResult:
        """Apply ``events`` (to the datasets they route to, or only to ``dataset``)."""
        started = time.monotonic()
        completed = await asyncio.gather(*(self._complete(e) for e in events))
        ready = [e for e in completed if e is not None]
        stale = len(events) - len(ready)
        result = await self.catalog.call(lambda c: apply_events(c, ready, dataset=dataset))
        result.counts["stale"] += stale
        for outcome, n in result.as_dict().items():
            if n:
                self.metrics.events.labels(source, outcome).inc(n)
        # every path that changes items counts there, reconciles and events alike
        for (name, outcome), n in result.by_dataset.items():
            if outcome in CHANGES:
                self.metrics.items_changed.labels(name, outcome, source).inc(n)
        self.metrics.event_batches.labels(source).inc()
        log.info(
            "applied %d event(s) from %s in %.3fs: %s",
            len(events),
            source,
            time.monotonic() - started,
            ", ".join(f"{v} {k}" for k, v in result.as_dict().items() if v) or "nothing",
        )
        return result

    def _spec_for(self, event: ObjectEvent) -> tuple[str, DatasetSpec] | None:
        for name, spec in self.specs.items():
            cfg = spec.driver
            if (cfg.type, cfg.bucket) == (event.provider, event.bucket) and event.key.startswith(
                cfg.path
            ):
                return name, spec
        return None

    async def _complete(self, event: ObjectEvent) -> ObjectEvent | None:
        """The event with size and ETag, from a HEAD if it lacked them; None if stale. A
        create for a dataset with ``metadata = "head"`` whose event carries no metadata (S3,
        Azure) is HEADed too, for its content type, metadata and (``tags``) tags, unless the
        object was overwritten since (the HEAD's ETag differs): then it applies as it came."""
        if event.kind is not EventKind.CREATED:
            return event
        complete = event.size is not None and event.etag is not None
        if complete and event.metadata is not None:
            return event
        found = self._spec_for(event)
        if found is None:
            return event  # routed nowhere: apply counts it as unrouted
        name, spec = found
        if complete:
            if spec.metadata != "head":
                return event
            return await self._described(name, spec, event)
        driver = self._drivers.get(name)
        if driver is None:
            driver = self._drivers[name] = open_driver(spec.driver)
        async with self._heads:
            try:
                info = await driver.head(event.key)
            except NotFound:
                return None
        return dataclasses.replace(
            event,
            size=info.size,
            etag=info.etag,
            content_type=event.content_type or info.content_type,
            version=event.version or info.version,
            metadata=event.metadata
            if event.metadata is not None or info.metadata is None or spec.metadata != "head"
            else tuple(sorted(info.metadata.items())),
        )

    async def _described(self, name: str, spec: DatasetSpec, event: ObjectEvent) -> ObjectEvent:
        """``event`` with the content type, metadata and tags a HEAD of its object gives."""
        from syncd.reconcile.metadata import head_objects

        driver = self._drivers.get(name)
        if driver is None:
            driver = self._drivers[name] = open_driver(spec.driver)
        assert event.size is not None and event.etag is not None
        listed = ObjectInfo(event.key, event.size, event.etag, datetime.now(UTC))
        async with self._heads:
            (info,) = await head_objects(driver, [listed], tags=spec.tags, concurrency=1)
        if info is listed:
            return event  # gone or overwritten since: nothing to add
        return dataclasses.replace(
            event,
            content_type=info.content_type or event.content_type,
            metadata=tuple(sorted((info.metadata or {}).items())),
            tags=tuple(sorted(info.tags.items())) if info.tags is not None else None,
        )

    async def forget(self, name: str) -> None:
        """Close the driver kept for dataset ``name`` (removed, or bound anew), if any."""
        driver = self._drivers.pop(name, None)
        if driver is not None:
            await driver.close()

    async def close(self) -> None:
        for driver in self._drivers.values():
            await driver.close()
        self._drivers.clear()
