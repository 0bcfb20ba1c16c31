"""Bad input gets one clear line, the right exit code, no traceback, and nothing half-written."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from syncd.cli import cli
from tests.test_sync_cli import syncd

ROOT = Path(__file__).resolve().parent.parent


def one_line_error(proc, code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    return src


def test_unknown_dataset(tmp_path: Path, folder: Path) -> None:
    db = str(tmp_path / "c.db")
    assert syncd("sync", str(folder), "--dataset", "known", "--db", db).returncode == 0
    one_line_error(
        syncd("items", "ls", "--dataset", "nope", "--db", db), 2, "unknown dataset 'nope'", "known"
    )
    one_line_error(syncd("sync", "--dataset", "nope", "--db", db), 2, "unknown dataset 'nope'")


def test_listing_a_missing_catalog_does_not_create_it(tmp_path: Path) -> None:
    db = tmp_path / "absent.db"
    one_line_error(syncd("datasets", "ls", "--db", str(db)), 2, "does not exist")
    assert not db.exists()


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("ftp://host/x", "unsupported SOURCE scheme 'ftp'"),
        ("s3://", "not a valid bucket"),
        ("gs://bad bucket/x", "not a valid bucket"),
        ("s3:/missing-slash", "malformed SOURCE"),
        ("file://host/dir", "absolute path"),
        ("/definitely/not/here", "does not exist"),
    ],
)
def test_malformed_source(tmp_path: Path, source: str, needle: str) -> None:
    db = tmp_path / "c.db"
    one_line_error(syncd("sync", source, "--dataset", "d", "--db", str(db)), 2, needle)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM datasets").fetchone()[0] == 0


def test_source_bound_to_dataset_cannot_change(tmp_path: Path, folder: Path) -> None:
    db = str(tmp_path / "c.db")
    assert syncd("sync", str(folder), "--dataset", "d", "--db", db).returncode == 0
    one_line_error(
        syncd("sync", str(folder / "sub"), "--dataset", "d", "--db", db), 2, "is bound to"
    )


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "cannot read config"),
        ("this is = = not toml", "not valid TOML"),
        ('[datasets.d]\ndriver = "nope"\n', "unknown driver 'nope'"),
        (
            '[drivers.x]\ntype = "s3"\nbucket = "b"\ncolour = "red"\n[datasets.d]\ndriver = "x"\n',
            "drivers.x.colour: unknown key",
        ),
        (
            '[integrations.i]\ntype = "s3"\nsecret_access_key = "hunter2-literal"\n'
            '[drivers.x]\ntype = "s3"\nbucket = "b"\nintegration = "i"\n[datasets.d]\ndriver = "x"\n',
            "literal secret",
        ),
        (
            '[drivers.x]\ntype = "ftp"\nbucket = "b"\n[datasets.d]\ndriver = "x"\n',
            "drivers.x.type: must be 's3', 'gcs', 'azure' or 'local' (got 'ftp')",
        ),
    ],
)
def test_bad_config(tmp_path: Path, content: str | None, needle: str) -> None:
    path = tmp_path / "syncd.toml"
    if content is not None:
        path.write_text(content)
    err = one_line_error(
        syncd("sync", "--config", str(path), "--db", str(tmp_path / "c.db")), 2, needle
    )
    assert "hunter2-literal" not in err


def test_config_file_syncs_declared_datasets(tmp_path: Path, folder: Path) -> None:
    (tmp_path / "secret").write_text("not-used-by-local\n")
    path = tmp_path / "syncd.toml"
    path.write_text(
        f'[drivers.disk]\ntype = "local"\nbucket = "{folder}"\n'
        '[datasets.texts]\ndriver = "disk"\ninclude = ["sub/*"]\n'
        '[datasets.all]\ndriver = "disk"\n'
    )
    db = str(tmp_path / "c.db")
    proc = syncd("sync", "--config", str(path), "--db", db, "--json")
    assert proc.returncode == 0, proc.stderr
    ls = syncd("items", "ls", "--dataset", "texts", "--db", db)
    assert [line.split("\t")[0] for line in ls.stdout.splitlines()[1:]] == ["/sub/b.txt"]
    ls = syncd("items", "ls", "--dataset", "all", "--db", db)
    assert [line.split("\t")[0] for line in ls.stdout.splitlines()[1:]] == ["/a.txt", "/sub/b.txt"]
    one_line_error(
        syncd("sync", "--config", str(path), "--dataset", "other", "--db", db),
        2,
        "declares all, texts",
    )


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = syncd("--debug", "sync", "ftp://x/y", "--dataset", "d", "--db", str(tmp_path / "c.db"))
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        path = (*prefix, name)
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, path)
        else:
            yield path, cmd


def test_every_command_has_help_and_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    for path, cmd in _commands(cli):
        assert cmd.help, f"syncd {' '.join(path)} has no help text"
        assert re.search(rf"syncd {' '.join(path)}\b", readme), (
            f"README does not document syncd {' '.join(path)}"
        )


def test_db_defaults_to_syncd_db_variable_then_cwd(tmp_path: Path, folder: Path) -> None:
    env_db = tmp_path / "from-env.db"
    assert (
        syncd("sync", str(folder), "--dataset", "e", env={"SYNCD_DB": str(env_db)}).returncode == 0
    )
    assert env_db.exists()
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "syncd.cli", "sync", str(folder), "--dataset", "c"],
        cwd=work,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "SYNCD_DB"} | {"PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert (work / "syncd.db").exists()


def test_progress_line_on_a_terminal(tmp_path: Path, folder: Path) -> None:
    """stderr on a pty gets the live progress line; the summary still goes to stdout."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # child: stdout and stderr are the terminal
        os.execv(
            sys.executable,
            [
                sys.executable,
                "-m",
                "syncd.cli",
                "sync",
                str(folder),
                "--dataset",
                "p",
                "--db",
                str(tmp_path / "p.db"),
            ],
        )
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "\rlisted 2 (" in text and "+2 ~0 -0" in text
    assert "synced dataset 'p'" in text
