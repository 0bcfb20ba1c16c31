"""The daemon's HTTP API: datasets, items, runs, reconcile triggers, events and metrics.

Every handler reaches the catalog through the daemon's :class:`~syncd.daemon.catalog_thread.
CatalogThread` (never on the event loop) and the same library functions the CLI calls. JSON in,
JSON out; errors are ``{"error": "..."}`` with the status that says what is wrong.

* ``GET  /api/v1/datasets``: every dataset: source, driver, filters, item count, last run, and
  (in the daemon) its schedule.
* ``GET  /api/v1/datasets/{name}``: one dataset.
* ``GET  /api/v1/datasets/{name}/items?where=&prefix=&sort=&order=&limit=&cursor=``: the
  items matching a query (:mod:`syncd.query`; ``where`` repeated, one expression each), in
  its order, keyset pagination: ``next_cursor`` is passed back as ``cursor`` (opaque; null
  on the last page).
* ``GET  /api/v1/datasets/{name}/items:count?where=&prefix=``: items and bytes matching.
* ``GET  /api/v1/datasets/{name}/items:summary?by=content_type|folder&where=&prefix=``:
  items and bytes in total and per group, like ``aws s3 ls --summarize``.
* ``GET  /api/v1/datasets/{name}/items/{key}``: one item (the key URL-encoded, ``/`` allowed).
* ``GET  /api/v1/datasets/{name}/items/{key}/url``: ``302`` to a presigned URL of the object.
* ``PATCH /api/v1/datasets/{name}/items/{key}``: edit the user's part of one item
  (``{"metadata": {...}, "add_tags": [...], "remove_tags": [...]}``: ``metadata`` is a JSON
  merge patch, RFC 7386, of ``metadata.user``); answers the item as it now is.
* ``POST /api/v1/datasets/{name}/items:update``: the same edit for every item a selection
  picks (``keys``, ``prefix``), in bounded batches (:mod:`syncd.store.edits`); answers how
  many matched and changed.
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
* ``GET  /api/v1/sinks``: each ``[sinks.NAME]``'s type, target (queue URL, topic), delivered
  cursor, lag, state and last error (:mod:`syncd.feed.sinks`), as ``syncd sinks ls --json``.
* ``GET  /api/v1/workers``: the live workers sharing the catalog, the leases each holds and
  their expiry, recently gone workers (see :func:`syncd.store.workers.listing`).
* ``GET  /metrics``: Prometheus text.
* ``POST /api/v1/datasets``, ``PATCH`` and ``DELETE /api/v1/datasets/{name}``: create a dataset
  (validated like a config's ``[datasets.NAME]``, with its run-time settings in the catalog),
  change its filters and settings, remove it as ``syncd datasets rm`` does
  (:func:`syncd.api.create_dataset` and its neighbours); every daemon sharing the catalog
  picks the change up within seconds. A dataset the daemon's config declares is refused
  (``409``): the config wins.
* ``GET``/``POST /api/v1/integrations``: integrations holding references only.

What each bearer token may call is decided by :mod:`syncd.server.scopes`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from aiohttp import ClientSession, ClientTimeout, web

from providers.redact import redact
from syncd import api, usermeta
from syncd.daemon.catalog_thread import CatalogThread
from syncd.daemon.metrics import Metrics
from syncd.errors import NotFound, UsageError
from syncd.events.apply import ApplyResult
from syncd.events.parse import EventFormatError, ObjectEvent, Parsed, parse_text
from syncd.query import GROUPS, Query, QueryError, parse_where
from syncd.store import edits, lease, workers
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
    #: the ``[sinks.NAME]`` this daemon delivers (``syncd serve``: none)
    sinks: Mapping[str, Any] = field(default_factory=dict)
    #: the datasets the daemon's config declares: the API refuses to create, change or
    #: remove them (the config wins)
    declared: frozenset[str] = frozenset()
    #: called after the API created, changed or removed a dataset: the daemon looks at the
    #: catalog's datasets at once instead of at its next poll
    datasets_changed: Callable[[], None] = lambda: None


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

    def summaries(c: Catalog) -> list[dict[str, Any]]:
        return [
            {**api.dataset_summary(c, ds), "settings": api.dataset_settings_summary(c, ds)}
            for ds in c.list_datasets()
        ]

    rows = await ctx.catalog.call(summaries)
    if ctx.scheduler is not None:
        for row in rows:
            row["schedule"] = ctx.scheduler.state(row["name"])
    return web.json_response({"datasets": rows})


async def get_dataset(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    return web.json_response(await _dataset_row(ctx, ds))


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


def _query(request: web.Request, *extra: str) -> Query:
    """The item query of a request: repeated ``where=`` expressions (:mod:`syncd.query`),
    ``prefix``, ``sort`` and ``order``; 400 with one line for anything wrong. Every other
    parameter but ``extra`` is refused, and each of these but ``where`` may be given once."""
    for name in request.query:
        if name not in ("where", "prefix", "sort", "order", *extra):
            raise _bad_request(
                f"unknown query parameter {name!r}; this endpoint takes "
                + ", ".join(("where", "prefix", "sort", "order", *extra))
            )
        if name != "where" and len(request.query.getall(name)) > 1:
            raise _bad_request(f"query parameter {name!r} is given more than once; give it once")
    try:
        return parse_where(
            request.query.getall("where", []),
            prefix=request.query.get("prefix", ""),
            sort=request.query.get("sort", "key"),
            order=request.query.get("order", "asc"),
        )
    except QueryError as exc:
        raise _bad_request(str(exc)) from None


async def list_items(request: web.Request) -> web.Response:
    """Items matching the query (``where``, ``prefix``), in its order (``sort``, ``order``),
    a page of ``limit`` at a time: ``next_cursor`` is passed back as ``cursor`` (opaque; None
    on the last page)."""
    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    query = _query(request, "limit", "cursor")
    limit = _int_param(request, "limit", DEFAULT_PAGE, MAX_PAGE)
    cursor = request.query.get("cursor") or None

    def page(c: Catalog) -> tuple[list[dict[str, Any]], str | None]:
        items, nxt = c.query_page(ds.id, query, cursor=cursor, limit=limit)
        return [i.public() for i in items], nxt

    try:
        rows, nxt = await ctx.catalog.call(page)
    except QueryError as exc:  # a cursor of another query
        raise _bad_request(str(exc)) from None
    return web.json_response({"items": rows, "next_cursor": nxt})


async def count_items(request: web.Request) -> web.Response:
    """``{"items": N, "bytes": B}`` of the items matching the query."""
    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    query = _query(request)
    n, total = await ctx.catalog.call(lambda c: c.count_query(ds.id, query))
    return web.json_response({"items": n, "bytes": total})


async def summarize_items(request: web.Request) -> web.Response:
    """Items and bytes of the items matching the query, in total and per content type or
    top-level folder (``by``)."""
    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    query = _query(request, "by")
    by = request.query.get("by", "content_type")
    if by not in GROUPS:
        raise _bad_request(f"by={by!r}: summarize by one of {', '.join(GROUPS)}")
    body = await ctx.catalog.call(lambda c: c.summarize(ds.id, query, by=by))
    return web.json_response(body)


async def _item(ctx: Context, ds: Dataset, key: str) -> dict[str, Any] | None:
    def one(c: Catalog) -> dict[str, Any] | None:
        found = c.get_item(ds.id, key)
        return found.public() if found is not None else None

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


# -- item edits ---------------------------------------------------------------------------

#: the members of an edit's body
EDIT_FIELDS = ("metadata", "add_tags", "remove_tags")
#: the members of a bulk edit's body that select its items
SELECTION_FIELDS = ("keys", "prefix", "where")


async def _edit_body(request: web.Request, fields: tuple[str, ...]) -> dict[str, Any]:
    """The request's JSON object with only ``fields`` as members, none of them null; else
    ``UsageError`` (400)."""
    body = usermeta.parse_json(await request.read(), "the request body")
    if not isinstance(body, dict):
        raise UsageError("the request body must be a JSON object with any of " + ", ".join(fields))
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise UsageError(
            f"unknown member {unknown[0]!r} in the request body; it takes " + ", ".join(fields)
        )
    for name, value in body.items():
        if value is None:
            raise UsageError(f"{name} may not be null; leave it out")
    return body


def _edit_of(body: dict[str, Any]) -> edits.Edit:
    return edits.Edit.of(body.get("metadata"), body.get("add_tags"), body.get("remove_tags"))


async def patch_item(request: web.Request, suffix: str = "") -> web.Response:
    """Edit one item's metadata and tags; ``404`` for an unknown dataset or item, ``400``
    (nothing written) for a body that is malformed or past the limits."""
    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    key = request.match_info["key"] + suffix
    try:
        _only_params(request)
        edit = _edit_of(await _edit_body(request, EDIT_FIELDS))
        item = await ctx.catalog.call(lambda c: edits.update_item(c, ds.name, key, edit))
    except edits.ItemNotFound as exc:
        return _error(404, str(exc))
    except UsageError as exc:
        return _error(400, str(exc))
    ctx.changed.pulse()
    return web.json_response(item.public())


async def patch_item_url(request: web.Request) -> web.Response:
    """``PATCH .../items/{key}/url``: the item whose key ends in ``/url`` (the ``/url`` route
    takes the path first; only ``GET`` presigns)."""
    return await patch_item(request, "/url")


async def update_items(request: web.Request) -> web.Response:
    """Edit every selected item of a dataset, a batch per transaction; the catalog thread
    serves other requests between batches. ``400`` (nothing written) for a body that is
    malformed, selects nothing, or would take an item past the limits."""
    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    result = edits.Result(ds.name)
    try:
        _only_params(request)
        body = await _edit_body(request, EDIT_FIELDS + SELECTION_FIELDS)
        edit = _edit_of(body)
        selection = edits.Selection.of(body.get("keys"), body.get("prefix"), body.get("where"))
        await ctx.catalog.call(lambda c: edits.precheck(c, ds.id, selection, edit))
        after: str | None = None
        while True:
            after = await ctx.catalog.call(
                functools.partial(
                    edits.edit_batch,
                    dataset_id=ds.id,
                    selection=selection,
                    edit=edit,
                    after=after,
                    result=result,
                )
            )
            if result.changed:
                ctx.changed.pulse()
            if after is None:
                break
    except UsageError as exc:
        done = f" ({result.changed} items were changed before it)" if result.changed else ""
        return _error(400, str(exc) + done)
    return web.json_response(result.public())


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


async def list_sinks(request: web.Request) -> web.Response:
    """``GET /api/v1/sinks``: each sink's type and target, delivered cursor, lag and state
    (ok, failing, paused) and last error, the rows of ``syncd sinks ls --json``. A target
    holds no credentials (a queue URL, a topic ARN or name, an account and queue name), and
    the integration a sink sends with is not named: its credentials never reach the API."""
    from syncd.feed.sinks import sink_rows

    ctx = request.app[CONTEXT]
    _only_params(request)
    return web.json_response(
        {"sinks": await ctx.catalog.call(lambda c: sink_rows(c.db, ctx.sinks))}
    )


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


# -- datasets and integrations at run time (admin) ----------------------------------------


async def _json_body(request: web.Request) -> Any:
    return usermeta.parse_json(await request.read(), "the request body")


def _refusal(exc: Exception) -> web.Response:
    """The status of a refused run-time change: 409 for the catalog's state, 404 for an
    unknown dataset, else 400."""
    if isinstance(exc, api.Conflict):
        return _error(409, str(exc))
    if isinstance(exc, NotFound):
        return _error(404, str(exc))
    return _error(400, str(exc))


async def _dataset_row(ctx: Context, ds: Dataset) -> dict[str, Any]:
    def row(c: Catalog) -> dict[str, Any]:
        out = api.dataset_summary(c, ds)
        out["settings"] = api.dataset_settings_summary(c, ds)
        return out

    found = await ctx.catalog.call(row)
    if ctx.scheduler is not None:
        found["schedule"] = ctx.scheduler.state(ds.name)
    return found


async def create_dataset(request: web.Request) -> web.Response:
    """``POST /api/v1/datasets``: create a dataset, scheduled by every daemon on the catalog
    within seconds. ``400`` for a malformed body, ``409`` for a name that exists or that the
    config declares; nothing is written unless all of it is."""
    ctx = request.app[CONTEXT]
    try:
        _only_params(request)
        body = await _json_body(request)
        ds = await ctx.catalog.call(lambda c: api.create_dataset(c, body, declared=ctx.declared))
    except (UsageError, NotFound) as exc:
        return _refusal(exc)
    ctx.datasets_changed()
    return web.json_response(
        await _dataset_row(ctx, ds),
        status=201,
        headers={"Location": f"/api/v1/datasets/{quote(ds.name, safe='')}"},
    )


async def patch_dataset(request: web.Request) -> web.Response:
    """``PATCH /api/v1/datasets/{name}``: change filters, interval, max_delete, watch; the
    next reconcile uses them. A different ``source`` is ``400``."""
    ctx = request.app[CONTEXT]
    name = request.match_info["name"]
    try:
        _only_params(request)
        body = await _json_body(request)
        ds = await ctx.catalog.call(
            lambda c: api.patch_dataset(c, name, body, declared=ctx.declared)
        )
    except (UsageError, NotFound) as exc:
        return _refusal(exc)
    ctx.datasets_changed()
    return web.json_response(await _dataset_row(ctx, ds))


async def delete_dataset(request: web.Request) -> web.Response:
    """``DELETE /api/v1/datasets/{name}``: remove the dataset with its items and runs (the
    bucket is not touched), as ``syncd datasets rm``; ``409`` while it is being synced, or
    while it has snapshots unless ``with_snapshots=true``."""
    ctx = request.app[CONTEXT]
    name = request.match_info["name"]
    try:
        _only_params(request, "with_snapshots")
        with_snapshots = _bool_param(request, "with_snapshots")
        count = await ctx.catalog.call(
            lambda c: api.remove_dataset(
                c, name, declared=ctx.declared, with_snapshots=with_snapshots
            )
        )
    except (UsageError, NotFound) as exc:
        return _refusal(exc)
    ctx.changed.pulse()
    ctx.datasets_changed()
    return web.json_response({"dataset": name, "removed": True, "items": count})


async def list_integrations(request: web.Request) -> web.Response:
    """``GET /api/v1/integrations``: every integration the catalog holds (created over the
    API, or recorded with a dataset of a config): name, type, fields as references; no
    secret's value is ever read here."""
    ctx = request.app[CONTEXT]
    _only_params(request)
    rows = await ctx.catalog.call(
        lambda c: [api.integration_summary(i, at) for i, at in c.list_integrations()]
    )
    return web.json_response({"integrations": rows})


