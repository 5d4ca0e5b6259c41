"""Socket activity as ``fd:<fileno>:<op>`` log lines.

:data:`socket_error_log_level` is read each time an error is logged, so a
program may change it at any moment.
"""

from __future__ import annotations

import logging
import re
import socket as _socket
from typing import Any

from slimta.logging.log import _BaseLogger

__all__ = ["socket_error_log_level", "SocketLogger"]

#: The level of ``error`` lines (default :data:`logging.ERROR`).
socket_error_log_level = logging.ERROR

_AUTH_RE = re.compile(rb"^(\s*AUTH\s+[A-Za-z0-9_-]+)\s+\S", re.I)


def redact(data: bytes) -> bytes:
    """Hide the secret part of a line the client writes during AUTH.

    ``AUTH PLAIN <b64>`` keeps its mechanism name; any other line is masked whole.
    """
    match = _AUTH_RE.match(data)
    if match:
        return match.group(1) + b" ********"
    return b"********" if data.strip() else data


def _fileno(sock: Any) -> Any:
    """The socket's file descriptor, or ``'none'`` when there is no socket to ask."""
    try:
        return sock.fileno()
    except (AttributeError, OSError, ValueError):
        return "none"


class SocketLogger(_BaseLogger):
    """Logs socket operations, one ``fd:<fileno>:<op>`` line each, at DEBUG.

    :param logger: the :class:`logging.Logger` to write to.
    """

    kind = "fd"

    def __init__(self, logger: Any) -> None:
        # python-slimta names this parameter ``logger`` here and ``log`` elsewhere.
        super().__init__(logger)

    def send(self, socket: Any, data: bytes, secret: bool = False) -> None:
        """Data written. With ``secret``, or for an ``AUTH`` command, it is masked."""
        if not self.logger.isEnabledFor(logging.DEBUG):
            return
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data)
            if secret or _AUTH_RE.match(data):
                data = redact(data)
        elif secret:
            data = "********"
        self.log(_fileno(socket), "send", data=data)

    def recv(self, socket: Any, data: Any) -> None:
        """Data read."""
        if self.logger.isEnabledFor(logging.DEBUG):
            self.log(_fileno(socket), "recv", data=data)

    def accept(self, server: Any, client: Any, address: Any = None) -> None:
        """A connection accepted on ``server``; ``address`` defaults to the client's peer."""
        if self.logger.isEnabledFor(logging.DEBUG):
            peer = address or client.getpeername()
            self.log(_fileno(server), "accept", clientfd=_fileno(client), peer=peer)

    def connect(self, socket: Any, address: Any = None) -> None:
        """A connection made; ``address`` defaults to the socket's peer."""
        if self.logger.isEnabledFor(logging.DEBUG):
            self.log(_fileno(socket), "connect", peer=address or socket.getpeername())

    def encrypt(self, socket: Any, context: Any = None) -> None:
        """TLS started: logs the context's ``session_stats()``, or the given mapping."""
        if not self.logger.isEnabledFor(logging.DEBUG):
            return
        stats = getattr(context, "session_stats", None)
        data = stats() if callable(stats) else dict(context or {})
        self.log(_fileno(socket), "encrypt", **data)

    def shutdown(self, socket: Any, how: int) -> None:
        """A shutdown, ``how`` written as ``'read'``, ``'write'`` or ``'both'``."""
        if how == _socket.SHUT_RD:
            how_text = "read"
        elif how == _socket.SHUT_WR:
            how_text = "write"
        else:
            how_text = "both"
        self.log(_fileno(socket), "shutdown", how=how_text)

    def close(self, socket: Any) -> None:
        """The socket is being closed."""
        if self.logger.isEnabledFor(logging.DEBUG):
            self.log(_fileno(socket), "close")

    def error(self, socket: Any, exc: BaseException, address: Any = None) -> None:
        """A socket error, at :data:`socket_error_log_level`, without a traceback."""
        data: dict[str, Any] = {"message": str(exc), "args": exc.args}
        if address:
            data["address"] = address
        fileno = _fileno(socket) if socket is not None else "none"
        self._write(socket_error_log_level, fileno, "error", data)

    def proxyproto_success(self, socket: Any, src_addr: Any) -> None:
        """A valid PROXY protocol header gave the connection's real source."""
        self.log(_fileno(socket), "ppsuccess", peer=src_addr)

    def proxyproto_invalid(self, socket: Any, exc: BaseException) -> None:
        """An invalid PROXY protocol header."""
        self.log(_fileno(socket), "ppinvalid", message=str(exc))

    def proxyproto_local(self, sock: Any) -> None:
        """A PROXY protocol ``LOCAL`` header: the proxy checking on us."""
        self.log(_fileno(sock), "pplocal")
