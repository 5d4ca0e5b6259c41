"""The hostile-input matrix across the SMTP, LMTP, MX, HTTP and pipe relays.

Each input gets a clear, correctly classified error or a correct delivery, never a
partial or misattributed one; every case asserts what the real peer received.
"""

from __future__ import annotations

import base64
import hashlib
import stat
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import gevent.socket
import pytest
from support.dns_server import DnsTestServer
from support.faultserver import FaultServer
from support.reliability import (
    assert_relay_error,
    make_envelope,
    timed_attempt,
)
from support.wsgi_server import WsgiServer

from slimta.envelope import Envelope
from slimta.relay import RelayError
from slimta.relay.http import HttpRelay
from slimta.relay.pipe import PipeRelay
from slimta.relay.smtp.mx import MxSmtpRelay
from slimta.relay.smtp.static import StaticLmtpRelay, StaticSmtpRelay
from slimta.smtp.reply import Reply

pytestmark = pytest.mark.usefixtures("no_relay_leaks")

CONTROL = ["\r", "\n", "\r\n", "\0", "\x1b", "\x7f", "\t", "\x0b", "\x85", "\u2028"]
#: (address, why) that must never reach the wire.
BAD_ADDRESSES = [
    *[(f"us{c}er@example.test", f"control {c!r}") for c in CONTROL],
    ("a@example.test>\r\nRCPT TO:<evil@example.test", "smuggled command"),
    ("a@exa mple.test", "space"),
    ("<a@example.test>", "angle brackets"),
    ("l" * 65 + "@example.test", "local part over 64 octets"),
    ("a@" + "d" * 250 + ".test", "domain over 255 octets"),
    ("a" * 64 + "@" + ("d" * 60 + ".") * 3 + "d" * 16 + ".test", "path over 256 octets"),
]


def _smtp(server: FaultServer, **options: Any) -> StaticSmtpRelay:
    return StaticSmtpRelay(*server.address, pool_size=1, ehlo_as="relay.test",
                           command_timeout=5.0, **options)


def _run(relay: Any, env: Envelope) -> Any:
    try:
        return timed_attempt(relay, env)
    finally:
        relay.kill()


#: The shared builder with the small message most cases send: what is hostile is the
#: sender, the recipients or the data a case passes.
hostile_envelope = partial(
    make_envelope, sender="s@example.test", data=b"Subject: t\r\n\r\nhi\r\n"
)


# -- SMTP ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, why", BAD_ADDRESSES, ids=[w for _, w in BAD_ADDRESSES])
def test_smtp_hostile_sender_sends_nothing(
    fast_fault_server: Callable[..., FaultServer], bad: str, why: str
) -> None:
    server = fast_fault_server()
    outcome = _run(_smtp(server), hostile_envelope(sender=bad, rcpts=["r@example.test"]))
    assert_relay_error(outcome.error, True, "501", "5.1.7")
    server.wait_closed()
    assert server.sessions[0].verbs() == [b"EHLO", b"QUIT"]  # not even MAIL


@pytest.mark.parametrize("bad, why", BAD_ADDRESSES, ids=[w for _, w in BAD_ADDRESSES])
def test_smtp_hostile_recipient_is_refused_alone(
    fast_fault_server: Callable[..., FaultServer], bad: str, why: str
) -> None:
    server = fast_fault_server()
    outcome = _run(_smtp(server), hostile_envelope(rcpts=[bad, "ok@example.test"]))
    assert outcome.error is None
    assert_relay_error(outcome.result[bad], True, "501", "5.1.3")
    assert isinstance(outcome.result["ok@example.test"], Reply)
    server.wait_closed()
    commands = server.sessions[0].commands
    assert [c for c in commands if c.startswith(b"RCPT")] == [b"RCPT TO:<ok@example.test>"]
    assert len(server.sessions[0].messages) == 1


def test_smtp_only_hostile_recipients(fast_fault_server: Callable[..., FaultServer]) -> None:
    server = fast_fault_server()
    outcome = _run(_smtp(server), hostile_envelope(rcpts=["a\r@x.test", "b\n@x.test"]))
    assert_relay_error(outcome.error, True, "501", "5.1.3")
    server.wait_closed()
    assert b"DATA" not in server.sessions[0].verbs()
    assert server.sessions[0].raw_data == []