async def create_integration(request: web.Request) -> web.Response:
    """``POST /api/v1/integrations``: record an integration of references (``env:``,
    ``file:``); a literal secret is ``400``, an existing name ``409``."""
    ctx = request.app[CONTEXT]
    try:
        _only_params(request)
        body = await _json_body(request)
        row = await ctx.catalog.call(lambda c: api.create_integration(c, body))
    except UsageError as exc:
        return _refusal(exc)
    return web.json_response(row, status=201)


# -- snapshots (issue 25) -------------------------------------------------------------------


def _bool_param(request: web.Request, name: str) -> bool:
    """``name=true`` / ``false`` (absent: false); anything else is a 400."""
    raw = request.query.get(name)
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise _bad_request(f"{name} must be true or false")


def _snapshot_refusal(exc: Exception) -> web.Response:
    """404 for an unknown snapshot, 409 for a tag taken, else 400 (a bad tag)."""
    return _refusal(exc)


async def list_snapshots(request: web.Request) -> web.Response:
    """``GET .../snapshots``: the dataset's snapshots, oldest first."""
    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    _only_params(request)
    rows = await ctx.catalog.call(lambda c: api.list_snapshots(c, ds.name))
    return web.json_response({"snapshots": rows})


async def create_snapshot(request: web.Request) -> web.Response:
    """``POST .../snapshots`` with ``{"tag": ..., "message": ...}``: freeze the dataset;
    ``201`` with the snapshot, ``409`` for a tag it has, ``400`` for a bad body or tag."""
    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    try:
        _only_params(request)
        body = await _json_body(request)
        if not isinstance(body, dict) or set(body) - {"tag", "message"} or "tag" not in body:
            raise UsageError('the body must be {"tag": "v1"} with an optional "message"')
        tag, message = body["tag"], body.get("message")
        if not isinstance(tag, str) or not (message is None or isinstance(message, str)):
            raise UsageError("tag and message must be strings")
        row = await ctx.catalog.call(
            lambda c: api.create_snapshot(c, ds.name, tag, message=message)
        )
    except (UsageError, NotFound) as exc:
        return _snapshot_refusal(exc)
    return web.json_response(
        row,
        status=201,
        headers={
            "Location": f"/api/v1/datasets/{quote(ds.name, safe='')}/snapshots/"
            f"{quote(row['tag'], safe='')}"
        },
    )


