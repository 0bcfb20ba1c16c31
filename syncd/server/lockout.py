"""Refusing an address that keeps sending wrong bearer tokens.

The rule: ``limit`` wrong or missing tokens from one client address within ``window`` seconds
(each failure restarts the window) and every further request from that address, but
``/healthz``, is answered ``429`` with ``Retry-After`` until the window has passed, *without
looking at its token*; a right token can only be tried again after that. So a guesser gets at
most ``limit`` tries per ``window`` per address. A success does not reset the count: a client
that mixes right and wrong tokens is still counted.

The table is a :class:`cachetools.TTLCache`: entries expire ``window`` seconds after their
last failure, and at most ``max_addresses`` are kept (when full, the least recently failed
is dropped), so a flood from many addresses costs bounded memory; its price is that such a
flood can push an address out of the table early. Everything runs on the server's event loop,
so no lock is needed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from cachetools import TTLCache

#: wrong tokens allowed from one address per window
LIMIT = 10
#: seconds; a failure keeps the address counted this long
WINDOW = 60.0
#: addresses tracked at once
MAX_ADDRESSES = 4096


class AuthLockout:
    """Failed-authentication counts per client address (see the module docstring)."""

    def __init__(
        self,
        *,
        limit: int = LIMIT,
        window: float = WINDOW,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0 or max_addresses < 1:
            raise ValueError("limit, window and max_addresses must be positive")
        self.limit, self.window = limit, window
        # (failures, when the last one came) per address
        self._failures: TTLCache[str, tuple[int, float]] = TTLCache(
            maxsize=max_addresses, ttl=window, timer=clock
        )
        self._clock = clock

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until ``address`` may try again, or None if it is not locked out."""
        entry = self._failures.get(address)
        if entry is None or entry[0] < self.limit:
            return None
        left = self.window - (self._clock() - entry[1])
        return max(1, math.ceil(left))

    def failed(self, address: str) -> None:
        """Count one wrong or missing token from ``address`` (and restart its window)."""
        count = self._failures.get(address, (0, 0.0))[0]
        # re-inserting restarts the entry's time to live
        self._failures[address] = (count + 1, self._clock())

    def __len__(self) -> int:
        self._failures.expire()
        return len(self._failures)
