"""SQS: S3 notifications (direct, or inside SNS) by long polling.

Each batch: receive up to 10 messages (long poll), parse each body, hand all events of the
well-formed messages to the sink in one call, then delete exactly those messages
(``DeleteMessageBatch``). A malformed body is left on the queue: it comes back after the
visibility timeout until the queue's redrive policy moves it to the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from providers import faults
from providers.config import Integration
from syncd.daemon.queues import (
    ConsumerStats,
    EventSink,
    Gate,
    in_pool,
    in_thread,
    poll,
    worker_pool,
)
from syncd.events.parse import EventFormatError, ObjectEvent, parse_text

log = logging.getLogger("syncd.daemon.queues")

#: concurrent long polls per queue
POLLERS = 4


def _region(url: str) -> str | None:
    """The region of an AWS queue URL (``https://sqs.eu-west-1.amazonaws.com/...``)."""
    host = urlsplit(url).hostname or ""
    parts = host.split(".")
    if len(parts) >= 4 and parts[0] == "sqs" and host.endswith(".amazonaws.com"):
        return parts[1]
    return None


class SqsConsumer:
    def __init__(
        self,
        name: str,
        url: str,
        *,
        integration: Integration | None = None,
        wait_seconds: int = 10,
    ) -> None:
        from botocore.config import Config

        from providers.credentials import boto3_session

        self.name, self.url, self.wait_seconds = name, url, max(0, min(20, wait_seconds))
        self.stats = ConsumerStats()
        self._pool = worker_pool(name, POLLERS + 1)
        creds = integration.resolve() if integration else {}
        # keys, profile, chain, or a role assumed with them (refreshed before it expires)
        session = boto3_session(creds, service="sqs", region=_region(url))
        region = _region(url) or session.region_name or "us-east-1"
        self._client: Any = session.client(
            "sqs",
            region_name=region,
            # the read timeout must outlast the long poll
            config=Config(read_timeout=self.wait_seconds + 30, retries={"max_attempts": 1}),
        )

    def _receive(self) -> list[dict[str, Any]]:
        resp = self._client.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=self.wait_seconds,
            AttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
        )
        return resp.get("Messages", [])

    def _delete(self, messages: list[dict[str, Any]]) -> int:
        faults.pause_point("event-ack")
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
        ]
        resp = self._client.delete_message_batch(QueueUrl=self.url, Entries=entries)
        for failed in resp.get("Failed", []):
            # it will be delivered again; applying it twice is harmless
            log.warning("%s: could not delete message: %s", self.name, failed.get("Message"))
        return len(resp.get("Successful", []))

    async def handle(self, messages: list[dict[str, Any]], sink: EventSink) -> None:
        """Parse, commit through ``sink``, delete what was committed. Raises if the sink does
        (then nothing is deleted)."""
        good: list[dict[str, Any]] = []
        events: list[ObjectEvent] = []
        for message in messages:
            try:
                parsed = parse_text(message.get("Body", ""))
            except EventFormatError as exc:
                self.stats.malformed += 1
                log.warning(
                    "%s: message %s is not an event payload (%s); left for the redrive policy",
                    self.name,
                    message.get("MessageId"),
                    exc,
                )
                continue
            good.append(message)
            events += parsed.events
        if events:
            await sink(events, source=self.name)
            self.stats.delivered += len(events)
        if good:
            self.stats.acknowledged += await in_pool(self._pool, self._delete, good)

    async def run(self, sink: EventSink, stop: asyncio.Event, *, gate: Gate | None = None) -> None:
        # several receives in flight: one receive returns at most 10 messages and a round trip
        # costs tens of milliseconds, so one poller caps a busy queue's throughput
        try:
            await asyncio.gather(*(self._poll(sink, stop, gate) for _ in range(POLLERS)))
        finally:
            self._pool.shutdown(wait=False)

    async def _poll(self, sink: EventSink, stop: asyncio.Event, gate: Gate | None) -> None:
        await poll(
            self.name,
            self.stats,
            stop,
            # the long poll on a daemon thread: a shutdown cancels it instead of waiting for it
            lambda: in_thread(self.name, self._receive),
            lambda messages: self.handle(messages, sink),
            _sent_at,
            gate=gate,
        )


def _sent_at(message: dict[str, Any]) -> float | None:
    sent = message.get("Attributes", {}).get("SentTimestamp")
    return int(sent) / 1000 if sent is not None else None
