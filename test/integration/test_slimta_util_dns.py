"""slimta.util.dns against a real DNS server on loopback (test/support/dns_server.py)."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import gevent
import pycares
import pycares.errno
import pytest
from gevent.event import AsyncResult, Event
from support.dns_server import RESOLVER_TIMEOUT_SECONDS, DnsTestServer
from support.util import GUARD_SECONDS

import slimta.util.dns as dns_module
from slimta.util.dns import (
    AddressAnswer,
    DNSError,
    DNSResolver,
    MxAnswer,
    NameAnswer,
    SoaAnswer,
    SrvAnswer,
    TxtAnswer,
)

PYCARES5 = not hasattr(pycares.Channel, "getsock")
#: A dropped query must fail within the resolver's timeout (one try) plus slack.
TIMEOUT_GUARD_SECONDS = RESOLVER_TIMEOUT_SECONDS * 4


def get(result: AsyncResult, guard: float = GUARD_SECONDS) -> Any:
    with gevent.Timeout(guard, AssertionError(f"no DNS result within {guard}s")):
        return result.get()


def error_of(result: AsyncResult, guard: float = GUARD_SECONDS) -> DNSError:
    with pytest.raises(DNSError) as info:
        get(result, guard)
    return info.value


def unknown_ttl(ttl: int) -> int:
    """pycares 4 reports no TTL for most types; pycares 5 reports the real one."""
    return ttl if PYCARES5 else -1


# -- record shapes --------------------------------------------------------------


def test_mx_records_keep_dns_order_and_equal_preferences(dns_server, dns_resolver):
    dns_server.add_mx("example.test", 20, "mx2.example.test.", ttl=60)
    dns_server.add_mx("example.test", 10, "mx1.example.test", ttl=60)
    dns_server.add_mx("example.test", 10, "mx3.example.test", ttl=60)
    records = get(dns_resolver.query("example.test", "MX"))
    assert sorted(records) == [
        MxAnswer("mx1.example.test", 10, unknown_ttl(60)),
        MxAnswer("mx2.example.test", 20, unknown_ttl(60)),
        MxAnswer("mx3.example.test", 10, unknown_ttl(60)),
    ]
    assert all(type(r) is MxAnswer for r in records)
    assert records[0].host == records[0][0]
    with pytest.raises(AttributeError):
        records[0].host = "other"  # type: ignore[misc]


def test_null_mx_host_is_empty(dns_server, dns_resolver):
    dns_server.add_mx("nullmx.test", 0, ".")
    assert get(dns_resolver.query("nullmx.test", "MX")) == [MxAnswer("", 0, unknown_ttl(300))]


def test_a_and_aaaa_records_carry_their_ttl(dns_server, dns_resolver):
    dns_server.add_a("host.test", "192.0.2.1", ttl=77)
    dns_server.add_a("host.test", "192.0.2.2", ttl=77)
    dns_server.add_aaaa("host.test", "2001:db8::25", ttl=78)
    a = get(dns_resolver.query("host.test", "A"))
    aaaa = get(dns_resolver.query("host.test", "AAAA"))
    assert sorted(a) == [AddressAnswer("192.0.2.1", 77), AddressAnswer("192.0.2.2", 77)]
    assert aaaa == [AddressAnswer("2001:db8::25", 78)]


def test_txt_joins_strings_and_keeps_undecodable_bytes(dns_server, dns_resolver):
    dns_server.add_txt("txt.test", "v=spf1", " -all", ttl=5)
    dns_server.add_txt("txt.test", "caf\u00e9", ttl=5)
    dns_server.add_txt("txt.test", b"\xff\xfe", ttl=5)
    records = get(dns_resolver.query("txt.test", "TXT"))
    assert sorted(records, key=repr) == sorted(
        [
            TxtAnswer("v=spf1 -all", unknown_ttl(5)),
            TxtAnswer("caf\u00e9", unknown_ttl(5)),
            TxtAnswer(b"\xff\xfe", unknown_ttl(5)),
        ],
        key=repr,
    )


def test_cname_ptr_ns_are_name_answers_with_their_pycares4_names(dns_server, dns_resolver):
    dns_server.add_cname("alias.test", "real.test", ttl=9)
    dns_server.add_ptr("1.2.0.192.in-addr.arpa", "real.test.", ttl=11)
    dns_server.add_ns("zone.test", "ns1.zone.test", ttl=12)
    (cname,) = get(dns_resolver.query("alias.test", "CNAME"))
    (ptr,) = get(dns_resolver.query("1.2.0.192.in-addr.arpa", "PTR"))
    (ns,) = get(dns_resolver.query("zone.test", "NS"))
    assert cname == NameAnswer("real.test", unknown_ttl(9))
    assert cname.cname == cname.name == "real.test"
    assert ptr.name == "real.test"
    assert ns.host == ns.name == "ns1.zone.test"
    assert {type(cname), type(ptr), type(ns)} == {NameAnswer}


def test_soa_and_srv_use_pycares4_field_names(dns_server, dns_resolver):
    times = (7, 3600, 600, 86400, 300)
    dns_server.add_soa("zone.test", "ns1.zone.test", "hostmaster.zone.test", times, ttl=13)
    dns_server.add_srv("_submission._tcp.zone.test", 5, 10, 587, "mail.zone.test", ttl=14)
    (soa,) = get(dns_resolver.query("zone.test", "SOA"))
    (srv,) = get(dns_resolver.query("_submission._tcp.zone.test", "SRV"))
    assert soa == SoaAnswer(
        "ns1.zone.test", "hostmaster.zone.test", 7, 3600, 600, 86400, 300, unknown_ttl(13)
    )
    assert (soa.nsname, soa.hostmaster, soa.expires, soa.minttl) == (
        "ns1.zone.test",
        "hostmaster.zone.test",
        86400,
        300,
    )
    assert srv == SrvAnswer("mail.zone.test", 587, 5, 10, unknown_ttl(14))


def test_answers_through_a_cname_keep_only_the_queried_type(dns_server, dns_resolver):
    dns_server.add_cname("www.test", "web.test", ttl=30)
    dns_server.add_a("web.test", "192.0.2.80", ttl=600)
    dns_server.add_mx("www.test", 5, "ignored.test")  # not reachable: CNAME wins below
    records = get(dns_resolver.query("www.test", "A"))
    # The alias bounds the lifetime on both pycares versions.
    assert records == [AddressAnswer("192.0.2.80", 30)]


@pytest.mark.parametrize("query_type", ["MX", "mx", "Mx", pycares.QUERY_TYPE_MX])
def test_query_type_is_a_constant_or_a_case_insensitive_name(dns_server, dns_resolver, query_type):
    name = f"qt-{query_type}.test"
    dns_server.add_mx(name, 1, "mx.test")
    assert [r.host for r in get(dns_resolver.query(name, query_type))] == ["mx.test"]


@pytest.mark.parametrize("query_type", ["ANY", "CAA", "bogus", 9999, pycares.QUERY_TYPE_ANY])
def test_unsupported_query_type_is_a_value_error(dns_resolver, query_type):
    with pytest.raises(ValueError):
        dns_resolver.query("example.test", query_type)


def test_idn_names_are_sent_as_a_labels(dns_server, dns_resolver):
    dns_server.add_a("xn--bcher-kva.test", "192.0.2.7")
    assert get(dns_resolver.query("b\u00fccher.test", "A")) == [AddressAnswer("192.0.2.7", 300)]
    assert dns_server.queries("xn--bcher-kva.test", "A") == 1


def test_bytes_names_are_accepted(dns_server, dns_resolver):
    dns_server.add_a("bytes.test", "192.0.2.8")
    assert get(dns_resolver.query(b"bytes.test", "A")) == [AddressAnswer("192.0.2.8", 300)]


@pytest.mark.parametrize("name", ["\u00fc" * 70 + ".test", "a..\u00fc.test", b"\xff.test"])
def test_unencodable_names_fail_with_ebadname(dns_resolver, name):
    assert error_of(dns_resolver.query(name, "A")).errno == pycares.errno.ARES_EBADNAME


# -- errors ---------------------------------------------------------------------


def test_nxdomain_is_enotfound(dns_resolver):
    error = error_of(dns_resolver.query("missing.test", "MX"))
    assert error.errno == pycares.errno.ARES_ENOTFOUND
    assert str(error) == "Domain name not found [ARES_ENOTFOUND]"


def test_nodata_is_enodata(dns_server, dns_resolver):
    dns_server.add_a("aonly.test", "192.0.2.1")
    dns_server.exists("empty.test")
    assert error_of(dns_resolver.query("aonly.test", "MX")).errno == pycares.errno.ARES_ENODATA
    assert error_of(dns_resolver.query("empty.test", "A")).errno == pycares.errno.ARES_ENODATA


def test_explicit_nxdomain_and_servfail(dns_server, dns_resolver):
    dns_server.set_rcode("gone.test", "NXDOMAIN")
    dns_server.set_rcode("broken.test", "SERVFAIL")
    assert error_of(dns_resolver.query("gone.test", "A")).errno == pycares.errno.ARES_ENOTFOUND
    assert error_of(dns_resolver.query("broken.test", "A")).errno == pycares.errno.ARES_ESERVFAIL


def test_unanswered_query_times_out_within_the_configured_timeout(dns_server, dns_resolver):
    dns_server.drop("silent.test")
    error = error_of(dns_resolver.query("silent.test", "MX"), TIMEOUT_GUARD_SECONDS)
    assert error.errno == pycares.errno.ARES_ETIMEOUT
    assert dns_server.queries("silent.test", "MX") >= 1


def test_dns_error_message_and_pickling():
    error = DNSError(pycares.errno.ARES_ENODATA)
    assert isinstance(error, Exception)
    assert error.errno == pycares.errno.ARES_ENODATA
    assert str(error).endswith(" [ARES_ENODATA]")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.errno, str(copy)) == (DNSError, error.errno, str(error))


def test_module_exports():
    assert dns_module.__all__ == ["DNSError", "DNSResolver"]


# -- concurrency and transport ----------------------------------------------------


def test_many_concurrent_queries_from_greenlets(dns_server, dns_resolver):
    count = 200
    for i in range(count):
        dns_server.add_a(f"host{i}.many.test", f"10.0.{i // 256}.{i % 256}", ttl=i + 1)

    def lookup(i: int) -> list[Any]:
        return get(dns_resolver.query(f"host{i}.many.test", "A"))

    greenlets = [gevent.spawn(lookup, i) for i in range(count)]
    with gevent.Timeout(GUARD_SECONDS * 2):
        gevent.joinall(greenlets, raise_error=True)
    for i, greenlet in enumerate(greenlets):
        assert greenlet.value == [AddressAnswer(f"10.0.{i // 256}.{i % 256}", i + 1)]
        assert dns_server.queries(f"host{i}.many.test", "A") == 1


def test_truncated_udp_answer_is_retried_over_tcp(dns_server, dns_resolver):
    dns_server.truncate("big.test")
    for i in range(40):
        dns_server.add_txt("big.test", f"chunk {i:02d} " + "x" * 60)
    records = get(dns_resolver.query("big.test", "TXT"))
    assert len(records) == 40
    assert dns_server.queries("big.test", "TXT", "udp") >= 1
    assert dns_server.queries("big.test", "TXT", "tcp") >= 1


def test_hub_is_not_blocked_while_a_query_is_outstanding(dns_server, dns_resolver):
    dns_server.drop("slow.test")
    dns_server.add_a("fast.test", "192.0.2.3")
    slow = dns_resolver.query("slow.test", "A")
    other_ran = Event()
    gevent.spawn(other_ran.set)
    with gevent.Timeout(GUARD_SECONDS):
        other_ran.wait()
    assert get(dns_resolver.query("fast.test", "A")) == [AddressAnswer("192.0.2.3", 300)]
    assert not slow.ready()
    assert error_of(slow, TIMEOUT_GUARD_SECONDS).errno == pycares.errno.ARES_ETIMEOUT


# -- threads, channels and watchers ---------------------------------------------


class ThreadRecordingResult(AsyncResult):
    """Records the thread that resolves each result."""

    threads: list[int] = []

    def set(self, value: Any = None) -> None:
        ThreadRecordingResult.threads.append(threading.get_ident())
        super().set(value)

    def set_exception(self, exception: Any, exc_info: Any = None) -> None:
        ThreadRecordingResult.threads.append(threading.get_ident())
        super().set_exception(exception, exc_info)


class CallbackThreadChannel(pycares.Channel):
    """A user channel that records which thread pycares calls back on."""

    callback_threads: list[int] = []

    def query(self, name: Any, query_type: Any, *args: Any, callback: Any, **kwargs: Any) -> None:
        def recording(result: Any, errno: Any) -> None:
            CallbackThreadChannel.callback_threads.append(threading.get_ident())
            callback(result, errno)

        super().query(name, query_type, *args, callback=recording, **kwargs)


@pytest.fixture
def recorded_threads(monkeypatch):
    ThreadRecordingResult.threads = []
    CallbackThreadChannel.callback_threads = []
    monkeypatch.setattr(dns_module, "AsyncResult", ThreadRecordingResult)
    return ThreadRecordingResult.threads


def test_default_channel_sets_results_in_the_hub_thread(dns_server, dns_resolver, recorded_threads):
    dns_server.add_a("one.test", "192.0.2.1")
    dns_server.drop("two.test")
    get(dns_resolver.query("one.test", "A"))
    error_of(dns_resolver.query("two.test", "A"), TIMEOUT_GUARD_SECONDS)
    assert recorded_threads == [threading.get_ident()] * 2


def test_user_assigned_channel_on_the_installed_pycares(dns_server, dns_resolver, recorded_threads):
    dns_server.add_mx("user.test", 10, "mx.user.test", ttl=60)
    dns_server.drop("user-silent.test")
    channel = CallbackThreadChannel(**dns_server.channel_options())
    dns_resolver.channel = channel
    # Nothing else keeps the hub running: the pending query itself must.
    assert get(dns_resolver.query("user.test", "MX")) == [
        MxAnswer("mx.user.test", 10, unknown_ttl(60))
    ]
    error = error_of(dns_resolver.query("user-silent.test", "MX"), TIMEOUT_GUARD_SECONDS)
    assert error.errno == pycares.errno.ARES_ETIMEOUT
    assert dns_resolver.channel is channel
    main = threading.get_ident()
    assert recorded_threads == [main, main]
    callback_threads = set(CallbackThreadChannel.callback_threads)
    if PYCARES5:
        # c-ares' own event thread calls back; the results still land on the hub.
        assert main not in callback_threads
    else:
        assert callback_threads == {main}
    dns_resolver.reset()
    assert dns_resolver.channel is None
    # reset() does not close a channel it did not create.
    dns_resolver.channel = channel
    assert get(dns_resolver.query("user.test", "MX"))[0].host == "mx.user.test"


def test_reset_cancels_pending_queries_and_stops_every_watcher(dns_server, dns_resolver):
    loop = gevent.get_hub().loop
    with gevent.Timeout(GUARD_SECONDS):
        gevent.idle()  # earlier tests may have left loop callbacks queued
    baseline = getattr(loop, "activecnt", None)
    dns_server.add_a("done.test", "192.0.2.1")
    dns_server.drop("pending.test")
    get(dns_resolver.query("done.test", "A"))
    pending = dns_resolver.query("pending.test", "A")
    driver = dns_resolver._driver
    watchers = driver.watchers()
    assert any(w.active for w in watchers)
    dns_resolver.reset()
    assert error_of(pending).errno == pycares.errno.ARES_ECANCELLED
    assert not any(w.active for w in watchers)
    assert dns_resolver._driver is None and dns_resolver.channel is None
    if baseline is not None:
        with gevent.Timeout(GUARD_SECONDS):
            gevent.idle()  # let queued loop callbacks (deferred closes) run
        assert loop.activecnt == baseline
    # A fresh channel is built on the next query.
    assert get(dns_resolver.query("done.test", "A")) == [AddressAnswer("192.0.2.1", 300)]


_IDLE_HUB_SCRIPT = """
import json, sys
import gevent
from slimta.util.dns import DNSResolver
DNSResolver.channel_options = json.loads(sys.argv[1])
first = DNSResolver.query("idle.test", "A").get(timeout=5)
# join() returns True once no referenced watcher is left in the loop.
idle = gevent.get_hub().join(timeout=5)
again = DNSResolver.query("idle.test", "A").get(timeout=5)
print(json.dumps([idle, [a.host for a in first], [a.host for a in again]]))
"""


def test_idle_channel_does_not_keep_the_hub_alive(dns_server):
    # In a process of its own, so that nothing another test left running in
    # this hub can keep it busy.
    import json
    import sys

    import gevent.subprocess

    dns_server.add_a("idle.test", "192.0.2.1")
    proc = gevent.subprocess.Popen(
        [sys.executable, "-c", _IDLE_HUB_SCRIPT, json.dumps(dns_server.channel_options())],
        stdout=gevent.subprocess.PIPE,
        stderr=gevent.subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out) == [True, ["192.0.2.1"], ["192.0.2.1"]]


def test_swapping_channels_retires_the_default_one(dns_server, dns_resolver):
    dns_server.add_a("swap.test", "192.0.2.1")
    get(dns_resolver.query("swap.test", "A"))
    idle_driver = dns_resolver._driver
    dns_resolver.channel = pycares.Channel(**dns_server.channel_options())
    assert get(dns_resolver.query("swap.test", "A")) == [AddressAnswer("192.0.2.1", 300)]
    assert idle_driver.closed
    assert not any(w.active for w in idle_driver.watchers())


def test_swapping_channels_lets_pending_queries_finish(dns_server, dns_resolver):
    dns_server.drop("swap-silent.test")
    dns_server.add_a("swap-busy.test", "192.0.2.1")
    pending = dns_resolver.query("swap-silent.test", "A")
    busy_driver = dns_resolver._driver
    dns_resolver.channel = pycares.Channel(**dns_server.channel_options())
    assert get(dns_resolver.query("swap-busy.test", "A")) == [AddressAnswer("192.0.2.1", 300)]
    assert not busy_driver.closed
    assert error_of(pending, TIMEOUT_GUARD_SECONDS).errno == pycares.errno.ARES_ETIMEOUT
    with gevent.Timeout(GUARD_SECONDS):
        gevent.idle()  # the retired driver closes in a loop callback
    assert busy_driver.closed
    assert not any(w.active for w in busy_driver.watchers())


def test_channel_options_may_not_replace_the_hub_integration(dns_server, dns_resolver, monkeypatch):
    monkeypatch.setattr(DNSResolver, "channel_options", {"sock_state_cb": print})
    with pytest.raises(ValueError):
        dns_resolver.query("example.test", "A")


def test_server_fixture_counts_per_name_and_type(dns_server: DnsTestServer, dns_resolver):
    dns_server.add_a("count.test", "192.0.2.1")
    get(dns_resolver.query("count.test", "A"))
    error_of(dns_resolver.query("count.test", "MX"))
    assert dns_server.queries("count.test", "A") == 1
    assert dns_server.queries("count.test", "MX") == 1
    assert dns_server.queries("count.test", "AAAA") == 0


def run_in_thread(target: Any) -> list[BaseException]:
    """Run ``target`` in a new OS thread (with its own hub); return what it raised."""
    errors: list[BaseException] = []

    def main() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=main)
    thread.start()
    thread.join(GUARD_SECONDS)
    assert not thread.is_alive()
    return errors


def test_querying_from_another_threads_hub_is_refused(dns_server, dns_resolver):
    dns_server.add_a("mine.test", "192.0.2.1")
    get(dns_resolver.query("mine.test", "A"))
    errors = run_in_thread(lambda: dns_resolver.query("mine.test", "A"))
    assert [type(e) for e in errors] == [RuntimeError]
    assert get(dns_resolver.query("mine.test", "A")) == [AddressAnswer("192.0.2.1", 300)]


def test_a_replaced_hub_gets_a_fresh_channel(dns_server, dns_resolver):
    dns_server.add_a("rehub.test", "192.0.2.1")

    def scenario() -> None:
        get(dns_resolver.query("rehub.test", "A"))
        first = dns_resolver._driver
        gevent.get_hub().destroy(destroy_loop=True)
        assert get(dns_resolver.query("rehub.test", "A")) == [AddressAnswer("192.0.2.1", 300)]
        assert first.closed and dns_resolver._driver is not first
        dns_resolver.reset()
        gevent.get_hub().destroy(destroy_loop=True)

    assert run_in_thread(scenario) == []
