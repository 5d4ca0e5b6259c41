"""DNS faults seen through MxSmtpRelay: timeouts, SERVFAIL, truncation, garbage packets.

The real DNS server of ``support.dns_server`` answers in its own thread; the subclass
here (:class:`HostileDnsServer`, nothing changed in the support module) can also
answer a name with bytes that are not a valid reply. Every MX host is routed by a
``socket_creator`` to a local fault server, so a delivery is visible there.

For every fault: the attempt fails *transiently* with ``451 4.4.3`` (a DNS failure is
never permanent; see "Reply codes the relays produce" in doc/semantics.rst) within
the resolver's timeout, nothing is connected to, the resolver stays usable (a fresh
domain is delivered right after), and no descriptor or greenlet leaks.
"""

from __future__ import annotations

import socket
import struct
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.socket
import pytest
from dnslib import DNSRecord
from support.dns_server import RESOLVER_TIMEOUT_SECONDS, DnsTestServer
from support.faultserver import FaultServer
from support.reliability import (
    SLACK_SECONDS,
    assert_no_leaks,
    assert_relay_error,
    make_envelope,
    resources,
    timed_attempt,
)

from slimta.relay.smtp.mx import MxSmtpRelay
from slimta.smtp.reply import Reply
from slimta.util.dns import DNSResolver

pytestmark = pytest.mark.usefixtures("no_relay_leaks")

#: MX, then (on NODATA) AAAA and A: at most three lookups, one try each.
DNS_BOUND_SECONDS = 3 * RESOLVER_TIMEOUT_SECONDS + SLACK_SECONDS


def _garbage_modes() -> dict[str, Callable[[bytes], bytes]]:
    """How to spoil the answer to the query ``q`` (raw wire bytes)."""

    def header_only(q: bytes) -> bytes:
        return q[:2] + b"\x81"  # shorter than a DNS header

    def random_tail(q: bytes) -> bytes:
        # Right ID, QR set, "one answer", then noise where the records should be.
        return q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + b"\xde\xad\xbe\xef" * 8

    def wrong_id(q: bytes) -> bytes:
        reply = DNSRecord.parse(q).reply()
        reply.header.id = (reply.header.id + 1) & 0xFFFF  # not an answer to our query
        return bytes(reply.pack())

    def bad_pointer(q: bytes) -> bytes:
        # A well-formed header and question, then an answer whose name is a
        # compression pointer to itself (a loop).
        question = q[12:]
        answer = b"\xc0" + bytes([12 + len(question)]) + struct.pack("!HHIH", 15, 1, 60, 0)
        return q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + answer

    return {"header_only": header_only, "random_tail": random_tail, "wrong_id": wrong_id,
            "bad_pointer": bad_pointer}


#: Spoiled answers that c-ares reports as a lookup failure. ``bad_pointer`` is not
#: among them: c-ares 1.34 reports that answer as NODATA, which the relay rightly
#: treats as "no usable records" (550 5.1.2), so it is checked separately.
TRANSIENT_GARBAGE = ("header_only", "random_tail", "wrong_id")


GARBAGE_MODES = _garbage_modes()


class HostileDnsServer(DnsTestServer):
    """A :class:`DnsTestServer` that can answer chosen names with garbage."""

    def __init__(self) -> None:
        super().__init__()
        self._garbage: dict[str, Callable[[bytes], bytes]] = {}

    def garble(self, name: str, mode: str) -> None:
        """Answer every query for ``name`` (UDP and TCP) with garbage of ``mode``."""
        with self._lock:
            self._garbage[name.lower().rstrip(".")] = GARBAGE_MODES[mode]

    def answer(self, data: bytes, transport: str) -> bytes | None:
        try:
            name = str(DNSRecord.parse(data).q.qname).lower().rstrip(".")
        except Exception:
            return None
        with self._lock:
            spoil = self._garbage.get(name)
        if spoil is not None:
            return spoil(data)
        return super().answer(data, transport)


@pytest.fixture
def hostile_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostileDnsServer]:
    server = HostileDnsServer()
    server.start()
    DNSResolver.reset()
    monkeypatch.setattr(DNSResolver, "channel_options", server.channel_options())
    try:
        yield server
    finally:
        DNSResolver.reset()
        server.stop()


