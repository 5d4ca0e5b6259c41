"""``Relay.close(timeout)`` against real servers.

Attempts in flight (on the wire, or queued behind them) finish; new attempts
fail at once with ``451 4.3.0``; idle kept connections end with ``QUIT``
without waiting for their idle timeout; past the timeout what is left is
killed; and no greenlet or socket is left behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import pytest
from support.reliability import GUARD_SECONDS, make_envelope, resources, settle
from support.reliability import assert_no_leaks as _assert_no_leaks
from support.smtp_sink import SmtpSinkFactory
from support.wsgi_server import WsgiServerFactory

from slimta.relay import Relay, TransientRelayError
from slimta.relay.blackhole import BlackholeRelay
from slimta.relay.http import HttpRelay
from slimta.relay.pipe import PipeRelay
from slimta.relay.smtp.mx import MxSmtpRelay
from slimta.relay.smtp.static import StaticSmtpRelay

pytestmark = pytest.mark.usefixtures("no_relay_leaks")

#: Far longer than any test: a connection must never wait for it to end.
IDLE_SECONDS = 60.0


class Wire:
    """A trace factory that remembers what every connection sent."""

    def __init__(self) -> None:
        self.sent: list[bytearray] = []
        self.closed = 0

    def __call__(self) -> Callable[[str, bytes], None]:
        sent = bytearray()
        self.sent.append(sent)

        def trace(event: str, data: bytes) -> None:
            if event == "send":
                sent.extend(data)
            elif event == "close":
                self.closed += 1

        return trace

    def data_sent(self) -> int:
        return sum(1 for sent in self.sent if b"DATA\r\n" in sent)


def _baseline() -> Any:
    gevent.sleep(0)  # the hub's own descriptors exist from here on
    return resources(collect=True)


def _assert_closing_error(relay: Relay) -> None:
    with pytest.raises(TransientRelayError) as info:
        relay.attempt(make_envelope(rcpts=["late@example.test"]), 0)
    assert (info.value.reply.code, info.value.reply.message) == ("451", "4.3.0 Relay is closing")


def _spawn_attempts(relay: Relay, count: int) -> list[gevent.Greenlet]:
    return [
        gevent.spawn(relay.attempt, make_envelope(rcpts=[f"r{n}@example.test"]), 0)
        for n in range(count)
    ]


# -- SMTP -------------------------------------------------------------------------------
def test_static_close_finishes_in_flight_and_queued(
    smtp_sink: SmtpSinkFactory
) -> None:
    sink = smtp_sink("-w", "1")  # each DATA is answered a second late
    wire = Wire()
    relay = StaticSmtpRelay(*sink.address, pool_size=2, ehlo_as="close.test",
                            idle_timeout=IDLE_SECONDS, trace=wire)
    baseline = _baseline()
    with gevent.Timeout(GUARD_SECONDS):
        jobs = _spawn_attempts(relay, 3)  # two on the wire, one queued behind them
        settle(lambda: wire.data_sent() == 2, "both connections to send DATA")
        started = time.monotonic()
        closer = gevent.spawn(relay.close, GUARD_SECONDS)
        gevent.sleep(0)
        _assert_closing_error(relay)
        closer.get()
        elapsed = time.monotonic() - started
        gevent.joinall(jobs, raise_error=True)
    assert elapsed < IDLE_SECONDS / 2
    assert sorted(m.rcpt_to[0] for m in sink.wait_for_messages(3)) == [
        "r0@example.test", "r1@example.test", "r2@example.test"
    ]
    assert "late@example.test" not in str([m.rcpt_to for m in sink.messages()])
    # Every connection ended politely, and was closed.
    assert len(wire.sent) == 2 and all(sent.endswith(b"QUIT\r\n") for sent in wire.sent)
    assert wire.closed == 2
    assert not relay.pool
    _assert_no_leaks(baseline)


def test_static_close_of_idle_connections_sends_quit(
    smtp_sink: SmtpSinkFactory
) -> None:
    sink = smtp_sink()
    wire = Wire()
    relay = StaticSmtpRelay(*sink.address, pool_size=2, ehlo_as="close.test",
                            idle_timeout=IDLE_SECONDS, trace=wire)
    baseline = _baseline()
    with gevent.Timeout(GUARD_SECONDS):
        gevent.joinall(_spawn_attempts(relay, 2), raise_error=True)
        relay.close(GUARD_SECONDS)  # both clients wait idle for more work
    assert wire.sent and all(sent.endswith(b"QUIT\r\n") for sent in wire.sent)
    assert wire.closed == len(wire.sent)
    _assert_closing_error(relay)
    _assert_no_leaks(baseline)


def test_static_close_timeout_kills_what_is_left(
    smtp_sink: SmtpSinkFactory
) -> None:
    sink = smtp_sink("-w", "5")
    wire = Wire()
    relay = StaticSmtpRelay(*sink.address, pool_size=1, ehlo_as="close.test", trace=wire,
                            command_timeout=GUARD_SECONDS)
    baseline = _baseline()
    with gevent.Timeout(GUARD_SECONDS):
        jobs = _spawn_attempts(relay, 2)
        settle(lambda: wire.data_sent() == 1, "the connection to send DATA")
        started = time.monotonic()
        relay.close(0.2)
        elapsed = time.monotonic() - started
        gevent.joinall(jobs)
    assert elapsed < 2.0
    for job in jobs:
        assert isinstance(job.exception, TransientRelayError)
        assert job.exception.reply.code == "451"
        assert job.exception.reply.message.startswith("4.3.0 ")
    assert wire.closed == 0  # dropped, not closed after QUIT
    assert not any(sent.endswith(b"QUIT\r\n") for sent in wire.sent)
    _assert_no_leaks(baseline)


def test_mx_close_finishes_in_flight(smtp_sink: SmtpSinkFactory) -> None:
    sink = smtp_sink("-w", "1")
    wire = Wire()
    relay = MxSmtpRelay(ehlo_as="close.test", idle_timeout=IDLE_SECONDS, trace=wire)
    relay.force_mx("example.test", sink.host, sink.port)
    baseline = _baseline()
    with gevent.Timeout(GUARD_SECONDS):
        jobs = _spawn_attempts(relay, 2)
        settle(lambda: wire.data_sent() == 2, "both connections to send DATA")
        closer = gevent.spawn(relay.close, GUARD_SECONDS)
        gevent.sleep(0)
        _assert_closing_error(relay)
        closer.get()
        gevent.joinall(jobs, raise_error=True)
    assert len(sink.wait_for_messages(2)) == 2
    assert all(sent.endswith(b"QUIT\r\n") for sent in wire.sent)
    _assert_no_leaks(baseline)


# -- HTTP -------------------------------------------------------------------------------
def test_http_close_finishes_in_flight(wsgi_server: WsgiServerFactory) -> None:
    release = gevent.event.Event()
    arrived = gevent.event.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["wsgi.input"].read()
        arrived.set()
        release.wait()
        start_response("200 OK", [("X-Smtp-Reply", '250; message="2.0.0 Ok"')])
        return [b""]

    server = wsgi_server(app)
    relay = HttpRelay(server.url, ehlo_as="close.test", timeout=GUARD_SECONDS,
                      idle_timeout=IDLE_SECONDS)
    baseline = _baseline()
    with gevent.Timeout(GUARD_SECONDS):
        [job] = _spawn_attempts(relay, 1)
        arrived.wait()
        closer = gevent.spawn(relay.close, GUARD_SECONDS)
        gevent.sleep(0)
        _assert_closing_error(relay)
        assert not closer.ready()  # it waits for the request in flight
        release.set()
        closer.get()
        reply = job.get()
    assert reply is not None and reply.code == "250"
    assert len(server.requests) == 1
    assert not relay.pool
    _assert_no_leaks(baseline)


# -- relays with nothing in flight of their own -----------------------------------------
@pytest.mark.parametrize(
    "make",
    [BlackholeRelay, lambda: PipeRelay(["true"], 5.0)],
    ids=["blackhole", "pipe"],
)
def test_close_without_a_pool(make: Callable[[], Relay]) -> None:
    relay = make()
    relay.close()
    relay.close(0.1)  # idempotent
