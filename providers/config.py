"""Driver configuration, modelled on the integration/driver split of dataset platforms.

* An :class:`Integration` is a *named credential set*. Its secret fields hold **references**,
  never values: ``"env:NAME"`` (read from the environment when the driver opens) or
  ``"file:/path"`` (the file's content, stripped). A literal secret is refused, so nothing
  syncd stores or prints can contain one. An integration with no fields means "the provider's
  standard chain" (AWS env/profile/instance role, GCP application default credentials, Azure
  ``DefaultAzureCredential``).
* A :class:`DriverConfig` is type + bucket/container + optional path prefix + region/endpoint/
  storage class + ``allow_external_delete``, optionally bound to an integration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from providers.redact import register

PROVIDERS = ("s3", "gcs", "azure", "local")
#: driver types a SOURCE may name but a config file may not: providers.synthetic (benchmarks)
SOURCE_ONLY = ("bench",)

#: which integration fields may hold secrets, per provider (values must be references)
SECRET_FIELDS: dict[str, frozenset[str]] = {
    "s3": frozenset({"access_key_id", "secret_access_key", "session_token"}),
    "gcs": frozenset(),
    "azure": frozenset({"connection_string", "account_key", "sas_token"}),
    "local": frozenset(),
}
#: non-secret integration fields, per provider
PLAIN_FIELDS: dict[str, frozenset[str]] = {
    "s3": frozenset({"profile"}),
    # the *path* to a service-account file is not a secret; its content is
    "gcs": frozenset({"credentials_file", "project"}),
    "azure": frozenset({"account_name"}),
    "local": frozenset(),
}


class ConfigError(ValueError):
    """Configuration is malformed or incomplete. The message says what to change."""


class MissingExtra(ConfigError):
    """A part of syncd whose libraries are an extra that is not installed."""

    def __init__(self, extra: str, what: str, exc: ImportError) -> None:
        missing = exc.name or str(exc)
        super().__init__(
            f"{what} needs the '{extra}' extra ({missing} is not installed): "
            f"pip install 'syncd[{extra}]' (or 'syncd[all]')"
        )
        self.extra = extra


def resolve_secret(ref: str, *, what: str) -> str:
    """Read a secret reference (``env:NAME`` or ``file:/path``). Never echoes the value."""
    scheme, sep, target = ref.partition(":")
    if not sep or scheme not in ("env", "file") or not target:
        raise ConfigError(f"{what} must be a reference like 'env:NAME' or 'file:/path'")
    if scheme == "env":
        value = os.environ.get(target)
        if value is None:
            raise ConfigError(f"{what} refers to environment variable {target}, which is not set")
        register(value)
        return value
    try:
        value = Path(target).expanduser().read_text().strip()
        register(value)
        return value
    except OSError as exc:
        raise ConfigError(
            f"{what} refers to {target}, which cannot be read: {exc.strerror}"
        ) from None


@dataclass(frozen=True)
class Integration:
    """A named credential set. ``fields`` maps field name to a plain value or secret reference."""

    name: str
    type: str
    fields: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in PROVIDERS:
            raise ConfigError(
                f"integration {self.name!r}: unknown type {self.type!r} "
                f"(expected one of {', '.join(PROVIDERS)})"
            )
        allowed = SECRET_FIELDS[self.type] | PLAIN_FIELDS[self.type]
        for name, value in self.fields.items():
            if name not in allowed:
                raise ConfigError(
                    f"integration {self.name!r}: unknown field {name!r} for type {self.type} "
                    f"(allowed: {', '.join(sorted(allowed)) or 'none'})"
                )
            if not isinstance(value, str):
                raise ConfigError(f"integration {self.name!r}: field {name!r} must be a string")
            if name in SECRET_FIELDS[self.type] and not value.startswith(("env:", "file:")):
                raise ConfigError(
                    f"integration {self.name!r}: field {name!r} holds a literal secret; "
                    f"write 'env:VARIABLE' or 'file:/path/to/secret' instead"
                )

    def resolve(self) -> dict[str, str]:
        """Field values with secret references read. Call only when opening a driver."""
        out: dict[str, str] = {}
        for name, value in self.fields.items():
            if name in SECRET_FIELDS[self.type]:
                out[name] = resolve_secret(value, what=f"integration {self.name!r} field {name!r}")
            else:
                out[name] = value
        return out


def normalize_path(path: str) -> str:
    """A driver path is a folder: ``"raw"`` and ``"/raw/"`` both become ``"raw/"``; root is ``""``.

    Treating it as a folder is what makes ``data`` not match ``data2/...``.
    """
    path = path.strip("/")
    return f"{path}/" if path else ""


@dataclass(frozen=True)
class DriverConfig:
    """One bucket (+ optional path prefix) of one provider. Holds no secrets."""

    type: str
    bucket: str
    path: str = ""
    region: str | None = None
    endpoint: str | None = None
    storage_class: str | None = None
    #: Azure storage account (also taken from the connection string or AZURE_STORAGE_ACCOUNT)
    account: str | None = None
    allow_external_delete: bool = False
    integration: Integration | None = None
    page_size: int = 1000
    name: str | None = None

    def __post_init__(self) -> None:
        if self.type not in PROVIDERS + SOURCE_ONLY:
            raise ConfigError(
                f"unknown driver type {self.type!r} (expected one of {', '.join(PROVIDERS)})"
            )
        if not self.bucket:
            raise ConfigError(f"{self.type} driver needs a bucket")
        if self.integration is not None and self.integration.type != self.type:
            raise ConfigError(
                f"driver of type {self.type} cannot use integration {self.integration.name!r} "
                f"of type {self.integration.type}"
            )
        object.__setattr__(self, "path", normalize_path(self.path))

    def public(self) -> dict[str, Any]:
        """What may be stored in the catalog or printed: everything but credentials."""
        out = {name: getattr(self, name) for name in PUBLIC_FIELDS}
        out["integration"] = self.integration.name if self.integration else None
        return out


#: the driver settings the catalog stores (``integration`` by name only)
PUBLIC_FIELDS = (
    "type",
    "bucket",
    "path",
    "region",
    "endpoint",
    "storage_class",
    "account",
    "allow_external_delete",
    "integration",
)
