"""A throwaway PostgreSQL server for the tests: initdb + postgres in a temporary folder.

Where the binaries come from, first found first tried: ``pg_config --bindir``, the ``initdb``
on PATH, ``/usr/lib/postgresql/<version>/bin`` (Debian/Ubuntu, newest first), and last the
binaries bundled in PyPI's ``pgserver`` package (in the ``test`` extra, so ``make test`` on a
fresh machine always has one). Only pgserver's binaries are used, never its server manager
(which adds system users and opens up folder permissions).

The server is a child process listening on 127.0.0.1 and a free port, its unix socket inside
the temporary folder, tuned for speed and not for durability (``fsync=off``: a crash loses the
cluster, which is thrown away anyway). It goes away in three layers:

* :meth:`PostgresServer.stop` (the session fixture's teardown): fast shutdown, wait, then the
  folder is removed;
* an ``atexit`` hook calls the same, for a session that ends without its teardown;
* ``postgres`` gets ``SIGQUIT`` (immediate shutdown) from the kernel when the thread that
  started it dies (``PR_SET_PDEATHSIG``, Linux), e.g. when pytest is killed with ``SIGKILL``.
  Its folder then stays in the temporary directory.

initdb and postgres refuse to run as root: as root, both run as ``nobody`` (``subprocess``'s
``user=``/``group=``) in a folder made under the system temporary directory and owned by it
(pytest's own temporary folders are private to root, so ``nobody`` could not enter them).
Binaries ``nobody`` cannot run where they are (pgserver's inside the ``.venv`` of a checkout
in a private folder, such as a clone under ``mktemp -d``) are copied, with their install
folder (``bin``, ``lib``, ``share``), to a folder under the system temporary directory that
``nobody`` can read, once per session (:func:`runnable_by`); removed at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import glob
import importlib.util
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from tests.emulators import free_port

SUPERUSER = "postgres"
#: a throwaway server: durability off for speed; room for several daemons with pools
SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "32MB",  # five test sessions may share a machine
    "listen_addresses": "127.0.0.1",
}
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries were found, or none of them started a server (message: why)."""


@dataclass(frozen=True)
class BinarySource:
    """A folder holding ``initdb`` and ``postgres``, and where it was found."""

    origin: str
    bindir: Path


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / exe, os.X_OK) for exe in ("initdb", "postgres"))


