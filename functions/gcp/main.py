"""Google Cloud Functions (2nd gen) handler: GCS object events into syncd.

Entry point ``on_object_event``, a CloudEvent function for Eventarc triggers on
``google.cloud.storage.object.v1.finalized`` and ``...deleted`` (``archived`` and
``metadataUpdated`` are understood too). A malformed event is logged and acknowledged
(retrying cannot fix it), as is one naming a key no catalog can hold (a NUL byte, over 1,024
bytes); a delivery failure raises so that Eventarc retries the event: syncd unreachable, or
with ``SYNCD_DB`` a catalog that is locked, missing, empty or not a catalog (it is opened with
``create=False``: the handler never creates one).

Environment: ``SYNCD_API_URL`` and ``SYNCD_API_TOKEN``, or ``SYNCD_DB``. ``LOG_LEVEL``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import functions_framework

from syncd.events.delivery import deliver
from syncd.events.parse import EventFormatError, parse

log = logging.getLogger("syncd.gcf")
log.setLevel(os.environ.get("LOG_LEVEL", "INFO"))


def _payload(cloud_event: Any) -> dict[str, Any]:
    """The structured-mode CloudEvent, whatever mode it arrived in."""
    return {**cloud_event.get_attributes(), "data": cloud_event.get_data()}


@functions_framework.cloud_event
def on_object_event(cloud_event: Any) -> None:
    payload = _payload(cloud_event)
    try:
        parsed = parse(payload)
    except EventFormatError as exc:
        log.error("event %s rejected: %s", payload.get("id"), exc)
        return
    result = deliver(payload, parsed)
    log.info("event %s: %s", payload.get("id"), result)
