"""A base for WSGI applications whose requests and responses are logged.

:class:`WsgiServer` is a WSGI application: subclasses implement
:meth:`WsgiServer.handle`, and calling the object logs the request and the
response status through :mod:`slimta.logging.http`. :meth:`WsgiServer.build_server`
wraps it in a :class:`gevent.pywsgi.WSGIServer`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

from gevent.pywsgi import WSGIHandler as _GeventWSGIHandler
from gevent.pywsgi import WSGIServer as _GeventWSGIServer

from slimta import logging

__all__ = ["WsgiServer"]

log = logging.getHttpLogger(__name__)

#: Default of :attr:`WsgiServer.socket_timeout`, in seconds.
DEFAULT_SOCKET_TIMEOUT_SECONDS = 60.0


class _TimedHandler(_GeventWSGIHandler):
    """Applies the server's socket timeout to each connection it serves."""

    def handle(self) -> None:
        timeout = getattr(self.server, "slimta_socket_timeout", None)
        if timeout is not None and self.socket is not None:
            self.socket.settimeout(timeout)
        super().handle()


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
