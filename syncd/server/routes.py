"""The daemon's HTTP API: datasets, items, runs, reconcile triggers, events and metrics.

Every handler reaches the catalog through the daemon's :class:`~syncd.daemon.catalog_thread.
CatalogThread` (never on the event loop) and the same library functions the CLI calls. JSON in,
JSON out; errors are ``{"error": "..."}`` with the status that says what is wrong.

* ``GET  /api/v1/datasets``: every dataset: source, driver, filters, item count, last run, and
  (in the daemon) its schedule.
* ``GET  /api/v1/datasets/{name}``: one dataset.
* ``GET  /api/v1/datasets/{name}/items?prefix=&limit=&cursor=``: items in key order, keyset
  pagination: ``next_cursor`` is passed back as ``cursor`` (opaque; absent on the last page).
* ``GET  /api/v1/datasets/{name}/items/{key}``: one item (the key URL-encoded, ``/`` allowed).
* ``GET  /api/v1/datasets/{name}/items/{key}/url``: ``302`` to a presigned URL of the object.
* ``POST /api/v1/datasets/{name}/sync``: reconcile now on this worker (``202``; ``409``
  while another worker or process holds the dataset's lease). A dataset the daemon does not
  schedule (``syncd serve``, or one the CLI added) is synced once with the source and
  settings its catalog holds.
* ``GET  /api/v1/datasets/{name}/runs?limit=``: runs, newest first, with every attempt.
* ``POST /api/v1/events``: provider event payloads, SNS subscription confirmations, Event Grid
  validation, Pub/Sub push envelopes; ``OPTIONS`` answers Event Grid's CloudEvents handshake.
* ``GET  /api/v1/changes?after=&limit=&dataset=&kind=&wait=`` and
  ``GET  /api/v1/datasets/{name}/changes``: the change log (:mod:`syncd.store.changes`) after a
  cursor, long-polled with ``wait``; ``410`` for a cursor older than the log holds.
* ``GET  /api/v1/webhooks``: each ``[webhooks.NAME]``'s delivered cursor, lag, state and last
  error (:mod:`syncd.feed.webhooks`).
* ``GET  /api/v1/workers``: the live workers sharing the catalog, the leases each holds and
  their expiry, recently gone workers (see :func:`syncd.store.workers.listing`).
* ``GET  /metrics``: Prometheus text.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import ClientSession, ClientTimeout, web

from providers.redact import redact
from syncd import api
from syncd.daemon.catalog_thread import CatalogThread
from syncd.daemon.metrics import Metrics
from syncd.errors import UsageError
from syncd.events.apply import ApplyResult
from syncd.events.parse import EventFormatError, ObjectEvent, Parsed, parse_text
from syncd.store import lease, workers
from syncd.store.catalog import Catalog, Dataset
from syncd.store.changes import ChangeSignal
from syncd.store.checkpoint import Checkpoint

log = logging.getLogger("syncd.server")

DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_RUNS = 100


class Scheduling(Protocol):
    """What the API needs of the daemon's scheduler."""

    def trigger(self, name: str) -> bool: ...

    def state(self, name: str) -> dict[str, Any] | None: ...

    def run_once(self, name: str) -> None: ...

    def failing(self) -> dict[str, dict[str, Any]]: ...


class Delivering(Protocol):
    async def deliver(
        self, events: list[ObjectEvent], *, source: str, dataset: str | None = None
    ) -> ApplyResult: ...


@dataclass
class Context:
    """The daemon's parts the API uses; ``scheduler`` is None in ``syncd serve``."""

    catalog: CatalogThread
    intake: Delivering
    metrics: Metrics
    scheduler: Scheduling | None = None
    #: the registered worker this API runs in (its leases are owned by "<id>/<run>")
    worker_id: str | None = None
    #: pulsed (set, then cleared) when this process commits changes: wakes ``wait=`` polls
    changed: ChangeSignal = field(default_factory=lambda: ChangeSignal())
    #: the ``[webhooks.NAME]`` this daemon delivers (``syncd serve``: none)
    webhooks: Mapping[str, Any] = field(default_factory=dict)


CONTEXT = web.AppKey("context", Context)


def _error(status: int, message: str) -> web.Response:
    # redacted: a provider's message (a failed presign) must not carry a secret to the caller
    return web.json_response({"error": redact(message)}, status=status)


