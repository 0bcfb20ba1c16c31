"""Delivering the change log to one consumer, in order, at least once: the transport-free core.

A *consumer* (a webhook, :mod:`.webhooks`; a cloud queue or topic, :mod:`.sinks`) has one row
in ``deliveries``: ``cursor``, the last change it has acknowledged, and ``batch_end``, the end
of the batch in flight. The loop
(:class:`Deliverer`) hands batches to a transport's ``send`` and keeps these contracts:

* **Cursor order.** Batches are cut from the log in cursor order; the next batch is cut only
  after the one before it was acknowledged.
* **At least once, the same batch again.** Before a batch is sent, its end is stored
  (``batch_end``); the cursor moves to it only after the consumer acknowledged it. After a
  crash (or a stop mid-send) the batch is cut again from ``(cursor, batch_end]`` and has the
  same changes and the same :attr:`Batch.id`, so a receiver can drop the duplicate.
* **Nothing skipped.** A batch covers the whole range it names: changes the consumer's filters
  leave out are passed over with it, never a change it wants. Every update is conditional on the
  row still being as the loop read it, so a ``replay``/``resume`` from the CLI while a batch is in
  flight wins, and the late acknowledgement changes nothing.
* **Retries.** A transport failure the consumer may recover from (``Outcome.retry``) is retried
  with capped exponential backoff, forever; after ``fail_after`` seconds of failing the row is
  marked failing (``failing_since``, ``last_error``), and a success clears it. A refusal
  (``Outcome.retry`` false: a 4xx) pauses the consumer (``paused``) until :func:`resume` or
  :func:`replay`.
* **One deliverer.** Several workers may share a catalog: each consumer is delivered under a
  lease of its own (``KIND:NAME``, :mod:`syncd.store.lease`), so one worker at a time sends it.

Catalog work runs on a :class:`~syncd.daemon.catalog_thread.CatalogThread`, never on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from providers import faults
from providers.redact import redact
from syncd.errors import UsageError
from syncd.store import changes, lease
from syncd.store.changes import Change, ChangeSignal, CursorGone
from syncd.store.db import transaction
from syncd.store.sql import Database
from syncd.store.stamps import now

log = logging.getLogger("syncd.feed")

#: seconds between two looks at the log for changes other processes committed
POLL_SECONDS = 1.0
#: the first retry's delay and the longest delay between two tries (seconds)
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0
#: the longest ``Retry-After`` honoured (seconds); a longer one waits this long
RETRY_AFTER_MAX = 600.0

_COLUMNS = "name, kind, cursor, batch_end, attempts, failing_since, last_error, paused, updated_at"


@dataclass(frozen=True)
class State:
    """One consumer's row of ``deliveries``."""

    name: str
    kind: str
    cursor: int
    batch_end: int | None
    attempts: int
    failing_since: str | None
    last_error: str | None
    paused: bool
    updated_at: str

    @property
    def status(self) -> str:
        """``paused``, ``failing`` or ``ok``."""
        return "paused" if self.paused else "failing" if self.failing_since else "ok"


@dataclass(frozen=True)
class Batch:
    """The changes of ``(after, end]`` a consumer wants, sent as one message."""

    consumer: str
    after: int
    end: int
    changes: list[Change]

    @property
    def id(self) -> str:
        """The message id: the same for the same consumer and range, so a batch sent again
        (after a crash, a timeout) carries the id of its first sending."""
        digest = hashlib.sha256(f"{self.consumer}\0{self.after}\0{self.end}".encode()).hexdigest()
        return f"msg_{digest[:32]}"


@dataclass(frozen=True)
class Outcome:
    """What a transport made of one sending. ``ok``: acknowledged. Else ``retry`` says whether
    to try again (a 5xx, a timeout) or pause (a refusal); ``retry_after``: the consumer's own
    wish (seconds), if it said one; ``error``: one line, no secret."""

    ok: bool
    retry: bool = True
    error: str = ""
    retry_after: float | None = None


def lease_name(kind: str, name: str) -> str:
    """The lease one worker holds while it delivers to the consumer."""
    return f"{kind}:{name}"


@dataclass(frozen=True)
class Filters:
    """Which changes a consumer wants: of these datasets (names) and kinds; empty: all."""

    datasets: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()


