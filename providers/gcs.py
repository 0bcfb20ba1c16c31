"""Google Cloud Storage, through google-cloud-storage.

Credentials: a service-account JSON file named by the integration's ``credentials_file``, else
application default credentials; with ``impersonate``, those impersonate that service account
(:func:`providers.credentials.gcp_credentials`, handed in as ``credentials``). When ``STORAGE_EMULATOR_HOST`` (or the driver's ``endpoint``)
points at an emulator and neither a file nor ``GOOGLE_APPLICATION_CREDENTIALS`` is given,
requests are anonymous, as emulators expect.
The library's own retries are disabled (``retry=None``) so :mod:`providers.retry` is the only
retry loop.

``objects.list`` pages by token and takes ``startOffset`` (inclusive) / ``endOffset``
(exclusive); ``start_after`` is exclusive, so the one key equal to it is dropped. The version
marker is ``"<generation>.<metageneration>"``. Listings and ``head`` state the objects' custom
metadata; GCS has no object tags.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, timedelta
from typing import Any, BinaryIO
from urllib.parse import quote

import google.api_core.exceptions as gexc
import google.auth
import google.auth.exceptions
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from providers import errors
from providers.base import MULTIPART_THRESHOLD, Driver, ObjectInfo, object_uri
from providers.retry import NO_RETRY, RetryPolicy, Translate, call

CHUNK = 1024 * 1024
TIMEOUT = (10, 60)
SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]

_STATUS_MAP: dict[type[Exception], type[errors.StorageError]] = {
    gexc.NotFound: errors.NotFound,
    gexc.Unauthorized: errors.Unauthenticated,
    gexc.Forbidden: errors.PermissionDenied,
    gexc.TooManyRequests: errors.Throttled,
    gexc.ServiceUnavailable: errors.Throttled,
    gexc.InternalServerError: errors.TransientError,
    gexc.BadGateway: errors.TransientError,
    gexc.GatewayTimeout: errors.TransientError,
    gexc.BadRequest: errors.InvalidRequest,
}


def _auth_cause(exc: BaseException) -> str:
    """``RefreshError (invalid_grant)``: the OAuth error code, never the server's prose."""
    first = str(exc.args[0]) if exc.args else ""
    code = first.split(":", 1)[0].strip()
    if code and code.replace("_", "").isalpha():
        return f"{type(exc).__name__} ({code})"
    return type(exc).__name__


