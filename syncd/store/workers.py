"""The worker registry: which ``syncd run`` processes share a catalog, and what each holds.

Every ``syncd run`` is a *worker*: at start it writes a row in ``workers`` (its id, host, pid,
API address), renews the row's expiry every quarter of the lease ttl while it runs
(:func:`heartbeat`), and deletes it on a clean stop. A worker is *live* while its expiry is
ahead and, on this host, its process exists: the same rule as a lease holder
(:meth:`syncd.store.lease.Holder.alive`), so a ``kill -9``-ed worker shows as gone at once on
its own host and after the ttl from another one.

The dataset leases a worker takes are named after it: their owner is ``<worker id>/<run>``
(:func:`lease_owner`), so :func:`listing` can tell which worker holds what without a join
column. Rows of workers gone for longer than :data:`FORGET_AFTER` are pruned at the next
registration.

Also here: :func:`last_reconciled`, the catalog's answer to "when did a reconcile of this
dataset last finish?", which lets several workers share one schedule.

Every function that writes expects the caller's transaction (:func:`syncd.store.db.transaction`).
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from syncd.store import lease
from syncd.store.stamps import now

#: a gone worker's row is kept this long (``syncd workers ls`` shows it as gone), then pruned
FORGET_AFTER = timedelta(hours=1)
_WORKER_FIELDS = ("id", "host", "pid", "started_at", "heartbeat_at", "expires_at", "api")
#: run statuses that count as "the dataset was reconciled" for the shared schedule
RECONCILED = ("completed", "held")


def new_worker_id() -> str:
    """A unique id for this ``syncd run`` process: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_owner(worker_id: str) -> str:
    """A fresh lease owner for one run of ``worker_id``: ``<worker id>/<random>``."""
    return f"{worker_id}/{uuid.uuid4().hex[:8]}"


def worker_of(owner: str) -> str | None:
    """The worker id a lease owner belongs to (None for a one-shot ``syncd sync``)."""
    worker, sep, _ = owner.rpartition("/")
    return worker if sep else None


def _expiry(ttl: float) -> str:
    return (
        (datetime.now(UTC) + timedelta(seconds=ttl))
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def register(db: Any, worker_id: str, *, ttl: float, api: str | None = None) -> None:
    """Record ``worker_id`` (this process) as live for ``ttl`` seconds; prune rows of workers
    gone for longer than :data:`FORGET_AFTER`."""
    stamp = now()
    forget = (
        (datetime.now(UTC) - FORGET_AFTER).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )
    db.execute("DELETE FROM workers WHERE expires_at < ?", [forget])
    db.execute(
        "INSERT INTO workers (id, host, pid, started_at, heartbeat_at, expires_at, api)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
        " heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at,"
        " api = excluded.api",
        [worker_id, socket.gethostname(), os.getpid(), stamp, stamp, _expiry(ttl), api],
    )


def heartbeat(db: Any, worker_id: str, *, ttl: float, api: str | None = None) -> None:
    """Push ``worker_id``'s expiry ``ttl`` seconds ahead and record its API address
    (re-registering it if its row was pruned while this process was stalled)."""
    cur = db.execute(
        "UPDATE workers SET heartbeat_at = ?, expires_at = ?, api = ? WHERE id = ?",
        [now(), _expiry(ttl), api, worker_id],
    )
    if cur.rowcount != 1:
        register(db, worker_id, ttl=ttl, api=api)


def unregister(db: Any, worker_id: str) -> None:
    """Delete ``worker_id``'s row (a clean stop)."""
    db.execute("DELETE FROM workers WHERE id = ?", [worker_id])


def _holder(row: tuple) -> lease.Holder:
    """A worker row as a lease holder, to reuse its liveness rule."""
    worker_id, host, pid, started_at, _heartbeat, expires_at = row[:6]
    return lease.Holder(worker_id, host, int(pid), started_at, expires_at)


def live_workers(db: Any) -> list[str]:
    """The ids of the live workers, oldest first."""
    rows = db.execute(
        "SELECT id, host, pid, started_at, heartbeat_at, expires_at FROM workers"
        " ORDER BY started_at, id"
    ).fetchall()
    return [row[0] for row in rows if _holder(row).alive()]


def listing(db: Any) -> dict[str, Any]:
    """The registry as ``syncd workers ls --json`` and ``GET /api/v1/workers`` show it.

    ``{"workers": [...live...], "gone": [...], "other_leases": [...]}``: each worker with
    ``id, host, pid, started_at, heartbeat_at, expires_at, api`` and ``leases`` (each
    ``name, dataset, acquired_at, expires_at, live``); ``other_leases`` are held by no
    registered worker (a one-shot ``syncd sync``, a push)."""
    rows = db.execute(
        "SELECT id, host, pid, started_at, heartbeat_at, expires_at, api FROM workers"
        " ORDER BY started_at, id"
    ).fetchall()
    names = {
        lease.for_dataset(int(i)): n
        for i, n in db.execute("SELECT id, name FROM datasets").fetchall()
    }
    by_worker: dict[str, list[dict[str, Any]]] = {}
    others: list[dict[str, Any]] = []
    for name, owner, host, pid, acquired, expires in db.execute(
        "SELECT name, owner, host, pid, acquired_at, expires_at FROM leases ORDER BY name"
    ).fetchall():
        held = lease.Holder(owner, host, int(pid), acquired, expires)
        entry = {
            "name": name,
            "dataset": names.get(name),
            "acquired_at": acquired,
            "expires_at": expires,
            "live": held.alive(),
        }
        worker = worker_of(owner)
        if worker is not None:
            by_worker.setdefault(worker, []).append(entry)
        else:
            others.append(entry | {"owner": owner})
    out: dict[str, Any] = {"workers": [], "gone": []}
    known = set()
    for row in rows:
        known.add(row[0])
        worker = dict(zip(_WORKER_FIELDS, row, strict=True))
        worker["leases"] = by_worker.get(row[0], [])
        out["workers" if _holder(row).alive() else "gone"].append(worker)
    # leases of a worker whose row is gone already (pruned, or a crash before registering)
    for worker_id, entries in by_worker.items():
        if worker_id not in known:
            others.extend(e | {"owner": worker_id} for e in entries)
    out["other_leases"] = others
    return out


def last_reconciled(db: Any, dataset_id: int) -> str | None:
    """When the dataset's latest finished reconcile (``completed``, or ``held`` by the delete
    limit) ended, as stored (ISO text); None if it never finished one."""
    row = db.execute(
        "SELECT MAX(ended_at) FROM runs WHERE dataset_id = ? AND status IN (?, ?)",
        [dataset_id, *RECONCILED],
    ).fetchone()
    return row[0] if row and row[0] else None
