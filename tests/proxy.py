"""A loopback HTTP proxy in front of an emulator: it logs every request, and can fail the
next N with a given answer (or a dropped connection) before forwarding the rest byte for byte,
or fail any request at a rate (:meth:`FaultProxy.inject`).

Tests use it to count what a client really sent (list calls, GETs, PUTs) and to meet the SDKs
with throttling, server errors, resets, slow answers and cut-off bodies, without touching the
SDKs.

Faults at a rate are drawn per request from ``seed``, the request's ``"METHOD path"`` line and
how many times that line was seen before, not from one shared stream: the same run meets the
same faults however its concurrent requests interleave, so a failure can be replayed by seed.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

#: S3's throttling answer (also what the proxy says to the other SDKs: a 503 is a 503)
SLOW_DOWN = (
    503,
    {"Content-Type": "application/xml"},
    b"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>SlowDown</Code>"
    b"<Message>Please reduce your request rate.</Message></Error>",
)
INTERNAL = (
    500,
    {"Content-Type": "application/xml"},
    b"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>InternalError</Code>"
    b"<Message>We encountered an internal error. Please try again.</Message></Error>",
)

#: every fault :meth:`FaultProxy.inject` knows; ``slow`` alone still forwards the request
FAULTS = ("slowdown", "500", "reset", "slow", "truncate")
#: the ones that never let an answer through (what "every request fails" means)
FAILING = ("slowdown", "500", "reset", "truncate")


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up on a reset or cut-short answer is what the tests ask for


class FaultProxy:
    """Fails the next ``fail`` requests with ``reply`` (or a dropped connection), or each
    request at a rate (:meth:`inject`); forwards the rest."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.fail = 0
        self.reply: tuple[int, dict[str, str], bytes] | None = None
        self.requests = 0
        self.only: str | None = None
        self.log: list[str] = []
        self.rate = 0.0
        self.kinds: tuple[str, ...] = FAULTS
        self.seed = 0
        self.delay = 0.3
        self.mask: str | None = None
        self.seen: Counter[str] = Counter()  # how often each request line came, for the draw
        self.injected: Counter[str] = Counter()  # faults given, by kind
        # requests are recorded under this lock before they are answered; ``busy`` counts
        # those still being handled, so a test can wait until every one is finished
        self.lock = threading.Condition()
        self.busy = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                with proxy.lock:
                    proxy.requests += 1
                    proxy.busy += 1
                    line = f"{self.command} {self.path}"
                    proxy.log.append(line)
                    matches = proxy.only is None or proxy.only in line
                    failing = proxy.fail > 0 and matches
                    if failing:
                        proxy.fail -= 1
                    fault = proxy._draw(line) if matches and not failing else None
                    if fault:
                        proxy.injected[fault] += 1
                try:
                    if fault:
                        self._inject(fault)
                    else:
                        self._answer(failing)
                finally:
                    with proxy.lock:
                        proxy.busy -= 1
                        proxy.lock.notify_all()

            def _body(self) -> bytes | None:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None

            def _answer(self, failing: bool) -> None:
                body = self._body()
                if failing:
                    if proxy.reply is None:
                        self._drop()
                        return
                    self._reply(proxy.reply)
                    return
                self._forward(body)

            def _inject(self, fault: str) -> None:
                body = self._body()
                if fault == "slowdown":
                    self._reply(SLOW_DOWN)
                elif fault == "500":
                    self._reply(INTERNAL)
                elif fault == "reset":
                    self._reset()
                elif fault == "slow":
                    time.sleep(proxy.delay)
                    self._forward(body)
                else:
                    # the request reaches the service (a write is done), the answer is cut
                    self._forward(body, truncate=True)

            def _reply(self, reply: tuple[int, dict[str, str], bytes]) -> None:
                status, headers, payload = reply
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(payload))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def _drop(self) -> None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)  # the peer sees the line go dead

            def _reset(self) -> None:
                # SO_LINGER 0: close sends a TCP RST, as a middlebox or a crashed server does
                self.close_connection = True
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()

            def _forward(self, body: bytes | None, truncate: bool = False) -> None:
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=30
                )
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # a HEAD answer has no body but states the object's length
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                if truncate and self.command != "HEAD":
                    # promise more than is sent, then hang up: a body cut off mid-way
                    self.send_header("Content-Length", str(len(data) + 1))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self._drop()
                    return
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if truncate:  # a HEAD has no body to cut: its answer is lost instead
                    self._drop()
                    return
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arm(
        self,
        fail: int,
        reply: tuple[int, dict[str, str], bytes] | None,
        only: str | None = None,
    ) -> None:
        """Fail the next ``fail`` requests (those whose ``"METHOD path"`` line contains
        ``only``, if given) with ``reply``, or a dropped connection when it is None."""
        self.wait_idle()  # nothing from before may be counted after the reset
        with self.lock:
            self.fail, self.reply, self.requests, self.log = fail, reply, 0, []
            self.only, self.rate = only, 0.0

    def inject(
        self,
        rate: float,
        kinds: tuple[str, ...] = FAULTS,
        *,
        seed: int = 0,
        delay: float = 0.3,
        only: str | None = None,
        mask: str | None = None,
    ) -> None:
        """From now on, fail each request (those whose line contains ``only``, if given) with
        probability ``rate``, with one of ``kinds`` (:data:`FAULTS`) drawn evenly:

        * ``slowdown``: S3's 503 SlowDown, XML body; ``500``: an InternalError;
        * ``reset``: the connection reset (TCP RST) before any answer;
        * ``slow``: the answer held back ``delay`` seconds, then forwarded whole;
        * ``truncate``: forwarded (a write is done), then an answer whose Content-Length
          promises more than is sent, and the connection closed.

        The draw is reproducible (see the module docstring); ``mask`` (a fresh bucket's
        name) is left out of the line it is drawn from, so a rerun meets the same faults.
        ``injected`` counts the faults given, by kind.
        """
        unknown = set(kinds) - set(FAULTS)
        assert not unknown and kinds and 0 <= rate <= 1, (rate, kinds)
        self.wait_idle()
        with self.lock:
            self.rate, self.kinds, self.seed, self.delay = rate, tuple(kinds), seed, delay
            self.only, self.mask, self.requests, self.log = only, mask, 0, []
            self.seen.clear()
            self.injected.clear()

    def _draw(self, line: str) -> str | None:
        """The fault for this request, if any (called under the lock)."""
        if not self.rate:
            return None
        if self.mask:
            line = line.replace(self.mask, "<masked>")
        self.seen[line] += 1
        rng = random.Random(f"{self.seed}\0{line}\0{self.seen[line]}")
        if rng.random() >= self.rate:
            return None
        return rng.choice(self.kinds)

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until no request is being handled (the counts are then final)."""
        with self.lock:
            assert self.lock.wait_for(lambda: self.busy == 0, timeout), "proxy never went idle"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests_matching(self, match: object) -> list[str]:
        """The logged ``"METHOD path"`` lines for which ``match(line)`` is true, once every
        request in flight is answered."""
        self.wait_idle()
        with self.lock:
            return [line for line in self.log if match(line)]  # type: ignore[operator]
