"""A recording HTTP server on 127.0.0.1, and a webhook receiver built on it.

``FakeHttpServer`` (http.server.ThreadingHTTPServer in a thread, on a free port) records every
request and answers with the next queued ``Reply`` (or the default one): any status, headers and
body, a hang past the client's timeout, a dropped connection, or an endless body.
``WebhookReceiver`` also verifies every request with the ``standardwebhooks`` library.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hang: float = 0.0  # seconds to wait before answering (released early when the server stops)
    drop: bool = False  # close the connection without any answer
    stream_bytes: int = 0  # announce and send this many body bytes (until the client goes away)


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    verified_by: tuple[int, ...] = ()  # WebhookReceiver: indexes of the secrets that verify it
    at: float = field(default_factory=time.monotonic)  # when it arrived


class FakeHttpServer:
    def __init__(self, default: Reply | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.default = default or Reply()
        self.scheme = "https" if tls else "http"
        self.received: list[Received] = []
        self.streamed_bytes = 0
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def reply_with(self, *replies: Reply) -> None:
        with self._lock:
            self._replies.extend(replies)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def record(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Received:
        return Received(method, path, headers, body)

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._replies.popleft() if self._replies else self.default

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return None

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {name.lower(): value for name, value in self.headers.items()}
                received = fake.record(self.command, self.path, headers, body)
                reply = fake._next_reply()
                with fake._lock:
                    fake.received.append(received)
                if reply.hang:
                    fake._stopping.wait(reply.hang)
                    self.close_connection = True
                    with contextlib.suppress(OSError):  # the client gave up waiting, as it should
                        self._answer(reply)
                    return
                self._answer(reply)

            def _answer(self, reply: Reply) -> None:
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                length = reply.stream_bytes or len(reply.body)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if not reply.stream_bytes:
                    self.wfile.write(reply.body)
                    return
                chunk = b"x" * 65536
                self.close_connection = True
                try:
                    sent = 0
                    while sent < reply.stream_bytes and not fake._stopping.is_set():
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        with fake._lock:
                            fake.streamed_bytes += len(chunk)
                except OSError:
                    pass  # the client stopped reading and closed: what it should do

            do_GET = do_POST = do_PUT = do_DELETE = _handle  # noqa: N815

        return Handler


def new_secret(seed: bytes) -> str:
    """A Standard Webhooks secret, "whsec_" + base64 of the key bytes."""
    return "whsec_" + base64.b64encode(seed.ljust(24, b"\0")).decode()


class WebhookReceiver(FakeHttpServer):
    """Records every delivery and which of ``secrets`` verify it (standardwebhooks.Webhook)."""

    def __init__(
        self, secrets: list[str], default: Reply | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        super().__init__(default, tls)
        self.secrets = secrets

    def record(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Received:
        return Received(method, path, headers, body, verified_by=self.verifying(headers, body))

    def verifying(self, headers: dict[str, str], body: bytes) -> tuple[int, ...]:
        verified = []
        for index, secret in enumerate(self.secrets):
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            verified.append(index)
        return tuple(verified)

    def each_signature_verifies(self, received: Received) -> bool:
        """Every "v1,..." entry of webhook-signature verifies alone with one known secret."""
        signatures = received.headers.get("webhook-signature", "").split()
        if not signatures:
            return False
        for signature in signatures:
            alone = {**received.headers, "webhook-signature": signature}
            if not self.verifying(alone, received.body):
                return False
        return True
