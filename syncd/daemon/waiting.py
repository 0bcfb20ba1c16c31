"""Waiting on an event with a deadline, in a way that never swallows a cancellation."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_at_most(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; True if it was set.

    ``asyncio.timeout`` rather than ``asyncio.wait_for``: on Python 3.11, ``wait_for`` can
    swallow the task's cancellation when the event is set at the moment the task is
    cancelled (CPython gh-86296, fixed in 3.12), and a daemon task that misses its
    cancellation keeps a shutdown waiting."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
