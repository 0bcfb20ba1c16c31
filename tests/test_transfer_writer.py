"""syncd.transfer.writer: how a pull writes a file (small writes, space reserved, size kept)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from syncd.transfer import writer as writer_module
from syncd.transfer.writer import RESERVE_FROM, WRITE_SIZE, open_writer, trim

# a platform fact, not what the code under test answers: a reserve() that stopped working
# must fail these tests, not skip them (their temp folders must be on a local file system:
# NFS or 9p may not reserve space)
reserves_space = pytest.mark.skipif(
    sys.platform != "linux" or sys.maxsize < 2**32,
    reason="space is reserved on 64-bit Linux only",
)


def writer(path: Path, size: int):
    return open_writer(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), size)


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_what_is_written_is_the_file_in_any_mix_of_write_sizes(tmp_path: Path) -> None:
    data = os.urandom(3 * WRITE_SIZE + 12345)
    pieces = [data[:10], data[10 : 10 + 2 * WRITE_SIZE + 1], data[10 + 2 * WRITE_SIZE + 1 :]]
    with writer(tmp_path / "f", len(data)) as out:
        for piece in pieces:
            assert out.write(piece) == len(piece)
    assert (tmp_path / "f").read_bytes() == data


def test_the_kernel_is_handed_at_most_write_size_bytes_a_call(tmp_path: Path) -> None:
    with writer(tmp_path / "f", 0) as out:
        raw = out.raw
        assert raw.write(b"x" * (WRITE_SIZE * 4)) == WRITE_SIZE
        assert raw.write(b"y" * 10) == 10
    assert os.path.getsize(tmp_path / "f") == WRITE_SIZE + 10


def test_seek_and_write_out_of_order_like_ranged_downloads(tmp_path: Path) -> None:
    part = WRITE_SIZE * 3
    data = os.urandom(part * 3)
    with writer(tmp_path / "f", len(data)) as out:
        for start in (part * 2, 0, part):
            out.seek(start)
            out.write(data[start : start + part])
    assert (tmp_path / "f").read_bytes() == data


@reserves_space
def test_a_large_file_gets_its_space_reserved_and_keeps_the_size_written(tmp_path: Path) -> None:
    size = RESERVE_FROM * 2
    path = tmp_path / "f"
    with writer(path, size) as out:
        out.write(b"x" * 1000)
        out.flush()
        # the blocks for the whole object, the size of what came: a short download stays
        # short, and the pull's size check sees it
        assert allocated(path) >= size
        assert os.path.getsize(path) == 1000
    assert os.path.getsize(path) == 1000


@reserves_space
def test_a_small_file_gets_no_reservation_and_one_of_reserve_from_does(tmp_path: Path) -> None:
    below, at = tmp_path / "below", tmp_path / "at"
    with writer(below, RESERVE_FROM - 1) as out, writer(at, RESERVE_FROM) as out_at:
        out.write(b"x")
        out.flush()
        out_at.write(b"x")
        out_at.flush()
        assert allocated(below) < RESERVE_FROM // 2
        assert allocated(at) >= RESERVE_FROM


@reserves_space
def test_trim_gives_back_what_lies_past_a_shorter_file(tmp_path: Path) -> None:
    """The catalog's size was reserved, the object read was smaller (it shrank since)."""
    path = tmp_path / "f"
    data = os.urandom(100_000)
    with writer(path, RESERVE_FROM * 2) as out:
        out.write(data)
        trim(out)
        assert allocated(path) < RESERVE_FROM // 2
    assert path.read_bytes() == data


def test_a_failed_reservation_keeps_nothing_and_the_file_is_written_as_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that allocates part of the space and then fails (a full disk): what it
    took is given back, and the writes go on."""
    size = RESERVE_FROM * 2
    real = writer_module._fallocate()

    def half_then_fail(fd: int, mode: int, offset: int, length: int) -> int:
        if real is not None:
            real(fd, mode, offset, length // 2)
        return -1

    monkeypatch.setattr(writer_module, "_fallocate", lambda: half_then_fail)
    path = tmp_path / "f"
    data = os.urandom(WRITE_SIZE * 5 + 7)
    with writer(path, size) as out:
        out.write(data)
        out.flush()
        assert allocated(path) < size // 4
        trim(out)
    assert path.read_bytes() == data


@reserves_space
def test_a_truncate_gives_the_space_back_and_the_next_write_reserves_it_again(
    tmp_path: Path,
) -> None:
    """What a driver does when it starts a download over (seek to 0, truncate)."""
    size = RESERVE_FROM * 2
    path = tmp_path / "f"
    with writer(path, size) as out:
        out.write(b"first try")
        out.seek(0)
        out.truncate()
        assert allocated(path) < size // 2
        out.write(b"second")
        out.flush()
        assert allocated(path) >= size
    assert path.read_bytes() == b"second"