async def get_snapshot(request: web.Request) -> web.Response:
    """``GET .../snapshots/{tag}``: one snapshot; 404 if the dataset has none of that tag."""
    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    tag = request.match_info["tag"]
    try:
        _only_params(request)
        row = await ctx.catalog.call(lambda c: api.get_snapshot(c, ds.name, tag))
    except (UsageError, NotFound) as exc:
        return _snapshot_refusal(exc)
    return web.json_response(row)


async def delete_snapshot(request: web.Request) -> web.Response:
    """``DELETE .../snapshots/{tag}``: remove a snapshot (the items are not touched)."""
    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    tag = request.match_info["tag"]
    try:
        _only_params(request)
        row = await ctx.catalog.call(lambda c: api.remove_snapshot(c, ds.name, tag))
    except (UsageError, NotFound) as exc:
        return _snapshot_refusal(exc)
    return web.json_response({**row, "removed": True})


async def snapshot_items(request: web.Request) -> web.Response:
    """``GET .../snapshots/{tag}/items``: the snapshot's items in key order, ``limit`` at a
    time (``prefix``): ``next_cursor`` is passed back as ``cursor`` (None on the last page),
    as for live items."""
    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    tag = request.match_info["tag"]
    try:
        _only_params(request, "prefix", "limit", "cursor")
        limit = _int_param(request, "limit", DEFAULT_PAGE, MAX_PAGE)
        prefix = request.query.get("prefix", "")
        raw = request.query.get("cursor") or None
        after = decode_cursor(raw) if raw is not None else None

        def page(c: Catalog) -> tuple[list[dict[str, Any]], str | None]:
            found = list(
                c.snapshot_items(ds.name, tag, after_key=after, limit=limit + 1, prefix=prefix)
            )
            nxt = encode_cursor(found[limit - 1].key) if len(found) > limit else None
            return [i.public() for i in found[:limit]], nxt

        rows, nxt = await ctx.catalog.call(page)
    except (UsageError, NotFound) as exc:
        return _snapshot_refusal(exc)
    return web.json_response({"items": rows, "next_cursor": nxt})


