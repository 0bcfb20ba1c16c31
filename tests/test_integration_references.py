"""Credentials declared in syncd.toml are the ones used, on every run (issue 8, #3).

The catalog keeps an integration's *references* (``env:NAME``, ``file:/path``), never the
secrets, and resolves them each time; a reference that cannot be resolved is a configuration
error, never a fallback to whatever credentials the environment holds.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3

from tests.conftest import BAD_SECRET_B64, unique_bucket
from tests.emulators import AZURITE_ACCOUNT, AZURITE_KEY, Emulator
from tests.test_cli_errors import one_line_error
from tests.test_sync_cli import summary

AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def no_aws_env(**extra: str) -> dict[str, str]:
    """The environment with no ambient AWS credentials (and no shared files to find)."""
    env = {k: v for k, v in os.environ.items() if k not in AWS_VARS}
    env["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent/credentials"
    env["AWS_CONFIG_FILE"] = "/nonexistent/config"
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return {**env, **extra}


def run(env: dict[str, str], *args: str):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "syncd.cli", *args], capture_output=True, text=True, env=env
    )


def test_s3_integration_references_are_stored_and_resolved_each_run(
    moto: Emulator, tmp_path: Path
) -> None:
    bucket = unique_bucket()
    s3 = boto3.client("s3", endpoint_url=moto.url)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="raw/a.jpg", Body=b"a")
    secret = "integration-secret-d0-not-store-me"
    config = tmp_path / "syncd.toml"
    config.write_text(
        f"""
[integrations.aws-prod]
type = "s3"
access_key_id = "env:MY_KEY"
secret_access_key = "env:MY_SECRET"

[drivers.images]
type = "s3"
bucket = "{bucket}"
path = "raw/"
endpoint = "{moto.url}"
integration = "aws-prod"

[datasets.birds]
driver = "images"
"""
    )
    db = tmp_path / "c.db"
    env = no_aws_env(MY_KEY="AKIAINTEGRATION0001", MY_SECRET=secret)
    first = run(env, "sync", "--config", str(config), "--db", str(db), "--json")
    assert summary(first)["created"] == 1  # before the fix: "no credentials found"

    # later: no config file, no ambient AWS variables: the stored references still work
    s3.put_object(Bucket=bucket, Key="raw/b.jpg", Body=b"b")
    again = run(env, "sync", "--dataset", "birds", "--db", str(db), "--json")
    assert summary(again)["created"] == 1

    # the reference cannot be resolved: exit 2 naming it, even with ambient keys around
    ambient = {
        **no_aws_env(MY_SECRET=secret),
        "AWS_ACCESS_KEY_ID": "AKIAAMBIENT",
        "AWS_SECRET_ACCESS_KEY": "x",
    }
    one_line_error(
        run(ambient, "sync", "--dataset", "birds", "--db", str(db)), 2, "MY_KEY", "aws-prod"
    )

    raw = db.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("c.db-*"))
    assert b"env:MY_KEY" in raw  # the reference is kept...
    assert secret.encode() not in raw and b"AKIAINTEGRATION0001" not in raw  # ...never the value


def test_azure_sas_integration_is_used_not_the_ambient_connection_string(
    azurite: Emulator, tmp_path: Path
) -> None:
    from azure.storage.blob import (
        BlobServiceClient,
        ContainerSasPermissions,
        generate_container_sas,
    )

    container = unique_bucket()
    service = BlobServiceClient.from_connection_string(azurite.extra["connection_string"])
    service.create_container(container)
    service.get_blob_client(container, "x/one.txt").upload_blob(b"1")
    sas = generate_container_sas(
        AZURITE_ACCOUNT,
        container,
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    (tmp_path / "sas").write_text(sas)
    config = tmp_path / "syncd.toml"
    config.write_text(
        f"""
[integrations.blob]
type = "azure"
account_name = "{AZURITE_ACCOUNT}"
sas_token = "file:{tmp_path / "sas"}"

[drivers.docs]
type = "azure"
bucket = "{container}"
endpoint = "{azurite.url}/{AZURITE_ACCOUNT}"
integration = "blob"

[datasets.docs]
driver = "docs"
"""
    )
    db = tmp_path / "c.db"
    # the ambient connection string carries a wrong key: using it would fail authentication
    wrong = azurite.extra["connection_string"].replace(AZURITE_KEY, BAD_SECRET_B64)
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": wrong}
    first = run(env, "sync", "--config", str(config), "--db", str(db), "--json")
    assert summary(first)["created"] == 1  # before the fix: "no storage account given"
    service.get_blob_client(container, "x/two.txt").upload_blob(b"2")
    again = run(env, "sync", "--dataset", "docs", "--db", str(db), "--json")
    assert summary(again)["created"] == 1
    assert sas.encode() not in db.read_bytes()
    (tmp_path / "sas").unlink()
    one_line_error(run(env, "sync", "--dataset", "docs", "--db", str(db)), 2, str(tmp_path / "sas"))
