"""The PROXY protocol (versions 1 and 2), as HAProxy and other proxies send it.

A proxy in front of an edge opens its own connection to us, so the socket's
peer is the proxy. With the PROXY protocol the proxy first sends one header
naming the real client; mixing one of these classes into an
:class:`~slimta.edge.EdgeServer` makes the edge read that header and pass the
real client's ``(ip, port)`` as the ``address`` of
:meth:`~slimta.edge.EdgeServer.handle` (so ``envelope.client['ip']`` is the
client's, not the proxy's)::

    edge = SmtpEdge(('0.0.0.0', 25), queue)
    ProxyProtocol.mixin(edge)      # v1 or v2, told apart by the first bytes

Reading is bounded and exact: a v1 header is at most
:data:`MAX_V1_HEADER_BYTES`, a v2 header is 16 bytes plus the length it
announces, and not one byte past the header is taken from the socket (what
follows belongs to the edge's protocol). The whole header must arrive within
:attr:`ProxyProtocol.proxyproto_timeout` seconds.

Differences from python-slimta, following the specification
(``proxy-protocol.txt``):

* a connection whose header is malformed, truncated or late is closed (the
  specification forbids guessing); python-slimta served it with the
  ``(None, None)`` address;
* a v2 ``LOCAL`` header (a proxy's health check) is served with the socket's
  own peer address; python-slimta closed such connections.

``PROXY UNKNOWN`` (v1) and v2 headers of the ``UNSPEC`` or ``AF_UNIX`` families
give :data:`unknown_pp_source_address`.
"""

from __future__ import annotations

import ipaddress
import struct
from socket import MSG_PEEK as _MSG_PEEK
from typing import Any

import gevent

from slimta.edge import EdgeServer
from slimta.logging import getSocketLogger

__all__ = ["ProxyProtocol", "ProxyProtocolV1", "ProxyProtocolV2"]

log = getSocketLogger(__name__)

#: The source address given for ``PROXY UNKNOWN`` and address-less v2 headers.
unknown_pp_source_address: tuple[Any, Any] = (None, None)
#: The destination address given for ``PROXY UNKNOWN`` and address-less v2 headers.
unknown_pp_dest_address: tuple[Any, Any] = (None, None)
#: Kept from python-slimta, which served invalid headers with this address;
#: here a connection with an invalid header is closed instead.
invalid_pp_source_address: tuple[Any, Any] = (None, None)
#: See :data:`invalid_pp_source_address`.
invalid_pp_dest_address: tuple[Any, Any] = (None, None)

#: The longest v1 header, CRLF included (``proxy-protocol.txt`` section 2.1).
MAX_V1_HEADER_BYTES = 107
#: The 12 bytes every v2 header starts with.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The fixed part of a v2 header: signature, version/command, family, length.
V2_FIXED_BYTES = 16
#: Bytes read to tell v1 from v2 (``PROXY `` is 6, the v2 signature starts 12).
_PROBE_BYTES = 8

_V2_LOCAL = 0x0
_V2_PROXY = 0x1
_V2_INET = 0x1
_V2_INET6 = 0x2
_V2_UNIX = 0x3
_V2_UNSPEC = 0x0
_V2_STREAM = 0x1
_V2_DGRAM = 0x2


class ProxyProtocolError(AssertionError):
    """A PROXY protocol header is malformed, truncated or late.

    It derives from :class:`AssertionError` because python-slimta signalled
    these failures with ``assert`` and callers may catch that.
    """


class LocalConnection(Exception):
    """A v2 ``LOCAL`` header: the connection is the proxy's own (a health check)."""


def _recv_exact(sock: Any, buf: bytearray, size: int) -> None:
    """Append exactly ``size`` bytes from ``sock`` to ``buf``."""
    while size > 0:
        data = sock.recv(size)
        if not data:
            raise ProxyProtocolError("Received EOF during proxy protocol header")
        buf += data
        size -= len(data)


def _parse_ip(family: int, text: bytes, which: str) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyProtocolError(f"Invalid proxy protocol {which} IP format") from None
    if address.version != family or "%" in str(address):
        raise ProxyProtocolError(f"Invalid proxy protocol {which} IP format")
    return str(address)


def _parse_port(text: bytes, which: str) -> int:
    # Decimal digits only: int() would also take '+1', ' 1', '1_0' and '١'.
    if not text.isdigit() or not text.isascii() or len(text) > 5 or (
        len(text) > 1 and text.startswith(b"0")
    ):
        raise ProxyProtocolError(f"Invalid proxy protocol {which} port format")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"Proxy protocol {which} port out of range")
    return port


