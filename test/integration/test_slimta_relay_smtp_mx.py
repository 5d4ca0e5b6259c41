"""MxSmtpRelay and MxRecord against a real DNS server and real SMTP servers on loopback.

MX host names are made up (``mx1.test``...); a ``socket_creator`` maps each
``(host, 25)`` to a local server, so routing decisions are visible as connections.
"""

from __future__ import annotations

import socket
import uuid
from functools import partial

import gevent
import pycares
import pytest
from gevent.socket import create_connection
from support import envelopes
from support.faultserver import Hangup
from support.util import GUARD_SECONDS

from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.relay.smtp import SmtpPermanentRelayError
from slimta.relay.smtp import mx as mx_module
from slimta.relay.smtp.mx import MxRecord, MxSmtpRelay, NoDomainError, NullMxError
from slimta.util.dns import DNSError, MxAnswer


def unique(prefix: str = "d") -> str:
    """A domain no other query touched (c-ares caches answers by name)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}.test"


make_envelope = partial(
    envelopes.make_envelope,
    sender="sender@example.com",
    rcpts=(),
    data=b"From: sender@example.com\r\nSubject: mx test\r\n\r\nhello\r\n",
)


class Router:
    """A socket_creator that sends each MX host to a chosen local address."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, int] | None] = {}
        self.calls: list[tuple[str, int]] = []

    def __call__(self, address: tuple[str, int]) -> socket.socket:
        self.calls.append(address)
        target = self.routes.get(address[0])
        if target is None:
            raise ConnectionRefusedError(111, "Connection refused")
        return create_connection(target, timeout=5)


@pytest.fixture
def router() -> Router:
    return Router()


@pytest.fixture
def relay_factory(dns_resolver, router):
    made: list[MxSmtpRelay] = []

    def make(**kwargs) -> MxSmtpRelay:
        kwargs.setdefault("socket_creator", router)
        kwargs.setdefault("ehlo_as", "relay.example.com")
        kwargs.setdefault("connect_timeout", 5.0)
        kwargs.setdefault("command_timeout", 5.0)
        relay = MxSmtpRelay(**kwargs)
        made.append(relay)
        return relay

    yield make
    for relay in made:
        relay.kill()


# -- MxRecord ------------------------------------------------------------------


def test_mx_records_sorted_and_cached(dns_server, dns_resolver):
    domain = unique()
    dns_server.add_mx(domain, 20, "backup.example.net")
    dns_server.add_mx(domain, 10, "primary.example.net")
    record = MxRecord(domain)
    assert record.expired
    with gevent.Timeout(GUARD_SECONDS):
        assert record.get() == [(10, "primary.example.net"), (20, "backup.example.net")]
        assert not record.expired
        record.get()
    assert dns_server.queries(domain, "MX") == 1


def test_equal_preferences_are_shuffled(dns_server, dns_resolver):
    domain = unique()
    for host in ("a.example.net", "b.example.net", "c.example.net"):
        dns_server.add_mx(domain, 10, host)
    dns_server.add_mx(domain, 5, "first.example.net")
    record = MxRecord(domain)
    orders = set()
    with gevent.Timeout(GUARD_SECONDS):
        for _ in range(60):
            got = record.get()
            assert got[0] == (5, "first.example.net")
            orders.add(tuple(host for _, host in got[1:]))
    assert len(orders) > 1
    expected = ["a.example.net", "b.example.net", "c.example.net"]
    assert all(sorted(order) == expected for order in orders)


def test_ttl_expiry_triggers_a_new_lookup(dns_server, dns_resolver, monkeypatch):
    domain = unique()
    dns_server.add_mx(domain, 10, "mx.example.net", ttl=30)
    now = [1000.0]
    monkeypatch.setattr(mx_module.time, "monotonic", lambda: now[0])
    lookups = []
    real_query = mx_module.DNSResolver.query

    def spy(name, qtype):
        lookups.append((name, qtype))
        return real_query(name, qtype)

    monkeypatch.setattr(mx_module.DNSResolver, "query", spy)
    record = MxRecord(domain)
    with gevent.Timeout(GUARD_SECONDS):
        record.get()
        # pycares 4 reports no TTL for MX answers: those count as 300 seconds.
        ttl = 300 if pycares.__version__.startswith("4.") else 30
        now[0] += ttl - 1
        record.get()
        assert len(lookups) == 1 and not record.expired
        now[0] += 2  # the TTL passes
        assert record.expired
        assert record.get() == [(10, "mx.example.net")]
    assert len(lookups) == 2


