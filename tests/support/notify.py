"""Local notification servers on 127.0.0.1 for the notify tests: an HTTP(S) webhook sink that
records what it receives and an SMTP server that wants AUTH; both on ports the OS picks."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

LOOPBACK = "127.0.0.1"
SMTP_USER = "alerts"
SMTP_PASSWORD = "s3cr3t-Pa55w0rd"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)


@dataclass
class HttpSink:
    """A ThreadingHTTPServer that answers 200 "ok" (what Slack webhooks answer) and records."""

    server: ThreadingHTTPServer
    scheme: str = "http"
    requests: list[Recorded] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def base(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.port}"


class _JoiningServer(ThreadingHTTPServer):
    # Non-daemon request threads, so server_close() joins every one of them.
    daemon_threads = False


def start_sink(ssl_context: Any = None) -> tuple[HttpSink, threading.Thread]:
    lock = threading.Lock()
    recorded: list[Recorded] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with lock:
                recorded.append(Recorded("POST", self.path, dict(self.headers.items()), body))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = _JoiningServer((LOOPBACK, 0), Handler)
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    sink = HttpSink(server, "https" if ssl_context else "http", recorded)
    thread = threading.Thread(target=server.serve_forever, name="notify-test-http")
    thread.start()
    return sink, thread


def stop_sink(sink: HttpSink, thread: threading.Thread) -> None:
    sink.server.shutdown()
    sink.server.server_close()
    thread.join()


class _LocalSMTP(Controller):
    """aiosmtpd's Controller on an ephemeral port (it has no port-0 support of its own)."""

    async def _bind(self) -> Any:
        server = await self.loop.create_server(
            self._factory_invoker, host=self.hostname, port=0, ssl=self.ssl_context
        )
        self.port = server.sockets[0].getsockname()[1]
        return server

    def _create_server(self) -> Any:
        return self._bind()


@dataclass
class SmtpSink:
    port: int
    messages: list[email.message.EmailMessage] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)


@contextmanager
def serve_smtp() -> Iterator[SmtpSink]:
    """An SMTP server on 127.0.0.1 that wants AUTH (PLAIN/LOGIN, allowed without TLS here)."""
    sink = SmtpSink(port=0)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            if not session.authenticated:
                return "530 5.7.0 Authentication required"
            parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
            sink.messages.append(parsed)
            return "250 OK"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = isinstance(data, LoginPassword) and data.password == SMTP_PASSWORD.encode()
        if ok:
            sink.logins.append(data.login.decode())
        # handled=False: aiosmtpd itself answers (235, or 535 for a wrong password)
        return AuthResult(success=ok, handled=False)

    controller = _LocalSMTP(
        Handler(),
        hostname=LOOPBACK,
        authenticator=authenticator,
        auth_require_tls=False,
        auth_required=True,
    )
    controller.start()
    sink.port = controller.port
    try:
        yield sink
    finally:
        controller.stop()


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]
