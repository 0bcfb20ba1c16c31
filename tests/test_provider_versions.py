"""Object versions in the catalog (issue 25): an s3 driver with ``versioned = true`` lists with
ListObjectVersions and records each object's VersionId (moto, versioning on); GCS records the
generation (fake-gcs-server); Azurite has no blob versioning (Azure/Azurite#665), so Azure
items carry no version there. A snapshot keeps the versions its items had."""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
import pytest

from providers import open_driver
from providers.config import ConfigError, DriverConfig
from syncd import api
from syncd.reconcile.filters import Filters
from syncd.store import snapshots
from syncd.store.catalog import Catalog
from tests.conftest import Backend, unique_bucket


def versioned_bucket(moto: Any) -> tuple[Any, str]:
    s3 = boto3.client("s3", endpoint_url=moto.url)
    name = unique_bucket()
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return s3, name


async def listed(cfg: DriverConfig, **kw: Any) -> list[Any]:
    async with open_driver(cfg) as driver:
        return [o async for page in driver.list(**kw) for o in page]


def test_a_versioned_s3_listing_keeps_the_latest_version_of_each_key(moto: Any) -> None:
    """Keys with one version, several, a delete marker on top (gone), deleted then written
    again; pages of 2 entries, so a key's versions span pages: the listing equals the plain
    one, each object with the VersionId a HEAD states; ranges resume as the plain listing's."""
    s3, bucket = versioned_bucket(moto)
    for n in range(3):
        s3.put_object(Bucket=bucket, Key="b", Body=b"b" * (n + 1))
    s3.put_object(Bucket=bucket, Key="a", Body=b"a")
    s3.put_object(Bucket=bucket, Key="c", Body=b"c")
    s3.delete_object(Bucket=bucket, Key="c")
    s3.put_object(Bucket=bucket, Key="d", Body=b"d")
    s3.delete_object(Bucket=bucket, Key="d")
    s3.put_object(Bucket=bucket, Key="d", Body=b"dd")
    for n in range(5):
        s3.put_object(Bucket=bucket, Key=f"e/{n}", Body=b"e")
        s3.put_object(Bucket=bucket, Key=f"e/{n}", Body=b"ee")
    plain = DriverConfig(type="s3", bucket=bucket, endpoint=moto.url, page_size=2)
    versioned = DriverConfig(
        type="s3", bucket=bucket, endpoint=moto.url, page_size=2, versioned=True
    )
    found = asyncio.run(listed(versioned))
    expected = asyncio.run(listed(plain))
    assert [(o.key, o.size, o.etag) for o in found] == [(o.key, o.size, o.etag) for o in expected]
    assert [o.key for o in found] == ["a", "b", "d", *(f"e/{n}" for n in range(5))]
    for o in found:
        assert o.version == s3.head_object(Bucket=bucket, Key=o.key)["VersionId"], o.key
    assert [o.version for o in expected] == [None] * len(expected)
    ranged = asyncio.run(listed(versioned, start_after="b", end_before="e/3"))
    assert [o.key for o in ranged] == ["d", "e/0", "e/1", "e/2"]
    assert [o.key for o in asyncio.run(listed(versioned, prefix="e/", start_after="e/1"))] == [
        "e/2",
        "e/3",
        "e/4",
    ]


def test_versioned_is_an_s3_setting() -> None:
    for kind in ("gcs", "azure", "local"):
        with pytest.raises(ConfigError, match="s3 driver setting"):
            DriverConfig(type=kind, bucket="/b", versioned=True)


def test_a_snapshot_keeps_the_s3_versions_its_items_had(moto: Any, tmp_path: Any) -> None:
    """Sync a versioned bucket (the driver setting survives in the catalog), snapshot,
    overwrite and delete objects, sync again: the snapshot's items carry the versions of the
    bytes at snapshot time, which S3 still serves."""
    s3, bucket = versioned_bucket(moto)
    for key in ("a", "b"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    catalog = Catalog.open(str(tmp_path / "c.db"))
    try:
        cfg = DriverConfig(type="s3", bucket=bucket, endpoint=moto.url, versioned=True)
        catalog.create_dataset("ds", f"s3://{bucket}", cfg, Filters())
        assert catalog.get_dataset("ds").driver.versioned is True
        asyncio.run(api.sync(catalog, "ds"))
        before = {i.key: i.version for i in catalog.iter_items(catalog.get_dataset("ds").id)}
        assert all(before.values()) and len(before) == 2
        snapshots.create(catalog, catalog.get_dataset("ds"), "v1")
        s3.put_object(Bucket=bucket, Key="a", Body=b"changed")
        s3.delete_object(Bucket=bucket, Key="b")
        asyncio.run(api.sync(catalog, "ds"))
        live = {i.key: i.version for i in catalog.iter_items(catalog.get_dataset("ds").id)}
        assert list(live) == ["a"] and live["a"] != before["a"]
        frozen = {i.key: i.version for i in catalog.snapshot_items("ds", "v1")}
        assert frozen == before
        for key, version in frozen.items():
            body = s3.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read()
            assert body == key.encode()
    finally:
        catalog.close()


@pytest.mark.parametrize("backend", ["gcs", "azure"], indirect=True)
def test_what_each_emulator_records_as_the_version(backend: Backend, tmp_path: Any) -> None:
    """fake-gcs-server: the generation (``<generation>.<metageneration>``), new with each
    overwrite. Azurite: no blob versioning, so no version (the real service states the
    version id when the account has versioning on, read by the same listing)."""
    bucket = backend.new_bucket()
    cfg = backend.config(bucket)

    async def put_and_list(body: bytes) -> Any:
        async with open_driver(cfg) as driver:
            await driver.put("k", body)
            return [o async for page in driver.list() for o in page]

    first = asyncio.run(put_and_list(b"1"))
    second = asyncio.run(put_and_list(b"22"))
    if backend.name == "gcs":
        assert first[0].version and second[0].version and first[0].version != second[0].version
    else:
        assert first[0].version is None and second[0].version is None
