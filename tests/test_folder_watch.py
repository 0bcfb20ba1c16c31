"""FolderWatch against real files and the real watchdog observer.

No test sleeps to synchronise: each waits (with a generous deadline) for what the sink
received. To assert that something was *not* published, a test writes a "barrier" file after
the change and waits for the barrier's CREATED: the watch handles events in order and looks at
keys in the order they went quiet, so by then anything the change would publish is published.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from watchdog.utils import BaseThread

from providers import BucketNotFound
from providers.base import ObjectInfo
from providers.local import LocalDriver, Skipped, stat_object
from syncd.daemon import watch as watch_module
from syncd.daemon.watch import FolderWatch, WatchLimitError
from syncd.events.parse import EventKind, ObjectEvent

SETTLE = 0.2
DEADLINE = 10.0


class Sink:
    """Records every batch the watch delivers; can be told to fail the next calls."""

    def __init__(self) -> None:
        self.batches: list[list[ObjectEvent]] = []
        self.failed: list[list[ObjectEvent]] = []
        self.fail_next = 0
        self.changed = asyncio.Condition()

    async def __call__(self, batch: list[ObjectEvent]) -> None:
        async with self.changed:
            if self.fail_next:
                self.fail_next -= 1
                self.failed.append(batch)
                raise RuntimeError("sink is down")
            self.batches.append(batch)
            self.changed.notify_all()

    @property
    def events(self) -> list[ObjectEvent]:
        return [event for batch in self.batches for event in batch]

    def of(self, key: str, kind: EventKind | None = None) -> list[ObjectEvent]:
        return [e for e in self.events if e.key == key and (kind is None or e.kind is kind)]

    async def wait(self, what: Callable[[], bool]) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(what), DEADLINE)

    async def wait_created(self, key: str) -> ObjectEvent:
        await self.wait(lambda: bool(self.of(key, EventKind.CREATED)))
        return self.of(key, EventKind.CREATED)[-1]


class Rescans:
    """An ``on_overflow`` handler that counts its (successful) calls; can fail the next ones."""

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.fail_next = 0
        self.called = asyncio.Event()

    async def __call__(self) -> None:
        if self.fail_next:
            self.fail_next -= 1
            self.failures += 1
            raise RuntimeError("rescan is down")
        self.calls += 1
        self.called.set()

    async def wait(self) -> None:
        await asyncio.wait_for(self.called.wait(), DEADLINE)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


_barriers = iter(range(1_000_000))


async def barrier(root: Path, sink: Sink, folder: str = "") -> None:
    """Create a new file and wait for its CREATED (see the module docstring)."""
    key = f"{folder}zz-barrier-{next(_barriers)}"
    (root / key).write_bytes(b"b")
    await sink.wait_created(key)


async def listing(root: Path) -> dict[str, ObjectInfo]:
    driver = LocalDriver(str(root))
    return {info.key: info async for page in driver.list() for info in page}


def watchdog_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if isinstance(t, BaseThread) and t.is_alive()}


# -- the shared rule ----------------------------------------------------------------------


async def test_stat_object_agrees_with_the_listing(root: Path, tmp_path: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "f.txt").write_bytes(b"12345")
    (root / "g.bin").write_bytes(b"")
    (tmp_path / "secret").write_text("no")
    os.symlink(tmp_path / "secret", root / "out-link")
    os.symlink(root / "d", root / "dir-link")
    os.symlink(root / "g.bin", root / "in-link")
    (root / ".h.syncd-tmp").write_bytes(b"half")
    listed = await listing(root)
    assert sorted(listed) == ["d/f.txt", "g.bin", "in-link"]
    for key, info in listed.items():
        assert stat_object(str(root), key) == info
    assert isinstance(stat_object(str(root), "out-link"), Skipped)
    assert isinstance(stat_object(str(root), "dir-link"), Skipped)
    assert stat_object(str(root), ".h.syncd-tmp") is None
    assert stat_object(str(root), "dir-link/f.txt") is None  # listings never descend a link
    assert stat_object(str(root), "d") is None
    assert stat_object(str(root), "missing") is None


# -- files ----------------------------------------------------------------------------------


async def test_created_file_is_published_once_as_the_listing_sees_it(root: Path) -> None:
    sink = Sink()
    async with FolderWatch(str(root), sink, settle=SETTLE) as watch:
        (root / "a.txt").write_bytes(b"hello")
        event = await sink.wait_created("a.txt")
        await barrier(root, sink)
    info = (await listing(root))["a.txt"]
    assert len(sink.of("a.txt")) == 1
    assert (event.size, event.etag, event.event_time) == (info.size, info.etag, info.last_modified)
    assert (event.provider, event.bucket) == ("local", os.path.realpath(root))
    assert watch.bucket == LocalDriver(str(root)).bucket
    assert event.content_type == "text/plain"


async def test_file_written_in_chunks_is_published_only_complete(root: Path) -> None:
    sink = Sink()
    chunk = b"x" * 65536
    first_written, finish = threading.Event(), threading.Event()

    def writer() -> None:
        with open(root / "big.bin", "wb") as fh:
            fh.write(chunk)
            fh.flush()
            first_written.set()
            # the test lets us finish once the watch has had time to (wrongly) publish
            if not finish.wait(DEADLINE * 3):
                return
            for _ in range(3):
                fh.write(chunk)
                fh.flush()

    async with FolderWatch(str(root), sink, settle=SETTLE, open_timeout=120):
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            assert await asyncio.to_thread(first_written.wait, DEADLINE)
            # two barriers in a row: the open file went quiet before the first and was
            # looked at, with the same size, at least a settle period apart
            await barrier(root, sink)
            await barrier(root, sink)
            assert sink.of("big.bin") == []
        finally:
            finish.set()
            await asyncio.to_thread(thread.join)
        await sink.wait_created("big.bin")
        await barrier(root, sink)
    created = sink.of("big.bin", EventKind.CREATED)
    assert [e.size for e in created] == [4 * len(chunk)]
    assert created[0].etag == (await listing(root))["big.bin"].etag


async def test_overwrite_publishes_the_new_etag(root: Path) -> None:
    sink = Sink()
    async with FolderWatch(str(root), sink, settle=SETTLE):
        (root / "a.txt").write_bytes(b"one")
        first = await sink.wait_created("a.txt")
        (root / "a.txt").write_bytes(b"second version")
        await sink.wait(lambda: sink.of("a.txt")[-1].etag != first.etag)
    last = sink.of("a.txt")[-1]
    info = (await listing(root))["a.txt"]
    assert (last.kind, last.size, last.etag) == (EventKind.CREATED, info.size, info.etag)


async def test_delete_publishes_deleted(root: Path) -> None:
    sink = Sink()
    async with FolderWatch(str(root), sink, settle=SETTLE):
        (root / "a.txt").write_bytes(b"one")
        await sink.wait_created("a.txt")
        before = datetime.now(UTC)
        (root / "a.txt").unlink()
        await sink.wait(lambda: bool(sink.of("a.txt", EventKind.DELETED)))
    deleted = sink.of("a.txt")[-1]
    assert deleted.kind is EventKind.DELETED
    assert deleted.event_time is not None and deleted.event_time >= before - timedelta(seconds=1)


async def test_rename_inside_is_deleted_plus_created(root: Path) -> None:
    sink = Sink()
    async with FolderWatch(str(root), sink, settle=SETTLE):
        (root / "a.txt").write_bytes(b"content")
        await sink.wait_created("a.txt")
        seen = len(sink.batches)
        (root / "a.txt").rename(root / "b.txt")
        await sink.wait(
            lambda: bool(
                sink.of("a.txt", EventKind.DELETED) and sink.of("b.txt", EventKind.CREATED)
            )
        )
    involved = [
        batch for batch in sink.batches[seen:] if {e.key for e in batch} & {"a.txt", "b.txt"}
    ]
    assert 1 <= len(involved) <= 2
    info = (await listing(root))["b.txt"]
    created = sink.of("b.txt", EventKind.CREATED)[-1]
    assert (created.size, created.etag) == (info.size, info.etag)
    for batch in sink.batches:
        assert [e.key for e in batch] == sorted(e.key for e in batch)


# -- directories ----------------------------------------------------------------------------


async def test_directory_moved_in_publishes_its_files(root: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging" / "d"
    (staging / "sub").mkdir(parents=True)
    for name in ("1.txt", "2.txt", "sub/3.txt"):
        (staging / name).write_bytes(name.encode())
    sink = Sink()
    async with FolderWatch(str(root), sink, settle=SETTLE):
        os.rename(staging, root / "d")
        keys = ["d/1.txt", "d/2.txt", "d/sub/3.txt"]
        await sink.wait(lambda: all(sink.of(k, EventKind.CREATED) for k in keys))
    listed = await listing(root)
    for key in keys:
        event = sink.of(key, EventKind.CREATED)[-1]
        assert (event.size, event.etag) == (listed[key].size, listed[key].etag)


async def test_directory_moved_inside_moves_its_keys(root: Path) -> None:
    (root / "d").mkdir()
    for name in ("1.txt", "2.txt", "3.txt"):
        (root / "d" / name).write_bytes(name.encode())
    sink = Sink()
    async with FolderWatch(str(root), sink, settle=SETTLE):
        os.rename(root / "d", root / "e")
        names = ("1.txt", "2.txt", "3.txt")
        await sink.wait(
            lambda: all(
                sink.of(f"d/{n}", EventKind.DELETED) and sink.of(f"e/{n}", EventKind.CREATED)
                for n in names
            )
        )


async def test_new_directory_with_files_is_published(root: Path) -> None:
    sink = Sink()
    async with FolderWatch(str(root), sink, settle=SETTLE):
        (root / "n" / "m").mkdir(parents=True)
        (root / "n" / "m" / "x.txt").write_bytes(b"x")
        (root / "n" / "y.txt").write_bytes(b"yy")
        await sink.wait(
            lambda: bool(sink.of("n/m/x.txt", EventKind.CREATED) and sink.of("n/y.txt"))
        )
    assert sink.of("n/y.txt")[-1].size == 2


async def test_deleted_directory_requests_a_rescan(root: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "x.txt").write_bytes(b"x")
    sink, rescans = Sink(), Rescans()
    async with FolderWatch(str(root), sink, settle=SETTLE, on_overflow=rescans):
        await barrier(root, sink)
        assert rescans.calls == 0
        shutil.rmtree(root / "d")
        await rescans.wait()


async def test_directory_moved_out_requests_a_rescan(root: Path, tmp_path: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "x.txt").write_bytes(b"x")
    sink, rescans = Sink(), Rescans()
    async with FolderWatch(str(root), sink, settle=SETTLE, on_overflow=rescans):
        os.rename(root / "d", tmp_path / "away")
        await rescans.wait()


async def test_removed_root_requests_a_rescan(tmp_path: Path) -> None:
    root = tmp_path / "gone"
    root.mkdir()
    sink, rescans = Sink(), Rescans()
    async with FolderWatch(str(root), sink, settle=SETTLE, on_overflow=rescans):
        root.rmdir()
        await rescans.wait()


# -- what is never published ---------------------------------------------------------------


async def test_skipped_and_temporary_entries_are_never_published(
    root: Path, tmp_path: Path
) -> None:
    (tmp_path / "secret").write_text("not yours")
    (tmp_path / "elsewhere").mkdir()
    sink = Sink()
    async with FolderWatch(str(root), sink, settle=SETTLE):
        os.symlink(tmp_path / "secret", root / "out-link")
        os.symlink(tmp_path / "elsewhere", root / "dir-link")
        (root / ".p.txt.syncd-tmp").write_bytes(b"half")
        os.close(
            os.open(os.path.join(os.fsencode(root), b"bad-\xff.txt"), os.O_CREAT | os.O_WRONLY)
        )
        await LocalDriver(str(root)).put("put.txt", b"whole")
        await sink.wait_created("put.txt")
        await barrier(root, sink)
    published = {e.key for e in sink.events}
    assert published == {"put.txt"} | {k for k in published if k.startswith("zz-barrier-")}


async def test_prefix_is_respected(root: Path) -> None:
    for folder in ("in", "out", "in-not"):
        (root / folder).mkdir()
    sink = Sink()
    async with FolderWatch(str(root), sink, settle=SETTLE, prefix="in/"):
        (root / "out" / "x").write_bytes(b"x")
        (root / "in-not" / "z").write_bytes(b"z")
        (root / "in" / "y").write_bytes(b"y")
        await sink.wait_created("in/y")
        await barrier(root, sink, folder="in/")
    assert all(e.key.startswith("in/") for e in sink.events)


# -- failures and lifetime ------------------------------------------------------------------


async def test_failed_sink_call_is_retried_with_the_same_changes(root: Path) -> None:
    sink = Sink()
    sink.fail_next = 1
    async with FolderWatch(str(root), sink, settle=SETTLE):
        (root / "a.txt").write_bytes(b"a")
        await sink.wait_created("a.txt")
    assert [e.key for e in sink.failed[0]] == ["a.txt"]
    assert sink.batches[0] == sink.failed[0]


async def test_failed_rescan_is_retried_and_does_not_hold_events_back(root: Path) -> None:
    (root / "d").mkdir()
    sink, rescans = Sink(), Rescans()
    rescans.fail_next = 1
    async with FolderWatch(str(root), sink, settle=SETTLE, on_overflow=rescans):
        (root / "d").rmdir()
        (root / "a.txt").write_bytes(b"a")
        await sink.wait_created("a.txt")
        await rescans.wait()
    assert (rescans.failures, rescans.calls) == (1, 1)


async def test_stop_ends_every_observer_thread(root: Path) -> None:
    before = watchdog_threads()
    watch = FolderWatch(str(root), Sink(), settle=SETTLE)
    await watch.start()
    observer = watch.observer
    assert observer is not None and observer.is_alive()
    assert watchdog_threads() - before  # the watch did start threads of its own
    await asyncio.wait_for(watch.stop(), DEADLINE)
    assert watch.observer is None
    assert not observer.is_alive()
    assert watchdog_threads() <= before


async def test_kernel_queue_overflow_requests_a_rescan(root: Path) -> None:
    rescans = Rescans()
    async with FolderWatch(str(root), Sink(), settle=SETTLE, on_overflow=rescans) as watch:
        assert watch.observer is not None
        groups = [getattr(e, "_inotify", None) for e in watch.observer.emitters]
        if not groups or groups[0] is None:
            pytest.fail("watchdog's inotify watch group is not where the overflow hook expects")
        # what watchdog's reader thread does when the kernel reports IN_Q_OVERFLOW
        await asyncio.to_thread(groups[0].on_queue_overflow)
        await rescans.wait()


class _FullObserver:
    """An observer whose start fails as inotify does when the watch limit is reached."""

    def __init__(self) -> None:
        self.stopped = False

    def schedule(self, *args: Any, **kwargs: Any) -> None:
        pass

    def start(self) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    def stop(self) -> None:
        self.stopped = True

    def is_alive(self) -> bool:
        return False


async def test_watch_limit_gives_a_clear_error(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[_FullObserver] = []

    def new_observer() -> _FullObserver:
        made.append(_FullObserver())
        return made[-1]

    monkeypatch.setattr(watch_module, "_new_observer", new_observer)
    with pytest.raises(WatchLimitError, match=r"fs\.inotify\.max_user_watches.*sysctl"):
        await FolderWatch(str(root), Sink()).start()
    assert made and made[0].stopped


async def test_missing_folder_cannot_be_watched(tmp_path: Path) -> None:
    watch = FolderWatch(str(tmp_path / "missing"), Sink())
    with pytest.raises(BucketNotFound):
        await watch.start()
    (tmp_path / "missing").mkdir()
    await watch.start()  # a failed start leaves nothing behind: it can be tried again
    await watch.stop()


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = watchdog_threads()
    yield
    assert watchdog_threads() <= before, "a watch left observer threads running"
