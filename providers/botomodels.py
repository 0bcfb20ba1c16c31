"""botocore's data loader, made cheaper to start: the same files, the same data, read once.

Every ``syncd`` command that talks to S3 makes a botocore client, and making the first one
costs about 0.1 s of CPU (bench/README.md, issue 27), three quarters of it in botocore's
loader: it lists every service folder it ships (about 400 ``listdir`` and 900 ``stat``
calls) to learn whether ``s3`` is one of them, then decompresses and parses about 3.6 MB of
JSON (the S3 model, its endpoint rules, ``endpoints.json``) into ``OrderedDict`` objects.

:class:`ModelLoader` is botocore's own :class:`~botocore.loaders.Loader` with two changes:

* whether a service exists is answered by its own folder (``list_api_versions``, which
  botocore calls next anyway), not by listing all of them; an unknown service still gets
  botocore's own error, naming the known ones;
* a data file, once parsed, is kept in a per-user cache (``$XDG_CACHE_HOME/syncd/botocore``,
  else ``~/.cache/syncd/botocore``) in :mod:`marshal` form, which loads about five times
  faster than the JSON parse and, unlike pickle, builds only plain values (no code runs; a
  crafted entry could still crash the interpreter, so the cache folder and its entries are
  used only when they are the user's own and writable by nobody else: a relative
  ``XDG_CACHE_HOME`` is ignored, as the XDG spec says, and entries are opened without
  following links). An entry is named by the file's path, device, inode, size,
  modification and change times and the botocore and Python versions, so an upgrade or an
  edited model (``~/.aws/models``, even one restored with its old time) is parsed again. The data is the same
  except for the mapping type: plain ``dict`` (which keeps the order, as the ``OrderedDict``
  botocore asks its parser for; botocore only iterates and indexes them), cached or not. Any failure to read or write the cache (no home
  folder, a read-only disk, a damaged entry) falls back to botocore's parse: the cache is
  never needed to be right.

Search paths are botocore's (its ``data_path`` setting, ``~/.aws/models``, its own data).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import marshal
import os
import re
import stat
import sys
import tempfile
from typing import Any

import botocore
from botocore.exceptions import DataNotFoundError
from botocore.loaders import JSONFileLoader, Loader, instance_cache

from providers.collector import paused

#: bumped when what an entry holds changes
_FORMAT = 1


def cache_dir() -> str:
    """Where parsed model files are kept: ``$XDG_CACHE_HOME/syncd/botocore`` when that is an
    absolute path, else ``~/.cache/syncd/botocore``."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "syncd", "botocore")


def _own(st: os.stat_result) -> bool:
    """Whether a cache folder or entry with status ``st`` is this user's and writable by no
    one else (what another user could have planted is never read)."""
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


class CachedJSONFileLoader(JSONFileLoader):
    """botocore's JSON file loader, keeping what it parses in :func:`cache_dir`."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root or cache_dir()

    def _entry(self, full_path: str, st: os.stat_result) -> tuple[str, str]:
        """The cache entry of ``full_path`` as it stands now, and the prefix every entry of
        that path shares (older ones are removed when a new one is written)."""
        where = hashlib.sha256(full_path.encode("utf-8", "surrogateescape")).hexdigest()[:24]
        # the botocore version in the shared prefix: two installs reading one data file (an
        # AWS_DATA_PATH, ~/.aws/models) keep an entry each instead of replacing each other's
        where += "." + hashlib.sha256(botocore.__version__.encode()).hexdigest()[:8]
        what = (
            f"{_FORMAT}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
            f"|{sys.version}"
        )
        version = hashlib.sha256(what.encode()).hexdigest()[:16]
        return os.path.join(self.root, f"{where}.{version}.marshal"), where + "."

    def _read(self, entry: str) -> bytes:
        """The bytes of ``entry`` if it is a plain file of this user's in a folder of this
        user's (:func:`_own`), not reached through a link; ``OSError`` otherwise."""
        if not _own(os.lstat(self.root)) or not os.path.isdir(self.root):
            raise OSError(f"not a cache folder of this user's: {self.root}")
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as cached:
            st = os.fstat(cached.fileno())
            if not stat.S_ISREG(st.st_mode) or not _own(st):
                raise OSError(f"not a cache entry of this user's: {entry}")
            return cached.read()

    def _load_file(self, full_path: str, open_method: Any) -> Any:
        try:
            st = os.stat(full_path)
        except OSError:
            return None  # as botocore's: not there, try the next extension
        if not stat.S_ISREG(st.st_mode):
            return None  # botocore's isfile(): a folder of that name is skipped
        entry, prefix = self._entry(full_path, st)
        with contextlib.suppress(OSError, ValueError, EOFError, TypeError):
            blob = self._read(entry)
            with paused():
                return marshal.loads(blob)
        # botocore's parse, into plain dicts (marshal stores no OrderedDict): the same data
        # whether it came from the cache or not
        with open_method(full_path, "rb") as fp:
            payload = fp.read().decode("utf-8")
        with paused():
            data = json.loads(payload)
        self._store(entry, prefix, data)
        return data

    def _store(self, entry: str, prefix: str, data: Any) -> None:
        """Write ``data`` as ``entry`` (atomically: a reader sees a whole entry or none),
        removing older entries of the same file. Failures are ignored (see the module)."""
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            if not _own(os.lstat(self.root)) or not os.path.isdir(self.root):
                return  # someone else's folder, or a link: not written, never read
            blob = marshal.dumps(data)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(blob)
                os.replace(tmp, entry)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            name = os.path.basename(entry)
            for other in os.listdir(self.root):
                if other.startswith(prefix) and other != name:
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.root, other))
        except (OSError, ValueError):
            pass


#: a service's folder name (no separator, no "..": it is joined to the search paths)
_SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


class ModelLoader(Loader):
    """botocore's loader with the two changes the module describes."""

    FILE_LOADER_CLASS = CachedJSONFileLoader

    @instance_cache
    def load_service_model(
        self, service_name: str, type_name: str, api_version: str | None = None
    ) -> Any:
        """botocore's method, less its listing of every service folder: the service's
        folder holding a file of this type (``list_api_versions``) is what that listing
        checked. A name that is not a plain service name, or one not found, takes botocore's
        own method (its checks, its ``UnknownServiceError``)."""
        if not _SERVICE_NAME.fullmatch(service_name):
            return super().load_service_model(service_name, type_name, api_version)
        try:
            versions = self.list_api_versions(service_name, type_name)
        except DataNotFoundError:
            # unknown here: botocore's method raises its own error (UnknownServiceError)
            return super().load_service_model(service_name, type_name, api_version)
        if api_version is None:
            api_version = max(versions)
        model = self.load_data(os.path.join(service_name, api_version, type_name))
        extras = self._find_extras(service_name, type_name, api_version)
        self._extras_processor.process(model, extras)
        return model


#: one loader per search-path setting, shared by every session of the process: the models it
#: holds are read-only to botocore, and a second driver need not parse them again
_LOADERS: dict[str | None, ModelLoader] = {}


def use_model_loader(session: Any) -> None:
    """Make ``session`` (a ``botocore.session.Session`` that has made no client yet) load
    its models through a :class:`ModelLoader` with the search paths its own would have
    (botocore's ``create_loader`` of the ``data_path`` setting)."""
    data_path = session.get_config_variable("data_path")
    loader = _LOADERS.get(data_path)
    if loader is None:
        extra = None
        if data_path is not None:
            extra = [os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep)]
        loader = _LOADERS[data_path] = ModelLoader(extra_search_paths=extra)
    session.register_component("data_loader", loader)
