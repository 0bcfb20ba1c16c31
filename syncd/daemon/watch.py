"""Folder watching for local-folder datasets: changes on disk become :class:`ObjectEvent` batches.

:class:`FolderWatch` watches one folder (recursively) with watchdog and hands the daemon
``CREATED``/``DELETED`` events for the keys that changed, about ``settle`` to ``2 * settle``
seconds after the change. The daemon applies them to the dataset bound to the folder. What a
key's size, ETag and skip status are comes from :func:`providers.local.stat_object`, the same
function the local driver's listing uses, so a watch and a listing never disagree.

Contract
--------

* **Threads.** Watchdog's observer threads (inotify on Linux) only append raw events to an
  inbox and wake the event loop with ``loop.call_soon_threadsafe``; all state lives on the
  loop. Starting the observer (which walks the tree to add its watches), batches of more than
  a few ``stat`` calls and directory walks run in worker threads, so the loop never blocks.
* **Debounce.** Events are collected per key; a key is looked at once it has been quiet (no
  event) for ``settle`` seconds, with a fresh ``stat`` taken then: size, ETag and ``event_time``
  (the file's mtime) are what the file is *at publish time*, never what an event said.
* **Stability.** A file is published as ``CREATED`` only once it is complete: closed after
  writing (``FileClosedEvent``) or renamed into place, or else its size and mtime stayed the
  same across one settle period. A file a writer still holds open (modified and not closed
  yet, or created and opened and not closed yet) waits until it is closed, or until its size
  and mtime have not changed for ``open_timeout`` seconds (a writer that keeps a file open
  for good, like a log). So a file being written is not published half-way.
* **Moves.** A move inside the tree is a ``DELETED`` of the old key plus a ``CREATED`` of the
  new one (in the same batch). Moved out of the tree: ``DELETED``; moved in: ``CREATED``.
* **Directories.** A created or moved-in directory is walked (with the driver's own listing)
  and every file under it is published as ``CREATED`` (files in a directory moved *inside* the
  tree also give a ``DELETED`` of their old keys). A directory deleted or moved out of the tree
  leaves keys the watch cannot name (it does not know the catalog), so it requests a rescan:
  ``on_overflow()`` is awaited, after the batch of the same step. So it is when the kernel's
  event queue overflows (watchdog 7 reports that; earlier versions drop it silently), and
  when the observer dies or the root folder is removed or replaced: then the watch also tries
  to restart its observer (every few seconds, backing off to a minute) and requests one more
  rescan once it is running again.
* **What is never published:** keys outside ``prefix``, the driver's temporary files
  (``TMP_SUFFIX``), names that are not UTF-8, and entries the listing skips (a symlink leaving
  the folder or pointing to a folder, fifos, ...) or never reaches (below a symlinked folder).
  When a key that may have held an object is now one of those, it is published as
  ``DELETED`` (a listing would drop it too); the daemon applies a delete of an unknown key as
  a no-op.
* **Batches.** One ``sink`` call per step with every event that became ready, keys sorted,
  ``provider="local"``, ``bucket`` = the real path of the root (as ``LocalDriver.bucket``),
  ``marker=None``; ``event_time`` is the file's mtime for ``CREATED``, now for ``DELETED``.
  Steps run at most every ``settle / 4`` seconds.
* **Failures.** If ``sink`` (or ``on_overflow``) raises, the error is logged and nothing is
  lost: the events stay queued (a newer state of a key replaces an older one) and are offered
  again with the next step, at the latest after a back-off of ``settle`` doubling to a minute.
* **Lifetime.** ``await start()`` raises :class:`WatchLimitError` when inotify's limits do not
  allow the watch and ``BucketNotFound`` when the folder does not exist. ``await stop()``
  cancels the work in progress (including a ``sink`` call), drops changes not yet published
  (the daemon rescans at start), and returns once every observer thread has ended. Also
  usable as ``async with FolderWatch(...) as watch:``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import stat
import sys
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver

from providers import errors
from providers.base import ObjectInfo
from providers.local import TMP_SUFFIX, LocalDriver, Skipped, is_utf8, stat_object
from syncd.errors import SyncdError
from syncd.events.parse import EventKind, ObjectEvent

log = logging.getLogger("syncd.daemon.watch")

Sink = Callable[[list[ObjectEvent]], Awaitable[None]]
OverflowHandler = Callable[[], Awaitable[None]]
_Found = ObjectInfo | Skipped | OSError | None  # what one look at a key gives

#: up to this many ``stat`` calls per step run on the loop (each takes microseconds); more go
#: to one worker thread, so a big copy does not stall the loop
INLINE_STATS = 32
#: how often the observer's threads and the root folder are checked
HEALTH_INTERVAL = 1.0
#: the longest wait between two attempts to deliver, or to restart the observer
MAX_BACKOFF = 60.0

_IN_DELETE_SELF = 0x400


class WatchLimitError(SyncdError):
    """The kernel's inotify limits do not allow watching the folder (message says how to fix)."""


