"""Google Pub/Sub: GCS notifications by streaming pull.

The client library pulls on its own threads and calls back per message; the callback hands
the message to the daemon's loop, which gathers what arrived into a batch, commits its events
through the sink and then acks every message of the batch (nacks them if the commit failed, so
Pub/Sub redelivers). A message that is not a GCS notification is nacked and counted: a
dead-letter policy on the subscription bounds its redeliveries (max_delivery_attempts); acking
it would lose it without trace.

No Pub/Sub emulator installs here, so :meth:`PubSubConsumer.handle` is the seam the tests drive
with real ``pubsub_v1`` message objects. Against the gcloud emulator: start it with
``gcloud beta emulators pubsub start``, export ``PUBSUB_EMULATOR_HOST=localhost:8085``, create
the topic, the GCS-style notifications and the subscription, and run ``syncd run`` with
``[queues.N] type = "pubsub"``: the client library honours the variable by itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any

from providers.config import Integration
from syncd.daemon.queues import ConsumerStats, EventSink, Gate, note_lag
from syncd.events.parse import EventFormatError, ObjectEvent, parse

log = logging.getLogger("syncd.daemon.queues")

#: what an impersonated service account's token is asked for
PUBSUB_SCOPES = ("https://www.googleapis.com/auth/pubsub",)
#: messages held at once (flow control) and gathered into one batch
MAX_MESSAGES = 500


def _payload(message: Any) -> dict[str, Any]:
    """A pulled message in the shape the parser reads (a bare Pub/Sub message)."""
    return {
        "attributes": dict(message.attributes),
        "data": base64.b64encode(message.data).decode(),
        "messageId": message.message_id,
    }


class PubSubConsumer:
    def __init__(
        self, name: str, subscription: str, *, integration: Integration | None = None
    ) -> None:
        self.name, self.subscription = name, subscription
        self.stats = ConsumerStats()
        self.integration = integration

    def _client(self) -> Any:
        from google.cloud import pubsub_v1

        creds = self.integration.resolve() if self.integration else {}
        if creds.get("impersonate"):
            from providers.credentials import gcp_credentials

            what = f"integration {self.integration.name!r}" if self.integration else ""
            impersonated = gcp_credentials(creds, scopes=PUBSUB_SCOPES, what=what)
            return pubsub_v1.SubscriberClient(credentials=impersonated)
        if creds.get("credentials_file"):
            return pubsub_v1.SubscriberClient.from_service_account_file(creds["credentials_file"])
        return pubsub_v1.SubscriberClient()

    async def handle(self, messages: list[Any], sink: EventSink) -> None:
        """Parse ``messages`` (``pubsub_v1.subscriber.message.Message``), commit their events
        through ``sink``, then ack them; nack them all if the commit fails (and re-raise), nack
        the malformed ones."""
        good: list[Any] = []
        events: list[ObjectEvent] = []
        for message in messages:
            try:
                parsed = parse(_payload(message))
            except (EventFormatError, ValueError, json.JSONDecodeError) as exc:
                self.stats.malformed += 1
                log.warning(
                    "%s: message %s is not a GCS notification (%s); nacked",
                    self.name,
                    message.message_id,
                    exc,
                )
                message.nack()
                continue
            good.append(message)
            events += parsed.events
        try:
            if events:
                await sink(events, source=self.name)
                self.stats.delivered += len(events)
        except BaseException:
            for message in good:
                message.nack()
            raise
        for message in good:
            message.ack()
            self.stats.acknowledged += 1

    async def run(self, sink: EventSink, stop: asyncio.Event, *, gate: Gate | None = None) -> None:
        from google.cloud import pubsub_v1

        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        client = self._client()
        future = client.subscribe(
            self.subscription,
            callback=lambda m: loop.call_soon_threadsafe(inbox.put_nowait, m),
            flow_control=pubsub_v1.types.FlowControl(max_messages=MAX_MESSAGES),
        )
        try:
            while not stop.is_set():
                waiter = asyncio.ensure_future(inbox.get())
                stopper = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if waiter not in done:
                    waiter.cancel()
                    break
                batch = [waiter.result()]
                while not inbox.empty() and len(batch) < MAX_MESSAGES:
                    batch.append(inbox.get_nowait())
                if gate is not None and not await gate():
                    # held, not nacked, while the catalog is away (the client extends their
                    # deadlines); nacked below on the way out
                    for message in batch:
                        message.nack()
                    break
                started = time.monotonic()
                self.stats.received += len(batch)
                note_lag(self.stats, [m.publish_time.timestamp() for m in batch])
                try:
                    await self.handle(batch, sink)
                except Exception as exc:
                    self.stats.errors += 1
                    log.error("%s: %s (messages nacked for redelivery)", self.name, exc)
                    continue
                log.info(
                    "%s: %d message(s) in %.3fs", self.name, len(batch), time.monotonic() - started
                )
        finally:
            future.cancel()  # stops pulling; held messages are redelivered after their deadline
            while not inbox.empty():
                inbox.get_nowait().nack()
            client.close()
