"""Split runs: one large dataset's run cut into key ranges, each leased and resumed on its own.

A split run is a ``runs`` row with ``ranges = N > 0`` and N ``run_ranges`` rows. Range ``idx``
covers the keys ``[lo, hi)`` (``lo`` None: from the start; ``hi`` None: to the end), so the
ranges are disjoint and together cover the whole key space. A range moves ``pending`` ->
``running`` -> ``completed``, or ``failed`` (its listing failed or it was stopped; claimable
again). While a worker reconciles a range it holds the lease ``range:<run>:<idx>``
(:mod:`syncd.store.lease`); every batch commits the range's ``resume_key`` and counters with
its items (:meth:`syncd.store.catalog.Catalog.commit_batch`), and parks its deletes under the
run. A range whose holder is gone (lease expired, or same host and process gone) is taken over
by the next :func:`claim` and resumed after its ``resume_key``.

The run's parked deletes are applied only by the worker that completes the last range, in the
transaction that re-checks every range is completed (see
:func:`syncd.reconcile.sync.sync_dataset`); a range that failed part-way therefore keeps every
delete of the run parked.

Every function expects the caller's transaction (:func:`syncd.store.db.transaction`). On
PostgreSQL (READ COMMITTED), "read the ranges, then write" would race between workers, so the
functions that decide from several rows first take the run's row lock (:func:`lock_run`, a
no-op update: on sqlite ``BEGIN IMMEDIATE`` already serializes writers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from syncd.store import lease
from syncd.store.checkpoint import COUNTERS
from syncd.store.sql import Database
from syncd.store.stamps import now

#: the automatic rule: one range per this many items of the dataset (at the run's start) ...
ITEMS_PER_RANGE = 50_000
#: ... and at most this many ranges
MAX_AUTO_RANGES = 32

_COLUMNS = (
    "run_id, idx, lo, hi, status, resume_key, owner, attempts, started_at, ended_at, error, "
    + ", ".join(COUNTERS)
)


@dataclass
class KeyRange:
    """One range of a split run: the keys ``[lo, hi)`` and its progress."""

    run_id: int
    idx: int
    lo: str | None
    hi: str | None
    status: str = "pending"
    resume_key: str | None = None
    owner: str | None = None
    attempts: int = 0
    started_at: str | None = None
    ended_at: str | None = None
    error: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    @property
    def lease(self) -> str:
        return lease_name(self.run_id, self.idx)

    def public(self) -> dict[str, Any]:
        """The range as ``runs ls --json`` and the API show it."""
        return {
            "idx": self.idx,
            "lo": self.lo,
            "hi": self.hi,
            "status": self.status,
            "resume_key": self.resume_key,
            "attempts": self.attempts,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "error": self.error,
            **self.counts,
        }


def lease_name(run_id: int, idx: int) -> str:
    """The lease a worker holds while it reconciles range ``idx`` of run ``run_id``."""
    return f"range:{run_id}:{idx}"


def wanted(configured: int | None, items: int) -> int:
    """How many ranges a new run of a dataset with ``items`` items gets: ``configured`` if
    set (``[datasets.X] ranges``, ``--ranges``), else ``items // ITEMS_PER_RANGE`` capped at
    ``MAX_AUTO_RANGES``. Below 2 the run is not split."""
    if configured is not None:
        return max(1, configured)
    return min(MAX_AUTO_RANGES, items // ITEMS_PER_RANGE)


def _from_row(row: tuple[Any, ...]) -> KeyRange:
    return KeyRange(*row[:11], counts=dict(zip(COUNTERS, row[11:], strict=True)))


def lock_run(db: Database, run_id: int) -> None:
    """Take the run's row lock until the transaction ends (PostgreSQL; see the module doc)."""
    db.execute("UPDATE runs SET ranges = ranges WHERE id = ?", [run_id])