# -- the catalog side: each function is one transaction of its own ----------------------------


def _row(db: Database, name: str) -> State | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM deliveries WHERE name = ?", [name]).fetchone()
    if row is None:
        return None
    return State(row[0], row[1], int(row[2]), None if row[3] is None else int(row[3]),
                 int(row[4]), row[5], row[6], bool(row[7]), row[8])  # fmt: skip


def get(db: Database, name: str) -> State | None:
    """The consumer's row, None if it never delivered."""
    return _row(db, name)


def ensure(db: Database, name: str, kind: str) -> State:
    """The consumer's row, created if missing: a new consumer starts at the oldest change
    the log still holds (all of it)."""
    with transaction(db):
        found = _row(db, name)
        if found is None:
            db.execute(
                "INSERT INTO deliveries (name, kind, cursor, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO NOTHING",
                [name, kind, changes.pruned(db), now()],
            )
            found = _row(db, name)
    assert found is not None
    return found


def next_batch(db: Database, name: str, filters: Filters, limit: int) -> tuple[Batch | None, int]:
    """The batch to send now and the consumer's lag (changes after its cursor).

    The batch in flight if there is one (the same changes again, and the same id; cut
    smaller, with a new id, if it holds more than ``limit`` wanted changes); else the next up
    to ``limit`` wanted changes, whose end is stored before this returns. None when the consumer
    is paused, or has nothing to receive (then a cursor behind changes it does not want is
    moved past them). A cursor the log no longer holds pauses the consumer (a manual prune
    went past it): nothing is skipped silently."""
    with transaction(db):
        state = _row(db, name)
        head = changes.head(db)
        if state is None or state.paused:
            return None, head - (state.cursor if state else 0)
        try:
            # the batch in flight is cut again from its own range: the same changes, unless
            # ``limit`` was lowered since (after a refusal for size): then it ends at the
            # last change that fits, never past changes it does not carry
            until = head if state.batch_end is None else state.batch_end
            found, end = _wanted(db, state.cursor, until, filters, limit)
        except CursorGone as exc:
            db.execute(
                "UPDATE deliveries SET paused = 1, last_error = ?, updated_at = ? WHERE name = ?",
                [
                    f"{exc}; then syncd {state.kind}s replay {name} --from {exc.head}",
                    now(),
                    name,
                ],
            )
            log.error("%s %r paused: %s", state.kind, name, exc)
            return None, head - state.cursor
        if not found:
            if end > state.cursor:
                db.execute(
                    "UPDATE deliveries SET cursor = ?, batch_end = NULL, updated_at = ?"
                    " WHERE name = ?",
                    [end, now(), name],
                )
            return None, head - end
        if state.batch_end != end:  # a new batch, or one in flight cut smaller
            db.execute(
                "UPDATE deliveries SET batch_end = ?, updated_at = ? WHERE name = ?",
                [end, now(), name],
            )
        return Batch(name, state.cursor, end, found), head - state.cursor


#: changes read per page while cutting a batch, and the most pages one batch scans (a filter
#: that passes few changes over: the batch then ends where the scan did, and the cursor moves)
SCAN_PAGE = 1000
SCAN_PAGES = 20


def _wanted(
    db: Database, after: int, until: int, filters: Filters, limit: int
) -> tuple[list[Change], int]:
    """Up to ``limit`` changes in ``(after, until]`` that ``filters`` pass, and the end of
    the range they stand for: the last one's cursor for a full batch, ``until`` when the
    scan reached it, else the last cursor scanned. The same arguments give the same answer
    (the log below ``until`` never changes, except by pruning, which stops at ``after``)."""
    found: list[Change] = []
    scanned = after
    for _ in range(SCAN_PAGES):
        page = changes.read(db, after=scanned, limit=SCAN_PAGE, kinds=filters.kinds)
        for change in page:
            if change.cursor > until:
                return found, until
            scanned = change.cursor
            if not filters.datasets or change.dataset in filters.datasets:
                found.append(change)
                if len(found) == limit:
                    return found, change.cursor
        if len(page) < SCAN_PAGE:
            return found, until
    return found, scanned


