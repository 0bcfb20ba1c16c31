"""syncd.toml is validated as a whole: a wrong value is one line naming the key, nothing is
written; sizes and delete limits have one parser each; the config file is found without
``--config`` ($SYNCD_CONFIG, then ./syncd.toml)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import click
import pytest

from providers.config import PROVIDERS, PUBLIC_FIELDS
from syncd.config import (
    DriverTable,
    ProviderType,
    find_config,
    load_config,
    load_daemon_config,
)
from syncd.errors import UsageError
from syncd.limits import MaxDelete, MaxDeleteType, parse_max_delete
from syncd.units import SizeType, parse_size
from tests.test_cli_errors import one_line_error

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """``syncd ARGS`` in a fresh process, in ``cwd``, with no inherited SYNCD_* settings."""
    base = {k: v for k, v in os.environ.items() if k not in ("SYNCD_CONFIG", "SYNCD_DB")}
    return subprocess.run(
        [sys.executable, "-m", "syncd.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=base | {"PYTHONPATH": str(ROOT)} | env,
        timeout=120,
    )


def item_keys(db: Path, dataset: str, cwd: Path | None = None) -> list[str]:
    proc = run("items", "ls", "--dataset", dataset, "--db", str(db), "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line)["key"] for line in proc.stdout.splitlines()]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder with a 900-byte and a 1100-byte file."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.bin").write_bytes(b"s" * 900)
    (src / "large.bin").write_bytes(b"l" * 1100)
    return src


def config_text(folder: Path, driver: str = "", dataset: str = "", extra: str = "") -> str:
    return (
        f'[drivers.disk]\ntype = "local"\nbucket = "{folder}"\n{driver}\n'
        f'[datasets.d]\ndriver = "disk"\n{dataset}\n{extra}\n'
    )


# -- wrong values: one line, the key's location, nothing written ----------------------------


@pytest.mark.parametrize(
    ("driver", "dataset", "extra", "needle"),
    [
        ("path = 5", "", "", "drivers.disk.path: must be a string (got an integer)"),
        ('region = ["a"]', "", "", "drivers.disk.region: must be a string (got an array)"),
        ("page_size = 0", "", "", "drivers.disk.page_size: must be at least 1 (got 0)"),
        ("page_size = 5000", "", "", "drivers.disk.page_size: must be at most 1000 (got 5000)"),
        ('page_size = "10"', "", "", "drivers.disk.page_size: must be an integer (got a string)"),
        (
            'allow_external_delete = "yes"',
            "",
            "",
            "drivers.disk.allow_external_delete: must be true or false (got a string)",
        ),
        (
            "region = 5\nendpoint = true",
            "",
            "",
            "drivers.disk.region: must be a string (got an integer) (+1 more)",
        ),
        (
            "",
            'include = "*.jpg"',
            "",
            'datasets.d.include: must be an array (got a string); write ["*.jpg"]',
        ),
        ("", 'exclude = ["ok", 5]', "", "datasets.d.exclude[1]: must be a string (got an integer)"),
        (
            "",
            'max_size = "10XB"',
            "",
            "datasets.d.max_size: '10XB' is not a size: unknown unit 'XB'",
        ),
        ("", "max_size = -1", "", "datasets.d.max_size: must not be negative (got -1)"),
        (
            "",
            'max_delete = "120%"',
            "",
            "datasets.d.max_delete: a delete limit must be between 0% and 100% (got 120%)",
        ),
        (
            "",
            "max_delete = 0.5",
            "",
            "datasets.d.max_delete: must be a number of items or a percentage",
        ),
        ("", "interval = 0", "", "datasets.d.interval: must be greater than 0 (got 0)"),
        ("", 'watch = "no"', "", "datasets.d.watch: must be true or false (got a string)"),
        (
            'integration = "aws"',
            "",
            '[integrations.aws]\ntype = "s3"\nprofile = 5',
            "integrations.aws.profile: must be a string (got an integer)",
        ),
        ("", "", "[daemon]\ninterval = -5", "daemon.interval: must be greater than 0 (got -5)"),
        ("", "", '[server]\nport = "8080"', "server.port: must be an integer (got a string)"),
        (
            "",
            "",
            '[queues.q]\ntype = "kafka"',
            "queues.q.type: must be one of 'sqs', 'azure-queue', 'pubsub' (got 'kafka')",
        ),
        ("colour = 1\nshade = 2", "", "", "drivers.disk.colour: unknown key (+1 more)"),
        ("", "", "[deamon]\ninterval = 5", "deamon: unknown section (expected integrations,"),
    ],
)
def test_wrong_value_is_one_line_naming_the_key(
    tmp_path: Path, folder: Path, driver: str, dataset: str, extra: str, needle: str
) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text(config_text(folder, driver, dataset, extra))
    db = tmp_path / "c.db"
    err = one_line_error(run("sync", "--config", str(path), "--db", str(db)), 2, needle)
    assert err.startswith(f"syncd: error: config {str(path)!r}: "), err
    assert not db.exists()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            '[datasets.d]\ndriver = "nope"',
            "datasets.d.driver: unknown driver 'nope' (declared: none)",
        ),
        (
            '[drivers.x]\ntype = "s3"\nbucket = "b"\nintegration = "i"\n[datasets.d]\ndriver = "x"',
            "drivers.x.integration: unknown integration 'i' (declared: none)",
        ),
        (
            '[integrations.i]\ntype = "gcs"\n[drivers.x]\ntype = "s3"\nbucket = "b"\n'
            'integration = "i"\n[datasets.d]\ndriver = "x"',
            "drivers.x.integration: integration 'i' is of type gcs, not s3",
        ),
        ('[integrations.i]\ntype = "s3"\ncolour = "red"', "integrations.i.colour: unknown key"),
        ('[drivers.x]\ntype = "local"\nbucket = "/"', "declares no [datasets.NAME]"),
        (
            '[datasets.d]\ndriver = "x"\n[datasets."a.b"]\ndriver = 3',
            'datasets."a.b".driver: must be a string',
        ),
        ("datasets = 5", "datasets: must be a table (got an integer)"),
        (
            '[drivers.x]\ntype = "s3"\nbucket = ""\n[datasets.d]\ndriver = "x"',
            "drivers.x.bucket: must not be empty",
        ),
        (
            '[integrations.i]\ntype = "s3"\nsecret_access_key = "hunter2-literal"\n'
            '[drivers.x]\ntype = "s3"\nbucket = "b"\nintegration = "i"\n[datasets.d]\ndriver = "x"',
            "field 'secret_access_key' holds a literal secret",
        ),
    ],
)
def test_file_level_faults(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        load_config(str(path))
    message = str(info.value)
    assert message.startswith(f"config {str(path)!r}: ") and needle in message, message
    assert "\n" not in message and "hunter2-literal" not in message


def test_a_misspelt_secret_key_is_not_echoed(tmp_path: Path) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text('[integrations.i]\ntype = "s3"\nsecret_acess_key = "hunter2-literal"\n')
    with pytest.raises(UsageError) as info:
        load_config(str(path))
    assert "integrations.i.secret_acess_key: unknown key" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_schema_matches_the_driver_config() -> None:
    """A DriverConfig field the schema lacks could never be set from the file."""
    assert set(DriverTable.model_fields) == {*PUBLIC_FIELDS, "page_size"}
    assert get_args(ProviderType) == PROVIDERS


# -- new keys ----------------------------------------------------------------------------------


def test_dataset_and_daemon_keys_parse(tmp_path: Path, folder: Path) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text(
        '[integrations.aws]\ntype = "s3"\nprofile = "prod"\n'
        '[integrations.az]\ntype = "azure"\naccount_name = "acct"\n'
        '[integrations.gcp]\ntype = "gcs"\nproject = "p"\n'
        + config_text(
            folder,
            dataset='max_size = "1.5GiB"\nmax_delete = "2.5%"\ninterval = 60\nwatch = false',
            extra=(
                '[datasets.e]\ndriver = "disk"\nmax_size = 100\nmax_delete = 10\n'
                "[daemon]\ninterval = 900\n"
                '[queues.s]\ntype = "sqs"\nurl = "https://sqs.eu-west-1.amazonaws.com/1/q"\n'
                'integration = "aws"\n'
                '[queues.a]\ntype = "azure-queue"\nqueue = "events"\naccount = "acct"\n'
                'integration = "az"\n'
                '[queues.p]\ntype = "pubsub"\nsubscription = "projects/p/subscriptions/s"\n'
                'integration = "gcp"\n'
                '[server]\nhost = "0.0.0.0"\nport = 9000\n'
            ),
        )
    )
    cfg = load_daemon_config(str(path))
    d, e = cfg.datasets["d"], cfg.datasets["e"]
    assert (d.filters.max_size, d.max_delete, d.interval, d.watch) == (
        1536 * 1024**2,
        MaxDelete(percent=2.5),
        60,
        False,
    )
    # a dataset without its own interval takes [daemon]'s
    assert (e.filters.max_size, e.max_delete, e.interval, e.watch) == (
        100,
        MaxDelete(count=10),
        900,
        True,
    )
    assert cfg.daemon.interval == 900
    assert (cfg.server.host, cfg.server.port) == ("0.0.0.0", 9000)
    s, a, p = cfg.queues["s"], cfg.queues["a"], cfg.queues["p"]
    assert (s.type, s.url, s.integration and s.integration.name) == (
        "sqs",
        "https://sqs.eu-west-1.amazonaws.com/1/q",
        "aws",
    )
    assert (a.type, a.queue, a.account, a.integration and a.integration.type) == (
        "azure-queue",
        "events",
        "acct",
        "azure",
    )
    assert (p.type, p.subscription, p.url) == ("pubsub", "projects/p/subscriptions/s", None)
    assert load_config(str(path)) == cfg.datasets


def test_daemon_defaults(tmp_path: Path, folder: Path) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text(config_text(folder))
    cfg = load_daemon_config(str(path))
    spec = cfg.datasets["d"]
    assert (spec.max_delete, spec.interval, spec.watch, spec.filters.max_size) == (
        None,
        3600,
        True,
        None,
    )
    # no [server] table: the daemon serves no API
    assert (cfg.daemon.interval, cfg.queues, cfg.server) == (3600, {}, None)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("[daemon]\ninterval = 1.5", "daemon.interval: must be an integer (got a float)"),
        ("[daemon]\nevery = 5", "daemon.every: unknown key"),
        ('[queues.q]\ntype = "sqs"', "queues.q.url: required key is missing"),
        ('[queues.q]\ntype = "sqs"\nurl = 5', "queues.q.url: must be a string (got an integer)"),
        (
            '[queues.q]\ntype = "sqs"\nurl = "my-queue"',
            "queues.q.url: must be the queue's URL, like https://sqs.REGION.amazonaws.com/... (got 'my-queue')",
        ),
        ('[queues.q]\nurl = "https://x"', "queues.q.type: required key is missing"),
        (
            '[queues.q]\ntype = "pubsub"\nsubscription = "s"\nqueue = "x"',
            "queues.q.queue: unknown key",
        ),
        (
            '[queues.q]\ntype = "azure-queue"\naccount = "a"',
            "queues.q.queue: required key is missing",
        ),
        (
            '[queues.q]\ntype = "pubsub"\nsubscription = "s"\nintegration = "i"',
            "queues.q.integration: unknown integration 'i' (declared: none)",
        ),
        (
            '[integrations.i]\ntype = "s3"\n[queues.q]\ntype = "pubsub"\nsubscription = "s"\nintegration = "i"',
            "queues.q.integration: integration 'i' is of type s3, not gcs",
        ),
        ("[queues]\nq = 3", "queues.q: must be a table (got an integer)"),
        ("[server]\nport = 0", "server.port: must be at least 1 (got 0)"),
        ("[server]\nport = 65536", "server.port: must be at most 65535 (got 65536)"),
        ('[server]\nhost = ""', "server.host: must not be empty"),
    ],
)
def test_wrong_daemon_values(tmp_path: Path, folder: Path, extra: str, needle: str) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text(config_text(folder, extra=extra))
    with pytest.raises(UsageError) as info:
        load_daemon_config(str(path))
    assert str(info.value) == f"config {str(path)!r}: {needle}"


# -- max_delete --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", MaxDelete(count=0)),
        ("100", MaxDelete(count=100)),
        (" 7 ", MaxDelete(count=7)),
        ("25%", MaxDelete(percent=25.0)),
        ("2.5%", MaxDelete(percent=2.5)),
        ("0%", MaxDelete(percent=0.0)),
        ("100%", MaxDelete(percent=100.0)),
    ],
)
def test_parse_max_delete(text: str, expected: MaxDelete) -> None:
    assert parse_max_delete(text) == expected
    assert MaxDeleteType().convert(text, None, None) == expected


@pytest.mark.parametrize("text", ["-1", "1.5", "101%", "-5%", "%", "", "ten", "25 percent"])
def test_parse_max_delete_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="delete limit"):
        parse_max_delete(text)
    with pytest.raises(click.BadParameter):
        MaxDeleteType().convert(text, None, None)


@pytest.mark.parametrize(
    ("limit", "known", "allowed"),
    [
        (MaxDelete(count=5), 0, 5),
        (MaxDelete(count=5), 1000, 5),
        (MaxDelete(percent=25), 10, 2),  # rounded down
        (MaxDelete(percent=10), 5, 0),
        (MaxDelete(percent=100), 7, 7),
        (MaxDelete(percent=0.29), 10000, 29),  # float arithmetic would give 28
        (MaxDelete(percent=2.5), 0, 0),
    ],
)
def test_max_delete_limit(limit: MaxDelete, known: int, allowed: int) -> None:
    assert limit.limit(known) == allowed


def test_max_delete_is_one_or_the_other() -> None:
    for bad in ({}, {"count": 1, "percent": 1.0}, {"count": -1}, {"percent": 100.5}):
        with pytest.raises(ValueError):
            MaxDelete(**bad)
    assert str(MaxDelete(percent=2.5)) == "2.5%" and str(MaxDelete(count=3)) == "3"


# -- sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("1B", 1),
        ("500k", 500_000),
        ("500K", 500_000),
        ("1kB", 1000),
        ("10MB", 10_000_000),
        ("10mb", 10_000_000),
        ("10M", 10_000_000),
        ("2G", 2 * 10**9),
        ("3TB", 3 * 10**12),
        ("1KiB", 1024),
        ("1kib", 1024),
        ("2 MiB", 2 * 1024**2),
        ("1.5GiB", 1536 * 1024**2),
        ("1TiB", 1024**4),
        ("1.1kB", 1100),  # exact: not 1100.0000000000002
        (".5k", 500),
        ("0.5", 0),  # a fraction of a byte is rounded down
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size
    assert SizeType().convert(text, None, None) == size


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("10XB", "unknown unit 'XB'"),
        ("10 Mbit", "unknown unit 'Mbit'"),
        ("-1", "sizes cannot be negative"),
        ("-1MB", "sizes cannot be negative"),
        ("", "expected a number"),
        ("MB", "expected a number"),
        ("1.2.3", "expected a number"),
        ("1e6", "expected a number"),
    ],
)
def test_parse_size_refuses(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match="is not a size") as info:
        parse_size(text)
    assert needle in str(info.value)
    with pytest.raises(click.BadParameter):
        SizeType().convert(text, None, None)


def test_max_size_flag_takes_units(tmp_path: Path, folder: Path) -> None:
    db = tmp_path / "c.db"
    proc = run("sync", str(folder), "--dataset", "d", "--db", str(db), "--max-size", "1k")
    assert proc.returncode == 0, proc.stderr
    assert item_keys(db, "d") == ["small.bin"]
    # 1.1k is exactly 1100 bytes: the large file is not larger than that
    proc = run("sync", "--dataset", "d", "--db", str(db), "--max-size", "1.1k", "--replace-filters")
    assert proc.returncode == 0, proc.stderr
    assert item_keys(db, "d") == ["large.bin", "small.bin"]
    assert "KiB" in run("sync", "--help").stdout


@pytest.mark.parametrize(("value", "needle"), [("10XB", "unknown unit 'XB'"), ("-1", "negative")])
def test_max_size_flag_refuses(tmp_path: Path, folder: Path, value: str, needle: str) -> None:
    db = tmp_path / "c.db"
    proc = run("sync", str(folder), "--dataset", "d", "--db", str(db), "--max-size", value)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    [line] = proc.stderr.splitlines()  # one line, no usage block
    assert line.startswith("syncd: error:"), line
    assert "'--max-size'" in line and needle in line, proc.stderr
    assert not db.exists()


def test_max_size_in_config_takes_units(tmp_path: Path, folder: Path) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text(config_text(folder, dataset='max_size = "1kB"'))
    db = tmp_path / "c.db"
    proc = run("sync", "--config", str(path), "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    assert item_keys(db, "d") == ["small.bin"]


# -- finding the config file -----------------------------------------------------------------


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """An empty working directory."""
    path = tmp_path / "work"
    path.mkdir()
    return path


def test_syncd_config_variable_is_used(tmp_path: Path, folder: Path, work: Path) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text(config_text(folder, dataset='include = ["small*"]'))
    db = tmp_path / "c.db"
    proc = run("sync", "--db", str(db), cwd=work, SYNCD_CONFIG=str(path))
    assert proc.returncode == 0, proc.stderr
    assert item_keys(db, "d") == ["small.bin"]


def test_syncd_toml_in_working_directory_is_used(tmp_path: Path, folder: Path, work: Path) -> None:
    (work / "syncd.toml").write_text(config_text(folder, dataset='include = ["small*"]'))
    proc = run("sync", "--db", str(tmp_path / "c.db"), cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert item_keys(tmp_path / "c.db", "d") == ["small.bin"]


def test_syncd_config_variable_comes_before_working_directory(
    tmp_path: Path, folder: Path, work: Path
) -> None:
    (work / "syncd.toml").write_text(config_text(folder, dataset='include = ["small*"]'))
    path = tmp_path / "elsewhere.toml"
    path.write_text(config_text(folder, dataset='include = ["large*"]'))
    db = tmp_path / "c.db"
    assert run("sync", "--db", str(db), cwd=work, SYNCD_CONFIG=str(path)).returncode == 0
    assert item_keys(db, "d") == ["large.bin"]


def test_syncd_config_naming_a_missing_file_is_an_error(tmp_path: Path, work: Path) -> None:
    (work / "syncd.toml").write_text("not even read")
    db = tmp_path / "c.db"
    missing = str(tmp_path / "missing.toml")
    proc = run("sync", "--db", str(db), cwd=work, SYNCD_CONFIG=missing)
    one_line_error(proc, 2, f"SYNCD_CONFIG={missing!r}: no such config file")
    assert not db.exists()


def test_dataset_not_in_found_config_is_synced_from_the_catalog(
    tmp_path: Path, folder: Path, work: Path
) -> None:
    db = tmp_path / "c.db"
    assert run("sync", str(folder), "--dataset", "old", "--db", str(db), cwd=work).returncode == 0
    assert run("sync", "--dataset", "old", "--db", str(db), cwd=work).returncode == 0
    (folder / "new.bin").write_bytes(b"n")
    (work / "syncd.toml").write_text(config_text(folder, dataset='include = ["small*"]'))
    # the found file declares only "d": "old" is re-synced from its catalog binding
    proc = run("sync", "--dataset", "old", "--db", str(db), cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert item_keys(db, "old") == ["large.bin", "new.bin", "small.bin"]
    # "d", which it declares, comes from the file
    proc = run("sync", "--dataset", "d", "--db", str(db), cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert item_keys(db, "d") == ["small.bin"]
    # a SOURCE is not mixed with the found file
    proc = run("sync", str(folder), "--dataset", "s", "--db", str(db), cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert item_keys(db, "s") == ["large.bin", "new.bin", "small.bin"]
    # an explicit --config must declare the dataset
    one_line_error(
        run("sync", "--config", "syncd.toml", "--dataset", "old", "--db", str(db), cwd=work),
        2,
        "unknown dataset 'old': syncd.toml declares d",
    )
    (work / "syncd.toml").unlink()
    one_line_error(run("sync", "--db", str(db), cwd=work), 2, "--dataset NAME is required")


def test_filters_flags_conflict_with_a_found_config(
    tmp_path: Path, folder: Path, work: Path
) -> None:
    (work / "syncd.toml").write_text(config_text(folder))
    db = tmp_path / "c.db"
    proc = run("sync", "--dataset", "d", "--include", "*", "--db", str(db), cwd=work)
    one_line_error(proc, 2, "with a config file (syncd.toml), declare include/exclude/max_size")
    assert not db.exists()


def test_find_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SYNCD_CONFIG", raising=False)
    assert find_config(None) is None
    assert find_config("given.toml") == "given.toml"  # unchecked: loading reports it
    (tmp_path / "syncd.toml").write_text("")
    assert find_config(None) == "syncd.toml"
    monkeypatch.setenv("SYNCD_CONFIG", "")  # empty is unset
    assert find_config(None) == "syncd.toml"
    other = tmp_path / "other.toml"
    other.write_text("")
    monkeypatch.setenv("SYNCD_CONFIG", str(other))
    assert find_config(None) == str(other)
    assert find_config("given.toml") == "given.toml"
    monkeypatch.setenv("SYNCD_CONFIG", str(tmp_path))  # a folder is not a config file
    with pytest.raises(UsageError, match="no such config file"):
        find_config(None)