async def diff_snapshot(request: web.Request) -> web.Response:
    """``GET .../snapshots/{tag}/diff``: what changed from the snapshot to snapshot
    ``against`` (absent: the live dataset): counts, bytes and at most ``limit`` keys per
    kind (``truncated`` when more)."""
    ctx = request.app[CONTEXT]
    ds = await _dataset_or_404(request)
    tag = request.match_info["tag"]
    try:
        _only_params(request, "against", "limit")
        limit = _int_param(request, "limit", MAX_PAGE, 100_000)
        against = request.query.get("against")
        found = await ctx.catalog.call(
            lambda c: api.diff_snapshots(c, ds.name, tag, against, keys=limit)
        )
    except (UsageError, NotFound) as exc:
        return _snapshot_refusal(exc)
    return web.json_response(found)


def add_routes(app: web.Application) -> None:
    """Register the API's routes (the auth, size and error middlewares are the app's)."""
    r = app.router
    r.add_get("/api/v1/datasets", list_datasets)
    r.add_get("/api/v1/datasets/{name}", get_dataset)
    r.add_get("/api/v1/datasets/{name}/items", list_items)
    r.add_get("/api/v1/datasets/{name}/items:count", count_items)
    r.add_get("/api/v1/datasets/{name}/items:summary", summarize_items)
    # the /url route first: it strips exactly one trailing "/url" from the key
    r.add_get("/api/v1/datasets/{name}/items/{key:.+}/url", item_url)
    r.add_patch("/api/v1/datasets/{name}/items/{key:.+}/url", patch_item_url)
    r.add_get("/api/v1/datasets/{name}/items/{key:.+}", get_item)
    r.add_patch("/api/v1/datasets/{name}/items/{key:.+}", patch_item)
    r.add_post("/api/v1/datasets/{name}/items:update", update_items)
    r.add_get("/api/v1/datasets/{name}/runs", list_runs)
    r.add_post("/api/v1/datasets/{name}/sync", trigger_sync)
    r.add_get("/api/v1/datasets/{name}/changes", list_changes)
    r.add_get("/api/v1/changes", list_changes)
    r.add_get("/api/v1/workers", list_workers)
    r.add_get("/api/v1/webhooks", list_webhooks)
    r.add_get("/api/v1/sinks", list_sinks)
    r.add_post("/api/v1/events", post_events)
    r.add_route("OPTIONS", "/api/v1/events", events_handshake)
    r.add_get("/metrics", metrics)
    # datasets and integrations at run time
    r.add_post("/api/v1/datasets", create_dataset)
    r.add_patch("/api/v1/datasets/{name}", patch_dataset)
    r.add_delete("/api/v1/datasets/{name}", delete_dataset)
    r.add_get("/api/v1/datasets/{name}/snapshots", list_snapshots)
    r.add_post("/api/v1/datasets/{name}/snapshots", create_snapshot)
    r.add_get("/api/v1/datasets/{name}/snapshots/{tag}", get_snapshot)
    r.add_delete("/api/v1/datasets/{name}/snapshots/{tag}", delete_snapshot)
    r.add_get("/api/v1/datasets/{name}/snapshots/{tag}/items", snapshot_items)
    r.add_get("/api/v1/datasets/{name}/snapshots/{tag}/diff", diff_snapshot)
    r.add_get("/api/v1/integrations", list_integrations)
    r.add_post("/api/v1/integrations", create_integration)