def _current(batch: Batch) -> tuple[str, list[Any]]:
    """The condition that the row still has ``batch`` in flight."""
    return " WHERE name = ? AND cursor = ? AND batch_end = ?", [batch.consumer, batch.after,
                                                                batch.end]  # fmt: skip


def acknowledge(db: Database, batch: Batch) -> bool:
    """The consumer has ``batch``: move the cursor to its end, clear the failure. False if the
    row changed meanwhile (a replay): nothing is written."""
    # the point the crash tests stop at: sent and acknowledged, the cursor not yet stored
    faults.pause_point("webhook-sent")
    where, args = _current(batch)
    with transaction(db):
        cur = db.execute(
            "UPDATE deliveries SET cursor = batch_end, batch_end = NULL, attempts = 0,"
            " failing_since = NULL, last_error = NULL, updated_at = ?" + where,
            [now(), *args],
        )
    return cur.rowcount == 1


def record_failure(db: Database, batch: Batch, error: str, failing_since: str | None) -> bool:
    """Count a failed sending of ``batch``; ``failing_since`` marks the consumer failing
    (kept if it already was). False if the batch is no longer in flight (a replay)."""
    where, args = _current(batch)
    with transaction(db):
        cur = db.execute(
            "UPDATE deliveries SET attempts = attempts + 1, last_error = ?,"
            " failing_since = COALESCE(failing_since, ?), updated_at = ?" + where,
            [redact(error), failing_since, now(), *args],
        )
    return cur.rowcount == 1


def pause(db: Database, batch: Batch, error: str) -> bool:
    """The consumer refused ``batch``: stop until resumed. False if it is no longer in flight."""
    where, args = _current(batch)
    with transaction(db):
        cur = db.execute(
            "UPDATE deliveries SET paused = 1, attempts = attempts + 1, last_error = ?,"
            " updated_at = ?" + where,
            [redact(error), now(), *args],
        )
    return cur.rowcount == 1


def resume(db: Database, name: str) -> State:
    """Unpause the consumer: the refused batch is sent again (same id). ``UsageError`` if it
    never delivered."""
    with transaction(db):
        _known(db, name)
        db.execute(
            "UPDATE deliveries SET paused = 0, attempts = 0, failing_since = NULL,"
            " last_error = NULL, updated_at = ? WHERE name = ?",
            [now(), name],
        )
        state = _row(db, name)
    assert state is not None
    return state


def replay(db: Database, name: str, after: int, kind: str) -> State:
    """Deliver again everything after cursor ``after`` (or skip ahead to it), and unpause:
    the batch in flight is dropped. ``UsageError`` for a cursor outside what the log holds."""
    with transaction(db):
        oldest, head = changes.pruned(db), changes.head(db)
        if not oldest <= after <= head:
            raise UsageError(
                f"cursor {after} is not in the change log: it holds the changes after "
                f"{oldest} up to {head}; pass --from {oldest} to {head}"
            )
        if _row(db, name) is None:
            db.execute(
                "INSERT INTO deliveries (name, kind, cursor, updated_at) VALUES (?, ?, ?, ?)",
                [name, kind, after, now()],
            )
        db.execute(
            "UPDATE deliveries SET cursor = ?, batch_end = NULL, paused = 0, attempts = 0,"
            " failing_since = NULL, last_error = NULL, updated_at = ? WHERE name = ?",
            [after, now(), name],
        )
        state = _row(db, name)
    assert state is not None
    return state


def _known(db: Database, name: str) -> State:
    state = _row(db, name)
    if state is None:
        known = [r[0] for r in db.execute("SELECT name FROM deliveries ORDER BY name").fetchall()]
        raise UsageError(
            f"no delivery named {name!r} in this catalog (known: {', '.join(known) or 'none'})"
        )
    return state


def keep_after(db: Database, names: Sequence[str]) -> int | None:
    """The smallest cursor the consumers ``names`` have delivered (one that never delivered
    counts as starting at the log's oldest change): retention must not prune past it. None
    for no consumers."""
    if not names:
        return None
    cursors = []
    for name in names:
        state = _row(db, name)
        cursors.append(state.cursor if state else changes.pruned(db))
    return min(cursors)


