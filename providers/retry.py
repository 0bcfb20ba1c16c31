"""Retries, in one place, for every driver.

Drivers switch their SDK's own retry loops off and route each blocking SDK call through
:func:`call`, which runs it in a worker thread, maps any SDK exception with the driver's
``translate`` function, and retries only :class:`~providers.errors.TransientError` (throttling,
connection resets, timeouts, 5xx) with exponential backoff and full jitter. Authentication,
permission and not-found errors are never retried.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from providers.errors import StorageError, TransientError

log = logging.getLogger("syncd.providers")
T = TypeVar("T")
Translate = Callable[[BaseException], StorageError]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: ``attempts`` in all, waits drawn from [0, initial * 2**n] capped.

    The default budget is 8 attempts with waits of at most 0.2, 0.4, ... 6.4, 10 s: a call
    gives up after at most about 23 s of waiting (half that on average). Against a service
    failing one request in five, a call then fails once in 0.2**8, about 400,000 calls (5
    attempts failed one in 3,000: one file of a 3,000-file pull). It is finite on purpose: a
    service that stays down makes the command stop with one line, not hang.
    """

    attempts: int = 8
    initial: float = 0.2
    maximum: float = 10.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """``SYNCD_RETRY_ATTEMPTS`` overrides the attempt count (1 disables retries)."""
        raw = os.environ.get("SYNCD_RETRY_ATTEMPTS")
        if not raw:
            return cls()
        try:
            attempts = int(raw)
        except ValueError:
            raise ValueError(f"SYNCD_RETRY_ATTEMPTS must be a whole number, got {raw!r}") from None
        return cls(attempts=max(1, attempts))


NO_RETRY = RetryPolicy(attempts=1)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    cause = (
        f"{exc.provider}: bucket {exc.bucket!r}: {exc.cause}"
        if isinstance(exc, StorageError)
        else exc
    )
    log.warning("retrying in %.2fs after attempt %d: %s", wait, state.attempt_number, cause)


async def call(fn: Callable[[], T], translate: Translate, policy: RetryPolicy) -> T:
    """Run the blocking ``fn`` in a thread; map its errors; retry transient ones."""
    # the first attempt outside tenacity: its machinery (an AsyncRetrying, its state, the
    # coroutine checks of every action) costs the event loop more per call than the thread
    # hop itself, a tenth of a 16 KiB GET's CPU (bench/README.md, issue 27), and most calls
    # succeed at once. A failure is replayed as tenacity's first attempt below, so the
    # waits, the log lines and the attempts counted are the same as without the shortcut.
    try:
        return await asyncio.to_thread(fn)
    except StorageError as exc:
        first: StorageError = exc
    except Exception as exc:
        first = translate(exc)
        first.__cause__ = exc  # as ``raise translate(exc) from exc``
    if not isinstance(first, TransientError) or policy.attempts <= 1:
        raise first
    replay: list[StorageError] = [first]
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(policy.attempts),
        wait=wait_random_exponential(multiplier=policy.initial, max=policy.maximum),
        before_sleep=_log_retry,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            if replay:
                raise replay.pop()  # the first attempt, made above
            try:
                return await asyncio.to_thread(fn)
            except StorageError:
                raise
            except Exception as exc:
                raise translate(exc) from exc
    raise AssertionError("unreachable: tenacity either returns or re-raises")
