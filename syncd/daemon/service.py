"""``syncd run``: one daemon keeps every configured dataset current.

What runs, all on one asyncio loop (blocking work in threads):

* the **scheduler** (:mod:`.scheduler`): every dataset at start, then every ``interval``;
* one **queue consumer** per ``[queues.NAME]`` (:mod:`.queues`): the fast path from bucket
  notifications; a message is acknowledged only after its events are committed;
* one **folder watch** per local-folder dataset with ``watch = true`` (:mod:`.watch`);
* the **HTTP API** if ``[server]`` is configured (:mod:`syncd.server`), with the tokens of
  ``[tokens.NAME]`` besides ``SYNCD_API_TOKEN``;
* the **dataset follower** (``syncd run`` only): every :data:`DATASET_POLL_SECONDS` it reads
  the catalog's datasets created at run time (over the API, by any worker) and starts,
  changes or stops their schedules (:meth:`.scheduler.Scheduler.set_runtime`); a dataset
  the config declares is the config's;
* one **webhook delivery** per ``[webhooks.NAME]`` (:mod:`syncd.feed.webhooks`), started once
  the API is up, one **sink delivery** per ``[sinks.NAME]`` (:mod:`syncd.feed.sinks`: SQS, SNS,
  Azure Queue, Pub/Sub), and the change log's **retention** (``[changes] retention``, never
  past what a webhook or sink has not delivered), on a catalog connection of their own
  (:attr:`Daemon.feed_catalog`) so a slow endpoint or a long prune never holds up syncing;
* the **intake** (:mod:`.intake`) that every event source hands its events to, and the
  **catalog thread** (:mod:`.catalog_thread`) that owns the daemon's catalog connection.

Several daemons share a catalog as *workers* (:mod:`syncd.store.workers`): each registers at
start, heartbeats every quarter of the lease ttl (``[daemon] lease_ttl``) and unregisters on a
clean stop. They share the datasets through the datasets' leases and one schedule kept in the
catalog (:mod:`.scheduler`), and the queues by competing for messages (a message is deleted
only after its events are committed, so one a worker took and died with comes back to another).

Start: the catalog is opened and the configured datasets created, then the API binds its
port (a busy port stops the daemon before any reconcile or event), then the worker
registers and the scheduler, consumers and watches start. The ready line counts the datasets
of the catalog (``syncd serve`` serves those a CLI built; the API syncs them on demand).

The catalog may go away while the daemon runs (see :mod:`.catalog_thread`): a PostgreSQL
server that restarts is reconnected with backoff, a sqlite file deleted or replaced is
reported and left alone. Meanwhile ``/healthz`` and the API answer 503, consumers receive
nothing, no message is acknowledged and no reconcile starts; all resume by themselves
within seconds of the server's return.

Shutdown (SIGTERM/SIGINT sets ``stop``; logged "stopping..." then "stopped"): the server
stops taking requests, consumers stop polling at once (a long poll in flight is cancelled;
messages received but not committed come back from the queue), webhook and sink deliveries
stop (a batch in flight is sent again, with the same id, by the next run), watches stop, the reconcile
in flight writes its batch and is left resumable (its lease released, so another worker
resumes it at once); then the worker's registration is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from providers.config import ConfigError
from providers.redact import redact
from syncd import api
from syncd.config import DaemonConfig, DatasetSpec, QueueConfig, ServerConfig
from syncd.daemon.catalog_thread import CatalogThread
from syncd.daemon.intake import Intake
from syncd.daemon.metrics import Metrics
from syncd.daemon.scheduler import Scheduler
from syncd.daemon.waiting import wait_at_most
from syncd.errors import UsageError
from syncd.store import lease, workers
from syncd.store.catalog import Catalog
from syncd.store.changes import ChangeSignal
from syncd.store.db import CatalogTooNew, check_schema, transaction
from syncd.store.stamps import now

if TYPE_CHECKING:
    from syncd.server.lockout import AuthLockout

log = logging.getLogger("syncd.daemon")

#: seconds between two prunes of the change log
RETENTION_SECONDS = 300.0
#: seconds between two looks at the catalog's datasets created at run time (the API of this
#: daemon looks at once after its own change; other workers' changes show within this)
DATASET_POLL_SECONDS = 2.0


def _register(catalog: Catalog, worker_id: str, ttl: float, api_url: str | None) -> bool:
    """Register this worker; True if no other live worker shares the catalog."""
    with transaction(catalog.db):
        workers.register(catalog.db, worker_id, ttl=ttl, api=api_url)
    return workers.live_workers(catalog.db) == [worker_id]


def _heartbeat(catalog: Catalog, worker_id: str, ttl: float, api_url: str | None) -> None:
    """Renew the worker's registration; ``CatalogTooNew`` once a newer syncd has migrated the
    catalog (a rolling upgrade: this older worker must stop taking work, not write on)."""
    with transaction(catalog.db):
        workers.heartbeat(catalog.db, worker_id, ttl=ttl, api=api_url)
    check_schema(catalog.db)


def _unregister(catalog: Catalog, worker_id: str) -> None:
    with transaction(catalog.db):
        workers.unregister(catalog.db, worker_id)


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
        register: bool = True,
    ) -> None:
        """``api_lockout``: the API's wrong-token limits (default :class:`AuthLockout`'s).
        ``register``: take part as a worker (``syncd run``); ``syncd serve`` does not."""
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
        #: the datasets events may need a HEAD for (:class:`Intake`): the config's, and
        #: those created at run time (kept current by :meth:`_refresh_datasets`)
        self._event_specs: dict[str, DatasetSpec] = dict(settings.datasets)
        self.intake = Intake(self.catalog, self._event_specs, self.metrics)
        intervals = {name: float(spec.interval) for name, spec in settings.datasets.items()}
        self.register = register
        #: this worker's id in the registry; its dataset leases are owned by "<id>/<run>"
        self.worker_id = workers.new_worker_id()
        self.lease_ttl = float(settings.daemon.lease_ttl)
        #: the API's address once it serves (recorded in the registry by the heartbeat)
        self.api_url: str | None = None
        lease.set_ttl(self.lease_ttl)  # every lease this process takes lives this long
        self.scheduler = Scheduler(
            db_path,
            settings.datasets,
            intervals,
            self.metrics,
            self.stop,
            worker_id=self.worker_id if register else None,
            catalog=self.catalog,
        )
        #: set once every component has started (the API answers, consumers poll)
        self.ready = asyncio.Event()
        #: why the daemon stopped by itself (a catalog migrated by a newer syncd), if it did
        self.fatal: Exception | None = None
        #: pulsed when this daemon commits changes (wakes the API's change long polls)
        self.changed = ChangeSignal()
        self.scheduler.on_change = self.changed.pulse
        #: the connection webhook deliveries and retention use (``syncd run`` only)
        self.feed_catalog = CatalogThread(db_path, create=False) if register else None
        if self.feed_catalog is not None:
            self.catalog.share_loss(self.feed_catalog)
        #: set when this daemon's API created, changed or removed a dataset: look at once
        self._datasets_nudge = asyncio.Event()

    async def run(self) -> None:
        """Run until ``stop`` is set. Raises ``UsageError`` for a configuration that cannot
        start."""
        await self.catalog.start()
        try:
            if self.feed_catalog is not None:
                await self.feed_catalog.start()  # after the catalog exists
            await self._serve()
        finally:
            if self.feed_catalog is not None:
                with contextlib.suppress(Exception):
                    await self.feed_catalog.close()
            if self.register:
                with contextlib.suppress(Exception):  # an unclean stop: the row expires
                    await self.catalog.call(lambda c: _unregister(c, self.worker_id))
            await self.intake.close()
            await self.catalog.close()
            if self.ready.is_set():
                log.info("stopped")
        if self.fatal is not None:
            raise self.fatal  # the command's one line and exit code

    async def _ensure_datasets(self) -> int:
        """Create configured datasets that do not exist yet, so events for them route from
        the first second (their first reconcile fills them); return how many datasets the
        catalog holds (``syncd serve`` serves those of a catalog the CLI built)."""

        def ensure(catalog: Catalog) -> int:
            for name, spec in self.settings.datasets.items():
                api.ensure_dataset(catalog, name, spec=spec)
            return len(catalog.list_datasets())

        return await self.catalog.call(ensure)

    async def _serve(self) -> None:
        datasets = await self._ensure_datasets()
        consumers = {q.name: self._open_consumer(q) for q in self.settings.queues.values()}
        tasks: list[asyncio.Task[Any]] = []
        closers: list[Callable[[], Awaitable[None]]] = []
        watches = 0
        try:
            # the port first: a daemon that cannot serve stops before any reconcile or event
            if self.settings.server is not None:
                closers.append(await self._start_server(self.settings.server))
                # recorded by the next heartbeat, which comes at once: a catalog write here
                # would hold the ready line up behind another writer's lock
                self.api_url = f"http://{self.settings.server.host}:{self.port}"
            started = now()
            if self.register:
                ttl = self.lease_ttl
                solo = await self.catalog.call(lambda c: _register(c, self.worker_id, ttl, None))
                if solo:  # nobody ran here a moment ago: events may have been lost, look at all
                    self.scheduler.first_round_after = started
            tasks.append(asyncio.create_task(self.catalog.watch(self.stop), name="catalog"))
            if self.register:
                # the datasets created at run time are scheduled from the first round on
                await self._refresh_datasets()
            tasks.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
            if self.register:
                tasks.append(asyncio.create_task(self._follow_datasets(), name="datasets"))
                tasks.append(asyncio.create_task(self._keep_registered(), name="heartbeat"))
                tasks.append(asyncio.create_task(self._keep_retention(), name="retention"))
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
            if self.feed_catalog is not None and self.settings.webhooks:
                closers.append(await self._start_feed("webhook"))
            if self.feed_catalog is not None and self.settings.sinks:
                closers.append(await self._start_feed("sink"))
            self.ready.set()
            summary = (
                f"{datasets} dataset(s) ({len(self.scheduler.states)} scheduled), "
                f"{len(self.settings.queues)} queue(s), {watches} folder watch(es)"
            )
            if self.settings.webhooks:
                summary += f", {len(self.settings.webhooks)} webhook(s)"
            if self.settings.sinks:
                summary += f", {len(self.settings.sinks)} sink(s)"
            if self.port is not None:
                assert self.settings.server is not None
                summary += f", API on http://{self.settings.server.host}:{self.port}"
            if self.on_ready:
                self.on_ready(summary)
            else:
                log.info("running: %s", summary)
            await self.stop.wait()
        finally:
            if self.ready.is_set():
                log.info("stopping...")
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

    async def _refresh_datasets(self) -> None:
        """Hand the scheduler the catalog's datasets created at run time, as they are now
        (a failed look is logged and tried at the next round)."""
        from syncd.daemon.scheduler import RuntimeSpec
        from syncd.limits import parse_max_delete

        default = float(self.settings.daemon.interval)

        def look(catalog: Catalog) -> list[tuple[Any, Any]]:
            return [
                (ds, settings)
                for ds, settings in catalog.runtime_datasets()
                if ds.name not in self.settings.datasets  # the config's declaration wins
            ]

        try:
            found = await self.catalog.call(look)
        except Exception as exc:
            if self.catalog.available:  # else the catalog thread said why, once
                log.warning("looking for created datasets failed (%s)", redact(str(exc)))
            return
        wanted = {
            ds.name: RuntimeSpec(
                interval=float(settings.interval or default),
                max_delete=parse_max_delete(settings.max_delete) if settings.max_delete else None,
                watch=settings.watch,
                metadata=settings.metadata,
                tags=settings.tags,
            )
            for ds, settings in found
        }
        self.scheduler.set_runtime(wanted)
        # events that lack a size or an ETag are completed with a HEAD through the dataset's
        # driver, and in ``head`` mode a create is HEADed for its metadata: the intake needs
        # the created datasets' binding, filters and metadata settings too
        specs = {
            ds.name: DatasetSpec(
                ds.name, ds.driver, ds.filters, metadata=settings.metadata, tags=settings.tags
            )
            for ds, settings in found
        }
        for name in [n for n in self._event_specs if n not in self.settings.datasets]:
            old = self._event_specs[name]
            if name not in specs or specs[name].driver != old.driver:
                del self._event_specs[name]
                await self.intake.forget(name)
        self._event_specs.update(specs)

    async def _follow_datasets(self) -> None:
        """Every :data:`DATASET_POLL_SECONDS`, or at once after this daemon's API changed
        one, pick up datasets created, changed and removed at run time by any process on the
        catalog (one cheap query: the datasets that have run-time settings)."""
        while not self.stop.is_set():
            await wait_at_most(self._datasets_nudge, DATASET_POLL_SECONDS)
            self._datasets_nudge.clear()
            if self.stop.is_set():
                return
            await self._refresh_datasets()

    def _datasets_changed(self) -> None:
        self._datasets_nudge.set()

    async def _keep_registered(self) -> None:
        """Heartbeat every quarter of the ttl; a failed heartbeat (a catalog locked for long)
        is logged and tried again, never fatal: other workers may meanwhile see this one gone
        and take its datasets over, which its lease checks at each commit make safe."""
        await self._stop_or(self.ready.wait())
        while not self.stop.is_set():
            try:
                await self.catalog.call(
                    lambda c: _heartbeat(c, self.worker_id, self.lease_ttl, self.api_url)
                )
            except CatalogTooNew as exc:
                log.error("%s; this worker stops taking work", exc)
                self.fatal = exc
                self.stop.set()
                return
            except Exception as exc:
                if self.catalog.available:  # else the catalog thread said why, once
                    log.warning("worker heartbeat failed (%s); trying again", redact(str(exc)))
            await wait_at_most(self.stop, self.lease_ttl / 4)

    async def _start_feed(self, kind: str) -> Callable[[], Awaitable[None]]:
        """Start delivering the change log to every ``[webhooks.NAME]`` (``kind``
        ``webhook``) or ``[sinks.NAME]`` (``sink``); a secret or credentials that cannot be
        read are a ``UsageError`` at start (one line, exit 2). Returns the feed's stop."""
        if kind == "webhook":
            from syncd.feed.webhooks import WebhookFeed as Feed
        else:
            from syncd.feed.sinks import SinkFeed as Feed  # type: ignore[assignment]

        assert self.feed_catalog is not None
        feed = Feed(
            getattr(self.settings, kind + "s"),
            self.feed_catalog,
            self.changed,
            self.metrics,
            owner=f"{self.worker_id}/{kind}s",
        )
        try:
            await feed.start()
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        return feed.stop

    async def _keep_retention(self) -> None:
        """Every :data:`RETENTION_SECONDS`, prune changes older than ``[changes] retention``,
        but none a configured webhook or sink has not delivered yet. A failed prune is logged
        and tried at the next round."""
        from syncd.feed.delivery import keep_after

        assert self.feed_catalog is not None
        await self._stop_or(self.ready.wait())
        names = [*self.settings.webhooks, *self.settings.sinks]
        retention = float(self.settings.retention)

        def prune(catalog: Catalog) -> tuple[int, int]:
            keep = keep_after(catalog.db, names)
            return api.prune_changes(catalog, older_than=retention, keep_after=keep)

        while not self.stop.is_set():
            try:
                removed, tombstones = await self.feed_catalog.call(prune)
                if removed or tombstones:
                    log.info(
                        "retention: pruned %d change(s), %d event tombstone(s)", removed, tombstones
                    )
            except Exception as exc:
                if not self.feed_catalog.lost:  # a lost catalog was reported when it was lost
                    log.warning(
                        "pruning the change log failed (%s); trying later", redact(str(exc))
                    )
            await wait_at_most(self.stop, RETENTION_SECONDS)

    async def _stop_or(self, waiting: Awaitable[Any]) -> None:
        """Wait for ``waiting`` or ``stop``, whichever comes first."""
        other = asyncio.ensure_future(waiting)
        stopping = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({other, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (other, stopping):
            task.cancel()

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
            self.changed.pulse()
            if consumer.stats.lag is not None:
                self.metrics.queue_lag.labels(name).set(consumer.stats.lag)

        async def gate() -> bool:
            # nothing is received while the catalog cannot take it: received messages would
            # only wait out their visibility timeout, delaying the catch-up after its return
            return await self.catalog.wait_available(self.stop)

        await consumer.run(sink, self.stop, gate=gate)

    async def _watch(self, name: str, spec: DatasetSpec) -> Callable[[], Awaitable[None]]:
        from syncd.daemon.watch import FolderWatch

        async def sink(events: list[Any]) -> None:
            await self.intake.deliver(events, source=f"watch:{name}", dataset=name)
            self.changed.pulse()

        async def overflow() -> None:
            log.warning("folder watch of %r lost track of changes; reconciling", name)
            self.scheduler.trigger(name)

        watch = FolderWatch(spec.driver.bucket, sink, prefix=spec.driver.path, on_overflow=overflow)
        await watch.start()
        return watch.stop

    async def _start_server(self, server: ServerConfig) -> Callable[[], Awaitable[None]]:
        from syncd.server.app import start
        from syncd.server.routes import Context

        context = Context(
            self.catalog,
            self.intake,
            self.metrics,
            self.scheduler,
            worker_id=self.worker_id if self.register else None,
            changed=self.changed,
            webhooks=self.settings.webhooks,
            sinks=self.settings.sinks,
            declared=frozenset(self.settings.datasets),
            datasets_changed=self._datasets_changed,
        )
        stop, self.port = await start(
            context,
            self.api_token or "",
            server.host,
            server.port,
            lockout=self.api_lockout,
            tokens=self._resolve_tokens(),
        )
        return stop

    def _resolve_tokens(self) -> dict[str, tuple[str, str]]:
        """The ``[tokens.NAME]`` read from their references, ``{name: (value, scope)}``; a
        reference that cannot be read, a token too short or one that another token also is,
        is a ``UsageError`` at start (one line naming the token, never its value)."""
        from syncd.server.app import check_token

        out: dict[str, tuple[str, str]] = {}
        seen = {self.api_token or "": "SYNCD_API_TOKEN"}
        for name, token in self.settings.tokens.items():
            try:
                value = token.resolve()  # its errors name tokens.NAME.token
            except ConfigError as exc:
                raise UsageError(str(exc)) from None
            try:
                check_token(value)
            except UsageError as exc:
                why = str(exc).replace("the HTTP API needs SYNCD_API_TOKEN set to", "must be")
                raise UsageError(f"tokens.{name}.token: {why}") from None
            if value in seen:
                raise UsageError(
                    f"tokens.{name}.token: the same token as {seen[value]}; give each its own"
                )
            seen[value] = f"tokens.{name}"
            out[name] = (value, token.scope)
        return out
