"""SmtpEdge fills ``envelope.client['host']`` from a PTR lookup of the client's IP.

The lookup (:class:`slimta.util.ptrlookup.PtrLookup`, through
:class:`~slimta.util.dns.DNSResolver`) starts with the banner and runs beside the
session, against the test DNS server. A lookup that does not answer never holds a
message up for longer than :attr:`SmtpSession.ptr_lookup_runtime` after the banner,
and it is stopped when the session ends.
"""

from __future__ import annotations

import smtplib
import time
from typing import Any

import gevent
import pytest
import support.smtp_edge
from support.smtp_edge import cooperative_wait

from slimta.edge.smtp import PTR_LOOKUP_RUNTIME_SECONDS, SmtpSession
from slimta.smtp.reply import Reply
from slimta.util.dns import DNSResolver

#: The fixture (not registered suite-wide by support.servers).
smtp_edge = support.smtp_edge.smtp_edge

#: The name the test DNS server is asked for: the edge sees clients as 127.0.0.1.
LOOPBACK_PTR = "1.0.0.127.in-addr.arpa"
MESSAGE = b"From: a@src.test\r\nTo: b@dst.test\r\nSubject: ptr\r\n\r\nHi.\r\n"
#: A DNS timeout far longer than the edge is willing to wait.
SLOW_DNS_SECONDS = 20.0
#: Slack for a loopback session on a busy machine, still far below SLOW_DNS_SECONDS.
MARGIN_SECONDS = 3.0


def in_thread(func: Any, *args: Any) -> Any:
    """Run blocking stdlib code in a real thread while the hub serves the edge."""
    return gevent.get_hub().threadpool.apply(func, args)


def send(address: tuple[str, int], count: int = 1) -> list[float]:
    """Send ``count`` messages on one connection; seconds from connect to each 250."""
    started = time.monotonic()
    done = []
    with smtplib.SMTP(*address, timeout=30) as client:
        client.ehlo("client.src.test")
        for index in range(count):
            client.sendmail("a@src.test", [f"r{index}@dst.test"], MESSAGE)
            done.append(time.monotonic() - started)
    return done


class CapturingSession(SmtpSession):
    """Remembers the lookup each session starts."""

    lookups: list[Any] = []

    def BANNER_(self, reply: Reply) -> None:  # noqa: N802
        super().BANNER_(reply)
        self.lookups.append(self._ptr_lookup)