class GCSDriver(Driver):
    provider = "gcs"

    def __init__(
        self,
        bucket: str,
        *,
        endpoint: str | None = None,
        credentials_file: str | None = None,
        project: str | None = None,
        storage_class: str | None = None,
        page_size: int = 1000,
        retry: RetryPolicy | None = None,
        credentials: Any = None,
    ) -> None:
        """``credentials``: google-auth credentials to use as they are (an impersonation);
        without them, ``credentials_file``, the emulator's anonymity or ADC, as described."""
        super().__init__(bucket, page_size=min(page_size, 1000))
        self.retry = retry or RetryPolicy.from_env()
        self.storage_class = storage_class
        self.endpoint = endpoint or os.environ.get("STORAGE_EMULATOR_HOST")
        options = {"api_endpoint": endpoint} if endpoint else None
        try:
            if credentials is not None:
                self._client = storage.Client(
                    project=project, credentials=credentials, client_options=options
                )
            elif credentials_file:
                self._client = storage.Client.from_service_account_json(
                    credentials_file, project=project, client_options=options
                )
            elif self.endpoint and not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
                self._client = storage.Client(
                    project=project or "syncd",
                    credentials=AnonymousCredentials(),
                    client_options=options,
                )
            else:
                # explicit ADC: the library would go anonymous by itself whenever
                # STORAGE_EMULATOR_HOST is set, and silently ignore the credentials asked for
                credentials, default_project = google.auth.default(scopes=SCOPES)
                self._client = storage.Client(
                    project=project or default_project,
                    credentials=credentials,
                    client_options=options,
                )
        except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as exc:
            raise errors.Unauthenticated(
                self.provider, bucket, f"cannot load credentials ({type(exc).__name__})"
            ) from exc
        self._bucket = self._client.bucket(bucket)

    def _translate(self, key: str | None = None) -> Translate:
        def translate(exc: BaseException) -> errors.StorageError:
            if isinstance(exc, gexc.GoogleAPICallError):
                cls = next((v for k, v in _STATUS_MAP.items() if isinstance(exc, k)), None)
                code = exc.code or 0
                if cls is None:
                    cls = errors.TransientError if code >= 500 else errors.ProviderError
                reason = getattr(exc, "reason", None) or type(exc).__name__
                cause = f"HTTP {code} {reason}"
                if cls is errors.NotFound and key is None:
                    cls, cause = errors.BucketNotFound, f"HTTP {code} (bucket not found)"
                return cls(self.provider, self.bucket, cause, key=key)
            if type(exc).__name__ == "DataCorruption":  # its module moved between versions
                return errors.TransientError(
                    self.provider, self.bucket, "downloaded bytes fail the MD5 check", key=key
                )
            if isinstance(exc, google.auth.exceptions.GoogleAuthError):
                return errors.Unauthenticated(
                    self.provider, self.bucket, f"credentials rejected: {_auth_cause(exc)}", key=key
                )
            if isinstance(
                exc,
                requests.ConnectionError
                | requests.Timeout
                | requests.exceptions.ChunkedEncodingError  # a body cut short
                | ConnectionError
                | TimeoutError
                | errors.CUT_SHORT,
            ):
                return errors.TransientError(
                    self.provider, self.bucket, f"connection failed ({type(exc).__name__})", key=key
                )
            return errors.ProviderError(self.provider, self.bucket, type(exc).__name__, key=key)

        return translate

    def _info(self, blob: Any) -> ObjectInfo:
        return ObjectInfo(
            key=blob.name,
            size=int(blob.size or 0),
            etag=blob.etag or blob.md5_hash or "",
            last_modified=blob.updated.astimezone(UTC),
            content_type=blob.content_type,
            version=f"{blob.generation}.{blob.metageneration}",
            md5=base64.b64decode(blob.md5_hash).hex() if blob.md5_hash else None,
            # the object resource always carries its custom metadata (absent: none)
            metadata=dict(blob.metadata) if blob.metadata else {},
        )

    async def list(
        self, prefix: str = "", start_after: str | None = None, end_before: str | None = None
    ) -> AsyncIterator[list[ObjectInfo]]:
        token: str | None = None
        translate = self._translate()

        def fetch(page_token: str | None) -> tuple[list[ObjectInfo], str | None]:
            it = self._client.list_blobs(
                self.bucket,
                prefix=prefix or None,
                start_offset=start_after,
                end_offset=end_before,
                page_size=self.page_size,
                page_token=page_token,
                retry=None,
                timeout=TIMEOUT,
            )
            page = next(it.pages, None)
            items = [self._info(b) for b in page] if page is not None else []
            return items, it.next_page_token

        while True:
            items, token = await call(lambda t=token: fetch(t), translate, self.retry)
            page = [o for o in items if start_after is None or o.key > start_after]
            if page:
                yield page
            if not token:
                return

    async def folders(self, prefix: str = "") -> list[str]:
        def fetch() -> list[str]:
            it = self._client.list_blobs(
                self.bucket, prefix=prefix or None, delimiter="/", retry=None, timeout=TIMEOUT
            )
            for _ in it:  # the prefixes fill in as the pages are read
                pass
            return sorted(it.prefixes)

        return await call(fetch, self._translate(), self.retry)

    async def head(self, key: str) -> ObjectInfo:
        blob = self._bucket.blob(key)
        await call(
            lambda: blob.reload(retry=None, timeout=TIMEOUT), self._translate(key), self.retry
        )
        return self._info(blob)

    async def get(self, key: str) -> AsyncIterator[bytes]:
        translate = self._translate(key)
        blob = self._bucket.blob(key)
        reader = await call(
            lambda: blob.open("rb", chunk_size=CHUNK, retry=None, timeout=TIMEOUT),
            translate,
            self.retry,
        )
        try:
            # the first read is the object's first ranged GET, and the reader moves its
            # position only once a GET has answered: a failed one leaves it where it was, so
            # it is retried as any request (a reset on a pooled connection, issue 27). A later
            # read is not: the reader has already moved past the bytes it buffered, which a
            # failed GET loses (a retry would skip them)
            chunk = await call(lambda: reader.read(CHUNK), translate, self.retry)
            while chunk:
                yield chunk
                chunk = await call(lambda: reader.read(CHUNK), translate, NO_RETRY)
        finally:
            reader.close()

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        blob = self._bucket.blob(key)
        if self.storage_class:
            blob.storage_class = self.storage_class
        await call(
            lambda: blob.upload_from_string(
                data,
                content_type=content_type or "application/octet-stream",
                retry=None,
                timeout=TIMEOUT,
            ),
            self._translate(key),
            self.retry,
        )
        return self._info(blob)

    async def upload(self, key: str, path: str, content_type: str | None = None) -> ObjectInfo:
        # with a chunk size the library uses a resumable upload, sent a chunk at a time;
        # smaller files go in one multipart request. Both send an MD5 the service checks.
        size = os.path.getsize(path)
        blob = self._bucket.blob(
            key, chunk_size=MULTIPART_THRESHOLD if size >= MULTIPART_THRESHOLD else None
        )
        if self.storage_class:
            blob.storage_class = self.storage_class
        await call(
            lambda: blob.upload_from_filename(
                path,
                content_type=content_type or "application/octet-stream",
                checksum="md5",
                retry=None,
                timeout=TIMEOUT,
            ),
            self._translate(key),
            self.retry,
        )
        return self._info(blob)  # the upload's answer is the object's resource

    async def download(self, key: str, out: BinaryIO, size: int | None = None) -> ObjectInfo:
        translate = self._translate(key)
        blob = self._bucket.blob(key)
        await call(lambda: blob.reload(retry=None, timeout=TIMEOUT), translate, self.retry)
        info = self._info(blob)
        # the generation pins the bytes to the object the reload saw; the library checks the
        # MD5 the service sends and raises DataCorruption on a mismatch. A fresh blob: one
        # with a mediaLink would download from the host the service names in it, not from
        # the endpoint this driver was given
        fresh = self._bucket.blob(key)

        def fetch() -> None:
            out.seek(0)
            out.truncate()
            fresh.download_to_file(
                out, if_generation_match=blob.generation, retry=None, timeout=TIMEOUT
            )

        await call(fetch, translate, self.retry)
        return info

    async def download_version(
        self, key: str, out: BinaryIO, *, version: str | None, etag: str, size: int | None = None
    ) -> ObjectInfo:
        """As :meth:`Driver.download_version`: the object's ``generation`` (the first part of
        the version marker ``"<generation>.<metageneration>"``; a metadata change makes a new
        metageneration of the same bytes). An old generation is readable while the bucket's
        versioning keeps it (noncurrent objects); otherwise the service answers 404."""
        if version is None:
            return await super().download_version(key, out, version=None, etag=etag, size=size)
        generation = version.split(".", 1)[0]
        if not generation.isdigit():
            raise errors.VersionGone(
                self.provider, self.bucket, f"{version!r} is no GCS generation", key=key
            )
        base = self._translate(key)

        def translate(exc: BaseException) -> errors.StorageError:
            err = base(exc)
            if isinstance(err, errors.NotFound):
                return errors.VersionGone(
                    self.provider,
                    self.bucket,
                    f"generation {generation} is gone from the bucket (deleted, expired, or "
                    "overwritten without object versioning on)",
                    key=key,
                )
            return err

        blob = self._bucket.blob(key, generation=int(generation))
        await call(lambda: blob.reload(retry=None, timeout=TIMEOUT), translate, self.retry)
        info = self._info(blob)
        # a fresh blob of that generation, as download() does (no mediaLink host)
        fresh = self._bucket.blob(key, generation=int(generation))

        def fetch() -> None:
            out.seek(0)
            out.truncate()
            fresh.download_to_file(out, retry=None, timeout=TIMEOUT)

        await call(fetch, translate, self.retry)
        return info

    async def delete(self, key: str) -> None:
        with contextlib.suppress(errors.NotFound):
            await call(
                lambda: self._bucket.blob(key).delete(retry=None, timeout=TIMEOUT),
                self._translate(key),
                self.retry,
            )

    async def presign(self, key: str, ttl: int = 3600) -> str:
        if self.endpoint:
            # emulators cannot verify signatures; their media URL needs none
            base = self.endpoint.rstrip("/")
            return f"{base}/download/storage/v1/b/{self.bucket}/o/{quote(key, safe='')}?alt=media"
        blob = self._bucket.blob(key)
        return await call(
            lambda: blob.generate_signed_url(version="v4", expiration=timedelta(seconds=ttl)),
            self._translate(key),
            self.retry,
        )

    async def presign_version(self, key: str, version: str | None, ttl: int = 3600) -> str:
        """The URL of the generation in ``version`` (``"<generation>.<metageneration>"``)."""
        if version is None:
            return await self.presign(key, ttl)
        generation = version.split(".", 1)[0]
        if not generation.isdigit():
            raise errors.VersionGone(
                self.provider, self.bucket, f"{version!r} is no GCS generation", key=key
            )
        if self.endpoint:
            return f"{await self.presign(key, ttl)}&generation={generation}"
        blob = self._bucket.blob(key, generation=int(generation))
        return await call(
            lambda: blob.generate_signed_url(
                version="v4",
                expiration=timedelta(seconds=ttl),
                query_parameters={"generation": generation},
            ),
            self._translate(key),
            self.retry,
        )

    def uri(self, key: str) -> str:
        return object_uri(self.provider, self.bucket, key)

    def uris(self, keys: list[str]) -> list[str]:
        base = object_uri(self.provider, self.bucket, "")
        return [base + k for k in keys]

    async def close(self) -> None:
        self._client.close()
