"""One sync of a dataset at a time, one daemon per catalog: named leases with an owner and an
expiry.

A lease is named: ``dataset:<id>`` for a dataset's sync (:func:`for_dataset`), ``daemon`` for
the ``syncd run`` that owns a catalog.

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

from syncd.store.db import now, transaction
from syncd.store.sql import Database

#: seconds a lease lives without renewal; a run renews it far more often than this
DEFAULT_TTL = 60.0
#: the lease of the one ``syncd run`` daemon that writes a catalog
DAEMON = "daemon"


def for_dataset(dataset_id: int) -> str:
    """The name of a dataset's sync lease."""
    return f"dataset:{dataset_id}"


def _stamp(dt: datetime) -> str:
    return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


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
        if _parse(self.expires_at) <= at:
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


def acquire(db: Database, name: str, owner: str, ttl: float = DEFAULT_TTL) -> Holder | None:
    """Take the lease for ``owner``. Returns None on success, else the live holder.

    A lease held by a gone holder is taken over. Taking a lease one already holds renews it.
    Each take is one conditional statement (insert; or update only if the lease is ours or
    expired, or still held by the same gone holder), so of two processes racing for it
    on a shared catalog exactly one wins, whatever the isolation level. The caller holds the
    transaction.
    """
    host, pid = socket.gethostname(), os.getpid()
    stamp = datetime.now(UTC)
    values = [name, owner, host, pid, now(), _stamp(stamp + timedelta(seconds=ttl))]
    cur = db.execute(_TAKE, [*values, owner, _stamp(stamp)])
    if cur.rowcount == 1:
        return None
    current = holder(db, name)
    if current is None:  # released between the two statements: once more
        cur = db.execute(_TAKE, [*values, owner, _stamp(stamp)])
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


def renew(db: Database, name: str, owner: str, ttl: float = DEFAULT_TTL) -> bool:
    """Push the expiry of ``owner``'s lease forward. False if the lease is no longer ours
    (it expired and another process took it): the caller must stop writing."""
    cur = db.execute(
        "UPDATE leases SET expires_at = ? WHERE name = ? AND owner = ?",
        [_stamp(datetime.now(UTC) + timedelta(seconds=ttl)), name, owner],
    )
    return cur.rowcount == 1


async def keep(db: Database, name: str, owner: str) -> None:
    """Renew ``owner``'s lease every quarter of its life until cancelled: for a holder whose
    single steps (a slow listing page, one large upload) may outlast it. Its own transactions;
    a lost lease is noticed by the holder's next checked write, not here."""
    while True:
        await asyncio.sleep(DEFAULT_TTL / 4)
        with transaction(db):
            renew(db, name, owner)


def release(db: Database, name: str, owner: str) -> None:
    """Give the lease up (a no-op if it is not ours any more)."""
    db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", [name, owner])
