"""The local folder driver's walk, in plain records, runnable in a process of its own.

:func:`walk` yields what a listing of a folder holds, in key order, as plain records: a
``(key, size, mtime_ns)`` tuple per object, a ``(key, reason)`` pair per entry the listing
leaves out and reports. :mod:`providers.local` holds the folder's rules (:func:`classify`
here is their one place) and turns records into :class:`~providers.base.ObjectInfo`.

The walk costs a ``stat`` and a few Python steps per file under the GIL. A large listing
therefore runs it in a child process (``python -I -S`` on this file: standard library only,
no site, no package import): the walk's work leaves the interpreter that compares and writes,
and runs on another core. :func:`main` is that child: records go to its standard output in
frames (a 4-byte big-endian length, then ``marshal`` of a list of records); the last frame is
``[("end",)]``, or ``[("error", errno, strerror, filename)]`` for an ``OSError`` that stopped
the walk. A stream that stops without one of these is a failed listing (the reader raises),
never a complete one.

Standard library only: this file is run by path in a child that imports nothing else.
"""

from __future__ import annotations

import errno
import marshal
import os
import stat
import sys
from collections.abc import Iterator
from stat import S_ISREG

TMP_SUFFIX = ".syncd-tmp"
#: a listed object: (key, size, mtime_ns); an entry left out and reported: (key, reason)
Record = tuple[str, int, int] | tuple[str, str]
#: records per run and per frame of the child's output: a listing page's worth
FRAME = 1000


def _first(entry: tuple[str, bool, os.DirEntry[str]]) -> str:
    return entry[0]


def walk(
    root: str, prefix: str = "", start_after: str | None = None, end_before: str | None = None
) -> Iterator[list[Record]]:
    """The records of the folder ``root`` (a real path) for keys that start with ``prefix``
    and lie strictly between ``start_after`` and ``end_before``, in key order, in runs (lists
    of records: a directory's entries between its sub-directories, at most about
    :data:`FRAME`; never empty), so a step
    of the caller's costs one resumption per run, not one per file. Memory: the widest
    directory and the depth, not the tree."""
    return _walk(root, "", prefix, start_after, end_before)


def _walk(
    root: str, rel: str, prefix: str, start_after: str | None, end_before: str | None
) -> Iterator[list[Record]]:
    """Runs of records under ``rel`` (a key prefix ending in ``/``, or empty) in key order."""
    directory = os.path.join(root, *rel.split("/")) if rel else root
    try:
        with os.scandir(directory) as it:
            entries = []
            for entry in it:
                is_dir = entry.is_dir(follow_symlinks=False)
                entries.append((rel + entry.name + ("/" if is_dir else ""), is_dir, entry))
    except FileNotFoundError:
        return  # removed while we walked: nothing there any more
    # sorted by key (a sub-directory sorts as name + "/"): S3's order
    entries.sort(key=_first)
    # every key here starts with rel: the prefix and start_after need no look per file when
    # rel is under the prefix and sorts after start_after
    bounded = not rel.startswith(prefix) or (start_after is not None and not start_after < rel)
    run: list[Record] = []
    for key, is_dir, entry in entries:
        if end_before is not None and key >= end_before:
            break  # everything after this sorts later still
        if is_dir:
            # skip whole sub-trees that cannot hold a key in range or under prefix
            if not (key.startswith(prefix) or prefix.startswith(key)):
                continue
            if start_after is not None and key < start_after and not start_after.startswith(key):
                continue
            if run:
                yield run
                run = []
            yield from _walk(root, key, prefix, start_after, end_before)
            continue
        if bounded and (
            not key.startswith(prefix) or (start_after is not None and key <= start_after)
        ):
            continue
        if not entry.is_symlink() and not key.endswith(TMP_SUFFIX):
            # the common case, a plain entry that is a regular file with a UTF-8 name, in
            # one stat; anything else (links, odd files, races) takes classify's full rules
            try:
                st = entry.stat()
            except OSError:
                st = None
            if st is not None and S_ISREG(st.st_mode) and (key.isascii() or is_utf8(key)):
                run.append((key, st.st_size, st.st_mtime_ns))
                if len(run) >= FRAME:
                    yield run  # a run stays a page's worth however wide the directory
                    run = []
                continue
        found = classify(root, key, entry)
        if isinstance(found, str):
            run.append((key, found))
        elif found is not None:
            run.append((key, found.st_size, found.st_mtime_ns))
    if run:
        yield run


