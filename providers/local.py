"""Local folder driver: a directory tree seen as a bucket.

* The "bucket" is the absolute root directory; keys are paths below it joined with ``/``.
* Listing walks the tree in key order without collecting it: directory entries are sorted by
  their *key* (a sub-directory sorts as ``name + "/"``), so ``a-b`` comes before ``a/x`` exactly
  as in S3. Memory is bounded by the widest directory and the depth, not the tree size.
* Symbolic links are not followed outside the root: a link whose target resolves outside it is
  skipped, and linked directories are never descended (which also rules out cycles).
* A folder cannot hold both a file ``a`` and a file ``a/b`` as a bucket can: such a ``put``
  raises ``InvalidRequest``. Files ending in ``.syncd-tmp`` are writes in progress, never listed.
* ETag is derived from size and modification time (``"<size hex>-<mtime_ns hex>"``), not from
  content: listing a million files must not read a million files. An in-place rewrite of the
  same size within the filesystem's timestamp resolution is therefore not seen as a change.
* :func:`stat_object` holds these rules for one key; the listing and the daemon's folder watch
  both use it, so they report the same size, ETag and skips.
* The walk itself is :mod:`providers.localwalk`: a listing walks its first
  :data:`IN_PROCESS` entries in this process and the rest of a larger folder in a child
  process, on another core (:func:`walk_mode`); every mode lists the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import marshal
import math
import operator
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import starmap
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from providers import errors, localwalk
from providers.base import Driver, ObjectInfo, mtime_text_of
from providers.config import ConfigError
from providers.content_types import guess as content_type
from providers.localwalk import TMP_SUFFIX, Record, classify, inside
from providers.localwalk import is_utf8 as is_utf8  # the folder watch's, from here

log = logging.getLogger("syncd")

CHUNK = 1024 * 1024
#: a character urllib.parse.quote (safe="/") would percent-encode: keys without one are
#: their own quoted form (checked in C, not quoted character by character)
_NEEDS_QUOTING = re.compile(r"[^A-Za-z0-9_.~/-]")
#: the longest file name (bytes) most file systems take (ext4, XFS, btrfs, APFS, NTFS)
NAME_MAX = 255


def temp_path(path: str) -> str:
    """The temp file a write of ``path`` goes through, in the same folder: ``.<name>`` plus
    :data:`TMP_SUFFIX`, or, where that would exceed :data:`NAME_MAX` bytes (a name of 244 or
    more), ``.<SHA-256 of the name, 40 hex digits>`` plus the suffix: every name that fits
    the file system has a temp name that fits too. Both end in the suffix, so no listing
    shows them, and no key can be one (keys ending in the suffix are refused or unlisted)."""
    folder, name = os.path.split(path)
    tmp = f".{name}{TMP_SUFFIX}"
    if len(os.fsencode(tmp)) > NAME_MAX:
        tmp = f".{hashlib.sha256(os.fsencode(name)).hexdigest()[:40]}{TMP_SUFFIX}"
    return os.path.join(folder, tmp)


class LocalDriver(Driver):
    provider = "local"
    guesses_content_type = True

    def __init__(self, root: str, *, page_size: int = 1000) -> None:
        real = os.path.realpath(root)
        super().__init__(real, page_size=page_size)
        self.root = real

    # -- helpers -------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
            raise errors.InvalidRequest(self.provider, self.bucket, "invalid key", key=key)
        return os.path.join(self.root, *key.split("/"))

    def _inside_root(self, path: str) -> bool:
        return inside(self.root, path)

    def _info(self, key: str, st: os.stat_result) -> ObjectInfo:
        return _object_info(key, st.st_size, st.st_mtime_ns)

    def observed_at(self) -> None:
        """None: a folder watch stamps a created file with its modification time, which a
        copy that keeps times (``cp -p``, ``rsync -a``, ``tar x``, ``mv``) leaves in the
        past, so a listing's time cannot tell an older event from a newer one."""
        return None

    def _check_root(self) -> None:
        if not os.path.isdir(self.root):
            raise errors.BucketNotFound(self.provider, self.bucket, "folder does not exist")

    async def _runs(
        self, prefix: str, start_after: str | None, end_before: str | None, mode: str
    ) -> AsyncIterator[list[Record]]:
        """The listing's records in runs (:func:`providers.localwalk.walk`), at least about
        a page at a time: walked in this process on a worker thread (``thread``), in a child
        process (``process``), or (``auto``) the first :data:`IN_PROCESS` here and the rest,
        if any, in a child.

        The child's pipe is read by the event loop, not by a worker thread: a thread reading
        it took the GIL back for every frame while this thread's catalog reads and writes
        give it up for every row, and the two handing it over cost a fifth of a no-change
        re-sync's time (bench/README.md)."""
        after = start_after
        if mode != "process":
            walk = localwalk.walk(self.root, prefix, start_after, end_before)
            taken, limit = 0, IN_PROCESS if mode == "auto" else None
            while limit is None or taken < limit:
                runs = await asyncio.to_thread(_take, walk, self.page_size)
                if not runs:
                    return  # the whole listing, in this process
                for run in runs:
                    yield run
                taken += sum(map(len, runs))
                after = runs[-1][-1][0]
        child = _Child.start(self.root, prefix, after, end_before)
        if child is None:  # no process to be had: the rest in this one
            async for run in self._runs(prefix, after, end_before, "thread"):
                yield run
            return
        reading = child.read()
        try:
            async for run in reading:
                yield run
        finally:
            await reading.aclose()  # stops the child now, not when collected

    # -- interface -----------------------------------------------------------------------

    async def list(
        self, prefix: str = "", start_after: str | None = None, end_before: str | None = None
    ) -> AsyncIterator[list[ObjectInfo]]:
        self._check_root()
        size = self.page_size
        ready: list[ObjectInfo] = []  # objects walked, not yet handed out
        runs = self._runs(prefix, start_after, end_before, walk_mode())
        try:
            async for run in runs:
                if 2 not in map(len, run):  # no skipped entry: (key, reason) pairs
                    ready += starmap(_Listed, run)  # type: ignore[arg-type]
                else:
                    for record in run:
                        if len(record) == 2:
                            self.skip(*record)  # type: ignore[arg-type]
                        else:
                            ready.append(_Listed(*record))  # type: ignore[arg-type]
                while len(ready) >= size:
                    page, ready = ready[:size], ready[size:]
                    yield page
            if ready:
                yield ready
        finally:
            # a listing closed early (or failed) stops its walker process
            await runs.aclose()

    async def folders(self, prefix: str = "") -> list[str]:
        if prefix and not prefix.endswith("/"):
            return []
        directory = os.path.join(self.root, *prefix.rstrip("/").split("/")) if prefix else self.root

        def scan() -> list[str]:
            try:
                with os.scandir(directory) as it:
                    return sorted(
                        prefix + e.name + "/" for e in it if e.is_dir(follow_symlinks=False)
                    )
            except (FileNotFoundError, NotADirectoryError):
                return []

        return await asyncio.to_thread(scan)

    def _stat(self, key: str) -> os.stat_result:
        path = self._path(key)
        self._check_root()
        try:
            if not self._inside_root(path) or not os.path.isfile(path):
                raise FileNotFoundError(path)
            return os.stat(path)
        except FileNotFoundError:
            raise errors.NotFound(self.provider, self.bucket, "no such object", key=key) from None

    async def head(self, key: str) -> ObjectInfo:
        st = await asyncio.to_thread(self._stat, key)
        return self._info(key, st)

    async def get(self, key: str) -> AsyncIterator[bytes]:
        await asyncio.to_thread(self._stat, key)
        handle = await asyncio.to_thread(open, self._path(key), "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK):
                yield chunk
        finally:
            handle.close()

    async def _write(self, key: str, fill: Callable[[str], None]) -> ObjectInfo:
        """Create or replace ``key`` by ``fill(temp_path)`` then a rename, so readers never
        see a half-written file."""
        path = self._path(key)
        self._check_root()

        def write() -> None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = temp_path(path)
            fill(tmp)
            os.replace(tmp, path)

        try:
            await asyncio.to_thread(write)
        except (IsADirectoryError, NotADirectoryError, FileExistsError):
            # a folder cannot hold both a file "a" and a file "a/b", unlike a bucket
            raise errors.InvalidRequest(
                self.provider,
                self.bucket,
                "key collides with a folder or file of the same name",
                key=key,
            ) from None
        return await self.head(key)

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        return await self._write(key, lambda tmp: Path(tmp).write_bytes(data))

    async def upload(self, key: str, path: str, content_type: str | None = None) -> ObjectInfo:
        return await self._write(key, lambda tmp: shutil.copyfile(path, tmp))

    async def download(self, key: str, out: BinaryIO, size: int | None = None) -> ObjectInfo:
        info = await self.head(key)

        def copy() -> None:
            out.seek(0)
            out.truncate()
            with open(self._path(key), "rb") as src:
                shutil.copyfileobj(src, out, CHUNK)

        await asyncio.to_thread(copy)
        return info

    async def delete(self, key: str) -> None:
        path = self._path(key)
        self._check_root()
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.remove, path)

    async def presign(self, key: str, ttl: int = 3600) -> str:
        return Path(self._path(key)).as_uri()

    def uri(self, key: str) -> str:
        return Path(self._path(key)).as_uri()

    def uris(self, keys: list[str]) -> list[str]:
        # what uri() gives for a listed (valid, UTF-8) key: the root's URI, "/", and the key
        # percent-encoded as Path.as_uri() encodes it (quote, "/" kept); no Path per key
        base = Path(self.root).as_uri()
        if not base.endswith("/"):
            base += "/"
        unsafe = _NEEDS_QUOTING.search
        return [base + (quote(k) if unsafe(k) else k) for k in keys]

    def mtime_texts(self, objs: list[ObjectInfo]) -> list[str]:
        # a listed file's text straight from its mtime_ns (mtime_text), without the
        # datetime the base class formats: a third of building a first sync's row
        listed = _Listed
        return [
            mtime_text(o._mtime_ns) if o.__class__ is listed else mtime_text_of(o.last_modified)
            for o in objs
        ]


