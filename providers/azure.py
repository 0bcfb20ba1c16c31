"""Azure Blob Storage, through azure-storage-blob.

Credentials, first match wins: a connection string; an account name with an account key; an
account name with a SAS token; an account name with a service principal's credential (built
by :func:`providers.credentials.azure_credential`: client secret or certificate); an account
name with azure-identity's ``DefaultAzureCredential`` (environment, managed identity, CLI
login). The SDK's retry policy is disabled (``retry_total=0``) so :mod:`providers.retry` is the
only retry loop.

List Blobs pages with an opaque marker and filters by prefix only, so ``start_after`` is
applied by skipping keys client-side (still one page in memory at a time) and ``end_before``
stops the listing early. Results come in key order. Listings include each blob's metadata, and
its index tags when ``listing_tags`` is set (``include=tags``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO
from urllib.parse import quote

import azure.core.exceptions as aexc
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContentSettings,
    generate_blob_sas,
)

from providers import errors
from providers.base import (
    MULTIPART_THRESHOLD,
    PART_CONCURRENCY,
    Driver,
    ObjectInfo,
    changed_unversioned,
    deleted_unversioned,
    object_uri,
)
from providers.credentials import PrincipalRefused
from providers.retry import NO_RETRY, RetryPolicy, Translate, call

_CODE_MAP: dict[str, type[errors.StorageError]] = {
    "ContainerNotFound": errors.BucketNotFound,
    "BlobNotFound": errors.NotFound,
    "ResourceNotFound": errors.NotFound,
    "AuthenticationFailed": errors.Unauthenticated,
    # Azurite answers a wrong shared key with AuthorizationFailure
    "AuthorizationFailure": errors.Unauthenticated,
    "InvalidAuthenticationInfo": errors.Unauthenticated,
    "NoAuthenticationInformation": errors.Unauthenticated,
    "AuthorizationPermissionMismatch": errors.PermissionDenied,
    "InsufficientAccountPermissions": errors.PermissionDenied,
    "ServerBusy": errors.Throttled,
    "OperationTimedOut": errors.TransientError,
    "InternalError": errors.TransientError,
    "InvalidResourceName": errors.InvalidRequest,
    "OutOfRangeInput": errors.InvalidRequest,
}


class AzureBlobDriver(Driver):
    provider = "azure"

    def __init__(
        self,
        container: str,
        *,
        account_name: str | None = None,
        connection_string: str | None = None,
        account_key: str | None = None,
        sas_token: str | None = None,
        endpoint: str | None = None,
        storage_class: str | None = None,
        page_size: int = 5000,
        retry: RetryPolicy | None = None,
        credential: Any = None,
    ) -> None:
        """``credential``: an azure-identity token credential (a service principal) used with
        ``account_name`` when no key or SAS is given, instead of ``DefaultAzureCredential``."""
        super().__init__(container, page_size=min(page_size, 5000))
        self.retry = retry or RetryPolicy.from_env()
        self.storage_class = storage_class
        opts: dict[str, Any] = {
            "retry_total": 0,
            # one Put Blob below the threshold, blocks of a quarter of it above
            "max_single_put_size": MULTIPART_THRESHOLD,
            # 50,000 blocks of 8 MiB: files up to 390 GiB
            "max_block_size": MULTIPART_THRESHOLD,
            "max_single_get_size": MULTIPART_THRESHOLD,
        }
        try:
            if connection_string:
                self._service = BlobServiceClient.from_connection_string(connection_string, **opts)
            else:
                if not account_name:
                    raise errors.Unauthenticated(
                        self.provider,
                        container,
                        "no storage account given",
                        hint="set AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT",
                    )
                url = endpoint or f"https://{account_name}.blob.core.windows.net"
                if account_key:
                    credential = {"account_name": account_name, "account_key": account_key}
                elif sas_token:
                    credential = sas_token
                elif credential is None:
                    from azure.identity import DefaultAzureCredential

                    credential = DefaultAzureCredential()
                self._service = BlobServiceClient(url, credential=credential, **opts)
        except ValueError as exc:
            # from_connection_string echoes nothing of the string in its message, but be sure
            raise errors.Unauthenticated(
                self.provider, container, "malformed connection string or account URL"
            ) from exc
        self.account = self._service.account_name or account_name or ""
        self._container = self._service.get_container_client(container)

    def _translate(self, key: str | None = None) -> Translate:
        def translate(exc: BaseException) -> errors.StorageError:
            if isinstance(exc, PrincipalRefused):  # its message is syncd's own, one line
                cls = errors.TransientError if exc.transient else errors.Unauthenticated
                return cls(self.provider, self.bucket, str(exc.message), key=key)
            if isinstance(exc, aexc.IncompleteReadError | errors.CUT_SHORT):
                # an HttpResponseError too (of the 200 whose body stopped short): not the
                # service's refusal but a dropped connection
                return errors.TransientError(
                    self.provider, self.bucket, f"answer cut short ({type(exc).__name__})", key=key
                )
            if isinstance(exc, aexc.HttpResponseError):
                # not every HttpResponseError has one (one raised while a download streams)
                raw = getattr(exc, "error_code", None) or ""
                code = str(getattr(raw, "value", raw))  # may be a StorageErrorCode enum
                status = exc.status_code or 0
                cls = _CODE_MAP.get(code)
                if cls is None:
                    if isinstance(exc, aexc.ClientAuthenticationError) or status == 401:
                        cls = errors.Unauthenticated
                    elif status == 403:
                        cls = errors.PermissionDenied
                    elif status == 404:
                        cls = errors.NotFound if key is not None else errors.BucketNotFound
                    elif status in (429, 503):
                        cls = errors.Throttled
                    elif status >= 500:
                        cls = errors.TransientError
                    else:
                        cls = errors.ProviderError
                # the SDK message spans lines and echoes request headers: use only the code
                cause = f"HTTP {status} {code or type(exc).__name__}"
                return cls(self.provider, self.bucket, cause, key=key)
            if isinstance(
                exc,
                aexc.ServiceRequestError
                | aexc.ServiceResponseError
                | ConnectionError
                | TimeoutError,
            ):
                return errors.TransientError(
                    self.provider, self.bucket, f"connection failed ({type(exc).__name__})", key=key
                )
            if isinstance(exc, aexc.ClientAuthenticationError):
                return errors.Unauthenticated(
                    self.provider, self.bucket, type(exc).__name__, key=key
                )
            return errors.ProviderError(self.provider, self.bucket, type(exc).__name__, key=key)

        return translate

    @staticmethod
    def stored_name(key: str) -> str:
        """The blob name the service stores for ``key``: it turns every ``\\`` into ``/``
        (seen on Azurite and documented for the service), so a key holding ``\\`` is never
        listed back under its own name. ``syncd push`` refuses such a file, naming this.
        (Drivers whose keys are stored as given have no such method.)"""
        return key.replace("\\", "/")

    def _info(self, props: Any, tags: bool = False) -> ObjectInfo:
        """The record of a blob's properties; ``tags``: they were asked for (a listing with
        ``include=tags``), so none means the blob has none."""
        settings = props.content_settings
        return ObjectInfo(
            key=props.name,
            size=int(props.size),
            etag=str(props.etag).strip('"'),
            last_modified=props.last_modified.astimezone(UTC),
            content_type=settings.content_type if settings else None,
            version=props.version_id,
            md5=bytes(settings.content_md5).hex() if settings and settings.content_md5 else None,
            metadata=dict(props.metadata) if props.metadata else {},
            tags=(dict(props.tags) if props.tags else {}) if tags else None,
        )

    async def list(
        self, prefix: str = "", start_after: str | None = None, end_before: str | None = None
    ) -> AsyncIterator[list[ObjectInfo]]:
        translate = self._translate()

        tags = self.listing_tags
        include = ["metadata", "tags"] if tags else ["metadata"]

        def fetch(token: str | None) -> tuple[list[ObjectInfo], str | None]:
            pages = self._container.list_blobs(
                name_starts_with=prefix or None, results_per_page=self.page_size, include=include
            ).by_page(continuation_token=token)
            page = next(pages, None)
            items = [self._info(b, tags) for b in page] if page is not None else []
            return items, pages.continuation_token

        token: str | None = None
        while True:
            items, token = await call(lambda t=token: fetch(t), translate, self.retry)
            page: list[ObjectInfo] = []
            for obj in items:
                if end_before is not None and obj.key >= end_before:
                    if page:
                        yield page
                    return
                if start_after is None or obj.key > start_after:
                    page.append(obj)
            if page:
                yield page
            if not token:
                return

    async def folders(self, prefix: str = "") -> list[str]:
        from azure.storage.blob import BlobPrefix

        def fetch() -> list[str]:
            found = self._container.walk_blobs(name_starts_with=prefix or None, delimiter="/")
            return sorted(b.name for b in found if isinstance(b, BlobPrefix))

        return await call(fetch, self._translate(), self.retry)

    async def head(self, key: str) -> ObjectInfo:
        client = self._container.get_blob_client(key)
        props = await call(client.get_blob_properties, self._translate(key), self.retry)
        return self._info(props)

    async def object_tags(self, key: str) -> dict[str, str] | None:
        client = self._container.get_blob_client(key)
        return dict(await call(client.get_blob_tags, self._translate(key), self.retry) or {})

    async def get(self, key: str) -> AsyncIterator[bytes]:
        translate = self._translate(key)
        client = self._container.get_blob_client(key)
        downloader = await call(client.download_blob, translate, self.retry)
        chunks = downloader.chunks()
        while chunk := await call(lambda: next(chunks, b""), translate, NO_RETRY):
            yield chunk

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        client = self._container.get_blob_client(key)
        settings = ContentSettings(content_type=content_type or "application/octet-stream")
        await call(
            lambda: client.upload_blob(
                data,
                overwrite=True,
                content_settings=settings,
                standard_blob_tier=self.storage_class,
            ),
            self._translate(key),
            self.retry,
        )
        return await self.head(key)

    async def upload(self, key: str, path: str, content_type: str | None = None) -> ObjectInfo:
        client = self._container.get_blob_client(key)
        settings = ContentSettings(content_type=content_type or "application/octet-stream")
        size = os.path.getsize(path)

        def send() -> dict[str, Any]:
            with open(path, "rb") as data:
                return client.upload_blob(
                    data,
                    length=size,
                    overwrite=True,
                    content_settings=settings,
                    standard_blob_tier=self.storage_class,
                    max_concurrency=PART_CONCURRENCY,
                )

        resp = await call(send, self._translate(key), self.retry)
        md5 = resp.get("content_md5")  # Put Blob states one; a block list does not
        return ObjectInfo(
            key=key,
            size=size,
            etag=str(resp["etag"]).strip('"'),
            last_modified=resp["last_modified"].astimezone(UTC),
            content_type=settings.content_type,
            version=resp.get("version_id"),
            md5=bytes(md5).hex() if md5 else None,
        )

    async def download(self, key: str, out: BinaryIO, size: int | None = None) -> ObjectInfo:
        client = self._container.get_blob_client(key)

        def fetch() -> Any:
            # ranges after the first are read with If-Match on its ETag by the SDK itself
            downloader = client.download_blob(max_concurrency=PART_CONCURRENCY)
            out.seek(0)
            out.truncate()
            downloader.readinto(out)
            return downloader.properties

        props = await call(fetch, self._translate(key), self.retry)
        props.name = key
        return self._info(props)

    async def download_version(
        self, key: str, out: BinaryIO, *, version: str | None, etag: str, size: int | None = None
    ) -> ObjectInfo:
        """As :meth:`Driver.download_version`: the blob version ``version`` (a storage
        account with blob versioning on); without one, the current blob only while its ETag
        is ``etag`` (``If-Match``, so the wrong bytes are never fetched). Azurite keeps no
        versions (it states no version ids), so there only the second applies."""
        from azure.core import MatchConditions

        client = self._container.get_blob_client(key)
        base = self._translate(key)

        def translate(exc: BaseException) -> errors.StorageError:
            err = base(exc)
            status = getattr(exc, "status_code", None)
            if version is not None and isinstance(err, errors.NotFound):
                return errors.VersionGone(
                    self.provider,
                    self.bucket,
                    f"version {version!r} is gone from the container (deleted or expired)",
                    key=key,
                )
            if version is None and isinstance(err, errors.NotFound):
                return deleted_unversioned(self.provider, self.bucket, key)
            if version is None and status == 412:
                return changed_unversioned(self.provider, self.bucket, key, etag, None)
            return err

        def fetch() -> Any:
            pin: dict[str, Any] = (
                {"version_id": version}
                if version is not None
                else {"etag": f'"{etag}"', "match_condition": MatchConditions.IfNotModified}
            )
            downloader = client.download_blob(max_concurrency=PART_CONCURRENCY, **pin)
            if version is not None and downloader.properties.version_id != version:
                # a service without blob versioning (Azurite) ignores the versionid and
                # answers with the current blob: never taken for the version asked for
                raise errors.VersionGone(
                    self.provider,
                    self.bucket,
                    f"version {version!r} asked for, but the service answered without it "
                    "(blob versioning is off, or unsupported: Azurite keeps no versions)",
                    key=key,
                )
            out.seek(0)
            out.truncate()
            downloader.readinto(out)
            return downloader.properties

        try:
            props = await call(fetch, translate, self.retry)
        except errors.VersionGone:
            if version is not None:
                raise
            # a failed If-Match answers 412 whether the blob changed or is gone (Azurite):
            # one HEAD says which
            try:
                now = await self.head(key)
            except errors.NotFound:
                raise deleted_unversioned(self.provider, self.bucket, key) from None
            raise changed_unversioned(self.provider, self.bucket, key, etag, now.etag) from None
        props.name = key
        return self._info(props)

    async def delete(self, key: str) -> None:
        client = self._container.get_blob_client(key)
        with contextlib.suppress(errors.NotFound):
            await call(client.delete_blob, self._translate(key), self.retry)

    async def presign(self, key: str, ttl: int = 3600) -> str:
        return await self.presign_version(key, None, ttl)

    async def presign_version(self, key: str, version: str | None, ttl: int = 3600) -> str:
        """A SAS URL of the blob, or of its ``version`` (``versionid``: a SAS for a version
        is signed for it, and the parameter is added to the URL)."""
        client = self._container.get_blob_client(key)
        expiry = datetime.now(UTC) + timedelta(seconds=ttl)
        credential = self._service.credential
        account_key = getattr(credential, "account_key", None)
        signing: dict[str, Any]
        if account_key:
            signing = {"account_key": account_key}
        elif not hasattr(credential, "get_token"):
            # a SAS-token integration: the only URL it could give is one carrying that SAS
            raise errors.InvalidRequest(
                self.provider,
                self.bucket,
                "cannot presign with a SAS token credential (syncd never hands out its SAS)",
                key=key,
                hint="give the integration an account key or an Azure AD identity to presign",
            )
        else:  # token credential: sign with a user delegation key instead
            start = datetime.now(UTC) - timedelta(minutes=5)
            udk = await call(
                lambda: self._service.get_user_delegation_key(start, expiry),
                self._translate(key),
                self.retry,
            )
            signing = {"user_delegation_key": udk}
        sas = generate_blob_sas(
            self.account,
            self.bucket,
            key,
            permission=BlobSasPermissions(read=True),
            expiry=expiry,
            version_id=version,
            **signing,
        )
        if version is not None:
            return f"{client.url}?versionid={quote(version, safe='')}&{sas}"
        return f"{client.url}?{sas}"

    def uri(self, key: str) -> str:
        return object_uri(self.provider, self.bucket, key, self.account)

    def uris(self, keys: list[str]) -> list[str]:
        base = object_uri(self.provider, self.bucket, "", self.account)
        return [base + k for k in keys]

    async def close(self) -> None:
        self._service.close()
