"""``Driver.download_version``: reading an object as it was recorded, on every backend.

What each emulator supports (and so what is tested where):

* S3 on moto: bucket versioning (``PutBucketVersioning``): an old ``VersionId`` reads the old
  bytes after an overwrite and after a delete (a delete marker); a version deleted by id is
  gone. Unversioned buckets: ``If-Match`` on the recorded ETag.
* GCS on fake-gcs-server: bucket versioning (``versioning.enabled`` at creation) keeps old
  generations, readable by ``generation``; without it an old generation answers 404.
* Azure on Azurite: no blob versioning (Azurite states no version ids), so only the refusal
  path: the current blob read with ``If-Match``, a changed or deleted one refused.
* A local folder keeps no versions: only the current bytes, and a changed file is refused.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from providers import Driver, open_driver
from providers.base import MULTIPART_THRESHOLD, ObjectInfo
from providers.errors import NotFound, VersionGone
from tests.conftest import Backend

#: the backends whose emulator keeps object versions (see the module docstring)
VERSIONED = ("s3", "gcs")


def versioned_bucket(backend: Backend) -> str:
    """A new bucket with object versioning on (S3, GCS); elsewhere a plain new bucket."""
    if backend.name == "s3":
        import boto3

        name = backend.new_bucket()
        boto3.client("s3", endpoint_url=backend.emulator.url).put_bucket_versioning(
            Bucket=name, VersioningConfiguration={"Status": "Enabled"}
        )
        return name
    if backend.name == "gcs":
        from tests.conftest import unique_bucket

        client = backend._gcs_client()
        bucket = client.bucket(unique_bucket())
        bucket.versioning_enabled = True
        client.create_bucket(bucket)
        return bucket.name
    return backend.new_bucket()


async def read_version(
    driver: Driver, tmp: Path, key: str, rec: ObjectInfo, *, version: str | None = "recorded"
) -> bytes:
    """The bytes ``download_version`` writes for the record ``rec`` (its own version unless
    ``version`` says otherwise), into a file that held other bytes before."""
    out_path = tmp / "out.bin"
    with open(out_path, "wb") as out:
        out.write(b"stale bytes a retry must not keep" * 10)
        info = await driver.download_version(
            key,
            out,
            version=rec.version if version == "recorded" else version,
            etag=rec.etag,
            size=rec.size,
        )
    data = out_path.read_bytes()
    assert info.size == len(data)
    return data


async def test_recorded_version_survives_overwrite_and_delete(
    backend: Backend, tmp_path: Path
) -> None:
    """Versioned buckets: the recorded version's bytes come back after the object is
    overwritten and after it is deleted. Without versions (Azurite, a folder) the record
    states none, and the changed object is refused (the next test covers that path)."""
    async with open_driver(backend.config(versioned_bucket(backend))) as driver:
        rec = await driver.put("data/a.bin", b"first bytes")
        if backend.name not in VERSIONED:
            assert rec.version is None  # nothing to pin: only the refusal path exists here
            return
        assert rec.version
        await driver.put("data/a.bin", b"second, longer bytes")
        assert await read_version(driver, tmp_path, "data/a.bin", rec) == b"first bytes"
        await driver.delete("data/a.bin")
        assert await read_version(driver, tmp_path, "data/a.bin", rec) == b"first bytes"


async def test_unversioned_record_reads_current_bytes_only_while_unchanged(
    backend: Backend, tmp_path: Path
) -> None:
    """A record without a version (an unversioned bucket, a folder): the current bytes while
    the ETag is the recorded one; once changed, or deleted, ``VersionGone`` naming why,
    and nothing of the new bytes is taken for the old."""
    async with open_driver(backend.config(backend.new_bucket())) as driver:
        rec = await driver.put("k.txt", b"recorded")
        assert await read_version(driver, tmp_path, "k.txt", rec, version=None) == b"recorded"
        if backend.name == "local":
            os.utime(Path(driver.root) / "k.txt", ns=(1, 1))  # a folder's ETag is size+mtime
        await driver.put("k.txt", b"replaced")
        with pytest.raises(VersionGone, match="changed since it was recorded") as changed:
            await read_version(driver, tmp_path, "k.txt", rec, version=None)
        assert isinstance(changed.value, NotFound)
        assert ("versions" if backend.name == "local" else "versioning") in str(changed.value)
        await driver.delete("k.txt")
        with pytest.raises(VersionGone, match="deleted since it was recorded"):
            await read_version(driver, tmp_path, "k.txt", rec, version=None)


async def test_a_version_deleted_or_never_kept_is_gone(backend: Backend, tmp_path: Path) -> None:
    """S3: a version deleted by id; GCS: an old generation of a bucket without versioning;
    Azure and a folder: a version asked of a store that keeps none. Each is ``VersionGone``."""
    async with open_driver(backend.config(backend.new_bucket())) as driver:
        rec = await driver.put("v.bin", b"one")
        if backend.name == "s3":
            import boto3

            s3 = boto3.client("s3", endpoint_url=backend.emulator.url)
            s3.put_bucket_versioning(
                Bucket=driver.bucket, VersioningConfiguration={"Status": "Enabled"}
            )
            rec = await driver.put("v.bin", b"two")
            s3.delete_object(Bucket=driver.bucket, Key="v.bin", VersionId=rec.version)
            assert rec.version
        elif backend.name == "gcs":
            await driver.put("v.bin", b"two")  # no versioning: the first generation is gone
        else:
            rec = ObjectInfo(rec.key, rec.size, rec.etag, rec.last_modified, version="v1")
        with pytest.raises(VersionGone, match=r"gone|keeps no versions|answered without it"):
            await read_version(driver, tmp_path, "v.bin", rec)


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
async def test_s3_record_without_version_id_finds_its_version(
    backend: Backend, tmp_path: Path
) -> None:
    """S3's ListObjectsV2 states no version ids, so items of a versioned bucket synced by it
    (a driver not declared ``versioned = true``) have none: the recorded bytes are still
    found, as the version with the recorded ETag."""
    async with open_driver(backend.config(versioned_bucket(backend))) as driver:
        rec = await driver.put("k", b"old bytes")
        await driver.put("k", b"new bytes!")
        await driver.put("other-k", b"old bytes")  # same ETag, another key: never taken
        assert await read_version(driver, tmp_path, "k", rec, version=None) == b"old bytes"
        await driver.delete("k")
        assert await read_version(driver, tmp_path, "k", rec, version=None) == b"old bytes"


async def test_large_object_version_goes_through_parts(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object at or above the parts cutoff is read by ranged requests, all of the
    recorded version (S3's transfer manager is told the version; Azure's SDK pins its ranges
    to the first answer's ETag)."""
    monkeypatch.setenv("SYNCD_S3_MULTIPART_CUTOFF", str(MULTIPART_THRESHOLD))
    old = os.urandom(MULTIPART_THRESHOLD + 12345)
    async with open_driver(backend.config(versioned_bucket(backend))) as driver:
        rec = await driver.put("big.bin", old)
        version = rec.version if backend.name in VERSIONED else None
        data = await read_version(driver, tmp_path, "big.bin", rec, version=version)
        assert hashlib.md5(data).digest() == hashlib.md5(old).digest()
        if backend.name in VERSIONED:
            await driver.put("big.bin", b"small now")
            data = await read_version(driver, tmp_path, "big.bin", rec)
            assert hashlib.md5(data).digest() == hashlib.md5(old).digest()


async def test_presigned_url_of_a_version_reads_its_bytes(backend: Backend) -> None:
    """A URL signed for a recorded version reads that version after an overwrite (S3, GCS);
    without a version it is the current object's URL; a folder refuses a version."""
    import urllib.request

    def fetch(url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.read()

    async with open_driver(backend.config(versioned_bucket(backend))) as driver:
        rec = await driver.put("p.txt", b"old")
        await driver.put("p.txt", b"new!")
        assert fetch(await driver.presign_version("p.txt", None, ttl=60)) == b"new!"
        if backend.name in VERSIONED:
            assert fetch(await driver.presign_version("p.txt", rec.version, ttl=60)) == b"old"
        elif backend.name == "local":
            with pytest.raises(VersionGone, match="keeps no versions"):
                await driver.presign_version("p.txt", "v1", ttl=60)
        else:  # Azurite ignores versionid: only the URL's form can be checked
            url = await driver.presign_version("p.txt", "2026-01-01T00:00:00.0000000Z", ttl=60)
            assert "versionid=2026-01-01T00%3A00%3A00.0000000Z&" in url
