"""HTTP client connections that cooperate with the gevent hub.

These are the standard :mod:`http.client` connection classes with their socket
work routed through gevent: :func:`gevent.socket.create_connection` to connect,
and :class:`gevent.ssl.SSLSocket` for TLS. The TLS wrap goes through gevent
whatever :class:`ssl.SSLContext` is given, because with gevent 26 a plain stdlib
context (including the one :mod:`http.client` builds by default) makes sockets
that block the whole hub during the handshake and every read.
"""

from __future__ import annotations

import errno
import logging
import ssl
from http import client as _client
from typing import Any
from urllib.parse import SplitResult, urlsplit

import gevent
import gevent.socket
import gevent.ssl

__all__ = ["HTTPConnection", "HTTPSConnection", "get_connection"]

log = logging.getLogger(__name__)

#: The most time :meth:`HTTPSConnection.close` spends on the TLS close_notify
#: exchange, so a peer that never answers cannot hold the caller.
CLOSE_NOTIFY_TIMEOUT_SECONDS = 2.0


class HTTPConnection(_client.HTTPConnection):
    """:class:`http.client.HTTPConnection` connecting with gevent sockets.

    :param host: the host name, optionally with ``:port``.
    :param port: the port, when not part of ``host``.

    Any other argument is passed to :class:`http.client.HTTPConnection`.
    """

    def __init__(self, host: str, port: int | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(host, port, *args, **kwargs)
        self._create_connection = gevent.socket.create_connection


class HTTPSConnection(_client.HTTPSConnection):
    """:class:`http.client.HTTPSConnection` connecting with gevent sockets.

    :param host: the host name, optionally with ``:port``.
    :param port: the port, when not part of ``host``.

    Pass ``context=`` to choose the :class:`ssl.SSLContext`; without one the
    server certificate is verified against the system's trusted CAs. Any other
    argument is passed to :class:`http.client.HTTPSConnection`.
    """

    def __init__(self, host: str, port: int | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(host, port, *args, **kwargs)
        self._create_connection = gevent.socket.create_connection

    def connect(self) -> None:
        """Connect, then run the TLS handshake without blocking the hub."""
        _client.HTTPConnection.connect(self)
        server_hostname = getattr(self, "_tunnel_host", None) or self.host
        context: ssl.SSLContext = self._context  # type: ignore[attr-defined]
        # gevent's SSLSocket accepts any context: it only borrows the context's
        # C-level wrapper and does its own cooperative I/O. On failure it closes
        # the file descriptor itself; the plain socket is already detached.
        self.sock = gevent.ssl.SSLSocket(
            sock=self.sock, server_hostname=server_hostname, _context=context
        )

    def close(self) -> None:
        """Send the TLS close_notify (best effort), then close the connection."""
        sock = self.sock
        if isinstance(sock, ssl.SSLSocket | gevent.ssl.SSLSocket):
            _unwrap_quietly(sock)
        super().close()


def _unwrap_quietly(sock: Any) -> None:
    """Try a TLS shutdown; a peer that already hung up is not an error here."""
    try:
        with gevent.Timeout(CLOSE_NOTIFY_TIMEOUT_SECONDS, False):
            sock.unwrap()
    except (OSError, ValueError) as exc:
        # errno 0 is OpenSSL's "unexpected EOF"; anything else is logged only,
        # since closing must always succeed.
        if getattr(exc, "errno", None) not in (0, None, errno.ENOTCONN, errno.EPIPE):
            log.debug("TLS unwrap failed while closing: %r", exc)


def get_connection(
    url: bytes | str | SplitResult, context: ssl.SSLContext | None = None
) -> HTTPConnection | HTTPSConnection:
    """Build (but do not open) a connection for ``url``.

    :param url: the URL as ``bytes``, ``str`` (the scheme defaults to ``http``)
        or an already split :class:`~urllib.parse.SplitResult`.
    :param context: the TLS context for ``https`` URLs.
    :returns: an :class:`HTTPSConnection` for ``https``, else an
        :class:`HTTPConnection`, to the URL's host (``localhost`` when empty).
    """
    if isinstance(url, bytes):
        url = url.decode("utf-8")
    if isinstance(url, str):
        url = urlsplit(url, "http")
    # Credentials in the netloc are not part of the address to connect to.
    host = url.netloc.rpartition("@")[2] or "localhost"
    if url.scheme == "https":
        return HTTPSConnection(host, context=context)
    return HTTPConnection(host)
