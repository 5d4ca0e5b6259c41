"""A real DNS server on loopback whose answers each test controls.

The server speaks UDP and TCP on one free port of 127.0.0.1 and runs in an OS
thread, so the gevent hub in the main thread sees ordinary network peers. dnslib
only parses and builds the messages. Fixtures:

* ``dns_server``: a started :class:`DnsTestServer`, stopped after the test.
* ``dns_resolver``: :class:`slimta.util.dns.DNSResolver` pointed at it through
  ``channel_options`` (short timeout, one try), reset before and after.

Unknown names answer NXDOMAIN; a known name asked for a type it lacks answers
NODATA (NOERROR, empty answer). Remember that c-ares >= 1.23 caches answers:
a test that counts queries should use names no other query touched.
"""

from __future__ import annotations

import collections
import selectors
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from dnslib import AAAA, CNAME, MX, NS, PTR, QTYPE, RCODE, RR, SOA, SRV, TXT, A, DNSRecord

__all__ = ["DnsTestServer"]

#: The resolver's per-try timeout in the ``dns_resolver`` fixture, in seconds.
RESOLVER_TIMEOUT_SECONDS = 0.5
#: Largest TCP message we accept (DNS over TCP frames are at most 65535 bytes).
MAX_TCP_MESSAGE_BYTES = 65535
#: How far CNAME chains are followed inside the zone.
MAX_CNAME_HOPS = 8


def _key(name: str) -> str:
    name = name.lower()
    return name[:-1] if name.endswith(".") and name != "." else name


