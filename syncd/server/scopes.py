"""What each API token may call: its scope, and the one table that gives every route one.

Scopes are ordered, each allowing what the ones before it allow:

* ``read``: every ``GET`` (datasets, items, runs, changes, workers, webhooks, sinks,
  metrics), except integrations;
* ``write``: and syncs (``POST .../sync``), bucket events (``POST /api/v1/events``), item
  metadata edits (``PATCH .../items/{key}``, ``POST .../items:update``) and snapshots
  created or removed (``POST .../snapshots``, ``DELETE .../snapshots/{tag}``);
* ``admin``: and creating, changing and removing datasets and integrations (their references
  say where secrets live, so even reading them is ``admin``).

``SYNCD_API_TOKEN`` is ``admin``; ``[tokens.NAME]`` declare others (:class:`syncd.config.
TokenConfig`). A route is classified by its method and its registered path pattern (aiohttp's
canonical form, ``/api/v1/datasets/{name}/items/{key}``) through :data:`RULES`, first match
wins, so a new route gets a scope by rule: a ``GET`` is ``read``. A route no rule matches needs
``admin`` (the safe default), and ``tests/test_token_scopes.py`` fails for it until a rule
names it.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

READ, WRITE, ADMIN = "read", "write", "admin"
#: what needs no token at all: the liveness probe, Event Grid's handshake (it cannot send one)
PUBLIC = "public"
#: the scopes in order: a token's scope allows its own and every one before it
ORDER = (READ, WRITE, ADMIN)

#: ``(method, path pattern, scope)``: the first whose method equals the request's (``*``:
#: any) and whose pattern matches the route's canonical path (``fnmatch``: ``*`` also spans
#: ``/``) decides
RULES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/healthz", PUBLIC),
    ("OPTIONS", "/api/v1/events", PUBLIC),
    # the dashboard (syncd.web): its sign-in page and static files need no token
    ("GET", "/login", PUBLIC),
    ("POST", "/login", PUBLIC),
    ("GET", "/static/{name}", PUBLIC),
    ("GET", "/favicon.ico", PUBLIC),
    ("POST", "/logout", READ),
    ("POST", "/datasets/{name}/sync", WRITE),
    # datasets and integrations at run time
    ("*", "/api/v1/integrations", ADMIN),
    ("POST", "/api/v1/datasets", ADMIN),
    ("PATCH", "/api/v1/datasets/{name}", ADMIN),
    ("DELETE", "/api/v1/datasets/{name}", ADMIN),
    # what changes items or runs work
    ("POST", "/api/v1/datasets/{name}/sync", WRITE),
    ("POST", "/api/v1/events", WRITE),
    ("PATCH", "/api/v1/datasets/{name}/items/*", WRITE),
    ("POST", "/api/v1/datasets/{name}/items:update", WRITE),
    # snapshots: creating and removing one (their items are never written)
    ("POST", "/api/v1/datasets/{name}/snapshots", WRITE),
    ("DELETE", "/api/v1/datasets/{name}/snapshots/{tag}", WRITE),
    # everything else that only reads
    ("GET", "*", READ),
    ("HEAD", "*", READ),
)


def scope_of(method: str, pattern: str) -> str | None:
    """The scope a request of ``method`` to the route registered as ``pattern`` needs
    (:data:`PUBLIC` for none); None when no rule names it (then callers require ``admin``)."""
    for rule_method, rule_pattern, scope in RULES:
        if rule_method in ("*", method) and fnmatchcase(pattern, rule_pattern):
            return scope
    return None


def allows(have: str, need: str) -> bool:
    """Whether a token of scope ``have`` may make a request that needs ``need``."""
    if need == PUBLIC:
        return True
    return ORDER.index(have) >= ORDER.index(need)