def _pg_config_bindir() -> Path | None:
    exe = shutil.which("pg_config")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--bindir"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def pgserver_bindir() -> Path | None:
    """pgserver's bundled ``bin`` folder, found without importing the package (its import
    has side effects: runtime folders, warnings)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def binary_sources() -> list[BinarySource]:
    """Every usable binary folder on this machine, in the order they are tried (system
    binaries first, pgserver's last), each folder once. ``SYNCD_TEST_PG_BINDIR`` set: that
    folder only (to test one source by hand, e.g. pgserver's)."""
    forced = os.environ.get("SYNCD_TEST_PG_BINDIR")
    if forced:
        bindir = Path(forced)
        return [BinarySource("SYNCD_TEST_PG_BINDIR", bindir)] if _has_server(bindir) else []
    candidates: list[tuple[str, Path | None]] = [("pg_config --bindir", _pg_config_bindir())]
    on_path = shutil.which("initdb")
    candidates.append(("PATH", Path(on_path).resolve().parent if on_path else None))
    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        candidates.append(("/usr/lib/postgresql", Path(found)))
    candidates.append(("pgserver", pgserver_bindir()))
    sources: list[BinarySource] = []
    seen: set[Path] = set()
    for origin, bindir in candidates:
        if bindir is None or not _has_server(bindir) or bindir.resolve() in seen:
            continue
        seen.add(bindir.resolve())
        sources.append(BinarySource(origin, bindir))
    return sources


def _unprivileged() -> tuple[int, int] | None:
    """The (uid, gid) to run the server as: ``nobody`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent: int) -> None:
    """preexec_fn: the kernel sends SIGQUIT (postgres' immediate shutdown) when the thread
    that started us dies. subprocess changes uid/gid before calling this, and a credential
    change clears the setting, so it must be set here and not earlier."""
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGQUIT)
    if os.getppid() != parent:  # the parent died before the setting took effect
        os._exit(1)


def _tail(path: Path, lines: int = 3) -> str:
    """The last lines of a log, joined into one line (for a one-line error)."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"


@dataclass
class PostgresServer:
    """A running throwaway server. :meth:`dsn` names its databases; :meth:`stop` ends it."""

    bindir: Path
    root: Path  # the temporary folder: data/, sock/, log files
    port: int
    process: subprocess.Popen[bytes]
    started_in: float = 0.0  # seconds from initdb to the first answered query
    _stopped: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def pid(self) -> int:
        """The postmaster's pid (every other server process is its child)."""
        return self.process.pid

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def dsn(self, dbname: str = "postgres") -> str:
        """``postgresql://postgres@127.0.0.1:PORT/dbname`` (trust auth: no password)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        """An autocommit connection (what CREATE/DROP DATABASE need)."""
        return psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=10)

    def create_database(self, name: str) -> str:
        """A new empty database ``name`` (copied from template0); returns its URL."""
        with self.connect() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                    sql.Identifier(name)
                )
            )
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting whatever still uses it (a test's leftover pool)."""
        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def halt(self) -> None:
        """Fast shutdown (clients are disconnected), keeping the cluster, its folder and its
        port: :meth:`resume` starts the same server again (a database server restart)."""
        with self._lock:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                self.process.wait(timeout=60)

    def resume(self, timeout: float = 60) -> None:
        """Start the halted cluster again on the same port; returns once it answers."""
        with self._lock:
            if self._stopped or self.process.poll() is None:
                raise RuntimeError("resume() needs a server halted with halt()")
            source = BinarySource("resume", self.bindir)
            self.process = _launch(source, self.root, _unprivileged(), self.port)
            _wait_ready(self.process, self.dsn(), self.root / "postgres.log", timeout)

    def stop(self) -> None:
        """Fast shutdown (clients are disconnected), wait for the postmaster (it exits after
        all its children), then remove the folder. Idempotent; safe from ``atexit``."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            if self.process.poll() is None:
                for sig, wait in ((signal.SIGINT, 30), (signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
                    self.process.send_signal(sig)
                    try:
                        self.process.wait(timeout=wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            shutil.rmtree(self.root, ignore_errors=True)
            atexit.unregister(self.stop)


def _initdb(source: BinarySource, root: Path, owner: tuple[int, int] | None) -> None:
    data = root / "data"
    log = root / "initdb.log"
    args = [
        str(source.bindir / "initdb"),
        "-D", str(data),
        "-U", SUPERUSER,
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",  # durability is not wanted for a throwaway cluster
    ]  # fmt: skip
    with log.open("wb") as out:
        try:
            done = subprocess.run(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=root,
                env={**os.environ, "LC_ALL": "C"},
                user=owner[0] if owner else None,
                group=owner[1] if owner else None,
                timeout=120,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise PostgresUnavailable(f"initdb could not run: {exc}") from exc
    if done.returncode != 0:
        raise PostgresUnavailable(f"initdb exited with {done.returncode}: {_tail(log)}")


def _launch(
    source: BinarySource, root: Path, owner: tuple[int, int] | None, port: int
) -> subprocess.Popen[bytes]:
    args = [str(source.bindir / "postgres"), "-D", str(root / "data"), "-p", str(port)]
    args += ["-c", f"unix_socket_directories={root / 'sock'}"]
    for name, value in SETTINGS.items():
        args += ["-c", f"{name}={value}"]
    with (root / "postgres.log").open("ab") as log:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            env={**os.environ, "LC_ALL": "C"},
            user=owner[0] if owner else None,
            group=owner[1] if owner else None,
            # a Ctrl-C for pytest must not reach the server first: the session's teardown
            # still needs it to drop its databases, and stops it afterwards
            start_new_session=True,
            preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        )


#: the copies made for ``nobody`` this session: original bindir -> the copy's bindir
_copies: dict[Path, Path] = {}
#: an install folder larger than this is not copied (a bindir like /usr/bin: its parent is /usr)
MAX_COPY_BYTES = 512 * 1024 * 1024


def _runs_as(bindir: Path, owner: tuple[int, int]) -> bool:
    """Whether ``owner`` can run ``bindir``'s postgres (every folder above it searchable, its
    libraries readable). A binary that runs and fails otherwise counts as runnable: starting
    the server reports that failure."""
    try:
        done = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            user=owner[0],
            group=owner[1],
            timeout=60,
        )
    except PermissionError:
        return False
    except (OSError, subprocess.SubprocessError):
        return True
    out = (done.stdout + done.stderr).decode(errors="replace")
    return "Permission denied" not in out and "cannot open shared object" not in out


def _folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def runnable_by(source: BinarySource, owner: tuple[int, int] | None) -> BinarySource:
    """``source`` if ``owner`` (None: ourselves) can run its binaries, else a copy of its
    install folder that ``owner`` can (made once per session). Raises
    :class:`PostgresUnavailable` with one line when no such copy can be made."""
    if owner is None or _runs_as(source.bindir, owner):
        return source
    copied = _copies.get(source.bindir)
    if copied is not None:
        return BinarySource(f"{source.origin}, copied", copied)
    prefix = source.bindir.parent
    why = (
        f"{source.bindir} cannot be run by uid {owner[0]} (a folder above it is private to "
        "its owner)"
    )
    if not (prefix / "share").is_dir() or _folder_bytes(prefix) > MAX_COPY_BYTES:
        raise PostgresUnavailable(
            f"{why} and {prefix} is not a small self-contained install to copy; make the "
            "folders above it searchable by others (chmod o+x), or point SYNCD_TEST_PG_BINDIR "
            "at binaries they can run"
        )
    root = Path(tempfile.mkdtemp(prefix="syncd-pgbin-"))
    # pgserver's binaries find their libraries at $ORIGIN/../../../pgserver.libs (a wheel's
    # vendored libraries): the copy keeps that layout
    package = prefix.parent
    libs = package.parent / f"{package.name}.libs"
    try:
        shutil.copytree(prefix, root / package.name / prefix.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, root / libs.name, symlinks=True)
        for path in [root, *root.rglob("*")]:
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            # readable by all; searchable / executable by all where the owner may
            extra = 0o444 | (0o111 if path.is_dir() or mode & 0o100 else 0)
            path.chmod(mode | extra)
    except OSError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresUnavailable(f"{why}, and copying {prefix} failed: {exc}") from exc
    atexit.register(shutil.rmtree, root, True)
    bindir = root / package.name / prefix.name / source.bindir.name
    _copies[source.bindir] = bindir
    return BinarySource(f"{source.origin}, copied", bindir)


def _wait_ready(proc: subprocess.Popen[bytes], dsn: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PostgresUnavailable(f"postgres exited with {proc.returncode}: {_tail(log)}")
        try:
            with psycopg.connect(dsn, connect_timeout=5) as conn:
                conn.execute("SELECT 1").fetchone()
            return
        except psycopg.OperationalError as exc:
            last = str(exc).strip().replace("\n", " ")
            time.sleep(0.05)  # polling a condition (the server answers), under a deadline
    raise PostgresUnavailable(f"postgres did not answer within {timeout:.0f}s: {last}")


def start_with(source: BinarySource, timeout: float = 60) -> PostgresServer:
    """A new cluster from ``source``'s binaries, running and answering queries."""
    began = time.monotonic()
    owner = _unprivileged()
    source = runnable_by(source, owner)
    root = Path(tempfile.mkdtemp(prefix="syncd-pg-"))
    try:
        (root / "sock").mkdir()
        if owner:
            for path in (root, root / "sock"):
                os.chown(path, *owner)
        _initdb(source, root, owner)
        for _attempt in range(5):
            # another process may take the free port before postgres binds it: try another
            port = free_port()
            proc = _launch(source, root, owner, port)
            server = PostgresServer(source.bindir, root, port, proc)
            try:
                _wait_ready(proc, server.dsn(), root / "postgres.log", timeout)
            except PostgresUnavailable as exc:
                _end(proc)
                if "already in use" in str(exc) or "could not create any TCP/IP" in str(exc):
                    continue
                raise
            server.started_in = time.monotonic() - began
            atexit.register(server.stop)
            return server
        raise PostgresUnavailable("no free port could be bound in 5 attempts")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def _end(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def start_server(timeout: float = 60) -> PostgresServer:
    """A running server from the first binary source that starts one.

    Raises :class:`PostgresUnavailable` with one line naming every source tried and why it
    failed (or that none was found, and how to get one)."""
    sources = binary_sources()
    forced = os.environ.get("SYNCD_TEST_PG_BINDIR")
    if not sources and forced:
        raise PostgresUnavailable(f"SYNCD_TEST_PG_BINDIR={forced} holds no initdb and postgres")
    if not sources:
        raise PostgresUnavailable(
            "no PostgreSQL binaries found (pg_config, PATH, /usr/lib/postgresql/*/bin, "
            "pgserver); install the test extra: pip install -e '.[test]'"
        )
    reasons = []
    for source in sources:
        try:
            return start_with(source, timeout)
        except PostgresUnavailable as exc:
            reasons.append(f"{source.bindir} ({source.origin}): {exc}")
    raise PostgresUnavailable("; ".join(reasons))


def our_server_pids(postmaster: int) -> set[int]:
    """The postmaster and its children (backends, checkpointer, ...), read from /proc."""
    pids = {postmaster}
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
            if int(fields.get("PPid", "0").strip()) == postmaster:
                pids.add(int(status.parent.name))
    return pids


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