class _ProxyProtocolBase:
    #: Seconds the whole header may take to arrive before the connection is closed.
    proxyproto_timeout: float = 10.0

    @classmethod
    def mixin(cls, edge: Any) -> None:
        """Make ``edge`` read this header on every connection.

        The edge object's class is replaced by a subclass with this class
        first among its bases.

        :param edge: the edge to change.
        :raises ValueError: when ``edge`` is not an :class:`~slimta.edge.EdgeServer`.
        """
        if not isinstance(edge, EdgeServer):
            raise ValueError(edge)
        old_class = edge.__class__
        edge.__class__ = type(cls.__name__ + old_class.__name__, (cls, old_class), {})

    def _read_header(self, sock: Any) -> tuple[Any, Any]:
        raise NotImplementedError()

    def handle(self, sock: Any, addr: Any) -> None:
        """Read the header, then serve the connection as the edge would.

        :param sock: the new connection.
        :param addr: its peer address (the proxy's).
        """
        try:
            with gevent.Timeout(self.proxyproto_timeout,
                                ProxyProtocolError("Timed out reading proxy protocol header")):
                src_addr, _ = self._read_header(sock)
        except LocalConnection:
            log.proxyproto_local(sock)
            src_addr = addr
        except (ProxyProtocolError, OSError) as exc:
            log.proxyproto_invalid(sock, exc)
            sock.close()
            return
        else:
            log.proxyproto_success(sock, src_addr)
        super().handle(sock, src_addr)  # type: ignore[misc]


class ProxyProtocolV1(_ProxyProtocolBase):
    """Expects every connection to start with a version 1 (text) header.

    Mix it into an edge with :meth:`mixin`, or list it before the edge class
    among a subclass's bases.
    """

    @classmethod
    def _read_line(cls, sock: Any, initial: bytes) -> bytes:
        # Peek, then take exactly up to the CRLF: the bytes after it are the
        # edge's, and a peer may well have sent them in the same packet.
        line = bytearray(initial)
        while True:
            end = line.find(b"\r\n")
            if end >= 0:
                if end + 2 != len(line):
                    raise ProxyProtocolError("Invalid proxy protocol header format")
                return bytes(line)
            room = MAX_V1_HEADER_BYTES - len(line)
            if room <= 0:
                raise ProxyProtocolError("Proxy protocol header is too long")
            peeked = sock.recv(room, _MSG_PEEK)
            if not peeked:
                raise ProxyProtocolError("Received EOF during proxy protocol header")
            end = (line[-1:] + peeked).find(b"\r\n")
            take = len(peeked) if end < 0 else end + 2 - len(line[-1:])
            _recv_exact(sock, line, take)

    @classmethod
    def parse_pp_line(cls, line: bytes) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
        """Parse one v1 header line.

        :param line: the whole line, from ``PROXY`` to the final CRLF.
        :returns: ``((source ip, port), (destination ip, port))``, as
            :meth:`~socket.socket.getpeername` and
            :meth:`~socket.socket.getsockname` would give them;
            ``(None, None)`` twice for ``PROXY UNKNOWN``.
        :raises ProxyProtocolError: (an :class:`AssertionError`) when malformed.
        """
        if not line.startswith(b"PROXY ") or not line.endswith(b"\r\n"):
            raise ProxyProtocolError("String must start with 'PROXY' and end with CRLF")
        if len(line) > MAX_V1_HEADER_BYTES:
            raise ProxyProtocolError("Proxy protocol header is too long")
        body = line[6:-2]
        if b"\r" in body or b"\n" in body:
            raise ProxyProtocolError("Invalid proxy protocol header format")
        parts = body.split(b" ")
        if parts[0] == b"UNKNOWN":
            return unknown_pp_source_address, unknown_pp_dest_address
        if parts[0] == b"TCP4":
            family = 4
        elif parts[0] == b"TCP6":
            family = 6
        else:
            raise ProxyProtocolError("Invalid proxy protocol address family")
        if len(parts) != 5:
            raise ProxyProtocolError("Invalid proxy protocol header format")
        source = (_parse_ip(family, parts[1], "source"), _parse_port(parts[3], "source"))
        dest = (_parse_ip(family, parts[2], "destination"),
                _parse_port(parts[4], "destination"))
        return source, dest

    @classmethod
    def process_pp_v1(cls, sock: Any, initial: bytes) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
        """Read the rest of a v1 header from ``sock`` and parse it.

        :param sock: the connection.
        :param initial: header bytes already read from it (may be empty).
        :returns: as :meth:`parse_pp_line`.
        """
        line = cls._read_line(sock, initial)
        log.recv(sock, line)
        return cls.parse_pp_line(line)

    def _read_header(self, sock: Any) -> tuple[Any, Any]:
        return self.process_pp_v1(sock, b"")


