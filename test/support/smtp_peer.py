"""A scripted SMTP peer on the other end of a gevent socketpair, for protocol tests.

Tests write the server's bytes up front (the socket buffers them) and then check
the exact bytes the client wrote. Every read is bounded by a guard timeout that
fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.socket
import gevent.ssl

from slimta.smtp.client import Client
from support.util import GUARD_SECONDS

__all__ = ["PEER_ADDRESS", "Peer", "connected"]

#: The address handed to the client: the TLS server name for certificate checks.
PEER_ADDRESS = ("localhost", 25)


class Peer:
    """The server end: send scripted bytes, read what the client wrote."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_exactly(self, size: int) -> bytes:
        with gevent.Timeout(GUARD_SECONDS):
            while len(self.buffer) < size:
                data = self.sock.recv(65536)
                if not data:
                    break
                self.buffer += data
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out

    def expect(self, data: bytes) -> None:
        got = self.read_exactly(len(data))
        assert got == data

    def read_line(self) -> bytes:
        with gevent.Timeout(GUARD_SECONDS):
            while b"\n" not in self.buffer:
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError("client closed")
                self.buffer += data
        end = self.buffer.index(b"\n") + 1
        line = bytes(self.buffer[:end])
        del self.buffer[:end]
        return line

    def nothing_written(self) -> bool:
        """True if the client has written nothing unread (checked without waiting)."""
        if self.buffer:
            return False
        self.sock.settimeout(0.0)
        try:
            return not self.sock.recv(1)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(None)

    def start_tls(self, context: ssl.SSLContext) -> None:
        """Server-side handshake (in gevent's SSLSocket, cooperative)."""
        assert not self.buffer
        self.sock = gevent.ssl.SSLSocket(sock=self.sock, server_side=True, _context=context)

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def connected(client_class: type[Client] = Client) -> Iterator[tuple[Any, Peer]]:
    """A client of ``client_class`` and its :class:`Peer`, closed afterwards."""
    a, b = gevent.socket.socketpair()
    client = client_class(a, PEER_ADDRESS)
    peer = Peer(b)
    try:
        yield client, peer
    finally:
        client.io.socket.close()
        peer.close()
        a.close()
