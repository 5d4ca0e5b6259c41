"""The public wire-trace hooks: SMTP/LMTP clients, the HTTP relay and the pipe relays.

Each test relays through a real server or program and checks the events the
trace callback saw against what the peer received.
"""

from __future__ import annotations

import base64
import ssl
import sys
from typing import Any

import gevent
import pytest
from support.aiosmtpd_server import AiosmtpdFactory
from support.reliability import GUARD_SECONDS, make_envelope
from support.smtp_sink import SmtpSinkFactory
from support.tls import TlsCert
from support.wsgi_server import WsgiServerFactory

from slimta.relay import PermanentRelayError
from slimta.relay.http import HttpRelay
from slimta.relay.pipe import PipeRelay
from slimta.relay.smtp.client import SmtpRelayClient
from slimta.relay.smtp.static import StaticLmtpRelay, StaticSmtpRelay
from slimta.smtp import ConnectionLost
from slimta.smtp.client import Client, mask_secret
from slimta.smtp.io import IO

pytestmark = pytest.mark.usefixtures("no_relay_leaks")


class Recorder:
    """A trace factory: one list of ``(event, data)`` per connection."""

    def __init__(self) -> None:
        self.connections: list[list[tuple[str, bytes]]] = []

    def __call__(self) -> Any:
        events: list[tuple[str, bytes]] = []
        self.connections.append(events)
        return lambda event, data: events.append((event, data))

    @staticmethod
    def joined(events: list[tuple[str, bytes]], kind: str) -> bytes:
        return b"".join(data for event, data in events if event == kind)


def _deliver(relay: Any, envelope: Any) -> Any:
    try:
        with gevent.Timeout(GUARD_SECONDS):
            return relay.attempt(envelope, 0)
    finally:
        relay.close(GUARD_SECONDS)


# -- SMTP and LMTP ---------------------------------------------------------------------
def test_smtp_trace_sees_every_byte(smtp_sink: SmtpSinkFactory) -> None:
    sink = smtp_sink()
    trace = Recorder()
    relay = StaticSmtpRelay(*sink.address, ehlo_as="trace.test", trace=trace)
    envelope = make_envelope(body=b".leading dot\r\nbody\r\n")
    _deliver(relay, envelope)
    [message] = sink.wait_for_messages(1)
    assert message.rcpt_to == ["rcpt@example.test"]
    [events] = trace.connections
    assert events[0] == ("connect", f"{sink.host}:{sink.port}".encode())
    assert events[-1] == ("close", b"")
    sent = Recorder.joined(events, "send")
    assert sent.startswith(b"EHLO trace.test\r\n")
    assert b"MAIL FROM:<sender@example.test>" in sent
    assert b"RCPT TO:<rcpt@example.test>\r\n" in sent
    assert b"\r\n..leading dot\r\nbody\r\n.\r\n" in sent  # dot-stuffed, as on the wire
    assert sent.endswith(b"QUIT\r\n")
    received = Recorder.joined(events, "recv")
    assert received.startswith(b"220 ") and b"\r\n221 " in received


def test_lmtp_trace(smtp_sink: SmtpSinkFactory) -> None:
    sink = smtp_sink("-L")
    trace = Recorder()
    relay = StaticLmtpRelay(*sink.address, ehlo_as="trace.test", trace=trace)
    result = _deliver(relay, make_envelope(rcpts=["a@example.test", "b@example.test"]))
    assert sorted(result) == ["a@example.test", "b@example.test"]
    [events] = trace.connections
    sent = Recorder.joined(events, "send")
    assert sent.startswith(b"LHLO trace.test\r\n")
    # LMTP: one reply per recipient after the data.
    assert Recorder.joined(events, "recv").count(b"\r\n250") >= 4


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_trace_after_starttls_masks_auth(
    aiosmtpd_server: AiosmtpdFactory, tls_cert: TlsCert, mechanism: str
) -> None:
    password = "s3cret-Pa55"
    server = aiosmtpd_server(starttls=True, auth=("relay-user", password))
    trace = Recorder()
    relay = StaticSmtpRelay(
        server.host, server.port, context=ssl.create_default_context(cafile=tls_cert.ca_path),
        tls_required=True, credentials=("relay-user", password), auth_mechanism=mechanism,
        ehlo_as="trace.test", trace=trace,
    )  # fmt: skip
    _deliver(relay, make_envelope())
    [envelope] = server.envelopes
    assert envelope.tls and envelope.auth_login == "relay-user"
    [events] = trace.connections
    kinds = [event for event, _ in events]
    assert kinds.index("starttls") + 1 == kinds.index("tls")
    [tls] = [data for event, data in events if event == "tls"]
    assert tls.startswith(b"TLS")
    sent = Recorder.joined(events, "send")
    after_tls = Recorder.joined(events[kinds.index("tls"):], "send")
    assert after_tls.startswith(b"EHLO trace.test\r\n")  # the bytes inside TLS
    plain = base64.b64encode(f"\0relay-user\0{password}".encode())
    for secret in (password.encode(), plain, base64.b64encode(password.encode()),
                   base64.b64encode(b"relay-user")):
        assert secret not in sent
    if mechanism == "PLAIN":
        assert b"AUTH PLAIN ********\r\n" in sent
    else:
        assert b"AUTH LOGIN\r\n********\r\n********\r\n" in sent or (
            b"AUTH LOGIN ********\r\n********\r\n" in sent
        )