@pytest.fixture
def slow_dns(dns_server: Any, dns_resolver: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The test DNS server with a resolver that would wait :data:`SLOW_DNS_SECONDS`."""
    DNSResolver.reset()
    options = dns_server.channel_options(timeout=SLOW_DNS_SECONDS)
    monkeypatch.setattr(DNSResolver, "channel_options", options)
    return dns_server


def test_ptr_answer_is_the_client_host(smtp_edge: Any, dns_server: Any, dns_resolver: Any) -> None:
    dns_server.add_ptr(LOOPBACK_PTR, "client.ptr.test")
    edge = smtp_edge()
    in_thread(send, edge.address, 2)
    envs = edge.stored()
    assert len(envs) == 2
    # Both messages of the session carry the name; it was asked for once.
    assert [env.client["host"] for env in envs] == ["client.ptr.test"] * 2
    assert all(env.client["ip"] == "127.0.0.1" for env in envs)
    assert dns_server.queries(LOOPBACK_PTR, "PTR") == 1


def test_a_cached_answer_needs_no_lookup(
    smtp_edge: Any, dns_server: Any, dns_resolver: Any
) -> None:
    """Within the answer's TTL a new session of the same client starts no lookup."""
    dns_server.add_ptr(LOOPBACK_PTR, "client.ptr.test", ttl=300)
    CapturingSession.lookups = []
    edge = smtp_edge(session_class=CapturingSession)
    in_thread(send, edge.address)
    in_thread(send, edge.address)
    assert [env.client["host"] for env in edge.stored()] == ["client.ptr.test"] * 2
    first, second = CapturingSession.lookups
    assert first is not None and second is None
    assert dns_server.queries(LOOPBACK_PTR, "PTR") == 1


def test_each_session_looks_up_its_client(
    smtp_edge: Any, dns_server: Any, dns_resolver: Any
) -> None:
    dns_server.add_ptr(LOOPBACK_PTR, "client.ptr.test", ttl=0)
    edge = smtp_edge()
    in_thread(send, edge.address)
    in_thread(send, edge.address)
    assert [env.client["host"] for env in edge.stored()] == ["client.ptr.test"] * 2
    # A TTL of 0 is not cached: each session asks.
    assert dns_server.queries(LOOPBACK_PTR, "PTR") == 2


@pytest.mark.parametrize("failure", ["NXDOMAIN", "SERVFAIL", "NODATA"])
def test_failed_lookup_leaves_host_none(
    smtp_edge: Any, dns_server: Any, dns_resolver: Any, failure: str
) -> None:
    if failure == "NODATA":
        dns_server.exists(LOOPBACK_PTR)
    elif failure == "SERVFAIL":
        dns_server.set_rcode(LOOPBACK_PTR, failure)
    edge = smtp_edge()
    in_thread(send, edge.address)
    (env,) = edge.stored()
    assert env.client["host"] is None
    assert env.client["ip"] == "127.0.0.1"
    assert dns_server.queries(LOOPBACK_PTR, "PTR") >= 1


def test_unanswered_lookup_holds_the_first_message_only_briefly(
    smtp_edge: Any, slow_dns: Any
) -> None:
    slow_dns.drop(LOOPBACK_PTR)
    CapturingSession.lookups = []
    edge = smtp_edge(session_class=CapturingSession)
    first, second = in_thread(send, edge.address, 2)
    # The first 250 waited for the lookup at most until the bound after the banner
    # (not the resolver's SLOW_DNS_SECONDS); the second had nothing left to wait for.
    assert second < PTR_LOOKUP_RUNTIME_SECONDS + MARGIN_SECONDS, (first, second)
    assert [env.client["host"] for env in edge.stored()] == [None, None]
    assert slow_dns.queries(LOOPBACK_PTR, "PTR") == 1
    (lookup,) = CapturingSession.lookups
    cooperative_wait(lambda: lookup.dead, "the lookup to be stopped", timeout=5.0)


@pytest.mark.parametrize("runtime", [0.0, 1.5])
def test_the_wait_is_ptr_lookup_runtime(smtp_edge: Any, slow_dns: Any, runtime: float) -> None:
    """A fast client's first message waits exactly until ``runtime`` after the banner."""
    slow_dns.drop(LOOPBACK_PTR)
    session_class = type("Session", (SmtpSession,), {"ptr_lookup_runtime": runtime})
    edge = smtp_edge(session_class=session_class)
    (first,) = in_thread(send, edge.address)
    assert runtime <= first < runtime + MARGIN_SECONDS
    (env,) = edge.stored()
    assert env.client["host"] is None


@pytest.mark.parametrize("how", ["quit", "drop"])
def test_lookup_stops_with_the_session(smtp_edge: Any, slow_dns: Any, how: str) -> None:
    """A session that ends without a message (QUIT, or the client just leaving)
    stops its lookup instead of leaving it to the DNS timeout."""
    slow_dns.drop(LOOPBACK_PTR)
    CapturingSession.lookups = []
    edge = smtp_edge(session_class=CapturingSession)

    def talk() -> None:
        client = smtplib.SMTP(*edge.address, timeout=30)
        client.ehlo("client.src.test")
        if how == "quit":
            client.quit()
        else:
            client.close()

    in_thread(talk)
    cooperative_wait(lambda: len(CapturingSession.lookups) == 1, "the session to start")
    (lookup,) = CapturingSession.lookups
    cooperative_wait(lambda: lookup.dead, "the lookup to be stopped", timeout=5.0)
    assert edge.stored() == []


#: A long wait bound, so that a command held up by the lookup would stand out.
LONG_RUNTIME = 4.0


def timed_session(address: tuple[str, int], idle_before_mail: float = 0.0) -> dict[str, float]:
    """One message over smtplib; seconds from connect to each reply, and how long
    the final reply took after the data was sent."""
    times: dict[str, float] = {}
    started = time.monotonic()
    client = smtplib.SMTP(timeout=30)
    try:
        code, _ = client.connect(*address)
        assert code == 220
        times["banner"] = time.monotonic() - started
        assert client.ehlo("client.src.test")[0] == 250
        times["ehlo"] = time.monotonic() - started
        if idle_before_mail:
            time.sleep(idle_before_mail)  # a slow client, in its own thread
        assert client.mail("a@src.test")[0] == 250
        assert client.rcpt("b@dst.test")[0] == 250
        assert client.docmd("DATA")[0] == 354
        times["354"] = time.monotonic() - started
        sent = time.monotonic()
        client.send(MESSAGE + b".\r\n")
        code, _ = client.getreply()
        assert code == 250
        times["250"] = time.monotonic() - started
        times["final_wait"] = time.monotonic() - sent
        client.quit()
    finally:
        client.close()
    return times


def test_silent_dns_never_delays_the_banner_or_the_commands(
    smtp_edge: Any, slow_dns: Any
) -> None:
    """The test DNS server never answers the PTR query: the banner and every reply
    before the data come at once; only the first message's final reply waits, and
    only until ``ptr_lookup_runtime`` after the banner."""
    slow_dns.drop(LOOPBACK_PTR)
    session_class = type("Session", (SmtpSession,), {"ptr_lookup_runtime": LONG_RUNTIME})
    edge = smtp_edge(session_class=session_class)
    times = in_thread(timed_session, edge.address)
    assert times["354"] < MARGIN_SECONDS < LONG_RUNTIME, times
    assert LONG_RUNTIME - 0.1 <= times["250"] < LONG_RUNTIME + MARGIN_SECONDS, times
    (env,) = edge.stored()
    assert env.client["host"] is None
    assert slow_dns.queries(LOOPBACK_PTR, "PTR") == 1


def test_silent_dns_never_delays_a_client_slower_than_the_bound(
    smtp_edge: Any, slow_dns: Any
) -> None:
    """A client that reaches the end of its data after the bound has passed gets
    its 250 without any wait for the lookup."""
    slow_dns.drop(LOOPBACK_PTR)
    runtime = 0.5
    session_class = type("Session", (SmtpSession,), {"ptr_lookup_runtime": runtime})
    edge = smtp_edge(session_class=session_class)
    times = in_thread(timed_session, edge.address, runtime + 1.0)
    # The lookup is still unanswered (the resolver waits SLOW_DNS_SECONDS), and
    # the bound is long past: the final reply does not wait at all.
    assert times["final_wait"] < MARGIN_SECONDS < SLOW_DNS_SECONDS, times
    assert times["250"] < runtime + 1.0 + MARGIN_SECONDS, times
    (env,) = edge.stored()
    assert env.client["host"] is None


def test_concurrent_sessions_wait_for_their_own_bound_only(
    smtp_edge: Any, slow_dns: Any
) -> None:
    """Sessions wait side by side, not one after another."""
    slow_dns.drop(LOOPBACK_PTR)
    runtime = 1.5
    session_class = type("Session", (SmtpSession,), {"ptr_lookup_runtime": runtime})
    edge = smtp_edge(session_class=session_class)
    started = time.monotonic()
    jobs = [gevent.spawn(in_thread, timed_session, edge.address) for _ in range(5)]
    gevent.joinall(jobs, timeout=SLOW_DNS_SECONDS, raise_error=True)
    elapsed = time.monotonic() - started
    assert all(job.successful() for job in jobs)
    assert all(job.value["banner"] < MARGIN_SECONDS for job in jobs)
    # Five serialised waits would take 5 x runtime.
    assert elapsed < runtime + MARGIN_SECONDS < 5 * runtime, elapsed
    assert len(edge.stored()) == 5
