"""Amazon S3 and S3-compatible stores (MinIO, R2, moto), through botocore (boto3's core).

Credentials: explicit key/secret/session token from an integration, else a named profile,
else botocore's standard chain (environment, shared files, instance/role); with a ``role_arn``,
that role assumed through STS with those and refreshed before it expires (the session comes
from :func:`providers.credentials.aws_session`, as every AWS client syncd makes). The endpoint is the
driver's ``endpoint``, else botocore's own ``AWS_ENDPOINT_URL`` handling. The client's retry
loop is switched off (one attempt) so that :mod:`providers.retry` is the only one.

The client is botocore's, not boto3's wrapper: boto3 adds nothing this driver uses but its
import (boto3 loads s3transfer and its thread pools eagerly: about a fifth of a second, paid
by every ``syncd`` command). s3transfer, the SDK's transfer manager, is imported only when a
file at or above the multipart cutoff moves.

``ListObjectsV2`` returns keys in UTF-8 binary order and takes ``StartAfter`` for resuming; it
does not return content types, version ids or custom metadata (``x-amz-meta-*``), so those
come only from ``head``; object tags only from ``object_tags`` (GetObjectTagging).
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, BinaryIO

from providers import collector, errors
from providers.base import (
    MULTIPART_THRESHOLD,
    PART_CONCURRENCY,
    Driver,
    ObjectInfo,
    changed_unversioned,
    deleted_unversioned,
    object_uri,
)
from providers.config import ConfigError
from providers.credentials import aws_session
from providers.retry import NO_RETRY, RetryPolicy, Translate, call

# botocore's import makes about a hundred thousand objects, none of them garbage: with the
# collector off meanwhile it takes about a tenth less CPU (120 -> 110 ms, issue 27)
with collector.paused():
    import botocore.exceptions
    import botocore.session
    import botocore.utils
    from botocore.config import Config
    from botocore.configprovider import ConfiguredEndpointProvider

    from providers.botomodels import use_model_loader

if TYPE_CHECKING:
    from s3transfer.manager import TransferConfig

#: the reads of ``get`` and ``download``: botocore's StreamingBody iterates in 1 KiB by
#: default; 1 MiB costs the least CPU measured (8 MiB reads triple the kernel time, 256 KiB
#: add calls): see bench/README.md
CHUNK = 1024 * 1024

_CODE_MAP: dict[str, type[errors.StorageError]] = {
    "NoSuchBucket": errors.BucketNotFound,
    "NoSuchKey": errors.NotFound,
    "404": errors.NotFound,
    "NotFound": errors.NotFound,
    "InvalidAccessKeyId": errors.Unauthenticated,
    "SignatureDoesNotMatch": errors.Unauthenticated,
    "ExpiredToken": errors.Unauthenticated,
    "InvalidToken": errors.Unauthenticated,
    "AuthorizationHeaderMalformed": errors.Unauthenticated,
    "AccessDenied": errors.PermissionDenied,
    "403": errors.PermissionDenied,
    "AllAccessDisabled": errors.PermissionDenied,
    "SlowDown": errors.Throttled,
    "Throttling": errors.Throttled,
    "RequestLimitExceeded": errors.Throttled,
    "ServiceUnavailable": errors.Throttled,
    "503": errors.Throttled,
    "InternalError": errors.TransientError,
    "500": errors.TransientError,
    "RequestTimeout": errors.TransientError,
    "InvalidBucketName": errors.InvalidRequest,
    "KeyTooLongError": errors.InvalidRequest,
}


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _timestamp(value: Any) -> datetime:
    """The timestamp parser of this driver's clients. botocore's default goes through
    dateutil, about 0.3 ms per value here (every listed object, every GET's Last-Modified:
    a tenth of the CPU of a 16 KiB GET); the two shapes S3 sends are parsed by the standard
    library instead: ISO 8601 in UTC in listings (``2026-12-03T10:26:51.000Z``) and RFC 1123
    in headers (``Thu, 03 Dec 2026 10:26:51 GMT``). Anything else, and anything those two
    refuse, goes to botocore's own parser, so what a client returns does not change."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError, TypeError, IndexError):
            if value.endswith("Z") and "T" in value:
                return datetime.fromisoformat(value)
            if value.endswith(" GMT"):
                parsed = parsedate_to_datetime(value)
                if parsed.tzinfo is not None:
                    return parsed
    return botocore.utils.parse_timestamp(value)


