"""slimta.http: gevent-friendly http.client connections, against a real WSGI server."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import gevent
import gevent.ssl
import pytest
from support.tls import TlsCert
from support.util import GUARD_SECONDS
from support.wsgi_server import WsgiServer

from slimta.http import HTTPConnection, HTTPSConnection, get_connection


@pytest.mark.parametrize(
    ("url", "cls", "host", "port"),
    [
        ("http://example.com:8025/x", HTTPConnection, "example.com", 8025),
        (b"http://example.com/x", HTTPConnection, "example.com", 80),
        ("https://example.com/x", HTTPSConnection, "example.com", 443),
        ("https://user:pw@example.com:8443/", HTTPSConnection, "example.com", 8443),
        (urlsplit("http://[::1]:81/"), HTTPConnection, "::1", 81),
        ("/only/a/path", HTTPConnection, "localhost", 80),
        ("ftp://example.com/", HTTPConnection, "example.com", 80),
    ],
)
def test_get_connection(url: object, cls: type, host: str, port: int) -> None:
    conn = get_connection(url)  # type: ignore[arg-type]
    assert type(conn) is cls
    assert (conn.host, conn.port) == (host, port)
    assert conn.sock is None  # not connected


def test_get_connection_passes_context(tls_cert: TlsCert) -> None:
    context = tls_cert.client_context()
    conn = get_connection("https://localhost/", context)
    assert isinstance(conn, HTTPSConnection)
    assert conn._context is context  # type: ignore[attr-defined]


def test_http_connection_round_trip(wsgi_server: Callable[..., WsgiServer]) -> None:
    server = wsgi_server()
    conn = HTTPConnection(server.host, server.port)
    with gevent.Timeout(GUARD_SECONDS):
        conn.request("POST", "/p?q=1", body=b"data", headers={"X-Test": "yes"})
        response = conn.getresponse()
        response.read()
    conn.close()
    assert response.status == 200
    [request] = server.requests
    assert (request.path, request.query, request.body) == ("/p", "q=1", b"data")
    assert request.header("X-Test") == "yes"


@pytest.mark.parametrize("flavour", ["gevent", "stdlib"])
def test_https_connection_is_cooperative(
    wsgi_server: Callable[..., WsgiServer], tls_cert: TlsCert, flavour: str
) -> None:
    # The server runs in this hub: any blocking socket call would deadlock the test.
    server = wsgi_server(tls=True)
    context = tls_cert.client_context() if flavour == "gevent" else tls_cert.stdlib_client_context()
    conn = HTTPSConnection(server.host, server.port, context=context)
    with gevent.Timeout(GUARD_SECONDS):
        for _ in range(2):
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
        assert isinstance(conn.sock, gevent.ssl.SSLSocket)
        conn.close()
    assert conn.sock is None
    assert response.status == 200
    assert server.connection_count == 1
    assert len(server.requests) == 2


def test_https_default_context_rejects_self_signed(
    wsgi_server: Callable[..., WsgiServer],
) -> None:
    import ssl

    server = wsgi_server(tls=True)
    conn = HTTPSConnection(server.host, server.port)
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(ssl.SSLCertVerificationError):
        conn.connect()
    conn.close()


def test_https_close_without_connect_and_twice() -> None:
    conn = HTTPSConnection("localhost", 1)
    conn.close()
    conn.close()
