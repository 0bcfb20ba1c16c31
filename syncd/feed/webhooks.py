"""Webhooks: the change log POSTed to ``[webhooks.NAME]`` URLs, signed per Standard Webhooks.

Each request carries one batch (:class:`~syncd.feed.delivery.Batch`) as
``{"webhook": NAME, "changes": [...], "next": CURSOR}`` (``changes`` as ``syncd changes
--json`` prints them; ``next``: the cursor the batch ends at, possibly past its last change
when changes in between are filtered out), with the headers ``webhook-id`` (the batch's id:
the same when the batch is sent again), ``webhook-timestamp`` and ``webhook-signature``
(``v1,`` HMAC-SHA256 of ``id.timestamp.body`` with the secret), made by the
``standardwebhooks`` library, so its ``Webhook(secret).verify(body, headers)`` checks them.

How an answer is taken (the loop is :class:`~syncd.feed.delivery.Deliverer`):

* **2xx**: acknowledged, the next batch follows;
* **408, 429, 5xx, a timeout, no connection**: tried again with capped exponential backoff
  (a ``Retry-After`` in seconds or as a date is honoured up to 10 minutes), forever; after
  ``fail_after`` seconds the webhook shows as failing;
* **any other status** (4xx, a redirect: not followed, a signed request goes only where it was
  configured to): the webhook is paused until ``syncd webhooks resume NAME`` or ``replay``.

The secret and header values are read when the daemon starts and registered with the redactor;
errors name the URL without its query (which may carry a token) and never a header.
"""

from __future__ import annotations

import binascii
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from standardwebhooks import Webhook

from providers.config import ConfigError
from syncd.config import WebhookConfig
from syncd.daemon.metrics import Metrics
from syncd.feed.delivery import Batch, Deliveries, Filters, Outcome
from syncd.store.changes import ChangeSignal

log = logging.getLogger("syncd.feed")

KIND = "webhook"
#: statuses worth trying again: the receiver is busy, slow or broken for now
RETRY_STATUSES = frozenset({408, 429})


def display_url(url: str) -> str:
    """``url`` without credentials: no user or password, no query, no fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}" + ("?..." if parts.query else "")


def retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header as seconds from now (a number or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class WebhookSender:
    """Sends a batch to one webhook: the transport for :class:`Deliverer`."""

    def __init__(self, config: WebhookConfig, session: aiohttp.ClientSession) -> None:
        """Reads the secret and header references (``ConfigError`` if one cannot be read or
        the secret is not a Standard Webhooks secret)."""
        self.config = config
        self.session = session
        secret, self.headers = config.resolve()
        try:
            self.signer = Webhook(secret)
        except (binascii.Error, ValueError, RuntimeError):
            raise ConfigError(
                f"webhook {config.name!r} secret is not a Standard Webhooks secret: "
                "write whsec_ followed by base64 (e.g. whsec_ + `openssl rand -base64 32`)"
            ) from None
        self.where = display_url(config.url)

    def body(self, batch: Batch) -> bytes:
        return json.dumps(
            {
                "webhook": self.config.name,
                "changes": [c.public() for c in batch.changes],
                "next": batch.end,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()

    async def __call__(self, batch: Batch) -> Outcome:
        body = self.body(batch)
        at = datetime.now(UTC)
        headers = {
            **self.headers,
            "Content-Type": "application/json",
            "webhook-id": batch.id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": self.signer.sign(batch.id, at, body),
        }
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        try:
            async with self.session.post(
                self.config.url, data=body, headers=headers, timeout=timeout,
                allow_redirects=False,
            ) as resp:  # fmt: skip
                status = resp.status
                wait = retry_after(resp.headers.get("Retry-After"))
                await resp.read()
        except TimeoutError:
            return Outcome(False, error=f"{self.where}: no answer in {self.config.timeout:g}s")
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            return Outcome(False, error=f"{self.where}: cannot connect ({reason})")
        except aiohttp.ClientError as exc:
            return Outcome(False, error=f"{self.where}: {type(exc).__name__}")
        if 200 <= status < 300:
            return Outcome(True)
        error = f"{self.where} answered HTTP {status}"
        if status >= 500 or status in RETRY_STATUSES:
            return Outcome(False, error=error, retry_after=wait)
        if 300 <= status < 400:
            error += " (a redirect: not followed; set url to the new address)"
        return Outcome(False, retry=False, error=error)


class WebhookFeed:
    """Every configured webhook, delivered by a task of its own until :meth:`stop`."""

    def __init__(
        self,
        webhooks: Mapping[str, WebhookConfig],
        catalog: Any,
        signal: ChangeSignal,
        metrics: Metrics,
        owner: str,
    ) -> None:
        self.webhooks = webhooks
        self.catalog = catalog
        self.signal = signal
        self.owner = owner
        self._session: aiohttp.ClientSession | None = None
        self._running = Deliveries(
            KIND,
            catalog,
            signal,
            owner,
            (metrics.webhook_lag, metrics.webhook_failures, metrics.webhook_delivered),
        )

    def senders(self, session: aiohttp.ClientSession) -> dict[str, WebhookSender]:
        """Every webhook's sender; ``ConfigError`` naming the first that cannot start."""
        return {name: WebhookSender(hook, session) for name, hook in self.webhooks.items()}

    async def start(self) -> None:
        """Read every webhook's secret (``ConfigError`` if one cannot be), then start the
        delivery tasks."""
        if not self.webhooks:
            return
        self._session = aiohttp.ClientSession()
        try:
            senders = self.senders(self._session)
        except ConfigError:
            await self._session.close()
            self._session = None
            raise
        for name, hook in self.webhooks.items():
            self._running.start(
                name,
                senders[name],
                filters=Filters(hook.datasets, hook.kinds),
                batch=hook.batch,
                fail_after=hook.fail_after,
            )
        log.info("delivering the change feed to %d webhook(s)", len(self._running))

    async def stop(self) -> None:
        """Stop every delivery (see :meth:`~syncd.feed.delivery.Deliveries.stop`), then
        close the HTTP session."""
        await self._running.stop()
        if self._session is not None:
            await self._session.close()