def test_unknown_ttl_counts_as_300_seconds():
    assert mx_module._ttl_of([MxAnswer("a", 10, -1)]) == 300
    assert mx_module._ttl_of([MxAnswer("a", 10, 40), MxAnswer("b", 10, 20)]) == 20
    assert mx_module._ttl_of([MxAnswer("a", 10, 10**7)]) == 86400


def test_null_mx(dns_server, dns_resolver):
    domain = unique()
    dns_server.add_mx(domain, 0, ".")
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(NullMxError):
        MxRecord(domain).get()


def test_root_exchange_beside_real_ones_is_dropped(dns_server, dns_resolver):
    domain = unique()
    dns_server.add_mx(domain, 0, ".")
    dns_server.add_mx(domain, 10, "mx.example.net")
    with gevent.Timeout(GUARD_SECONDS):
        assert MxRecord(domain).get() == [(10, "mx.example.net")]


def test_nxdomain_is_cached_negatively(dns_server, dns_resolver):
    domain = unique()
    record = MxRecord(domain, negative_ttl=60)
    with gevent.Timeout(GUARD_SECONDS):
        for _ in range(3):
            with pytest.raises(ValueError) as info:
                record.get()
            assert not isinstance(info.value, NullMxError)
            assert str(info.value) == "No usable DNS records found: " + domain
    assert dns_server.queries(domain, "MX") == 1


@pytest.mark.parametrize("kind", ["A", "AAAA"])
def test_implicit_mx_from_address_records(dns_server, dns_resolver, kind):
    domain = unique()
    if kind == "A":
        dns_server.add_a(domain, "192.0.2.7")
    else:
        dns_server.add_aaaa(domain, "2001:db8::7")
    with gevent.Timeout(GUARD_SECONDS):
        assert MxRecord(domain).get() == [(0, domain)]


def test_nodata_everywhere_is_no_usable_records(dns_server, dns_resolver):
    domain = unique()
    dns_server.add_txt(domain, "v=spf1 -all")  # the name exists, with no MX, AAAA or A
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(ValueError, match="No usable DNS"):
        MxRecord(domain).get()


def test_servfail_is_a_dns_error(dns_server, dns_resolver):
    domain = unique()
    dns_server.set_rcode(domain, "SERVFAIL")
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(DNSError):
        MxRecord(domain).get()


def test_concurrent_gets_share_one_query(dns_server, dns_resolver):
    domain = unique()
    dns_server.add_mx(domain, 10, "mx.example.net")
    record = MxRecord(domain)
    with gevent.Timeout(GUARD_SECONDS):
        jobs = [gevent.spawn(record.get) for _ in range(50)]
        gevent.joinall(jobs, raise_error=True)
    assert all(job.value == [(10, "mx.example.net")] for job in jobs)
    assert dns_server.queries(domain, "MX") == 1


# -- MxSmtpRelay ---------------------------------------------------------------


def test_recipients_grouped_by_domain(dns_server, smtp_sink, relay_factory, router):
    d1, d2 = unique("one"), unique("two")
    dns_server.add_mx(d1, 10, "mx.one.test")
    dns_server.add_mx(d2, 10, "mx.two.test")
    sink1, sink2 = smtp_sink(), smtp_sink()
    router.routes = {"mx.one.test": sink1.address, "mx.two.test": sink2.address}
    relay = relay_factory()
    rcpts = [f"a@{d1}", f"b@{d2}", f"c@{d1.upper()}"]
    with gevent.Timeout(GUARD_SECONDS):
        result = relay.attempt(make_envelope(rcpts=rcpts), 0)
    assert set(result) == set(rcpts)
    assert all(reply.code == "250" for reply in result.values())
    (got1,) = sink1.messages()
    (got2,) = sink2.messages()
    assert sorted(got1.rcpt_to) == sorted([f"a@{d1}", f"c@{d1.upper()}"])
    assert got2.rcpt_to == [f"b@{d2}"]
    assert b"hello" in got1.data and b"hello" in got2.data


def test_single_domain_result_is_unchanged(dns_server, smtp_sink, relay_factory, router):
    domain = unique()
    dns_server.add_mx(domain, 10, "mx.single.test")
    sink = smtp_sink()
    router.routes = {"mx.single.test": sink.address}
    with gevent.Timeout(GUARD_SECONDS):
        result = relay_factory().attempt(make_envelope(rcpts=(f"x@{domain}",)), 0)
    assert list(result) == [f"x@{domain}"]
    assert router.calls == [("mx.single.test", 25)]


def test_null_mx_fails_permanently_without_connecting(dns_server, relay_factory, router):
    domain = unique()
    dns_server.add_mx(domain, 0, ".")
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(PermanentRelayError) as info:
        relay_factory().attempt(make_envelope(rcpts=(f"x@{domain}",)), 0)
    assert info.value.reply.code == "556"
    assert info.value.reply.enhanced_status_code == "5.1.10"
    assert router.calls == []