async def _dataset_or_404(request: web.Request) -> Dataset:
    ctx = request.app[CONTEXT]
    name = request.match_info["name"]
    found = await ctx.catalog.call(lambda c: c.find_dataset(name))
    if found is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"unknown dataset {name!r}"}),
            content_type="application/json",
        )
    return found


# -- datasets ------------------------------------------------------------------------------


async def list_datasets(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    rows = await ctx.catalog.call(
        lambda c: [api.dataset_summary(c, ds) for ds in c.list_datasets()]
    )
    if ctx.scheduler is not None:
        for row in rows:
            row["schedule"] = ctx.scheduler.state(row["name"])
    return web.json_response({"datasets": rows})


async def get_dataset(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    row = await ctx.catalog.call(lambda c: api.dataset_summary(c, ds))
    if ctx.scheduler is not None:
        row["schedule"] = ctx.scheduler.state(ds.name)
    return web.json_response(row)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def _only_params(request: web.Request, *names: str) -> None:
    """Refuse (400) a query parameter the endpoint does not take: a misspelt ``prefx=``
    would otherwise silently answer for the whole dataset; and one given twice
    (``limit=1&limit=2``), which would silently use the first."""
    for name in request.query:
        if name not in names:
            raise _bad_request(
                f"unknown query parameter {name!r}; this endpoint takes "
                + (", ".join(names) or "none")
            )
        if len(request.query.getall(name)) > 1:
            raise _bad_request(f"query parameter {name!r} is given more than once; give it once")


def _int_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    """``name`` as a whole number in 1..maximum, or ``default`` when absent; else 400. Only
    ASCII digits: Python's ``int()`` also takes full-width and other Unicode digits, signs,
    underscores and surrounding spaces."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise _bad_request(f"{name} must be a whole number (digits 0-9)")
    # a huge number is out of range without converting it (int() refuses 4,300+ digits)
    value = int(raw) if len(raw) <= 18 else maximum + 1
    if not 1 <= value <= maximum:
        raise _bad_request(f"{name} must be between 1 and {maximum}")
    return value


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "malformed cursor: pass back next_cursor unchanged"}),
            content_type="application/json",
        ) from None


async def list_items(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    _only_params(request, "prefix", "limit", "cursor")
    limit = _int_param(request, "limit", DEFAULT_PAGE, MAX_PAGE)
    prefix = request.query.get("prefix", "")
    cursor = request.query.get("cursor")
    after = decode_cursor(cursor) if cursor else None

    def page(c: Catalog) -> list[dict[str, Any]]:
        # one more than asked tells whether there is a next page
        items = c.iter_items(ds.id, after=after, prefix=prefix, limit=limit + 1)
        return [i.public() for i in items]

    rows = await ctx.catalog.call(page)
    more = len(rows) > limit
    rows = rows[:limit]
    body: dict[str, Any] = {"items": rows, "next_cursor": None}
    if more:
        body["next_cursor"] = encode_cursor(rows[-1]["key"])
    return web.json_response(body)


async def _item(ctx: Context, ds: Dataset, key: str) -> dict[str, Any] | None:
    def one(c: Catalog) -> dict[str, Any] | None:
        found = next(iter(c.iter_items(ds.id, after=None, prefix=key, limit=1)), None)
        return found.public() if found is not None and found.key == key else None

    return await ctx.catalog.call(one)


async def get_item(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    key = request.match_info["key"]
    row = await _item(ctx, ds, key)
    if row is None:
        return _error(404, f"dataset {ds.name!r} has no item {key!r}")
    return web.json_response(row)


async def item_url(request: web.Request) -> web.Response:
    """``302`` to a presigned URL. A key that itself ends in ``/url`` is served as an item
    when it exists and the shorter key does not."""
    from providers import open_driver

    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    key = request.match_info["key"]
    if await _item(ctx, ds, key) is None:
        whole = await _item(ctx, ds, key + "/url")
        if whole is not None:
            return web.json_response(whole)
        return _error(404, f"dataset {ds.name!r} has no item {key!r}")
    _only_params(request, "ttl")
    ttl = _int_param(request, "ttl", 3600, 7 * 24 * 3600)
    try:
        async with open_driver(ds.driver) as driver:
            url = await driver.presign(key, ttl=ttl)
    except Exception as exc:  # a provider or config problem: say it, no 500
        log.warning("presign of %r in %r failed: %s", key, ds.name, exc)
        return _error(502, f"cannot presign {key!r}: {exc}")
    raise web.HTTPFound(location=url)


# -- runs and triggers ---------------------------------------------------------------------


async def list_runs(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    _only_params(request, "limit")
    limit = _int_param(request, "limit", 20, MAX_RUNS)

    def runs(c: Catalog) -> list[dict[str, Any]]:
        checkpoint = Checkpoint(c.db)
        return [api.run_summary(r, checkpoint) for r in checkpoint.history(ds.id, limit=limit)]

    return web.json_response({"runs": await ctx.catalog.call(runs)})


async def trigger_sync(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    if ctx.scheduler is None:
        return _error(409, "this server schedules no reconciles (syncd serve); use syncd run")

    def holder(c: Catalog) -> lease.Holder | None:
        found = lease.holder(c.db, lease.for_dataset(ds.id))
        return found if found is not None and found.alive() else None

    held = await ctx.catalog.call(holder)
    if held is not None and (
        ctx.worker_id is None or workers.worker_of(held.owner) != ctx.worker_id
    ):
        who = workers.worker_of(held.owner)
        return _error(
            409,
            f"dataset {ds.name!r} is being reconciled by "
            + (f"worker {who}" if who else held.describe())
            + f" (lease until {held.expires_at}); try again when it is done",
        )
    if not ctx.scheduler.trigger(ds.name):
        # not scheduled here (syncd serve; a dataset the CLI added): once, as the catalog has it
        ctx.scheduler.run_once(ds.name)
    return web.json_response({"dataset": ds.name, "triggered": True}, status=202)


# -- events --------------------------------------------------------------------------------


def _sns_confirmation(body: bytes) -> str | None:
    """The SubscribeURL of an SNS subscription confirmation, else None."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(payload, dict) and payload.get("Type") == "SubscriptionConfirmation":
        url = payload.get("SubscribeURL")
        return url if isinstance(url, str) else ""
    return None


def _trusted_sns_url(url: str) -> bool:
    """Only AWS's own SNS endpoints (or the configured AWS endpoint, for emulators) are
    fetched: confirming must not let a caller make the server request any URL."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host.startswith("sns.") and host.endswith(".amazonaws.com"):
        return True
    endpoint = os.environ.get("AWS_ENDPOINT_URL_SNS") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        ep = urlsplit(endpoint)
        return (parts.scheme, parts.hostname, parts.port) == (ep.scheme, ep.hostname, ep.port)
    return False


async def post_events(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    body = await request.read()
    subscribe = _sns_confirmation(body)
    if subscribe is not None:
        if not subscribe or not _trusted_sns_url(subscribe):
            return _error(400, "SNS SubscribeURL is missing or not an AWS SNS endpoint")
        async with (
            ClientSession(timeout=ClientTimeout(total=30)) as session,
            session.get(subscribe) as resp,
        ):
            if resp.status != 200:
                return _error(502, f"SNS answered HTTP {resp.status} to the confirmation")
        log.info("confirmed an SNS subscription")
        return web.json_response({"confirmed": True})
    try:
        parsed: Parsed = parse_text(body)
    except EventFormatError as exc:
        ctx.metrics.events.labels("api", "rejected").inc()
        return _error(400, str(exc))
    if parsed.validation_code is not None:
        return web.json_response({"validationResponse": parsed.validation_code})
    try:
        result = await ctx.intake.deliver(parsed.events, source="api")
    except UsageError as exc:
        return _error(400, str(exc))
    ctx.changed.pulse()
    return web.json_response({"applied": result.as_dict(), "skipped": parsed.skipped})


async def events_handshake(request: web.Request) -> web.Response:
    """Event Grid's CloudEvents-schema webhook validation: an ``OPTIONS`` request naming the
    sender in ``WebHook-Request-Origin``; answering with it allows deliveries. Writes nothing."""
    origin = request.headers.get("WebHook-Request-Origin")
    if not origin:
        return web.Response(status=200, headers={"Allow": "OPTIONS, POST"})
    return web.Response(
        status=200, headers={"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*"}
    )


# -- the change log ------------------------------------------------------------------------

#: the longest a ``wait=`` long poll holds a request (seconds)
MAX_WAIT = 60
#: a waiting request looks at the catalog at least this often (changes committed by other
#: processes: workers, one-shot syncs); this process's own writes wake it at once
POLL_SECONDS = 1.0


def _whole_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    """A query parameter of ASCII digits, 0..maximum (a cursor, a wait)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) > maximum:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{name} must be a whole number from 0 to {maximum}"}),
            content_type="application/json",
        )
    return int(raw)


