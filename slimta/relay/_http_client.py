"""The connection-level pieces of :class:`~slimta.relay.http.HttpRelayClient`.

Counting the response bytes of one request (so that a request is re-sent only
when nothing at all came back), the part of a response that is kept, telling a
stale kept-alive socket or a peer's disconnect apart, and turning transport
failures into relay errors. No decisions about the message itself live here.
"""

from __future__ import annotations

import io
import select
import socket
import ssl
from collections.abc import Callable
from http import client as _client
from typing import Any

import gevent.ssl

from slimta.relay import TransientRelayError
from slimta.relay._replies import internal_failure, misconfigured
from slimta.smtp.reply import Reply, connection_failed, timed_out, tls_failure

__all__ = [
    "Tracker",
    "TrackedResponse",
    "Answer",
    "transient",
    "config_error",
    "failure_error",
    "is_disconnect",
    "is_stale",
    "TracedSocket",
]


class Tracker:
    """Counts the response bytes received for one request."""

    __slots__ = ("received",)

    def __init__(self) -> None:
        self.received = 0


class _CountingReader(io.RawIOBase):
    """The raw stream under an :class:`http.client.HTTPResponse`, counting bytes."""

    def __init__(self, sock: Any, tracker: Tracker) -> None:
        super().__init__()
        self._sock = sock
        self._tracker = tracker

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count: int = self._sock.recv_into(buffer)
        self._tracker.received += count
        return count


class _CountingSocket:
    """Hands :class:`http.client.HTTPResponse` a counting ``makefile``."""

    def __init__(self, sock: Any, tracker: Tracker) -> None:
        self._sock = sock
        self._tracker = tracker

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        # Closing this reader leaves the socket alone: the connection owns it.
        return io.BufferedReader(_CountingReader(self._sock, self._tracker))


class TrackedResponse(_client.HTTPResponse):
    def __init__(
        self,
        sock: Any,
        debuglevel: int = 0,
        method: str | None = None,
        url: str | None = None,
        *,
        tracker: Tracker,
    ) -> None:
        super().__init__(_CountingSocket(sock, tracker), debuglevel, method, url)  # type: ignore[arg-type]


class Answer:
    """What is kept of a response once it has been read."""

    __slots__ = ("status", "reason", "reply_header")

    def __init__(self, status: int, reason: str, reply_header: str | None) -> None:
        self.status = status
        self.reason = reason
        self.reply_header = reply_header


def transient(reply: Reply, detail: str) -> TransientRelayError:
    return TransientRelayError(detail, Reply().copy(reply))


def config_error(detail: str) -> TransientRelayError:
    return TransientRelayError(detail, misconfigured(detail))


def failure_error(exc: BaseException) -> TransientRelayError:
    """Map a transport-level exception to the error the caller receives."""
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return transient(tls_failure, f"TLS failure: {exc}")
    if isinstance(exc, socket.timeout):
        return transient(timed_out, f"Timed out: {exc}")
    if isinstance(exc, OSError):
        return transient(connection_failed, f"Connection failed: {exc!r}")
    if isinstance(exc, _client.InvalidURL):
        return config_error(f"Invalid relay URL: {exc}")
    if isinstance(exc, _client.HTTPException):
        return internal_failure(f"Malformed HTTP response: {exc!r}")
    return internal_failure(f"Unhandled error: {exc!r}")


def is_disconnect(exc: BaseException) -> bool:
    """True for errors meaning the peer closed or reset the connection."""
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return True
    return isinstance(
        exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError
    ) or isinstance(exc, _client.RemoteDisconnected)


def is_stale(sock: Any) -> bool:
    """True when an idle kept-alive socket is unusable (closed, or unexpected data).

    A zero-timeout poll: it never waits.
    """
    if sock is None:
        return True
    if isinstance(sock, TracedSocket):
        sock = sock.wrapped
    if isinstance(sock, gevent.ssl.SSLSocket) and sock.pending():
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class TracedSocket:
    """A connected socket whose reads and writes are told to a wire trace.

    It reports ``'send'``, ``'recv'`` and ``'close'`` events, as
    :data:`slimta.smtp.client.WireTrace` describes; anything else is the
    wrapped socket's.
    """

    def __init__(self, sock: Any, trace: Callable[[str, bytes], None]) -> None:
        #: The socket underneath.
        self.wrapped = sock
        self._trace = trace

    def sendall(self, data: Any, *args: Any) -> None:
        self._trace("send", bytes(data))
        self.wrapped.sendall(data, *args)

    def send(self, data: Any, *args: Any) -> int:
        sent: int = self.wrapped.send(data, *args)
        self._trace("send", bytes(data[:sent]))
        return sent

    def recv_into(self, buffer: Any, *args: Any) -> int:
        count: int = self.wrapped.recv_into(buffer, *args)
        self._trace("recv" if count else "lost", bytes(memoryview(buffer)[:count]))
        return count

    def recv(self, size: int, *args: Any) -> bytes:
        data: bytes = self.wrapped.recv(size, *args)
        self._trace("recv" if data else "lost", data)
        return data

    def close(self) -> None:
        try:
            self.wrapped.close()
        finally:
            self._trace("close", b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)
