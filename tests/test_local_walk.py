"""The local folder's walk in a child process lists exactly what the in-process walk lists.

``SYNCD_LOCAL_WALK`` picks the walk (providers.local.walk_mode): ``thread`` walks in this
process, ``process`` in a child (``providers/localwalk.py``), ``auto`` the first entries here
and the rest in a child. Every mode must give the same pages (objects, sizes, ETags, times,
content types), the same skips, for every prefix and key range; a child that dies part-way
must fail the listing, never end it quietly (a short listing would delete items).
"""

from __future__ import annotations

import logging
import marshal
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers import localwalk
from providers.base import ObjectInfo
from providers.config import ConfigError
from providers.local import LocalDriver, _Child

MODES = ("thread", "process", "auto")


def make_tree(root: Path, outside: Path) -> None:
    """A folder with every kind of entry the listing rules tell apart."""
    for rel in ["a0", "a-b", "a.b", "a/x", "a/y/z", "b/c/d/e", "c", "z~", "ü/ñ.txt", "sp ace/x y"]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode() * 3)
    (root / "empty").mkdir()
    (root / "a" / ".x.syncd-tmp").write_bytes(b"half")  # a put in progress
    outside.mkdir()
    (outside / "secret").write_text("s")
    os.symlink(outside / "secret", root / "link-out")
    os.symlink(root / "a" / "x", root / "link-in")
    os.symlink(root / "b", root / "link-dir")
    os.symlink(root / "loop", root / "loop")
    os.symlink(root / "nowhere", root / "dangling")
    os.mkfifo(root / "fifo")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(root / "sock"))
    (root / os.fsdecode(b"bad-\xff-name")).write_bytes(b"x")  # not UTF-8
    for i in range(30):
        (root / "many" / f"f{i:03d}").parent.mkdir(exist_ok=True)
        (root / "many" / f"f{i:03d}").write_bytes(b"x" * i)


def listing(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    root: Path,
    mode: str,
    prefix: str = "",
    start_after: str | None = None,
    end_before: str | None = None,
    page_size: int = 7,
) -> tuple[list[list[ObjectInfo]], list[str], int]:
    """The pages, the skip warnings and the skip count of one listing in ``mode``."""
    import asyncio

    monkeypatch.setenv("SYNCD_LOCAL_WALK", mode)
    driver = LocalDriver(str(root), page_size=page_size)
    caplog.clear()

    async def run() -> list[list[ObjectInfo]]:
        return [page async for page in driver.list(prefix, start_after, end_before)]

    with caplog.at_level(logging.WARNING, logger="syncd"):
        pages = asyncio.run(run())
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    return pages, warnings, driver.skipped


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    make_tree(root, tmp_path / "outside")
    return Path(os.path.realpath(root))


BOUNDS = [
    ("", None, None),
    ("a", None, None),
    ("a/", None, None),
    ("many/", "many/f010", "many/f020"),
    ("", "a/x", None),
    ("", None, "b/c"),
    ("", "a", "many/f005"),
    ("ü", None, None),
    ("zz", None, None),
]


@pytest.mark.parametrize(("prefix", "start_after", "end_before"), BOUNDS)
def test_every_walk_lists_the_same(
    tree: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    prefix: str,
    start_after: str | None,
    end_before: str | None,
) -> None:
    # auto hands over to a child after 3 entries here, so the hand-over is exercised
    monkeypatch.setattr("providers.local.IN_PROCESS", 3)
    results = {
        mode: listing(monkeypatch, caplog, tree, mode, prefix, start_after, end_before)
        for mode in MODES
    }
    assert results["process"] == results["thread"]
    assert results["auto"] == results["thread"]
    pages, warnings, skipped = results["thread"]
    if (prefix, start_after, end_before) == ("", None, None):
        keys = [o.key for page in pages for o in page]
        assert "link-in" in keys and "a/x" in keys and "many/f029" in keys
        assert not any(k.endswith(".syncd-tmp") or k.startswith("link-dir/") for k in keys)
        # link-out, link-dir, loop, fifo, sock, the non-UTF-8 name
        assert skipped == 6 and len(warnings) == 6


