"""How serverless handlers hand bucket events to syncd.

Two ways, chosen by environment variables:

* ``SYNCD_API_URL`` (+ ``SYNCD_API_TOKEN``): POST the provider's payload, unchanged, to
  ``{SYNCD_API_URL}/api/v1/events`` of a ``syncd serve`` instance; it parses and applies.
* ``SYNCD_DB``: parse and apply straight into that catalog file (local use, tests).

Either way the payload is validated here first, so a malformed record is reported by the
handler without a network round trip. Only the standard library and syncd itself are used:
a handler imports no cloud SDK through this module.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from syncd.events.parse import EventFormatError, Parsed, parse

TIMEOUT = 30


class DeliveryError(RuntimeError):
    """syncd could not be reached or refused the events; the caller should retry later."""


def deliver(payload: Any, parsed: Parsed | None = None) -> dict[str, Any]:
    """Deliver one provider payload. Raises ``EventFormatError`` if it is malformed and
    ``DeliveryError`` if it could not be applied."""
    parsed = parsed if parsed is not None else parse(payload)
    url = os.environ.get("SYNCD_API_URL")
    if url:
        return _post(url, payload)
    db = os.environ.get("SYNCD_DB")
    if db:
        from syncd.errors import UsageError
        from syncd.events.apply import apply_events
        from syncd.store.catalog import Catalog

        try:
            # never create one: a mistyped SYNCD_DB would swallow every event as unrouted
            catalog = Catalog.open(db, create=False)
        except UsageError as exc:
            raise DeliveryError(f"SYNCD_DB: {exc}") from None
        try:
            return {
                "applied": apply_events(catalog, parsed.events).as_dict(),
                "skipped": parsed.skipped,
            }
        finally:
            catalog.close()
    raise DeliveryError(
        "set SYNCD_API_URL (and SYNCD_API_TOKEN) or SYNCD_DB to say where events go"
    )


def _post(url: str, payload: Any) -> dict[str, Any]:
    token = os.environ.get("SYNCD_API_TOKEN", "")
    request = urllib.request.Request(
        url.rstrip("/") + "/api/v1/events",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace")
        if exc.code == 400:
            raise EventFormatError(f"syncd rejected the payload: {detail}") from None
        raise DeliveryError(f"syncd answered HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DeliveryError(f"cannot reach syncd at {url}: {exc}") from None
