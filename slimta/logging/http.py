"""HTTP requests and responses as ``http:<id>:<op>`` log lines.

The operation names the side: ``client_request`` and ``client_response`` for
requests this process makes, ``server_request`` and ``server_response`` for
requests it serves (the WSGI methods).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slimta.logging.log import _BaseLogger

__all__ = ["HttpLogger"]


def _environ_headers(environ: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The request headers of a WSGI ``environ``, with their usual names."""
    headers: list[tuple[str, Any]] = []
    for key, value in environ.items():
        if key == "CONTENT_TYPE":
            headers.append(("Content-Type", value))
        elif key == "CONTENT_LENGTH":
            headers.append(("Content-Length", value))
        elif key.startswith("HTTP_"):
            name = "-".join(part.capitalize() for part in key[5:].split("_"))
            headers.append((name, value))
    return headers


class HttpLogger(_BaseLogger):
    """Logs HTTP exchanges, at DEBUG.

    :param log: the :class:`logging.Logger` to write to.
    """

    kind = "http"

    def wsgi_request(self, environ: Mapping[str, Any]) -> None:
        """A request received, read from its WSGI ``environ``."""
        method = str(environ.get("REQUEST_METHOD", "")).upper()
        path = environ.get("PATH_INFO")
        self.request(environ, method, path, _environ_headers(environ), is_client=False)

    def wsgi_response(self, environ: Mapping[str, Any], status: Any, headers: Any) -> None:
        """The response to the request of ``environ``."""
        self.response(environ, status, headers, is_client=False)

    def request(
        self, conn: Any, method: Any, path: Any, headers: Any, is_client: bool = True
    ) -> None:
        """A request. ``conn`` is any object, the same as given to :meth:`response`.

        :param headers: ``(name, value)`` pairs.
        :param is_client: whether this process sent the request (``client_request``)
            or received it (``server_request``).
        """
        operation = "client_request" if is_client else "server_request"
        self.log(id(conn), operation, method=method, path=path, headers=headers)

    def response(self, conn: Any, status: Any, headers: Any, is_client: bool = True) -> None:
        """A response, e.g. ``status='200 OK'``; ``conn`` as given to :meth:`request`."""
        operation = "client_response" if is_client else "server_response"
        self.log(id(conn), operation, status=status, headers=headers)
