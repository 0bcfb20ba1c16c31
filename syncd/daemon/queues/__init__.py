"""Queue consumers: the daemon's fast path from bucket notifications.

One consumer per ``[queues.NAME]``: SQS (:mod:`.sqs`), Azure Storage Queue
(:mod:`.azure_queue`), Google Pub/Sub pull (:mod:`.pubsub`). The contract every one keeps:

* **at least once**: a message is acknowledged (deleted, acked) only after the sink has
  committed its events; if the sink raises, nothing of that batch is acknowledged and the
  queue delivers it again (applying events twice is harmless: see :mod:`syncd.events.apply`);
* **poison stays out of the way**: a message that is not a well-formed event payload is never
  acknowledged as applied; it is left to the queue's own dead-letter mechanism (SQS redrive
  policy, Pub/Sub dead-letter topic) or, for Azure, moved to ``<queue>-poison`` after five
  deliveries as Azure Functions do; it is counted and logged once per delivery;
* **never stops the daemon**: a provider error is logged, counted and retried with backoff;
* **stops promptly**: ``run`` returns at once when ``stop`` is set: a long poll in flight is
  cancelled (abandoned on its daemon thread, see :func:`in_thread`, so the process does not
  wait out the poll to exit); messages received but not committed come back after their
  visibility timeout;
* **receives nothing the catalog cannot take**: ``run(sink, stop, gate=...)`` awaits ``gate``
  before each receive (the daemon's waits while the catalog is unreachable), so no message
  sits out a visibility timeout meanwhile, and the catch-up starts as soon as it is back.

SDK calls are blocking and run in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from providers.config import ConfigError, Integration
from syncd.daemon.waiting import wait_at_most
from syncd.errors import CatalogUnavailable
from syncd.events.parse import ObjectEvent

log = logging.getLogger("syncd.daemon.queues")
T = TypeVar("T")

#: backoff after a provider error: doubles from 1 s to this
MAX_BACKOFF = 30.0


#: awaited before each receive: True to go on, False to stop (see :func:`poll`)
Gate = Callable[[], Awaitable[bool]]


class EventSink(Protocol):
    """Commits events to the catalog; raises if it could not."""

    def __call__(self, events: list[ObjectEvent], *, source: str) -> Awaitable[None]: ...


class Consumer(Protocol):
    name: str
    stats: ConsumerStats

    async def run(
        self, sink: EventSink, stop: asyncio.Event, *, gate: Gate | None = None
    ) -> None: ...


@dataclass
class ConsumerStats:
    """What a consumer has done, for logs and metrics."""

    received: int = 0  # messages
    delivered: int = 0  # events handed to the sink and committed
    acknowledged: int = 0  # messages deleted / acked after their commit
    malformed: int = 0  # deliveries of messages that are not event payloads
    poisoned: int = 0  # messages moved aside (Azure <queue>-poison)
    errors: int = 0  # provider or sink failures
    last_message_at: float | None = None
    #: age in seconds of the oldest message of the last batch, where the provider says
    lag: float | None = None


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` unless ``stop`` is set first (backoff that does not delay shutdown)."""
    await wait_at_most(stop, seconds)


def worker_pool(name: str, threads: int) -> ThreadPoolExecutor:
    """A consumer's own threads for its blocking SDK calls: a long poll holds its thread for
    seconds, and must not starve the event loop's shared default pool (HEADs, the watch...)."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"syncd-queue-{name}")


async def in_pool(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


async def in_thread(name: str, fn: Callable[[], T]) -> T:
    """``fn()`` on a daemon thread of its own: for a long poll, which a shutdown cancels.
    Cancelling the await abandons the call (its result, if it comes, is dropped; received
    messages come back after their visibility timeout), and the interpreter does not wait for
    a daemon thread at exit, as it does for a ``ThreadPoolExecutor``'s."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def work() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=work, name=f"syncd-queue-{name}", daemon=True).start()
    return await future


