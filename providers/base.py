"""The one object record and the one driver interface every storage backend implements.

Contracts shared by all drivers (the conformance suite in ``tests/test_conformance.py`` checks
each of them against every backend):

* Keys are full object keys inside the bucket/container, ``/``-separated, never starting with
  ``/``. Listing order is Python ``str`` order, which equals UTF-8 byte order and SQLite's
  BINARY collation: the reconciler merges a listing with the catalog on that order.
* ``list`` yields *pages* (lists of at most ``page_size`` records) and never holds more than
  one page; keys are strictly increasing across the whole iteration.
* A missing key raises :class:`providers.errors.NotFound` (also a ``FileNotFoundError``); a
  missing bucket raises :class:`providers.errors.BucketNotFound`. Every other SDK failure is
  mapped once per driver into :mod:`providers.errors`, with the SDK error kept as ``__cause__``.
* ``put`` overwrites; ``delete`` of a missing key is not an error (idempotent, like S3).
* ``upload`` and ``download`` move files without holding them in memory. Files of
  :data:`MULTIPART_THRESHOLD` bytes or more go through the SDK's own transfer machinery (S3
  multipart upload and ranged GETs, GCS resumable upload, Azure block upload and parallel range
  reads); the record they return is that of the object actually written or read.

The SDKs are synchronous; drivers run each blocking call in a worker thread through
:func:`providers.retry.call`, so the event loop never blocks and retries live in one place.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

from providers import errors

DEFAULT_PAGE_SIZE = 1000
#: objects this large or larger are moved in parts by the SDK's transfer manager (GCS and Azure,
#: whose single-request uploads hold the body in memory; S3 streams a single PUT from the file
#: and has its own, higher cutoff: see providers.s3); also the size of one part
MULTIPART_THRESHOLD = 8 * 1024 * 1024
#: parts of one large object in flight at once
PART_CONCURRENCY = 8
log = logging.getLogger("providers")
#: how far this machine's clock may be ahead of a provider's, on which its events are stamped:
#: a listing page is taken to show the bucket as it was this long before it was requested, so
#: an event stamped within that second counts as newer than the page (the safe side: at worst
#: an old event re-creates an item until the next reconcile, it never hides a new object)
CLOCK_SKEW = timedelta(seconds=1)


@dataclass(frozen=True, slots=True, init=False)
class ObjectInfo:
    """What a listing or HEAD says about one object.

    ``etag`` is the provider's entity tag without surrounding quotes. ``version`` is the
    provider's version marker where it has one: the S3 version id (HEAD only, on versioned
    buckets), ``"<generation>.<metageneration>"`` on GCS, the Azure version id when blob
    versioning is on; ``None`` otherwise. ``last_modified`` is timezone-aware UTC.

    ``md5`` is the content's MD5 (hex) where the provider states one: the ETag of a
    single-part S3 upload, GCS ``md5Hash``, Azure ``Content-MD5``; ``None`` otherwise
    (multipart and block uploads that carry none, local files: a listing never reads content).

    ``metadata`` is the object's custom metadata (S3 ``x-amz-meta-*`` without the prefix, GCS
    custom metadata, Azure metadata), ``tags`` its tags (S3 object tags, Azure blob index
    tags); each a name -> string mapping, or None where this record was not told (an S3
    listing states neither; a HEAD states metadata but never tags, which
    :meth:`Driver.object_tags` reads). Treat both as read-only.
    """

    key: str
    size: int
    etag: str
    last_modified: datetime
    content_type: str | None = None
    version: str | None = None
    md5: str | None = None
    metadata: dict[str, str] | None = None
    tags: dict[str, str] | None = None

    # written by hand, not generated: a frozen dataclass's own __init__ sets each field
    # through object.__setattr__ by name, which was a third of the cost of listing a
    # million synthetic objects; the slots' descriptors set them directly
    def __init__(
        self,
        key: str,
        size: int,
        etag: str,
        last_modified: datetime,
        content_type: str | None = None,
        version: str | None = None,
        md5: str | None = None,
        metadata: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        if last_modified.tzinfo is None:
            raise ValueError(f"last_modified for {key!r} must be timezone-aware")
        _set_key(self, key)
        _set_size(self, size)
        _set_etag(self, etag)
        _set_last_modified(self, last_modified)
        _set_content_type(self, content_type)
        _set_version(self, version)
        _set_md5(self, md5)
        _set_metadata(self, metadata)
        _set_tags(self, tags)


_set_key = ObjectInfo.key.__set__  # type: ignore[attr-defined]
_set_size = ObjectInfo.size.__set__  # type: ignore[attr-defined]
_set_etag = ObjectInfo.etag.__set__  # type: ignore[attr-defined]
_set_last_modified = ObjectInfo.last_modified.__set__  # type: ignore[attr-defined]
_set_content_type = ObjectInfo.content_type.__set__  # type: ignore[attr-defined]
_set_version = ObjectInfo.version.__set__  # type: ignore[attr-defined]
_set_md5 = ObjectInfo.md5.__set__  # type: ignore[attr-defined]
_set_metadata = ObjectInfo.metadata.__set__  # type: ignore[attr-defined]
_set_tags = ObjectInfo.tags.__set__  # type: ignore[attr-defined]


def _no_versions(provider: str) -> str:
    """What to do about bytes lost for want of versions, on ``provider``."""
    if provider == "local":
        return "a folder keeps no old versions of its files"
    return "turn on the bucket's versioning so recorded bytes survive deletes and overwrites"


def changed_unversioned(
    provider: str, bucket: str, key: str, recorded: str, now: str | None
) -> errors.VersionGone:
    """The error for an object read without a version whose bytes changed since its record
    (``now``: its ETag now, where known)."""
    seen = f", {now!r} now" if now else ""
    return errors.VersionGone(
        provider,
        bucket,
        f"changed since it was recorded (ETag {recorded!r} then{seen}), and no version was "
        f"recorded to read the old bytes by ({_no_versions(provider)})",
        key=key,
    )


def deleted_unversioned(provider: str, bucket: str, key: str) -> errors.VersionGone:
    """The error for an object read without a version that was deleted since its record."""
    return errors.VersionGone(
        provider,
        bucket,
        "deleted since it was recorded, and no version was recorded to read the old bytes by "
        f"({_no_versions(provider)})",
        key=key,
    )


def mtime_text_of(when: datetime) -> str:
    """An object's modification time as the catalog's text: ISO 8601 as ``isoformat()``
    gives it, with ``Z`` for ``+00:00``."""
    return when.isoformat().replace("+00:00", "Z")


def object_uri(provider: str, bucket: str, key: str, account: str | None = None) -> str:
    """Canonical URI of a cloud object: ``s3://b/k``, ``gs://b/k``, ``az://account/container/k``."""
    if provider == "s3":
        return f"s3://{bucket}/{key}"
    if provider == "gcs":
        return f"gs://{bucket}/{key}"
    if provider == "azure":
        return f"az://{account or ''}/{bucket}/{key}"
    raise ValueError(f"no URI scheme for provider {provider!r}")


