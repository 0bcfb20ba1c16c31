"""Scheduled reconciles, shared by every worker on the catalog: each dataset about once per
``interval`` (with jitter), whichever worker runs it.

One task per dataset runs its reconciles one after another, so a dataset never has two runs
at once in this worker; the dataset's lease keeps other workers and one-shot ``syncd sync``
runs from running beside it. When a dataset is due is decided from the catalog, not from this
worker's memory: a reconcile asks :func:`syncd.api.sync` to run *unless a reconcile finished
after* ``now - interval`` (checked under the lease, so two workers that both found it due do
not reconcile it twice in a row); if one did, the task sleeps until that reconcile's end plus
the interval (:class:`~syncd.api.NotDue`). A dataset whose lease another live worker holds is
skipped quietly (debug log, ``outcome="busy"``) and looked at again after
``min(BUSY_RETRY, lease ttl)``, so a dead worker's dataset is taken over (and its run resumed
from its checkpoint) soon after its lease expires.

At start, a worker that finds no other live worker reconciles every dataset not reconciled
since it started (events may have been lost while nobody ran); one that joins live workers
follows the catalog's schedule. ``trigger(name)`` asks for a reconcile now whatever the
schedule (the API's ``POST /datasets/{name}/sync``, a folder watch that lost events).

Datasets created over the HTTP API (their settings in the catalog's ``dataset_settings``)
are scheduled like declared ones: the daemon polls the catalog and hands them to
:meth:`Scheduler.set_runtime`, which starts, changes and stops their tasks. Their reconciles
read source and filters from the catalog, so a patch applies from the next run on; a dataset
the config declares is the config's (its declaration wins).

``run_once(name)`` reconciles a dataset of the catalog that the config does not schedule
(``syncd serve`` over a catalog the CLI built; the API's ``POST /datasets/{name}/sync``), once,
through :func:`syncd.api.sync` with the source and settings stored in the catalog.

While the daemon's catalog is unavailable (:class:`~.catalog_thread.CatalogThread`: a server
that went away, a sqlite file deleted or replaced) no reconcile starts: each waits for its
return, so none opens (and so creates) a new catalog file, and a reconcile that failed because
the server went away is not counted against its dataset. Reconciles open the catalog with
``create=False`` and check the sqlite file is still the daemon's.

A reconcile runs in a thread of its own, with its own catalog connection and event loop, so
neither its listing nor its catalog writes block the daemon's loop. A failed reconcile is
logged, counted and retried with exponential backoff (capped at the interval); it never stops
the daemon. Every reconcile goes through :meth:`Scheduler._sync_blocking`, the one call into
:func:`syncd.api.sync`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from providers.errors import StorageError
from providers.redact import redact
from syncd import api
from syncd.api import NotDue
from syncd.config import DatasetSpec
from syncd.daemon.metrics import Metrics
from syncd.daemon.waiting import wait_at_most
from syncd.errors import CatalogUnavailable, SyncdError
from syncd.limits import MaxDelete
from syncd.reconcile.metadata import MetadataMode
from syncd.reconcile.sync import DatasetBusy, SyncOptions, SyncResult, SyncStopped
from syncd.store import lease, workers
from syncd.store.catalog import Catalog
from syncd.store.db import catalog_error, is_server
from syncd.store.stamps import parse, stamp

if TYPE_CHECKING:
    from syncd.daemon.catalog_thread import CatalogThread

log = logging.getLogger("syncd.daemon")

#: first retry delay after a failed reconcile (doubles each failure, capped at the interval)
BACKOFF_BASE = 5.0
#: a dataset another process holds is looked at again after this long (or the lease ttl, if
#: shorter: its holder may be dead, and its lease then expires within the ttl)
BUSY_RETRY = 10.0
#: at most this many reconciles run at once (each lists one bucket and writes the catalog)
MAX_CONCURRENT = 4
JITTER = 0.1


def jittered(seconds: float) -> float:
    """``seconds`` +/- 10 %, so datasets with one interval do not all list at once."""
    return seconds * random.uniform(1 - JITTER, 1 + JITTER)


@dataclass(frozen=True)
class RuntimeSpec:
    """How the daemon runs a dataset created at run time (its catalog ``dataset_settings``):
    its binding and filters are read from the catalog by each reconcile."""

    interval: float
    max_delete: MaxDelete | None = None
    watch: bool = True
    metadata: MetadataMode = "listing"
    tags: bool = False
    #: a created dataset lists serially (the config's ``list_concurrency`` is a declaration's)
    list_concurrency: int = 1


@dataclass
class DatasetState:
    """What the daemon knows of one dataset's schedule (read by the API and metrics)."""

    name: str
    interval: float
    running: bool = False
    last_result: dict[str, Any] | None = None
    last_error: str | None = None
    failures: int = 0
    next_run_at: float | None = None  # time.time()
    runs: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: set by trigger(): the next reconcile runs whatever the catalog's schedule says
    forced: bool = False
    #: set when a dataset created at run time is removed: its task ends at its next look
    removed: bool = False

    def public(self) -> dict[str, Any]:
        return {
            "interval": self.interval,
            "running": self.running,
            "failures": self.failures,
            # ISO text like every other time the API shows (syncd.store.stamps)
            "next_run_at": (
                stamp(datetime.fromtimestamp(self.next_run_at, UTC))
                if self.next_run_at is not None
                else None
            ),
            "last_error": self.last_error,
            "last_result": self.last_result,
        }


