"""A loopback HTTP proxy in front of an emulator: it logs every request, and can fail the
next N with a given answer (or a dropped connection) before forwarding the rest byte for byte.

Tests use it to count what a client really sent (list calls, GETs, PUTs) and to meet the SDKs
with throttling and resets, without touching the SDKs.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class FaultProxy:
    """Fails the next ``fail`` requests with ``reply`` (or a dropped connection), forwards the rest."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.fail = 0
        self.reply: tuple[int, dict[str, str], bytes] | None = None
        self.requests = 0
        self.only: str | None = None
        self.log: list[str] = []
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
                    failing = proxy.fail > 0 and (proxy.only is None or proxy.only in line)
                    if failing:
                        proxy.fail -= 1
                try:
                    self._answer(failing)
                finally:
                    with proxy.lock:
                        proxy.busy -= 1
                        proxy.lock.notify_all()

            def _answer(self, failing: bool) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if failing:
                    if proxy.reply is None:
                        self.close_connection = True
                        self.connection.shutdown(2)  # a reset, as a flaky network gives
                        return
                    status, headers, payload = proxy.reply
                    self.send_response(status)
                    for k, v in {**headers, "Content-Length": str(len(payload))}.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=30
                )
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # a HEAD answer has no body but states the object's length
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
            self.only = only

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
