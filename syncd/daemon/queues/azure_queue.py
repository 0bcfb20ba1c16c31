"""Azure Storage Queue: Event Grid blob events delivered to a queue.

A message body is Event Grid JSON (one event or an array), plain or base64-encoded (Event Grid
writes base64; other writers plain JSON): both are accepted. Each batch's events go to the sink
in one call; each message is deleted after the commit. A message that is not an event payload
stays; once it has been dequeued more than ``MAX_DEQUEUE`` times it is copied to
``<queue>-poison`` and deleted, as Azure Functions do.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
from typing import Any

from providers import faults
from providers.config import ConfigError, Integration
from syncd.daemon.queues import (
    ConsumerStats,
    EventSink,
    Gate,
    in_pool,
    one_line,
    poll,
    worker_pool,
)
from syncd.events.parse import EventFormatError, ObjectEvent, parse_text

log = logging.getLogger("syncd.daemon.queues")

MAX_DEQUEUE = 5
#: seconds a received message stays hidden from other receivers while it is handled
VISIBILITY = 30


def decode_body(content: str | bytes) -> str | bytes:
    """The JSON text of a message: as is if it is JSON, else base64-decoded."""
    text = content.decode("utf-8", errors="replace") if isinstance(content, bytes) else content
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        return text
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return text  # neither: the parser reports it as malformed


def _clients(queue: str, account: str | None, integration: Integration | None) -> tuple[Any, Any]:
    from azure.storage.queue import QueueClient

    creds = integration.resolve() if integration else {}
    conn = creds.get("connection_string") or (
        None if integration else os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    )
    opts: dict[str, Any] = {"retry_total": 0}
    if conn:
        return (
            QueueClient.from_connection_string(conn, queue, **opts),
            QueueClient.from_connection_string(conn, f"{queue}-poison", **opts),
        )
    name = creds.get("account_name") or account or os.environ.get("AZURE_STORAGE_ACCOUNT")
    if not name:
        raise ConfigError(
            f"azure queue {queue!r}: no storage account: set account, an integration, or "
            "AZURE_STORAGE_CONNECTION_STRING"
        )
    url = f"https://{name}.queue.core.windows.net"
    credential: Any
    if creds.get("account_key"):
        credential = {"account_name": name, "account_key": creds["account_key"]}
    elif creds.get("sas_token"):
        credential = creds["sas_token"]
    elif creds.get("tenant_id"):
        # a service principal, built as for the blob driver
        from providers.credentials import azure_credential

        what = f"integration {integration.name!r}" if integration else "integration"
        credential = azure_credential(creds, what=what)
    else:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return (
        QueueClient(url, queue, credential=credential, **opts),
        QueueClient(url, f"{queue}-poison", credential=credential, **opts),
    )


class AzureQueueConsumer:
    def __init__(
        self,
        name: str,
        queue: str,
        *,
        account: str | None = None,
        integration: Integration | None = None,
        wait_seconds: int = 10,
        visibility_timeout: int | None = None,
    ) -> None:
        self.name, self.queue = name, queue
        # Storage Queues have no long poll: an empty receive waits this long before the next
        self.idle_seconds = max(0.2, min(float(wait_seconds), 1.0))
        self.stats = ConsumerStats()
        self._pool = worker_pool(name, 2)
        self._queue, self._poison = _clients(queue, account, integration)
        self._poison_ready = False
        #: seconds a received message stays hidden (a redelivery comes after this)
        self.visibility = visibility_timeout or VISIBILITY

    def _receive(self) -> list[Any]:
        return list(
            self._queue.receive_messages(
                messages_per_page=32, max_messages=32, visibility_timeout=self.visibility
            )
        )

    def _delete(self, message: Any) -> None:
        faults.pause_point("event-ack")
        self._queue.delete_message(message.id, message.pop_receipt)

    def poison_messages(self, limit: int = 32) -> list[str]:
        """The bodies waiting in ``<queue>-poison`` (for operators and tests)."""
        return [m.content for m in self._poison.peek_messages(max_messages=limit)]

    def _to_poison(self, message: Any) -> None:
        from azure.core.exceptions import ResourceExistsError

        if not self._poison_ready:
            with contextlib.suppress(ResourceExistsError):
                self._poison.create_queue()
            self._poison_ready = True
        self._poison.send_message(message.content)
        self._delete(message)

    async def handle(self, messages: list[Any], sink: EventSink) -> None:
        """Parse, commit through ``sink``, delete what was committed, move poison aside.
        Raises if the sink does (then nothing is deleted)."""
        good: list[Any] = []
        events: list[ObjectEvent] = []
        for message in messages:
            try:
                parsed = parse_text(decode_body(message.content))
            except EventFormatError as exc:
                self.stats.malformed += 1
                if message.dequeue_count > MAX_DEQUEUE:
                    await in_pool(self._pool, self._to_poison, message)
                    self.stats.poisoned += 1
                    log.warning(
                        "%s: message %s moved to %s-poison after %d deliveries (%s)",
                        self.name,
                        message.id,
                        self.queue,
                        message.dequeue_count,
                        exc,
                    )
                else:
                    log.warning(
                        "%s: message %s is not an event payload (%s; delivery %d)",
                        self.name,
                        message.id,
                        exc,
                        message.dequeue_count,
                    )
                continue
            good.append(message)
            events += parsed.events
        if events:
            await sink(events, source=self.name)
            self.stats.delivered += len(events)
        for message in good:
            # one failed delete must not keep the batch's other messages or back the whole
            # consumer off: its events are committed, and the message coming back after its
            # visibility timeout is applied again harmlessly (at least once)
            try:
                await in_pool(self._pool, self._delete, message)
            except Exception as exc:
                self.stats.errors += 1
                log.warning(
                    "%s: delete of a committed message failed: %s", self.name, one_line(exc)
                )
                continue
            self.stats.acknowledged += 1

    async def run(self, sink: EventSink, stop: asyncio.Event, *, gate: Gate | None = None) -> None:
        try:
            await self._poll(sink, stop, gate)
        finally:
            self._pool.shutdown(wait=False)

    async def _poll(self, sink: EventSink, stop: asyncio.Event, gate: Gate | None) -> None:
        await poll(
            self.name,
            self.stats,
            stop,
            lambda: in_pool(self._pool, self._receive),
            lambda messages: self.handle(messages, sink),
            lambda m: m.inserted_on.timestamp() if m.inserted_on is not None else None,
            idle=self.idle_seconds,
            gate=gate,
        )
