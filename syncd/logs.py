"""Logging for the CLI and the daemon: levels, one format, and no secret in any line.

Verbosity (``-q``/``-v``/``-vv``, accepted before or after the command):

* ``-q``: errors only;
* default: warnings (the daemon: syncd's info lines too, one per run and per event batch);
* ``-v``: syncd's info lines (runs, event batches, requests);
* ``-vv`` (or ``--debug``): syncd's debug lines **and** the SDKs' own debug output (boto3,
  azure-core, google-auth, urllib3...), which prints request headers and URLs.

Every record, from every logger, goes through one handler whose formatter masks secrets
(:func:`providers.redact.redact`: registered secret values, ``Authorization`` and security
token headers, SAS signatures, connection-string keys, key files), tracebacks included. The
values of the usual credential variables are registered at setup, so SDK lines that print a
credential read from the environment are masked too.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from providers.redact import redact, register

#: the SDKs' loggers: silent below WARNING unless -vv asks for their debug output
SDK_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "azure", "google", "grpc")
#: credential variables whose values are masked wherever they appear
SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CLIENT_SECRET",
    "SYNCD_API_TOKEN",
)


class RedactingFormatter(logging.Formatter):
    """Formats as usual (text or JSON), then masks secrets in the whole output."""

    def __init__(self, fmt: str = "text") -> None:
        super().__init__("syncd: %(levelname)s: %(name)s: %(message)s")
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        if not self.json:
            return redact(super().format(record))
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, ensure_ascii=False))


def setup(verbosity: int = 0, fmt: str = "text", *, daemon: bool = False) -> None:
    """Configure the root logger for one CLI invocation. ``verbosity``: -1 quiet, 0 default,
    1 info, 2 debug with the SDKs' debug output. ``daemon``: info by default."""
    for name in SECRET_VARIABLES:
        register(os.environ.get(name))
        for part in (os.environ.get(name) or "").split(";"):  # connection strings
            key, _, value = part.partition("=")
            if key.strip().lower() in ("accountkey", "sharedaccesssignature"):
                register(value)
    if daemon:
        verbosity = max(verbosity, 1) if verbosity >= 0 else verbosity
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    sdk_level = logging.DEBUG if verbosity >= 2 else max(level, logging.WARNING)
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(sdk_level)
    # aiohttp's own access log would print request lines twice (the server logs its own)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