class ProxyProtocolV2(_ProxyProtocolBase):
    """Expects every connection to start with a version 2 (binary) header.

    TLVs after the addresses are read and ignored. Mix it into an edge with
    :meth:`mixin`.
    """

    @classmethod
    def parse_pp_v2(cls, header: bytes) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
        """Parse one whole v2 header (the 16 fixed bytes and what they announce).

        :returns: ``((source ip, port), (destination ip, port))``.
        :raises LocalConnection: for a ``LOCAL`` command.
        :raises ProxyProtocolError: when malformed.
        """
        if len(header) < V2_FIXED_BYTES or header[:12] != V2_SIGNATURE:
            raise ProxyProtocolError("Invalid proxy protocol v2 signature")
        version, command = header[12] >> 4, header[12] & 0x0F
        if version != 2:
            raise ProxyProtocolError("Invalid proxy protocol version")
        if command not in (_V2_LOCAL, _V2_PROXY):
            raise ProxyProtocolError("Invalid proxy protocol v2 command")
        family, transport = header[13] >> 4, header[13] & 0x0F
        (length,) = struct.unpack("!H", header[14:16])
        if len(header) != V2_FIXED_BYTES + length:
            raise ProxyProtocolError("Proxy protocol v2 header length mismatch")
        if family > _V2_UNIX or transport > _V2_DGRAM:
            raise ProxyProtocolError("Invalid proxy protocol v2 address family")
        addresses = header[V2_FIXED_BYTES:]
        if command == _V2_LOCAL:
            raise LocalConnection()
        if family == _V2_INET:
            if len(addresses) < 12:
                raise ProxyProtocolError("Proxy protocol v2 address block too short")
            src, dst, sport, dport = struct.unpack("!4s4sHH", addresses[:12])
            return ((str(ipaddress.IPv4Address(src)), sport),
                    (str(ipaddress.IPv4Address(dst)), dport))
        if family == _V2_INET6:
            if len(addresses) < 36:
                raise ProxyProtocolError("Proxy protocol v2 address block too short")
            src, dst, sport, dport = struct.unpack("!16s16sHH", addresses[:36])
            return ((str(ipaddress.IPv6Address(src)), sport),
                    (str(ipaddress.IPv6Address(dst)), dport))
        if family == _V2_UNIX and len(addresses) < 216:
            raise ProxyProtocolError("Proxy protocol v2 address block too short")
        return unknown_pp_source_address, unknown_pp_dest_address

    @classmethod
    def process_pp_v2(cls, sock: Any, initial: bytes) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
        """Read the rest of a v2 header from ``sock`` and parse it.

        :param sock: the connection.
        :param initial: header bytes already read from it (may be empty).
        :returns: as :meth:`parse_pp_v2`.
        :raises LocalConnection: for a ``LOCAL`` command.
        """
        header = bytearray(initial)
        if len(header) < V2_FIXED_BYTES:
            _recv_exact(sock, header, V2_FIXED_BYTES - len(header))
        if header[:12] != V2_SIGNATURE:
            raise ProxyProtocolError("Invalid proxy protocol v2 signature")
        (length,) = struct.unpack("!H", header[14:16])
        _recv_exact(sock, header, V2_FIXED_BYTES + length - len(header))
        return cls.parse_pp_v2(bytes(header))

    def _read_header(self, sock: Any) -> tuple[Any, Any]:
        return self.process_pp_v2(sock, b"")


class ProxyProtocol(_ProxyProtocolBase):
    """Expects a v1 or a v2 header, told apart by its first 8 bytes.

    Mix it into an edge with :meth:`mixin`.
    """

    def _read_header(self, sock: Any) -> tuple[Any, Any]:
        initial = bytearray()
        _recv_exact(sock, initial, _PROBE_BYTES)
        if initial.startswith(b"PROXY "):
            return ProxyProtocolV1.process_pp_v1(sock, bytes(initial))
        if initial == V2_SIGNATURE[:_PROBE_BYTES]:
            return ProxyProtocolV2.process_pp_v2(sock, bytes(initial))
        raise ProxyProtocolError("Invalid proxy protocol signature")

