"""The dashboard: server-rendered pages on the API's port (``syncd run``, ``syncd serve``).

:func:`setup` adds it to the API app (:func:`syncd.server.app.make_app` calls it): a Jinja2
environment (``aiohttp_jinja2``, autoescape on for every template), the static files of
``syncd/web/static`` (htmx and uPlot vendored under ``static/vendor`` with their licences:
no CDN, no Node build), the pages' routes, and the security headers of every HTML answer
(a Content-Security-Policy allowing only this origin's scripts and styles, no framing).

Authentication is the API's middleware (:func:`syncd.server.app.bearer_token`): a bearer
header, or the session cookie of :mod:`syncd.web.auth` (with its CSRF checks); each route's
scope comes from :data:`syncd.server.scopes.RULES`, like the API's.

Adding a page:

1. a handler in :mod:`syncd.web.pages` (or a module of its own) decorated with
   ``@page("name.html")``: it returns the template's context (a dict); the decorator
   renders it with ``request``, ``csrf`` (the session's CSRF token, for forms and
   ``hx-headers``), ``scope`` and ``signed_in`` added, and sends the security headers;
2. ``templates/name.html`` extending ``base.html`` (``{% block title %}``, ``{% block
   main %}``); every value is escaped unless marked safe (never mark data safe);
3. the route in :func:`add_routes` (``r.add_get("/path", handler)``); a method other than
   GET/HEAD also needs a rule in :data:`syncd.server.scopes.RULES` (else it is ``admin``),
   and its form a hidden ``<input name="csrf" value="{{ csrf }}">``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

TEMPLATES = Path(__file__).parent / "templates"


def setup(app: web.Application) -> None:
    """Add the dashboard to the API app ``app`` (before it starts)."""
    import aiohttp_jinja2
    import jinja2

    from syncd.web import auth, pages

    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    pages.add_filters(env)
    # static("app.css"): the file's URL with ?v=<hash of its bytes>, so a new version is
    # never served from a browser's cache
    env.globals["static"] = pages.static_url
    app[auth.SESSIONS] = auth.Sessions()
    app[pages.TOTALS] = pages.data.Totals()
    app.on_response_prepare.append(pages.security_headers)
    app[pages.CLOSING] = asyncio.Event()
    app.on_shutdown.append(pages.end_streams)
    pages.add_routes(app)