@pytest.mark.parametrize("where", ["sender", "recipient"])
def test_smtp_utf8_address_without_smtputf8(
    fast_fault_server: Callable[..., FaultServer], where: str
) -> None:
    server = fast_fault_server(extensions=["PIPELINING", "8BITMIME"])
    sender, rcpt = ("jösé@exämple.test", "r@example.test") if where == "sender" else (
        "s@example.test", "rücksendung@exämple.test")
    outcome = _run(_smtp(server), hostile_envelope(sender=sender, rcpts=[rcpt, "ok@example.test"]))
    server.wait_closed()
    if where == "sender":
        assert_relay_error(outcome.error, True, "553", "5.6.7")
        assert b"MAIL" not in server.sessions[0].verbs()
    else:
        assert_relay_error(outcome.result[rcpt], True, "553", "5.6.7")
        assert isinstance(outcome.result["ok@example.test"], Reply)
        assert all(c.isascii() for c in server.sessions[0].commands)


def test_smtp_utf8_address_with_smtputf8(fast_fault_server: Callable[..., FaultServer]) -> None:
    server = fast_fault_server(extensions=["PIPELINING", "8BITMIME", "SMTPUTF8"])
    env = hostile_envelope(sender="jösé@exämple.test", rcpts=["ü@exämple.test"])
    outcome = _run(_smtp(server), env)
    assert isinstance(outcome.result["ü@exämple.test"], Reply)
    server.wait_closed()
    commands = server.sessions[0].commands
    assert commands[1].startswith("MAIL FROM:<jösé@exämple.test>".encode())
    assert b"SMTPUTF8" in commands[1]
    assert commands[2] == "RCPT TO:<ü@exämple.test>".encode()


@pytest.mark.parametrize("sender", ["", None])
def test_smtp_null_sender(fast_fault_server: Callable[..., FaultServer], sender: Any) -> None:
    server = fast_fault_server()
    outcome = _run(_smtp(server), hostile_envelope(sender=sender, rcpts=["r@example.test"]))
    assert isinstance(outcome.result["r@example.test"], Reply)
    server.wait_closed()
    assert server.sessions[0].commands[1].startswith(b"MAIL FROM:<> ")
    assert len(server.sessions[0].messages) == 1


def test_smtp_envelope_without_recipients(fast_fault_server: Callable[..., FaultServer]) -> None:
    server = fast_fault_server()
    outcome = _run(_smtp(server), hostile_envelope(rcpts=[]))
    assert_relay_error(outcome.error, True, "554", "5.5.1", b"RCPT")
    server.wait_closed()
    assert server.sessions[0].verbs() == [b"EHLO", b"QUIT"]