#: objects a listing walks in its own process before the rest of the walk moves to a child
#: process (``auto``): a small folder never starts one
IN_PROCESS = 5000
#: the walker's pipe: how far (bytes of frames) it may run ahead of the listing
PIPE_SIZE = 1 << 20
#: how a listing walks the folder (``$SYNCD_LOCAL_WALK``): see :func:`walk_mode`
WALK_MODES = ("auto", "thread", "process")


def walk_mode() -> str:
    """``$SYNCD_LOCAL_WALK``: ``auto`` (the default: the first :data:`IN_PROCESS` entries in
    this process, the rest of a larger folder in a child process, on another core), ``thread``
    (all in this process, on a worker thread) or ``process`` (all in a child). Every mode lists
    the same records (``tests/test_local_walk.py``); a child that cannot be started falls
    back to this process."""
    mode = os.environ.get("SYNCD_LOCAL_WALK", "").strip().lower() or "auto"
    if mode not in WALK_MODES:
        raise ConfigError(
            f"SYNCD_LOCAL_WALK={mode!r} is not one of {', '.join(WALK_MODES)}; "
            "unset it for the default (auto)"
        )
    return mode


class _Child:
    """A walker process (``python -I -S providers/localwalk.py``) and the reading of its
    frames (see :mod:`providers.localwalk`)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @classmethod
    def start(
        cls, root: str, prefix: str, after: str | None, end_before: str | None
    ) -> _Child | None:
        """A child walking ``root`` from ``after``; None if none could be started (no
        interpreter to run, no process to be had), for the caller to walk in-process."""
        if not sys.executable or getattr(sys, "frozen", False):
            return None  # no interpreter to run the walk file with (a frozen app is not one)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", localwalk.__file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                close_fds=True,
            )
        except OSError as exc:
            log.debug("walking in-process: no walker process (%s)", exc)
            return None
        assert proc.stdin is not None and proc.stdout is not None
        # a pipe of 1 MiB (Linux; the default is 64 KiB, about a frame and a half): the
        # walker runs up to ~25 frames ahead instead of waiting on every page
        with contextlib.suppress(AttributeError, OSError):
            fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        try:
            proc.stdin.write(marshal.dumps((root, prefix, after, end_before)))
            proc.stdin.close()
        except OSError:
            pass  # it died at once: its reader says so
        return cls(proc)

    async def read(self) -> AsyncIterator[list[Record]]:
        """The child's records, in order, a frame at a time, the pipe read by the running
        event loop (no thread, never blocking it); the pipe's and the reader's buffers bound
        how far the child runs ahead. Raises ``OSError`` for the error that stopped its walk,
        or when its stream ends without the end frame (it died: never taken for a complete
        listing)."""
        out = self.proc.stdout
        assert out is not None
        reader = asyncio.StreamReader(limit=PIPE_SIZE)
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), out
        )
        try:
            while True:
                try:
                    size = int.from_bytes(await reader.readexactly(4), "big")
                    frame: list[Record] | None = marshal.loads(await reader.readexactly(size))
                except asyncio.IncompleteReadError:
                    frame = None  # the stream ended, or ended in a frame
                records, done, error = self._frame(frame)
                if records:
                    yield records
                if error is not None:
                    raise error
                if done:
                    return
        finally:
            transport.close()  # no longer watched by the loop
            self.stop()
            out.close()
            if self.proc.stderr is not None:
                self.proc.stderr.close()

    def _frame(self, frame: list[Record] | None) -> tuple[list[Record], bool, OSError | None]:
        """What one frame (None: the stream ended without one) gives: its records, whether
        it ended the walk, and the error to raise after its records."""
        if frame is None:
            return [], True, OSError(f"the folder's walker process stopped early: {self._why()}")
        last = frame[-1] if frame else None
        if last is not None and last[0] == "end" and len(last) == 1:
            return frame[:-1], True, None
        if last is not None and last[0] == "error" and len(last) == 4:
            _, code, text, filename = last
            error = OSError(code, text, filename) if filename else OSError(code, text)
            return frame[:-1], True, error
        return frame, False, None

    def _why(self) -> str:
        self.stop()
        err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
        last = err.splitlines()[-1] if err else ""
        return last or f"exit status {self.proc.returncode}"

    def stop(self) -> None:
        """End the child (it may be done already) and reap it. Idempotent."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _take(walk: Iterator[list[Record]], wanted: int) -> list[list[Record]]:
    """Runs of ``walk`` holding at least ``wanted`` records in all, or the rest of it
    (empty at its end). Blocking: a worker thread's."""
    runs: list[list[Record]] = []
    while wanted > 0:
        run = next(walk, None)
        if run is None:
            break
        runs.append(run)
        wanted -= len(run)
    return runs


