"""``syncd serve``: the HTTP API that bucket-event handlers and webhooks deliver to.

* ``POST /api/v1/events``: a provider payload (any format :mod:`syncd.events.parse` reads, or JSON
  lines). Needs ``Authorization: Bearer <SYNCD_API_TOKEN>``. Answers ``200`` with the counts
  applied, ``400`` with one error line for a malformed payload, ``401`` for a wrong token. An
  Event Grid subscription validation event is answered with ``{"validationResponse": code}``.
* ``GET /healthz``: ``200 {"status": "ok"}`` when the catalog answers.

Binds to 127.0.0.1 unless told otherwise. The catalog is written from the event loop: each
request is one short sqlite transaction.
"""

from __future__ import annotations

import hmac
import logging

from aiohttp import web

from syncd.events.apply import apply_events
from syncd.events.parse import EventFormatError, parse_text
from syncd.store.catalog import Catalog

log = logging.getLogger("syncd.server.app")
MAX_BODY = 10 * 1024 * 1024
CATALOG = web.AppKey("catalog", Catalog)
TOKEN = web.AppKey("token", str)


async def events(request: web.Request) -> web.Response:
    given = request.headers.get("Authorization", "")
    expected = f"Bearer {request.app[TOKEN]}"
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return web.json_response({"error": "missing or wrong bearer token"}, status=401)
    body = await request.read()
    try:
        parsed = parse_text(body)
    except EventFormatError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    if parsed.validation_code is not None:
        return web.json_response({"validationResponse": parsed.validation_code})
    result = apply_events(request.app[CATALOG], parsed.events)
    log.info("applied %s; skipped %d", result.as_dict(), len(parsed.skipped))
    return web.json_response({"applied": result.as_dict(), "skipped": parsed.skipped})


async def healthz(request: web.Request) -> web.Response:
    request.app[CATALOG].db.execute("SELECT 1").fetchone()
    return web.json_response({"status": "ok"})


def make_app(catalog: Catalog, token: str) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[CATALOG] = catalog
    app[TOKEN] = token
    app.router.add_post("/api/v1/events", events)
    app.router.add_get("/healthz", healthz)
    return app


def serve(catalog: Catalog, token: str, host: str, port: int) -> None:
    web.run_app(make_app(catalog, token), host=host, port=port, print=None, access_log=None)
