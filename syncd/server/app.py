"""The HTTP server of ``syncd run`` and ``syncd serve`` (its API-only mode): one aiohttp app.

* Every path but ``GET /healthz`` (and Event Grid's ``OPTIONS`` handshake, the dashboard's
  sign-in page and static files) needs
  ``Authorization: Bearer <SYNCD_API_TOKEN>``, compared in constant time; a wrong or missing
  token is ``401``. After :data:`~syncd.server.lockout.LIMIT` of those from one address within
  :data:`~syncd.server.lockout.WINDOW` seconds, that address gets ``429`` with ``Retry-After``
  until the window passes (:mod:`syncd.server.lockout`).
* Request bodies are limited to ``MAX_BODY`` bytes (``413``, JSON like every error).
* Every error is JSON, ``{"error": "..."}``, aiohttp's own (404, 405, 413) included, and
  those of its protocol layer (a malformed request line or header: ``400``, never echoing the
  request); an unexpected exception is logged and answered ``500`` without details.
* Each request is logged at INFO: method, path, status, duration (never a header or a body).
* ``SYNCD_API_TOKEN`` (:func:`check_token`): 16+ characters of printable ASCII, no spaces;
  it is ``admin``. ``[tokens.NAME]`` add tokens with a scope (``read``, ``write``, ``admin``);
  a request its token's scope does not allow is ``403`` with a JSON body (the route's scope
  comes from the one table in :mod:`syncd.server.scopes`).
  A header that is not UTF-8 is a wrong token (``401``, counted toward the lockout).
* A connection must send its request headers within
  :data:`~syncd.server.connections.HEADER_TIMEOUT` seconds, and at most a cap of connections
  derived from ``RLIMIT_NOFILE`` are open, the longest-waiting one evicted past it
  (:mod:`syncd.server.connections`): slow clients cannot take every descriptor.
* Binds to 127.0.0.1 unless told otherwise. The catalog is only reached through the daemon's
  catalog thread, so the event loop never blocks on sqlite.

* The dashboard (:mod:`syncd.web`) is served by the same app: its sign-in page and static
  files need no token; its pages take the bearer header or the session cookie of
  :mod:`syncd.web.auth` (which also works for the API, with a CSRF token on every request
  that changes something); a page asked for without either is ``303`` to ``/login``.

The routes are in :mod:`syncd.server.routes`.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from providers.redact import redact
from syncd.errors import CatalogUnavailable, SyncdError, UsageError
from syncd.server import scopes
from syncd.server.connections import (
    HEADER_TIMEOUT,
    AcceptErrorLog,
    ConnectionGuard,
    connection_cap,
    raise_fd_limit,
    serve,
    track_requests,
)
from syncd.server.lockout import AuthLockout
from syncd.server.routes import CONTEXT, Context, add_routes
from syncd.store.db import catalog_error
from syncd.web import auth as web_auth

log = logging.getLogger("syncd.server")
MAX_BODY = 10 * 1024 * 1024
TOKEN = web.AppKey("token", str)


@dataclass(frozen=True)
class Token:
    """An accepted bearer token: its name (``SYNCD_API_TOKEN`` or a ``[tokens.NAME]``), the
    ``Authorization`` header that carries it, and its scope (:mod:`syncd.server.scopes`)."""

    name: str
    header: bytes
    scope: str


TOKENS = web.AppKey("tokens", tuple)
LOCKOUT = web.AppKey("lockout", AuthLockout)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: the shortest SYNCD_API_TOKEN accepted
MIN_TOKEN = 16


def check_token(token: str) -> None:
    """Refuse (``UsageError``, one line) an API token that is too short, or that is not
    printable ASCII without spaces: HTTP strips a header's outer whitespace and clients encode
    headers differently (bytes that are not UTF-8 arrive from the environment as surrogates),
    so such a token could never be matched, or only by some clients."""
    what = "the HTTP API needs SYNCD_API_TOKEN set to a secret of at least 16 characters"
    if len(token) < MIN_TOKEN:
        raise UsageError(what)
    if not all("!" <= ch <= "~" for ch in token):
        raise UsageError(
            f"{what}, printable ASCII without spaces (e.g. from `openssl rand -hex 32`); "
            "this one has whitespace, control or non-ASCII characters"
        )


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413, ...) as JSON, like every other error."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        # the dashboard's pages answer their errors as pages (syncd.web)
        if exc.status < 400 or exc.content_type in ("application/json", "text/html"):
            raise
        reason = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return web.json_response({"error": reason}, status=exc.status, headers=_keep(exc))
    except CatalogUnavailable as exc:  # the catalog is away for now (see CatalogThread)
        return web.json_response({"error": redact(str(exc))}, status=503)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response({"error": "internal error (see the server log)"}, status=500)


def _keep(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "location")}


@web.middleware
async def bearer_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    # the liveness probe, and Event Grid's webhook handshake (it cannot send our token; the
    # answer only echoes its own origin header and writes nothing)
    if (
        request.path == "/healthz"
        or (request.method == "OPTIONS" and request.path == "/api/v1/events")
        or web_auth.is_public(request)  # the sign-in page and static files
    ):
        return await handler(request)
    lockout = request.app[LOCKOUT]
    address = request.remote or ""
    wait = lockout.retry_after(address)
    if wait is not None:
        # refused before the token is looked at: a locked-out guesser learns nothing
        return web.json_response(
            {"error": f"too many wrong bearer tokens from this address; retry in {wait}s"},
            status=429,
            headers={"Retry-After": str(wait)},
        )
    # aiohttp decodes header bytes that are not UTF-8 as surrogates: encode them back to the
    # bytes received (never equal to a token, which check_token keeps ASCII)
    given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    matched: Token | None = None
    for token in request.app[TOKENS]:
        # every token is compared, whichever matches: the time says nothing about which
        if hmac.compare_digest(given, token.header) and matched is None:
            matched = token
    if matched is None and not given:
        # the dashboard's session cookie (syncd.web.auth), with its CSRF checks
        found = await web_auth.session_token(request, request.app[TOKENS])
        if isinstance(found, web.StreamResponse):
            return found
        if found is None and web_auth.wants_page(request):
            return web_auth.to_sign_in(request)  # a browser without a session: no guess
        matched = found
    if matched is None:
        lockout.failed(address)
        return web.json_response({"error": "missing or wrong bearer token"}, status=401)
    route = request.match_info.route
    if route.resource is not None:  # else no route matched: the handler answers 404 or 405
        need = scopes.scope_of(request.method, route.resource.canonical) or scopes.ADMIN
        if not scopes.allows(matched.scope, need):
            return web.json_response(
                {
                    "error": f"token {matched.name!r} has scope {matched.scope}; "
                    f"{request.method} {route.resource.canonical} needs {need}"
                },
                status=403,
            )
    request[web_auth.TOKEN] = matched
    return await handler(request)


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        log.info(
            "%s %s %d %.1fms",
            request.method,
            request.path,
            status,
            (time.monotonic() - started) * 1000,
        )


async def healthz(request: web.Request) -> web.Response:
    """``200 {"status": "ok"}``; ``200 {"status": "degraded", "failing": {name: {"failures":
    n, "last_error": ...}}}`` while scheduled datasets' reconciles keep failing (the daemon
    still works for the others); ``503 {"status": "unavailable", "error": ...}`` while the
    catalog cannot be used: its server unreachable, its sqlite file deleted, replaced,
    truncated or corrupt (the check reads ``_syncd_migrations``, which every catalog has)."""
    ctx = request.app[CONTEXT]
    try:
        await ctx.catalog.check()
    except Exception as exc:
        known = catalog_error(exc, ctx.catalog.path)
        text = str(known) if isinstance(known, SyncdError) else f"catalog cannot be read: {exc}"
        return web.json_response(
            {"status": "unavailable", "error": redact(" ".join(text.split()))}, status=503
        )
    failing = ctx.scheduler.failing() if ctx.scheduler is not None else {}
    if failing:
        return web.json_response({"status": "degraded", "failing": failing})
    return web.json_response({"status": "ok"})


def make_app(
    context: Context,
    token: str,
    *,
    lockout: AuthLockout | None = None,
    tokens: Mapping[str, tuple[str, str]] | None = None,
) -> web.Application:
    """The API app. ``token`` (``SYNCD_API_TOKEN``, scope ``admin``) must be non-empty (the
    CLI requires 16+ characters); ``tokens``: more, ``{name: (value, scope)}`` (the resolved
    ``[tokens.NAME]``); ``lockout`` defaults to :class:`AuthLockout`'s limits."""
    if not token:
        raise ValueError("the API needs a bearer token")
    accepted = [Token("SYNCD_API_TOKEN", f"Bearer {token}".encode(), scopes.ADMIN)]
    for name, (value, scope) in (tokens or {}).items():
        if scope not in scopes.ORDER:
            raise ValueError(f"token {name!r}: unknown scope {scope!r}")
        accepted.append(Token(name, f"Bearer {value}".encode(), scope))
    # order: mark the connection busy (its headers are in), log everything, answer errors as
    # JSON, then check the token
    app = web.Application(
        client_max_size=MAX_BODY,
        middlewares=[track_requests, access_log, json_errors, bearer_token],
    )
    app[CONTEXT] = context
    app[TOKEN] = token
    app[TOKENS] = tuple(accepted)
    app[LOCKOUT] = lockout if lockout is not None else AuthLockout()
    app.router.add_get("/healthz", healthz)
    add_routes(app)
    from syncd.web import setup as setup_web  # the dashboard, on the API's port

    setup_web(app)
    return app