def test_nxdomain_fails_permanently(dns_server, relay_factory, router):
    domain = unique()
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(PermanentRelayError) as info:
        relay_factory().attempt(make_envelope(rcpts=(f"x@{domain}",)), 0)
    assert str(info.value.reply) == f"550 5.1.2 No usable DNS records found: {domain}"
    assert router.calls == []


def test_servfail_fails_transiently(dns_server, relay_factory):
    domain = unique()
    dns_server.set_rcode(domain, "SERVFAIL")
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(TransientRelayError) as info:
        relay_factory().attempt(make_envelope(rcpts=(f"x@{domain}",)), 0)
    assert str(info.value.reply) == "451 4.4.3 DNS lookup failed"


def test_dns_timeout_fails_transiently(dns_server, relay_factory):
    domain = unique()
    dns_server.drop(domain)
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(TransientRelayError) as info:
        relay_factory().attempt(make_envelope(rcpts=(f"x@{domain}",)), 0)
    assert info.value.reply.code == "451"


def test_falls_back_to_next_mx_within_one_attempt(
    dns_server, smtp_sink, relay_factory, router, fault_server
):
    domain = unique()
    dns_server.add_mx(domain, 10, "down.test")
    dns_server.add_mx(domain, 20, "busy.test")
    dns_server.add_mx(domain, 30, "good.test")
    busy = fault_server({"BANNER": Hangup("421 4.3.2 busy, try later")})
    sink = smtp_sink()
    router.routes = {"busy.test": busy.address, "good.test": sink.address}
    with gevent.Timeout(GUARD_SECONDS):
        result = relay_factory().attempt(make_envelope(rcpts=(f"x@{domain}",)), 0)
    assert result[f"x@{domain}"].code == "250"
    assert [host for host, _ in router.calls] == ["down.test", "busy.test", "good.test"]
    assert len(sink.messages()) == 1


def test_no_fallback_once_the_transaction_started(dns_server, smtp_sink, relay_factory, router):
    domain = unique()
    dns_server.add_mx(domain, 10, "first.test")
    dns_server.add_mx(domain, 20, "second.test")
    failing, good = smtp_sink("-r", "MAIL"), smtp_sink()
    router.routes = {"first.test": failing.address, "second.test": good.address}
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(TransientRelayError) as info:
        relay_factory().attempt(make_envelope(rcpts=(f"x@{domain}",)), 0)
    assert info.value.reply.command == b"MAIL"
    assert [host for host, _ in router.calls] == ["first.test"]
    assert good.messages() == []


def test_max_mx_hosts_limits_fallback(dns_server, relay_factory, router):
    domain = unique()
    for i in range(6):
        dns_server.add_mx(domain, i, f"h{i}.test")
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(TransientRelayError) as info:
        relay_factory(max_mx_hosts=3).attempt(make_envelope(rcpts=(f"x@{domain}",)), 0)
    assert info.value.reply.command == b"[CONNECT]"
    assert [host for host, _ in router.calls] == ["h0.test", "h1.test", "h2.test"]


def test_choose_mx_rotates_with_attempts(dns_server, relay_factory, router):
    domain = unique()
    dns_server.add_mx(domain, 10, "a.test")
    dns_server.add_mx(domain, 20, "b.test")
    relay = relay_factory(max_mx_hosts=1)
    with gevent.Timeout(GUARD_SECONDS):
        for attempts in range(3):
            with pytest.raises(TransientRelayError):
                relay.attempt(make_envelope(rcpts=(f"x@{domain}",)), attempts)
    assert [host for host, _ in router.calls] == ["a.test", "b.test", "a.test"]


def test_force_mx_skips_dns(dns_server, smtp_sink, relay_factory, router):
    domain = unique()
    sink = smtp_sink()
    router.routes = {"forced.test": sink.address}
    relay = relay_factory()
    relay.force_mx(domain.upper(), "forced.test", 2525)
    with gevent.Timeout(GUARD_SECONDS):
        result = relay.attempt(make_envelope(rcpts=(f"x@{domain}",)), 0)
    assert result[f"x@{domain}"].code == "250"
    assert router.calls == [("forced.test", 2525)]
    assert dns_server.queries(domain, "MX") == 0