def test_trace_of_a_refused_message(smtp_sink: SmtpSinkFactory) -> None:
    sink = smtp_sink("-f", "RCPT")
    trace = Recorder()
    relay = StaticSmtpRelay(*sink.address, ehlo_as="trace.test", trace=trace)
    with pytest.raises(PermanentRelayError) as info:
        _deliver(relay, make_envelope())
    assert info.value.reply.code.startswith("5")
    [events] = trace.connections
    received = Recorder.joined(events, "recv")
    assert info.value.reply.code.encode() + b" " in received
    assert events[-1] == ("close", b"")


def test_mask_secret_rule() -> None:
    assert mask_secret(b"AUTH PLAIN AHVzZXIAcHc=") == b"AUTH PLAIN ********"
    assert mask_secret(b"auth xoauth2 dG9rZW4=") == b"auth xoauth2 ********"
    assert mask_secret(b"dXNlcg==") == b"********"
    assert mask_secret(b"AUTH LOGIN") == b"********"
    assert mask_secret(b"") == b""


def test_no_trace_means_the_plain_io() -> None:
    """Unset, the hook adds nothing: the client keeps the plain IO class."""
    import socket

    left, right = socket.socketpair()
    try:
        assert type(Client(left, ("127.0.0.1", 25)).io) is IO
        traced = Client(left, ("127.0.0.1", 25), trace=lambda event, data: None)
        assert type(traced.io) is not IO and isinstance(traced.io, IO)
        assert SmtpRelayClient(("127.0.0.1", 25), None).trace is None
    finally:
        left.close()
        right.close()


def test_trace_event_order_on_the_protocol_client() -> None:
    """Unit: bytes in, events out, over a socketpair with a scripted server."""
    from gevent import socket

    left, right = socket.socketpair()
    events: list[tuple[str, bytes]] = []
    client = Client(left, ("mx.test", 25), trace=lambda event, data: events.append((event, data)))
    right.sendall(b"220 hi\r\n250 ok\r\n")  # the banner, then NOOP's reply
    with gevent.Timeout(GUARD_SECONDS):
        assert client.get_banner().code == "220"
        client.queue_command(b"NOOP")
        client.flush()
        assert right.recv(100) == b"NOOP\r\n"
        right.close()
        with pytest.raises(ConnectionLost):
            client.get_reply()
    client.io.close()
    assert events[0] == ("connect", b"mx.test:25")
    assert events[1] == ("recv", b"220 hi\r\n250 ok\r\n")
    assert ("send", b"NOOP\r\n") in events
    assert ("lost", b"") in events
    assert events[-1] == ("close", b"")


# -- HTTP ------------------------------------------------------------------------------
def test_http_trace(wsgi_server: WsgiServerFactory) -> None:
    server = wsgi_server()
    trace = Recorder()
    relay = HttpRelay(server.url + "deliver", ehlo_as="trace.test", timeout=GUARD_SECONDS,
                      trace=trace)
    _deliver(relay, make_envelope())
    [request] = server.requests
    [events] = trace.connections
    assert events[0] == ("connect", f"{server.host}:{server.port}".encode())
    sent = Recorder.joined(events, "send")
    assert sent.startswith(b"POST /deliver HTTP/1.1\r\n")
    assert sent.endswith(request.body)
    assert Recorder.joined(events, "recv").startswith(b"HTTP/1.1 200")
    assert events[-1] == ("close", b"")


# -- local programs --------------------------------------------------------------------
def test_pipe_trace() -> None:
    script = "import sys; sys.stdin.buffer.read(); print('out'); print('err', file=sys.stderr)"
    calls: list[tuple[int, str, bytes]] = []
    relay = PipeRelay([sys.executable, "-c", script, "{recipient}"], GUARD_SECONDS,
                      trace=lambda pid, event, data: calls.append((pid, event, data)))
    result = _deliver(relay, make_envelope())
    assert result == {"rcpt@example.test": None}
    pids = {pid for pid, _, _ in calls}
    assert len(pids) == 1 and pids.pop() > 0
    assert [event for _, event, _ in calls] == ["run", "stdout", "stderr", "exit"]
    assert calls[0][2].endswith(b" rcpt@example.test")
    assert calls[1][2] == b"out\n" and calls[2][2] == b"err\n" and calls[3][2] == b"0"


def test_pipe_trace_reports_the_exit_status() -> None:
    calls: list[tuple[int, str, bytes]] = []
    script = "import sys; sys.stdin.read(); sys.exit(75)"
    relay = PipeRelay([sys.executable, "-c", script], GUARD_SECONDS,
                      trace=lambda pid, event, data: calls.append((pid, event, data)))
    result = _deliver(relay, make_envelope())
    assert result["rcpt@example.test"].reply.code.startswith("4")
    assert [event for _, event, _ in calls] == ["run", "exit"]
    assert calls[-1][2] == b"75"
