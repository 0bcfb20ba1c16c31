"""The ``syncd.toml`` configuration file: integrations, drivers and datasets.

Example::

    [integrations.aws-prod]
    type = "s3"
    access_key_id = "env:AWS_PROD_KEY_ID"          # secrets are references, never values
    secret_access_key = "file:/run/secrets/aws-prod"

    [drivers.images]
    type = "s3"
    bucket = "acme-images"
    path = "raw/"
    region = "eu-west-1"
    integration = "aws-prod"                       # omit to use the standard credential chain

    [datasets.birds]
    driver = "images"
    include = ["*.jpg", "*.png"]
    exclude = ["tmp/*"]
    max_size = 104857600

Unknown keys are errors (a typo must not silently change what is synced).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from providers.config import PUBLIC_FIELDS, ConfigError, DriverConfig, Integration
from syncd.errors import UsageError
from syncd.reconcile.filters import Filters

_DRIVER_KEYS = {*PUBLIC_FIELDS, "page_size"}
_DATASET_KEYS = {"driver", "include", "exclude", "max_size"}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    driver: DriverConfig
    filters: Filters


def load_config(path: str) -> dict[str, DatasetSpec]:
    """Parse and validate the file; return dataset specs by name. ``UsageError`` on any fault."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read config {path!r}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config {path!r} is not valid TOML: {exc}") from None
    try:
        return _parse(raw)
    except (ConfigError, ValueError, TypeError) as exc:
        raise UsageError(f"config {path!r}: {exc}") from None


def _table(raw: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    value = raw.get(name, {})
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(f"[{name}] must be a table of tables, like [{name}.NAME]")
    return value


def _parse(raw: dict[str, Any]) -> dict[str, DatasetSpec]:
    unknown = set(raw) - {"integrations", "drivers", "datasets"}
    if unknown:
        raise ConfigError(f"unknown section(s): {', '.join(sorted(unknown))}")
    integrations = {}
    for name, body in _table(raw, "integrations").items():
        body = dict(body)
        kind = body.pop("type", None)
        if not kind:
            raise ConfigError(f"integration {name!r} needs a type")
        integrations[name] = Integration(name, kind, body)
    drivers = {}
    for name, body in _table(raw, "drivers").items():
        extra = set(body) - _DRIVER_KEYS
        if extra:
            raise ConfigError(f"driver {name!r}: unknown key(s) {', '.join(sorted(extra))}")
        body = dict(body)
        integ_name = body.pop("integration", None)
        integ = None
        if integ_name is not None:
            if integ_name not in integrations:
                raise ConfigError(f"driver {name!r} names unknown integration {integ_name!r}")
            integ = integrations[integ_name]
        if "type" not in body or "bucket" not in body:
            raise ConfigError(f"driver {name!r} needs a type and a bucket")
        drivers[name] = DriverConfig(**body, integration=integ, name=name)
    datasets = {}
    for name, body in _table(raw, "datasets").items():
        extra = set(body) - _DATASET_KEYS
        if extra:
            raise ConfigError(f"dataset {name!r}: unknown key(s) {', '.join(sorted(extra))}")
        driver_name = body.get("driver")
        if driver_name not in drivers:
            raise ConfigError(f"dataset {name!r} names unknown driver {driver_name!r}")
        for key in ("include", "exclude"):
            value = body.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"dataset {name!r}: {key} must be a list of glob strings")
        max_size = body.get("max_size")
        if max_size is not None and (not isinstance(max_size, int) or max_size < 0):
            raise ConfigError(f"dataset {name!r}: max_size must be a whole number of bytes")
        filters = Filters(tuple(body.get("include", [])), tuple(body.get("exclude", [])), max_size)
        datasets[name] = DatasetSpec(name, drivers[driver_name], filters)
    if not datasets:
        raise ConfigError("declares no [datasets.NAME]")
    return datasets
