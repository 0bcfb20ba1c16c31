"""Azure Functions handler (Python v2 programming model): Blob events into syncd.

Function ``syncd_blob_events``, an Event Grid trigger for ``Microsoft.Storage.BlobCreated``
and ``Microsoft.Storage.BlobDeleted`` (the subscription in ``infra/azure`` filters to those).
The Event Grid trigger answers subscription validation itself. A malformed event is logged and
completed (retrying cannot fix it), as is one naming a key no catalog can hold (a NUL byte,
over 1,024 characters); a delivery failure raises so Event Grid retries, then dead-letters:
syncd unreachable, or with ``SYNCD_DB`` a catalog that is locked, missing, empty or not a
catalog (it is opened with ``create=False``: the handler never creates one).

Environment (app settings): ``SYNCD_API_URL`` and ``SYNCD_API_TOKEN`` (a Key Vault
reference), or ``SYNCD_DB``. ``LOG_LEVEL``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import azure.functions as func

from syncd.events.delivery import deliver
from syncd.events.parse import EventFormatError, parse

log = logging.getLogger("syncd.azfunc")
log.setLevel(os.environ.get("LOG_LEVEL", "INFO"))

app = func.FunctionApp()


def event_payload(event: func.EventGridEvent) -> dict[str, Any]:
    """The Event Grid schema JSON of ``event``, as a webhook would have received it."""
    return {
        "id": event.id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.event_type,
        "eventTime": event.event_time.isoformat() if event.event_time else None,
        "dataVersion": event.data_version,
        "data": event.get_json(),
    }


@app.function_name("syncd_blob_events")
@app.event_grid_trigger(arg_name="event")
def on_blob_event(event: func.EventGridEvent) -> None:
    payload = event_payload(event)
    try:
        parsed = parse(payload)
    except EventFormatError as exc:
        log.error("event %s rejected: %s", event.id, exc)
        return
    result = deliver(payload, parsed)
    log.info("event %s: %s", event.id, result)
