"""slimta.util.proxyproto: PROXY v1 and v2 headers as HAProxy writes them, and through SmtpEdge."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.socket
import pytest
import support.smtp_edge
from support.smtp_wire import Wire, connect
from support.util import GUARD_SECONDS

from slimta.edge import EdgeServer
from slimta.util.proxyproto import (
    MAX_V1_HEADER_BYTES,
    V2_SIGNATURE,
    LocalConnection,
    ProxyProtocol,
    ProxyProtocolError,
    ProxyProtocolV1,
    ProxyProtocolV2,
)

smtp_edge = support.smtp_edge.smtp_edge

#: What follows the header on the wire: it must stay unread for the edge.
AFTER = b"EHLO client.example\r\n"


def v2(command: int, family: int, addresses: bytes, tlvs: bytes = b"") -> bytes:
    body = addresses + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def v2_tcp4(src: str, dst: str, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    addrs = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return v2(0x1, 0x11, addrs, tlvs)


def v2_tcp6(src: str, dst: str, sport: int, dport: int) -> bytes:
    addrs = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
             + struct.pack("!HH", sport, dport))
    return v2(0x1, 0x21, addrs)


# HAProxy's TLVs: PP2_TYPE_ALPN (0x01), PP2_TYPE_AUTHORITY (0x02), PP2_TYPE_UNIQUE_ID (0x05),
# PP2_TYPE_SSL (0x20) with a sub-TLV, and PP2_TYPE_NOOP (0x04) padding.
HAPROXY_TLVS = (b"\x01\x00\x02h2" + b"\x02\x00\x0bexample.com" + b"\x05\x00\x04abcd"
                + b"\x20\x00\x0c\x01\x00\x00\x00\x00" + b"\x21\x00\x04TLSv"
                + b"\x04\x00\x03\x00\x00\x00")


@pytest.fixture
def pair() -> Iterator[tuple[Any, Any]]:
    a, b = gevent.socket.socketpair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def feed(writer: Any, data: bytes, piece: int) -> gevent.Greenlet:
    """Send ``data`` in ``piece``-byte writes from another greenlet."""

    def run() -> None:
        for start in range(0, len(data), piece):
            writer.sendall(data[start:start + piece])
            gevent.idle()

    return gevent.spawn(run)


def read_rest(sock: Any, size: int) -> bytes:
    out = b""
    with gevent.Timeout(GUARD_SECONDS):
        while len(out) < size:
            chunk = sock.recv(size - len(out))
            if not chunk:
                break
            out += chunk
    return out


MAX_V6 = b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"

V1_CASES = [
    (b"PROXY TCP4 192.0.2.10 198.51.100.2 56324 25\r\n",
     (("192.0.2.10", 56324), ("198.51.100.2", 25))),
    (b"PROXY TCP6 2001:db8::1 2001:db8:0:0::2 65535 587\r\n",
     (("2001:db8::1", 65535), ("2001:db8::2", 587))),
    (b"PROXY UNKNOWN\r\n", ((None, None), (None, None))),
    # The longest headers the specification allows (107 bytes).
    (b"PROXY UNKNOWN " + b" ".join([MAX_V6] * 2) + b" 65535 65535\r\n",
     ((None, None), (None, None))),
    (b"PROXY TCP6 " + b" ".join([MAX_V6] * 2) + b" 65535 65535\r\n",
     (("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
      ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535))),
    (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
     (("0.0.0.0", 0), ("255.255.255.255", 65535))),
]


@pytest.mark.parametrize(("header", "expected"), V1_CASES)
def test_parse_pp_line(header: bytes, expected: Any) -> None:
    assert len(header) <= MAX_V1_HEADER_BYTES
    assert ProxyProtocolV1.parse_pp_line(header) == expected


@pytest.mark.parametrize(("header", "expected"), V1_CASES)
@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_v1_read_stops_at_the_crlf(pair: Any, header: bytes, expected: Any, piece: int) -> None:
    reader, writer = pair
    feeder = feed(writer, header + AFTER, piece)
    with gevent.Timeout(GUARD_SECONDS):
        assert ProxyProtocolV1.process_pp_v1(reader, b"") == expected
    feeder.join()
    assert read_rest(reader, len(AFTER)) == AFTER


MALFORMED_V1 = [
    b"PROXY TCP4 192.0.2.10 198.51.100.2 56324\r\n",            # a field missing
    b"PROXY TCP4 192.0.2.10 198.51.100.2 56324 25 9\r\n",       # one too many
    b"PROXY TCP4  192.0.2.10 198.51.100.2 56324 25\r\n",        # double space
    b"PROXY TCP4 2001:db8::1 198.51.100.2 56324 25\r\n",        # family mismatch
    b"PROXY TCP6 192.0.2.10 2001:db8::2 56324 25\r\n",
    b"PROXY TCP4 192.0.2.256 198.51.100.2 56324 25\r\n",        # bad address
    b"PROXY TCP4 192.0.02.10 198.51.100.2 56324 25\r\n",        # leading zero
    b"PROXY TCP4 192.0.2.10 198.51.100.2 65536 25\r\n",         # port range
    b"PROXY TCP4 192.0.2.10 198.51.100.2 +1 25\r\n",
    b"PROXY TCP4 192.0.2.10 198.51.100.2 056 25\r\n",
    b"PROXY TCP4 192.0.2.10 198.51.100.2 -1 25\r\n",
    b"PROXY UDP4 192.0.2.10 198.51.100.2 1 25\r\n",             # unknown family
    b"PROXY TCP4 192.0.2.10 198.51.100.2 1 25\n",               # bare LF
    b"PROXY TCP4 192.0.2.10\r198.51.100.2 1 25\r\n",
    b"proxy TCP4 192.0.2.10 198.51.100.2 1 25\r\n",
]


@pytest.mark.parametrize("header", MALFORMED_V1)
def test_malformed_v1_lines_are_rejected(header: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        ProxyProtocolV1.parse_pp_line(header)
    assert issubclass(ProxyProtocolError, AssertionError)


def test_v1_without_crlf_stops_at_107_bytes(pair: Any) -> None:
    reader, writer = pair
    writer.sendall(b"PROXY UNKNOWN " + b"x" * 500)
    writer.shutdown(socket.SHUT_WR)
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(ProxyProtocolError, match="too long"):
        ProxyProtocolV1.process_pp_v1(reader, b"")
    # Nothing past the limit was consumed.
    assert len(read_rest(reader, 1000)) == 514 - MAX_V1_HEADER_BYTES


def test_v1_eof_is_rejected(pair: Any) -> None:
    reader, writer = pair
    writer.sendall(b"PROXY TCP4 192.0.2.1")
    writer.shutdown(socket.SHUT_WR)
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(ProxyProtocolError, match="EOF"):
        ProxyProtocolV1.process_pp_v1(reader, b"")


V2_CASES = [
    (v2_tcp4("192.0.2.10", "198.51.100.2", 56324, 25),
     (("192.0.2.10", 56324), ("198.51.100.2", 25))),
    (v2_tcp4("192.0.2.10", "198.51.100.2", 56324, 25, HAPROXY_TLVS),
     (("192.0.2.10", 56324), ("198.51.100.2", 25))),
    (v2_tcp6("2001:db8::1", "2001:db8::2", 1, 465),
     (("2001:db8::1", 1), ("2001:db8::2", 465))),
    (v2(0x1, 0x00, b""), ((None, None), (None, None))),                    # UNSPEC
    (v2(0x1, 0x31, b"/tmp/a".ljust(108, b"\0") + b"/tmp/b".ljust(108, b"\0")),
     ((None, None), (None, None))),                                        # AF_UNIX
    (v2(0x1, 0x12, socket.inet_aton("192.0.2.1") * 2 + b"\0\x35\0\x35"),
     (("192.0.2.1", 53), ("192.0.2.1", 53))),                              # UDP4
]


@pytest.mark.parametrize(("header", "expected"), V2_CASES)
@pytest.mark.parametrize("piece", [1, 7, 1000])
def test_v2_read_takes_exactly_the_header(pair: Any, header: bytes, expected: Any,
                                          piece: int) -> None:
    reader, writer = pair
    feeder = feed(writer, header + AFTER, piece)
    with gevent.Timeout(GUARD_SECONDS):
        assert ProxyProtocolV2.process_pp_v2(reader, b"") == expected
    feeder.join()
    assert read_rest(reader, len(AFTER)) == AFTER


def test_v2_local_command() -> None:
    with pytest.raises(LocalConnection):
        ProxyProtocolV2.parse_pp_v2(v2(0x0, 0x00, b""))
    with pytest.raises(LocalConnection):
        ProxyProtocolV2.parse_pp_v2(v2(0x0, 0x11, b"\0" * 12))


MALFORMED_V2 = [
    b"\r\n\r\n\x00\r\nQUIT\x0a".replace(b"QUIT", b"QUIX") + b"\x21\x11\x00\x0c" + b"\0" * 12,
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\0" * 12,     # version 1 in a v2 header
    V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\0" * 12,     # command 2
    V2_SIGNATURE + b"\x21\x41\x00\x0c" + b"\0" * 12,     # family 4
    V2_SIGNATURE + b"\x21\x13\x00\x0c" + b"\0" * 12,     # transport 3
    V2_SIGNATURE + b"\x21\x11\x00\x08" + b"\0" * 8,      # IPv4 block too short
    V2_SIGNATURE + b"\x21\x21\x00\x0c" + b"\0" * 12,     # IPv6 block too short
    V2_SIGNATURE + b"\x21\x31\x00\x0c" + b"\0" * 12,     # unix block too short
]


@pytest.mark.parametrize("header", MALFORMED_V2)
def test_malformed_v2_headers_are_rejected(pair: Any, header: bytes) -> None:
    reader, writer = pair
    writer.sendall(header)
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(ProxyProtocolError):
        ProxyProtocolV2.process_pp_v2(reader, b"")


def test_v2_truncated_is_rejected(pair: Any) -> None:
    reader, writer = pair
    writer.sendall(v2_tcp4("192.0.2.1", "192.0.2.2", 1, 2)[:20])
    writer.shutdown(socket.SHUT_WR)
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(ProxyProtocolError, match="EOF"):
        ProxyProtocolV2.process_pp_v2(reader, b"")


def test_mixin_requires_an_edge_server() -> None:
    with pytest.raises(ValueError):
        ProxyProtocol.mixin(object())


class Recorder(EdgeServer):
    def __init__(self) -> None:
        super().__init__(None, None)
        self.handled: list[Any] = []

    def handle(self, socket: Any, address: Any) -> None:
        self.handled.append((address, socket.recv(100)))


@pytest.mark.parametrize(
    ("cls", "header", "address"),
    [
        (ProxyProtocol, b"PROXY TCP4 192.0.2.10 198.51.100.2 56324 25\r\n", ("192.0.2.10", 56324)),
        (ProxyProtocol, v2_tcp6("2001:db8::1", "2001:db8::2", 7, 25), ("2001:db8::1", 7)),
        (ProxyProtocolV1, b"PROXY UNKNOWN\r\n", (None, None)),
        (ProxyProtocolV2, v2_tcp4("192.0.2.10", "198.51.100.2", 9, 25), ("192.0.2.10", 9)),
        (ProxyProtocol, v2(0x0, 0x00, b""), "PEER"),
        (ProxyProtocolV2, v2(0x0, 0x00, b""), "PEER"),
    ],
)
def test_handle_passes_the_real_source(pair: Any, cls: Any, header: bytes, address: Any) -> None:
    reader, writer = pair
    edge = Recorder()
    cls.mixin(edge)
    assert isinstance(edge, cls) and isinstance(edge, Recorder)
    writer.sendall(header + AFTER)
    with gevent.Timeout(GUARD_SECONDS):
        edge.handle(reader, "PEER")
    assert edge.handled == [(address, AFTER)]


@pytest.mark.parametrize("data", [b"EHLO x.example\r\n", b"PROXY TCP4 1.2.3.4\r\n",
                                  b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x00"])
def test_handle_closes_on_a_bad_header(pair: Any, data: bytes) -> None:
    reader, writer = pair
    edge = Recorder()
    ProxyProtocol.mixin(edge)
    writer.sendall(data)
    with gevent.Timeout(GUARD_SECONDS):
        edge.handle(reader, "PEER")
    assert edge.handled == []
    assert reader.fileno() == -1


def test_handle_times_out_a_silent_proxy(pair: Any) -> None:
    reader, writer = pair
    edge = Recorder()
    ProxyProtocol.mixin(edge)
    edge.proxyproto_timeout = 0.05
    writer.sendall(b"PROXY TCP4")
    with gevent.Timeout(GUARD_SECONDS):
        edge.handle(reader, "PEER")
    assert edge.handled == []
    assert reader.fileno() == -1


# -- through SmtpEdge ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "ip"),
    [
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 25\r\n", "203.0.113.7"),
        (v2_tcp6("2001:db8::7", "2001:db8::1", 51234, 25) , "2001:db8::7"),
        (v2_tcp4("203.0.113.8", "192.0.2.1", 4, 25, HAPROXY_TLVS), "203.0.113.8"),
        (v2(0x0, 0x00, b""), "127.0.0.1"),
    ],
)
def test_smtp_edge_sees_the_real_client(smtp_edge: Any, header: bytes, ip: str) -> None:
    e = smtp_edge()
    ProxyProtocol.mixin(e.edge)
    wire = connect(e.address)
    try:
        # The header and the first commands in one packet, as a pipelining client behind
        # HAProxy sends them.
        wire.send(header + b"EHLO client.example\r\nMAIL FROM:<a@x.test>\r\n"
                  b"RCPT TO:<b@y.test>\r\nDATA\r\n")
        assert wire.codes(5) == ["220", "250", "250", "250", "354"]
        wire.send(b"Subject: pp\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        assert wire.codes(2) == ["250", "221"]
    finally:
        wire.close()
    [env] = e.stored()
    assert env.client["ip"] == ip
    assert env.client["name"] == "client.example"


def test_smtp_edge_closes_without_a_banner_on_a_bad_header(smtp_edge: Any) -> None:
    e = smtp_edge()
    ProxyProtocol.mixin(e.edge)
    wire = connect(e.address)
    try:
        wire.send(b"EHLO not-a-proxy.example\r\n")
        assert wire.rest() == b""
    finally:
        wire.close()
    assert e.stored() == []


# -- behind a real HAProxy -------------------------------------------------------------------------


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_smtp_edge_behind_haproxy(smtp_edge: Any, haproxy: Any, send_proxy: str) -> None:
    e = smtp_edge()
    ProxyProtocol.mixin(e.edge)
    front = haproxy(e.address, send_proxy=send_proxy)
    # The client comes from 127.0.0.2; HAProxy itself connects from 127.0.0.1.
    sock = gevent.socket.socket()
    sock.settimeout(GUARD_SECONDS)
    sock.bind(("127.0.0.2", 0))
    sock.connect(front)
    wire = Wire(sock)
    try:
        assert wire.reply()[0] == "220"
        wire.send(b"EHLO client.example\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
                  b"DATA\r\n")
        assert wire.codes(4) == ["250", "250", "250", "354"]
        wire.send(b"Subject: via haproxy\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        assert wire.codes(2) == ["250", "221"]
    finally:
        wire.close()
    [env] = e.stored()
    assert env.client["ip"] == "127.0.0.2"
