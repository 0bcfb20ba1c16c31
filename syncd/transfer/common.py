"""What pull and push share: the result they return, bounded parallel work, local hashing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

#: problems kept on a result for the Python API (all are counted, and reported as they happen)
KEEP_PROBLEMS = 1000

#: ``on_problem(kind, key, reason)``: kind is "refused" (a key that cannot be written safely)
#: or "failed" (a transfer that did not succeed)
ProblemHook = Callable[[str, str, str], None]
#: ``on_bytes(n)``: n more bytes are done (moved, or found already in place)
BytesHook = Callable[[int], None]
#: ``on_file(action, key)``: a file is (or, on a dry run, would be) moved or removed; action
#: is "+" (new on the destination), "~" (changed) or "-" (removed with ``delete``); key is
#: the object's key
FileHook = Callable[[str, str], None]


@dataclass
class TransferResult:
    """The outcome of one ``pull`` or ``push``.

    ``counts``: ``transferred`` files and their ``bytes``, ``up_to_date``, ``refused`` keys,
    ``extra`` files (on the destination only), ``removed`` of those (``--delete``),
    ``failed``, ``gone`` (of the failed: objects no longer in the bucket, the catalog is
    stale), ``filtered`` (push: local files the dataset's filters leave out), ``skipped``
    (entries left out with a warning each: unreadable local entries such as a symbolic link
    loop, a folder marker holding bytes, the catalog's own files in a pushed folder). A run
    is ``ok`` when nothing was refused or failed.
    """

    direction: str
    dataset: str
    folder: str
    dry_run: bool = False
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "transferred",
                "bytes",
                "up_to_date",
                "refused",
                "extra",
                "removed",
                "failed",
                "gone",
                "filtered",
                "skipped",
            ),
            0,
        )
    )
    #: the first :data:`KEEP_PROBLEMS` refused or failed keys: ``(kind, key, reason)``
    problems: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: the snapshot pulled (``pull --snapshot``), else None; its ``gone`` are objects whose
    #: recorded bytes no longer exist in the bucket (no retry or sync brings them back)
    snapshot: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.counts["refused"] or self.counts["failed"])

    def problem(self, kind: str, key: str, reason: str, hook: ProblemHook | None) -> None:
        self.counts[kind] += 1
        if len(self.problems) < KEEP_PROBLEMS:
            self.problems.append((kind, key, reason))
        if hook is not None:
            hook(kind, key, reason)

    def as_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "dataset": self.dataset,
            "folder": self.folder,
            "dry_run": self.dry_run,
            **({"snapshot": self.snapshot} if self.snapshot is not None else {}),
            **self.counts,
            "seconds": round(self.seconds, 3),
        }


class Bounded:
    """Run coroutines at most ``limit`` at a time; :meth:`start` waits for a free slot, so
    the caller's stream (and memory) moves no faster than the work.

    A coroutine is expected to handle its own errors; one that escapes anyway is kept in
    :attr:`error` (the first one), which stops nothing by itself but is raised by
    :meth:`join`, so no failure is lost to a finished task nobody awaits."""

    def __init__(self, limit: int) -> None:
        self.slots = asyncio.Semaphore(limit)
        self.tasks: set[asyncio.Task[None]] = set()
        self.error: BaseException | None = None

    async def start(self, work: Callable[[], Awaitable[None]]) -> None:
        await self.slots.acquire()

        async def run() -> None:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                if self.error is None:
                    self.error = exc
            finally:
                self.slots.release()

        task = asyncio.create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def join(self) -> None:
        """Wait for every started coroutine; raise the first error one let escape."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks))
        if self.error is not None:
            raise self.error

    async def cancel(self) -> None:
        """Cancel what is still running and wait until it has stopped. (A blocking SDK call
        already in a worker thread finishes there; its result is dropped.)"""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*list(self.tasks), return_exceptions=True)


def file_md5(path: str) -> str:
    """The MD5 (hex) of a local file, read in chunks. Blocking: call from a thread."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()
