"""Each documented credential form really authenticates against the emulators."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from providers import DriverConfig, Integration, open_driver
from tests.conftest import unique_bucket
from tests.emulators import AZURITE_ACCOUNT, AZURITE_KEY, Emulator


def _container(azurite: Emulator) -> str:
    from azure.storage.blob import BlobServiceClient

    name = unique_bucket()
    BlobServiceClient.from_connection_string(azurite.extra["connection_string"]).create_container(
        name
    )
    return name


async def _round_trip(cfg: DriverConfig) -> None:
    async with open_driver(cfg) as driver:
        await driver.put("cred/check.txt", b"ok")
        keys = [o.key async for page in driver.list("cred/") for o in page]
        assert keys == ["cred/check.txt"]


async def test_azure_account_key(azurite: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCD_TEST_AZ_KEY", AZURITE_KEY)
    integ = Integration(
        "key", "azure", {"account_name": AZURITE_ACCOUNT, "account_key": "env:SYNCD_TEST_AZ_KEY"}
    )
    endpoint = f"{azurite.url}/{AZURITE_ACCOUNT}"
    await _round_trip(
        DriverConfig(type="azure", bucket=_container(azurite), endpoint=endpoint, integration=integ)
    )


async def test_azure_sas_token_from_file(azurite: Emulator, tmp_path: Path) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    bucket = _container(azurite)
    sas = generate_container_sas(
        AZURITE_ACCOUNT,
        bucket,
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, write=True, list=True, delete=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    (tmp_path / "sas").write_text(sas + "\n")
    integ = Integration(
        "sas", "azure", {"account_name": AZURITE_ACCOUNT, "sas_token": f"file:{tmp_path / 'sas'}"}
    )
    endpoint = f"{azurite.url}/{AZURITE_ACCOUNT}"
    await _round_trip(
        DriverConfig(type="azure", bucket=bucket, endpoint=endpoint, integration=integ)
    )


async def test_s3_named_profile(
    moto: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    bucket = unique_bucket()
    boto3.client("s3", endpoint_url=moto.url).create_bucket(Bucket=bucket)
    creds = tmp_path / "credentials"
    creds.write_text("[syncd-test]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    integ = Integration("prof", "s3", {"profile": "syncd-test"})
    await _round_trip(DriverConfig(type="s3", bucket=bucket, endpoint=moto.url, integration=integ))


def test_missing_secret_reference_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from providers import ConfigError

    monkeypatch.delenv("SYNCD_TEST_UNSET", raising=False)
    integ = Integration("i", "s3", {"secret_access_key": "env:SYNCD_TEST_UNSET"})
    with pytest.raises(ConfigError, match="SYNCD_TEST_UNSET, which is not set"):
        open_driver(DriverConfig(type="s3", bucket="b", integration=integ))
    assert "SYNCD_TEST_UNSET" not in os.environ
