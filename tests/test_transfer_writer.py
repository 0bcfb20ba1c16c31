"""syncd.transfer.writer: how a pull writes a file (small writes, space reserved, size kept)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from syncd.transfer.writer import RESERVE_FROM, WRITE_SIZE, open_writer

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="space is reserved on Linux only")


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


@linux_only
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


@linux_only
def test_a_small_file_gets_no_reservation(tmp_path: Path) -> None:
    path = tmp_path / "f"
    with writer(path, RESERVE_FROM - 1) as out:
        out.write(b"x")
        out.flush()
        assert allocated(path) < RESERVE_FROM // 2


@linux_only
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
