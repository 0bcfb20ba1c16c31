"""The dashboard's pages and actions (see :mod:`syncd.web` for how to add one).

* ``GET  /login``, ``POST /login``: sign in with the API token (:mod:`syncd.web.auth`);
  ``POST /logout``.
* ``GET  /``: the overview (every dataset, failing first; workers; the daemon's health and
  queue lags). With ``HX-Request`` (htmx polling) only its live part.
* ``GET  /datasets/{name}``: a dataset: totals, health, run-history charts, runs with their
  attempts and errors, recent changes (then pushed by ``/datasets/{name}/live``).
* ``GET  /datasets/{name}/runs``: the runs table alone (htmx polling while a run goes on).
* ``GET  /datasets/{name}/live?after=CURSOR``: server-sent events, one ``change`` event per
  change record of the dataset after the cursor (its JSON: cursor, kind, key, at, size).
* ``POST /datasets/{name}/sync``: "Sync now" (the API's trigger, ``write`` scope; CSRF).
* ``GET  /docs``: the API reference, rendered from ``openapi.yaml``;
  ``GET /api/v1/openapi.yaml``: the document itself.

Pages never carry the API token; every value reaches HTML through Jinja2's autoescape and
JSON for scripts through ``tojson`` (which escapes ``<``, ``>``, ``&``, ``'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
from aiohttp import web

from syncd import api
from syncd.server import scopes
from syncd.server.routes import CONTEXT, POLL_SECONDS
from syncd.store.stamps import parse
from syncd.web import auth, data
from syncd.web.auth import see_other

log = logging.getLogger("syncd.web")
TOTALS = web.AppKey("web_totals", data.Totals)
#: set when the server shuts down: the live streams end at once instead of holding the
#: shutdown until its timeout
CLOSING = web.AppKey("web_closing", asyncio.Event)


async def end_streams(app: web.Application) -> None:
    """``on_shutdown``: end every live stream (they wait on the change signal: wake them)."""
    app[CLOSING].set()
    app[CONTEXT].changed.pulse()


OPENAPI = Path(__file__).parent.parent / "server" / "openapi.yaml"
#: recent changes a dataset page shows at first (then pushed as they come)
RECENT = 20
#: the live stream of changes reads the log at most this often (seconds)
STREAM_PAUSE = 0.25

#: this origin's scripts, styles and images only (thumbnails: presigned URLs elsewhere)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https: http:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'"
)

Handler = Callable[[web.Request], Awaitable[Any]]


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Headers of every answer; HTML ones get the CSP and are never cached or framed."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.content_type == "text/html":
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cache-Control", "no-store")


def _context(request: web.Request) -> dict[str, Any]:
    session = request.get(auth.SESSION)
    token = request.get(auth.TOKEN)
    return {
        "request": request,
        "csrf": session.csrf if session is not None else "",
        "signed_in": token is not None,
        "scope": token.scope if token is not None else None,
        "can_write": token is not None and scopes.allows(token.scope, scopes.WRITE),
    }


def page(template: str, *, status: int = 200) -> Callable[[Handler], Handler]:
    """Render ``template`` with the handler's dict plus the common context (see
    :mod:`syncd.web`). A handler may also return a response of its own."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def render(request: web.Request) -> web.StreamResponse:
            found = await handler(request)
            if isinstance(found, web.StreamResponse):
                return found
            return aiohttp_jinja2.render_template(
                template, request, {**_context(request), **found}, status=status
            )

        return render

    return wrap


def html_error(request: web.Request, status: int, message: str) -> web.Response:
    """An error as a page (the API's errors stay JSON)."""
    return aiohttp_jinja2.render_template(
        "error.html", request, {**_context(request), "message": message}, status=status
    )


# -- static files --------------------------------------------------------------------------

STATIC = Path(__file__).parent / "static"


@functools.cache
def _static_version(name: str) -> str:
    import hashlib

    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:16]


def static_url(name: str) -> str:
    """``/static/NAME?v=HASH`` (the hash of the file's bytes: a changed file is a new URL)."""
    return f"/static/{name}?v={_static_version(name)}"


