"""Logs that keep secrets, verbosity flags anywhere, and output that pipes (issue 8, #4, #11).

Secrets are planted as known values (an AWS secret key and session token, an Azure account
key in a connection string, an API token) and the most verbose output of real syncs against
moto and Azurite is searched for them. The same output must still hold the SDKs' debug lines,
or the test would prove nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from providers.redact import redact
from syncd.cli import hoist_global_flags, printable
from tests.conftest import unique_bucket
from tests.emulators import AZURITE_ACCOUNT, AZURITE_KEY, Emulator
from tests.test_sync_cli import syncd

SECRET_KEY = "planted-secret-key-d0-not-print-3f9a"
SESSION_TOKEN = "planted-session-token-d0-not-print-7c21"
API_TOKEN = "planted-api-token-d0-not-print-0123"
SYNC = (sys.executable, "-m", "syncd.cli", "sync")


def test_redaction_of_the_shapes_sdks_print() -> None:
    lines = {
        "{'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261124/us-east-1/s3/"
        "aws4_request, SignedHeaders=host, Signature=deadbeef'}": "deadbeef",
        "'X-Amz-Security-Token': b'FQoGZXIvYXdzEXAMPLETOKEN'": "FQoGZXIvYXdzEXAMPLETOKEN",
        "GET https://acct.blob.core.windows.net/c/b?sv=2021&sig=abc%2Bdef%3D&se=2026": "abc%2Bdef",
        "https://b.s3.amazonaws.com/k?X-Amz-Signature=0a1b2c&X-Amz-Credential=AKIA%2F": "0a1b2c",
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0a2V5;": "c2VjcmV0a2V5",
        '{"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkq\\n-----END PRIVATE '
        'KEY-----\\n", "client_email": "x"}': "MIIEvQIBADANBgkq",
        "assertion=eyJhbGciOiJSUzI1NiJ9.payload.sig&grant_type=jwt": "eyJhbGciOiJSUzI1NiJ9",
        "Authorization: SharedKey devstoreaccount1:Zm9vYmFy": "Zm9vYmFy",
    }
    for line, secret in lines.items():
        masked = redact(line)
        assert secret not in masked, masked
        assert "***" in masked
    assert redact("listed 1,000 objects in s3://bucket/raw/") == (
        "listed 1,000 objects in s3://bucket/raw/"
    )


@pytest.fixture
def planted_env(moto: Emulator) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": moto.url,
        "AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEY000001",
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_SESSION_TOKEN": SESSION_TOKEN,
        "AWS_DEFAULT_REGION": "us-east-1",
        "SYNCD_API_TOKEN": API_TOKEN,
    }


def test_vv_on_s3_prints_the_sdk_debug_output_without_secrets(
    moto: Emulator, planted_env: dict[str, str], tmp_path: Path
) -> None:
    bucket = unique_bucket()
    s3 = boto3.client("s3", endpoint_url=moto.url)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"a")
    for flags in (["--debug"], ["-vv"]):
        proc = syncd(
            "sync", f"s3://{bucket}", "--dataset", "d", "--db", str(tmp_path / "c.db"), *flags,
            env=planted_env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        err = proc.stderr
        assert "botocore" in err and "x-amz-security-token" in err.lower(), err[-2000:]
        for secret in (SECRET_KEY, SESSION_TOKEN, API_TOKEN):
            assert secret not in err and secret not in proc.stdout
        assert "Signature=" not in err or "Signature=***" in err
        db = (tmp_path / "c.db").read_bytes()
        assert SECRET_KEY.encode() not in db and SESSION_TOKEN.encode() not in db


def test_vv_on_azure_masks_the_key_and_sas_signatures(azurite: Emulator, tmp_path: Path) -> None:
    from azure.storage.blob import BlobServiceClient

    conn = azurite.extra["connection_string"]
    container = unique_bucket()
    BlobServiceClient.from_connection_string(conn).create_container(container)
    proc = syncd(
        "sync", f"az://{container}", "--dataset", "d", "--db", str(tmp_path / "c.db"), "-vv",
        env={"AZURE_STORAGE_CONNECTION_STRING": conn},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "azure.core" in proc.stderr  # the SDK's request lines are there...
    assert AZURITE_KEY not in proc.stderr  # ...without the account key
    assert f"SharedKey {AZURITE_ACCOUNT}:" not in proc.stderr.replace("***", "")


def test_debug_after_the_command_and_quiet(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    db = str(tmp_path / "c.db")
    after = syncd("sync", str(src), "--dataset", "d", "--db", db, "--debug")
    assert after.returncode == 0 and "DEBUG" in after.stderr
    before = syncd("--debug", "sync", str(src), "--dataset", "d", "--db", db)
    assert before.returncode == 0 and "DEBUG" in before.stderr
    quiet = syncd("sync", str(tmp_path / "missing"), "--dataset", "e", "--db", db, "-q")
    assert quiet.returncode == 2 and len(quiet.stderr.splitlines()) == 1  # errors still show
    warn = syncd("sync", str(src), "--dataset", "d", "--db", db, "-q")
    assert warn.returncode == 0 and warn.stderr == ""


def test_hoisting_leaves_values_and_separators_alone() -> None:
    assert hoist_global_flags(["sync", "s3://b", "--debug", "--log-format", "json", "-v"]) == [
        "--debug",
        "--log-format",
        "json",
        "-v",
        "sync",
        "s3://b",
    ]
    assert hoist_global_flags(["events", "apply", "--", "-v"]) == ["events", "apply", "--", "-v"]


def test_json_log_format(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.symlink("/etc/hostname", src / "outside")  # a warning line to format
    proc = syncd(
        "sync", str(src), "--dataset", "d", "--db", str(tmp_path / "c.db"), "--log-format", "json"
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stderr.splitlines()[0])
    assert record["level"] == "warning" and "outside" in record["message"]


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3000):
        (src / f"f{i:05d}").write_text("x")
    proc = subprocess.Popen(
        [*SYNC, str(src), "--dataset", "d", "--db", str(tmp_path / "c.db"), "--dry-run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # `| head -1`
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert first.startswith(b"+ f")
    assert code in (0, 141) and "Broken pipe" not in err and "Traceback" not in err, err


def test_keys_with_control_characters_print_escaped_in_text_and_exact_in_json(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    hostile = "two\nlines\tand \x1b[31mred\x1b[0m"
    (src / hostile).write_text("x")
    db = str(tmp_path / "c.db")
    assert syncd("sync", str(src), "--dataset", "d", "--db", db).returncode == 0
    text = syncd("items", "ls", "--dataset", "d", "--db", db).stdout.splitlines()
    assert len(text) == 2  # the header and one row: the newline did not split it
    assert text[1].startswith("/two\\nlines\\tand \\x1b[31mred\\x1b[0m\t")
    rows = [
        json.loads(x)
        for x in syncd("items", "ls", "--dataset", "d", "--db", db, "--json").stdout.splitlines()
    ]
    assert [r["key"] for r in rows] == [hostile]
    plan = syncd("sync", str(src), "--dataset", "e", "--db", db, "--dry-run").stdout
    assert plan.splitlines()[0] == "+ " + printable(hostile)
