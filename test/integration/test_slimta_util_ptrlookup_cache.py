"""The PTR answer cache of slimta.util.ptrlookup, against the test DNS server.

An answer is kept for its TTL (capped), per IP, for a bounded number of IPs, and
belongs to the resolver channel that gave it. What the cache saves is a call of
:meth:`DNSResolver.query`, counted here (c-ares keeps its own cache below it, on
the real clock, so the DNS server's counts would not show the fake clock's
expiries).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import gevent
import pytest
from support.util import GUARD_SECONDS

import slimta.util.ptrlookup as ptrlookup
from slimta.util.dns import DNSResolver
from slimta.util.ptrlookup import PtrLookup


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(ptrlookup, "_clock", fake)
    return fake


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each name was given to :meth:`DNSResolver.query`."""
    counts: Counter[str] = Counter()
    real = DNSResolver.query.__func__  # type: ignore[attr-defined]

    def query(cls: Any, name: Any, query_type: Any) -> Any:
        counts[str(name)] += 1
        return real(cls, name, query_type)

    monkeypatch.setattr(DNSResolver, "query", classmethod(query))
    return counts


def lookup(ip: str) -> str | None:
    ptr = PtrLookup(ip)
    ptr.start()
    with gevent.Timeout(GUARD_SECONDS):
        result = ptr.finish(runtime=GUARD_SECONDS)
    assert ptr.dead
    return result


def test_answer_is_kept_for_its_ttl(
    dns_server: Any, dns_resolver: Any, clock: FakeClock, asked: Counter[str]
) -> None:
    name = "20.113.0.203.in-addr.arpa"
    dns_server.add_ptr(name, "cached.client.test", ttl=60)
    assert lookup("203.0.113.20") == "cached.client.test"
    clock.now += 59
    assert lookup("203.0.113.20") == "cached.client.test"
    assert asked[name] == 1
    assert dns_server.queries(name, "PTR") == 1
    clock.now += 2  # past the TTL: asked again
    assert lookup("203.0.113.20") == "cached.client.test"
    assert asked[name] == 2


def test_ttl_zero_and_failures_are_not_kept(
    dns_server: Any, dns_resolver: Any, clock: FakeClock, asked: Counter[str]
) -> None:
    zero = "21.113.0.203.in-addr.arpa"
    dns_server.add_ptr(zero, "zero.client.test", ttl=0)
    failing = "22.113.0.203.in-addr.arpa"
    dns_server.set_rcode(failing, "SERVFAIL")
    for _ in range(2):
        assert lookup("203.0.113.21") == "zero.client.test"
        assert lookup("203.0.113.22") is None
    assert asked[zero] == 2
    assert asked[failing] == 2


def test_long_ttl_is_capped(
    dns_server: Any, dns_resolver: Any, clock: FakeClock, asked: Counter[str]
) -> None:
    name = "23.113.0.203.in-addr.arpa"
    dns_server.add_ptr(name, "long.client.test", ttl=86400)
    assert lookup("203.0.113.23") == "long.client.test"
    clock.now += ptrlookup.PTR_CACHE_MAX_SECONDS - 1
    assert lookup("203.0.113.23") == "long.client.test"
    assert asked[name] == 1
    clock.now += 2
    assert lookup("203.0.113.23") == "long.client.test"
    assert asked[name] == 2


def test_cache_holds_a_bounded_number_of_ips(
    dns_server: Any,
    dns_resolver: Any,
    clock: FakeClock,
    asked: Counter[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ptrlookup, "PTR_CACHE_SIZE", 2)
    for last in (30, 31, 32):
        dns_server.add_ptr(f"{last}.113.0.203.in-addr.arpa", f"h{last}.client.test")
        assert lookup(f"203.0.113.{last}") == f"h{last}.client.test"
    # .30 was the least recently used and went out; .31 and .32 stayed.
    for last in (32, 31, 30):
        assert lookup(f"203.0.113.{last}") == f"h{last}.client.test"
    counts = [asked[f"{last}.113.0.203.in-addr.arpa"] for last in (30, 31, 32)]
    assert counts == [2, 1, 1]


def test_another_channel_starts_with_an_empty_cache(
    dns_server: Any, dns_resolver: Any, clock: FakeClock, asked: Counter[str]
) -> None:
    name = "24.113.0.203.in-addr.arpa"
    dns_server.add_ptr(name, "kept.client.test")
    assert lookup("203.0.113.24") == "kept.client.test"
    assert lookup("203.0.113.24") == "kept.client.test"
    assert asked[name] == 1
    DNSResolver.reset()  # as the tests (or a program swapping channels) do
    assert lookup("203.0.113.24") == "kept.client.test"
    assert asked[name] == 2
    assert dns_server.queries(name, "PTR") == 2