def test_smtp_bare_lf_headers_and_lone_dots(fast_fault_server: Callable[..., FaultServer]) -> None:
    server = fast_fault_server()
    data = b"Subject: bare\nX-Other: lf\n\n.\nbody\n.\n..\n.x\nlast"
    env = hostile_envelope(rcpts=["r@example.test"], data=data)
    header, body = env.flatten()
    outcome = _run(_smtp(server), env)
    assert isinstance(outcome.result["r@example.test"], Reply)
    server.wait_closed()
    raw = server.sessions[0].raw_data[0]
    assert b"\n" not in raw.replace(b"\r\n", b"")  # no bare LF reached the wire
    assert b"\r\n.\r\n" not in raw[:-5]  # no early end of data
    received = server.sessions[0].messages[0]
    assert received.endswith(b"\r\n.\r\nbody\r\n.\r\n..\r\n.x\r\nlast\r\n")
    assert received.startswith(header.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    assert len(body) > 0


def test_smtp_very_large_message(smtp_sink: Any) -> None:
    # A real server (postfix smtp-sink) and ~20 MiB with many leading-dot lines.
    sink = smtp_sink()
    body = (b".leading dot line\r\n" + bytes(range(32, 127)) + b"\r\n") * 180000
    env = make_envelope(rcpts=["r@example.test"], body=body)
    relay = StaticSmtpRelay(*sink.address, pool_size=1, ehlo_as="relay.test",
                            command_timeout=10.0, data_timeout=60.0)
    outcome = _run(relay, env)
    assert outcome.error is None, outcome.error
    assert isinstance(outcome.result["r@example.test"], Reply)
    (message,) = sink.wait_for_messages(1)
    header, _ = env.flatten()
    assert len(message.data) == len(header) + len(body)
    assert hashlib.sha256(message.data).digest() == hashlib.sha256(header + body).digest()


def test_smtp_message_over_size_limit(fast_fault_server: Callable[..., FaultServer]) -> None:
    server = fast_fault_server(extensions=["PIPELINING", "SIZE 1000"])
    outcome = _run(_smtp(server), make_envelope(body=b"x" * 2000 + b"\r\n"))
    assert_relay_error(outcome.error, True, "552", "5.3.4")
    server.wait_closed()
    assert b"MAIL" not in server.sessions[0].verbs()


# -- LMTP ----------------------------------------------------------------------------------


def test_lmtp_hostile_recipient_and_lone_dots(
    fast_fault_server: Callable[..., FaultServer],
) -> None:
    server = fast_fault_server(lmtp=True, extensions=["PIPELINING", "8BITMIME"])
    relay = StaticLmtpRelay(*server.address, pool_size=1, ehlo_as="relay.test")
    bad = "x@y.test>\r\nRCPT TO:<evil@y.test"
    data = b"Subject: l\r\n\r\n.\r\n..\r\n"
    env = hostile_envelope(sender="", rcpts=[bad, "ok@example.test"], data=data)
    outcome = _run(relay, env)
    assert_relay_error(outcome.result[bad], True, "501", "5.1.3")
    assert isinstance(outcome.result["ok@example.test"], Reply)
    server.wait_closed()
    commands = server.sessions[0].commands
    assert commands[1].startswith(b"MAIL FROM:<>")
    assert [c for c in commands if c.startswith(b"RCPT")] == [b"RCPT TO:<ok@example.test>"]
    assert server.sessions[0].messages == [b"Subject: l\r\n\r\n.\r\n..\r\n"]


# -- MX ------------------------------------------------------------------------------------


@pytest.fixture
def mx_relay(dns_server: DnsTestServer, dns_resolver: Any,
             fast_fault_server: Callable[..., FaultServer]) -> Iterator[Any]:
    server = fast_fault_server(extensions=["PIPELINING", "8BITMIME", "SMTPUTF8"])
    calls: list[Any] = []

    def creator(address: Any) -> Any:
        calls.append(address)
        return gevent.socket.create_connection(server.address)

    relay = MxSmtpRelay(socket_creator=creator, ehlo_as="relay.test", command_timeout=5.0)
    dns_server.add_mx("good.test", 10, "mx.good.test")
    try:
        yield relay, server, calls
    finally:
        relay.kill()


@pytest.mark.parametrize(
    "bad",
    ["user@bad\r\n.test", "user@good.test\r\nRCPT TO:<x@good.test>", "user@\0good.test",
     "user@" + "d" * 300 + ".test", "no-domain-at-all", "user@"],
)
def test_mx_hostile_recipient(mx_relay: Any, bad: str) -> None:
    relay, server, calls = mx_relay
    outcome = timed_attempt(relay, hostile_envelope(rcpts=[bad, "ok@good.test"]))
    assert outcome.error is None, outcome.error
    assert isinstance(outcome.result["ok@good.test"], Reply)
    error = outcome.result[bad]
    assert_relay_error(error, True)
    assert error.reply.code in ("501", "550", "553"), error.reply
    assert {host for host, _ in calls} == {"mx.good.test"}
    relay.kill()
    server.wait_closed()
    lines = [c for s in server.sessions for c in s.commands if c.startswith(b"RCPT")]
    assert lines == [b"RCPT TO:<ok@good.test>"]


def test_mx_idn_recipient_routes_by_a_label(mx_relay: Any, dns_server: DnsTestServer) -> None:
    relay, server, calls = mx_relay
    dns_server.add_mx("xn--bcher-kva.test", 10, "mx.good.test")
    outcome = timed_attempt(relay, hostile_envelope(rcpts=["leser@bücher.test"]))
    assert isinstance(outcome.result["leser@bücher.test"], Reply)
    assert calls == [("mx.good.test", 25)]


# -- HTTP ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sender, rcpts",
    [
        ("", ["r@example.test"]),
        ("s\r\nX-Injected: yes@example.test", ["r\r\nX-Evil: 1@example.test"]),
        ("jösé@exämple.test", ["ü@exämple.test", "\0@x.test"]),
    ],
)
def test_http_hostile_envelope_travels_base64(
    wsgi_server: Callable[..., WsgiServer], sender: str, rcpts: list[str]
) -> None:
    server = wsgi_server()
    relay = HttpRelay(server.url, ehlo_as="relay.test", timeout=5.0)
    data = b"Subject: h\r\n\r\n.\r\nlone dot above\r\n"
    outcome = _run(relay, hostile_envelope(sender=sender, rcpts=rcpts, data=data))
    assert outcome.error is None, outcome.error
    (request,) = server.requests
    assert not any(k.lower() in ("x-injected", "x-evil") for k, _ in request.headers)
    assert base64.b64decode(request.header("X-Envelope-Sender") or "").decode() == sender
    assert [base64.b64decode(v).decode() for v in
            request.header_all("X-Envelope-Recipient")] == rcpts
    assert request.body == data  # HTTP carries the message as it is: no dot-stuffing