class Router:
    """socket_creator: every MX host name goes to one local server."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.calls: list[tuple[str, int]] = []

    def __call__(self, address: tuple[str, int]) -> socket.socket:
        self.calls.append(address)
        return gevent.socket.create_connection(self.target)


def unique() -> str:
    return f"d-{uuid.uuid4().hex[:10]}.test"


@pytest.fixture
def setup(
    hostile_dns: HostileDnsServer, fast_fault_server: Callable[..., FaultServer]
) -> Iterator[tuple[HostileDnsServer, FaultServer, Router, MxSmtpRelay]]:
    server = fast_fault_server()
    router = Router(server.address)
    relay = MxSmtpRelay(socket_creator=router, ehlo_as="relay.test", connect_timeout=5.0,
                        command_timeout=5.0, pool_size=2)
    try:
        yield hostile_dns, server, router, relay
    finally:
        relay.kill()


def _deliverable(dns: DnsTestServer) -> str:
    domain = unique()
    dns.add_mx(domain, 10, "mx." + domain)
    return domain


def _check_delivered(relay: MxSmtpRelay, domain: str) -> None:
    outcome = timed_attempt(relay, make_envelope(rcpts=[f"user@{domain}"]))
    assert outcome.error is None, outcome.error
    reply = outcome.result[f"user@{domain}"]
    assert isinstance(reply, Reply) and reply.code == "250"


def _warm_up(dns: DnsTestServer, relay: MxSmtpRelay) -> None:
    """One delivery first: the resolver's channel and sockets are then in place."""
    _check_delivered(relay, _deliverable(dns))


FAULTS = ["timeout", "servfail", "refused", *TRANSIENT_GARBAGE]


@pytest.mark.parametrize("fault", FAULTS)
def test_dns_fault_is_transient_and_bounded(
    setup: tuple[HostileDnsServer, FaultServer, Router, MxSmtpRelay], fault: str
) -> None:
    dns, server, router, relay = setup
    _warm_up(dns, relay)
    calls = len(router.calls)
    before = resources()
    domain = unique()
    if fault == "timeout":
        dns.drop(domain)
    elif fault in ("servfail", "refused"):
        dns.set_rcode(domain, fault.upper())
    else:
        dns.garble(domain, fault)
    outcome = timed_attempt(relay, make_envelope(rcpts=[f"user@{domain}"]))
    assert_relay_error(outcome.error, False, "451", "4.4.3", b"RCPT")
    assert outcome.elapsed < DNS_BOUND_SECONDS, f"{outcome.elapsed:.2f}s"
    assert len(router.calls) == calls  # no connection for an unroutable domain
    # The resolver is still fine: another domain goes through at once.
    _check_delivered(relay, _deliverable(dns))
    relay.kill()
    server.wait_closed()
    assert_no_leaks(before)


