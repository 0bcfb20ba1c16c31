"""Sinks: the change log sent as messages to ``[sinks.NAME]`` queues and topics.

Types: ``sqs`` (an SQS queue URL), ``sns`` (a topic ARN), ``azure-queue`` (an Azure Storage
Queue) and ``pubsub`` (a Google Pub/Sub topic). Each batch (:class:`~syncd.feed.delivery.Batch`)
is one message whose body is the JSON a webhook gets, with ``sink`` for ``webhook``:
``{"sink": NAME, "changes": [...], "next": CURSOR}``. The batch's id (the same when the batch is
sent again) travels as the message attribute ``batch-id`` (SQS and SNS ``MessageAttributes``,
a Pub/Sub attribute); Azure Queue messages have no attributes, so there it is the body's
``"id"``, and the body is base64-encoded (as Event Grid writes, and as the Azure Functions
queue trigger reads by default). A FIFO queue or topic (``.fifo``) gets the sink's name as
``MessageGroupId`` and the batch id as ``MessageDeduplicationId``: AWS then drops a copy sent
again within its five-minute window.

The loop is :class:`~syncd.feed.delivery.Deliverer` with kind ``sink``, so sinks keep the
webhooks' contracts: cursor order (the next batch is sent only after the service accepted the
one before), at least once (a batch sent again after a crash, a timeout or a stop has the same
id and changes: a receiver drops the duplicate by id), one worker at a time per sink,
retention keeps what a sink has not delivered. How a sending is taken:

* **accepted** (the SDK call returned): the next batch follows;
* **throttled, a 5xx, 408/429, a timeout, no connection, no credentials yet**: tried again
  with capped exponential backoff, forever; after ``fail_after`` seconds the sink shows as
  failing;
* **refused** (any other 4xx: no such queue, access denied, a message too large) and a batch
  over the service's message size limit (checked before sending: SQS and SNS 256 KiB, Azure
  Queue 64 KiB after base64, Pub/Sub 10 MB): the sink is paused until ``syncd sinks resume``
  or ``replay``, with an error naming ``batch`` when the batch was too large.

The SDK calls block: each runs on the sink's own worker thread, never on the event loop.
Credentials come from the sink's ``integration`` (read when the daemon starts; the values are
registered with the redactor) or the provider's standard chain; errors are one line, the
SDK's own text cut short, never a credential.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from providers.config import ConfigError
from providers.redact import register
from syncd.config import SinkConfig
from syncd.daemon.metrics import Metrics
from syncd.daemon.queues import one_line
from syncd.feed.delivery import Batch, Deliveries, Filters, Outcome, listing
from syncd.store.changes import ChangeSignal
from syncd.store.sql import Database

log = logging.getLogger("syncd.feed")

KIND = "sink"
#: the message attribute that carries the batch id (SQS, SNS, Pub/Sub)
ID_ATTRIBUTE = "batch-id"
#: the largest message each service takes, in bytes (Azure: of the base64 text)
LIMITS = {"sqs": 262_144, "sns": 262_144, "azure-queue": 65_536, "pubsub": 10_000_000}
SERVICES = {"sqs": "SQS", "sns": "SNS", "azure-queue": "Azure Queue", "pubsub": "Pub/Sub"}
#: 4xx statuses and error codes that mean "not now" rather than "no"
RETRY_STATUSES = frozenset({408, 429})
THROTTLED = frozenset(
    {"Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
     "TooManyRequestsException", "KMSThrottlingException", "RequestLimitExceeded"}
)  # fmt: skip


def sink_rows(db: Database, configured: Mapping[str, SinkConfig]) -> list[dict[str, Any]]:
    """Each sink's row for ``syncd sinks ls --json`` and ``GET /api/v1/sinks``: name, type,
    target (a queue URL, a topic ARN or name: never a credential), and the delivery state of
    :func:`syncd.feed.delivery.listing`. The integration a sink sends with is not named."""
    rows = []
    for row in listing(db, {n: s.target for n, s in configured.items()}, KIND):
        target = row.pop("url")
        sink = configured.get(row["name"])
        rows.append({"name": row.pop("name"), "type": sink.type if sink else None,
                     "target": target, **row})  # fmt: skip
    return rows


def body(name: str, batch: Batch, *, with_id: bool = False) -> bytes:
    """The message body: a webhook's JSON with ``sink``; ``with_id`` adds the batch id (for a
    service whose messages carry no attributes)."""
    message: dict[str, Any] = {"sink": name}
    if with_id:
        message["id"] = batch.id
    message |= {"changes": [c.public() for c in batch.changes], "next": batch.end}
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()


def _status(exc: BaseException) -> int | None:
    """The HTTP status an SDK error carries (botocore, azure-core, google-api-core)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status else None
    status = getattr(exc, "status_code", None)  # azure-core HttpResponseError
    if isinstance(status, int):
        return status
    code = getattr(exc, "code", None)  # google-api-core GoogleAPICallError
    return code if isinstance(code, int) else None


