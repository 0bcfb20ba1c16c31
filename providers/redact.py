"""Secrets that must never be printed: the values themselves, and the shapes they take in logs.

:func:`providers.config.resolve_secret` registers every secret it reads; the CLI's log handler
(:mod:`syncd.logs`) and its error lines pass all text through :func:`redact`. Patterns cover
what the SDKs print at debug level (``Authorization`` and security-token headers, presigned and
SAS query parameters, connection-string keys, key files), so a secret is hidden even if it was
never registered (read by an SDK from its own chain).
"""

from __future__ import annotations

import re
import threading

MASK = "***"
_lock = threading.Lock()
_values: set[str] = set()

#: header-like ``name: value`` / ``'name': b'value'`` pairs whose value is a credential
_HEADER = re.compile(
    r"""(?ix)
    (\b(?:authorization|x-amz-security-token|x-goog-iam-authorization-token|x-ms-copy-source-authorization)
       ['"]?\s*[:=]\s*b?['"]?)
    [^'"\r\n]+
    """
)
#: URL query parameters that carry a signature or a token
_QUERY = re.compile(
    r"(?i)([?&](?:x-amz-security-token|x-amz-signature|x-amz-credential|signature|sig|"
    r"awsaccesskeyid|x-goog-signature|x-goog-credential|access_token)=)[^&\s'\"]+"
)
#: ``key=value;`` pairs of connection strings
_CONNECTION = re.compile(r"(?i)\b(accountkey|sharedaccesssignature|sharedaccesskey)=[^;'\"\s]+")
_SECRET_NAMES = (
    r"(?:private_key|secret_access_key|aws_secret_access_key|session_token|aws_session_token|"
    r"access_token|refresh_token|id_token|assertion|client_secret|account_key|sas_token|"
    r"connection_string|password|api_token)"
)
#: JSON or Python-repr fields (``"password": "..."``, ``'password': '...'``) and assignments
#: (``password=...``) whose value is a secret. An unquoted ``password: word`` is not one: that
#: is how syncd's own messages name a key (``integrations.a.password: unknown key``), and the
#: word after it is prose, not a secret.
_FIELD = re.compile(
    rf"""(?ix)
    ((?:["']{_SECRET_NAMES}["']\s*[:=]|\b{_SECRET_NAMES}\b\s*=)\s*b?["']?)
    [^"'\s,}}&]+
    """
)
_PEM = re.compile(
    r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
)


def register(value: str | None) -> None:
    """Remember a secret value so that :func:`redact` hides it wherever it appears."""
    if value and len(value) >= 6:  # shorter strings would mask ordinary words
        with _lock:
            _values.add(value)


def redact(text: str) -> str:
    """``text`` with every registered secret and every credential-shaped value masked."""
    with _lock:
        values = sorted(_values, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    text = _PEM.sub(lambda m: f"-----BEGIN {m.group(1)}PRIVATE KEY-----{MASK}", text)
    text = _HEADER.sub(lambda m: m.group(1) + MASK, text)
    text = _QUERY.sub(lambda m: m.group(1) + MASK, text)
    text = _CONNECTION.sub(lambda m: f"{m.group(1)}={MASK}", text)
    return _FIELD.sub(lambda m: m.group(1) + MASK, text)