class Scheduler:
    """Runs the reconciles of the configured datasets until ``stop`` is set."""

    def __init__(
        self,
        db_path: str,
        specs: dict[str, DatasetSpec],
        intervals: dict[str, float],
        metrics: Metrics,
        stop: asyncio.Event,
        *,
        worker_id: str | None = None,
        catalog: CatalogThread | None = None,
    ) -> None:
        """``worker_id``: the registered worker this scheduler runs in (its leases are named
        after it); None for a scheduler outside the registry (tests). ``catalog``: the
        daemon's catalog thread, whose availability gates every reconcile."""
        self.db_path = db_path
        self.catalog = catalog
        self.worker_id = worker_id
        #: the first round reconciles every dataset not reconciled after this time (ISO), if
        #: set: the daemon sets it to its start when it found no other live worker
        self.first_round_after: str | None = None
        self.specs = specs
        self.metrics = metrics
        self.stop = stop
        self.states = {name: DatasetState(name, intervals[name]) for name in specs}
        #: first retry delay after a failure (doubles per failure, capped at the interval)
        self.backoff_base = BACKOFF_BASE
        self._limit = asyncio.Semaphore(MAX_CONCURRENT)
        # reconciles run for minutes: their own threads, not the loop's shared default pool
        self._pool = ThreadPoolExecutor(MAX_CONCURRENT, thread_name_prefix="syncd-reconcile")
        # set on shutdown: a reconcile in flight writes its batch and stops at the next page
        self._halt = threading.Event()
        #: called on the loop's thread after each reconcile (it may have written changes)
        self.on_change: Callable[[], None] = lambda: None
        if catalog is not None:
            # a reconcile in flight stops at its next page: its writes would go to a file that
            # is not the catalog any more
            catalog.on_lost.append(self._halt.set)
        #: on-demand reconciles of datasets the config does not schedule (run_once)
        self._once: dict[str, asyncio.Task[None]] = {}
        #: the datasets created at run time (the catalog's ``dataset_settings``) this
        #: scheduler runs, with what it runs them with (see :meth:`set_runtime`)
        self.runtime: dict[str, RuntimeSpec] = {}
        #: each scheduled dataset's task, once :meth:`run` started
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False

    def trigger(self, name: str) -> bool:
        """Ask for a reconcile of ``name`` now; False if the daemon does not schedule it."""
        state = self.states.get(name)
        if state is None:
            return False
        state.forced = True
        state.wake.set()
        return True

    def run_once(self, name: str) -> None:
        """Reconcile ``name``, a dataset of the catalog this daemon does not schedule, now and
        once (with the source and settings the catalog holds). A second call while it runs
        joins the first."""
        if name in self._once or self._halt.is_set():
            return
        state = DatasetState(name, 0.0)

        async def once() -> None:
            try:
                async with self._limit:
                    if not self.stop.is_set() and await self._catalog_ready():
                        await self._reconcile(state)
            finally:
                self._once.pop(name, None)

        self._once[name] = asyncio.create_task(once(), name=f"sync:{name}")

    def failing(self) -> dict[str, dict[str, Any]]:
        """The scheduled datasets whose last reconciles failed: failures in a row, last error."""
        return {
            s.name: {"failures": s.failures, "last_error": s.last_error}
            for s in self.states.values()
            if s.failures
        }

    def state(self, name: str) -> dict[str, Any] | None:
        """The schedule of ``name`` (None if this daemon does not schedule it)."""
        found = self.states.get(name)
        return found.public() if found is not None else None

    def set_runtime(self, wanted: dict[str, RuntimeSpec]) -> None:
        """Schedule exactly the run-time datasets of ``wanted`` (by name; a dataset the config
        declares is never in it): start the new ones' tasks, stop the removed ones' (a
        reconcile in flight finishes: removing a dataset waits for its lease anyway), and give
        a changed one its new interval and delete limit (its task looks again at once and
        sleeps to the new schedule). Filters are read from the catalog by every reconcile."""
        for name in list(self.runtime):
            if name not in wanted:
                del self.runtime[name]
                state = self.states.pop(name, None)
                if state is not None:
                    state.removed = True
                    state.wake.set()
                log.info("dataset %r was removed; no longer scheduled", name)
        for name, spec in wanted.items():
            if name in self.specs:
                continue  # the config declares it: the config wins
            old = self.runtime.get(name)
            self.runtime[name] = spec
            if old is None:
                state = self.states[name] = DatasetState(name, spec.interval)
                log.info("dataset %r was created; scheduled every %.0fs", name, spec.interval)
                if self._running:
                    self._start(state)
            elif old != spec:
                state = self.states[name]
                state.interval = spec.interval
                state.wake.set()  # sleep again, to the new interval
                log.info("dataset %r was changed; scheduled every %.0fs", name, spec.interval)

    def _start(self, state: DatasetState) -> None:
        task = asyncio.create_task(self._loop(state), name=f"schedule:{state.name}")
        self._tasks[state.name] = task

        def forget(done: asyncio.Task[None]) -> None:
            # the dataset may have a newer task by now (removed, then created again)
            if self._tasks.get(state.name) is done:
                del self._tasks[state.name]

        task.add_done_callback(forget)

    async def run(self) -> None:
        """One task per dataset; returns when ``stop`` is set and every reconcile has stopped
        (the one in flight writes its batch and is left resumable)."""
        self._running = True
        for state in self.states.values():
            self._start(state)
        await self.stop.wait()
        self._halt.set()
        for state in self.states.values():
            state.wake.set()
        await asyncio.gather(*self._tasks.values(), *self._once.values(), return_exceptions=True)
        self._pool.shutdown(wait=True)

    def _cutoff(self, state: DatasetState, first: bool) -> str | None:
        """Reconcile ``state`` unless a reconcile finished after the returned time; None:
        reconcile in any case (a trigger)."""
        if state.forced:
            return None
        # a tenth of the interval of slack: jittered timers wake up to 10 % early
        due = stamp(datetime.fromtimestamp(time.time() - state.interval * (1 - JITTER), UTC))
        if first and self.first_round_after is not None:
            return max(due, self.first_round_after)
        return due

    async def _loop(self, state: DatasetState) -> None:
        delay, first = 0.0, True  # every dataset is looked at at start
        while not self.stop.is_set() and not state.removed:
            state.next_run_at = time.time() + delay
            if delay > 0:
                await wait_at_most(state.wake, delay)
            state.wake.clear()
            if self.stop.is_set() or state.removed:
                return
            if not await self._catalog_ready():
                return
            async with self._limit:
                if self.stop.is_set():
                    return
                cutoff = self._cutoff(state, first)
                state.forced, first = False, False
                delay = await self._reconcile(state, cutoff)

    async def _catalog_ready(self) -> bool:
        """Wait until the daemon's catalog is available (False: stopping meanwhile)."""
        if self.catalog is None:
            return not self.stop.is_set()
        if not self.catalog.available and not self.stop.is_set():
            # the catalog thread logged why, once
            log.info("reconciles wait for the catalog to be available again")
        return await self.catalog.wait_available(self.stop)

    def _catalog_gone(self, exc: Exception) -> bool:
        """Whether ``exc`` says the catalog server went away (then the daemon's catalog
        thread is told, and the reconcile waits for its return instead of counting a
        failure). A sqlite catalog's errors are the dataset's failures as before, and so is
        every error of a scheduler without the daemon's catalog thread (nothing to wait on)."""
        if self.catalog is None:
            return False
        if not is_server(self.db_path):
            # the sqlite file deleted or replaced: the catalog thread said so; wait, do not count
            return self.catalog.lost
        # the catalog thread says it once per outage; this reconcile runs again after it
        known = exc if isinstance(exc, CatalogUnavailable) else catalog_error(exc, self.db_path)
        if not isinstance(known, CatalogUnavailable):
            return False
        self.catalog.mark_unreachable(str(known))
        return True

    def _check_file(self) -> None:
        """Raise ``CatalogUnavailable`` if the sqlite file is not the daemon's any more."""
        if self.catalog is not None and not self.catalog.same_file():
            raise CatalogUnavailable(self.catalog.problem or "the catalog file was replaced")

    def _busy_retry(self) -> float:
        return jittered(min(BUSY_RETRY, lease.ttl()))

    async def _reconcile(self, state: DatasetState, cutoff: str | None = None) -> float:
        """Run one reconcile (unless one finished after ``cutoff``); return the delay until
        the next look at the dataset."""
        state.running, state.next_run_at = True, None
        started = time.monotonic()
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._sync_blocking, state.name, cutoff
            )
        except SyncStopped:
            return 0.0
        except NotDue as exc:
            delay = max(
                0.0, parse(exc.ended_at).timestamp() + jittered(state.interval) - time.time()
            )
            log.debug("%s; next look in %.0fs", exc, delay)
            self.metrics.sync_runs.labels(state.name, "not_due").inc()
            return delay
        except DatasetBusy as exc:
            # another worker (or a one-shot sync) runs it: its business, not an error here
            delay = self._busy_retry()
            log.debug("%s; looking again in %.0fs", exc, delay)
            self.metrics.sync_runs.labels(state.name, "busy").inc()
            return delay
        except Exception as exc:
            if self._catalog_gone(exc):
                return 0.0  # the loop's gate waits for the catalog
            return self._failed(state, exc)
        finally:
            state.running = False
            self.on_change()
            self.metrics.sync_duration.labels(state.name).observe(time.monotonic() - started)
        return self._completed(state, result)

    def _failed(self, state: DatasetState, exc: Exception) -> float:
        """Count and log a failed reconcile; return the backoff until the next attempt."""
        state.failures += 1
        self.metrics.sync_runs.labels(state.name, "failed").inc()
        delay = min(state.interval, self.backoff_base * 2 ** (state.failures - 1))
        if isinstance(exc, SyncdError | StorageError | OSError):
            state.last_error = redact(str(exc))  # shown by the API's schedule
            log.error("reconcile of %r failed (%s); retrying in %.0fs", state.name, exc, delay)
        else:  # a bug must not stop the other datasets or the daemon
            state.last_error = redact(f"internal error: {type(exc).__name__}: {exc}")
            log.error("reconcile of %r failed with an internal error", state.name, exc_info=exc)
        return jittered(delay)

    def _completed(self, state: DatasetState, result: SyncResult) -> float:
        """Record a reconcile that ran; return the delay until the next look."""
        if result.status == "idle":
            # a split run whose every unfinished range another live worker holds
            delay = self._busy_retry()
            log.debug("every free range of %r is taken; looking again in %.0fs", state.name, delay)
            self.metrics.sync_runs.labels(state.name, "busy").inc()
            return delay
        state.failures, state.last_error = 0, None
        c = result.counts
        # the metrics count this worker's own work: a split run's other ranges were counted
        # by the workers (or the earlier calls) that reconciled them
        own = result.own or c
        if result.status == "range-completed":
            # one key range of a split run done, others remain: look for another at once
            log.info(
                "reconciled a key range of %r: %d listed, %d created, %d updated, %d unchanged"
                " in %.2fs",
                state.name, c["listed"], c["created"], c["updated"], c["unchanged"],
                result.seconds,
            )  # fmt: skip
            self.metrics.sync_runs.labels(state.name, "range_completed").inc()
            self.metrics.objects_listed.labels(state.name).inc(own["listed"])
            for action in ("created", "updated"):
                self.metrics.items_changed.labels(state.name, action, "reconcile").inc(own[action])
            return 0.0
        state.runs += 1
        state.last_result = result.as_dict()
        log.info(
            "reconciled %r: %d listed, %d created, %d updated, %d deleted, %d unchanged in %.2fs",
            state.name,
            c["listed"],
            c["created"],
            c["updated"],
            c["deleted"],
            c["unchanged"],
            result.seconds,
        )
        self.metrics.sync_runs.labels(state.name, "completed").inc()
        self.metrics.objects_listed.labels(state.name).inc(own["listed"])
        for action in ("created", "updated", "deleted"):
            self.metrics.items_changed.labels(state.name, action, "reconcile").inc(own[action])
        self.metrics.last_success.labels(state.name).set(time.time())
        return jittered(state.interval)

    def _sync_blocking(self, name: str, cutoff: str | None = None) -> SyncResult:
        """One reconcile, on a worker thread with its own connection and event loop: the
        scheduler's one call into the library (``NotDue`` if a reconcile finished after
        ``cutoff``, ``DatasetBusy`` if another process holds the dataset). A dataset the
        config does not declare is synced whole with what the catalog holds (:meth:`run_once`)."""
        spec = self.specs.get(name)
        runtime = self.runtime.get(name) if spec is None else None
        options = SyncOptions(stop=self._halt)
        settings = spec if spec is not None else runtime  # a declaration wins
        if settings is not None:
            options = SyncOptions(
                max_delete=settings.max_delete,
                stop=self._halt,
                list_concurrency=settings.list_concurrency,
                metadata=settings.metadata,
                tags=settings.tags,
            )
        owner = workers.lease_owner(self.worker_id) if self.worker_id else None
        self._check_file()
        # never create: the daemon's catalog exists; a file gone meanwhile stays gone
        catalog = Catalog.open(self.db_path, create=False)
        try:
            self._check_file()  # replaced between the check and the open
            if spec is None and runtime is None:
                return asyncio.run(api.sync(catalog, name, options=options, owner=owner))
            # one unit of work: the whole run of a small dataset, one key range of a split one
            return asyncio.run(
                api.sync_some(
                    catalog,
                    name,
                    spec=spec,
                    options=options,
                    worker=owner,
                    unless_reconciled_after=cutoff,
                )
            )
        finally:
            catalog.close()