async def list_changes(request: web.Request) -> web.Response:
    """``GET /api/v1/changes`` and ``GET /api/v1/datasets/{name}/changes``: change records
    after ``after``, at most ``limit``, optionally of some ``kind``s (comma-separated); with
    ``wait=SECONDS``, an empty answer waits up to that long for a change. ``410`` with the
    oldest and newest cursors when ``after`` is older than the log holds."""
    from syncd.store.changes import CursorGone

    ctx = request.app[CONTEXT]
    name = request.match_info.get("name")
    allowed = ["after", "limit", "kind", "wait"] + ([] if name else ["dataset"])
    _only_params(request, *allowed)
    if name is not None:
        await _dataset_or_404(request)
    else:
        name = request.query.get("dataset")
    after = _whole_param(request, "after", 0, 2**63 - 1)
    wait = _whole_param(request, "wait", 0, MAX_WAIT)
    limit = _int_param(request, "limit", DEFAULT_PAGE, MAX_PAGE)
    kinds = tuple(request.query.get("kind", "").split(",")) if "kind" in request.query else ()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        try:
            # each record's JSON text as json_response would encode it, made from the log's
            # rows without the records (the feed's fast path)
            found, following = await ctx.catalog.call(
                lambda c: api.read_change_lines(
                    c, after=after, limit=limit, dataset=name, kinds=kinds, ascii=True
                )
            )
        except CursorGone as exc:
            return web.json_response(
                {"error": str(exc), "oldest": exc.oldest, "head": exc.head}, status=410
            )
        except UsageError as exc:
            return _error(404 if "unknown dataset" in str(exc) else 400, str(exc))
        left = deadline - loop.time()
        if found or left <= 0:
            break
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation (a
        # shutdown) that lands as the signal fires, and the request would wait on
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(left, POLL_SECONDS)):
                await ctx.changed.wait()
    return web.json_response(text=f'{{"changes": [{", ".join(found)}], "next": {following}}}')


