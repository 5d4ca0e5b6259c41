"""Edges: the services that take new messages in and hand them to a queue.

:class:`Edge` stamps and hands off an :class:`~slimta.envelope.Envelope`;
:class:`EdgeServer` is a :class:`gevent.Greenlet` that serves a
:class:`gevent.server.StreamServer` and passes each connection to
:meth:`EdgeServer.handle`.

``max_sessions`` bounds the connections handled at once: one more is answered
with :attr:`EdgeServer.busy_reply` (``421 4.3.2``) and closed at once.

Without a ``pool``, each connection runs in a greenlet of a
:class:`~slimta.util.recycler.GreenletRecycler`: one that served an earlier
connection and was parked, when there is one.
"""

from __future__ import annotations

import socket as _socket
import time
from typing import Any

import gevent
from gevent.server import StreamServer

from slimta import logging
from slimta.envelope import Envelope
from slimta.util.recycler import GreenletRecycler

__all__ = ["Edge", "EdgeServer"]

_log = logging.getSocketLogger(__name__)


class Edge:
    """The base of every edge.

    :param queue: the :class:`~slimta.queue.Queue` (or queue-like object) that
        takes responsibility for the messages.
    :param hostname: this machine's name, stamped on each message as
        :attr:`~slimta.envelope.Envelope.receiver`; default :func:`socket.getfqdn`.
    """

    def __init__(self, queue: Any, hostname: str | None = None) -> None:
        super().__init__()
        self.queue = queue
        self.hostname = hostname or _socket.getfqdn()

    def handoff(self, envelope: Envelope) -> list[tuple[Envelope, Any]]:
        """Give ``envelope`` to the queue.

        :returns: ``[(envelope, id or QueueError), ...]``, one per envelope the
            queue policies made of it; an id means the store holds it.
        """
        envelope.receiver = self.hostname
        envelope.timestamp = time.time()
        try:
            return self.queue.enqueue(envelope)
        except Exception:
            logging.log_exception(__name__)
            raise

    def kill(self) -> None:
        """Stop whatever the edge runs. Nothing here."""


class EdgeServer(Edge, gevent.Greenlet):
    """An :class:`Edge` that listens: a greenlet serving a StreamServer.

    :param listener: ``(ip, port)`` (or a listening socket), as
        :class:`gevent.server.StreamServer` takes it; ``None`` for no server.
    :param queue: see :class:`Edge`.
    :param pool: a :class:`gevent.pool.Pool` for the connection greenlets
        (default: reused greenlets, with no limit of their own).
    :param hostname: see :class:`Edge`.
    :param max_sessions: the most connections handled at once, or ``None``.
    """

    #: The reply to a connection over ``max_sessions``.
    busy_reply = b"421 4.3.2 Too many connections, try again later\r\n"

    def __init__(
        self,
        listener: Any,
        queue: Any,
        pool: Any = None,
        hostname: str | None = None,
        max_sessions: int | None = None,
    ) -> None:
        super().__init__(queue, hostname)
        spawn: Any = GreenletRecycler().spawn if pool is None else pool
        self.max_sessions = max_sessions
        #: How many connections are being handled now.
        self.sessions = 0
        self.server: StreamServer | None = (
            StreamServer(listener, self._handle, spawn=spawn) if listener is not None else None
        )

    def _handle(self, socket: Any, address: Any) -> None:
        if self.server is not None:
            _log.accept(self.server.socket, socket, address)
        if self.max_sessions is not None and self.sessions >= self.max_sessions:
            self._refuse(socket)
            return
        self.sessions += 1
        try:
            self.handle(socket, address)
        except Exception:
            logging.log_exception(__name__)
            raise
        finally:
            self.sessions -= 1

    def _refuse(self, socket: Any) -> None:
        try:
            socket.settimeout(5.0)
            socket.sendall(self.busy_reply)
        except OSError:
            pass
        finally:
            socket.close()

    def handle(self, socket: Any, address: Any) -> None:
        """Serve one connection; subclasses implement it.

        :raises NotImplementedError: here.
        """
        raise NotImplementedError()

    def kill(self) -> None:
        """Stop listening (connections being served go on)."""
        if self.server is not None:
            self.server.stop()

    def _run(self) -> None:
        if self.server is None:
            return
        self.server.start()
        self.server.serve_forever()
