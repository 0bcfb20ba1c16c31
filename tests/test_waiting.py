"""The daemon's deadline wait never swallows a cancellation (Python 3.11's ``wait_for`` did)."""

from __future__ import annotations

import asyncio

import pytest

from syncd.daemon.waiting import wait_at_most


async def test_a_cancellation_that_arrives_with_the_event_is_not_swallowed() -> None:
    event = asyncio.Event()
    task = asyncio.create_task(wait_at_most(event, 3600))
    await asyncio.sleep(0)  # the task is now waiting on the event
    event.set()
    task.cancel()  # in the same step: the inner wait completes as the task is cancelled
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_it_says_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_at_most(event, 0.001) is False
    event.set()
    assert await wait_at_most(event, 3600) is True