def test_transient_dns_failure_is_cached_briefly_then_recovers(
    setup: tuple[HostileDnsServer, FaultServer, Router, MxSmtpRelay],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # SERVFAIL, then the zone is fixed: the MX relay remembers a failed lookup for at
    # most 5 s, after which the same domain is delivered.
    import slimta.relay.smtp.mx as mx_module

    dns, _server, _router, relay = setup
    domain = unique()
    dns.set_rcode(domain, "SERVFAIL")
    assert_relay_error(timed_attempt(relay, make_envelope(rcpts=[f"u@{domain}"])).error,
                       False, "451", "4.4.3")
    with dns._lock:  # fix the zone
        del dns._rcodes[domain]
    dns.add_mx(domain, 10, "mx." + domain)
    real = mx_module.time.monotonic
    monkeypatch.setattr(mx_module.time, "monotonic", lambda: real() + 6.0)
    _check_delivered(relay, domain)


def test_truncated_udp_answer_is_retried_over_tcp_and_delivered(
    setup: tuple[HostileDnsServer, FaultServer, Router, MxSmtpRelay],
) -> None:
    dns, server, router, relay = setup
    domain = _deliverable(dns)
    dns.truncate(domain)
    _check_delivered(relay, domain)
    assert dns.queries(domain, "MX", "udp") >= 1
    assert dns.queries(domain, "MX", "tcp") >= 1
    assert router.calls[-1] == ("mx." + domain, 25)


@pytest.mark.parametrize("mode", ["random_tail", "header_only"])
def test_truncated_udp_then_garbage_over_tcp(
    setup: tuple[HostileDnsServer, FaultServer, Router, MxSmtpRelay], mode: str
) -> None:
    dns, _server, router, relay = setup
    _warm_up(dns, relay)
    calls = len(router.calls)
    domain = unique()

    class TruncateThenSpoil:
        def __call__(self, q: bytes) -> bytes:
            reply = DNSRecord.parse(q).reply()
            reply.header.tc = 1
            return bytes(reply.pack())

    spoil_tcp = GARBAGE_MODES[mode]
    original = dns.answer

    def answer(data: bytes, transport: str) -> bytes | None:
        name = str(DNSRecord.parse(data).q.qname).lower().rstrip(".")
        if name == domain:
            return TruncateThenSpoil()(data) if transport == "udp" else spoil_tcp(data)
        return original(data, transport)

    dns.answer = answer  # type: ignore[method-assign]
    outcome = timed_attempt(relay, make_envelope(rcpts=[f"user@{domain}"]))
    assert_relay_error(outcome.error, False, "451", "4.4.3", b"RCPT")
    assert outcome.elapsed < DNS_BOUND_SECONDS
    assert len(router.calls) == calls


def test_dns_server_gone_entirely(
    hostile_dns: HostileDnsServer, fast_fault_server: Callable[..., FaultServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing listens on the configured port: ICMP port unreachable / no answer.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()
    DNSResolver.reset()
    monkeypatch.setattr(DNSResolver, "channel_options",
                        hostile_dns.channel_options(udp_port=dead_port, tcp_port=dead_port))
    server = fast_fault_server()
    relay = MxSmtpRelay(socket_creator=Router(server.address), ehlo_as="relay.test")
    try:
        outcome = timed_attempt(relay, make_envelope(rcpts=[f"user@{unique()}"]))
        assert_relay_error(outcome.error, False, "451", "4.4.3", b"RCPT")
        assert outcome.elapsed < DNS_BOUND_SECONDS
    finally:
        relay.kill()


def test_many_concurrent_lookups_under_faults(
    setup: tuple[HostileDnsServer, FaultServer, Router, MxSmtpRelay],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A burst mixing good, dropped, SERVFAIL and garbage domains: every attempt gets
    # one result within the bound, and every failure is transient 451 4.4.3.
    # c-ares (1.34) fails the other queries in flight on a UDP socket that delivered
    # an unparseable answer with EBADRESP, so a good domain may fail too, but only
    # transiently: retried once the cached failure expires, each is delivered.
    import slimta.relay.smtp.mx as mx_module

    dns, _server, _router, relay = setup
    _warm_up(dns, relay)
    before = resources()
    plan: list[tuple[str, bool]] = []
    for i in range(24):
        kind = i % 4
        if kind == 0:
            plan.append((_deliverable(dns), True))
            continue
        domain = unique()
        if kind == 1:
            dns.drop(domain)
        elif kind == 2:
            dns.set_rcode(domain, "SERVFAIL")
        else:
            dns.garble(domain, "random_tail")
        plan.append((domain, False))
    jobs = [gevent.spawn(timed_attempt, relay, make_envelope(rcpts=[f"u@{d}"]))
            for d, _ in plan]
    gevent.joinall(jobs, raise_error=True)
    retry = []
    for (domain, good), job in zip(plan, jobs, strict=True):
        outcome: Any = job.value
        assert outcome.elapsed < DNS_BOUND_SECONDS
        if good and outcome.error is None:
            assert isinstance(outcome.result[f"u@{domain}"], Reply)
            continue
        error = assert_relay_error(outcome.error, False, "451", "4.4.3", b"RCPT")
        if good:
            assert "EBADRESP" in str(error), error
            retry.append(domain)
    real = mx_module.time.monotonic
    monkeypatch.setattr(mx_module.time, "monotonic", lambda: real() + 6.0)
    for domain in retry:
        _check_delivered(relay, domain)
    relay.kill()
    assert_no_leaks(before)