async def start(
    context: Context,
    token: str,
    host: str,
    port: int,
    *,
    lockout: AuthLockout | None = None,
    header_timeout: float = HEADER_TIMEOUT,
    tokens: Mapping[str, tuple[str, str]] | None = None,
) -> tuple[Callable[[], Awaitable[None]], int]:
    """Bind and start serving; returns (stop, the bound port). A busy port or an address that
    cannot be bound is a ``UsageError`` (one line), raised before anything is served.

    Raises the process's open-file limit toward its hard limit and caps the connections
    below it (:mod:`syncd.server.connections`); until ``stop``, the loop's exception handler
    logs failed accepts once a minute instead of a traceback each."""
    loop = asyncio.get_running_loop()
    guard = ConnectionGuard(connection_cap(raise_fd_limit()), header_timeout)
    runner = web.AppRunner(
        make_app(context, token, lockout=lockout, tokens=tokens), access_log=None
    )
    await runner.setup()
    try:
        server = await serve(runner, host, port, guard)
    except OSError as exc:
        await runner.cleanup()
        why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise UsageError(
            f"cannot listen on {host}:{port}: {why}; pick another port or stop what uses it"
        ) from None
    previous = loop.get_exception_handler()
    loop.set_exception_handler(AcceptErrorLog(previous))
    log.debug("serving with at most %d connections", guard.cap)

    async def stop() -> None:
        server.close()
        try:
            await runner.cleanup()
            await server.wait_closed()
        finally:
            guard.close_all()
            loop.set_exception_handler(previous)

    bound = server.sockets[0].getsockname()[1] if server.sockets else port
    return stop, bound
