"""Storage drivers behind one interface: S3, GCS, Azure Blob and local folders.

Use :func:`open_driver` with a :class:`DriverConfig`; every driver returns
:class:`ObjectInfo` records and raises errors from :mod:`providers.errors`.
"""

from providers.base import Driver, ObjectInfo
from providers.config import ConfigError, DriverConfig, Integration
from providers.errors import (
    BucketNotFound,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ProviderError,
    StorageError,
    Throttled,
    TransientError,
    Unauthenticated,
)
from providers.registry import open_driver

__all__ = [
    "BucketNotFound",
    "ConfigError",
    "Driver",
    "DriverConfig",
    "Integration",
    "InvalidRequest",
    "NotFound",
    "ObjectInfo",
    "PermissionDenied",
    "ProviderError",
    "StorageError",
    "Throttled",
    "TransientError",
    "Unauthenticated",
    "open_driver",
]