@dataclass(slots=True)
class _Pending:
    """What the watch knows about one key since it was last published."""

    due: float  # loop time at which to look at the key (last event + settle)
    existed: bool  # an object may have been at this key before this window began
    gen: int = 0  # bumped by every event; a stat taken before the bump is stale
    opens: int = 0  # opens seen in this window and not closed yet
    writing: bool = False  # modified since the last close-after-write
    complete: bool = False  # closed after writing, or renamed into place, since then
    seen: tuple[int, str] | None = None  # (size, etag) at the previous look
    seen_at: float = 0.0  # when ``seen`` was first observed


@dataclass(slots=True)
class _Walk:
    """A directory that appeared (``src`` is None) or moved inside the tree (from ``src``)."""

    due: float
    complete: bool  # moved: its files are complete; created: they may still be written


@dataclass(slots=True)
class _Retry:
    """When a failed delivery may be tried again: back-off from ``settle`` up to MAX_BACKOFF."""

    first: float
    at: float = 0.0
    delay: float = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.at

    def failed(self, now: float) -> None:
        self.delay = min(self.delay * 2, MAX_BACKOFF) if self.delay else self.first
        self.at = now + self.delay

    def succeeded(self) -> None:
        self.at, self.delay = 0.0, 0.0


class _Overflow:
    """Inbox marker: the kernel dropped events (queue overflow)."""


_OVERFLOW = _Overflow()


class _Handler(FileSystemEventHandler):
    """Forwards every watchdog event, unfiltered, to the watch's inbox (observer thread)."""

    def __init__(self, feed: Callable[[FileSystemEvent | _Overflow], None]) -> None:
        super().__init__()
        self._feed = feed

    def dispatch(self, event: FileSystemEvent) -> None:
        self._feed(event)


