"""The throwaway PostgreSQL of tests/pg.py: it answers, is UTF8 with C collation, gives each
test its own database, and leaves neither a folder nor a process behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from tests import pg
from tests.emulators import ROOT

_seen_databases: list[str] = []


def _wait_until(condition, timeout: float = 60.0) -> bool:
    """Poll ``condition`` until it holds or a generous deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_query_answers_on_a_utf8_cluster_with_c_collation(postgres_url: str) -> None:
    dbname = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT 6 * 7").fetchone() == (42,)
        assert conn.execute("SELECT current_database()").fetchone() == (dbname,)
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
        # lc_collate is a database property (PostgreSQL 16 dropped the setting)
        row = conn.execute(
            "SELECT datcollate, datctype FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        assert row == ("C", "C")
        # C collation: code point order, as sqlite compares keys
        keys = [
            r[0] for r in conn.execute("SELECT k FROM (VALUES ('b'), ('B'), ('a')) v(k) ORDER BY k")
        ]
        assert keys == ["B", "a", "b"]
        assert int(conn.execute("SHOW max_connections").fetchone()[0]) >= 200
        assert conn.execute("SHOW fsync").fetchone() == ("off",)


@pytest.mark.parametrize("turn", [1, 2])
def test_each_test_gets_a_fresh_database_dropped_afterwards(
    postgres_server: pg.PostgresServer, postgres_url: str, turn: int
) -> None:
    """Run twice: the second run gets a database without the first run's table, under a new
    name, and the first run's database no longer exists."""
    dbname = postgres_url.rsplit("/", 1)[1]
    assert dbname not in _seen_databases
    with psycopg.connect(postgres_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE marker (turn INTEGER)")
        conn.execute("INSERT INTO marker VALUES (%s)", (turn,))
    with postgres_server.connect() as admin:
        names = {r[0] for r in admin.execute("SELECT datname FROM pg_database")}
    assert dbname in names
    assert not names & set(_seen_databases)  # the earlier runs' databases were dropped
    _seen_databases.append(dbname)


def test_stop_removes_the_folder_and_every_server_process() -> None:
    server = pg.start_server()
    try:
        conn = psycopg.connect(server.dsn())  # a backend of its own, left open on purpose
        pids = pg.our_server_pids(server.pid)
        # postmaster, the connection's backend, checkpointer, writer, ...
        assert len(pids) >= 3
        assert all(pg.alive(pid) for pid in pids)
        assert (server.data_dir / "PG_VERSION").exists()
    finally:
        server.stop()
    assert not server.root.exists()
    assert [pid for pid in pids if pg.alive(pid)] == []
    conn.close()


def test_the_server_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """pytest killed with SIGKILL runs no teardown: the kernel ends postgres instead."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from tests import pg; s = pg.start_server();"
            " print(s.pid, s.root, flush=True); sys.stdin.read()",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = child.stdout.readline().split()
    assert len(line) == 2, "the child did not start a server"
    postmaster, root = int(line[0]), Path(line[1])
    try:
        assert pg.alive(postmaster)
        pids = pg.our_server_pids(postmaster)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert _wait_until(lambda: not any(pg.alive(pid) for pid in pids))
    finally:
        for pid in pg.our_server_pids(postmaster):
            if pg.alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def test_pgserver_binaries_are_a_source_and_start_a_server() -> None:
    """The fallback a fresh machine relies on (the test extra installs pgserver) really
    runs here; the system's binaries, when present, are tried before it."""
    sources = pg.binary_sources()
    bundled = pg.pgserver_bindir()
    assert bundled is not None, "pgserver is not installed: pip install -e '.[test]'"
    assert sources[-1].bindir == bundled
    server = pg.start_with(sources[-1])
    try:
        with psycopg.connect(server.dsn()) as conn:
            assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
    finally:
        server.stop()
    assert not server.root.exists()


def test_a_binary_folder_that_cannot_start_fails_with_one_line() -> None:
    # not tmp_path: as root the server runs as nobody, who cannot enter pytest's folders
    with tempfile.TemporaryDirectory() as folder:
        bindir = Path(folder)
        bindir.chmod(0o755)
        for exe in ("initdb", "postgres"):
            (bindir / exe).write_text("#!/bin/sh\necho 'initdb: broken on purpose' >&2\nexit 3\n")
            (bindir / exe).chmod(0o755)
        with pytest.raises(pg.PostgresUnavailable) as err:
            pg.start_with(pg.BinarySource("test", bindir))
    message = str(err.value)
    assert "\n" not in message
    assert "exited with 3" in message and "broken on purpose" in message


def test_without_a_server_postgres_tests_fail_instead_of_skipping(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["SYNCD_TEST_PG_BINDIR"] = str(tmp_path / "nothing-here")
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "tests/test_pg_server.py::test_a_query_answers_on_a_utf8_cluster_with_c_collation",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout
    assert "skipped" not in done.stdout
    assert "1 error" in done.stdout
    lines = [ln for ln in done.stdout.splitlines() if "PostgreSQL required but unavailable" in ln]
    assert lines and "nothing-here holds no initdb and postgres" in lines[0]


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="only as root does the server run as another user (nobody); as anyone else it runs "
    "as the checkout's own user, so a folder that user cannot enter does not arise (CI is root)",
)
def test_binaries_in_a_folder_nobody_can_enter_still_start_a_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkout in a private folder (a clone under ``mktemp -d`` as root): pgserver's
    binaries inside its ``.venv`` cannot be run by ``nobody`` where they are; they are copied
    once to a folder it can read."""
    bundled = pg.pgserver_bindir()
    assert bundled is not None, "pgserver is not installed: pip install -e '.[test]'"
    private = tmp_path / "checkout"
    package = bundled.parent.parent  # site-packages/pgserver; its libraries beside it
    site = private / ".venv" / "site-packages"
    shutil.copytree(package / "pginstall", site / "pgserver" / "pginstall", symlinks=True)
    shutil.copytree(package.parent / "pgserver.libs", site / "pgserver.libs", symlinks=True)
    private.chmod(0o700)
    bindir = site / "pgserver" / "pginstall" / "bin"
    monkeypatch.setenv("SYNCD_TEST_PG_BINDIR", str(bindir))
    server = pg.start_server()
    try:
        with psycopg.connect(server.dsn()) as conn:
            assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
        assert not server.bindir.is_relative_to(private)
        again = pg.runnable_by(pg.BinarySource("again", bindir), pg._unprivileged())
        assert again.bindir == server.bindir  # copied once per session
    finally:
        server.stop()