@dataclass(frozen=True, slots=True)
class Skipped:
    """An entry a listing leaves out and reports (``Driver.skip``), with why."""

    reason: str


def stat_object(
    root: str, key: str, entry: os.DirEntry[str] | None = None
) -> ObjectInfo | Skipped | None:
    """What a listing of the folder ``root`` reports for ``key``, from a fresh look at the disk.

    The one place the folder's rules live, shared by :meth:`LocalDriver.list` and the daemon's
    folder watch (``syncd.daemon.watch``), so the two cannot disagree on a key's size, ETag or
    whether it is an object at all:

    * :class:`ObjectInfo`: a regular file, or a symlink to one inside ``root``;
    * :class:`Skipped`: an entry the listing leaves out *and reports*: a symlink leaving the
      folder or pointing to a folder, a symlink loop or other entry ``stat`` cannot read, a
      socket/fifo/device, a name that is not UTF-8;
    * ``None``: nothing the listing would mention: no such entry (or it vanished while we
      looked), a folder, a driver temp file (``TMP_SUFFIX``), or a path below a symlinked
      folder (listings never descend those).

    ``root`` must be a real path (``os.path.realpath``), as ``LocalDriver.root`` is. ``entry``
    is the ``os.scandir`` entry of ``key`` when the caller is walking: its cached type saves
    system calls, and a walk never descends a link, so the parent check is skipped. ``key``
    must be a well-formed key (``/``-separated, no empty, ``.`` or ``..`` part): it is not
    validated here. Blocking: call it from a worker thread in async code.
    """
    found = classify(root, key, entry)
    if isinstance(found, str):
        return Skipped(found)
    if found is None:
        return None
    return _object_info(key, found.st_size, found.st_mtime_ns)