class FolderWatch:
    """Watch the folder ``root`` and publish its changes to ``sink`` (see the module docstring).

    ``prefix`` limits the keys published (a plain string prefix, as in listings). ``settle`` is
    the quiet time before a key is looked at. ``on_overflow`` is awaited when a rescan is
    needed; without it the request is only logged. ``open_timeout`` is how long a file still
    held open by a writer must stay unchanged before it is published anyway.
    """

    def __init__(
        self,
        root: str,
        sink: Sink,
        *,
        prefix: str = "",
        settle: float = 0.5,
        on_overflow: OverflowHandler | None = None,
        open_timeout: float = 30.0,
    ) -> None:
        if settle <= 0:
            raise ValueError("settle must be positive")
        self.root = os.path.realpath(root)
        self.bucket = self.root  # what LocalDriver(root).bucket is, so routing matches
        self.prefix = prefix
        self.settle = settle
        self.open_timeout = max(open_timeout, settle)
        self._sink = sink
        self._on_overflow = on_overflow
        self._driver = LocalDriver(self.root)
        self._root_sep = self.root.rstrip(os.sep) + os.sep

        self._pending: OrderedDict[str, _Pending] = OrderedDict()  # due times never decrease
        self._walks: OrderedDict[tuple[str, str | None], _Walk] = OrderedDict()
        self._unsent: dict[str, ObjectEvent] = {}
        self._rescan_wanted = 0  # rescan requests made ...
        self._rescan_done = 0  # ... and the count already answered by on_overflow
        # separate, so a failing on_overflow does not hold events back, nor the reverse
        self._sink_retry = _Retry(first=settle)
        self._rescan_retry = _Retry(first=settle)

        self._inbox: list[FileSystemEvent | _Overflow] = []
        self._inbox_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._observer: BaseObserver | None = None
        self._starting: asyncio.Future[BaseObserver] | None = None  # an observer start in a thread
        self._closing: list[asyncio.Task[None]] = []  # observers abandoned by a cancelled start
        self._root_id: tuple[int, int] | None = None
        self._next_health = 0.0
        self._restart_at: float | None = None  # set while the observer is down
        self._restart_backoff = 1.0

    # -- lifetime ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the observer (its initial walk runs in a thread) and the settle loop."""
        if self._loop is not None:
            raise RuntimeError("FolderWatch.start() called twice")
        self._loop = asyncio.get_running_loop()
        try:
            self._observer = await self._open_observer()
        except BaseException:
            self._loop = None  # nothing runs: start() may be tried again
            raise
        self._next_health = self._loop.time() + HEALTH_INTERVAL
        self._task = asyncio.create_task(self._run(), name=f"folder-watch {self.root}")

    async def stop(self) -> None:
        """Stop watching; returns once the settle loop and every observer thread have ended."""
        with self._state_lock:
            self._stopping = True  # an observer start still in a thread closes itself
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                log.error(
                    "folder watch of %s ended with an error", self.root, exc_info=task.exception()
                )
        if self._starting is not None:
            # a start cancelled half-way: its thread sees _stopping and closes its observer,
            # or (if already past that check) _abandoned() queues the close awaited below
            await asyncio.wait([self._starting])
        while self._closing:
            await asyncio.wait([self._closing.pop()])
        observer, self._observer = self._observer, None
        if observer is not None:
            await asyncio.to_thread(_discard, observer)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def observer(self) -> BaseObserver | None:
        """The running watchdog observer (None while it is down); for tests and diagnostics."""
        return self._observer

    # -- the observer (worker threads) ---------------------------------------------------

    async def _open_observer(self) -> BaseObserver:
        """Start an observer in a worker thread; a cancelled caller does not leak it."""
        fut = asyncio.ensure_future(asyncio.to_thread(self._start_observer))
        self._starting = fut
        try:
            # a worker thread cannot be interrupted: shield it, and if we are cancelled let
            # it finish and close whatever it opened
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(self._abandoned)
            raise
        finally:
            if fut.done():
                self._starting = None

    def _abandoned(self, fut: asyncio.Future[BaseObserver]) -> None:
        if self._starting is fut:
            self._starting = None
        if fut.cancelled() or fut.exception() is not None:
            return
        # fut's own loop: self._loop is already reset when the first start() was cancelled
        self._closing.append(fut.get_loop().create_task(asyncio.to_thread(_discard, fut.result())))

    def _start_observer(self) -> BaseObserver:
        """Create, schedule and start an observer; map inotify's limits to WatchLimitError."""
        try:
            st = os.stat(self.root)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise errors.BucketNotFound("local", self.bucket, "folder does not exist")
        observer: BaseObserver | None = None
        try:
            observer = _new_observer()
            observer.schedule(_Handler(self._feed), self.root, recursive=True)
            observer.start()  # adds the watches, walking the tree, in this thread
            _check_watch_room(self.root)
            self._hook_overflow(observer)
        except BaseException as exc:
            if observer is not None:
                _discard(observer)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EMFILE):
                raise WatchLimitError(_limit_message(self.root, exc.errno)) from exc
            raise
        with self._state_lock:
            if self._stopping:
                _discard(observer)
                raise RuntimeError("folder watch stopped while its observer started")
        self._root_id = (st.st_dev, st.st_ino)
        return observer

    def _hook_overflow(self, observer: BaseObserver) -> None:
        """Have the inotify watch group tell us about queue overflows (watchdog 7).

        Watchdog 7 rebuilds its watches after an ``IN_Q_OVERFLOW`` but only logs it; the
        events it lost are lost for us too, so we need to know to request a rescan. Its watch
        group (``emitter._inotify``) is internal: where it is absent this does nothing (older
        versions drop overflows silently), and the test suite notices.
        """
        for emitter in list(observer.emitters):
            group = getattr(emitter, "_inotify", None)
            original = getattr(group, "on_queue_overflow", None)
            if group is None or not callable(original):
                continue

            def on_queue_overflow(original: Callable[[], None] = original) -> None:
                try:
                    original()
                finally:
                    self._feed(_OVERFLOW)

            group.on_queue_overflow = on_queue_overflow

    def _feed(self, event: FileSystemEvent | _Overflow) -> None:
        """Observer threads: queue a raw event; wake the loop once per burst, not per event."""
        with self._inbox_lock:
            self._inbox.append(event)
            first = len(self._inbox) == 1
        if first and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the watch is over
                self._loop.call_soon_threadsafe(self._drain)

    def _observer_ok(self) -> bool:
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        if not all(emitter.is_alive() for emitter in list(observer.emitters)):
            return False  # an emitter stops itself when the root is deleted
        reader = getattr(observer, "_inotify_fd", None)  # watchdog 7's reading thread
        if isinstance(reader, threading.Thread) and not reader.is_alive():
            return False
        try:
            st = os.stat(self.root)
        except OSError:
            return False
        # a root replaced or moved away leaves the watches on the old directory
        return (st.st_dev, st.st_ino) == self._root_id

    async def _check_observer(self, now: float) -> None:
        if self._restart_at is None:
            if self._observer_ok():
                return
            self._request_rescan("the watch stopped (folder removed or replaced, or a thread died)")
            observer, self._observer = self._observer, None
            if observer is not None:
                await asyncio.to_thread(_discard, observer)
            self._restart_at = now
            self._restart_backoff = 1.0
        if now < self._restart_at:
            return
        try:
            self._observer = await self._open_observer()
        except Exception as exc:  # folder missing, limits, ...: all retried the same way
            assert self._loop is not None
            self._restart_at = self._loop.time() + self._restart_backoff
            log.warning(
                "folder watch of %s cannot restart: %s; trying again in %.0fs",
                self.root,
                exc,
                self._restart_backoff,
            )
            self._restart_backoff = min(self._restart_backoff * 2, MAX_BACKOFF)
            return
        self._restart_at = None
        log.info("folder watch of %s restarted", self.root)
        self._request_rescan("changes made while the watch was down were not seen")

    # -- raw events (event loop) ---------------------------------------------------------

    def _drain(self) -> None:
        with self._inbox_lock:
            batch, self._inbox = self._inbox, []
        assert self._loop is not None
        now = self._loop.time()
        for event in batch:
            try:
                self._on_event(event, now)
            except Exception:
                log.exception("folder watch of %s: cannot handle %r", self.root, event)
        self._wake.set()

    def _key(self, path: bytes | str) -> str | None:
        """The key of an event path: "" for the root, None outside the tree (or no path)."""
        text = os.fsdecode(path)
        if not text:
            return None
        if text == self.root:
            return ""
        if not text.startswith(self._root_sep):
            return None
        return text[len(self._root_sep) :].replace(os.sep, "/")

    def _file_key(self, key: str | None) -> bool:
        """Whether events on ``key`` may ever be published."""
        if not key:
            return False  # outside the tree, or the root itself
        return (
            key.startswith(self.prefix)
            and not key.endswith(TMP_SUFFIX)
            and is_utf8(key)  # no catalog can hold it; a listing skips it too
        )

    def _dir_relevant(self, key: str) -> bool:
        if not key:
            return True
        return (key + "/").startswith(self.prefix) or self.prefix.startswith(key + "/")

    def _on_event(self, event: FileSystemEvent | _Overflow, now: float) -> None:
        if isinstance(event, _Overflow):
            self._request_rescan("the kernel's inotify queue overflowed")
            return
        if event.is_synthetic:
            # watchdog's guesses for the contents of moved directories: our own walk of the
            # directory (see _walk) covers them, from the disk
            return
        kind = event.event_type
        src = self._key(event.src_path)
        dest = self._key(event.dest_path) if kind == "moved" else None
        if event.is_directory:
            self._on_directory(kind, src, dest, now)
            return
        if kind == "moved":
            if self._file_key(src):
                assert src is not None
                self._gone(src, now)
            if self._file_key(dest):
                assert dest is not None
                rec = self._touch(dest, now, existed=True)  # a rename may replace a file
                rec.writing, rec.complete, rec.opens = False, True, 0
            return
        if not self._file_key(src):
            return
        assert src is not None
        if kind == "created":
            # with full events, "created" is a real IN_CREATE: nothing was at this path
            self._touch(src, now, existed=False).complete = False
        elif kind == "modified":
            rec = self._touch(src, now)
            rec.writing, rec.complete = True, False
        elif kind == "closed":
            rec = self._touch(src, now)
            rec.writing, rec.complete, rec.opens = False, True, max(0, rec.opens - 1)
        elif kind == "attrib":
            fresh = src not in self._pending
            rec = self._touch(src, now)
            if fresh:
                rec.complete = True  # a metadata change alone (touch -m, chmod) is instant
        elif kind == "deleted":
            self._gone(src, now)
        elif kind == "opened":
            # opens and read-only closes do not change a file: they only tell whether a
            # file we already wait for is still held open
            if (rec := self._pending.get(src)) is not None:
                rec.opens += 1
        elif kind == "closed_no_write" and (rec := self._pending.get(src)) is not None:
            rec.opens = max(0, rec.opens - 1)

    def _on_directory(self, kind: str, src: str | None, dest: str | None, now: float) -> None:
        if kind == "created" and src and self._dir_relevant(src):
            self._walk_later(src, None, complete=False, now=now)
        elif kind == "deleted" and src is not None and self._dir_relevant(src):
            self._request_rescan(f"folder {src or '.'!r} was deleted")
        elif kind == "moved":
            if dest:
                if self._dir_relevant(dest) or (src is not None and self._dir_relevant(src)):
                    self._walk_later(dest, src or None, complete=True, now=now)
            elif src is not None and self._dir_relevant(src):
                self._request_rescan(f"folder {src or '.'!r} was moved out of the watched tree")

    def _touch(self, key: str, now: float, *, existed: bool = True) -> _Pending:
        """Note an event on ``key``: it will be looked at once quiet for ``settle``."""
        rec = self._pending.get(key)
        if rec is None:
            rec = self._pending[key] = _Pending(due=0.0, existed=existed)
        else:
            self._pending.move_to_end(key)  # keeps due times in order: now only grows
        rec.gen += 1
        rec.due = now + self.settle
        rec.seen = None  # the file changed (or may have): stability is measured afresh
        return rec

    def _gone(self, key: str, now: float) -> _Pending:
        rec = self._touch(key, now)
        rec.writing, rec.complete, rec.opens = False, False, 0
        return rec

    def _walk_later(self, dest: str, src: str | None, *, complete: bool, now: float) -> None:
        key = (dest, src)
        if key in self._walks:
            self._walks.move_to_end(key)
        self._walks[key] = _Walk(due=now + self.settle, complete=complete)

    def _request_rescan(self, reason: str) -> None:
        log.warning("folder watch of %s: rescan needed: %s", self.root, reason)
        self._rescan_wanted += 1
        self._wake.set()

    # -- the settle loop -----------------------------------------------------------------

    async def _run(self) -> None:
        assert self._loop is not None
        loop = self._loop
        next_step = 0.0
        while True:
            try:
                now = loop.time()
                if now >= self._next_health:
                    self._next_health = now + HEALTH_INTERVAL
                    await self._check_observer(now)
                    now = loop.time()
                wake_at = self._wake_at(next_step)
                if wake_at > now:
                    self._wake.clear()
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
                    # cancellation that comes once the wake fired, and stop() hangs
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wake_at - now):
                            await self._wake.wait()
                    continue
                next_step = now + self.settle / 4
                await self._step(now)
            except asyncio.CancelledError:
                raise
            except Exception:
                # a bug or an unexpected OS error must not end the watch for good
                log.exception("folder watch of %s: step failed; continuing", self.root)
                await asyncio.sleep(self.settle)

    def _wake_at(self, next_step: float) -> float:
        wake_at = self._next_health
        due = [q[next(iter(q))].due for q in (self._pending, self._walks) if q]
        if due:
            wake_at = min(wake_at, max(min(due), next_step))
        if self._unsent:
            wake_at = min(wake_at, max(self._sink_retry.at, next_step))
        if self._rescan_wanted > self._rescan_done:
            wake_at = min(wake_at, max(self._rescan_retry.at, next_step))
        return wake_at

    async def _step(self, now: float) -> None:
        """Walk due directories, look at due keys, publish what is ready, then deliver."""
        assert self._loop is not None
        look_now: list[str] = []
        while self._walks:
            (dest, src), walk = next(iter(self._walks.items()))
            if walk.due > now:
                break
            del self._walks[(dest, src)]
            look_now += await self._walk(dest, src, walk.complete)
        keys = list(dict.fromkeys(look_now))
        for key, rec in self._pending.items():
            if rec.due > now:
                break  # due times are in order
            keys.append(key)
        keys = list(dict.fromkeys(keys))
        if keys:
            snapshot = [(key, self._pending[key], self._pending[key].gen) for key in keys]
            if len(keys) <= INLINE_STATS:
                found = _stat_all(self.root, keys)
            else:
                found = await asyncio.to_thread(_stat_all, self.root, keys)
            later = self._loop.time()
            for (key, rec, gen), info in zip(snapshot, found, strict=True):
                if self._pending.get(key) is not rec or rec.gen != gen:
                    continue  # an event came while we looked: its own due time will come
                event, done = self._decide(key, rec, info, now)
                if done:
                    del self._pending[key]
                    if event is not None:
                        self._unsent[key] = event  # a newer state replaces an unsent older
                else:
                    rec.due = later + self.settle
                    self._pending.move_to_end(key)
        if self._unsent and self._sink_retry.ready(now):
            await self._deliver()
        # after the batch, so a rescan it triggers sees at least what the batch said
        if self._rescan_wanted > self._rescan_done and self._rescan_retry.ready(now):
            await self._rescan()

    def _decide(
        self, key: str, rec: _Pending, found: _Found, now: float
    ) -> tuple[ObjectEvent | None, bool]:
        """The event to publish for ``key`` (if any), and whether the key is done."""
        if isinstance(found, OSError):
            # a listing would fail here too (e.g. a folder we may not read): say so, and
            # leave the key to the next sync rather than guess
            log.warning("folder watch of %s: cannot look at %r: %s", self.root, key, found)
            return None, True
        if not isinstance(found, ObjectInfo):
            if isinstance(found, Skipped):
                log.info("folder watch of %s: %r not published: %s", self.root, key, found.reason)
            if not rec.existed:
                return None, True  # appeared and vanished (or is skipped) within the window
            return self._event(EventKind.DELETED, key), True
        if rec.complete:
            return self._event(EventKind.CREATED, key, found), True
        busy = rec.writing or rec.opens > 0
        signature = (found.size, found.etag)
        if rec.seen != signature:
            rec.seen, rec.seen_at = signature, now
            return None, False
        if now - rec.seen_at >= (self.open_timeout if busy else self.settle):
            return self._event(EventKind.CREATED, key, found), True
        return None, False

    def _event(self, kind: EventKind, key: str, info: ObjectInfo | None = None) -> ObjectEvent:
        if info is None:
            return ObjectEvent(
                kind=kind,
                provider="local",
                bucket=self.bucket,
                key=key,
                event_time=datetime.now(UTC),
            )
        return ObjectEvent(
            kind=kind,
            provider="local",
            bucket=self.bucket,
            key=key,
            size=info.size,
            etag=info.etag,
            content_type=info.content_type,
            event_time=info.last_modified,
        )

    async def _walk(self, dest: str, src: str | None, complete: bool) -> list[str]:
        """Note every file under ``dest`` (and, for a move, its old key under ``src``).

        Returns the keys to look at in this step: files renamed into place and old keys
        (both known now), as opposed to files of a new directory, which must prove stable.
        """
        assert self._loop is not None
        look_now: list[str] = []
        try:
            async for page in self._driver.list(prefix=dest + "/"):
                now = self._loop.time()
                for info in page:
                    rel = info.key[len(dest) + 1 :]
                    old = f"{src}/{rel}" if src is not None else None
                    if old is not None and self._file_key(old):
                        self._gone(old, now)
                        look_now.append(old)
                    if not self._file_key(info.key):
                        continue
                    rec = self._pending.get(info.key)
                    if rec is not None:
                        # a key with events of its own: they know better, except that a
                        # file nobody writes in a moved directory is complete
                        if complete and not rec.writing and rec.opens == 0:
                            rec.complete = True
                            look_now.append(info.key)
                        continue
                    rec = self._touch(info.key, now, existed=False)
                    if complete:
                        rec.complete = True
                        look_now.append(info.key)
                    else:
                        rec.seen, rec.seen_at = (info.size, info.etag), now
        except errors.BucketNotFound:
            pass  # the root went away; the health check requests a rescan
        except OSError as exc:
            self._request_rescan(f"cannot walk folder {dest!r}: {exc}")
        return look_now

    async def _deliver(self) -> None:
        """One sink call with every unsent event, keys sorted; kept if the sink raises."""
        assert self._loop is not None
        batch = [self._unsent[key] for key in sorted(self._unsent)]
        try:
            await self._sink(batch)
        except Exception:
            self._sink_retry.failed(self._loop.time())
            log.exception(
                "folder watch of %s: sink failed on %d events; kept, next attempt in %.1fs",
                self.root,
                len(batch),
                self._sink_retry.delay,
            )
            return
        self._sink_retry.succeeded()
        for event in batch:
            if self._unsent.get(event.key) is event:
                del self._unsent[event.key]

    async def _rescan(self) -> None:
        """Await on_overflow once for all requests so far; retried if it raises."""
        assert self._loop is not None
        wanted = self._rescan_wanted
        if self._on_overflow is None:
            log.warning("folder watch of %s: no on_overflow handler; rescan skipped", self.root)
        else:
            try:
                await self._on_overflow()
            except Exception:
                self._rescan_retry.failed(self._loop.time())
                log.exception(
                    "folder watch of %s: on_overflow failed; next attempt in %.1fs",
                    self.root,
                    self._rescan_retry.delay,
                )
                return
        self._rescan_retry.succeeded()
        self._rescan_done = wanted  # requests made while it ran get their own call


