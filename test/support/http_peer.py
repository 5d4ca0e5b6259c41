"""A scripted HTTP peer for the HTTP relay's hostile cases.

The fault server (:mod:`support.faultserver`) speaks SMTP and LMTP; this is its
HTTP counterpart, for what a real WSGI server will not do: reset, hang up, stall,
or answer with garbage at a chosen point. ``handlers[i]`` serves the i-th
connection; a handler gets the socket and a function that reads one whole request
(headers and ``Content-Length`` body), records it and returns it. Connections
beyond the list are served by ``default``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gevent.event import Event
from gevent.server import StreamServer

__all__ = ["OK_RESPONSE", "Handler", "ScriptedHttpServer", "answer_ok", "hang_up"]

#: A complete 200 response carrying a 250 SMTP reply.
OK_RESPONSE = (
    b'HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Smtp-Reply: 250; message="2.0.0 Ok"\r\n\r\n'
)

#: ``handler(sock, read_request)``: serves one connection; the socket is closed after.
Handler = Callable[[Any, Callable[[], bytes]], None]


def answer_ok(sock: Any, read_request: Callable[[], bytes]) -> None:
    """Answer :data:`OK_RESPONSE` to every request until the client closes."""
    while True:
        read_request()
        sock.sendall(OK_RESPONSE)


def hang_up(sock: Any, read_request: Callable[[], bytes]) -> None:
    """Close the connection without reading or answering anything."""


class ScriptedHttpServer:
    """Listens on ``127.0.0.1:0`` from construction until :meth:`stop`.

    :param handlers: ``handlers[i]`` serves the i-th connection.
    :param default: serves every connection beyond ``handlers``.
    :param path: the path of :attr:`url`.
    :param release: the event handlers wait on to stall; :meth:`stop` sets it.
    """

    def __init__(
        self,
        handlers: Sequence[Handler] = (),
        *,
        default: Handler = hang_up,
        path: str = "/",
        release: Event | None = None,
    ) -> None:
        self.handlers = list(handlers)
        self.default = default
        self.path = path
        #: Set to let stalled handlers go; :meth:`stop` sets it.
        self.release = release if release is not None else Event()
        #: How many connections were accepted.
        self.connections = 0
        #: Every request read, whole, in order.
        self.requests: list[bytes] = []
        self._server = StreamServer(("127.0.0.1", 0), self._handle)
        self._server.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port><path>``."""
        return f"http://127.0.0.1:{self._server.server_port}{self.path}"

    def stop(self) -> None:
        """Release stalled handlers and stop listening."""
        self.release.set()
        self._server.stop(timeout=1)

    def _handle(self, sock: Any, _address: Any) -> None:
        index = self.connections
        self.connections += 1
        handler = self.handlers[index] if index < len(self.handlers) else self.default
        buffer = bytearray()

        def read_request() -> bytes:
            while b"\r\n\r\n" not in buffer:
                data = sock.recv(65536)
                if not data:
                    raise EOFError
                buffer.extend(data)
            head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            total = len(head) + 4 + length
            while len(buffer) < total:
                data = sock.recv(65536)
                if not data:
                    raise EOFError
                buffer.extend(data)
            request = bytes(buffer[:total])
            del buffer[:total]
            self.requests.append(request)
            return request

        try:
            handler(sock, read_request)
        except (EOFError, OSError):
            pass  # the client went away: that is the handler's business only
        finally:
            sock.close()