def in_range(key: str, start_after: str | None, end_before: str | None) -> bool:
    """True when ``start_after < key < end_before`` (either bound may be absent)."""
    if start_after is not None and key <= start_after:
        return False
    return not (end_before is not None and key >= end_before)


class Driver(abc.ABC):
    """One bucket (or container, or folder) of one provider.

    Subclasses implement the abstract methods; everything else is shared.
    """

    #: short provider name used in errors and URIs: "s3", "gcs", "azure", "local"
    provider: str = ""
    #: True where every ``content_type`` this driver states is a guess from the key (a local
    #: folder has nothing else); the catalog marks such items ``content_type_guessed``
    guesses_content_type: bool = False

    def __init__(self, bucket: str, *, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        if page_size < 1:
            raise ValueError("page_size must be positive")
        self.bucket = bucket
        self.page_size = page_size
        #: objects seen by ``list`` but not yielded because no key can represent them (a
        #: symlink leaving a folder, a file name that is not UTF-8): counted and logged, so a
        #: sync can report them instead of dropping them silently
        self.skipped = 0
        #: ``list`` states each object's tags too, where the provider's listing can (Azure's
        #: ``include=tags``, which a SAS token may not allow); set by a sync of a dataset with
        #: ``tags = true``. Off by default: the listing then needs no more than it always did
        self.listing_tags = False

    def skip(self, name: str, reason: str) -> None:
        """Record an object ``list`` leaves out, with why (one warning line each)."""
        self.skipped += 1
        log.warning("skipped %r in %s: %s", name, self.bucket, reason)

    @abc.abstractmethod
    def list(
        self,
        prefix: str = "",
        start_after: str | None = None,
        end_before: str | None = None,
    ) -> AsyncIterator[list[ObjectInfo]]:
        """Yield pages of objects whose key starts with ``prefix`` and lies strictly between
        ``start_after`` and ``end_before``, in key order.

        ``prefix`` is a plain string prefix: ``"data/"`` does not match ``"data2/x"``.
        Raises ``BucketNotFound`` when the bucket does not exist.
        """

    @abc.abstractmethod
    async def head(self, key: str) -> ObjectInfo:
        """Return the object's record; raise ``NotFound`` if it does not exist."""

    async def object_tags(self, key: str) -> dict[str, str] | None:
        """The object's tags (S3 object tags, Azure blob index tags), one request; ``{}`` for
        an object without. Raises ``NotFound`` if the object does not exist. Drivers whose
        provider has no object tags (GCS, a local folder) return None without a request."""
        return None

    @abc.abstractmethod
    def get(self, key: str) -> AsyncIterator[bytes]:
        """Stream the object's bytes in chunks; raise ``NotFound`` if it does not exist."""

    @abc.abstractmethod
    async def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        """Create or overwrite the object and return its new record."""

    @abc.abstractmethod
    async def upload(self, key: str, path: str, content_type: str | None = None) -> ObjectInfo:
        """Create or overwrite the object from the local file ``path``, streamed from disk,
        and return its new record (key, size, ETag exact; the modification time may be the
        service's answer time where the upload's answer carries no other, as S3's PUT).
        Safe to retry: a failed upload leaves the old object."""

    @abc.abstractmethod
    async def download(self, key: str, out: BinaryIO, size: int | None = None) -> ObjectInfo:
        """Write the object's bytes into ``out`` (a local file open for writing, seekable),
        streamed, from offset 0 (a retry starts over), and return the record of the object
        whose bytes were written. The caller opens the file, so it decides how (a pull
        creates it exclusively, never through a symbolic link).

        ``size``, the caller's expectation, only picks the transfer method (one GET, or parts
        in parallel); the caller checks the file against the returned record. Raises
        ``NotFound`` if there is no such object."""

    async def download_version(
        self, key: str, out: BinaryIO, *, version: str | None, etag: str, size: int | None = None
    ) -> ObjectInfo:
        """Write into ``out`` (as :meth:`download`) the bytes of the object as it was when it
        was recorded with ``version`` (:attr:`ObjectInfo.version`, the provider's marker) and
        ``etag``, and return the record of what was written; the caller checks size and
        checksum against its record.

        Drivers whose provider keeps versions read that version (S3 ``VersionId``, GCS
        ``generation``, Azure ``versionid``). Where no version was recorded, only the current
        bytes can be read, and only while the object's ETag is still ``etag``.

        Raises :class:`~providers.errors.VersionGone` (a ``NotFound``) when that state cannot
        be read any more: the version deleted or expired, or, without one, the object deleted
        or changed since. This default serves providers without versions (a local folder): a
        ``version`` given is refused, and the current bytes are read and checked."""
        if version is not None:
            raise errors.VersionGone(
                self.provider,
                self.bucket,
                f"version {version!r} asked for, but a {self.provider} bucket keeps no versions",
                key=key,
            )
        try:
            info = await self.download(key, out, size=size)
        except errors.NotFound:
            raise deleted_unversioned(self.provider, self.bucket, key) from None
        if info.etag != etag:
            raise changed_unversioned(self.provider, self.bucket, key, etag, info.etag)
        return info

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Delete the object; deleting a missing key succeeds."""

    @abc.abstractmethod
    async def presign(self, key: str, ttl: int = 3600) -> str:
        """Return a URL that reads the object for ``ttl`` seconds (local: a ``file://`` URL)."""

    async def presign_version(self, key: str, version: str | None, ttl: int = 3600) -> str:
        """A URL that reads the object's ``version`` (as :meth:`download_version` names it)
        for ``ttl`` seconds; with ``version`` None, :meth:`presign` (the current object).
        This default, for providers without versions, refuses a version
        (:class:`~providers.errors.VersionGone`)."""
        if version is not None:
            raise errors.VersionGone(
                self.provider,
                self.bucket,
                f"version {version!r} asked for, but a {self.provider} bucket keeps no versions",
                key=key,
            )
        return await self.presign(key, ttl)

    @abc.abstractmethod
    def uri(self, key: str) -> str:
        """The object's canonical URI, e.g. ``s3://bucket/key``."""

    def uris(self, keys: list[str]) -> list[str]:
        """``[self.uri(k) for k in keys]``; drivers whose URI is a fixed prefix and the key
        override it with one concatenation per key (a sync asks for a page at a time)."""
        return list(map(self.uri, keys))

    def mtime_texts(self, objs: list[ObjectInfo]) -> list[str]:
        """Each object's ``last_modified`` as the catalog's text (:func:`mtime_text_of`); a
        sync asks for a page at a time. Drivers that know a cheaper way to the same text
        override it."""
        return [mtime_text_of(o.last_modified) for o in objs]

    async def folders(self, prefix: str = "") -> list[str]:
        """The "folders" one level under ``prefix`` (which is empty or ends in ``/``): the
        distinct ``prefix + name + "/"`` that keys start with, sorted. Used only to split a
        first listing into ranges; a driver that cannot tell returns ``[]`` (one range)."""
        return []

    def observed_at(self) -> datetime | None:
        """When a listing page requested now shows the bucket, on the provider's clock (the
        one its event times are on), less :data:`CLOCK_SKEW`. A sync stamps each page's
        deletes with it: an event stamped before it is older than what the page showed
        (the key was deleted after that event), one stamped at or after it is newer.
        Default: this machine's clock less the skew allowance. None where the provider's
        events are not stamped with the time of the change, so that no listing time can
        order them (then any event applied after the page was requested wins over it)."""
        return datetime.now(UTC) - CLOCK_SKEW

    async def read(self, key: str) -> bytes:
        """Convenience: the whole object in memory (for small objects and tests)."""
        return b"".join([chunk async for chunk in self.get(key)])

    async def close(self) -> None:  # noqa: B027 - optional hook, most SDK clients need nothing
        """Release network resources."""

    async def __aenter__(self) -> Driver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