def test_recipient_without_domain(dns_server, smtp_sink, relay_factory, router):
    domain = unique()
    dns_server.add_mx(domain, 10, "mx.nd.test")
    sink = smtp_sink()
    router.routes = {"mx.nd.test": sink.address}
    relay = relay_factory()
    with gevent.Timeout(GUARD_SECONDS):
        with pytest.raises(NoDomainError) as info:
            relay.attempt(make_envelope(rcpts=("nodomain",)), 0)
        assert str(info.value.reply) == "550 5.1.5 Recipient address has no domain: nodomain"
        result = relay.attempt(make_envelope(rcpts=("nodomain", f"ok@{domain}")), 0)
    assert isinstance(result["nodomain"], NoDomainError)
    assert result[f"ok@{domain}"].code == "250"
    assert sink.messages()[0].rcpt_to == [f"ok@{domain}"]


def test_mixed_outcomes_merge_per_recipient(dns_server, smtp_sink, relay_factory, router):
    good, bad = unique("good"), unique("bad")
    dns_server.add_mx(good, 10, "mx.good.test")
    dns_server.add_mx(bad, 0, ".")
    sink = smtp_sink()
    router.routes = {"mx.good.test": sink.address}
    with gevent.Timeout(GUARD_SECONDS):
        result = relay_factory().attempt(make_envelope(rcpts=(f"a@{good}", f"b@{bad}")), 0)
    assert result[f"a@{good}"].code == "250"
    assert isinstance(result[f"b@{bad}"], PermanentRelayError)
    assert result[f"b@{bad}"].reply.code == "556"


def test_rcpt_rejection_is_per_recipient(dns_server, smtp_sink, relay_factory, router):
    domain = unique()
    dns_server.add_mx(domain, 10, "mx.rej.test")
    sink = smtp_sink("-f", "RCPT")
    router.routes = {"mx.rej.test": sink.address}
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(SmtpPermanentRelayError) as info:
        relay_factory().attempt(make_envelope(rcpts=(f"x@{domain}",)), 0)
    assert info.value.reply.command == b"RCPT"


def test_address_literal_goes_to_that_address(relay_factory, router, dns_server):
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(TransientRelayError):
        relay_factory().attempt(make_envelope(rcpts=("x@[192.0.2.1]",)), 0)
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(TransientRelayError):
        relay_factory().attempt(make_envelope(rcpts=("x@[IPv6:2001:db8::1]",)), 0)
    assert router.calls == [("192.0.2.1", 25), ("2001:db8::1", 25)]


def test_idn_domain_is_looked_up_as_a_label(dns_server, smtp_sink, relay_factory, router):
    label = uuid.uuid4().hex[:8]
    dns_server.add_mx(f"bücher-{label}.test".encode("idna").decode(), 10, "mx.idn.test")
    sink = smtp_sink()
    router.routes = {"mx.idn.test": sink.address}
    relay = relay_factory()
    # Routing uses the A-label; smtp-sink has no SMTPUTF8, so the U-label address
    # itself is refused by the client before any RCPT is sent (553 5.6.7).
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(SmtpPermanentRelayError) as info:
        relay.attempt(make_envelope(rcpts=(f"x@bücher-{label}.test",)), 0)
    assert info.value.reply.code == "553"
    assert info.value.reply.enhanced_status_code == "5.6.7"
    assert router.calls == [("mx.idn.test", 25)]
    assert sink.messages() == []


def test_burst_to_uncached_domain_makes_one_lookup(dns_server, smtp_sink, relay_factory, router):
    domain = unique()
    dns_server.add_mx(domain, 10, "mx.burst.test")
    sink = smtp_sink()
    router.routes = {"mx.burst.test": sink.address}
    relay = relay_factory(pool_size=5, idle_timeout=5.0)
    with gevent.Timeout(GUARD_SECONDS * 2):
        envs = [make_envelope(rcpts=(f"r{i}@{domain}",)) for i in range(50)]
        jobs = [gevent.spawn(relay.attempt, env, 0) for env in envs]
        gevent.joinall(jobs, raise_error=True)
    assert dns_server.queries(domain, "MX") <= 2
    assert len(sink.messages()) == 50


def test_relay_cache_is_bounded_and_evictees_are_killed(dns_server, relay_factory):
    relay = relay_factory(relay_cache_size=2)
    killed = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def attempt(self, envelope, attempts):
            return None

        def kill(self):
            killed.append(self.name)

    relay.new_static_relay = lambda host, port: Fake(host)
    for i in range(3):
        domain = f"d{i}-{uuid.uuid4().hex[:6]}.test"
        relay.force_mx(domain, f"h{i}.test")
        relay.attempt(make_envelope(rcpts=(f"x@{domain}",)), 0)
    assert killed == ["h0.test"]
    relay.kill()
    assert sorted(killed) == ["h0.test", "h1.test", "h2.test"]
