"""The one error taxonomy. Each driver maps its SDK's exceptions into these exactly once.

Every error renders as a single line naming the provider, the bucket, the key where there is
one, and the cause, followed by what to do. Messages are built from error *codes* and names we
choose, never from request headers or SDK reprs, so no credential can leak into them.
"""

from __future__ import annotations

import http.client
from typing import Any


class StorageError(Exception):
    """Base of all provider errors. ``hint`` says what the user can do about it."""

    hint = ""

    def __init__(
        self,
        provider: str,
        bucket: str,
        cause: str,
        *,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.provider = provider
        self.bucket = bucket
        self.key = key
        self.cause = " ".join(cause.split())  # one line, whatever the SDK gave us
        if hint is not None:
            self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.provider}: bucket {self.bucket!r}"
        if self.key is not None:
            where += f", key {self.key!r}"
        text = f"{where}: {self.cause}"
        return f"{text}; {self.hint}" if self.hint else text


class NotFound(StorageError, FileNotFoundError):
    """The object does not exist."""


class VersionGone(NotFound):
    """The recorded state of an object cannot be read any more: its version was deleted or
    expired, or (where no version was recorded, or the provider keeps none) the object was
    deleted or changed since. Retrying cannot help; only the bucket's versioning could have."""


class BucketNotFound(StorageError):
    """The bucket or container does not exist (or is not visible to these credentials)."""

    hint = "check the bucket name and the account/endpoint it lives in"


class Unauthenticated(StorageError):
    """The credentials were rejected (bad key, bad signature, expired token)."""

    hint = "check the credentials syncd was given (environment, profile or referenced file)"


class PermissionDenied(StorageError, PermissionError):
    """The credentials are valid but not allowed to do this."""

    hint = "grant these credentials list/read access to the bucket"


class InvalidRequest(StorageError, ValueError):
    """The request itself is wrong (bad key, bad argument); retrying will not help."""


class TransientError(StorageError):
    """A failure that may pass: connection reset, timeout, 5xx. Retried with backoff."""

    hint = "the service or network failed; syncd retried and gave up, try again later"


def __getattr__(name: str) -> Any:
    """``CUT_SHORT``: what an HTTP stack raises when an answer stops before its
    Content-Length (a dropped connection mid-body), as transient as a reset, whichever SDK it
    surfaces through. Built on first use: urllib3 costs about 50 ms of every start, and only
    the cloud drivers (whose SDKs load it anyway) need it; a local sync does not."""
    if name == "CUT_SHORT":
        import urllib3.exceptions

        cut_short = http.client.HTTPException | urllib3.exceptions.ProtocolError
        globals()["CUT_SHORT"] = cut_short
        return cut_short
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Throttled(TransientError):
    """The service asked us to slow down (S3 SlowDown/503, GCS 429, Azure ServerBusy)."""

    hint = "the service is throttling requests; syncd retried and gave up, try again later"


class ProviderError(StorageError):
    """Anything the driver could not classify more precisely."""
