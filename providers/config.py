"""Driver configuration, modelled on the integration/driver split of dataset platforms.

* An :class:`Integration` is a *named credential set*. Its secret fields hold **references**,
  never values: ``"env:NAME"`` (read from the environment when the driver opens) or
  ``"file:/path"`` (the file's content, stripped). A literal secret is refused, so nothing
  syncd stores or prints can contain one. An integration with no fields means "the provider's
  standard chain" (AWS env/profile/instance role, GCP application default credentials, Azure
  ``DefaultAzureCredential``).
* Role-based fields (built into SDK credentials by :mod:`providers.credentials`): AWS
  ``role_arn`` (+ ``external_id``, ``session_name``, ``duration_seconds``) assumes that role
  through STS with the integration's other credentials; Azure ``tenant_id`` + ``client_id`` +
  ``client_secret`` (a reference) or ``certificate_path`` signs in as a service principal; GCP
  ``impersonate`` (a service account's email) impersonates it with the other credentials.
* A :class:`DriverConfig` is type + bucket/container + optional path prefix + region/endpoint/
  storage class + ``allow_external_delete``, optionally bound to an integration.
"""

from __future__ import annotations

import os
import re
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
    "azure": frozenset(
        {"connection_string", "account_key", "sas_token", "client_secret", "certificate_password"}
    ),
    "local": frozenset(),
}
#: non-secret integration fields, per provider
PLAIN_FIELDS: dict[str, frozenset[str]] = {
    # ``external_id`` is plain on purpose: AWS documents it as an identifier, not a secret (it
    # stands in clear text in the customer's trust policy and in CloudTrail), and an operator
    # must be able to read it back to compare it with the trust policy. What keeps a confused
    # deputy out is that the *platform* chooses it per tenant, not that it is hidden.
    "s3": frozenset({"profile", "role_arn", "external_id", "session_name", "duration_seconds"}),
    # the *path* to a service-account file is not a secret; its content is
    "gcs": frozenset({"credentials_file", "project", "impersonate"}),
    # a certificate's path, like a service-account file's, is not a secret; its content is
    "azure": frozenset({"account_name", "tenant_id", "client_id", "certificate_path", "authority"}),
    "local": frozenset(),
}
#: fields a config file may give as a whole number (kept as its decimal string)
INT_FIELDS = frozenset({"duration_seconds"})

#: what the role fields must look like (AWS's own constraints, so a typo fails at load time,
#: not at the first request). ARNs of S3-compatible stores' STS (MinIO's ``arn:minio:iam:::
#: role/...``) have an empty account.
_ROLE_ARN = re.compile(r"arn:[\w-]+:iam::\d{0,12}:role/[\w+=,.@/-]{1,512}")
_SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}")
_EXTERNAL_ID = re.compile(r"[\w+=,.@:/-]{2,1224}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
#: AssumeRole's DurationSeconds bounds (the role's own maximum may be lower, up to 12 hours)
MIN_ROLE_SECONDS, MAX_ROLE_SECONDS = 900, 43200


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
            if name in INT_FIELDS and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)  # kept as text, like every other field
                object.__setattr__(self, "fields", {**self.fields, name: value})
            if not isinstance(value, str):
                raise ConfigError(f"integration {self.name!r}: field {name!r} must be a string")
            if name in SECRET_FIELDS[self.type] and not value.startswith(("env:", "file:")):
                raise ConfigError(
                    f"integration {self.name!r}: field {name!r} holds a literal secret; "
                    f"write 'env:VARIABLE' or 'file:/path/to/secret' instead"
                )
        problem = _role_problem(self.type, self.fields)
        if problem:
            raise ConfigError(f"integration {self.name!r}: {problem}")

    def resolve(self) -> dict[str, str]:
        """Field values with secret references read. Call only when opening a driver."""
        out: dict[str, str] = {}
        for name, value in self.fields.items():
            if name in SECRET_FIELDS[self.type]:
                out[name] = resolve_secret(value, what=f"integration {self.name!r} field {name!r}")
            else:
                out[name] = value
        return out


def _role_problem(kind: str, fields: dict[str, str]) -> str | None:
    """What is wrong with an integration's role-based fields, or None. Values are named only
    when they are not secrets (a role ARN, a duration), never a secret's reference target."""
    has = fields.keys()
    if kind == "s3":
        if "role_arn" not in has:
            extra = sorted(has & {"external_id", "session_name", "duration_seconds"})
            if extra:
                return f"{', '.join(extra)}: only used with role_arn (the role to assume)"
            return None
        if not _ROLE_ARN.fullmatch(fields["role_arn"]):
            return (
                f"role_arn {fields['role_arn']!r} is not a role ARN "
                "(expected arn:aws:iam::<12-digit account>:role/<name>)"
            )
        if "external_id" in has and not _EXTERNAL_ID.fullmatch(fields["external_id"]):
            return "external_id must be 2-1224 characters of letters, digits and +=,.@:/-"
        if "session_name" in has and not _SESSION_NAME.fullmatch(fields["session_name"]):
            return "session_name must be 2-64 characters of letters, digits and +=,.@-"
        if "duration_seconds" in has:
            raw = fields["duration_seconds"]
            if not raw.isdigit() or not MIN_ROLE_SECONDS <= int(raw) <= MAX_ROLE_SECONDS:
                return (
                    f"duration_seconds must be a whole number from {MIN_ROLE_SECONDS} to "
                    f"{MAX_ROLE_SECONDS} (AssumeRole's bounds), got {raw!r}"
                )
    if kind == "azure":
        principal = has & {"tenant_id", "client_id", "client_secret", "certificate_path"}
        if not principal:
            extra = sorted(has & {"certificate_password", "authority"})
            if extra:
                return f"{', '.join(extra)}: only used with a service principal (tenant_id, ...)"
            return None
        if not {"tenant_id", "client_id"} <= has:
            return "a service principal needs tenant_id and client_id"
        if ("client_secret" in has) == ("certificate_path" in has):
            return "a service principal needs exactly one of client_secret and certificate_path"
        if "certificate_password" in has and "certificate_path" not in has:
            return "certificate_password needs certificate_path"
        clash = sorted(has & {"connection_string", "account_key", "sas_token"})
        if clash:
            return f"a service principal cannot be combined with {', '.join(clash)}"
    if kind == "gcs" and "impersonate" in has and not _EMAIL.fullmatch(fields["impersonate"]):
        return (
            f"impersonate {fields['impersonate']!r} is not a service account's email "
            "(expected NAME@PROJECT.iam.gserviceaccount.com)"
        )
    return None


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
    #: S3: list with ListObjectVersions so each item records its object's VersionId (the
    #: bucket has versioning on); GCS (generation) and Azure (version id, when the account
    #: has versioning) record versions without it
    versioned: bool = False
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
        if self.versioned and self.type != "s3":
            raise ConfigError(
                f"versioned = true is an s3 driver setting; a {self.type} listing records"
                " object versions where the provider has them (GCS generation, Azure version id)"
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
    "versioned",
)
