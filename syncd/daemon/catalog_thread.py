"""The daemon's catalog connection, owned by one thread so the event loop never blocks on it.

sqlite calls are blocking (a write may wait up to the busy timeout for another writer). Every
catalog call the daemon's event loop makes (applying events, the API's reads, leases) goes
through :meth:`CatalogThread.call`, which runs it on the one thread that owns the connection,
in submission order. Syncs run in threads of their own with their own connections (sqlite's
WAL lets them read while this thread writes; writers take turns on the write lock).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from syncd.store.catalog import Catalog

T = TypeVar("T")


class CatalogThread:
    """One catalog connection on one thread; ``await call(fn)`` runs ``fn(catalog)`` there."""

    def __init__(self, path: str, *, create: bool = True) -> None:
        self.path = path
        self.create = create
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncd-catalog")
        self._catalog: Catalog | None = None

    def _open(self) -> None:
        self._catalog = Catalog.open(self.path, create=self.create)

    def _run(self, fn: Callable[[Catalog], T]) -> T:
        assert self._catalog is not None, "CatalogThread used before start()"
        return fn(self._catalog)

    async def start(self) -> None:
        """Open the catalog on the owning thread (creating it unless ``create`` is False:
        then a missing file is a ``UsageError``, as for ``syncd serve``)."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self._open)

    async def call(self, fn: Callable[[Catalog], T]) -> T:
        """Run ``fn(catalog)`` on the catalog thread and return its result (or raise its
        exception). Calls run one at a time, in the order they were made."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, fn)

    async def close(self) -> None:
        """Finish the calls already submitted, then close the connection."""

        def close() -> None:
            if self._catalog is not None:
                self._catalog.close()
                self._catalog = None

        await asyncio.get_running_loop().run_in_executor(self._pool, close)
        self._pool.shutdown(wait=True)
