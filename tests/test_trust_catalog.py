"""Issue 21 (trust, second pass): the catalog and the command line.

Each test here failed on 055b6dc: a catalog migrated by a newer syncd was written on, a 0-byte
file was taken for a catalog, commands found the catalog by different rules, filters given
later replaced the stored ones silently, a failing ``--json`` command printed nothing on
stdout, bare ``syncd`` was a usage error, odd dataset names and absurd intervals were
accepted, the secret masker rewrote ordinary words, and a SOURCE naming one object synced
nothing and exited 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from providers.redact import redact
from syncd.config import load_daemon_config
from syncd.errors import UsageError
from syncd.store.catalog import Catalog
from syncd.store.stamps import now
from tests import emulators
from tests.conftest import CatalogMaker, unique_bucket
from tests.test_cli_errors import one_line_error
from tests.test_config import run

ROOT = Path(__file__).resolve().parent.parent


def folder(root: Path, names: list[str]) -> Path:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    return root


# -- a catalog from a newer syncd --------------------------------------------------------


def test_a_catalog_migrated_by_a_newer_syncd_is_not_written(catalogs: CatalogMaker) -> None:
    url = catalogs.new_url()
    catalog = Catalog.open(url)
    with catalog.db.transaction():
        catalog.db.execute(
            "INSERT INTO _syncd_migrations (name, applied_at) VALUES (?, ?)",
            ["0099_from_the_future", now()],
        )
        catalog.db.execute("UPDATE catalog_info SET value = '9.9.0' WHERE key = 'syncd_version'")
    catalog.close()
    from syncd.store.db import CatalogTooNew

    with pytest.raises(CatalogTooNew) as caught:
        Catalog.open(url)
    message = str(caught.value)
    assert "0099_from_the_future" in message and "9.9.0" in message and "0.1.0" in message
    assert "upgrade syncd" in message
    Catalog.open_reader(url).close()  # reading is allowed (with a warning)


def test_db_migrate_refuses_a_newer_catalog_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    Catalog.open(str(db)).close()
    catalog = Catalog.open(str(db))
    with catalog.db.transaction():
        catalog.db.execute(
            "INSERT INTO _syncd_migrations (name, applied_at) VALUES ('0099_x', ?)", [now()]
        )
    catalog.close()
    proc = run("db", "migrate", "--db", str(db))
    one_line_error(proc, 2, "newer syncd", "0099_x", "upgrade syncd")
    assert "schema up to date" not in proc.stdout
    src = folder(tmp_path / "src", ["a.txt"])
    one_line_error(run("sync", str(src), "--dataset", "d", "--db", str(db)), 2, "newer syncd")


# -- an empty file is not a catalog -------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("events", "apply", "-"),
        ("datasets", "ls"),
        ("items", "ls", "--dataset", "x"),
        ("status",),
        ("serve", "--port", "1"),
    ],
)
def test_an_empty_file_is_not_a_catalog(tmp_path: Path, args: tuple[str, ...]) -> None:
    db = tmp_path / "z.db"
    db.write_bytes(b"")
    proc = subprocess.run(
        [sys.executable, "-m", "syncd.cli", *args, "--db", str(db)],
        input='{"Records": []}',
        capture_output=True,
        text=True,
        env={**os.environ, "SYNCD_API_TOKEN": "t" * 32},
        timeout=60,
    )
    one_line_error(proc, 2, "is an empty file, not a syncd catalog")
    assert db.stat().st_size == 0  # nothing written into it


def test_a_file_without_syncd_tables_is_not_opened_as_a_catalog(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "other.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE notes (x TEXT)")
    conn.close()
    one_line_error(run("datasets", "ls", "--db", str(db)), 2, "is not a syncd catalog")
    tables = sqlite3.connect(db).execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("notes",)]


# -- one catalog, found the same way by every command ----------------------------------


def test_every_command_finds_the_catalog_by_one_rule(tmp_path: Path) -> None:
    work = tmp_path / "work"
    src = folder(tmp_path / "src", ["a.txt", "b/c.txt"])
    work.mkdir()
    (work / "syncd.toml").write_text(
        f'[catalog]\nurl = "{tmp_path / "cat.db"}"\n'
        f'[drivers.d]\ntype = "local"\nbucket = "{src}"\n[datasets.ds]\ndriver = "d"\n'
    )
    assert run("sync", cwd=work).returncode == 0
    assert (tmp_path / "cat.db").exists() and not (work / "syncd.db").exists()
    for args in (
        ("datasets", "ls"),
        ("items", "count", "--dataset", "ds"),
        ("runs", "ls", "--dataset", "ds"),
        ("status",),
    ):
        proc = run(*args, cwd=work)
        assert proc.returncode == 0, (args, proc.stderr)
    assert run("items", "count", "--dataset", "ds", cwd=work).stdout.strip() == "2"
    # --config elsewhere, and -v names the catalog in use
    other = tmp_path / "elsewhere"
    other.mkdir()
    proc = run("-v", "datasets", "ls", "--config", str(work / "syncd.toml"), cwd=other)
    assert proc.returncode == 0, proc.stderr
    assert "ds\t" in proc.stdout
    assert f"catalog: {tmp_path / 'cat.db'}" in proc.stderr
    # $SYNCD_DB wins over the config's url, --db over both
    assert run("datasets", "ls", cwd=work, SYNCD_DB=str(tmp_path / "none.db")).returncode == 2


def test_the_example_config_is_valid() -> None:
    config = load_daemon_config(str(ROOT / "examples" / "syncd.toml"))
    assert set(config.datasets) == {"birds", "scans"}
    assert config.catalog_url == "syncd.db" and config.server is not None


# -- filters given on a later sync -----------------------------------------------------


def test_changed_filters_are_shown_and_need_replace_filters(tmp_path: Path) -> None:
    src = folder(tmp_path / "src", ["a.jpg", "b.png", "tmp/c.jpg", "2026/d.jpg"])
    db = str(tmp_path / "c.db")
    first = run("sync", str(src), "--dataset", "d", "--db", db, "--include", "*.jpg",
                "--exclude", "tmp/*")  # fmt: skip
    assert first.returncode == 0, first.stderr
    proc = run("sync", "--dataset", "d", "--db", db, "--exclude", "2026/*")
    one_line_error(proc, 2, "include=['*.jpg'] exclude=['tmp/*']", "exclude=['2026/*']",
                   "--replace-filters")  # fmt: skip
    keys = run("items", "ls", "--dataset", "d", "--db", db, "--json").stdout.splitlines()
    assert sorted(json.loads(k)["key"] for k in keys) == ["2026/d.jpg", "a.jpg"]
    same = run("sync", "--dataset", "d", "--db", db, "--include", "*.jpg", "--exclude", "tmp/*")
    assert same.returncode == 0, same.stderr
    replaced = run("sync", "--dataset", "d", "--db", db, "--exclude", "2026/*",
                   "--replace-filters", "--json")  # fmt: skip
    assert replaced.returncode == 0, replaced.stderr
    keys = run("items", "ls", "--dataset", "d", "--db", db, "--json").stdout.splitlines()
    assert sorted(json.loads(k)["key"] for k in keys) == ["a.jpg", "b.png", "tmp/c.jpg"]


# -- machine-readable failures, bare syncd -------------------------------------------------


def test_a_failing_json_command_prints_a_json_error(tmp_path: Path) -> None:
    proc = run("sync", str(tmp_path / "missing"), "--dataset", "d", "--json",
               "--db", str(tmp_path / "c.db"))  # fmt: skip
    assert proc.returncode == 2
    error = json.loads(proc.stdout)
    assert error["exit_code"] == 2 and "does not exist" in error["error"]
    proc = run("--log-format", "json", "datasets", "ls", "--db", str(tmp_path / "none.db"))
    assert proc.returncode == 2
    line = json.loads(proc.stderr)
    assert line["level"] == "error" and "does not exist" in line["message"]


def test_bare_syncd_prints_help_and_exits_0() -> None:
    proc = run()
    assert proc.returncode == 0, proc.stderr
    assert "Commands:" in proc.stdout and "sync" in proc.stdout and proc.stderr == ""


# -- names, intervals, the masker -------------------------------------------------------


@pytest.mark.parametrize("name", ["a/b", "tab\there", "bell\x07", " padded", "x" * 201, "back\\"])
def test_dataset_names_are_validated_where_datasets_are_created(tmp_path: Path, name: str) -> None:
    src = folder(tmp_path / "src", ["a.txt"])
    db = tmp_path / "c.db"
    one_line_error(run("sync", str(src), "--dataset", name, "--db", str(db)), 2, "dataset name")
    config = tmp_path / "syncd.toml"
    config.write_text(
        f'[drivers.d]\ntype = "local"\nbucket = "{src}"\n'
        f'[datasets.{json.dumps(name)}]\ndriver = "d"\n'
    )
    with pytest.raises(UsageError, match="dataset name"):
        load_daemon_config(str(config))
    catalog = Catalog.open(str(db))
    try:
        assert catalog.list_datasets() == []
    finally:
        catalog.close()


def test_an_interval_beyond_a_year_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "syncd.toml"
    config.write_text(
        f'[drivers.d]\ntype = "local"\nbucket = "{tmp_path}"\n'
        '[datasets.a]\ndriver = "d"\ninterval = 1000000000000\n'
    )
    with pytest.raises(UsageError, match=r"datasets\.a\.interval: must be at most 31536000"):
        load_daemon_config(str(config))


def test_the_masker_masks_secret_values_not_words(tmp_path: Path) -> None:
    assert redact("integrations.a.password: unknown key") == "integrations.a.password: unknown key"
    assert redact('{"password": "hunter22"}') == '{"password": "***"}'
    assert redact("password=put-me-away") == "password=***"
    config = tmp_path / "syncd.toml"
    config.write_text(
        '[integrations.a]\ntype = "s3"\npassword = "put"\n[datasets.x]\ndriver = "d"\n'
    )
    one_line_error(run("sync", "--config", str(config)), 2, "integrations.a.password: unknown key")


# -- a SOURCE naming an object -----------------------------------------------------------


def test_a_source_naming_one_object_is_refused(moto: emulators.Emulator, tmp_path: Path) -> None:
    bucket = unique_bucket()
    s3 = boto3.client("s3", endpoint_url=moto.url)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="raw/file.txt", Body=b"x")
    db = str(tmp_path / "c.db")
    env = {"AWS_ENDPOINT_URL": moto.url}
    proc = run("sync", f"s3://{bucket}/raw/file.txt", "--dataset", "one", "--db", db, **env)
    one_line_error(proc, 2, "names an object, not a folder", "--include 'file.txt'")
    assert run("datasets", "ls", "--db", db).stdout.splitlines() == [
        "NAME\tSOURCE\tITEMS\tLAST RUN"
    ]
    ok = run("sync", f"s3://{bucket}/raw", "--dataset", "one", "--db", db, **env)
    assert ok.returncode == 0, ok.stderr
    # an empty folder is still a valid source
    empty = run("sync", f"s3://{bucket}/nothing/", "--dataset", "none", "--db", db, **env)
    assert empty.returncode == 0, empty.stderr


# -- status -------------------------------------------------------------------------------


def test_status_shows_the_catalog_datasets_health_and_workers(tmp_path: Path) -> None:
    good = folder(tmp_path / "good", ["a.txt"])
    bad = folder(tmp_path / "bad", ["b.txt"])
    db = str(tmp_path / "c.db")
    assert run("sync", str(good), "--dataset", "good", "--db", db).returncode == 0
    assert run("sync", str(bad), "--dataset", "bad", "--db", db).returncode == 0
    (bad / "b.txt").unlink()
    bad.rmdir()
    for _ in range(2):
        assert run("sync", "--dataset", "bad", "--db", db).returncode == 1
    proc = run("status", "--db", db, "--json")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["catalog"] == db
    assert [d["name"] for d in found["datasets"]] == ["bad", "good"]  # failing first
    assert found["datasets"][0]["health"]["state"] == "failing"
    assert found["datasets"][0]["health"]["failures"] == 2
    assert found["datasets"][1]["health"]["state"] == "ok"
    text = run("status", "--db", db).stdout
    assert f"catalog: {db}" in text and "failing 2x" in text and "workers: 0 live" in text


# -- extras: the core is enough for a local folder; a missing extra is named ---------------

#: the top-level modules of every extra's libraries (pyproject.toml's optional dependencies)
EXTRA_MODULES = (
    "boto3", "botocore", "s3transfer", "urllib3", "requests", "google", "azure", "psycopg",
    "psycopg_pool", "aiohttp", "prometheus_client", "watchdog", "cachetools",
)  # fmt: skip
#: runs the CLI with the named modules made unimportable, as on a machine without the extra
BLOCKED_CLI = """
import importlib.abc, sys
BLOCKED = set(sys.argv.pop(1).split(","))
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocked())
from syncd.cli import main
main()
"""


def blocked_run(blocked: tuple[str, ...], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SYNCD_CONFIG", "SYNCD_DB")}
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_CLI, ",".join(blocked), *args],
        capture_output=True,
        text=True,
        env=env | {"PYTHONPATH": str(ROOT), "SYNCD_API_TOKEN": "t" * 32},
        timeout=60,
    )


def test_the_core_alone_syncs_a_local_folder(tmp_path: Path) -> None:
    src = folder(tmp_path / "src", ["a.txt", "b/c.txt"])
    db = str(tmp_path / "c.db")
    proc = blocked_run(EXTRA_MODULES, "sync", str(src), "--dataset", "d", "--db", db)
    assert proc.returncode == 0, proc.stderr
    proc = blocked_run(EXTRA_MODULES, "items", "ls", "--dataset", "d", "--db", db)
    assert proc.returncode == 0, proc.stderr
    assert "/b/c.txt" in proc.stdout


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (("sync", "s3://bucket", "--dataset", "x"), "s3"),
        (("sync", "gs://bucket", "--dataset", "x"), "gcs"),
        (("sync", "az://container", "--dataset", "x"), "azure"),
        (("datasets", "ls", "--db", "postgresql://u@127.0.0.1:1/db"), "postgres"),
        (("serve",), "daemon"),
    ],
)
def test_a_missing_extra_is_named_in_one_line(
    tmp_path: Path, args: tuple[str, ...], extra: str
) -> None:
    db = tmp_path / "c.db"
    Catalog.open(str(db)).close()
    if "--db" not in args:
        args = (*args, "--db", str(db))
    proc = blocked_run(EXTRA_MODULES, *args)
    one_line_error(proc, 2, f"the '{extra}' extra", f"pip install 'syncd[{extra}]'")


def test_quiet_and_verbose_change_what_sync_prints(tmp_path: Path) -> None:
    src = folder(tmp_path / "src", ["a.txt", "gone.txt"])
    db = str(tmp_path / "c.db")
    assert run("sync", str(src), "--dataset", "d", "--db", db).returncode == 0
    (src / "a.txt").write_text("changed")
    (src / "gone.txt").unlink()
    folder(src, ["new.txt"])
    verbose = run("-v", "sync", "--dataset", "d", "--db", db)
    assert verbose.returncode == 0, verbose.stderr
    lines = verbose.stdout.splitlines()
    assert sorted(lines[:-1]) == ["+ new.txt", "- gone.txt", "~ a.txt"], lines
    assert lines[-1].startswith("synced dataset 'd'")
    quiet = run("-q", "sync", "--dataset", "d", "--db", db)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    plain = run("sync", "--dataset", "d", "--db", db)
    assert plain.stdout.startswith("synced dataset 'd'") and len(plain.stdout.splitlines()) == 1
    # a dry run previews other filters, and says a real sync needs --replace-filters
    dry = run("sync", "--dataset", "d", "--db", db, "--exclude", "n*", "--dry-run")
    assert dry.returncode == 0 and "--replace-filters" in dry.stderr
    assert "- new.txt" in dry.stdout


async def test_a_worker_stops_taking_work_once_a_newer_syncd_migrated_the_catalog(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling upgrade on a shared PostgreSQL catalog: a newer worker migrates it; an older
    worker still running notices at its next heartbeat, says so in one line and stops, rather
    than writing on with code that does not know the schema."""
    import asyncio

    from syncd.config import DaemonConfig, DaemonSettings, DatasetSpec
    from syncd.daemon.service import Daemon
    from syncd.reconcile.filters import Filters
    from syncd.store import pg as pg_store

    src = folder(tmp_path / "src", ["a.txt"])
    from providers.config import DriverConfig

    spec = DatasetSpec("d", DriverConfig(type="local", bucket=str(src)), Filters())
    config = DaemonConfig(datasets={"d": spec}, daemon=DaemonSettings(lease_ttl=2))
    daemon = Daemon(config, postgres_url)
    task = asyncio.create_task(daemon.run())
    other = Catalog.open(postgres_url)
    try:
        while not daemon.ready.is_set():
            assert not task.done(), task.result()
            await asyncio.sleep(0.05)
        with other.db.transaction():  # what a newer worker's migration leaves
            other.db.execute(
                "INSERT INTO _syncd_migrations (name, applied_at) VALUES ('0099_newer', ?)",
                [now()],
            )
        from syncd.store.db import CatalogTooNew

        with pytest.raises(CatalogTooNew, match="0099_newer"):
            await asyncio.wait_for(task, 60)  # it stops by itself at its next heartbeat
        assert any("stops taking work" in r.getMessage() for r in caplog.records)
    finally:
        daemon.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)
        other.close()
        pg_store.close_pools()