# -- pipe ----------------------------------------------------------------------------------


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[str, Path]:
    """A program that writes its arguments (NUL-separated) and stdin to files."""
    out = tmp_path / "args"
    prog = tmp_path / "record.sh"
    prog.write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" >> "{out}"\ncat > "{out}.stdin"\n')
    prog.chmod(prog.stat().st_mode | stat.S_IXUSR)
    return str(prog), out


@pytest.mark.parametrize(
    "rcpt, code, esc",
    [
        ("-oQ/tmp/evil@x.test", "501", "5.1.3"),
        ("--help", "501", "5.1.3"),
        ("a\nb@x.test", "501", "5.1.3"),
        ("a\0b@x.test", "501", "5.1.3"),
    ],
)
def test_pipe_hostile_recipient_never_reaches_argv(
    recorder: tuple[str, Path], rcpt: str, code: str, esc: str
) -> None:
    prog, out = recorder
    relay = PipeRelay([prog, "{sender}", "{recipient}"], timeout=5.0)
    outcome = timed_attempt(relay, hostile_envelope(rcpts=[rcpt, "ok@x.test"]))
    error = outcome.result[rcpt]
    assert isinstance(error, RelayError)
    assert_relay_error(error, True, code, esc)
    assert outcome.result["ok@x.test"] is None
    assert out.read_bytes().split(b"\0")[:-1] == [b"s@example.test", b"ok@x.test"]


def test_pipe_null_sender_and_utf8_recipient(recorder: tuple[str, Path]) -> None:
    prog, out = recorder
    relay = PipeRelay([prog, "-f", "{sender}", "--", "{recipient}"], timeout=5.0)
    data = b"Subject: p\r\n\r\n.\r\nbody\r\n"
    outcome = timed_attempt(relay, hostile_envelope(sender="", rcpts=["ü@exämple.test"], data=data))
    assert outcome.result == {"ü@exämple.test": None}
    assert out.read_bytes().split(b"\0")[:-1] == [b"-f", b"", b"--", "ü@exämple.test".encode()]
    assert Path(f"{out}.stdin").read_bytes() == data


def test_pipe_envelope_without_recipients(recorder: tuple[str, Path]) -> None:
    prog, out = recorder
    outcome = timed_attempt(PipeRelay([prog, "{recipient}"], timeout=5.0),
                            hostile_envelope(rcpts=[]))
    assert outcome.error is None or isinstance(outcome.error, RelayError)
    if outcome.error is None:
        assert not outcome.result
    assert not out.exists()  # nothing was run for nobody