class DnsTestServer:
    """A small authoritative server for one test's records.

    Names are case-insensitive and may be given with or without the final dot.
    Every ``add_*`` method takes ``ttl`` in seconds.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], list[tuple[Any, int]]] = collections.defaultdict(list)
        self._names: set[str] = set()
        self._rcodes: dict[str, int] = {}
        self._dropped: set[str] = set()
        self._truncated: set[str] = set()
        self._counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._thread: threading.Thread | None = None
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()

    # -- test control --------------------------------------------------------

    def add(self, name: str, rtype: str, rdata: Any, ttl: int = 300) -> None:
        """Add one record of type ``rtype`` (``'MX'``, ``'A'``, …) with dnslib ``rdata``."""
        with self._lock:
            self._records[(_key(name), rtype.upper())].append((rdata, ttl))
            self._names.add(_key(name))

    def add_mx(self, name: str, priority: int, host: str, ttl: int = 300) -> None:
        """Add ``MX priority host``; ``host='.'`` makes a null MX (RFC 7505)."""
        self.add(name, "MX", MX(host, priority), ttl)

    def add_a(self, name: str, address: str, ttl: int = 300) -> None:
        self.add(name, "A", A(address), ttl)

    def add_aaaa(self, name: str, address: str, ttl: int = 300) -> None:
        self.add(name, "AAAA", AAAA(address), ttl)

    def add_txt(self, name: str, *strings: bytes | str, ttl: int = 300) -> None:
        """Add one TXT record made of ``strings`` (each at most 255 bytes)."""
        data = [s.encode("utf-8") if isinstance(s, str) else s for s in strings]
        self.add(name, "TXT", TXT(data), ttl)

    def add_cname(self, name: str, target: str, ttl: int = 300) -> None:
        self.add(name, "CNAME", CNAME(target), ttl)

    def add_ptr(self, name: str, target: str, ttl: int = 300) -> None:
        self.add(name, "PTR", PTR(target), ttl)

    def add_ns(self, name: str, target: str, ttl: int = 300) -> None:
        self.add(name, "NS", NS(target), ttl)

    def add_soa(
        self,
        name: str,
        mname: str,
        rname: str,
        times: tuple[int, int, int, int, int],
        ttl: int = 300,
    ) -> None:
        """Add an SOA; ``times`` is ``(serial, refresh, retry, expire, minimum)``."""
        self.add(name, "SOA", SOA(mname, rname, times), ttl)

    def add_srv(
        self, name: str, priority: int, weight: int, port: int, target: str, ttl: int = 300
    ) -> None:
        self.add(name, "SRV", SRV(priority, weight, port, target), ttl)

    def exists(self, name: str) -> None:
        """Make ``name`` exist without records, so every type answers NODATA."""
        with self._lock:
            self._names.add(_key(name))

    def set_rcode(self, name: str, rcode: str | int) -> None:
        """Answer every query for ``name`` with ``rcode`` (``'NXDOMAIN'``, ``'SERVFAIL'``…)."""
        value = getattr(RCODE, rcode.upper()) if isinstance(rcode, str) else rcode
        with self._lock:
            self._rcodes[_key(name)] = value

    def drop(self, name: str) -> None:
        """Never answer queries for ``name`` (on UDP or TCP), to test timeouts."""
        with self._lock:
            self._dropped.add(_key(name))

    def truncate(self, name: str) -> None:
        """Answer ``name`` over UDP with the TC bit and no records, forcing TCP."""
        with self._lock:
            self._truncated.add(_key(name))

    def queries(self, name: str, rtype: str, transport: str | None = None) -> int:
        """How many queries for ``(name, rtype)`` arrived, on ``'udp'``, ``'tcp'`` or both."""
        with self._lock:
            return sum(
                count
                for (n, t, proto), count in self._counts.items()
                if n == _key(name) and t == rtype.upper() and transport in (None, proto)
            )

    def channel_options(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for :class:`pycares.Channel` that target this server."""
        options: dict[str, Any] = {
            "servers": [self.host],
            "udp_port": self.port,
            "tcp_port": self.port,
            "timeout": RESOLVER_TIMEOUT_SECONDS,
            "tries": 1,
        }
        options.update(overrides)
        return options

    # -- answering -----------------------------------------------------------

    def answer(self, data: bytes, transport: str) -> bytes | None:
        """Build the reply to the wire message ``data``, or ``None`` to stay silent."""
        try:
            request = DNSRecord.parse(data)
        except Exception:
            return None
        if not request.questions:
            return None
        question = request.q
        name = _key(str(question.qname))
        rtype = QTYPE.get(question.qtype, str(question.qtype))
        reply = request.reply()
        reply.header.ra = 0
        with self._lock:
            self._counts[(name, rtype, transport)] += 1
            if name in self._dropped:
                return None
            if name in self._rcodes:
                reply.header.rcode = self._rcodes[name]
            elif transport == "udp" and name in self._truncated:
                reply.header.tc = 1
            elif name not in self._names:
                reply.header.rcode = RCODE.NXDOMAIN
            else:
                self._fill(reply, question.qname, name, rtype)
        return bytes(reply.pack())

    def _fill(self, reply: DNSRecord, qname: Any, name: str, rtype: str) -> None:
        owner = qname
        for _ in range(MAX_CNAME_HOPS):
            records = self._records.get((name, rtype))
            if records:
                for rdata, ttl in records:
                    reply.add_answer(RR(owner, QTYPE.reverse[rtype], ttl=ttl, rdata=rdata))
                return
            aliases = self._records.get((name, "CNAME"))
            if rtype == "CNAME" or not aliases:
                return
            rdata, ttl = aliases[0]
            reply.add_answer(RR(owner, QTYPE.CNAME, ttl=ttl, rdata=rdata))
            owner = rdata.label
            name = _key(str(rdata.label))

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Bind UDP and TCP on the same free port and start serving."""
        for _ in range(50):
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((self.host, 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.bind((self.host, port))
            except OSError:
                tcp.close()
                udp.close()
                continue
            tcp.listen(64)
            self._tcp, self._udp, self.port = tcp, udp, port
            break
        else:
            raise RuntimeError("no free port for both UDP and TCP")
        self._thread = threading.Thread(target=self._serve, name="dns-test-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close every socket."""
        if self._thread is not None:
            self._wake_w.send(b"x")
            self._thread.join(5)
            self._thread = None
        for sock in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def _serve(self) -> None:
        assert self._udp is not None and self._tcp is not None
        selector = selectors.DefaultSelector()
        buffers: dict[socket.socket, bytearray] = {}
        selector.register(self._udp, selectors.EVENT_READ, "udp")
        selector.register(self._tcp, selectors.EVENT_READ, "listen")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while True:
                for key, _events in selector.select():
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if key.data == "wake":
                        return
                    if key.data == "udp":
                        data, peer = sock.recvfrom(65535)
                        reply = self.answer(data, "udp")
                        if reply is not None:
                            sock.sendto(reply, peer)
                    elif key.data == "listen":
                        conn, _ = sock.accept()
                        buffers[conn] = bytearray()
                        selector.register(conn, selectors.EVENT_READ, "tcp")
                    elif not self._read_tcp(sock, buffers[sock]):
                        selector.unregister(sock)
                        del buffers[sock]
                        sock.close()
        finally:
            for conn in buffers:
                conn.close()
            selector.close()

    def _read_tcp(self, conn: socket.socket, buf: bytearray) -> bool:
        try:
            data = conn.recv(65535)
        except OSError:
            return False
        if not data:
            return False
        buf += data
        while len(buf) >= 2:
            (size,) = struct.unpack("!H", buf[:2])
            if len(buf) < 2 + size:
                break
            message = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            reply = self.answer(message, "tcp")
            if reply is not None and len(reply) <= MAX_TCP_MESSAGE_BYTES:
                try:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return False
        return True


@pytest.fixture
def dns_server() -> Iterator[DnsTestServer]:
    """A running :class:`DnsTestServer` on 127.0.0.1, UDP and TCP on one port."""
    server = DnsTestServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dns_resolver(dns_server: DnsTestServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """:class:`~slimta.util.dns.DNSResolver`, querying ``dns_server`` only."""
    from slimta.util.dns import DNSResolver

    DNSResolver.reset()
    monkeypatch.setattr(DNSResolver, "channel_options", dns_server.channel_options())
    try:
        yield DNSResolver
    finally:
        DNSResolver.reset()
