"""``syncd run``: one daemon keeps every configured dataset current.

What runs, all on one asyncio loop (blocking work in threads):

* the **scheduler** (:mod:`.scheduler`): every dataset at start, then every ``interval``;
* one **queue consumer** per ``[queues.NAME]`` (:mod:`.queues`): the fast path from bucket
  notifications; a message is acknowledged only after its events are committed;
* one **folder watch** per local-folder dataset with ``watch = true`` (:mod:`.watch`);
* the **HTTP API** if ``[server]`` is configured (:mod:`syncd.server`);
* the **intake** (:mod:`.intake`) that every event source hands its events to, and the
  **catalog thread** (:mod:`.catalog_thread`) that owns the daemon's catalog connection.

One daemon per catalog: the daemon holds the catalog's ``daemon`` lease (:mod:`syncd.store.lease`)
while it runs; a second one refuses with :class:`DaemonBusy`. On a shared PostgreSQL catalog
the same lease becomes per-dataset work sharing.

Shutdown (SIGTERM/SIGINT sets ``stop``): the server stops taking requests, consumers stop
polling (messages received but not committed come back from the queue), watches stop, the
reconcile in flight writes its batch and is left resumable; then the lease is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from providers.config import ConfigError
from syncd import api
from syncd.config import DaemonConfig, DatasetSpec, QueueConfig, ServerConfig
from syncd.daemon.catalog_thread import CatalogThread
from syncd.daemon.intake import Intake
from syncd.daemon.metrics import Metrics
from syncd.daemon.scheduler import Scheduler
from syncd.errors import SyncdError, UsageError
from syncd.store import lease
from syncd.store.catalog import Catalog
from syncd.store.db import transaction

if TYPE_CHECKING:
    from syncd.server.lockout import AuthLockout

log = logging.getLogger("syncd.daemon")

#: the daemon renews its catalog lease this often (its ttl is lease.DEFAULT_TTL)
LEASE_RENEW_SECONDS = lease.DEFAULT_TTL / 4


class DaemonBusy(SyncdError):
    """Another daemon holds the catalog."""

    exit_code = 1


def _take_catalog(catalog: Catalog, owner: str) -> lease.Holder | None:
    with transaction(catalog.db):
        return lease.acquire(catalog.db, lease.DAEMON, owner)


def _renew(catalog: Catalog, owner: str) -> bool:
    with transaction(catalog.db):
        return lease.renew(catalog.db, lease.DAEMON, owner)


def _release(catalog: Catalog, owner: str) -> None:
    with transaction(catalog.db):
        lease.release(catalog.db, lease.DAEMON, owner)


class Daemon:
    """The long-running service. ``await run()`` until ``stop`` is set."""

    def __init__(
        self,
        settings: DaemonConfig,
        db_path: str,
        *,
        stop: asyncio.Event | None = None,
        api_token: str | None = None,
        poll_seconds: int = 10,
        create_catalog: bool = True,
        on_ready: Callable[[str], None] | None = None,
        api_lockout: AuthLockout | None = None,
    ) -> None:
        """``api_lockout``: the API's wrong-token limits (default :class:`AuthLockout`'s)."""
        self.settings = settings
        self.api_lockout = api_lockout
        self.poll_seconds = poll_seconds
        self.on_ready = on_ready
        #: the port the API listens on, once started (0 in the config picks a free one)
        self.port: int | None = None
        self.db_path = db_path
        self.stop = stop or asyncio.Event()
        self.api_token = api_token
        self.metrics = Metrics()
        self.catalog = CatalogThread(db_path, create=create_catalog)
        self.intake = Intake(self.catalog, settings.datasets, self.metrics)
        intervals = {name: float(spec.interval) for name, spec in settings.datasets.items()}
        self.scheduler = Scheduler(db_path, settings.datasets, intervals, self.metrics, self.stop)
        self.owner = lease.new_owner()
        #: set once every component has started (the API answers, consumers poll)
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Run until ``stop`` is set. Raises ``DaemonBusy`` if another daemon holds the
        catalog, ``UsageError`` for a configuration that cannot start."""
        await self.catalog.start()
        try:
            holder = await self.catalog.call(lambda c: _take_catalog(c, self.owner))
            if holder is not None:
                raise DaemonBusy(
                    f"another syncd run is using catalog {self.db_path!r}: "
                    f"{holder.describe()}; stop it first, or pass another --db"
                )
            try:
                await self._serve()
            finally:
                await self.catalog.call(lambda c: _release(c, self.owner))
        finally:
            await self.intake.close()
            await self.catalog.close()

    async def _ensure_datasets(self) -> None:
        """Create configured datasets that do not exist yet, so events for them route from
        the first second (their first reconcile fills them)."""

        def ensure(catalog: Catalog) -> None:
            for name, spec in self.settings.datasets.items():
                api.ensure_dataset(catalog, name, spec=spec)

        await self.catalog.call(ensure)

    async def _serve(self) -> None:
        await self._ensure_datasets()
        consumers = {q.name: self._open_consumer(q) for q in self.settings.queues.values()}
        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(self._keep_lease(), name="lease"),
            asyncio.create_task(self.scheduler.run(), name="scheduler"),
        ]
        closers: list[Callable[[], Awaitable[None]]] = []
        watches = 0
        try:
            for name, consumer in consumers.items():
                tasks.append(
                    asyncio.create_task(self._consume(name, consumer), name=f"queue:{name}")
                )
            for task in tasks:
                task.add_done_callback(self._report_early_end)
            for name, spec in self.settings.datasets.items():
                if spec.driver.type == "local" and spec.watch:
                    closers.append(await self._watch(name, spec))
                    watches += 1
            if self.settings.server is not None:
                closers.append(await self._start_server(self.settings.server))
            self.ready.set()
            summary = (
                f"{len(self.settings.datasets)} dataset(s), {len(self.settings.queues)} "
                f"queue(s), {watches} folder watch(es)"
            )
            if self.port is not None:
                assert self.settings.server is not None
                summary += f", API on http://{self.settings.server.host}:{self.port}"
            if self.on_ready:
                self.on_ready(summary)
            else:
                log.info("running: %s", summary)
            await self.stop.wait()
        finally:
            self.stop.set()
            for close in reversed(closers):
                with contextlib.suppress(Exception):
                    await close()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            for task, outcome in zip(tasks, done, strict=True):
                if isinstance(outcome, BaseException) and not isinstance(
                    outcome, asyncio.CancelledError
                ):
                    log.error("%s stopped with an error: %s", task.get_name(), outcome)

    def _report_early_end(self, task: asyncio.Task[Any]) -> None:
        """A part that ends before shutdown is a bug or a lost lease: say so at once."""
        if self.stop.is_set() or task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("%s stopped with an error: %s", task.get_name(), error, exc_info=error)

    async def _keep_lease(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), LEASE_RENEW_SECONDS)
            if self.stop.is_set():
                return
            if not await self.catalog.call(lambda c: _renew(c, self.owner)):
                log.error("lost the catalog lease to another daemon; stopping")
                self.stop.set()

    def _open_consumer(self, q: QueueConfig) -> Any:
        """The consumer of one queue; a setting that cannot work is a ``UsageError`` at start
        (one line, exit 2), not a task that dies later."""
        from syncd.daemon.queues import open_consumer

        try:
            return open_consumer(
                q.name,
                q.type,
                url=q.url,
                queue=q.queue,
                account=q.account,
                subscription=q.subscription,
                integration=q.integration,
                wait_seconds=self.poll_seconds,
                visibility_timeout=q.visibility_timeout,
            )
        except ConfigError as exc:
            raise UsageError(f"queue {q.name!r}: {exc}") from None

    async def _consume(self, name: str, consumer: Any) -> None:
        async def sink(events: list[Any], *, source: str) -> None:
            await self.intake.deliver(events, source=source)
            if consumer.stats.lag is not None:
                self.metrics.queue_lag.labels(name).set(consumer.stats.lag)

        await consumer.run(sink, self.stop)

    async def _watch(self, name: str, spec: DatasetSpec) -> Callable[[], Awaitable[None]]:
        from syncd.daemon.watch import FolderWatch

        async def sink(events: list[Any]) -> None:
            await self.intake.deliver(events, source=f"watch:{name}", dataset=name)

        async def overflow() -> None:
            log.warning("folder watch of %r lost track of changes; reconciling", name)
            self.scheduler.trigger(name)

        watch = FolderWatch(spec.driver.bucket, sink, prefix=spec.driver.path, on_overflow=overflow)
        await watch.start()
        return watch.stop

    async def _start_server(self, server: ServerConfig) -> Callable[[], Awaitable[None]]:
        from syncd.server.app import start
        from syncd.server.routes import Context

        context = Context(self.catalog, self.intake, self.metrics, self.scheduler)
        stop, self.port = await start(
            context, self.api_token or "", server.host, server.port, lockout=self.api_lockout
        )
        return stop