def create(db: Database, run_id: int, bounds: list[str]) -> list[KeyRange]:
    """Cut run ``run_id`` into ``len(bounds) + 1`` ranges at the increasing keys ``bounds``."""
    edges: list[str | None] = [None, *bounds, None]
    made = [KeyRange(run_id, i, edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
    for r in made:  # a handful of rows
        db.execute(
            "INSERT INTO run_ranges (run_id, idx, lo, hi, status) VALUES (?, ?, ?, ?, 'pending')",
            [r.run_id, r.idx, r.lo, r.hi],
        )
    db.execute("UPDATE runs SET ranges = ? WHERE id = ?", [len(made), run_id])
    return made


def load(db: Database, run_id: int) -> list[KeyRange]:
    """The run's ranges in key order."""
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM run_ranges WHERE run_id = ? ORDER BY idx", [run_id]
    ).fetchall()
    return [_from_row(r) for r in rows]


def live_holders(db: Database, run_id: int) -> list[lease.Holder]:
    """The live holders of the run's unfinished ranges."""
    out = []
    for rng in load(db, run_id):
        if rng.status == "completed":
            continue
        h = lease.holder(db, rng.lease)
        if h is not None and h.alive():
            out.append(h)
    return out


def claim(
    db: Database, run_id: int, owner: str, *, skip: frozenset[int] = frozenset()
) -> KeyRange | None:
    """Take the first range of the run that is not completed and has no live holder (a gone
    holder's range is taken over), for ``owner``, and begin an attempt at it; None when there
    is none (every range completed or held by a live worker, this one included). Ranges in
    ``skip`` are left alone.

    A resumed range lists again after its ``resume_key``: the deletes it parked beyond that
    point are dropped, since they will be decided again (an object re-created there meanwhile
    must not be deleted on the strength of a stale parking)."""
    lock_run(db, run_id)
    for rng in load(db, run_id):
        if rng.status == "completed" or rng.idx in skip:
            continue
        current = lease.holder(db, rng.lease)
        if current is not None and current.alive():
            continue
        if lease.acquire(db, rng.lease, owner) is not None:
            continue
        stamp = now()
        # the attempt that was running when its owner vanished is over
        db.execute(
            "UPDATE range_attempts SET status = 'interrupted', ended_at = ?"
            " WHERE run_id = ? AND idx = ? AND status = 'running'",
            [stamp, run_id, rng.idx],
        )
        rng.attempts += 1
        rng.status, rng.owner, rng.error, rng.started_at, rng.ended_at = (
            "running",
            owner,
            None,
            stamp,
            None,
        )
        db.execute(
            "UPDATE run_ranges SET status = 'running', owner = ?, attempts = ?, error = NULL,"
            " started_at = ?, ended_at = NULL WHERE run_id = ? AND idx = ?",
            [owner, rng.attempts, stamp, run_id, rng.idx],
        )
        db.execute(
            "INSERT INTO range_attempts (run_id, idx, attempt, owner, started_at, status,"
            " resumed_after) VALUES (?, ?, ?, ?, ?, 'running', ?)",
            [run_id, rng.idx, rng.attempts, owner, stamp, rng.resume_key],
        )
        _drop_parked_beyond(db, rng)
        return rng
    return None


def _drop_parked_beyond(db: Database, rng: KeyRange) -> None:
    """Forget the deletes parked in the part of ``rng`` its next listing decides again."""
    sql, args = "DELETE FROM pending_deletes WHERE run_id = ?", [rng.run_id]
    if rng.resume_key is not None:
        sql += " AND key > ?"
        args.append(rng.resume_key)
    elif rng.lo is not None:
        sql += " AND key >= ?"
        args.append(rng.lo)
    if rng.hi is not None:
        sql += " AND key < ?"
        args.append(rng.hi)
    db.execute(sql, args)


def save_progress(db: Database, rng: KeyRange) -> None:
    """Persist the range's ``resume_key`` and counters (with the batch that got it there)."""
    sets = ", ".join(f"{c} = ?" for c in COUNTERS)
    db.execute(
        f"UPDATE run_ranges SET resume_key = ?, {sets} WHERE run_id = ? AND idx = ?",
        [rng.resume_key, *(rng.counts[c] for c in COUNTERS), rng.run_id, rng.idx],
    )


def finish(db: Database, rng: KeyRange, status: str, error: str | None = None) -> None:
    """Close the range's current attempt as ``completed`` or ``failed`` (error redacted by the
    caller) and save its progress."""
    rng.status, rng.error, rng.ended_at = status, error, now()
    save_progress(db, rng)
    db.execute(
        "UPDATE run_ranges SET status = ?, error = ?, ended_at = ? WHERE run_id = ? AND idx = ?",
        [status, error, rng.ended_at, rng.run_id, rng.idx],
    )
    db.execute(
        "UPDATE range_attempts SET status = ?, error = ?, ended_at = ?, last_key = ?"
        " WHERE run_id = ? AND idx = ? AND attempt = ?",
        [status, error, rng.ended_at, rng.resume_key, rng.run_id, rng.idx, rng.attempts],
    )


def all_completed(db: Database, run_id: int) -> bool:
    """Whether every range of the run is completed."""
    row = db.execute(
        "SELECT count(*) FROM run_ranges WHERE run_id = ? AND status <> 'completed'", [run_id]
    ).fetchone()
    return int(row[0]) == 0


def totals(db: Database, run_id: int) -> tuple[dict[str, int], int]:
    """The run's counters summed over its ranges, and its attempts over all ranges."""
    sums = ", ".join(f"coalesce(sum({c}), 0)" for c in COUNTERS)
    row = db.execute(
        f"SELECT {sums}, coalesce(sum(attempts), 0) FROM run_ranges WHERE run_id = ?", [run_id]
    ).fetchone()
    return dict(zip(COUNTERS, (int(v) for v in row[:-1]), strict=True)), int(row[-1])


def attempts(db: Database, run_id: int) -> list[dict[str, Any]]:
    """Every range attempt of the run, by range then attempt; a ``running`` attempt whose
    holder is gone shows as ``interrupted``."""
    rows = db.execute(
        "SELECT idx, attempt, owner, started_at, ended_at, status, resumed_after, last_key, error"
        " FROM range_attempts WHERE run_id = ? ORDER BY idx, attempt",
        [run_id],
    ).fetchall()
    out = []
    for idx, attempt, owner, started, ended, status, resumed, last, error in rows:
        if status == "running" and lease.live_owner(db, lease_name(run_id, idx)) != owner:
            status = "interrupted"
        out.append(
            {
                "range": idx,
                "attempt": attempt,
                "status": status,
                "started_at": started,
                "ended_at": ended,
                "resumed_after": resumed,
                "last_key": last,
                "error": error,
            }
        )
    return out


def clear(db: Database, run_ids: str, args: list[Any]) -> None:
    """Remove the ranges and range attempts of the runs ``run_ids`` selects (a subquery with
    ``args``): for dropping a dataset."""
    for table in ("range_attempts", "run_ranges"):
        db.execute(f"DELETE FROM {table} WHERE run_id IN ({run_ids})", args)
