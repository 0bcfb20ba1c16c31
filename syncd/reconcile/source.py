"""Parse the SOURCE argument of ``syncd sync`` into a driver configuration.

Accepted forms::

    s3://bucket[/prefix]     gs://bucket[/prefix]     az://container[/prefix]
    file:///absolute/dir     /absolute/dir or relative/dir (a local folder)

Endpoints and credentials are *not* part of SOURCE: they come from the standard variables
(``AWS_ENDPOINT_URL`` and the AWS chain, ``STORAGE_EMULATOR_HOST`` and application default
credentials, ``AZURE_STORAGE_CONNECTION_STRING`` or ``AZURE_STORAGE_ACCOUNT`` + key/SAS/identity).
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit

from providers.config import DriverConfig, normalize_path
from syncd.errors import UsageError

_SCHEMES = {"s3": "s3", "gs": "gcs", "az": "azure"}
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")

FORMS = "s3://bucket[/prefix], gs://bucket[/prefix], az://container[/prefix], file:///dir or a folder path"


def parse_source(source: str) -> DriverConfig:
    """Return the driver configuration SOURCE names; ``UsageError`` if it is malformed."""
    if not source or not source.strip():
        raise UsageError(f"empty SOURCE; expected {FORMS}")
    scheme, sep, rest = source.partition("://")
    if not sep:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", source) and not os.path.exists(source):
            raise UsageError(f"malformed SOURCE {source!r}; expected {FORMS}")
        return _local(os.path.abspath(source), source)
    if scheme == "file":
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise UsageError(
                f"malformed SOURCE {source!r}: file URLs need an absolute path (file:///dir)"
            )
        return _local(unquote(parts.path), source)
    if scheme == "bench":  # providers.synthetic: N generated objects, for benchmarks
        if not rest.partition("?")[0].isdigit():
            raise UsageError(f"malformed SOURCE {source!r}: expected bench://N[?latency=80ms]")
        return DriverConfig(type="bench", bucket=rest)
    provider = _SCHEMES.get(scheme)
    if provider is None:
        raise UsageError(f"unsupported SOURCE scheme {scheme!r} in {source!r}; expected {FORMS}")
    bucket, _, path = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise UsageError(
            f"malformed SOURCE {source!r}: {bucket!r} is not a valid bucket/container name"
        )
    return DriverConfig(type=provider, bucket=bucket, path=path)


def _local(path: str, source: str) -> DriverConfig:
    if not os.path.isabs(path):
        raise UsageError(f"malformed SOURCE {source!r}: a local folder needs an absolute path")
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise UsageError(f"SOURCE {source!r}: folder {real!r} does not exist")
    return DriverConfig(type="local", bucket=real)


def canonical(cfg: DriverConfig) -> str:
    """The SOURCE a dataset is bound to, in one spelling (``s3://b/raw/``, ``file:///d/``)."""
    if cfg.type == "local":
        return "file://" + cfg.bucket.rstrip("/") + "/" + cfg.path
    if cfg.type == "bench":
        return f"bench://{cfg.bucket}"
    scheme = {v: k for k, v in _SCHEMES.items()}[cfg.type]
    return f"{scheme}://{cfg.bucket}/{normalize_path(cfg.path)}"