def classify(
    root: str, key: str, entry: os.DirEntry[str] | None = None
) -> os.stat_result | str | None:
    """What a listing of the folder ``root`` reports for ``key``, from a fresh look at the
    disk: the ``stat`` of an object (a regular file, or a symlink to one inside ``root``), the
    reason an entry is left out *and reported* (a symlink leaving the folder or pointing to a
    folder, a link loop or other entry ``stat`` cannot read, a socket/fifo/device, a name that
    is not UTF-8), or None for nothing a listing would mention (no such entry, a folder, a
    temp file, a path below a symlinked folder). The rules of
    :func:`providers.local.stat_object`, which documents the arguments."""
    if key.endswith(TMP_SUFFIX):
        return None  # a put() in progress
    if entry is not None:
        path = entry.path
        is_link = entry.is_symlink()
    else:
        path = os.path.join(root, *key.split("/"))
        parent = os.path.dirname(path)
        # a key reached through a linked folder is not in any listing (which never follows
        # one); checking the parent chain also stops a watcher's stale path from escaping
        if parent != root and os.path.realpath(parent) != parent:
            return None
        try:
            is_link = stat.S_ISLNK(os.lstat(path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return None
    if is_link and not inside(root, path):
        return "symlink to a path outside the folder"
    try:
        st = entry.stat(follow_symlinks=True) if entry is not None else os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None  # removed (or a dangling link) while we looked
    except OSError as exc:
        # a link loop (ELOOP), a file the stat cannot reach: left out and reported, like
        # any entry no key can stand for; raising would fail every listing of the folder
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (never followed)"
        return f"cannot read it: {exc.strerror or exc}"
    if stat.S_ISDIR(st.st_mode):
        return "symlink to a folder (never followed)" if is_link else None
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"  # sockets, fifos, devices
    if not is_utf8(key):
        # os.scandir and inotify hand undecodable bytes back as lone surrogates; no
        # catalog, URI or JSON can hold such a key
        return "file name is not valid UTF-8"
    return st


def is_utf8(name: str) -> bool:
    """True when ``name`` encodes to UTF-8 (it holds no lone surrogates from bad bytes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def inside(root: str, path: str) -> bool:
    """True when ``path`` resolves to ``root`` or below it."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


# -- the child process ----------------------------------------------------------------------


def write_frame(out: object, records: list[object]) -> None:
    data = marshal.dumps(records)
    out.write(len(data).to_bytes(4, "big") + data)  # type: ignore[attr-defined]


def main() -> int:
    """The child: reads ``(root, prefix, start_after, end_before)`` (``marshal``) from its
    standard input, writes the records to its standard output in frames (see the module
    docstring)."""
    root, prefix, start_after, end_before = marshal.load(sys.stdin.buffer)
    out = sys.stdout.buffer
    batch: list[object] = []
    try:
        for run in walk(root, prefix, start_after, end_before):
            batch += run
            if len(batch) >= FRAME:
                write_frame(out, batch)
                batch = []
        if batch:
            write_frame(out, batch)
        write_frame(out, [("end",)])
    except BrokenPipeError:
        return 0  # the reader went away (the listing was closed early): nothing to say
    except OSError as exc:
        if batch:
            write_frame(out, batch)
        write_frame(out, [("error", exc.errno, exc.strerror or str(exc), exc.filename)])
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
