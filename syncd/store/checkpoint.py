"""The checkpoint: progress of the current run and the history of past runs, per dataset.

A run moves ``running`` -> ``completed`` | ``failed`` | ``held`` (a mass deletion held back;
never resumed) | ``abandoned`` (superseded by a fresh run). A ``running`` run whose owner no
longer holds the dataset's lease (:mod:`syncd.store.lease`) is shown as ``interrupted``. Every attempt
of a run (a resumed run has several) is kept in ``run_attempts``: when, from where, how far, and
its error. While it runs, each applied batch records
``resume_key``, the last listed key whose consequences are all written, in the same transaction
as the batch's items. Keys the listing no longer has are parked in ``pending_deletes`` and only
removed from the dataset once a listing has gone all the way through without error.

If a run fails or the process dies, the next run of the same dataset with the same driver and
filters (same *fingerprint*) picks the run up again: it lists from ``resume_key`` on and keeps
the parked deletes. A different fingerprint, ``restart``, or a run that started longer ago than
``resume_within`` seconds abandons it: keys before the resume point were compared when the run
started, so resuming a stale run would let changes made since then behind that point wait for
the next run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime

from providers.redact import redact
from syncd.store import lease
from syncd.store.sql import NEWER_EVENT, Database, Seen, item_rows, select_keys
from syncd.store.stamps import now, parse, us_stamp

#: ``key_markers.deleted`` of a key a listing showed gone (an event's delete writes 1): an event
#: stamped before the listing's time is stale even if its marker is newer than the stored one
#: (see :mod:`syncd.events.apply`)
LISTED_GONE = 2
#: a listing's delete of a key, as ``key_markers`` keeps an event's (see
#: :meth:`Checkpoint.apply_parked`): under the same guard as the delete; the newer of the stored
#: and the listing's time stays, and so do the stored marker and sequence. Parameters:
#: dataset_id, key, updated_at, the time as ISO text and in microseconds, then
#: :data:`~syncd.store.sql.NEWER_EVENT`'s.
_TOMBSTONE = (
    "INSERT INTO key_markers"
    " (dataset_id, key, marker, deleted, updated_at, seq, event_time, event_us)"
    f" SELECT ?, ?, '', {LISTED_GONE}, ?, 0, ?, ? WHERE NOT {NEWER_EVENT}"
    f" ON CONFLICT (dataset_id, key) DO UPDATE SET deleted = {LISTED_GONE},"
    " updated_at = excluded.updated_at,"
    " event_time = CASE WHEN key_markers.event_us > excluded.event_us"
    " THEN key_markers.event_time ELSE excluded.event_time END,"
    " event_us = CASE WHEN key_markers.event_us > excluded.event_us"
    " THEN key_markers.event_us ELSE excluded.event_us END"
)
#: per-run counters. ``deleted`` counts deletes applied, never keys merely parked; ``filtered``
#: objects the filters left out; ``skipped`` objects the driver could not represent
COUNTERS = ("listed", "created", "updated", "deleted", "unchanged", "filtered", "skipped")
#: statuses of a run that is over and is never resumed
FINAL = ("completed", "abandoned", "held")
#: an interrupted run older than this (seconds) is started over rather than resumed
DEFAULT_RESUME_WITHIN = 6 * 3600.0


def _age_seconds(stamp: str) -> float:
    return (datetime.now(UTC) - parse(stamp)).total_seconds()


@dataclass
class Run:
    id: int
    dataset_id: int
    fingerprint: str
    status: str
    started_at: str
    attempts: int = 1
    resume_key: str | None = None
    ended_at: str | None = None
    error: str | None = None
    owner: str | None = None
    held_deletes: int = 0
    #: key ranges of a split run (:mod:`syncd.store.ranges`); 0 for a run that is not split
    ranges: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    @property
    def resumed(self) -> bool:
        return self.attempts > 1

    @property
    def seconds(self) -> float:
        """How long the run took (so far, while it runs)."""
        end = parse(self.ended_at) if self.ended_at else datetime.now(UTC)
        return (end - parse(self.started_at)).total_seconds()


@dataclass(frozen=True)
class Attempt:
    """One attempt of a run: who, when, where it started and how far it got."""

    run_id: int
    attempt: int
    owner: str
    started_at: str
    ended_at: str | None
    status: str
    resumed_after: str | None
    last_key: str | None
    error: str | None

    def public(self) -> dict[str, object]:
        return {
            "attempt": self.attempt,
            "status": self.status,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "resumed_after": self.resumed_after,
            "last_key": self.last_key,
            "error": self.error,
        }


_RUN_COLUMNS = (
    "id, dataset_id, fingerprint, status, started_at, attempts, resume_key, ended_at, error, "
    "owner, held_deletes, ranges, " + ", ".join(COUNTERS)
)
_ATTEMPT_COLUMNS = (
    "run_id, attempt, owner, started_at, ended_at, status, resumed_after, last_key, error"
)


def _run_from_row(row: tuple) -> Run:
    return Run(*row[:12], counts=dict(zip(COUNTERS, row[12:], strict=True)))


def _markers_since(
    db: Database, dataset_id: int, keys: list[str], seq: int
) -> list[tuple[str, int, int | None]]:
    """``(key, seq, event_us)`` of the markers of ``keys`` stamped after sequence ``seq``."""
    return select_keys(  # type: ignore[return-value]
        db, "t.key, t.seq, t.event_us", "key_markers", dataset_id, keys,
        where=" AND t.seq > ?", args=[seq],
    )  # fmt: skip


class Checkpoint:
    """Run bookkeeping on the catalog database (same file, same transactions as items)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def unfinished(self, dataset_id: int) -> Run | None:
        """The dataset's latest run if it did not complete (crashed, interrupted or failed)."""
        row = self.db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE dataset_id = ? ORDER BY id DESC LIMIT 1",
            [dataset_id],
        ).fetchone()
        if row is None or row[3] in FINAL:
            return None
        return _run_from_row(row)

    def begin(
        self,
        dataset_id: int,
        fingerprint: str,
        owner: str,
        *,
        restart: bool = False,
        resume_within: float = DEFAULT_RESUME_WITHIN,
    ) -> Run:
        """Resume the unfinished run with this fingerprint, or start a new one, for ``owner``.

        The caller holds the dataset's lease (so an unfinished run's owner is gone) and the
        transaction.
        """
        previous = self.unfinished(dataset_id)
        if previous is not None:
            # the attempt that was running when its owner vanished is over
            self.db.execute(
                "UPDATE run_attempts SET status = 'interrupted', ended_at = ?"
                " WHERE run_id = ? AND status = 'running'",
                [now(), previous.id],
            )
        fresh = previous is not None and _age_seconds(previous.started_at) <= resume_within
        # a split run is resumed range by range (syncd.store.ranges), never as a whole: a
        # serial run in its place starts afresh
        same = previous is not None and previous.fingerprint == fingerprint and not previous.ranges
        if previous is not None and same and fresh and not restart:
            previous.attempts += 1
            previous.status, previous.error, previous.owner = "running", None, owner
            self.db.execute(
                "UPDATE runs SET status = 'running', attempts = ?, error = NULL, ended_at = NULL,"
                " owner = ? WHERE id = ?",
                [previous.attempts, owner, previous.id],
            )
            # keys parked beyond the resume point will be compared again by this attempt; an
            # object re-created there meanwhile must not be deleted on the strength of a stale
            # parking
            self.db.execute(
                "DELETE FROM pending_deletes WHERE run_id = ? AND key > ?",
                [previous.id, previous.resume_key or ""],
            )
            self._begin_attempt(previous)
            return previous
        if previous is not None:
            self.db.execute(
                "UPDATE runs SET status = 'abandoned', ended_at = ? WHERE id = ?",
                [now(), previous.id],
            )
            self.db.execute("DELETE FROM pending_deletes WHERE run_id = ?", [previous.id])
            self.db.execute(
                "UPDATE range_attempts SET status = 'interrupted', ended_at = ?"
                " WHERE run_id = ? AND status = 'running'",
                [now(), previous.id],
            )
        started = now()
        cur = self.db.execute(
            "INSERT INTO runs (dataset_id, fingerprint, status, started_at, owner)"
            " VALUES (?, ?, 'running', ?, ?) RETURNING id",
            [dataset_id, fingerprint, started, owner],
        )
        run = Run(int(cur.fetchone()[0]), dataset_id, fingerprint, "running", started, owner=owner)
        self._begin_attempt(run)
        return run

    def begin_split(self, dataset_id: int, fingerprint: str, owner: str) -> Run:
        """Insert a new run to be cut into key ranges (:mod:`syncd.store.ranges`; the caller
        creates them and holds the transaction). Its attempts are its ranges'."""
        started = now()
        row = self.db.execute(
            "INSERT INTO runs (dataset_id, fingerprint, status, started_at, owner)"
            " VALUES (?, ?, 'running', ?, ?) RETURNING id",
            [dataset_id, fingerprint, started, owner],
        ).fetchone()
        return Run(int(row[0]), dataset_id, fingerprint, "running", started, owner=owner)

    def get(self, run_id: int) -> Run:
        """The run with id ``run_id``, as stored."""
        row = self.db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", [run_id]).fetchone()
        return _run_from_row(row)

    def fresh(self, run: Run, resume_within: float) -> bool:
        """Whether ``run`` started at most ``resume_within`` seconds ago (may be resumed)."""
        return _age_seconds(run.started_at) <= resume_within

    def _begin_attempt(self, run: Run) -> None:
        self.db.execute(
            "INSERT INTO run_attempts (run_id, attempt, owner, started_at, status, resumed_after)"
            " VALUES (?, ?, ?, ?, 'running', ?)",
            [run.id, run.attempts, run.owner, now(), run.resume_key],
        )

    def save_progress(self, run: Run) -> None:
        """Persist ``resume_key`` and counters. The caller holds the transaction."""
        sets = ", ".join(f"{c} = ?" for c in COUNTERS)
        self.db.execute(
            f"UPDATE runs SET resume_key = ?, held_deletes = ?, {sets} WHERE id = ?",
            [run.resume_key, run.held_deletes, *(run.counts[c] for c in COUNTERS), run.id],
        )

    def park_deletes(self, run: Run, keys: list[str], seen: list[Seen]) -> None:
        """Remember keys to delete once the listing completes, each with what the listing page
        that showed it gone knew when it was requested (event sequence, provider time). The
        caller holds the transaction."""
        self.db.executemany(
            "INSERT INTO pending_deletes (run_id, key, seen_seq, seen_us) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (run_id, key) DO NOTHING",
            [(run.id, k, s.seq, s.us) for k, s in zip(keys, seen, strict=True)],
        )

    def apply_parked(self, run: Run, dataset_id: int, page: int = 1000) -> int:
        """Delete the parked keys' items, in pages, and return how many were deleted.

        A key is kept if an event changed it after its listing page was requested and is not
        older than that page (:data:`~syncd.store.sql.NEWER_EVENT`: it re-created the key
        after the listing saw it gone); an older event that committed meanwhile does not keep
        it. Each key deleted (or found already gone) gets a tombstone in ``key_markers``
        stamped with its page's time and marked :data:`LISTED_GONE`: an older event delivered
        later is then stale (:mod:`syncd.events.apply`: by its time, even when its ordering
        marker is newer than the stored one; by its marker, when it has no time) and does not
        re-create the item. The tombstone keeps the stored marker and event sequence (it is
        no event: it must not hold back a later listing). Keys parked without a time (before
        times were kept, or from a driver that has none) get no tombstone. The caller holds
        the transaction."""
        deleted, cursor = 0, ""
        written = now()
        while True:
            rows = self.db.execute(
                "SELECT key, seen_seq, seen_us FROM pending_deletes WHERE run_id = ? AND key > ?"
                " ORDER BY key LIMIT ?",
                [run.id, cursor, page],
            ).fetchall()
            if not rows:
                return deleted
            # the items these keys still have (primary-key lookups: a join let PostgreSQL's
            # planner scan every item of a large dataset per page), less those a newer event
            # keeps (the guard, decided on their markers: no event commits meanwhile, the
            # caller holds lock_writes); deleted, and recorded in the change log as they were
            guard = {k: (seq, us) for k, seq, us in rows}
            held = {
                key
                for key, mseq, event_us in _markers_since(
                    self.db, dataset_id, list(guard), min(seq for seq, _ in guard.values())
                )
                if mseq > guard[key][0] and (event_us is None or event_us >= guard[key][1])
            }
            gone = [
                row for row in item_rows(self.db, dataset_id, list(guard)) if row[1] not in held
            ]
            self.db.record_changes("deleted", "listing", written, gone)  # first (snapshots)
            deleted += self.db.executemany(
                "DELETE FROM items WHERE dataset_id = ? AND key = ?",
                [(dataset_id, row[1]) for row in gone],
            )
            self.db.executemany(
                _TOMBSTONE,
                [
                    (dataset_id, k, written, us_stamp(us), us, dataset_id, k, seq, us)
                    for k, seq, us in rows
                    if us  # parked before times were kept: no time to stamp it with
                ],
            )
            cursor = rows[-1][0]

    def count_parked(self, run: Run) -> int:
        return int(
            self.db.execute(
                "SELECT count(*) FROM pending_deletes WHERE run_id = ?", [run.id]
            ).fetchone()[0]
        )

    def clear_parked(self, run: Run) -> None:
        self.db.execute("DELETE FROM pending_deletes WHERE run_id = ?", [run.id])

    def finish(self, run: Run, status: str, error: str | None = None) -> None:
        """Close the run and its current attempt. The caller holds the transaction. The error
        is stored redacted (:func:`providers.redact.redact`): run history is shown by
        ``runs ls`` and the API, and must hold no secret even if an SDK message carried one."""
        if error is not None:
            error = redact(error)
        run.status, run.error, run.ended_at = status, error, now()
        self.save_progress(run)
        self.db.execute(
            "UPDATE runs SET status = ?, error = ?, ended_at = ? WHERE id = ?",
            [status, error, run.ended_at, run.id],
        )
        self.db.execute(
            "UPDATE run_attempts SET status = ?, error = ?, ended_at = ?, last_key = ?"
            " WHERE run_id = ? AND attempt = ?",
            [status, error, run.ended_at, run.resume_key, run.id, run.attempts],
        )

    def history(self, dataset_id: int, limit: int = 20) -> list[Run]:
        """The dataset's latest runs, newest first; a ``running`` run whose owner is gone is
        reported as ``interrupted``."""
        rows = self.db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE dataset_id = ? ORDER BY id DESC LIMIT ?",
            [dataset_id, limit],
        ).fetchall()
        runs = [_run_from_row(r) for r in rows]
        live = lease.live_owner(self.db, lease.for_dataset(dataset_id)) if runs else None
        for run in runs:
            if run.status == "running" and run.ranges:
                from syncd.store import ranges  # imports this module

                # a split run: its counters are its ranges'; it runs while a range does
                run.counts, run.attempts = ranges.totals(self.db, run.id)
                if not ranges.live_holders(self.db, run.id):
                    run.status = "interrupted"
            elif run.status == "running" and run.owner != live:
                run.status = "interrupted"
        return runs

    def attempts(self, run: Run) -> list[Attempt]:
        """Every attempt of ``run``, oldest first; a ``running`` attempt whose owner is gone
        is reported as ``interrupted``."""
        rows = self.db.execute(
            f"SELECT {_ATTEMPT_COLUMNS} FROM run_attempts WHERE run_id = ? ORDER BY attempt",
            [run.id],
        ).fetchall()
        live = lease.live_owner(self.db, lease.for_dataset(run.dataset_id))
        out = []
        for row in rows:
            attempt = Attempt(*row)
            if attempt.status == "running" and attempt.owner != live:
                attempt = dataclasses.replace(attempt, status="interrupted")
            out.append(attempt)
        return out
