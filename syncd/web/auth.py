"""Signing in to the dashboard: a session cookie in place of the bearer header, and CSRF.

The contract:

* ``POST /login`` takes the API token (a form field, never a URL) and, when it equals one of
  the server's tokens, creates a session and sets the cookie :data:`COOKIE`: a random id
  (``secrets.token_urlsafe``), ``HttpOnly``, ``SameSite=Strict``, ``Path=/`` (``Secure``
  when the request came over TLS). The token itself is never stored in the cookie, a page or
  a log: the session remembers the token's *name*, and every request looks the token up by
  that name, so its scope (:mod:`syncd.server.scopes`) applies to pages and actions as it
  does to the API. A wrong token counts toward :mod:`syncd.server.lockout` like a wrong
  bearer header.
* The bearer header keeps working everywhere; a request that sends one is judged by it alone
  (a cookie next to it is ignored).
* A request authenticated by the cookie that can change something (any method but ``GET``,
  ``HEAD``, ``OPTIONS``) must carry the session's CSRF token, in the ``X-CSRF-Token`` header
  (htmx, ``fetch``) or the ``csrf`` form field, and must not come from another site: an
  ``Origin`` header naming another host (or port), or ``Sec-Fetch-Site`` other than
  ``same-origin`` or ``none``, is refused (``403``) before the handler runs. Behind a reverse
  proxy, the proxy must pass the ``Host`` header on unchanged. ``POST /login`` gets the same
  origin check (login CSRF).
* Sessions live in the process's memory (a ``TTLCache``: :data:`SESSION_SECONDS` after
  their last use, at most :data:`MAX_SESSIONS`); a restart signs everyone out.
* A page request (``GET`` of a path outside ``/api/`` and ``/metrics``) without any
  credential is redirected to ``/login?next=PATH`` and is not counted as a guess: it tried no
  token.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web
from cachetools import TTLCache

COOKIE = "syncd_session"
#: a session ends this long after its last request
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000
#: the form field and header carrying the CSRF token
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: paths anyone may load: the sign-in page and the static files (no data in either)
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = frozenset({"/login", "/favicon.ico"})


@dataclass(frozen=True)
class Session:
    """A signed-in browser: the name of the token it signed in with, and its CSRF token."""

    token_name: str
    csrf: str


class Sessions:
    """The live sessions, by cookie value (see the module docstring)."""

    def __init__(self, *, seconds: float = SESSION_SECONDS, size: int = MAX_SESSIONS) -> None:
        self._by_id: TTLCache[str, Session] = TTLCache(maxsize=size, ttl=seconds)

    def create(self, token_name: str) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(token_name, secrets.token_urlsafe(32))
        self._by_id[sid] = session
        return sid, session

    def get(self, sid: str) -> Session | None:
        session = self._by_id.get(sid)
        if session is not None:
            self._by_id[sid] = session  # re-inserting restarts its time to live
        return session

    def drop(self, sid: str) -> None:
        self._by_id.pop(sid, None)


SESSIONS = web.AppKey("web_sessions", Sessions)
# aiohttp 3.12+ has typed request keys; older ones take strings
_KEY: Any = getattr(web, "RequestKey", None)
#: request key: the Session a cookie-authenticated request came with
SESSION: Any = _KEY("syncd_session", Session) if _KEY else "syncd_session"
#: request key: the matched token (syncd.server.app.Token) of any authenticated request
TOKEN: Any = _KEY("syncd_token", object) if _KEY else "syncd_token"


def is_public(request: web.Request) -> bool:
    return request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES)


def wants_page(request: web.Request) -> bool:
    """A browser asking for a page: redirect it to sign in rather than answer 401."""
    path = request.path
    return (
        request.method in ("GET", "HEAD")
        and not path.startswith("/api/")
        and path != "/metrics"
        and "Authorization" not in request.headers
    )


def to_sign_in(request: web.Request) -> web.Response:
    """303 to the sign-in page, remembering where the browser was going (a local path).
    An htmx refresh (its session expired under an open page) gets ``HX-Redirect`` instead:
    the whole page goes to sign in, rather than the sign-in form into a table."""
    if request.headers.get("HX-Request"):
        return web.Response(status=204, headers={"HX-Redirect": "/login"})
    return see_other(f"/login?next={quote(request.rel_url.path_qs, safe='/')}")


def see_other(location: str) -> web.Response:
    """A 303 answer (returned, not raised: it may carry a cookie)."""
    return web.Response(status=303, headers={"Location": location})


def cross_site(request: web.Request) -> str | None:
    """Why a state-changing request looks like it came from another site, else None."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"a {fetch_site} request"
    origin = request.headers.get("Origin")
    # the host and port only: behind a proxy that ends TLS the scheme seen here is http
    # while the browser's origin is https (the proxy must pass the Host header on)
    if origin is not None and urlsplit(origin).netloc != request.host:
        return "a request from another origin"
    return None


def _forbidden(why: str) -> web.Response:
    return web.json_response({"error": f"refused: {why} (cross-site request forgery)"}, status=403)


async def session_token(request: web.Request, tokens: Sequence[Any]) -> Any | web.Response | None:
    """The token a request without a bearer header is authenticated with through its session
    cookie (one of ``tokens``, by name), None when it has no live session, or the ``403``
    answer when it changes something without its CSRF token or from another site."""
    sid = request.cookies.get(COOKIE)
    sessions = request.app.get(SESSIONS)
    if not sid or sessions is None:
        return None
    session = sessions.get(sid)
    if session is None:
        return None
    token = next((t for t in tokens if t.name == session.token_name), None)
    if token is None:  # the token is no longer configured
        sessions.drop(sid)
        return None
    if request.method not in SAFE_METHODS:
        why = cross_site(request)
        if why is not None:
            return _forbidden(why)
        given = request.headers.get(CSRF_HEADER)
        if given is None and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            given = (await request.post()).get(CSRF_FIELD)
        if not isinstance(given, str) or not hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), session.csrf.encode()
        ):
            return _forbidden("the form's CSRF token is missing or wrong")
    request[SESSION] = session
    return token


def set_cookie(response: web.StreamResponse, request: web.Request, sid: str) -> None:
    response.set_cookie(
        COOKIE,
        sid,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
    )


def clear_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/")
