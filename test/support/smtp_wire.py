"""A raw SMTP client for server tests: write exact bytes, read parsed replies.

It lets a test send what real (and hostile) clients send, pipelined or split
anywhere, and assert on the replies the server wrote, without any SMTP client
library deciding for it.
"""

from __future__ import annotations

from typing import Any

import gevent
from gevent import socket as gsocket

from slimta.smtp._wire import ReplyParser
from support.util import GUARD_SECONDS

__all__ = ["Wire", "connect"]


class Wire:
    """The client end of a connection.

    :param sock: a connected gevent socket.
    """

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.parser = ReplyParser()

    def send(self, data: bytes) -> None:
        """Write ``data`` as is."""
        self.sock.sendall(data)

    def reply(self, timeout: float = GUARD_SECONDS) -> tuple[str, str]:
        """The next reply, ``(code, text)``; fails the test after ``timeout``."""
        with gevent.Timeout(timeout, AssertionError("no reply from the server")):
            while True:
                got = self.parser.next_reply()
                if got is not None:
                    return got
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError("server closed the connection")
                self.parser.feed(data)

    def replies(self, count: int) -> list[tuple[str, str]]:
        """The next ``count`` replies."""
        return [self.reply() for _ in range(count)]

    def codes(self, count: int) -> list[str]:
        """The codes of the next ``count`` replies."""
        return [code for code, _ in self.replies(count)]

    def rest(self, timeout: float = GUARD_SECONDS) -> bytes:
        """Every byte the server writes until it closes, unparsed."""
        data = self.parser.take_pending()
        with gevent.Timeout(timeout, AssertionError("server did not close")):
            while True:
                try:
                    chunk = self.sock.recv(65536)
                except ConnectionError:
                    return data
                if not chunk:
                    return data
                data += chunk

    def closed(self, timeout: float = GUARD_SECONDS) -> bool:
        """True once the server has closed (EOF with nothing more to read)."""
        with gevent.Timeout(timeout, AssertionError("server did not close")):
            while True:
                try:
                    data = self.sock.recv(65536)
                except ConnectionError:
                    return True
                if not data:
                    return self.parser.pending == 0
                self.parser.feed(data)

    def starttls(self, context: Any, server_hostname: str = "localhost") -> None:
        """Wrap the socket in client TLS (after a ``220`` to STARTTLS)."""
        assert self.parser.pending == 0, "server sent bytes after 220"
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    def close(self) -> None:
        """Close the client end."""
        self.sock.close()


def connect(address: tuple[str, int]) -> Wire:
    """A :class:`Wire` connected to ``address``."""
    return Wire(gsocket.create_connection(address, timeout=GUARD_SECONDS))
