"""The daemon's catalog connection, owned by one thread so the event loop never blocks on it.

sqlite calls are blocking (a write may wait up to the busy timeout for another writer). Every
catalog call the daemon's event loop makes (applying events, the API's reads, leases) goes
through :meth:`CatalogThread.call`, which runs it on the one thread that owns the connection,
in submission order. Syncs run in threads of their own with their own connections (sqlite's
WAL lets them read while this thread writes; writers take turns on the write lock).

The catalog can go away under a running daemon; the thread notices and says so, and nothing
is acknowledged meanwhile (every caller sees :class:`~syncd.errors.CatalogUnavailable`):

* **a PostgreSQL server that stops or restarts**: a call that fails on a dead connection marks
  the catalog *unreachable* (one warning line); from then on calls fail at once, without
  touching the server, while :meth:`CatalogThread.watch` reconnects with backoff
  (:data:`RETRY_FIRST` doubling to :data:`RETRY_MAX`). The first successful reconnection
  makes it *available* again (one info line) and :meth:`wait_available` returns.
* **a sqlite file deleted or replaced** (its ``st_dev``/``st_ino`` changed, or it is gone):
  writes would land in an unlinked file, or a second catalog would appear beside the first.
  The catalog is marked *lost* for good (one error line: restart the daemon), checked before
  and after every call (a call that committed into a file that was swapped meanwhile raises,
  so its events are not acknowledged) and every :data:`CHECK_EVERY` seconds by the watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from providers.redact import redact
from syncd.daemon.waiting import wait_at_most
from syncd.errors import CatalogUnavailable
from syncd.store.catalog import Catalog
from syncd.store.db import catalog_error, is_server

T = TypeVar("T")
log = logging.getLogger("syncd.daemon")

#: first delay between reconnection attempts to an unreachable catalog server (doubles)
RETRY_FIRST = 0.25
#: longest delay between reconnection attempts: the daemon resumes within this after the
#: server is back
RETRY_MAX = 2.0
#: how often the watch checks that the sqlite file is still the one the daemon opened
CHECK_EVERY = 1.0
#: seconds a reconnection attempt may take (a server that is down refuses at once)
CONNECT_TIMEOUT = 5


def file_identity(path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the sqlite file at ``path``; None if it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def sqlite_path(url: str) -> str | None:
    """The file of a sqlite catalog URL (None for a server or an in-memory catalog)."""
    if is_server(url):
        return None
    path = url.removeprefix("sqlite://")
    return None if path == ":memory:" else path


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection to a catalog server is dead (not a bad query)."""
    if not type(exc).__module__.startswith(("psycopg", "psycopg_pool")):
        return False
    import psycopg
    from psycopg_pool import PoolTimeout

    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | PoolTimeout)