@pytest.mark.parametrize(("prefix", "start_after", "end_before"), BOUNDS)
def test_a_walk_with_no_process_to_be_had_lists_the_same_in_process(
    tree: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    prefix: str,
    start_after: str | None,
    end_before: str | None,
) -> None:
    # a frozen app (or no interpreter) cannot start the walker: process and auto (after its
    # 3 entries in-process) walk the rest here, from where they were
    monkeypatch.setattr("providers.local.IN_PROCESS", 3)
    want = listing(monkeypatch, caplog, tree, "thread", prefix, start_after, end_before)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    started: list[object] = []
    real_start = _Child.start

    def start(*args: object) -> _Child | None:
        child = real_start(*args)  # type: ignore[arg-type]
        started.append(child)
        return child

    monkeypatch.setattr(_Child, "start", staticmethod(start))
    for mode in ("process", "auto"):
        assert listing(monkeypatch, caplog, tree, mode, prefix, start_after, end_before) == want
    assert started and not any(started)  # asked for a process, given none


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(
        st.text(alphabet="ab-./é", min_size=1, max_size=6).filter(
            lambda s: all(p not in ("", ".", "..") for p in s.split("/")) and not s.endswith("/")
        ),
        max_size=25,
    ),
    bounds=st.tuples(
        st.sampled_from(["", "a", "a/", "b", "é"]),
        st.none() | st.text(alphabet="ab-./é", max_size=4),
        st.none() | st.text(alphabet="ab-./é", max_size=4),
    ),
    hand_over=st.integers(min_value=0, max_value=6),
)
def test_any_tree_lists_the_same_in_a_child(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    names: list[str],
    bounds: tuple[str, str | None, str | None],
    hand_over: int,
) -> None:
    root = Path(os.path.realpath(tmp_path_factory.mktemp("any")))
    for name in names:
        path = root / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(name.encode())
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            pass  # a file and a folder of one name: a folder cannot hold both
    monkeypatch.setattr("providers.local.IN_PROCESS", hand_over)
    thread = listing(monkeypatch, caplog, root, "thread", *bounds, page_size=3)
    assert listing(monkeypatch, caplog, root, "process", *bounds, page_size=3) == thread
    assert listing(monkeypatch, caplog, root, "auto", *bounds, page_size=3) == thread


