"""Where an object's bytes may go on disk: the one check between a key and a local path.

A bucket key is any string; a pull must never write outside its folder, whatever the key. The
rules, applied to the key relative to the driver path (the item's ``filename`` without its
leading ``/``):

* refused: an empty name, a NUL or other control character below 0x20, an absolute path (a
  leading ``/`` or ``\\``), a drive letter (``C:``), a ``.`` or ``..`` segment (split on ``/``
  *and* ``\\``, so a key cannot climb out on Windows either), an empty segment (``a//b`` would
  land on ``a/b``, another key's file);
* a key ending in ``/`` is a folder marker (the zero-byte objects consoles create): it names a
  folder, not a file;
* a name ending in ``.syncd-tmp`` is refused: that suffix marks a pull's files in progress.

Then, at write time, :func:`local_path` refuses a path whose folders include a symbolic link:
a link placed inside the folder must not carry a write outside it.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat

from providers.local import TMP_SUFFIX

_DRIVE = re.compile(r"[A-Za-z]:")
#: a control character: one regex search, not a Python loop over the name's characters
#: (this check runs twice per file of a pull)
_CONTROL = re.compile(r"[\x00-\x1f]")


class UnsafePath(ValueError):
    """The key cannot be written inside the folder; the message says why."""


def check_relative(rel: str) -> str:
    """Return ``rel`` if it is a safe relative file path, else raise ``UnsafePath``.

    A name ending in :data:`~providers.local.TMP_SUFFIX` is refused too: it is what a pull
    writes in progress (the key ``.a.syncd-tmp`` would be ``a``'s temp file)."""
    if not rel:
        raise UnsafePath("empty file name")
    if _CONTROL.search(rel):
        raise UnsafePath("control character (NUL, newline, ...) in the name")
    if rel.startswith(("/", "\\")):
        raise UnsafePath("absolute path")
    if _DRIVE.match(rel):
        raise UnsafePath("drive letter")
    segments = rel.split("/")
    if any(seg in (".", "..") for part in segments for seg in part.split("\\")):
        raise UnsafePath("'.' or '..' path segment")
    if "" in segments[:-1]:
        raise UnsafePath("empty path segment ('//')")
    if rel.rstrip("/").endswith(TMP_SUFFIX):
        raise UnsafePath(f"name ending in {TMP_SUFFIX}, reserved for files being written")
    return rel


def is_folder_marker(rel: str) -> bool:
    return rel.endswith("/")


def local_path(root: str, rel: str) -> str:
    """The file for ``rel`` under ``root`` (a real path), its parent folders created.

    Folders are made one at a time, each checked with ``lstat`` before going into it, so a
    symbolic link on the way is refused (``UnsafePath``) before anything is created through
    it. A file standing where a folder is needed is refused too ("file/folder conflict"):
    unlike a bucket, a folder cannot hold both ``a`` and ``a/b``."""
    parts = check_relative(rel).rstrip("/").split("/")
    parent = root
    for depth, part in enumerate(parts[:-1], 1):
        parent = os.path.join(parent, part)
        try:
            mode = os.lstat(parent).st_mode  # most folders exist: one call, not mkdir + lstat
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(parent)
            mode = os.lstat(parent).st_mode
        if stat.S_ISLNK(mode):
            raise UnsafePath("the path goes through a symbolic link")
        if not stat.S_ISDIR(mode):
            raise UnsafePath(
                f"file/folder conflict: a file stands at {'/'.join(parts[:depth])!r}, where "
                "this key needs a folder (a folder cannot hold both 'a' and 'a/b', as a "
                "bucket can)"
            )
    return os.path.join(parent, parts[-1])
