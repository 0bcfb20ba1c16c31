"""AWS Lambda handler: S3 bucket events into syncd.

Deploy with handler ``functions.aws_lambda.handler``. It accepts:

* an SQS batch (``Records[].eventSource == "aws:sqs"``) whose bodies are S3 notifications,
  SNS envelopes of them, or EventBridge events. Each message is validated on its own; the
  valid ones are delivered together and the response lists, in ``batchItemFailures``, exactly
  the messages that failed, so SQS retries (and eventually dead-letters) only those. Enable
  ``ReportBatchItemFailures`` on the event source mapping. This path never raises: when the
  delivery itself fails (syncd unreachable, the token unreadable, the catalog locked, missing,
  empty or not a catalog), every valid message is listed as failed. SNS subscription messages
  in the queue are acknowledged and skipped; see :func:`handler` for records without an id.
* a direct S3 notification (``Records[].eventSource == "aws:s3"``) or an EventBridge event: any
  failure raises, so Lambda's own retry applies.

Environment: ``SYNCD_API_URL`` and the API token (deliver to ``syncd serve``), or ``SYNCD_DB``
(apply into an existing catalog file: it is opened with ``create=False``, never created). The
token is read at cold start from the Secrets Manager secret
named by ``SYNCD_API_TOKEN_SECRET_ARN`` (what ``infra/aws/template.yaml`` sets up), so it never
sits in the function's configuration; ``SYNCD_API_TOKEN`` itself also works. ``LOG_LEVEL``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from syncd.events.delivery import deliver
from syncd.events.parse import EventFormatError, Parsed, parse, parse_record

log = logging.getLogger("syncd.lambda")
log.setLevel(os.environ.get("LOG_LEVEL", "INFO"))


def _load_token() -> None:
    """Fetch the API token from Secrets Manager once per cold start, if so configured."""
    arn = os.environ.get("SYNCD_API_TOKEN_SECRET_ARN")
    if not arn or os.environ.get("SYNCD_API_TOKEN"):
        return
    import boto3  # in the Lambda runtime; imported only when this path is configured

    secret = boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
    os.environ["SYNCD_API_TOKEN"] = secret.strip()


def _is_sqs_batch(event: Any) -> bool:
    records = event.get("Records") if isinstance(event, dict) else None
    # a "Records" that is no list (a number, a string) is no batch: the parser rejects it
    return (
        isinstance(records, list)
        and bool(records)
        and all(isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records)
    )


def _message_id(record: dict[str, Any]) -> str | None:
    """The record's SQS message id; None when it has none (SQS always sets one)."""
    value = record.get("messageId")
    return value if isinstance(value, str) and value else None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Handle one invocation (see the module docstring).

    An SQS batch never raises: whatever goes wrong is logged and the messages it concerns are
    listed in ``batchItemFailures`` (a malformed message alone; every valid message when the
    delivery fails: syncd unreachable, the catalog locked, missing or unreadable).

    * SNS ``SubscriptionConfirmation`` / ``UnsubscribeConfirmation`` messages (raw SNS
      envelopes in the queue) are logged and acknowledged, counted as skipped: there is
      nothing to apply and retrying would only dead-letter them.
    * A record without a ``messageId`` cannot be acknowledged or retried on its own, and an
      empty ``itemIdentifier`` would make Lambda fail (and retry, then dead-letter) the whole
      batch, good messages included. Such a record is applied with the others when it is
      valid; when it is malformed or its delivery fails it is logged as an error, with its
      position in the batch, and dropped (the periodic reconcile is the backstop).
    """
    if not _is_sqs_batch(event):
        _load_token()
        parsed = parse(event)  # raises on a malformed payload: Lambda retries, then its DLQ
        result = deliver(event, parsed)
        log.info("applied %s", result)
        return result
    failures: list[dict[str, str]] = []
    good: list[tuple[int, dict[str, Any]]] = []  # (position, record) of the valid messages
    combined = Parsed()

    def failed(record: dict[str, Any], position: int, why: str) -> None:
        message_id = _message_id(record)
        if message_id is None:
            log.error("record %d of the batch (no messageId) dropped: %s", position, why)
        else:
            log.error("message %s rejected: %s", message_id, why)
            failures.append({"itemIdentifier": message_id})

    try:
        _load_token()
    except Exception as exc:  # never raise: without the token nothing can be delivered
        for position, record in enumerate(event["Records"], 1):
            failed(record, position, f"cannot read the API token: {type(exc).__name__}")
        return {"batchItemFailures": failures}
    for position, record in enumerate(event["Records"], 1):
        try:
            parsed = parse_record(record)
        except EventFormatError as exc:
            failed(record, position, str(exc))
            continue
        combined.extend(parsed)
        if parsed.events:  # a record of skipped messages only needs no delivery
            good.append((position, record))
    if combined.skipped:
        log.info("acknowledged without applying: %s", "; ".join(combined.skipped))
    if good:
        try:
            result = deliver({"Records": [record for _, record in good]}, combined)
            log.info("applied %s from %d message(s)", result, len(good))
        except Exception as exc:  # never raise: report the messages instead
            # DeliveryError, a malformed answer, or the catalog itself (locked past the busy
            # timeout, unreadable): every message of the delivery is retried by SQS
            from providers.redact import redact

            why = redact(f"delivery failed: {type(exc).__name__}: {exc}")
            for position, record in good:
                failed(record, position, why)
    return {"batchItemFailures": failures}