def local_etag(st: os.stat_result) -> str:
    """The ETag of a local file: its size and modification time, never its content."""
    return f"{st.st_size:x}-{st.st_mtime_ns:x}"


def _object_info(key: str, size: int, mtime_ns: int) -> ObjectInfo:
    return ObjectInfo(
        key,
        size,
        f"{size:x}-{mtime_ns:x}",  # local_etag(st), inlined: once per file
        _fromtimestamp(mtime_ns / 1e9, UTC),
        content_type(key),
    )


#: the text of each whole second seen (``YYYY-MM-DDTHH:MM:SS``), for :func:`mtime_text`:
#: files written together share seconds; bounded, cleared when full
_SECONDS: dict[int, str] = {}
#: the seconds mtime_text formats itself: years 1970 to 9999 (others take datetime's path)
_LAST_SECOND = 253402300799


def mtime_text(mtime_ns: int) -> str:
    """``datetime.fromtimestamp(mtime_ns / 1e9, UTC)`` as the catalog's text
    (``isoformat()`` with ``Z``), character for character, without building the datetime:
    the same float, split into whole seconds and microseconds as ``fromtimestamp`` splits it
    (``modf``, round half to even), the seconds' text looked up once per second, the
    microseconds left out when zero as ``isoformat`` leaves them (``tests/test_local_walk.py``
    compares the two)."""
    frac, whole = _modf(mtime_ns / 1e9)
    us = round(frac * 1e6)
    sec = int(whole)
    if us >= 1000000:
        us -= 1000000
        sec += 1
    if not 0 <= sec <= _LAST_SECOND or us < 0:
        return mtime_text_of(_fromtimestamp(mtime_ns / 1e9, UTC))
    text = _SECONDS.get(sec)
    if text is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        text = _SECONDS[sec] = _fromtimestamp(sec, UTC).isoformat()[:19]
    return f"{text}.{us:06d}Z" if us else text + "Z"