#: below this, one streamed PUT or GET moves a file: cheaper than parts unless the link is
#: faster than one connection (rclone's upload cutoff is 200 MiB too). SYNCD_S3_MULTIPART_CUTOFF
#: (bytes) overrides it, for links where parallel parts pay earlier.
DEFAULT_MULTIPART_CUTOFF = 200 * 1024 * 1024


def multipart_cutoff() -> int:
    raw = os.environ.get("SYNCD_S3_MULTIPART_CUTOFF")
    if not raw:
        return DEFAULT_MULTIPART_CUTOFF
    if not raw.isdigit() or int(raw) < 5 * 1024 * 1024:
        raise ConfigError(
            f"SYNCD_S3_MULTIPART_CUTOFF must be a number of bytes of at least 5 MiB (S3's "
            f"smallest part), got {raw!r}"
        )
    return int(raw)


#: whether :func:`_freeze_once` has run in this process
_frozen = False


def _freeze_once() -> None:
    """Move every object alive now into the cyclic garbage collector's permanent generation
    (``gc.freeze``), once per process: called when the first S3 client is made, by then
    botocore's modules and its S3 service model, endpoint rules and ``endpoints.json``, a few
    hundred thousand objects that live as long as the process, are loaded.

    Why: the collector otherwise walks them on every full collection, the last of them at
    interpreter exit. Measured (bench/README.md, issue 27): importing this module and making
    one driver used 0.33-0.38 s of user CPU with a normal exit, 0.21-0.24 s with the objects
    frozen; a 200 MB ``syncd pull`` from moto 0.45 s of CPU and 1.96 s of wall time (medians
    of 6 on the loaded 2-core machine) against 0.34 s and 1.30 s when it skipped the exit's
    work. What it costs: cycles that are garbage at this moment are never collected (a
    bounded, one-time amount, the leftovers of imports); objects made later are collected as
    before. A long-running ``syncd run`` freezes once, when its first S3 driver opens."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.freeze()


#: the ETag of a single-part upload is the content's MD5; a multipart one ends in "-<parts>"
_MD5_ETAG = re.compile(r"[0-9a-f]{32}")


def _md5_of(etag: str) -> str | None:
    return etag if _MD5_ETAG.fullmatch(etag) else None


def _known_object(size: int, etag: str) -> Any:
    """An s3transfer subscriber that hands it the size and ETag a HEAD already gave."""
    from s3transfer.subscribers import BaseSubscriber

    class KnownObject(BaseSubscriber):
        def on_queued(self, future: Any, **kwargs: Any) -> None:
            future.meta.provide_transfer_size(size)
            future.meta.provide_object_etag(f'"{etag}"')

    return KnownObject()


def _plain_http(session: botocore.session.Session, endpoint: str | None) -> bool:
    """Whether the client ``session`` makes for S3 will speak plain HTTP: ``endpoint``, else
    the endpoint botocore's configuration names (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``,
    the config file's ``endpoint_url``, unless configured endpoints are ignored), else AWS's
    own endpoints, which are HTTPS. A guess the caller checks against the client it made."""
    if endpoint is None and not session.get_config_variable("ignore_configured_endpoint_urls"):
        endpoint = ConfiguredEndpointProvider(
            full_config=session.full_config,
            scoped_config=session.get_scoped_config(),
            client_name="s3",
        ).provide()
    return bool(endpoint) and endpoint.lower().startswith("http:")


class S3Driver(Driver):
    provider = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        profile: str | None = None,
        storage_class: str | None = None,
        page_size: int = 1000,
        retry: RetryPolicy | None = None,
        session: botocore.session.Session | None = None,
        versioned: bool = False,
    ) -> None:
        """``session``: the botocore session to make clients from (its credentials are the
        driver's); without one, a session from the key, secret, token and profile given.
        ``versioned``: list with ``ListObjectVersions`` (:meth:`list`), so each object's
        record carries its VersionId."""
        super().__init__(bucket, page_size=min(page_size, 1000))
        self.versioned = versioned
        self.retry = retry or RetryPolicy.from_env()
        self.storage_class = storage_class
        if session is None:
            keys = {
                "access_key_id": access_key_id,
                "secret_access_key": secret_access_key,
                "session_token": session_token,
                "profile": profile,
            }
            session = aws_session({k: v for k, v in keys.items() if v}, region=region, label=bucket)
        self._session = session
        use_model_loader(session)  # botocore's models parsed once per user, not per command
        parsers = self._session.get_component("response_parser_factory")
        parsers.set_parser_defaults(timestamp_parser=_timestamp)
        # credentials come from the session (keys, profile, chain or an assumed role)
        self._client_args: dict[str, Any] = {"region_name": region, "endpoint_url": endpoint}
        # over plain HTTP botocore signs every body's SHA-256 (the service checks it), so
        # the default CRC32 would be a second pass over each file before it is sent (about a
        # second of a 200 MB push on this machine); over HTTPS botocore signs no body and
        # sends the CRC32 as a trailer computed while streaming: kept there. The scheme is
        # read from the endpoint botocore will use before the client is made, so one client
        # is made (each costs about 0.06 s CPU, mostly parsing the service model); should
        # the guess miss, the client is made again with the right setting.
        plain_http = _plain_http(self._session, endpoint)
        self._checksum = "when_required" if plain_http else None
        self._client: Any = self._session.create_client(
            "s3", config=self._config({"total_max_attempts": 1}), **self._client_args
        )
        if self._client.meta.endpoint_url.startswith("http:") != plain_http:
            self._checksum = None if plain_http else "when_required"
            self._client.close()
            self._client = self._session.create_client(
                "s3", config=self._config({"total_max_attempts": 1}), **self._client_args
            )
        self._parts: tuple[Any, TransferConfig] | None = None
        self.multipart_cutoff = multipart_cutoff()
        _freeze_once()  # botocore's objects out of the collector's walks (see the function)

    #: None: botocore's setting (environment, config file; by default a CRC32 per upload)
    _checksum: str | None = None

    def _config(self, retries: dict[str, Any]) -> Config:
        return Config(
            retries=retries,
            max_pool_connections=64,
            request_checksum_calculation=self._checksum,
            # named: botocore would otherwise presign with the deprecated SigV2 query auth
            # (AWSAccessKeyId/Signature) on custom endpoints
            signature_version="s3v4",
        )

    def _parts_client(self) -> tuple[Any, TransferConfig]:
        """The client and settings of the transfer manager, made on first use (only files at
        or above the cutoff need them). Its client keeps botocore's standard retries: a
        throttled part is sent again on its own, instead of providers.retry restarting the
        whole file. Call from the event loop's thread (one session, one creator)."""
        if self._parts is None:
            from s3transfer.manager import TransferConfig

            client = self._session.create_client(
                "s3",
                config=self._config({"mode": "standard", "total_max_attempts": 5}),
                **self._client_args,
            )
            config = TransferConfig(
                multipart_threshold=self.multipart_cutoff,
                multipart_chunksize=MULTIPART_THRESHOLD,
                max_request_concurrency=PART_CONCURRENCY,
            )
            self._parts = (client, config)
        return self._parts

    def _translate(self, key: str | None = None) -> Translate:
        def translate(exc: BaseException) -> errors.StorageError:
            if isinstance(exc, botocore.exceptions.ClientError):
                err = exc.response.get("Error", {})
                code = str(err.get("Code", ""))
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                cls = _CODE_MAP.get(code) or _CODE_MAP.get(str(status))
                if cls is None:
                    cls = errors.TransientError if status >= 500 else errors.ProviderError
                cause = f"{code or status}" + (f" ({err['Message']})" if err.get("Message") else "")
                if cls is errors.NotFound and key is None:
                    cls, cause = errors.BucketNotFound, f"{code or status} (bucket not found)"
                return cls(self.provider, self.bucket, cause, key=key)
            if isinstance(
                exc,
                botocore.exceptions.NoCredentialsError
                | botocore.exceptions.PartialCredentialsError,
            ):
                return errors.Unauthenticated(self.provider, self.bucket, "no credentials found")
            if isinstance(exc, botocore.exceptions.ProfileNotFound):
                return errors.Unauthenticated(self.provider, self.bucket, "profile not found")
            if isinstance(
                exc,
                botocore.exceptions.EndpointConnectionError
                | botocore.exceptions.HTTPClientError  # closed, timed out, body cut short
                | botocore.exceptions.ConnectTimeoutError
                | botocore.exceptions.IncompleteReadError
                | ConnectionError
                | TimeoutError
                | errors.CUT_SHORT,
            ):
                return errors.TransientError(
                    self.provider, self.bucket, f"connection failed ({type(exc).__name__})", key=key
                )
            return errors.ProviderError(self.provider, self.bucket, type(exc).__name__, key=key)

        return translate

    @staticmethod
    def _etag(raw: str) -> str:
        return raw.strip('"')

    async def list(
        self, prefix: str = "", start_after: str | None = None, end_before: str | None = None
    ) -> AsyncIterator[list[ObjectInfo]]:
        if self.versioned:
            async for page in self._list_versions(prefix, start_after, end_before):
                yield page
            return
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": prefix,
            "MaxKeys": self.page_size,
        }
        if start_after is not None:
            params["StartAfter"] = start_after
        translate = self._translate()
        while True:
            resp = await call(
                lambda p=dict(params): self._client.list_objects_v2(**p), translate, self.retry
            )
            page = []
            for obj in resp.get("Contents", []):
                if end_before is not None and obj["Key"] >= end_before:
                    if page:
                        yield page
                    return
                page.append(
                    ObjectInfo(
                        key=obj["Key"],
                        size=int(obj["Size"]),
                        etag=(etag := self._etag(obj["ETag"])),
                        last_modified=_utc(obj["LastModified"]),
                        md5=_md5_of(etag),
                    )
                )
            if page:
                yield page
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                return
            params["ContinuationToken"] = token

    async def _list_versions(
        self, prefix: str, start_after: str | None, end_before: str | None
    ) -> AsyncIterator[list[ObjectInfo]]:
        """:meth:`list` of a versioned bucket: ``ListObjectVersions``, keeping of each key its
        latest version (``IsLatest``) with its ``VersionId``; a key whose latest version is a
        delete marker is gone, as a plain listing shows it. Versions come in key order, the
        newest first, so the latest is met once whatever the page boundaries. ``KeyMarker``
        resumes after ``start_after`` (exclusive, as ``StartAfter``)."""
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": prefix,
            "MaxKeys": self.page_size,
        }
        if start_after is not None:
            params["KeyMarker"] = start_after
        translate = self._translate()
        while True:
            resp = await call(
                lambda p=dict(params): self._client.list_object_versions(**p), translate, self.retry
            )
            page = []
            for obj in resp.get("Versions", []):
                if not obj.get("IsLatest"):
                    continue
                if end_before is not None and obj["Key"] >= end_before:
                    if page:
                        yield page
                    return
                page.append(
                    ObjectInfo(
                        key=obj["Key"],
                        size=int(obj["Size"]),
                        etag=(etag := self._etag(obj["ETag"])),
                        last_modified=_utc(obj["LastModified"]),
                        version=obj.get("VersionId"),
                        md5=_md5_of(etag),
                    )
                )
            if page:
                yield page
            if not resp.get("IsTruncated"):
                return
            params["KeyMarker"] = resp["NextKeyMarker"]
            if resp.get("NextVersionIdMarker"):
                params["VersionIdMarker"] = resp["NextVersionIdMarker"]
            else:
                params.pop("VersionIdMarker", None)

    async def folders(self, prefix: str = "") -> list[str]:
        def fetch() -> list[str]:
            out: list[str] = []
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"
            )
            for page in pages:
                out += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            return sorted(out)

        return await call(fetch, self._translate(), self.retry)

    async def head(self, key: str) -> ObjectInfo:
        resp = await call(
            lambda: self._client.head_object(Bucket=self.bucket, Key=key),
            self._translate(key),
            self.retry,
        )
        return self._head_info(key, resp)

    def _head_info(self, key: str, resp: dict[str, Any]) -> ObjectInfo:
        version = resp.get("VersionId")
        etag = self._etag(resp["ETag"])
        return ObjectInfo(
            key=key,
            size=int(resp["ContentLength"]),
            etag=etag,
            last_modified=_utc(resp["LastModified"]),
            content_type=resp.get("ContentType"),
            version=None if version in (None, "null") else version,
            md5=_md5_of(etag),
            metadata=resp.get("Metadata"),
        )

    async def object_tags(self, key: str) -> dict[str, str] | None:
        resp = await call(
            lambda: self._client.get_object_tagging(Bucket=self.bucket, Key=key),
            self._translate(key),
            self.retry,
        )
        return {t["Key"]: t["Value"] for t in resp.get("TagSet", [])}

    async def get(self, key: str) -> AsyncIterator[bytes]:
        translate = self._translate(key)
        resp = await call(
            lambda: self._client.get_object(Bucket=self.bucket, Key=key), translate, self.retry
        )
        body = resp["Body"]
        try:
            while chunk := await call(lambda: body.read(CHUNK), translate, NO_RETRY):
                yield chunk
        finally:
            body.close()

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        params = {"Bucket": self.bucket, "Key": key, "Body": data, **self._extra(content_type)}
        await call(lambda: self._client.put_object(**params), self._translate(key), self.retry)
        return await self.head(key)

    def _extra(self, content_type: str | None) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if content_type:
            extra["ContentType"] = content_type
        if self.storage_class:
            extra["StorageClass"] = self.storage_class
        return extra

    async def upload(self, key: str, path: str, content_type: str | None = None) -> ObjectInfo:
        extra = self._extra(content_type)
        translate = self._translate(key)
        if os.path.getsize(path) >= self.multipart_cutoff:
            client, config = self._parts_client()

            def multipart() -> None:
                from s3transfer.manager import TransferManager

                with TransferManager(client, config) as tm:
                    tm.upload(path, self.bucket, key, extra_args=extra).result()

            await call(multipart, translate, self.retry)
            return await self.head(key)

        def put() -> tuple[dict[str, Any], int]:
            with open(path, "rb") as body:
                size = os.fstat(body.fileno()).st_size
                return self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, **extra
                ), size

        resp, size = await call(put, translate, self.retry)
        # the record from the PUT's own answer, not a HEAD (a second request per file, and
        # another writer's object if one came in between). S3 answers a PUT without its
        # Last-Modified; the answer's Date stands in (the moment the object was stored,
        # to the second).
        headers = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        stored = parsedate_to_datetime(headers["date"]) if "date" in headers else datetime.now(UTC)
        etag = self._etag(resp["ETag"])
        version = resp.get("VersionId")
        return ObjectInfo(
            key=key,
            size=size,
            etag=etag,
            last_modified=_utc(stored),
            content_type=content_type,
            version=None if version in (None, "null") else version,
            md5=_md5_of(etag),
        )

    async def download(self, key: str, out: BinaryIO, size: int | None = None) -> ObjectInfo:
        translate = self._translate(key)
        if size is not None and size >= self.multipart_cutoff:
            info = await self.head(key)
            client, config = self._parts_client()

            def ranged() -> None:
                from s3transfer.manager import TransferManager

                # told the size and ETag, s3transfer skips its own HEAD and sends If-Match
                # with every ranged GET: all parts come from the object the HEAD saw
                known = _known_object(info.size, info.etag)
                out.seek(0)
                out.truncate()
                with TransferManager(client, config) as tm:
                    tm.download(self.bucket, key, out, subscribers=[known]).result()

            await call(ranged, translate, self.retry)
            return info

        def whole() -> dict[str, Any]:
            resp = self._client.get_object(Bucket=self.bucket, Key=key)
            body = resp["Body"]
            out.seek(0)
            out.truncate()
            # StreamingBody checks the length (and the CRC32 where S3 sends one) at the end
            while chunk := body.read(CHUNK):
                out.write(chunk)
            return resp

        return self._head_info(key, await call(whole, translate, self.retry))

    async def download_version(
        self, key: str, out: BinaryIO, *, version: str | None, etag: str, size: int | None = None
    ) -> ObjectInfo:
        """As :meth:`Driver.download_version`: ``GetObject`` with the ``VersionId``; without
        one, with ``If-Match`` on the recorded ETag (the wrong bytes are never fetched). An
        object recorded without a version that has changed since may still have its bytes in
        an older version (a versioned bucket listed with ListObjectsV2, which states no
        version ids): the one whose ETag is the recorded one is read (equal ETags: equal
        bytes, the MD5 or the parts' MD5s)."""
        try:
            return await self._get_pinned(key, out, version, etag, size)
        except errors.VersionGone:
            if version is not None:
                raise
            found = await self._version_with_etag(key, etag)
            if found is None:
                raise
            return await self._get_pinned(key, out, found, etag, size)

    async def _get_pinned(
        self, key: str, out: BinaryIO, version: str | None, etag: str, size: int | None
    ) -> ObjectInfo:
        pin: dict[str, Any] = {"VersionId": version} if version else {"IfMatch": f'"{etag}"'}
        translate = self._pinned_translate(key, version, etag)
        if size is not None and size >= self.multipart_cutoff:
            head = await call(
                lambda: self._client.head_object(Bucket=self.bucket, Key=key, **pin),
                translate,
                self.retry,
            )
            info = self._head_info(key, head)
            client, config = self._parts_client()

            def ranged() -> None:
                from s3transfer.manager import TransferManager

                known = _known_object(info.size, info.etag)
                out.seek(0)
                out.truncate()
                with TransferManager(client, config) as tm:
                    tm.download(
                        self.bucket, key, out, extra_args=dict(pin), subscribers=[known]
                    ).result()

            await call(ranged, translate, self.retry)
            return info

        def whole() -> dict[str, Any]:
            resp = self._client.get_object(Bucket=self.bucket, Key=key, **pin)
            body = resp["Body"]
            out.seek(0)
            out.truncate()
            while chunk := body.read(CHUNK):
                out.write(chunk)
            return resp

        return self._head_info(key, await call(whole, translate, self.retry))

    def _pinned_translate(self, key: str, version: str | None, etag: str) -> Translate:
        """:meth:`_translate`, with the answers meaning the recorded state is gone made
        :class:`~providers.errors.VersionGone`: no such version (or a malformed id, or the
        id of a delete marker), no such key, or (without a version) a failed If-Match."""
        base = self._translate(key)

        def translate(exc: BaseException) -> errors.StorageError:
            err = base(exc)
            code = ""
            if isinstance(exc, botocore.exceptions.ClientError):
                code = str(exc.response.get("Error", {}).get("Code", ""))
            if version is not None and (
                isinstance(err, errors.NotFound)
                or code in ("NoSuchVersion", "InvalidArgument", "MethodNotAllowed", "405")
            ):
                return errors.VersionGone(
                    self.provider,
                    self.bucket,
                    f"version {version!r} is gone from the bucket (deleted or expired; "
                    f"{code or 'not found'})",
                    key=key,
                )
            if version is None and isinstance(err, errors.NotFound):
                return deleted_unversioned(self.provider, self.bucket, key)
            if version is None and code in ("PreconditionFailed", "412"):
                return changed_unversioned(self.provider, self.bucket, key, etag, None)
            return err

        return translate

    async def _version_with_etag(self, key: str, etag: str) -> str | None:
        """The id of a version of ``key`` whose ETag is ``etag``, or None (none, an
        unversioned bucket, or listing versions not allowed to these credentials)."""

        def find() -> str | None:
            params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": key, "MaxKeys": 1000}
            while True:
                resp = self._client.list_object_versions(**params)
                # versions come in key order (a key's own before the longer keys it
                # prefixes): past this key, none of its versions can follow
                for v in resp.get("Versions", []):
                    if v["Key"] > key:
                        return None
                    if v["Key"] == key and self._etag(v["ETag"]) == etag:
                        vid = v.get("VersionId")
                        return None if vid in (None, "null") else vid
                if not resp.get("IsTruncated") or resp.get("NextKeyMarker", key) != key:
                    return None
                params["KeyMarker"] = resp["NextKeyMarker"]
                params["VersionIdMarker"] = resp["NextVersionIdMarker"]

        try:
            return await call(find, self._translate(), self.retry)
        except (errors.PermissionDenied, errors.InvalidRequest, errors.ProviderError):
            return None

    async def delete(self, key: str) -> None:
        await call(
            lambda: self._client.delete_object(Bucket=self.bucket, Key=key),
            self._translate(key),
            self.retry,
        )

    async def presign(self, key: str, ttl: int = 3600) -> str:
        return await call(
            lambda: self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=ttl
            ),
            self._translate(key),
            self.retry,
        )

    async def presign_version(self, key: str, version: str | None, ttl: int = 3600) -> str:
        if version is None:
            return await self.presign(key, ttl)
        params = {"Bucket": self.bucket, "Key": key, "VersionId": version}
        return await call(
            lambda: self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl),
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
        if self._parts is not None:
            self._parts[0].close()