async def static_file(request: web.Request) -> web.StreamResponse:
    """A file of ``syncd/web/static`` (no listing, nothing outside it; 404 otherwise),
    cacheable for a day (the pages ask for it by a versioned URL)."""
    path = (STATIC / request.match_info["name"]).resolve()
    if not path.is_relative_to(STATIC.resolve()) or not path.is_file():
        return web.json_response({"error": "no such static file"}, status=404)
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})


async def favicon(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(
        STATIC / "favicon.svg",
        headers={"Content-Type": "image/svg+xml", "Cache-Control": "public, max-age=86400"},
    )


# -- filters -------------------------------------------------------------------------------


def _bytes(n: int | None) -> str:
    """``1.5 GiB``, ``12 B``: the exact count is in the cell's title."""
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _when(stamp: str | None) -> str:
    """An ISO time as ``2026-12-07 21:05:54 UTC`` (the time element keeps the exact one)."""
    if not stamp:
        return ""
    try:
        return parse(stamp).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return stamp


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def add_filters(env: jinja2.Environment) -> None:
    env.filters["bytes"] = _bytes
    env.filters["when"] = _when
    env.filters["seconds"] = _seconds
    env.filters["urlpart"] = lambda s: quote(str(s), safe="")
    env.filters["number"] = lambda n: "" if n is None else f"{n:,}"


# -- sign-in -------------------------------------------------------------------------------


def _next_path(raw: str | None) -> str:
    """Where to go after signing in: a local path only (never ``//host`` or a URL)."""
    if raw and raw.startswith("/") and not raw.startswith("//") and "\\" not in raw:
        return raw
    return "/"


async def login_page(request: web.Request) -> web.StreamResponse:
    return aiohttp_jinja2.render_template(
        "login.html",
        request,
        {**_context(request), "error": None, "next": _next_path(request.query.get("next"))},
    )


async def login(request: web.Request) -> web.StreamResponse:
    """Check the form's token like a bearer header (constant time, every token compared,
    the lockout counting a wrong one), then start a session and set its cookie."""
    from syncd.server.app import LOCKOUT, TOKENS

    why = auth.cross_site(request)
    if why is not None:
        return web.json_response({"error": f"refused: {why} (cross-site sign-in)"}, status=403)
    form = await request.post()
    next_path = _next_path(str(form.get("next") or ""))

    def again(status: int, error: str) -> web.StreamResponse:
        return aiohttp_jinja2.render_template(
            "login.html",
            request,
            {**_context(request), "error": error, "next": next_path},
            status=status,
        )

    lockout = request.app[LOCKOUT]
    address = request.remote or ""
    wait = lockout.retry_after(address)
    if wait is not None:
        response = again(429, f"Too many wrong tokens from this address; retry in {wait} s.")
        response.headers["Retry-After"] = str(wait)
        return response
    token = form.get("token")
    if not isinstance(token, str) or not token.strip():
        return again(400, "Enter the API token.")
    given = f"Bearer {token.strip()}".encode("utf-8", "surrogateescape")
    matched = None
    for candidate in request.app[TOKENS]:
        if hmac.compare_digest(given, candidate.header) and matched is None:
            matched = candidate
    if matched is None:
        lockout.failed(address)
        return again(401, "That token is not one of this server's tokens.")
    sid, _ = request.app[auth.SESSIONS].create(matched.name)
    log.info("dashboard sign-in with token %r", matched.name)
    response = see_other(next_path)
    auth.set_cookie(response, request, sid)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    sid = request.cookies.get(auth.COOKIE)
    if sid:
        request.app[auth.SESSIONS].drop(sid)
    response = see_other("/login")
    auth.clear_cookie(response)
    return response


# -- overview ------------------------------------------------------------------------------


async def _health(request: web.Request) -> dict[str, Any]:
    """The daemon's own health, as ``GET /healthz`` answers it."""
    from syncd.server.app import healthz

    answer = await healthz(request)
    body = json.loads(answer.body) if isinstance(answer.body, bytes) else {}
    return body


async def overview(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    totals = request.app[TOTALS]
    found = await ctx.catalog.call(lambda c: data.overview(c, totals))
    totals.refresh(ctx.catalog)
    schedules = {}
    if ctx.scheduler is not None:
        schedules = {row["name"]: ctx.scheduler.state(row["name"]) for row in found["datasets"]}
    values = {
        **found,
        "schedules": schedules,
        "health": await _health(request),
        "queues": data.queue_lags(ctx.metrics),
        "worker_id": ctx.worker_id,
        "now": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }
    template = "overview_live.html" if request.headers.get("HX-Request") else "overview.html"
    return aiohttp_jinja2.render_template(template, request, {**_context(request), **values})


# -- a dataset -----------------------------------------------------------------------------


async def _dataset(request: web.Request, *, full: bool = True) -> dict[str, Any]:
    ctx = request.app[CONTEXT]
    name = request.match_info["name"]
    totals = request.app[TOTALS]
    found = await ctx.catalog.call(
        lambda c: data.dataset_page(c, totals, name) if full else data.dataset_runs(c, name)
    )
    if found is None:
        raise _not_found(request, f"There is no dataset named {name!r}.")
    totals.refresh(ctx.catalog)
    found["schedule"] = ctx.scheduler.state(name) if ctx.scheduler is not None else None
    return found


def _not_found(request: web.Request, message: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(
        text=aiohttp_jinja2.render_string(
            "error.html", request, {**_context(request), "message": message}
        ),
        content_type="text/html",
    )


def _recent(c: Any, name: str) -> tuple[list[dict[str, Any]], int]:
    """The dataset's latest changes (at most :data:`RECENT`, newest last) and the cursor to
    follow from."""
    from syncd.store import changes

    ds = c.find_dataset(name)
    if ds is None:
        return [], changes.head(c.db)
    row = c.db.execute(
        "SELECT cursor, last FROM changes WHERE dataset_id = ? ORDER BY cursor DESC LIMIT 1",
        [ds.id],
    ).fetchone()
    if row is None:
        return [], changes.head(c.db)
    start = max(int(row[0]), int(row[1]) - RECENT + 1) - 1
    found, following = api.read_changes(c, after=start, limit=RECENT, dataset=name)
    return [_change_row(ch) for ch in found], following


def _change_row(change: Any) -> dict[str, Any]:
    item = change.item or {}
    return {
        "cursor": change.cursor,
        "kind": change.kind,
        "source": change.source,
        "at": change.at,
        "key": change.key,
        "size": item.get("size"),
    }


@page("dataset.html")
async def dataset(request: web.Request) -> dict[str, Any]:
    ctx = request.app[CONTEXT]
    found = await _dataset(request)
    recent, cursor = await ctx.catalog.call(lambda c: _recent(c, found["name"]))
    chart = [
        {
            "started_at": r["started_at"],
            "seconds": r["seconds"],
            "changes": r["created"] + r["updated"] + r["deleted"],
            "status": r["status"],
        }
        for r in reversed(found["runs"])
    ]
    chart_data = {"runs": chart, "items": found["items_history"]}
    return {"ds": found, "recent": recent, "cursor": cursor, "chart": chart_data}


@page("runs_table.html")
async def runs_fragment(request: web.Request) -> dict[str, Any]:
    return {"ds": await _dataset(request, full=False)}


async def sync_now(request: web.Request) -> web.StreamResponse:
    """ "Sync now": the API's trigger (``POST /api/v1/datasets/{name}/sync``) answered as a
    page: htmx gets the message fragment; a plain form post returns to the dataset page."""
    from syncd.server.routes import trigger_sync

    name = request.match_info["name"]
    answer = await trigger_sync(request)
    body = json.loads(answer.body) if isinstance(answer.body, bytes) else {}
    ok = answer.status == 202
    message = "A run was started." if ok else body.get("error", "The run could not start.")
    if request.headers.get("HX-Request"):
        return aiohttp_jinja2.render_template(
            "sync_result.html",
            request,
            {**_context(request), "ok": ok, "message": message},
            status=200,
        )
    if answer.status == 404:
        return html_error(request, 404, message)
    return see_other(f"/datasets/{quote(name, safe='')}" + ("" if ok else "?busy=1"))


async def live_changes(request: web.Request) -> web.StreamResponse:
    """Server-sent events: each change of the dataset after ``after`` (or ``Last-Event-ID``)
    as an event ``change`` whose data is its JSON and whose id is its cursor. Woken by this
    process's commits at once, by other processes' within :data:`POLL_SECONDS`."""
    from aiohttp_sse import sse_response

    from syncd.errors import UsageError
    from syncd.store.changes import CursorGone

    ctx = request.app[CONTEXT]
    name = request.match_info["name"]
    raw = request.headers.get("Last-Event-ID") or request.query.get("after", "")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        return web.json_response({"error": "after must be a change cursor (digits)"}, status=400)
    exists = await ctx.catalog.call(lambda c: c.find_dataset(name) is not None)
    if not exists:
        return web.json_response({"error": f"unknown dataset {name!r}"}, status=404)
    after = int(raw)

    def newer(c: Any, after: int) -> tuple[list[dict[str, Any]], int]:
        found, following = api.read_changes(c, after=after, limit=RECENT, dataset=name)
        if len(found) == RECENT:
            # more than a page behind (a first sync writes a change per object): the page
            # shows the newest only, so skip to them instead of sending every one
            return _recent(c, name)
        return [_change_row(ch) for ch in found], following

    closing = request.app[CLOSING]
    async with sse_response(request) as stream:
        while stream.is_connected() and not closing.is_set():
            try:
                rows, after = await ctx.catalog.call(lambda c, a=after: newer(c, a))
            except CursorGone as exc:
                after = exc.head  # pruned under a slow page: go on from the head
                continue
            except UsageError:  # the dataset was removed: nothing more will come
                break
            for row in rows:
                await stream.send(json.dumps(row), event="change", id=str(row["cursor"]))
            # at most one read per STREAM_PAUSE however fast changes come (a sync must not
            # feed the page more than it shows), and within POLL_SECONDS of another
            # process's commit; this process's own commits wake it at once
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    if not rows:
                        await ctx.changed.wait()
                    else:
                        await asyncio.sleep(STREAM_PAUSE)
    return stream


# -- docs ----------------------------------------------------------------------------------


@functools.cache
def _spec() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))


async def openapi_yaml(request: web.Request) -> web.StreamResponse:
    return web.Response(body=OPENAPI.read_bytes(), content_type="application/yaml", charset="utf-8")


@page("docs.html")
async def docs(request: web.Request) -> dict[str, Any]:
    spec = _spec()
    operations = []
    for path, ops in spec.get("paths", {}).items():
        shared = ops.get("parameters", [])
        for method, op in ops.items():
            if method == "parameters":
                continue
            operations.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "anchor": f"{method}-{path}".replace("/", "-").strip("-"),
                    "summary": op.get("summary", ""),
                    "description": op.get("description", ""),
                    "parameters": [_resolve(spec, p) for p in [*shared, *op.get("parameters", [])]],
                    "responses": {
                        code: _resolve(spec, r).get("description", "")
                        for code, r in op.get("responses", {}).items()
                    },
                    "tags": op.get("tags", []),
                }
            )
    return {"info": spec.get("info", {}), "operations": operations}


def _resolve(spec: dict[str, Any], node: Any) -> dict[str, Any]:
    """``node`` with one ``$ref`` to ``#/components/...`` followed."""
    if isinstance(node, dict) and isinstance(node.get("$ref"), str):
        target: Any = spec
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return target if isinstance(target, dict) else {}
    return node if isinstance(node, dict) else {}


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/static/{name:.+}", static_file)
    # what browsers ask for on any answer without an icon link (a JSON error, say)
    r.add_get("/favicon.ico", favicon)
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/", overview)
    r.add_get("/datasets/{name}", dataset)
    r.add_get("/datasets/{name}/runs", runs_fragment)
    r.add_get("/datasets/{name}/live", live_changes)
    r.add_post("/datasets/{name}/sync", sync_now)
    r.add_get("/docs", docs)
    r.add_get("/api/v1/openapi.yaml", openapi_yaml)