def outcome_of(exc: BaseException, where: str) -> Outcome:
    """What an SDK error means for the batch: a refusal (a 4xx other than a throttle: retrying
    cannot help, so the sink pauses) or a failure to try again (anything else)."""
    error = f"{where}: {one_line(exc)}"
    status = _status(exc)
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    refused = (
        status is not None
        and 400 <= status < 500
        and status not in RETRY_STATUSES
        and code not in THROTTLED
    )
    return Outcome(False, retry=not refused, error=error)


class SinkSender:
    """Sends a batch to one sink as one message: the transport for :class:`Deliverer`.

    Subclasses build the client (:meth:`_open`, blocking: credentials are read there), the
    message and its size (:meth:`_message`) and send it (:meth:`_send`, blocking)."""

    def __init__(self, config: SinkConfig) -> None:
        """Reads the integration's credentials and builds the SDK client (``ConfigError`` if
        a reference cannot be read). Blocking: call it off the loop."""
        self.config = config
        self.limit = LIMITS[config.type]
        self.where = f"{config.type} {config.target}"
        creds = config.integration.resolve() if config.integration else {}
        for value in creds.values():
            register(value)  # also the plain ones: a profile name is harmless, a key is not
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"syncd-sink-{config.name}"
        )
        self._open(creds)

    def _open(self, creds: Mapping[str, str]) -> None:
        raise NotImplementedError

    def _message(self, batch: Batch) -> tuple[Any, int]:
        """The message for ``batch`` and its size as the service counts it."""
        raise NotImplementedError

    def _send(self, message: Any, batch: Batch) -> None:
        raise NotImplementedError

    def too_large(self, batch: Batch, size: int) -> Outcome:
        service = SERVICES[self.config.type]
        return Outcome(
            False,
            retry=False,
            error=(
                f"a batch of {len(batch.changes)} change(s) makes a message of {size:,} bytes, "
                f"over {service}'s limit of {self.limit:,}: lower batch in [sinks."
                f"{self.config.name}] (now {self.config.batch}), then `syncd sinks resume "
                f"{self.config.name}`"
            ),
        )

    async def __call__(self, batch: Batch) -> Outcome:
        message, size = self._message(batch)
        if size > self.limit:
            return self.too_large(batch, size)
        loop = asyncio.get_running_loop()
        sending = loop.run_in_executor(self._pool, self._send, message, batch)
        try:
            # the SDK's own timeouts end the call; this bounds what they miss (a DNS lookup).
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a stop that
            # comes as the call returns, and the daemon's shutdown hangs
            async with asyncio.timeout(self.config.timeout * 2 + 5):
                await asyncio.shield(sending)
        except TimeoutError:
            return Outcome(False, error=f"{self.where}: no answer in {self.config.timeout:g}s")
        except Exception as exc:
            return outcome_of(exc, self.where)
        return Outcome(True)

    def close(self) -> None:
        """Let the worker thread go (a call in flight ends by its own timeout)."""
        self._pool.shutdown(wait=False)