class CatalogThread:
    """One catalog connection on one thread; ``await call(fn)`` runs ``fn(catalog)`` there."""

    def __init__(self, path: str, *, create: bool = True) -> None:
        self.path = path
        self.create = create
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncd-catalog")
        self._catalog: Catalog | None = None
        self._file = sqlite_path(path)
        #: the sqlite file's identity when opened (None for a server)
        self._identity: tuple[int, int] | None = None
        #: why the catalog cannot be used now (None: it can)
        self.problem: str | None = None
        #: the sqlite file was deleted or replaced: unusable until the daemon restarts
        self.lost = False
        self._lost_lock = threading.Lock()  # the catalog thread and reconciles both check
        self._available = asyncio.Event()
        #: called (on any thread) when the sqlite file is found lost: stop what writes to it
        self.on_lost: list[Callable[[], None]] = []

    @property
    def available(self) -> bool:
        return self.problem is None

    def _open(self) -> None:
        self._catalog = Catalog.open(self.path, create=self.create)
        if self._file is not None:
            self._identity = file_identity(self._file)

    def same_file(self) -> bool:
        """Whether the sqlite file at the path is still the one opened (True for a server);
        any thread."""
        if self._file is None or self._identity is None:
            return True
        if not self.lost and file_identity(self._file) != self._identity:
            self._mark_lost()
        return not self.lost

    # -- on the catalog thread -------------------------------------------------------------

    def _check_file(self) -> None:
        """Raise (and mark the catalog lost) if the sqlite file is no longer the one opened."""
        if self._file is None or self._identity is None:
            return
        if file_identity(self._file) == self._identity:
            return
        self._mark_lost()
        raise CatalogUnavailable(self.problem or "the catalog is unavailable")

    def share_loss(self, other: CatalogThread) -> None:
        """``other`` is a second connection to the same catalog: when either finds the file
        gone or replaced, both are unusable from then on, and it is said once (not once per
        connection)."""
        self.on_lost.append(lambda: other._lose(self.problem))
        other.on_lost.append(lambda: self._lose(other.problem))

    def _lose(self, problem: str | None) -> None:
        """Unusable from now on, for ``problem`` another connection has said already."""
        with self._lost_lock:
            if self.lost:
                return
            self.problem, self.lost = problem, True
        for callback in self.on_lost:
            callback()

    def _mark_lost(self) -> None:
        """The sqlite file is gone or another: say so once; unusable from now on."""
        with self._lost_lock:
            if self.lost:
                return
            assert self._file is not None
            what = "deleted" if file_identity(self._file) is None else "replaced by another file"
            self.problem = (
                f"catalog {self._file!r} was {what} while the daemon ran; nothing more is "
                "applied or acknowledged: restore it and restart the daemon"
            )
            self.lost = True
            log.error("%s", self.problem)
        for callback in self.on_lost:
            callback()

    def _run(self, fn: Callable[[Catalog], T]) -> T:
        if self.problem is not None:
            raise CatalogUnavailable(self.problem)
        assert self._catalog is not None, "CatalogThread used before start()"
        self._check_file()
        try:
            result = fn(self._catalog)
        except Exception as exc:
            if _connection_lost(exc):
                self._drop(exc)
                raise CatalogUnavailable(self.problem or str(exc)) from None
            raise
        # written into a file that was swapped meanwhile: raise, so nothing is acknowledged
        self._check_file()
        return result

    def _drop(self, exc: BaseException) -> None:
        """The server connection died: forget it and fail fast until the watch reconnects."""
        known = catalog_error(exc if isinstance(exc, Exception) else Exception(exc), self.path)
        self._unreachable(str(known))
        catalog, self._catalog = self._catalog, None
        if catalog is not None:
            with contextlib.suppress(Exception):  # the pool discards a broken connection
                catalog.close()

    def _unreachable(self, why: str) -> None:
        """Mark the server unreachable, saying so once per outage."""
        if self.problem is None:
            self.problem = redact(why)
            log.warning("catalog unreachable, retrying in the background: %s", self.problem)

    def _reconnect(self) -> bool:
        """One reconnection attempt (on the catalog thread); True once the catalog answers."""
        try:
            if is_server(self.path):
                from syncd.store.pg import probe

                probe(self.path, timeout=CONNECT_TIMEOUT)  # refused at once while it is down
            if self._catalog is None:
                self._open()
            assert self._catalog is not None
            self._catalog.db.execute("SELECT 1").fetchone()
        except Exception as exc:
            if self._catalog is not None and _connection_lost(exc):
                with contextlib.suppress(Exception):
                    self._catalog.close()
                self._catalog = None
            log.debug("catalog still unreachable: %s", redact(str(exc)))
            return False
        self.problem = None
        log.info("catalog reachable again; resuming")
        return True

    # -- on the event loop -----------------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def start(self) -> None:
        """Open the catalog on the owning thread (creating it unless ``create`` is False:
        then a missing file is a ``UsageError``, as for ``syncd serve``)."""
        await self._in_thread(self._open)
        self._available.set()

    async def call(self, fn: Callable[[Catalog], T]) -> T:
        """Run ``fn(catalog)`` on the catalog thread and return its result (or raise its
        exception). Calls run one at a time, in the order they were made. While the catalog
        is unavailable every call raises ``CatalogUnavailable`` at once."""
        if self.problem is not None:
            raise CatalogUnavailable(self.problem)
        try:
            return await self._in_thread(self._run, fn)
        finally:
            if self.problem is not None:
                self._available.clear()

    async def check(self) -> None:
        """Raise if the catalog cannot be used (for ``/healthz``): ``CatalogUnavailable``
        while it is away, else whatever reading ``_syncd_migrations`` (which every catalog
        has) raises. A sqlite file is also read through a fresh connection: the daemon's own
        serves cached pages and would not see the file truncated or overwritten on disk."""

        def check(catalog: Catalog) -> None:
            catalog.db.execute("SELECT count(*) FROM _syncd_migrations").fetchone()
            if self._file is not None:
                fresh = sqlite3.connect(f"file:{self._file}?mode=ro", uri=True, timeout=5)
                try:
                    fresh.execute("SELECT count(*) FROM _syncd_migrations").fetchone()
                finally:
                    fresh.close()

        await self.call(check)

    async def wait_available(self, stop: asyncio.Event) -> bool:
        """Wait until the catalog can be used (True) or ``stop`` is set (False)."""
        while not stop.is_set():
            if self.available:
                return True
            self._available.clear()  # (a thread may have found the problem meanwhile)
            back = asyncio.ensure_future(self._available.wait())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({back, stopping}, return_when=asyncio.FIRST_COMPLETED)
            back.cancel()
            stopping.cancel()
        return False

    async def watch(self, stop: asyncio.Event) -> None:
        """Until ``stop``: check the sqlite file's identity every :data:`CHECK_EVERY` seconds,
        and reconnect to an unreachable server with backoff."""
        delay = RETRY_FIRST
        while not stop.is_set():
            if self.problem is None:
                delay = RETRY_FIRST
                if self._file is not None:
                    with contextlib.suppress(CatalogUnavailable):
                        await self._in_thread(self._check_file)
                    if self.problem is not None:
                        self._available.clear()
                wait = CHECK_EVERY
            elif self.lost:
                wait = CHECK_EVERY * 60  # only a restart helps; nothing to retry
            else:
                started = time.monotonic()
                if await self._in_thread(self._reconnect):
                    self._available.set()
                    continue
                wait = max(0.0, delay - (time.monotonic() - started))
                delay = min(RETRY_MAX, delay * 2)
            await wait_at_most(stop, wait)

    def mark_unreachable(self, why: str) -> None:
        """Another connection (a reconcile's) found the catalog server gone: fail fast here
        too, and let the watch reconnect (its first attempt comes at once). Server catalogs
        only (a sqlite error of another connection says nothing of this one's file); called
        on the event loop."""
        if is_server(self.path):
            self._unreachable(why)
            self._available.clear()

    async def close(self) -> None:
        """Finish the calls already submitted, then close the connection."""

        def close() -> None:
            if self._catalog is not None:
                with contextlib.suppress(Exception):  # a dead connection closes as well
                    self._catalog.close()
                self._catalog = None

        await self._in_thread(close)
        self._pool.shutdown(wait=True)