async def list_webhooks(request: web.Request) -> web.Response:
    """``GET /api/v1/webhooks``: each webhook's delivered cursor, lag and state (ok, failing,
    paused) and last error; URLs without credentials, never a secret or header."""
    from syncd.feed.delivery import listing
    from syncd.feed.webhooks import KIND, display_url

    ctx = request.app[CONTEXT]
    _only_params(request)
    shown = {name: display_url(hook.url) for name, hook in ctx.webhooks.items()}
    found = await ctx.catalog.call(lambda c: listing(c.db, shown, KIND))
    return web.json_response({"webhooks": found})


async def list_workers(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    _only_params(request)
    return web.json_response(await ctx.catalog.call(lambda c: workers.listing(c.db)))


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    return web.Response(
        body=ctx.metrics.render(),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


def add_routes(app: web.Application) -> None:
    """Register the API's routes (the auth, size and error middlewares are the app's)."""
    r = app.router
    r.add_get("/api/v1/datasets", list_datasets)
    r.add_get("/api/v1/datasets/{name}", get_dataset)
    r.add_get("/api/v1/datasets/{name}/items", list_items)
    # the /url route first: it strips exactly one trailing "/url" from the key
    r.add_get("/api/v1/datasets/{name}/items/{key:.+}/url", item_url)
    r.add_get("/api/v1/datasets/{name}/items/{key:.+}", get_item)
    r.add_get("/api/v1/datasets/{name}/runs", list_runs)
    r.add_post("/api/v1/datasets/{name}/sync", trigger_sync)
    r.add_get("/api/v1/datasets/{name}/changes", list_changes)
    r.add_get("/api/v1/changes", list_changes)
    r.add_get("/api/v1/workers", list_workers)
    r.add_get("/api/v1/webhooks", list_webhooks)
    r.add_post("/api/v1/events", post_events)
    r.add_route("OPTIONS", "/api/v1/events", events_handshake)
    r.add_get("/metrics", metrics)