def _boto_session(creds: Mapping[str, str], service: str, region: str | None) -> Any:
    """Keys, profile, chain, or a role assumed with them: the drivers' and consumers' rules."""
    from providers.credentials import boto3_session

    return boto3_session(creds, service=service, region=region)


def _boto_config(timeout: float) -> Any:
    from botocore.config import Config

    # no SDK retries: the deliverer retries, with backoff, and counts each failure
    return Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1})


def _string_attribute(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def _aws_size(data: bytes, batch: Batch) -> int:
    """SQS and SNS count the body and every attribute's name, type and value."""
    return len(data) + len(ID_ATTRIBUTE) + len("String") + len(batch.id)


class _AwsSender(SinkSender):
    """What SQS and SNS share: the message (the JSON body, its size as AWS counts it with
    the attribute) and, on a FIFO queue or topic, the group and deduplication ids."""

    _fifo = False

    def _message(self, batch: Batch) -> tuple[Any, int]:
        data = body(self.config.name, batch)
        return data, _aws_size(data, batch)

    def _fifo_args(self, batch: Batch) -> dict[str, str]:
        if not self._fifo:
            return {}
        return {"MessageGroupId": self.config.name, "MessageDeduplicationId": batch.id}


class SqsSender(_AwsSender):
    def _open(self, creds: Mapping[str, str]) -> None:
        from syncd.daemon.queues.sqs import _region

        assert self.config.url
        session = _boto_session(creds, "sqs", _region(self.config.url))
        region = _region(self.config.url) or session.region_name or "us-east-1"
        self._client = session.client(
            "sqs", region_name=region, config=_boto_config(self.config.timeout)
        )
        self._fifo = self.config.url.endswith(".fifo")

    def _send(self, message: Any, batch: Batch) -> None:
        self._client.send_message(
            QueueUrl=self.config.url,
            MessageBody=message.decode(),
            MessageAttributes={ID_ATTRIBUTE: _string_attribute(batch.id)},
            **self._fifo_args(batch),
        )


class SnsSender(_AwsSender):
    def _open(self, creds: Mapping[str, str]) -> None:
        assert self.config.topic_arn
        region = self.config.topic_arn.split(":")[3]
        session = _boto_session(creds, "sns", region)
        self._client = session.client(
            "sns", region_name=region, config=_boto_config(self.config.timeout)
        )
        self._fifo = self.config.topic_arn.endswith(".fifo")

    def _send(self, message: Any, batch: Batch) -> None:
        self._client.publish(
            TopicArn=self.config.topic_arn,
            Message=message.decode(),
            MessageAttributes={ID_ATTRIBUTE: _string_attribute(batch.id)},
            **self._fifo_args(batch),
        )


class AzureQueueSender(SinkSender):
    def _open(self, creds: Mapping[str, str]) -> None:
        # the queue consumers' client: the same credential rules (integration, account,
        # AZURE_STORAGE_CONNECTION_STRING, DefaultAzureCredential); it reads creds itself
        from syncd.daemon.queues.azure_queue import _clients

        assert self.config.queue
        self._client, _ = _clients(self.config.queue, self.config.account, self.config.integration)

    def _message(self, batch: Batch) -> tuple[Any, int]:
        text = base64.b64encode(body(self.config.name, batch, with_id=True)).decode()
        return text, len(text)

    def _send(self, message: Any, batch: Batch) -> None:
        self._client.send_message(message, timeout=max(1, int(self.config.timeout)))

    def close(self) -> None:
        super().close()
        with contextlib.suppress(Exception):
            self._client.close()


class PubSubSender(SinkSender):
    """No Pub/Sub emulator installs here: :meth:`_message` (a real ``PubsubMessage``) and
    :func:`outcome_of` are what the tests drive. Against the gcloud emulator, export
    ``PUBSUB_EMULATOR_HOST``: the client library honours it by itself."""

    def _open(self, creds: Mapping[str, str]) -> None:
        from google.cloud import pubsub_v1

        # one message per publish call, sent at once: the deliverer batches, not the client
        settings = pubsub_v1.types.BatchSettings(max_messages=1)
        if creds.get("impersonate"):
            from providers.credentials import gcp_credentials
            from syncd.daemon.queues.pubsub import PUBSUB_SCOPES

            impersonated = gcp_credentials(creds, scopes=PUBSUB_SCOPES, what=self.where)
            self._client = pubsub_v1.PublisherClient(
                credentials=impersonated, batch_settings=settings
            )
        elif creds.get("credentials_file"):
            self._client = pubsub_v1.PublisherClient.from_service_account_file(
                creds["credentials_file"], batch_settings=settings
            )
        else:
            self._client = pubsub_v1.PublisherClient(batch_settings=settings)

    def _message(self, batch: Batch) -> tuple[Any, int]:
        from google.pubsub_v1.types import PubsubMessage

        message = PubsubMessage(
            data=body(self.config.name, batch), attributes={ID_ATTRIBUTE: batch.id}
        )
        return message, PubsubMessage.pb(message).ByteSize()

    def _send(self, message: Any, batch: Batch) -> None:
        future = self._client.publish(
            self.config.topic, bytes(message.data), **dict(message.attributes)
        )
        future.result(timeout=self.config.timeout)

    def close(self) -> None:
        super().close()
        with contextlib.suppress(Exception):
            self._client.stop()


SENDERS: dict[str, Callable[[SinkConfig], SinkSender]] = {
    "sqs": SqsSender,
    "sns": SnsSender,
    "azure-queue": AzureQueueSender,
    "pubsub": PubSubSender,
}


def open_sender(config: SinkConfig) -> SinkSender:
    """The sender of one sink; ``ConfigError`` (naming the sink) if it cannot start: a
    credential reference that cannot be read, an SDK that finds no credentials. Blocking:
    call it off the loop."""
    try:
        return SENDERS[config.type](config)
    except ConfigError as exc:
        raise ConfigError(f"sink {config.name!r}: {exc}") from None
    except Exception as exc:  # the SDK found no credentials, a profile that does not exist...
        raise ConfigError(
            f"sink {config.name!r}: cannot open its client: {one_line(exc)}"
        ) from None


class SinkFeed:
    """Every configured sink, delivered by a task of its own until :meth:`stop`."""

    def __init__(
        self,
        sinks: Mapping[str, SinkConfig],
        catalog: Any,
        signal: ChangeSignal,
        metrics: Metrics,
        owner: str,
    ) -> None:
        self.sinks = sinks
        self.catalog = catalog
        self.signal = signal
        self.owner = owner
        self._senders: list[SinkSender] = []
        self._running = Deliveries(
            KIND,
            catalog,
            signal,
            owner,
            (metrics.sink_lag, metrics.sink_failures, metrics.sink_delivered),
        )

    async def start(self) -> None:
        """Open every sink's client (``ConfigError`` naming the first that cannot start: its
        credentials cannot be read), then start the delivery tasks."""
        if not self.sinks:
            return
        senders: dict[str, SinkSender] = {}
        try:
            for name, sink in self.sinks.items():
                senders[name] = await asyncio.to_thread(open_sender, sink)
        except ConfigError:
            for sender in senders.values():
                sender.close()
            raise
        self._senders = list(senders.values())
        for name, sink in self.sinks.items():
            self._running.start(
                name,
                senders[name],
                filters=Filters(sink.datasets, sink.kinds),
                batch=sink.batch,
                fail_after=sink.fail_after,
            )
        log.info("delivering the change feed to %d sink(s)", len(self._running))

    async def stop(self) -> None:
        """Stop every delivery (see :meth:`~syncd.feed.delivery.Deliveries.stop`), then
        close the clients."""
        await self._running.stop()
        for sender in self._senders:
            sender.close()