def _stat_all(root: str, keys: list[str]) -> list[_Found]:
    found: list[_Found] = []
    for key in keys:
        try:
            found.append(stat_object(root, key))
        except OSError as exc:
            found.append(exc)
    return found


def _new_observer() -> BaseObserver:
    """An inotify observer with *full* events on Linux, else the platform's default.

    Full events keep an unpaired move as a move (``src`` or ``dest`` empty) instead of a
    plain create/delete, so a ``created`` event really means nothing was at that path.
    """
    if sys.platform.startswith("linux"):
        try:
            from watchdog.observers.inotify import InotifyObserver
        except Exception:  # libc without inotify: fall back below
            pass
        else:
            return InotifyObserver(generate_full_events=True)
    from watchdog.observers import Observer

    return Observer()


def _discard(observer: BaseObserver) -> None:
    """Stop an observer and wait for its threads (blocking; call it from a worker thread)."""
    observer.stop()
    if observer.is_alive():
        observer.join()


def _check_watch_room(root: str) -> None:
    """Raise WatchLimitError if no inotify watch is left for this user (Linux only).

    Watchdog 7 ignores a failure to watch a *sub*-folder (only the root's is raised), so a
    tree bigger than ``fs.inotify.max_user_watches`` would start with folders silently
    unwatched. Adding one more watch on a fresh inotify instance tells: if even that fails
    with ENOSPC, the limit was hit while our watches were added.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init1, add_watch = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        return
    fd = init1(os.O_CLOEXEC)
    if fd < 0:
        if ctypes.get_errno() == errno.EMFILE:
            raise WatchLimitError(_limit_message(root, errno.EMFILE))
        return
    try:
        failed = add_watch(fd, os.fsencode(root), _IN_DELETE_SELF) < 0
        if failed and ctypes.get_errno() == errno.ENOSPC:
            raise WatchLimitError(_limit_message(root, errno.ENOSPC))
    finally:
        os.close(fd)


def _limit_message(root: str, err: int) -> str:
    if err == errno.EMFILE:
        name, suggested, what = "max_user_instances", 1024, "inotify instance"
    else:
        name, suggested, what = "max_user_watches", 524288, "inotify watch"
    try:
        with open(f"/proc/sys/fs/inotify/{name}") as fh:
            current = fh.read().strip()
    except OSError:
        current = "unknown"
    return (
        f"cannot watch {root}: the {what} limit is reached "
        f"(fs.inotify.{name} = {current}; watches are one per folder of the tree, shared by all "
        f"of this user's processes). Raise it with `sudo sysctl fs.inotify.{name}={suggested}` "
        f"(and a line in /etc/sysctl.d/ to keep it), or watch fewer folders"
    )
