"""The API's connections: a header-read timeout, a cap on open connections, quiet accept errors.

aiohttp has no header-read timeout, so a client that sends its request headers a byte at a
time (slowloris) keeps a connection, and a descriptor, for as long as it likes; a thousand of
them used every descriptor of a process at systemd's default limit, after which the daemon
could neither accept requests nor open its own outbound connections (queue consumers, bucket
listings), and asyncio logged a traceback for every accept that failed (issue 21). Here:

* A connection is **waiting** from the moment it is accepted until a request's headers have
  been read (the app's :func:`track_requests` middleware marks it **busy**), and again from
  the end of each response until the next request's headers. A connection waiting longer
  than ``header_timeout`` seconds is closed: the header-read timeout, which is also the idle
  timeout of a keep-alive connection.
* At most ``cap`` connections are open (:func:`connection_cap`, from ``RLIMIT_NOFILE``, which
  :func:`raise_fd_limit` first raises toward its hard limit): room stays for the daemon's
  own descriptors. A connection accepted past the cap evicts the connection that has been
  waiting longest, so a slow or idle client never keeps out one that sends its request at
  once; only when every connection is busy is the newcomer itself closed. A request in
  progress is never cut.
* Errors aiohttp answers before the app sees the request (a malformed request line or header)
  are ``{"error": ...}`` JSON that does not echo the request, logged as one line.
* :class:`AcceptErrorLog`, a loop exception handler, logs asyncio's "socket.accept() out of
  system resource" once per interval with a count, instead of a traceback per accept.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import http_exceptions, web

log = logging.getLogger("syncd.server")

#: seconds a connection may take to send a request's headers (from its accept, or from the
#: end of its previous response: the keep-alive idle time is the same)
HEADER_TIMEOUT = 30.0
#: the listening socket's backlog: connections the kernel queues before they are accepted
BACKLOG = 128
#: never more open connections than this, however high the descriptor limit
MAX_CONNECTIONS = 4096
#: the descriptor limit :func:`raise_fd_limit` asks for (when the hard limit allows it)
WANTED_FDS = 65536
#: seconds between two log lines about refused accepts or evicted connections
LOG_INTERVAL = 60.0


def raise_fd_limit(wanted: int = WANTED_FDS) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` toward ``wanted`` (never above the hard limit, never
    lowering it); returns the soft limit now in force. A refusal leaves the limit as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft if soft != resource.RLIM_INFINITY else wanted


def connection_cap(fd_limit: int) -> int:
    """How many connections the API keeps open under a descriptor limit of ``fd_limit``: what
    is left after a quarter of it (at least a backlog's worth of accepts in flight plus 64) for
    the daemon's own files and outbound connections; at least 8, at most MAX_CONNECTIONS."""
    headroom = max(fd_limit // 4, BACKLOG + 64)
    return max(8, min(MAX_CONNECTIONS, fd_limit - headroom))


class ConnectionGuard:
    """The open connections of one server, and which of them are waiting for headers.

    Everything runs on the event loop, so no lock is needed.
    """

    def __init__(
        self,
        cap: int,
        header_timeout: float = HEADER_TIMEOUT,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cap < 1 or header_timeout <= 0:
            raise ValueError("cap and header_timeout must be positive")
        self.cap, self.header_timeout = cap, header_timeout
        # insertion order is waiting order: the first is the one waiting longest
        self._waiting: dict[GuardedRequestHandler, asyncio.TimerHandle] = {}
        self._busy: set[GuardedRequestHandler] = set()
        #: connections closed for taking too long over their headers, or evicted by the cap
        self.timed_out = 0
        self.evicted = 0
        self.refused = 0
        self._clock = clock
        self._next_log = 0.0
        self._unlogged = 0

    def __len__(self) -> int:
        return len(self._waiting) + len(self._busy)

    def opened(self, conn: GuardedRequestHandler) -> None:
        """A connection was accepted: it waits for its headers; past the cap, the one waiting
        longest is closed (the newcomer itself if every other connection is busy)."""
        self._wait(conn)
        if len(self) <= self.cap:
            return
        oldest = next((c for c in self._waiting if c is not conn), None)
        if oldest is None:
            self.refused += 1
            self._drop(conn)
        else:
            self.evicted += 1
            self._drop(oldest)
        self._note_crowding()

    def busy(self, conn: GuardedRequestHandler) -> None:
        """A request's headers were read: no timeout and no eviction until its response."""
        timer = self._waiting.pop(conn, None)
        if timer is not None:
            timer.cancel()
            self._busy.add(conn)

    def idle(self, conn: GuardedRequestHandler) -> None:
        """A response was sent: the connection waits for the next request's headers."""
        if conn in self._busy or conn in self._waiting:
            self._busy.discard(conn)
            self._forget_timer(conn)
            self._wait(conn)

    def closed(self, conn: GuardedRequestHandler) -> None:
        self._busy.discard(conn)
        self._forget_timer(conn)

    def close_all(self) -> None:
        """Cancel every timer (the server is stopping; aiohttp closes the connections)."""
        for timer in self._waiting.values():
            timer.cancel()
        self._waiting.clear()
        self._busy.clear()

    def _wait(self, conn: GuardedRequestHandler) -> None:
        loop = asyncio.get_running_loop()
        self._waiting[conn] = loop.call_later(self.header_timeout, self._expire, conn)

    def _forget_timer(self, conn: GuardedRequestHandler) -> None:
        timer = self._waiting.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, conn: GuardedRequestHandler) -> None:
        if conn in self._waiting:
            self.timed_out += 1
            self._drop(conn)

    def _drop(self, conn: GuardedRequestHandler) -> None:
        self.closed(conn)
        conn.force_close()

    def _note_crowding(self) -> None:
        # one line per interval: an attack must not turn into a flood of log lines
        self._unlogged += 1
        now = self._clock()
        if now < self._next_log:
            return
        log.warning(
            "the API is at its cap of %d open connections: closed %d that had not sent "
            "their request headers (slow or idle clients); raise LimitNOFILE for more",
            self.cap,
            self._unlogged,
        )
        self._unlogged = 0
        self._next_log = now + LOG_INTERVAL


#: a protocol-level error, said without echoing the request
_PARSE_ERRORS: list[tuple[type[Exception], str]] = [
    (http_exceptions.LineTooLong, "request line or header too long"),
    (http_exceptions.BadHttpMethod, "malformed request method"),
    (http_exceptions.BadStatusLine, "malformed request line"),
    (http_exceptions.InvalidHeader, "malformed header"),
    (http_exceptions.InvalidURLError, "malformed request target"),
    (http_exceptions.PayloadEncodingError, "malformed request body framing"),
]


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's connection protocol, reporting to a :class:`ConnectionGuard`, and answering
    the errors it raises itself as JSON."""

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.guard.opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.closed(self)
        super().connection_lost(exc)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self.guard.idle(self)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A JSON ``{"error": ...}`` that never echoes the request (aiohttp's own answer is
        text quoting the bad request line); a parse error is one log line, not a traceback."""
        if request.writer.output_size > 0:  # a response has begun: nothing more can be said
            raise ConnectionError("the response was already begun")
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            error = "internal error (see the server log)" if status == 500 else "timed out"
        else:
            error = next(
                (what for kind, what in _PARSE_ERRORS if isinstance(exc, kind)),
                "malformed HTTP request",
            )
            log.info("%s from %s: %s", status, request.remote, error)
        resp = web.json_response({"error": error}, status=status)
        resp.force_close()
        return resp


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def track_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Mark the connection busy: its request's headers are read (outermost middleware)."""
    conn = request.protocol
    if isinstance(conn, GuardedRequestHandler):
        conn.guard.busy(conn)
    return await handler(request)


async def serve(
    runner: web.BaseRunner,
    host: str,
    port: int,
    guard: ConnectionGuard,
) -> asyncio.AbstractServer:
    """Listen on ``host:port`` with ``runner``'s server (after ``runner.setup()``), each
    connection a :class:`GuardedRequestHandler` of ``guard``. Raises ``OSError`` if the address
    cannot be bound. To stop: close the returned server, then ``runner.cleanup()``."""
    manager = runner.server
    if manager is None:
        raise RuntimeError("call runner.setup() first")
    loop = asyncio.get_running_loop()

    def connection() -> GuardedRequestHandler:
        return GuardedRequestHandler(manager, guard=guard, loop=loop, access_log=None)

    return await loop.create_server(connection, host, port, backlog=BACKLOG)


class AcceptErrorLog:
    """An event loop exception handler: asyncio's "socket.accept() out of system resource"
    (no descriptor left; asyncio retries the accept a second later) is logged once per
    ``interval`` with how many accepts failed, without a traceback; anything else goes to
    ``previous`` (or the loop's default handler)."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(
        self,
        previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None,
        interval: float = LOG_INTERVAL,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.previous, self.interval, self._clock = previous, interval, clock
        self._next_log = 0.0
        self._unlogged = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not str(context.get("message", "")).startswith(self.MESSAGE):
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self._unlogged += 1
        now = self._clock()
        if now < self._next_log:
            return
        exc = context.get("exception")
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.error(
            "cannot accept connections: %s (%d failed accepts); too many open files? "
            "raise LimitNOFILE",
            why,
            self._unlogged,
        )
        self._unlogged = 0
        self._next_log = now + self.interval