def listing(db: Database, configured: Mapping[str, str], kind: str) -> list[dict[str, Any]]:
    """Every consumer of ``kind``: the configured ones (``{name: url shown}``) and those the
    catalog knows from an earlier config (``url`` None): delivered cursor, lag, state."""
    head = changes.head(db)
    rows = {
        r[0]: r
        for r in db.execute(f"SELECT {_COLUMNS} FROM deliveries WHERE kind = ?", [kind]).fetchall()
    }
    out = []
    for name in sorted(set(rows) | set(configured)):
        state = _row(db, name) if name in rows else None
        cursor = state.cursor if state else changes.pruned(db)
        out.append(
            {
                "name": name,
                "url": configured.get(name),
                "configured": name in configured,
                "cursor": cursor,
                "lag": head - cursor,
                "in_flight": state.batch_end if state else None,
                "state": state.status if state else "ok",
                "attempts": state.attempts if state else 0,
                "failing_since": state.failing_since if state else None,
                "last_error": redact(state.last_error) if state and state.last_error else None,
                "updated_at": state.updated_at if state else None,
            }
        )
    return out


# -- the loop ----------------------------------------------------------------------------------


Send = Callable[[Batch], Awaitable[Outcome]]


def backoff(failures: int, retry_after: float | None = None) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: doubling from
    :data:`BACKOFF_BASE` up to :data:`BACKOFF_CAP`, with jitter (workers that failed together
    do not retry together); a consumer's ``Retry-After`` up to :data:`RETRY_AFTER_MAX`."""
    if retry_after is not None:
        return max(0.0, min(retry_after, RETRY_AFTER_MAX))
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(failures - 1, 30))
    return delay * random.uniform(0.5, 1.0)


