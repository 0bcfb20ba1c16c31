"""Turn a :class:`DriverConfig` into a live driver.

SDK modules are imported only for the provider asked for, so a cloud function that syncs S3
never imports the Azure or Google SDKs. Secrets are resolved here, at open time, and handed
straight to the SDK client; they are not kept on the config.
"""

from __future__ import annotations

import os

from providers.base import Driver
from providers.config import ConfigError, DriverConfig, MissingExtra

#: the extra (``pip install 'syncd[NAME]'``) each cloud driver's SDK comes with
EXTRAS = {"s3": "s3", "gcs": "gcs", "azure": "azure"}


def open_driver(cfg: DriverConfig) -> Driver:
    """Open the driver described by ``cfg``. Raises ``ConfigError`` for unusable settings
    (``MissingExtra`` when the provider's SDK is not installed: one line naming the extra)."""
    try:
        return _open(cfg)
    except ImportError as exc:
        if cfg.type not in EXTRAS:
            raise
        raise MissingExtra(EXTRAS[cfg.type], f"the {cfg.type} driver", exc) from None


def _what(cfg: DriverConfig) -> str:
    return f"integration {cfg.integration.name!r}" if cfg.integration else "integration"


def _open(cfg: DriverConfig) -> Driver:
    creds = cfg.integration.resolve() if cfg.integration else {}
    if cfg.type == "local":
        from providers.local import LocalDriver

        if not os.path.isabs(cfg.bucket):
            raise ConfigError(f"local driver needs an absolute folder path, got {cfg.bucket!r}")
        return LocalDriver(cfg.bucket, page_size=cfg.page_size)
    if cfg.type == "s3":
        from providers.credentials import aws_session
        from providers.s3 import S3Driver

        return S3Driver(
            cfg.bucket,
            endpoint=cfg.endpoint,
            region=cfg.region,
            storage_class=cfg.storage_class,
            page_size=cfg.page_size,
            session=aws_session(creds, region=cfg.region, label=cfg.bucket),
            versioned=cfg.versioned,
        )
    if cfg.type == "gcs":
        from providers.credentials import gcp_credentials
        from providers.gcs import SCOPES, GCSDriver

        return GCSDriver(
            cfg.bucket,
            endpoint=cfg.endpoint,
            credentials_file=creds.get("credentials_file"),
            project=creds.get("project"),
            storage_class=cfg.storage_class,
            page_size=cfg.page_size,
            credentials=gcp_credentials(creds, scopes=SCOPES, what=_what(cfg)),
        )
    if cfg.type == "azure":
        from providers.azure import AzureBlobDriver
        from providers.credentials import azure_credential

        if not creds:
            # no integration: the variables the Azure CLI and SDK samples use
            creds = {
                k: v
                for k, v in {
                    "connection_string": os.environ.get("AZURE_STORAGE_CONNECTION_STRING"),
                    "account_name": os.environ.get("AZURE_STORAGE_ACCOUNT"),
                    "account_key": os.environ.get("AZURE_STORAGE_KEY"),
                    "sas_token": os.environ.get("AZURE_STORAGE_SAS_TOKEN"),
                }.items()
                if v
            }
        return AzureBlobDriver(
            cfg.bucket,
            account_name=creds.get("account_name") or cfg.account,
            connection_string=creds.get("connection_string"),
            account_key=creds.get("account_key"),
            sas_token=creds.get("sas_token"),
            endpoint=cfg.endpoint,
            storage_class=cfg.storage_class,
            page_size=cfg.page_size,
            credential=azure_credential(creds, what=_what(cfg)),
        )
    if cfg.type == "bench":
        from providers.synthetic import SyntheticDriver

        return SyntheticDriver(cfg.bucket, page_size=cfg.page_size)
    raise ConfigError(f"unknown driver type {cfg.type!r}")
