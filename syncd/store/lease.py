"""One sync of a dataset at a time: named leases with an owner and an expiry.

A lease is named: ``dataset:<id>`` for a dataset's sync (:func:`for_dataset`). Several
``syncd run`` workers share a catalog (:mod:`syncd.store.workers`); each takes a dataset's
lease for each of its runs, with an owner named after the worker.

A process that wants to sync a dataset takes the dataset's lease; while it holds it, it renews
the expiry (every batch, and from a background task while a listing page is slow); it releases
the lease when the run ends. Another process asking for the same dataset sees the holder and
either refuses (naming it) or waits.

A holder is *gone* when its lease expired, or when it runs on this host and its process no
longer exists (``kill -9``, a crash, a closed laptop), so a crashed run is taken over at once on
the same machine and after ``ttl`` seconds from another one. The same idea carries over to a
shared PostgreSQL catalog: taking a lease is one conditional upsert (:func:`acquire`), so two
machines racing for it cannot both win.

Every function that writes expects to run inside the caller's transaction
(:func:`syncd.store.db.transaction`), so "read the holder, then take it" is atomic.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from syncd.store.db import transaction
from syncd.store.sql import Database
from syncd.store.stamps import now, parse, stamp

#: seconds a lease lives without renewal; a run renews it far more often than this
DEFAULT_TTL = 60.0
_ttl = DEFAULT_TTL


def set_ttl(seconds: float) -> None:
    """Set this process's lease ttl (``[daemon] lease_ttl``): every lease it takes or renews
    from now on lives ``seconds`` without renewal. A shorter ttl hands a dead worker's
    datasets over sooner and costs more renewals (every quarter of it)."""
    global _ttl
    if seconds <= 0:
        raise ValueError("a lease ttl must be positive")
    _ttl = float(seconds)


def ttl() -> float:
    """This process's lease ttl in seconds (:data:`DEFAULT_TTL` unless :func:`set_ttl`)."""
    return _ttl


def for_dataset(dataset_id: int) -> str:
    """The name of a dataset's sync lease."""
    return f"dataset:{dataset_id}"


def new_owner() -> str:
    """A unique owner id for this process's run: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


@dataclass(frozen=True)
class Holder:
    """Who holds a dataset's lease."""

    owner: str
    host: str
    pid: int
    acquired_at: str
    expires_at: str

    def alive(self, at: datetime | None = None) -> bool:
        """Whether the holder may still be running: not expired, and (same host) its
        process exists."""
        at = at or datetime.now(UTC)
        if parse(self.expires_at) <= at:
            return False
        if self.host == socket.gethostname():
            return _pid_alive(self.pid)
        return True

    def describe(self) -> str:
        return f"process {self.pid} on {self.host} (since {self.acquired_at})"


def holder(db: Database, name: str) -> Holder | None:
    """The lease's current holder, alive or not; None if nobody holds it."""
    row = db.execute(
        "SELECT owner, host, pid, acquired_at, expires_at FROM leases WHERE name = ?",
        [name],
    ).fetchone()
    return Holder(*row) if row else None


def live_owner(db: Database, name: str) -> str | None:
    """The owner id of a live holder of the lease, else None."""
    h = holder(db, name)
    return h.owner if h is not None and h.alive() else None


def acquire(db: Database, name: str, owner: str, ttl: float | None = None) -> Holder | None:
    """Take the lease for ``owner``. Returns None on success, else the live holder.

    A lease held by a gone holder is taken over. Taking a lease one already holds renews it.
    Each take is one conditional statement (insert; or update only if the lease is ours or
    expired, or still held by the same gone holder), so of two processes racing for it
    on a shared catalog exactly one wins, whatever the isolation level. The caller holds the
    transaction.
    """
    host, pid = socket.gethostname(), os.getpid()
    at = datetime.now(UTC)
    values = [name, owner, host, pid, now(), stamp(at + timedelta(seconds=ttl or _ttl))]
    cur = db.execute(_TAKE, [*values, owner, stamp(at)])
    if cur.rowcount == 1:
        return None
    current = holder(db, name)
    if current is None:  # released between the two statements: once more
        cur = db.execute(_TAKE, [*values, owner, stamp(at)])
        return None if cur.rowcount == 1 else holder(db, name)
    if current.alive():
        return current
    # gone but not expired: its process died on this host
    cur = db.execute(
        "UPDATE leases SET owner = ?, host = ?, pid = ?, acquired_at = ?, expires_at = ?"
        " WHERE name = ? AND owner = ?",
        [owner, host, pid, values[4], values[5], name, current.owner],
    )
    return None if cur.rowcount == 1 else holder(db, name)


# insert, or take over a lease that is ours already or expired (stored times are ISO text
# of one format, so they compare as text)
_TAKE = (
    "INSERT INTO leases (name, owner, host, pid, acquired_at, expires_at)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
    " host = excluded.host, pid = excluded.pid, acquired_at = excluded.acquired_at,"
    " expires_at = excluded.expires_at"
    " WHERE leases.owner = ? OR leases.expires_at <= ?"
)


def renew(db: Database, name: str, owner: str, ttl: float | None = None) -> bool:
    """Push the expiry of ``owner``'s lease forward. False if the lease is no longer ours
    (it expired and another process took it): the caller must stop writing."""
    cur = db.execute(
        "UPDATE leases SET expires_at = ? WHERE name = ? AND owner = ?",
        [stamp(datetime.now(UTC) + timedelta(seconds=ttl or _ttl)), name, owner],
    )
    return cur.rowcount == 1


async def keep(db: Database, name: str, owner: str) -> None:
    """Renew ``owner``'s lease every quarter of its life until cancelled: for a holder whose
    single steps (a slow listing page, one large upload) may outlast it. Its own transactions;
    a lost lease is noticed by the holder's next checked write, not here."""
    while True:
        await asyncio.sleep(_ttl / 4)
        with transaction(db):
            renew(db, name, owner)


def release(db: Database, name: str, owner: str) -> None:
    """Give the lease up (a no-op if it is not ours any more)."""
    db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", [name, owner])