class Deliverer:
    """Delivers the log to one consumer through ``send`` until cancelled.

    ``on_lag(n)``, ``on_failure()`` and ``on_delivered(n)`` report progress (the metrics).
    Cancelling it mid-send leaves the batch in flight, to be sent again by the next run."""

    def __init__(
        self,
        name: str,
        kind: str,
        catalog: Any,
        send: Send,
        *,
        filters: Filters,
        batch: int,
        fail_after: float,
        signal: ChangeSignal,
        owner: str,
        on_lag: Callable[[int], None] = lambda n: None,
        on_failure: Callable[[], None] = lambda: None,
        on_delivered: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.name, self.kind, self.catalog, self.send = name, kind, catalog, send
        self.filters, self.batch, self.fail_after = filters, batch, fail_after
        self.signal, self.owner = signal, owner
        self.on_lag, self.on_failure, self.on_delivered = on_lag, on_failure, on_delivered
        self._lease = lease_name(kind, name)
        self._renewed = -float("inf")
        self._waiting_for_lease = False

    def _db(self, fn: Callable[[Database], Any]) -> Awaitable[Any]:
        return self.catalog.call(lambda c: fn(c.db))

    async def _hold_lease(self) -> bool:
        """Take or renew the consumer's lease (every quarter of its ttl); False while another
        live worker delivers it."""
        if time.monotonic() - self._renewed < lease.ttl() / 4:
            return True

        def take(db: Database) -> lease.Holder | None:
            with transaction(db):
                return lease.acquire(db, self._lease, self.owner)

        holder = await self._db(take)
        if holder is not None:
            if not self._waiting_for_lease:
                log.info("%s %r is delivered by %s", self.kind, self.name, holder.describe())
            self._waiting_for_lease = True
            return False
        self._waiting_for_lease = False
        self._renewed = time.monotonic()
        return True

    async def release(self) -> None:
        """Give the lease up (at a clean stop), so another worker takes over at once."""

        def give(db: Database) -> None:
            with transaction(db):
                lease.release(db, self._lease, self.owner)

        await self._db(give)

    async def run(self) -> None:
        await self._db(lambda db: ensure(db, self.name, self.kind))
        while True:
            try:
                if not await self._hold_lease():
                    await asyncio.sleep(POLL_SECONDS)
                    continue
                batch, lag = await self._db(
                    lambda db: next_batch(db, self.name, self.filters, self.batch)
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a catalog locked for long: try again, never die
                log.warning("%s %r: catalog: %s", self.kind, self.name, redact(str(exc)))
                await asyncio.sleep(POLL_SECONDS)
                continue
            self.on_lag(lag)
            if batch is None:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that lands as the signal fires, and the stop would wait for ever
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_SECONDS):
                        await self.signal.wait()
                continue
            await self._deliver(batch)

    async def _deliver(self, batch: Batch) -> None:
        """Send ``batch`` until it is acknowledged, refused, or no longer in flight."""
        failures = 0
        first_failure: float | None = None
        first_failure_at: str | None = None  # the same moment, as catalog time
        failing = False
        while True:
            outcome = await self.send(batch)
            if outcome.ok:
                if await self._db(lambda db: acknowledge(db, batch)):
                    self.on_delivered(len(batch.changes))
                if failing:
                    log.info("%s %r delivers again", self.kind, self.name)
                return
            self.on_failure()
            failures += 1
            error = redact(outcome.error)
            if not outcome.retry:
                if await self._db(lambda db, e=error: pause(db, batch, e)):
                    # an error that says how to resume (a batch over a size limit) is not told
                    # twice
                    resume = f"`syncd {self.kind}s resume {self.name}`"
                    hint = "" if resume in error else f"; fix it, then {resume}"
                    log.error("%s %r paused: %s%s", self.kind, self.name, error, hint)
                return
            if first_failure is None:
                first_failure, first_failure_at = time.monotonic(), now()
            if not failing and time.monotonic() - first_failure >= self.fail_after:
                failing = True
                log.warning(
                    "%s %r failing for %ds: %s; still trying",
                    self.kind, self.name, int(time.monotonic() - first_failure), error,
                )  # fmt: skip
            else:
                log.debug("%s %r: %s; trying again", self.kind, self.name, error)
            since = first_failure_at if failing else None
            if not await self._db(lambda db, e=error, s=since: record_failure(db, batch, e, s)):
                return  # replayed or resumed meanwhile: cut the batch afresh
            await asyncio.sleep(backoff(failures, outcome.retry_after))
            if not await self._hold_lease():
                return


class Deliveries:
    """The running deliveries of one kind of consumer (every webhook, or every sink): a
    :class:`Deliverer` task each, reported to one set of metric families, stopped together.
    What differs between the kinds is only how a batch is sent (``send``)."""

    def __init__(
        self, kind: str, catalog: Any, signal: ChangeSignal, owner: str, metrics: Any
    ) -> None:
        """``metrics``: three families labelled by consumer name, ``(lag, failures,
        delivered)`` (a gauge and two counters)."""
        self.kind, self.catalog, self.signal, self.owner = kind, catalog, signal, owner
        self.lag, self.failures, self.delivered = metrics
        self._deliverers: list[Deliverer] = []
        self._tasks: list[asyncio.Task[None]] = []

    def __len__(self) -> int:
        return len(self._tasks)

    def start(
        self, name: str, send: Send, *, filters: Filters, batch: int, fail_after: float
    ) -> None:
        """Start delivering to consumer ``name`` through ``send``."""
        deliverer = Deliverer(
            name,
            self.kind,
            self.catalog,
            send,
            filters=filters,
            batch=batch,
            fail_after=fail_after,
            signal=self.signal,
            owner=self.owner,
            on_lag=self.lag.labels(name).set,
            on_failure=self.failures.labels(name).inc,
            on_delivered=self.delivered.labels(name).inc,
        )
        self.failures.labels(name)  # every consumer shows, at 0, from the start
        self.delivered.labels(name)
        self._deliverers.append(deliverer)
        task = asyncio.create_task(deliverer.run(), name=f"{self.kind}:{name}")
        task.add_done_callback(_report_end)
        self._tasks.append(task)

    async def stop(self) -> None:
        """Stop every delivery; a batch in flight stays stored, to be sent again by the next
        run (the same id). The leases are released so another worker takes over at once."""
        pending = set(self._tasks)
        while pending:  # cancelled again until done: a cancellation can be swallowed once
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1)
        for deliverer in self._deliverers:
            try:  # bounded: a catalog locked for long must not hold the shutdown up
                await asyncio.wait_for(deliverer.release(), 10)
            except Exception:  # the lease expires by itself
                log.debug("could not release the lease of %s %r", self.kind, deliverer.name)


def _report_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        error = task.exception()
        log.error("%s stopped with an error: %s", task.get_name(), error, exc_info=error)
