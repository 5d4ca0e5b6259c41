"""A gevent WSGI server in the test's own hub: the peer for the HTTP relay tests.

It runs as greenlets in the same process and hub as the gevent-based client under
test, so the test must only use cooperative (gevent) I/O while talking to it; a
blocking stdlib socket would freeze the hub, and the server with it.
:func:`gevent_http_connection` builds an ``http.client`` connection that is safe here.
"""

from __future__ import annotations

import contextlib
import http.client
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent.pool
import gevent.socket
import pytest
from gevent.pywsgi import WSGIHandler, WSGIServer

from support.tls import TlsCert

__all__ = [
    "DEFAULT_RESPONSE_HEADERS",
    "RecordedRequest",
    "WsgiServer",
    "gevent_http_connection",
    "wsgi_server",
]

HOST = "127.0.0.1"
#: What the default app answers: success, in the form slimta's HTTP relay parses.
DEFAULT_RESPONSE_HEADERS = (("X-Smtp-Reply", '250; message="2.0.0 Ok"'),)
#: Seconds teardown lets open (keep-alive) connections finish before killing them.
STOP_TIMEOUT = 1.0
#: Upper bound on concurrent connections; the pool also lets stop() kill handlers.
MAX_CONNECTIONS = 100
#: environ key where the handler leaves the raw request headers.
_HEADERS_KEY = "slimta.test.headers"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the server received it.

    ``headers`` keeps every header line in order, repeats included (the WSGI environ
    would join repeated ``X-Envelope-Recipient`` headers with commas).
    """

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    client_address: tuple[str, int]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]


class _RawHeadersHandler(WSGIHandler):
    """Passes the parsed header list on to the app next to the WSGI environ."""

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        environ[_HEADERS_KEY] = [(key, value) for key, value in self.headers.items()]
        return environ


class _CountingServer(WSGIServer):
    """A WSGIServer that remembers the client address of every accepted connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client_addresses: list[tuple[str, int]] = []

    def handle(self, sock: Any, address: tuple[str, int]) -> None:
        # Called once per connection (after the TLS wrap, if any); a keep-alive
        # connection serves all its requests inside this one call.
        self.client_addresses.append(address)
        super().handle(sock, address)


@dataclass
class WsgiServer:
    """A running WSGI server: where it listens, what it answers, what it got.

    The default app answers every request with :attr:`status`,
    :attr:`response_headers` and :attr:`response_body`; a test may change them
    between requests.
    """

    host: str
    port: int
    tls: bool
    server: _CountingServer
    status: str = "200 OK"
    response_headers: list[tuple[str, str]] = field(
        default_factory=lambda: list(DEFAULT_RESPONSE_HEADERS)
    )
    response_body: bytes = b""
    requests: list[RecordedRequest] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, as socket APIs want it."""
        return (self.host, self.port)

    @property
    def url(self) -> str:
        """Base URL; ``https`` when TLS is on (the certificate covers 127.0.0.1)."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/"

    @property
    def connections(self) -> list[tuple[str, int]]:
        """Client ``(host, port)`` of every connection accepted so far, in order."""
        return self.server.client_addresses

    @property
    def connection_count(self) -> int:
        """How many distinct connections the server has accepted."""
        return len(self.server.client_addresses)

    def default_app(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """Answer with the configured status, headers and body."""
        start_response(self.status, list(self.response_headers))
        return [self.response_body]

    def recording(self, app: WsgiApp) -> WsgiApp:
        """Wrap ``app`` so every request is recorded before ``app`` sees it."""

        def record(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            body = environ["wsgi.input"].read()
            # The app gets the body again from memory, as if unread.
            environ["wsgi.input"] = io.BytesIO(body)
            self.requests.append(
                RecordedRequest(
                    method=environ["REQUEST_METHOD"],
                    path=environ["PATH_INFO"],
                    query=environ["QUERY_STRING"],
                    headers=environ[_HEADERS_KEY],
                    body=body,
                    client_address=(environ["REMOTE_ADDR"], int(environ["REMOTE_PORT"])),
                )
            )
            return app(environ, start_response)

        return record


WsgiServerFactory = Callable[..., WsgiServer]


@pytest.fixture
def wsgi_server(tls_cert: TlsCert) -> Iterator[WsgiServerFactory]:
    """Factory: ``wsgi_server(app=None, *, tls=False)`` starts a server on 127.0.0.1:0.

    Requests are always recorded in ``.requests``; ``app`` (a WSGI callable) decides
    the answer, the default being 200 with ``X-Smtp-Reply: 250; message="2.0.0 Ok"``.
    With ``tls=True`` it serves HTTPS with the session certificate. Servers are
    stopped at teardown.
    """
    with contextlib.ExitStack() as stack:

        def start(app: WsgiApp | None = None, *, tls: bool = False) -> WsgiServer:
            ssl_args: dict[str, Any] = {}
            if tls:
                # A gevent context: the handshake happens in this hub.
                ssl_args["ssl_context"] = tls_cert.gevent_server_context()
            server = _CountingServer(
                (HOST, 0),
                None,
                handler_class=_RawHeadersHandler,
                spawn=gevent.pool.Pool(MAX_CONNECTIONS),
                log=None,
                **ssl_args,
            )
            wrapper = WsgiServer(host=HOST, port=0, tls=tls, server=server)
            server.application = wrapper.recording(app or wrapper.default_app)
            server.start()
            stack.callback(server.stop, timeout=STOP_TIMEOUT)
            wrapper.port = server.server_port
            return wrapper

        yield start


def gevent_http_connection(
    server: WsgiServer, tls_cert: TlsCert | None = None, timeout: float = 10.0
) -> http.client.HTTPConnection:
    """An ``http.client`` connection to ``server`` that yields to the hub while waiting.

    ``http.client`` opens its socket through ``_create_connection``; pointing that at
    gevent's version (and TLS at a gevent context) keeps it cooperative.
    """
    connection: http.client.HTTPConnection
    if server.tls:
        if tls_cert is None:
            raise ValueError("a TLS server needs tls_cert to verify it")
        connection = http.client.HTTPSConnection(
            server.host, server.port, timeout=timeout, context=tls_cert.client_context()
        )
    else:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    connection._create_connection = gevent.socket.create_connection  # type: ignore[attr-defined]
    return connection