def child_writing(tmp_path: Path, frames: list[list[object]], *, code: int = 0) -> _Child:
    """A real child process that writes ``frames`` (localwalk's format) and exits."""
    script = tmp_path / "child.py"
    script.write_text(
        "import marshal, sys\n"
        f"for frame in marshal.loads({marshal.dumps(frames)!r}):\n"
        "    data = marshal.dumps(frame)\n"
        "    sys.stdout.buffer.write(len(data).to_bytes(4, 'big') + data)\n"
        "sys.stdout.flush()\n"
        f"sys.stderr.write('walker broke\\n'); sys.exit({code})\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    return _Child(proc)


def read_all(child: _Child, got: list[object]) -> None:
    """Every record of ``child`` into ``got`` through the listing's reader (``read``), so
    what came before an error is kept for the test to look at."""
    import asyncio

    async def drain() -> None:
        async for run in child.read():
            got.extend(run)

    asyncio.run(drain())


def test_a_child_that_stops_without_its_end_fails_the_listing(tmp_path: Path) -> None:
    # records, then the stream ends: the walker died (killed, out of memory); the records
    # before are given, then the listing fails instead of ending short
    child = child_writing(tmp_path, [[("a", 1, 2), ("b", "not a regular file")]], code=1)
    got: list[object] = []
    with pytest.raises(OSError, match="walker process stopped early: walker broke"):
        read_all(child, got)
    assert got == [("a", 1, 2), ("b", "not a regular file")]
    assert child.proc.returncode == 1


def test_the_childs_error_is_raised_as_the_walk_would(tmp_path: Path) -> None:
    child = child_writing(tmp_path, [[("a", 1, 2), ("error", 13, "Permission denied", "/r/d")]])
    with pytest.raises(PermissionError) as info:
        read_all(child, [])
    assert info.value.filename == "/r/d"
    child = child_writing(tmp_path, [[("a", 1, 2)], [("end",)]])
    got: list[object] = []
    read_all(child, got)
    assert got == [("a", 1, 2)]


def test_a_listing_closed_early_stops_its_child(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    monkeypatch.setenv("SYNCD_LOCAL_WALK", "process")
    started: list[_Child] = []
    real_start = _Child.start

    def start(*args: object) -> _Child | None:
        child = real_start(*args)  # type: ignore[arg-type]
        started.append(child)  # type: ignore[arg-type]
        return child

    monkeypatch.setattr(_Child, "start", staticmethod(start))

    async def first_page() -> list[ObjectInfo]:
        pages = LocalDriver(str(tree), page_size=2).list()
        page = await anext(pages)
        await pages.aclose()
        return page

    assert len(asyncio.run(first_page())) == 2
    assert len(started) == 1 and started[0].proc.returncode is not None


def test_the_walk_module_needs_nothing_but_the_standard_library() -> None:
    # the child runs it as `python -I -S file`: no site-packages, no providers package
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-X", "importtime", localwalk.__file__],
        input=marshal.dumps((os.path.realpath("/"), "zzz-none/", None, None)),
        capture_output=True,
        check=True,
    )
    assert marshal.loads(out.stdout[4:]) == [("end",)]
    imported = {line.rsplit("|", 1)[1].strip() for line in out.stderr.decode().splitlines()}
    assert not {m for m in imported if m.split(".")[0] in ("providers", "syncd", "site")}


def test_a_wrong_walk_mode_is_one_clear_error(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    monkeypatch.setenv("SYNCD_LOCAL_WALK", "fast")

    async def run() -> None:
        async for _ in LocalDriver(str(tree)).list():
            pass

    with pytest.raises(ConfigError, match="SYNCD_LOCAL_WALK='fast' is not one of auto"):
        asyncio.run(run())


def test_a_listed_file_is_the_object_a_head_gives(
    tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # a listing builds each file's time and content type when read (providers.local._Listed);
    # it is still the ObjectInfo a HEAD (or the folder watch's stat_object) gives
    import asyncio
    import pickle

    from providers.local import stat_object

    pages, _, _ = listing(monkeypatch, caplog, tree, "thread", page_size=1000)
    driver = LocalDriver(str(tree))
    for listed in pages[0]:
        head = asyncio.run(driver.head(listed.key))
        assert type(head) is ObjectInfo
        assert listed == head and head == listed
        assert (listed != head) is False and (head != listed) is False
        assert hash(listed) == hash(head) and repr(listed) == repr(head)
        assert (listed.last_modified, listed.content_type) == (
            head.last_modified,
            head.content_type,
        )
        assert pickle.loads(pickle.dumps(listed)) == head
        assert stat_object(str(tree), listed.key) == listed


#: modification times where the text of a time is easy to get wrong: the epoch, whole
#: seconds (no fraction in ``isoformat``), half microseconds (rounded half to even on the
#: float ``fromtimestamp`` is given), a fraction that rounds up to the next second, before
#: 1970, and the last second datetime can hold
EDGE_MTIMES = [
    0,
    1,
    499,
    500,
    501,
    1500,
    2500,
    10**9 - 500,
    10**9 - 1,
    10**9,
    -1,
    -500,
    -(10**9),
    1_765_000_000_000_000_000,
    1_765_000_000_000_000_500,
    1_765_000_000_999_999_500,
    1_765_000_000_999_999_499,
    253_402_300_799_000_000_000,
    253_402_300_799_999_999_000,
]


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.sampled_from(EDGE_MTIMES),
        st.integers(-(2 * 10**18), 253_402_300_799 * 10**9),
        st.builds(
            lambda s, ns: s * 10**9 + ns,
            st.integers(1_600_000_000, 1_900_000_000),
            st.sampled_from([0, 500, 1500, 999_999_500, 999_999_499]) | st.integers(0, 10**9 - 1),
        ),
    )
)
def test_a_listed_files_time_text_is_its_datetimes(mtime_ns: int) -> None:
    # a sync writes a listed file's time with mtime_text (no datetime per file): the very
    # text of the datetime a HEAD gives, for any time
    from datetime import UTC, datetime

    from providers.local import _Listed, mtime_text

    try:
        want = datetime.fromtimestamp(mtime_ns / 1e9, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        with pytest.raises((OverflowError, ValueError, OSError)):
            mtime_text(mtime_ns)
        return
    assert mtime_text(mtime_ns) == want
    listed = _Listed("k", 1, mtime_ns)
    assert LocalDriver("/").mtime_texts([listed]) == [want]
    assert LocalDriver("/").mtime_texts([listed]) == super(
        LocalDriver, LocalDriver("/")
    ).mtime_texts([listed])