class _Listed(ObjectInfo):
    """The :class:`ObjectInfo` of a listed file, equal to :func:`_object_info`'s, whose
    ``last_modified`` and ``content_type`` are worked out when read: a re-sync compares most
    listed files by key, size and ETag only, and never reads them (about a third of the cost
    of a listed file's record)."""

    __slots__ = ("_mtime_ns",)
    # a listed file has none of these: read from the class, never set per object (their
    # slots stay empty; ObjectInfo's own methods read them by attribute, as every caller)
    version = None
    md5 = None
    metadata = None
    tags = None

    def __init__(self, key: str, size: int, mtime_ns: int) -> None:
        _set_key(self, key)
        _set_size(self, size)
        _set_etag(self, f"{size:x}-{mtime_ns:x}")  # local_etag(st), inlined: once per file
        _set_mtime_ns(self, mtime_ns)

    @property  # type: ignore[override]
    def last_modified(self) -> datetime:
        return _fromtimestamp(self._mtime_ns / 1e9, UTC)

    @property  # type: ignore[override]
    def content_type(self) -> str | None:
        return content_type(self.key)

    def __eq__(self, other: object) -> bool:
        # equal to the plain ObjectInfo of the same fields (a dataclass compares only its
        # own class; ObjectInfo's __eq__ gives way to this one for a _Listed)
        if isinstance(other, ObjectInfo):
            return _FIELDS(self) == _FIELDS(other)
        return NotImplemented

    __hash__ = ObjectInfo.__hash__

    def __repr__(self) -> str:
        return repr(ObjectInfo(*_FIELDS(self)))

    def __reduce__(self) -> tuple[object, ...]:
        return (_Listed, (self.key, self.size, self._mtime_ns))


_set_key, _set_size, _set_etag = (getattr(ObjectInfo, f).__set__ for f in ("key", "size", "etag"))
_set_mtime_ns = _Listed._mtime_ns.__set__  # type: ignore[attr-defined]
_FIELDS = operator.attrgetter(*ObjectInfo.__dataclass_fields__)
_fromtimestamp = datetime.fromtimestamp
_modf = math.modf
