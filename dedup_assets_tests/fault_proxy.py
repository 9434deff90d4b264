"""A fault-injecting HTTP proxy on loopback, between the Azure SDK and Azurite.

A chosen share of requests is answered with a fault instead of Azurite's answer:

- ``500``, ``503`` (ServerBusy) or ``429`` (throttled, with a Retry-After) without reaching
  Azurite;
- ``drop``: the connection is closed before the request reaches Azurite;
- ``lost``: the request reaches Azurite (and takes effect), then the connection is closed
  without an answer, so the client cannot know it succeeded;
- ``lost500``: the request takes effect, then the client gets a 500.

Every Copy Blob request (PUT with ``x-ms-copy-source``) is recorded with Azurite's status, so
a test can tell how many copies really took effect per destination.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

FAULTS = ("500", "503", "429", "drop", "lost", "lost500")
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # dropped connections are the point
        pass


class FaultProxy:
    def __init__(
        self,
        upstream_port: int,
        *,
        failure_rate: float = 0.0,
        faults: tuple[str, ...] = FAULTS,
        seed: int = 0,
        retry_after: tuple[str, str] = ("x-ms-retry-after-ms", "50"),
    ) -> None:
        self.upstream_port = upstream_port
        self.failure_rate = failure_rate
        self.faults = faults
        self.retry_after = retry_after
        self.script: list[str] = []  # faults given to the next requests, before the random ones
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.injected: Counter[str] = Counter()
        self.copies: list[tuple[str, int]] = []  # (destination path, Azurite's status)
        self._server: ThreadingHTTPServer | None = None
        self.port: int | None = None

    # -- bookkeeping --------------------------------------------------------------------

    def _decide(self) -> str | None:
        with self._lock:
            self.requests += 1
            if self.script:
                fault = self.script.pop(0)
            elif self.failure_rate and self._rng.random() < self.failure_rate:
                fault = self._rng.choice(self.faults)
            else:
                fault = None
            if fault:
                self.injected[fault] += 1
            return fault

    def effective_copies(self) -> Counter[str]:
        """Destination path -> number of Copy Blob requests Azurite accepted (202)."""
        with self._lock:
            return Counter(dest for dest, status in self.copies if status == 202)

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = 0
            self.injected.clear()
            self.copies.clear()

    # -- serving ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = do_OPTIONS = _handle

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- one request --------------------------------------------------------------------

    @staticmethod
    def _drop(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        try:
            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send_error(self, handler: BaseHTTPRequestHandler, status: int, code: str) -> None:
        body = (
            f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
            f"<Message>injected by the test proxy</Message></Error>"
        ).encode()
        handler.send_response(status)
        handler.send_header("x-ms-error-code", code)
        handler.send_header("Content-Type", "application/xml")
        if status in (429, 503):
            handler.send_header(*self.retry_after)
        if handler.command == "HEAD":
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        else:
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes):
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP}
            headers["Host"] = f"127.0.0.1:{self.upstream_port}"
            conn.request(handler.command, handler.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.getheaders(), data
        finally:
            conn.close()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
            raise RuntimeError("the test proxy does not support chunked request bodies")
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        fault = self._decide()
        if fault in ("500", "503", "429"):
            code = {"500": "InternalError", "503": "ServerBusy", "429": "TooManyRequests"}[fault]
            self._send_error(handler, int(fault), code)
            return
        if fault == "drop":
            self._drop(handler)
            return
        status, headers, data = self._forward(handler, body)
        if handler.command == "PUT" and handler.headers.get("x-ms-copy-source"):
            dest = unquote(urlsplit(handler.path).path)
            with self._lock:
                self.copies.append((dest, status))
        if fault == "lost":
            self._drop(handler)
            return
        if fault == "lost500":
            self._send_error(handler, 500, "InternalError")
            return
        handler.send_response(status)
        for k, v in headers:
            if k.lower() not in _HOP and k.lower() != "content-length":
                handler.send_header(k, v)
        if handler.command == "HEAD":
            length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
            handler.send_header("Content-Length", length)
            handler.end_headers()
        else:
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
