"""Waiting on a condition, the suite's one way to wait: no test sleeps for a fixed time, so a
loaded 2-core machine gives the same result as an idle one, only later."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    condition: Callable[[], Any],
    what: str,
    timeout: float = 120,
    log: list[str] | None = None,
    *,
    interval: float = 0.05,
    tolerate: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll ``condition`` every ``interval`` seconds until it returns something truthy, and
    return that; an exception of ``tolerate`` counts as "not yet" (e.g. a catalog still being
    created). After ``timeout`` seconds fail with ``what``, the last value and the tail of
    ``log`` (a daemon's stderr lines) when given."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = condition()
        except tolerate:
            last = None
        if last:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    tail = "" if log is None else "\ndaemon log:\n" + "".join(log[-40:])
    raise AssertionError(f"timed out waiting for {what} (last: {last!r}){tail}")