def one_line(exc: BaseException) -> str:
    """What went wrong, on one short line: an SDK's own message may span lines and quote a
    whole XML answer (botocore) or the request's headers (azure-core)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and isinstance(response.get("Error"), dict):  # botocore
        err = response["Error"]
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        text = f"HTTP {status} {err.get('Code') or ''}".strip()
        if err.get("Message") and not str(err["Message"]).lstrip().startswith("<"):
            text += f" ({err['Message']})"
    elif getattr(exc, "status_code", None) is not None:  # azure-core HttpResponseError
        code = getattr(exc, "error_code", None)
        text = f"HTTP {exc.status_code} {getattr(code, 'value', code) or ''}".strip()  # type: ignore[attr-defined]
    else:
        text = str(exc).split("\n", 1)[0]
    text = " ".join(text.split())
    if len(text) > 200:
        text = text[:199] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def backoff(failures: int) -> float:
    return min(MAX_BACKOFF, 2.0 ** max(0, failures - 1))


async def poll(
    name: str,
    stats: ConsumerStats,
    stop: asyncio.Event,
    receive: Callable[[], Awaitable[list[Any]]],
    handle: Callable[[list[Any]], Awaitable[None]],
    sent_at: Callable[[Any], float | None],
    *,
    idle: float = 0.0,
    gate: Gate | None = None,
) -> None:
    """The receive loop every consumer runs until ``stop``: receive a batch, record its size
    and lag, ``handle`` it (which commits and acknowledges), log one line; after an empty
    receive wait ``idle`` seconds (queues without long polling); after an error log it, count
    it and back off, never raise. A batch received after ``stop`` is left alone: its messages
    come back after their visibility timeout. ``gate`` is awaited before each receive (False:
    return), and a receive in flight when ``stop`` is set is cancelled."""
    failures = 0
    while not stop.is_set():
        if gate is not None and not await gate():
            return
        try:
            messages = await _unless_stopped(receive(), stop)
            if messages is None:
                log.debug("%s: stopping: the receive in flight was cancelled", name)
                return
            if stop.is_set():
                return
            if not messages:
                if idle:
                    await pause(stop, idle)
                failures = 0
                continue
            started = time.monotonic()
            stats.received += len(messages)
            note_lag(stats, [t for t in map(sent_at, messages) if t is not None])
            await handle(messages)
            log.info("%s: %d message(s) in %.3fs", name, len(messages), time.monotonic() - started)
            failures = 0
        except CatalogUnavailable:
            # the gate waits for the catalog's return; no backoff that would delay the catch-up
            # (and the catalog's owner logged why, once)
            stats.errors += 1
            log.warning("%s: batch not committed (catalog unavailable), left on the queue", name)
        except Exception as exc:  # provider or sink: log, back off, carry on
            failures += 1
            stats.errors += 1
            log.error("%s: %s (retrying in %.0fs)", name, one_line(exc), backoff(failures))
            await pause(stop, backoff(failures))


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``await work``, or None as soon as ``stop`` is set (``work`` is then cancelled)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


def note_lag(stats: ConsumerStats, sent: list[float]) -> None:
    """Record the batch's oldest message age (``sent``: unix times the provider reported)."""
    stats.last_message_at = time.time()
    if sent:
        stats.lag = max(0.0, time.time() - min(sent))


def open_consumer(
    name: str,
    type: str,
    *,
    url: str | None = None,
    queue: str | None = None,
    account: str | None = None,
    subscription: str | None = None,
    integration: Integration | None = None,
    wait_seconds: int = 10,
    visibility_timeout: int | None = None,
) -> Consumer:
    """The consumer for one ``[queues.NAME]`` block. ``ConfigError`` for settings that cannot
    work (the config schema already checks the shape; this checks what only opening can)."""
    if type == "sqs":
        from syncd.daemon.queues.sqs import SqsConsumer

        if not url:
            raise ConfigError(f"queue {name!r}: an sqs queue needs its url")
        return SqsConsumer(name, url, integration=integration, wait_seconds=wait_seconds)
    if type == "azure-queue":
        from syncd.daemon.queues.azure_queue import AzureQueueConsumer

        if not queue:
            raise ConfigError(f"queue {name!r}: an azure-queue needs its queue name")
        return AzureQueueConsumer(
            name,
            queue,
            account=account,
            integration=integration,
            wait_seconds=wait_seconds,
            visibility_timeout=visibility_timeout,
        )
    if type == "pubsub":
        from syncd.daemon.queues.pubsub import PubSubConsumer

        if not subscription:
            raise ConfigError(f"queue {name!r}: a pubsub queue needs its subscription")
        return PubSubConsumer(name, subscription, integration=integration)
    raise ConfigError(f"queue {name!r}: unknown type {type!r} (sqs, azure-queue or pubsub)")
