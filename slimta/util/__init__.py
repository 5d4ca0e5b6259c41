"""Socket helpers: IPv4-only connections, and listening sockets for servers."""

from __future__ import annotations

import socket as _stdlib_socket
from collections.abc import Callable, Container
from typing import Any

from gevent import socket

__all__ = ["build_ipv4_socket_creator", "create_connection_ipv4", "create_listeners"]

#: ``listen()`` backlog used by :func:`create_listeners`.
LISTEN_BACKLOG = 128

Address = tuple[str, int]
SocketCreator = Callable[..., socket.socket]


def create_connection_ipv4(
    address: Address,
    timeout: float | None = None,
    source_address: tuple[str, int] | None = None,
    only_ports: Container[int] | None = None,
) -> socket.socket:
    """Connect like :func:`gevent.socket.create_connection`, over IPv4 only.

    The ``AF_INET`` results of ``getaddrinfo`` are tried in order and the
    first that connects is returned.

    :param address: ``(host, port)`` to connect to.
    :param timeout: seconds for each connect attempt; ``None`` blocks.
    :param source_address: ``(host, port)`` to bind before connecting.
    :param only_ports: when given and the port is not in it, the IPv4
        restriction is skipped and a plain ``create_connection`` is made.
    :raises OSError: the last connect error, or ``getaddrinfo returns an empty
        list`` when there was nothing to try.
    """
    host, port = address
    if only_ports is not None and port not in only_ports:
        return socket.create_connection(address, timeout, source_address)
    last_error: OSError | None = None
    for family, socktype, proto, _, sockaddr in socket.getaddrinfo(
        host, port, socket.AF_INET, socket.SOCK_STREAM
    ):
        sock = socket.socket(family, socktype, proto)
        try:
            if timeout is not None:
                sock.settimeout(timeout)
            if source_address is not None:
                sock.bind(source_address)
            sock.connect(sockaddr)
        except OSError as exc:
            last_error = exc
            sock.close()
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if last_error is not None:
        raise last_error
    raise OSError("getaddrinfo returns an empty list")


def build_ipv4_socket_creator(only_ports: Container[int] | None = None) -> SocketCreator:
    """Return a ``socket_creator`` that connects over IPv4 only.

    :param only_ports: ports to restrict; connections to any other port are
        made normally (see :func:`create_connection_ipv4`).
    :returns: ``f(address, timeout=None, source_address=None)``.
    """

    def socket_creator(
        address: Address,
        timeout: float | None = None,
        source_address: tuple[str, int] | None = None,
    ) -> socket.socket:
        return create_connection_ipv4(address, timeout, source_address, only_ports)

    return socket_creator


def create_listeners(
    address: Any,
    family: int = _stdlib_socket.AF_UNSPEC,
    socktype: int = _stdlib_socket.SOCK_STREAM,
    proto: int = _stdlib_socket.IPPROTO_IP,
) -> list[socket.socket]:
    """Open listening sockets for a server.

    :param address: ``(host, port)`` (every matching address is bound, so
        ``('localhost', 25)`` may give an IPv4 and an IPv6 socket), or a path
        string for a unix socket.
    :returns: the bound, listening gevent sockets.
    :raises OSError: when nothing could be bound.
    """
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socktype)
        try:
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        return [sock]
    host, port = address
    flags = socket.AI_PASSIVE
    listeners: list[socket.socket] = []
    last_error: OSError | None = None
    for fam, stype, prot, _, sockaddr in socket.getaddrinfo(
        host, port, family, socktype, proto, flags
    ):
        sock = socket.socket(fam, stype, prot)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            last_error = exc
            sock.close()
            continue
        listeners.append(sock)
    if not listeners:
        if last_error is not None:
            raise last_error
        raise OSError("getaddrinfo returns an empty list")
    return listeners
