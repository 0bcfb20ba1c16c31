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
  what was written, so the pull's size check still sees a short download; :func:`trim`
  gives back what lies past the end once the bytes are in (the size reserved is the
  catalog's, and the object may have shrunk since). It is only tried on 64-bit Linux; where
  the file system cannot (or has not the space) the file is written as it would have been.

The writer works for any driver: drivers see an ordinary buffered binary file (``write``,
``seek``, ``truncate``, ``flush``). A ``truncate`` (a driver starting over after a retry)
gives the reserved space back, so the next write reserves it again.
"""

from __future__ import annotations

import functools
import io
import os
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
    """libc's ``fallocate(2)``, or None off 64-bit Linux. Not ``os.posix_fallocate``: where
    the file system lacks the call, glibc's emulates it by writing every block, and it sets
    the size. Not on 32-bit builds, whose ``fallocate`` symbol takes a 32-bit offset."""
    if sys.platform != "linux":
        return None
    import ctypes  # here: only pulls of large files need it

    if ctypes.sizeof(ctypes.c_void_p) < 8:
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    func.restype = ctypes.c_int
    return func


def reserve(fd: int, size: int) -> bool:
    """Reserve ``size`` bytes of blocks for the file ``fd`` without changing its size; True
    if they are. False where it cannot be done (not 64-bit Linux, a file system without the
    call, not that much free space); then nothing stays reserved (a file system may have
    allocated part of it before failing: :func:`release` gives that back), and the writes
    that follow go as they would have."""
    fallocate = _fallocate()
    if fallocate is None or not 0 < size < 2**63:
        return False
    if fallocate(fd, _KEEP_SIZE, 0, size) == 0:
        return True
    release(fd)
    return False


def release(fd: int) -> None:
    """Give back the blocks reserved past the end of the file ``fd`` (a truncate to its own
    size frees them). It sets the file's modification time, as any truncate does."""
    os.ftruncate(fd, os.fstat(fd).st_size)


class _SmallWrites(io.FileIO):
    """A raw file whose ``write`` passes the kernel at most :data:`WRITE_SIZE` bytes and
    says how many it took (a raw file may; the buffered writer above it sends the rest), and
    which, for a ``size`` of :data:`RESERVE_FROM` or more, reserves that much space before
    its first write."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__(fd, "wb")
        #: what to reserve; 0: nothing, nothing to give back (see trim())
        self.reserving = size if size >= RESERVE_FROM else 0
        self._armed = bool(self.reserving)  # reserve before the next write

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._armed:
            self._armed = False
            reserve(self.fileno(), self.reserving)
        return super().write(memoryview(data).cast("B")[:WRITE_SIZE])

    def truncate(self, size: int | None = None) -> int:
        # the blocks past the new end go with it: the next write reserves them again
        self._armed = bool(self.reserving)
        return super().truncate(size)


def open_writer(fd: int, size: int) -> BinaryIO:
    """A buffered binary file writing to the open descriptor ``fd`` (which it now owns) for
    an object of ``size`` bytes, as this module describes. When the bytes are all written,
    call :func:`trim`."""
    return io.BufferedWriter(_SmallWrites(fd, size), buffer_size=WRITE_SIZE)


def trim(out: BinaryIO) -> None:
    """Flush ``out`` and give back what was reserved past what was written: ``size`` is the
    catalog's, and an object that shrank since the last sync is shorter than it (the
    download's own size check is against the object read). Call before setting the file's
    modification time: a truncate sets it."""
    out.flush()
    raw = getattr(out, "raw", None)
    if isinstance(raw, _SmallWrites) and raw.reserving:
        release(raw.fileno())  # also where the reservation failed: one truncate, no harm
