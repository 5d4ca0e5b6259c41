"""Opening the socket a :class:`~slimta.relay.smtp.client.SmtpRelayClient` speaks over.

The default socket creator (TCP, with no ``getaddrinfo`` for an address literal,
or a unix socket for an absolute path) and the host's own name, the default
EHLO name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from gevent import socket

__all__ = ["Address", "SocketCreator", "default_socket_creator", "local_fqdn"]

Address = tuple[str, int]
SocketCreator = Callable[[Address], socket.socket]


@functools.lru_cache(maxsize=1)
def local_fqdn() -> str:
    # The host's name does not change while we run; resolving it once keeps a
    # reverse lookup off every new connection.
    return socket.getfqdn()


def _connect_unix(address: Address) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address[0])
    except BaseException:
        sock.close()
        raise
    return sock


def default_socket_creator(address: Address) -> socket.socket:
    """Connect to ``address``: a unix socket when the host is an absolute path.

    :param address: ``(host, port)``; with a host such as ``'/run/lmtp'`` the
        port is ignored.
    """
    host = address[0]
    if isinstance(host, str) and host.startswith("/"):
        return _connect_unix(address)
    family = _ip_family(host)
    if family is None:
        return socket.create_connection(address)
    # An address literal needs no getaddrinfo (which gevent runs in a thread).
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _ip_family(host: object) -> int | None:
    """``AF_INET``/``AF_INET6`` when ``host`` is an IP address literal, else None."""
    if not isinstance(host, str):
        return None
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return family
    return None
