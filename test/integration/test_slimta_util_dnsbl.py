"""slimta.util.dnsbl through DNSResolver, against the test DNS server."""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from gevent.pool import Pool
from support.util import GUARD_SECONDS

from slimta.edge.smtp import SmtpValidators
from slimta.smtp.reply import Reply
from slimta.util.dnsbl import DnsBlocklist, DnsBlocklistGroup, check_dnsbl


@pytest.fixture
def zones(dns_server: Any, dns_resolver: Any) -> Any:
    # 192.0.2.1 is listed on both, 192.0.2.2 on one with an ignored code, 2001:db8::5 on one.
    dns_server.add_a("1.2.0.192.bl.test", "127.0.0.2")
    dns_server.add_txt("1.2.0.192.bl.test", "Listed: see https://bl.test/192.0.2.1")
    dns_server.add_a("1.2.0.192.other.test", "127.0.0.10")
    dns_server.add_a("2.2.0.192.bl.test", "127.0.0.4")
    dns_server.add_a("3.2.0.192.bl.test", "203.0.113.80")  # an "NXDOMAIN redirect" answer
    dns_server.add_a("5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test",
                     "127.0.0.2")
    dns_server.set_rcode("4.2.0.192.bl.test", "SERVFAIL")
    return dns_server


def test_get_and_reason(zones: Any) -> None:
    dnsbl = DnsBlocklist("bl.test", ignore=["127.0.0.4"])
    with gevent.Timeout(GUARD_SECONDS):
        assert dnsbl.get("192.0.2.1") is True
        assert dnsbl.get_reason("192.0.2.1") == "Listed: see https://bl.test/192.0.2.1"
        assert dnsbl.get("192.0.2.2") is False       # ignored code
        assert dnsbl.get("192.0.2.3") is False       # not in 127/8
        assert dnsbl.get("192.0.2.9") is False       # NXDOMAIN
        assert dnsbl.get_reason("192.0.2.9") is None
        assert dnsbl.get("2001:db8::5") is True
        assert "192.0.2.1" in dnsbl
        assert dnsbl["192.0.2.1"].startswith("Listed")


def test_lookup_failure_follows_strict(zones: Any) -> None:
    dnsbl = DnsBlocklist("bl.test")
    with gevent.Timeout(GUARD_SECONDS):
        assert dnsbl.get("192.0.2.4") is False
        assert dnsbl.get("192.0.2.4", strict=True) is True


def test_timeout_follows_strict(zones: Any) -> None:
    zones.drop("6.2.0.192.bl.test")
    dnsbl = DnsBlocklist("bl.test")
    with gevent.Timeout(GUARD_SECONDS):
        assert dnsbl.get("192.0.2.6", timeout=0.05) is False
        assert dnsbl.get("192.0.2.6", timeout=0.05, strict=True) is True


def test_not_an_ip_raises_value_error() -> None:
    with pytest.raises(ValueError):
        DnsBlocklist("bl.test").get("mail.example.test")


@pytest.mark.parametrize("pool", [None, 2, Pool(3)])
def test_group(zones: Any, pool: Any) -> None:
    group = DnsBlocklistGroup(pool)
    for zone in ("bl.test", "other.test", "empty.test"):
        group.add_dnsbl(zone)
    with gevent.Timeout(GUARD_SECONDS):
        matches = group.get("192.0.2.1")
        assert matches == {"bl.test", "other.test"}
        assert group.get_reasons(matches, "192.0.2.1") == {
            "bl.test": "Listed: see https://bl.test/192.0.2.1",
            "other.test": None,
        }
        assert "192.0.2.1" in group
        assert "192.0.2.9" not in group


class Session:
    def __init__(self, ip: str | None) -> None:
        self.address = (ip, 12345)


class Validators(SmtpValidators):
    called: list[str] = []

    @check_dnsbl("bl.test", match_code="554", match_message="5.7.1 Listed on bl.test")
    def handle_banner(self, reply: Reply, address: Any) -> None:
        Validators.called.append("banner")

    @check_dnsbl(DnsBlocklist("bl.test"))
    def handle_mail(self, reply: Reply, sender: str, params: Any) -> None:
        Validators.called.append(sender)


def test_check_dnsbl_decorator(zones: Any) -> None:
    Validators.called = []
    with gevent.Timeout(GUARD_SECONDS):
        listed = Validators(Session("192.0.2.1"))
        reply = Reply("220", "hello")
        listed.handle_banner(reply, ("192.0.2.1", 1))
        assert (reply.code, reply.message) == ("554", "5.7.1 Listed on bl.test")
        reply = Reply("250", "2.1.0 Ok")
        listed.handle_mail(reply, "a@b.test", {})
        assert (reply.code, reply.message) == ("550", "5.7.1 Access denied")
        assert Validators.called == []
        clean = Validators(Session("192.0.2.9"))
        reply = Reply("220", "hello")
        clean.handle_banner(reply, ("192.0.2.9", 1))
        assert reply.code == "220"
        unix = Validators(Session(None))
        unix.handle_mail(Reply("250", "2.1.0 Ok"), "c@d.test", {})
    assert Validators.called == ["banner", "c@d.test"]
    assert Validators.handle_mail.__name__ == "handle_mail"
