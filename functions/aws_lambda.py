"""AWS Lambda handler: S3 bucket events into syncd.

Deploy with handler ``functions.aws_lambda.handler``. It accepts:

* an SQS batch (``Records[].eventSource == "aws:sqs"``) whose bodies are S3 notifications,
  SNS envelopes of them, or EventBridge events. Each message is validated on its own; the
  valid ones are delivered together and the response lists, in ``batchItemFailures``, exactly
  the messages that failed, so SQS retries (and eventually dead-letters) only those. Enable
  ``ReportBatchItemFailures`` on the event source mapping.
* a direct S3 notification (``Records[].eventSource == "aws:s3"``) or an EventBridge event: any
  failure raises, so Lambda's own retry applies.

Environment: ``SYNCD_API_URL`` and the API token (deliver to ``syncd serve``), or ``SYNCD_DB``
(apply into a catalog file). The token is read at cold start from the Secrets Manager secret
named by ``SYNCD_API_TOKEN_SECRET_ARN`` (what ``infra/aws/template.yaml`` sets up), so it never
sits in the function's configuration; ``SYNCD_API_TOKEN`` itself also works. ``LOG_LEVEL``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from syncd.events.delivery import DeliveryError, deliver
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
    return bool(records) and all(
        isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records
    )


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    _load_token()
    if not _is_sqs_batch(event):
        parsed = parse(event)  # raises on a malformed payload: Lambda retries, then its DLQ
        result = deliver(event, parsed)
        log.info("applied %s", result)
        return result
    failures: list[dict[str, str]] = []
    good: list[dict[str, Any]] = []
    combined = Parsed()
    for record in event["Records"]:
        message_id = str(record.get("messageId", ""))
        try:
            combined.extend(parse_record(record))
            good.append(record)
        except EventFormatError as exc:
            log.error("message %s rejected: %s", message_id, exc)
            failures.append({"itemIdentifier": message_id})
    if good:
        try:
            result = deliver({"Records": good}, combined)
            log.info("applied %s from %d message(s)", result, len(good))
        except (DeliveryError, EventFormatError) as exc:
            log.error("delivery of %d message(s) failed: %s", len(good), exc)
            failures += [{"itemIdentifier": str(r.get("messageId", ""))} for r in good]
    return {"batchItemFailures": failures}
