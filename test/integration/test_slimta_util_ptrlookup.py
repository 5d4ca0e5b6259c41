"""slimta.util.ptrlookup.PtrLookup through DNSResolver, against the test DNS server."""

from __future__ import annotations

from typing import Any

import gevent
import gevent.socket
from support.util import GUARD_SECONDS

from slimta.util.ptrlookup import PtrLookup


def test_ipv4_ptr(dns_server: Any, dns_resolver: Any) -> None:
    dns_server.add_ptr("7.113.0.203.in-addr.arpa", "mail.client.test")
    lookup = PtrLookup("203.0.113.7")
    lookup.start()
    with gevent.Timeout(GUARD_SECONDS):
        assert lookup.finish(runtime=GUARD_SECONDS) == "mail.client.test"
    assert lookup.dead


def test_ipv6_and_mapped_ipv4(dns_server: Any, dns_resolver: Any) -> None:
    nibbles = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
    dns_server.add_ptr(nibbles + ".ip6.arpa", "six.client.test")
    dns_server.add_ptr("8.113.0.203.in-addr.arpa", "mapped.client.test")
    six = PtrLookup("2001:db8::1")
    mapped = PtrLookup("::ffff:203.0.113.8")
    six.start()
    mapped.start()
    with gevent.Timeout(GUARD_SECONDS):
        assert six.finish(runtime=GUARD_SECONDS) == "six.client.test"
        assert mapped.finish(runtime=GUARD_SECONDS) == "mapped.client.test"


def test_nxdomain_servfail_and_garbage_give_none(dns_server: Any, dns_resolver: Any) -> None:
    dns_server.set_rcode("9.113.0.203.in-addr.arpa", "SERVFAIL")
    lookups = [PtrLookup(ip) for ip in ("203.0.113.10", "203.0.113.9", "not an ip", None)]
    for lookup in lookups:
        lookup.start()
    with gevent.Timeout(GUARD_SECONDS):
        assert [lookup.finish(runtime=GUARD_SECONDS) for lookup in lookups] == [None] * 4


def test_finish_without_runtime_does_not_wait(dns_server: Any, dns_resolver: Any) -> None:
    dns_server.drop("11.113.0.203.in-addr.arpa")
    lookup = PtrLookup("203.0.113.11")
    lookup.start()
    with gevent.Timeout(1.0):
        assert lookup.finish() is None
    lookup.join(GUARD_SECONDS)
    assert lookup.dead


def test_finish_waits_only_the_rest_of_runtime(dns_server: Any, dns_resolver: Any) -> None:
    dns_server.drop("12.113.0.203.in-addr.arpa")
    lookup = PtrLookup("203.0.113.12")
    lookup.start()
    assert lookup.start_time is not None
    lookup.start_time -= 100.0  # as if started long ago: nothing is left to wait
    with gevent.Timeout(1.0):
        assert lookup.finish(runtime=5.0) is None


def test_from_socket_names() -> None:
    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = gevent.socket.create_connection(listener.getsockname())
    try:
        peer, peer_port = PtrLookup.from_getpeername(client)
        local, local_port = PtrLookup.from_getsockname(client)
        assert (peer.ip, peer_port) == listener.getsockname()
        assert (local.ip, local_port) == client.getsockname()
    finally:
        client.close()
        listener.close()
