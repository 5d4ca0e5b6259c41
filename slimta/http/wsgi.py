"""A base for WSGI applications whose requests and responses are logged.

:class:`WsgiServer` is a WSGI application: subclasses implement
:meth:`WsgiServer.handle`, and calling the object logs the request and the
response status through :mod:`slimta.logging.http`. :meth:`WsgiServer.build_server`
wraps it in a :class:`gevent.pywsgi.WSGIServer`.
"""

from __future__ import annotations

import socket as _socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from gevent.pywsgi import Input as _GeventInput
from gevent.pywsgi import WSGIHandler as _GeventWSGIHandler
from gevent.pywsgi import WSGIServer as _GeventWSGIServer

from slimta import logging

__all__ = ["WsgiServer", "SKIP_BODY_KEY", "LINGER_SECONDS", "LINGER_BYTES"]

log = logging.getHttpLogger(__name__)

#: Default of :attr:`WsgiServer.socket_timeout`, in seconds.
DEFAULT_SOCKET_TIMEOUT_SECONDS = 60.0

#: The WSGI environ key an application sets to a true value when it answers
#: without reading the request body (a ``413`` for a body over the limit): a
#: server made by :meth:`WsgiServer.build_server` then sends the response and
#: closes the connection instead of reading the rest of the body, as gevent
#: otherwise does to keep the connection alive.
SKIP_BODY_KEY = "slimta.http.skip_body"
#: After such a response, the longest the server goes on taking (and dropping)
#: what the client still sends before it closes, in seconds. The response went
#: out first and the server has shut its side down: this only spares a client
#: that is still sending a reset (which can destroy the response before the
#: client reads it).
LINGER_SECONDS = 1.0
#: The most bytes dropped during that wait.
LINGER_BYTES = 256 * 1024


class _SkippableInput(_GeventInput):
    """gevent's request body reader, whose end-of-request drain can be skipped."""

    __slots__ = ("environ",)

    def _discard(self) -> None:
        environ = getattr(self, "environ", None)
        if environ is not None and environ.get(SKIP_BODY_KEY):
            return
        super()._discard()


class _TimedHandler(_GeventWSGIHandler):
    """Applies the server's socket timeout to each connection it serves, and
    honours :data:`SKIP_BODY_KEY`."""

    def handle(self) -> None:
        timeout = getattr(self.server, "slimta_socket_timeout", None)
        if timeout is not None and self.socket is not None:
            self.socket.settimeout(timeout)
        super().handle()

    def get_environ(self) -> dict[str, Any]:
        env: dict[str, Any] = super().get_environ()
        old: Any = getattr(self, "wsgi_input", None)
        if type(old) is _GeventInput:
            new = _SkippableInput(
                old.rfile, old.content_length, socket=old.socket, chunked_input=old.chunked_input
            )
            new.environ = env
            self.wsgi_input = new
            if env.get("wsgi.input") is old:
                env["wsgi.input"] = new
        return env

    def handle_one_response(self) -> None:
        super().handle_one_response()
        environ = getattr(self, "environ", None)
        if environ is not None and environ.get(SKIP_BODY_KEY):
            self.close_connection = True
            self._linger()

    def _linger(self) -> None:
        """Shut our side down, drop what the client still sends (bounded), then
        let gevent close the socket."""
        sock = self.socket
        if sock is None:
            return
        try:
            sock.shutdown(_socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            dropped = 0
            while dropped < LINGER_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    break
                dropped += len(data)
        except OSError:
            pass


class WsgiServer:
    """The base of a logged WSGI application.

    An instance is the application: pass it to any WSGI server engine, or
    call :meth:`build_server`.
    """

    #: Seconds a connection of a server made by :meth:`build_server` may stay
    #: silent (while the request line, headers or body are awaited, or idle
    #: between keep-alive requests) before it is closed; ``None`` for no limit.
    socket_timeout: float | None = DEFAULT_SOCKET_TIMEOUT_SECONDS

    def build_server(
        self, listener: Any, pool: Any = None, ssl_args: dict[str, Any] | None = None
    ) -> _GeventWSGIServer:
        """A :class:`gevent.pywsgi.WSGIServer` serving this application.

        :param listener: ``(ip, port)`` or a listening socket.
        :param pool: a :class:`gevent.pool.Pool` for the request greenlets
            (bounds the connections served at once).
        :param ssl_args: keyword arguments for TLS, as the gevent server takes
            them (for example ``{'ssl_context': context}``).
        :returns: the server, not yet started.
        """
        spawn = pool if pool is not None else "default"
        server = _GeventWSGIServer(listener, self, log=sys.stdout, spawn=spawn,
                                   handler_class=_TimedHandler, **(ssl_args or {}))
        server.slimta_socket_timeout = self.socket_timeout
        return server

    def handle(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """Answer one request; subclasses implement it as a WSGI application.

        :param environ: the WSGI environment (PEP 3333).
        :param start_response: the WSGI ``start_response`` callable.
        :returns: the response body, as an iterable of bytes.
        :raises NotImplementedError: here.
        """
        raise NotImplementedError()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        log.wsgi_request(environ)

        def logged_start_response(status: str, headers: Any, *args: Any, **kwargs: Any) -> Any:
            log.wsgi_response(environ, status, headers)
            return start_response(status, headers, *args, **kwargs)

        return self.handle(environ, logged_start_response)
