"""The checkpoint: progress of the current run and the history of past runs, per dataset.

A run moves ``running`` -> ``completed`` | ``failed``. While it runs, each applied batch records
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

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlite_utils

from syncd.db import now

COUNTERS = ("listed", "created", "updated", "deleted", "unchanged")
#: an interrupted run older than this (seconds) is started over rather than resumed
DEFAULT_RESUME_WITHIN = 6 * 3600.0


def _age_seconds(stamp: str) -> float:
    started = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (datetime.now(UTC) - started).total_seconds()


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
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    @property
    def resumed(self) -> bool:
        return self.attempts > 1


_RUN_COLUMNS = (
    "id, dataset_id, fingerprint, status, started_at, attempts, resume_key, ended_at, error, "
    + ", ".join(COUNTERS)
)


def _run_from_row(row: tuple) -> Run:
    return Run(*row[:9], counts=dict(zip(COUNTERS, row[9:], strict=True)))


class Checkpoint:
    """Run bookkeeping on the catalog database (same file, same transactions as items)."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def unfinished(self, dataset_id: int) -> Run | None:
        """The dataset's latest run if it did not complete (crashed or failed)."""
        row = self.db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE dataset_id = ? ORDER BY id DESC LIMIT 1",
            [dataset_id],
        ).fetchone()
        if row is None or row[3] in ("completed", "abandoned"):
            return None
        return _run_from_row(row)

    def begin(
        self,
        dataset_id: int,
        fingerprint: str,
        *,
        restart: bool = False,
        resume_within: float = DEFAULT_RESUME_WITHIN,
    ) -> Run:
        """Resume the unfinished run with this fingerprint, or start a new one.

        The caller holds the transaction.
        """
        previous = self.unfinished(dataset_id)
        fresh = previous is not None and _age_seconds(previous.started_at) <= resume_within
        if previous is not None and previous.fingerprint == fingerprint and fresh and not restart:
            previous.attempts += 1
            previous.status = "running"
            previous.error = None
            self.db.execute(
                "UPDATE runs SET status = 'running', attempts = ?, error = NULL, ended_at = NULL"
                " WHERE id = ?",
                [previous.attempts, previous.id],
            )
            # keys parked beyond the resume point will be compared again by this attempt; an
            # object re-created there meanwhile must not be deleted on the strength of a stale
            # parking
            self.db.execute(
                "DELETE FROM pending_deletes WHERE run_id = ? AND key > ?",
                [previous.id, previous.resume_key or ""],
            )
            return previous
        if previous is not None:
            self.db.execute(
                "UPDATE runs SET status = 'abandoned', ended_at = ? WHERE id = ?",
                [now(), previous.id],
            )
            self.db.execute("DELETE FROM pending_deletes WHERE run_id = ?", [previous.id])
        started = now()
        cur = self.db.execute(
            "INSERT INTO runs (dataset_id, fingerprint, status, started_at) VALUES (?, ?, 'running', ?)",
            [dataset_id, fingerprint, started],
        )
        return Run(int(cur.lastrowid), dataset_id, fingerprint, "running", started)

    def save_progress(self, run: Run) -> None:
        """Persist ``resume_key`` and counters. The caller holds the transaction."""
        sets = ", ".join(f"{c} = ?" for c in COUNTERS)
        self.db.execute(
            f"UPDATE runs SET resume_key = ?, {sets} WHERE id = ?",
            [run.resume_key, *(run.counts[c] for c in COUNTERS), run.id],
        )

    def park_deletes(self, run: Run, keys: list[str]) -> None:
        """Remember keys to delete once the listing completes. The caller holds the transaction."""
        self.db.conn.executemany(
            "INSERT OR IGNORE INTO pending_deletes (run_id, key) VALUES (?, ?)",
            [(run.id, k) for k in keys],
        )

    def parked(self, run: Run, page: int = 1000) -> Iterator[list[str]]:
        """Parked keys in pages, in key order."""
        cursor = ""
        while True:
            rows = self.db.execute(
                "SELECT key FROM pending_deletes WHERE run_id = ? AND key > ? ORDER BY key LIMIT ?",
                [run.id, cursor, page],
            ).fetchall()
            if not rows:
                return
            keys = [r[0] for r in rows]
            yield keys
            cursor = keys[-1]

    def clear_parked(self, run: Run) -> None:
        self.db.execute("DELETE FROM pending_deletes WHERE run_id = ?", [run.id])

    def finish(self, run: Run, status: str, error: str | None = None) -> None:
        """Close the run. The caller holds the transaction."""
        run.status, run.error, run.ended_at = status, error, now()
        self.save_progress(run)
        self.db.execute(
            "UPDATE runs SET status = ?, error = ?, ended_at = ? WHERE id = ?",
            [status, error, run.ended_at, run.id],
        )

    def history(self, dataset_id: int, limit: int = 20) -> list[Run]:
        rows = self.db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE dataset_id = ? ORDER BY id DESC LIMIT ?",
            [dataset_id, limit],
        ).fetchall()
        return [_run_from_row(r) for r in rows]
