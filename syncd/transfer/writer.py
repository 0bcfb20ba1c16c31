"""How a pull writes the bytes of one file: in pieces of at most :data:`WRITE_SIZE`, into
space reserved for the whole object first.

Both are about the page cache, and were measured on a pull of one 200 MB object from moto
(``bench/bench_transfer.py --sets large``; the figures are in ``bench/README.md``):

* Writing 1 MiB at a time, most pulls that followed another tool's took 0.3-0.6 s more
  system time than the rest, all of it in the copy into the page cache; 32 KiB at a time
  (what rclone writes) with the space reserved, such pulls became as rare as rclone's. The
  likely cause (not proven): Linux gives a write a page-cache folio about the write's own
  size; up to 32 KiB they come from per-CPU lists of recently freed pages, larger ones from
  the buddy allocator's large free blocks, which a VM may have handed back to its host, so
  the first copy into each costs a fault on the host.
* Reserving the space (``fallocate`` with ``FALLOC_FL_KEEP_SIZE``: the blocks, not the
  size) saves the file system allocating as the file grows. It leaves the file's size to
  what was written, so the pull's size check still sees a short download. It is only tried
  on Linux; where the file system cannot (or it is not Linux) the file is written as is.

The writer works for any driver: drivers see an ordinary buffered binary file (``write``,
``seek``, ``truncate``, ``flush``). A ``truncate`` (a driver starting over after a retry)
gives the reserved space back, so the next write reserves it again.
"""

from __future__ import annotations

import functools
import io
import sys
from collections.abc import Callable
from typing import BinaryIO

#: the most one write system call hands the kernel (see the module's docstring)
WRITE_SIZE = 32 * 1024
#: files smaller than this are written without reserving space first (one more system call
#: per file would cost small files more than it gives them)
RESERVE_FROM = 8 * 1024 * 1024
_KEEP_SIZE = 0x01  # FALLOC_FL_KEEP_SIZE, linux/falloc.h


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int] | None:
    """libc's ``fallocate(2)``, or None off Linux. Not ``os.posix_fallocate``: where the file
    system lacks the call, glibc's emulates it by writing every block, and it sets the size."""
    if sys.platform != "linux":
        return None
    import ctypes  # here: only pulls of large files need it

    try:
        func = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    func.restype = ctypes.c_int
    return func


def reserve(fd: int, size: int) -> bool:
    """Reserve ``size`` bytes of blocks for the file ``fd`` without changing its size. False
    where it cannot be done (not Linux, a file system without the call, a full disk: the
    write that follows reports that one)."""
    fallocate = _fallocate()
    return fallocate is not None and fallocate(fd, _KEEP_SIZE, 0, size) == 0


class _SmallWrites(io.FileIO):
    """A raw file whose ``write`` passes the kernel at most :data:`WRITE_SIZE` bytes and
    says how many it took (a raw file may; the buffered writer above it sends the rest), and
    which reserves ``size`` bytes of space before its first write."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__(fd, "wb")
        self._size = size if size >= RESERVE_FROM else 0
        self._reserved = False

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._size and not self._reserved:
            self._reserved = True
            reserve(self.fileno(), self._size)
        return super().write(memoryview(data).cast("B")[:WRITE_SIZE])

    def truncate(self, size: int | None = None) -> int:
        self._reserved = False  # the blocks past the new end went with it
        return super().truncate(size)


def open_writer(fd: int, size: int) -> BinaryIO:
    """A buffered binary file writing to the open descriptor ``fd`` (which it now owns) for
    an object of ``size`` bytes, as this module describes."""
    return io.BufferedWriter(_SmallWrites(fd, size), buffer_size=WRITE_SIZE)
