"""Every corpus message through every real receiver, compared byte for byte (issue 12).

Each message in ``test/data/corpus`` is parsed into an :class:`Envelope` and relayed
to a real server; what the server stored is compared with what was given:

* ``StaticSmtpRelay`` → Postfix smtp-sink (its ``-d`` dump, dot-stuffing undone);
* ``StaticLmtpRelay`` → Dovecot LMTP (the Maildir file, minus the three trace fields
  Dovecot writes at the top; Dovecot stores LF line ends);
* ``MaildropRelay`` → maildrop into a Maildir;
* ``HttpRelay`` → the WSGI receiver (the exact request body);
* SMTPUTF8 (non-ASCII envelope addresses) → aiosmtpd with SMTPUTF8 on: neither
  smtp-sink nor Dovecot's LMTP advertises SMTPUTF8 (checked in this file).

What a receiver must hold: the bytes given to ``parse()`` with only bare CR and bare
LF made CRLF. Over SMTP and LMTP the data sender makes the body's line ends CRLF too
and adds the CRLF that ends a last partial line before ``.``
(:func:`support.corpus.expected_wire`); the pipe and HTTP relays pass
``flatten()``'s bytes on unchanged (:func:`support.corpus.expected_flatten`).
Header edits made through the API before relaying show up as exactly those edits.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from support.corpus import (
    HeaderModel,
    corpus_names,
    expected_flatten,
    expected_wire,
    load,
    strip_dovecot_trace,
    well_formed_names,
)
from support.dovecot import DovecotLmtp
from support.maildrop import MaildropBox
from support.util import GUARD_SECONDS

from slimta.envelope import Envelope
from slimta.relay.http import HttpRelay
from slimta.relay.pipe import MaildropRelay
from slimta.relay.smtp.static import StaticLmtpRelay, StaticSmtpRelay
from slimta.smtp.reply import Reply

pytestmark = pytest.mark.usefixtures("no_relay_leaks")

ALL = corpus_names()
WELL_FORMED = well_formed_names()
RECIPIENT = "alice@example.test"
#: A delivery report travels with the null reverse-path, as a real MTA sends it.
SENDERS = {"03-postfix-dsn.eml": ""}
RECEIVED = "from relay.example.test ([192.0.2.1]) by mx.example.test; x"


def sender_for(name: str) -> str:
    return SENDERS.get(name, "sender@example.test")


def envelope_for(name: str, sender: str | None = None, rcpt: str = RECIPIENT) -> Envelope:
    env = Envelope(sender_for(name) if sender is None else sender, [rcpt])
    env.parse(load(name))
    return env


def first_difference(got: bytes, want: bytes) -> str:
    index = next(
        (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
        min(len(got), len(want)),
    )
    start = max(0, index - 60)
    return (
        f"first difference at byte {index} (got {len(got)} bytes, want {len(want)}):\n"
        f"  got:  {got[start:index + 60]!r}\n  want: {want[start:index + 60]!r}"
    )


def assert_bytes(got: bytes, want: bytes) -> None:
    assert got == want, first_difference(got, want)


def relay_once(relay: Any, env: Envelope) -> Any:
    """One ``attempt()`` under a guard; the relay is killed afterwards."""
    try:
        with gevent.Timeout(GUARD_SECONDS, AssertionError("attempt() did not return")):
            return relay.attempt(env, 0)
    finally:
        relay.kill()


def assert_delivered(result: Any, rcpt: str = RECIPIENT) -> None:
    reply = result[rcpt] if isinstance(result, dict) else result
    assert isinstance(reply, Reply) and reply.code == "250", reply


def smtp_relay(address: tuple[str, int]) -> StaticSmtpRelay:
    return StaticSmtpRelay(address[0], address[1], pool_size=1, ehlo_as="relay.example.test",
                           command_timeout=10.0, data_timeout=10.0)


def lmtp_relay(address: tuple[str, int]) -> StaticLmtpRelay:
    return StaticLmtpRelay(address[0], address[1], pool_size=1, ehlo_as="relay.example.test",
                           command_timeout=10.0, data_timeout=10.0)


def extensions(address: tuple[str, int], greeting: bytes) -> list[bytes]:
    """The extension keywords a server lists in its EHLO/LHLO reply."""
    with socket.create_connection(address, timeout=5.0) as sock, sock.makefile("rb") as stream:
        stream.readline()
        sock.sendall(greeting + b" probe.example.test\r\n")
        keywords = []
        while True:
            line = stream.readline()
            assert line[:3] == b"250", line
            keywords.append(line[4:].split(b" ", 1)[0].strip().upper())
            if line[3:4] == b" ":
                return keywords[1:]


# -- SMTP: smtp-sink -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_smtp_sink(name: str, smtp_sink: Any) -> None:
    data = load(name)
    sink = smtp_sink()
    result = relay_once(smtp_relay(sink.address), envelope_for(name))
    assert_delivered(result)
    [got] = sink.messages()
    assert got.mail_from == sender_for(name)
    assert got.rcpt_to == [RECIPIENT]
    assert_bytes(got.data, expected_wire(data))
    # An 8-bit message is announced as such.
    assert ("BODY=8BITMIME" in got.mail_args) == (not data.isascii())


@pytest.mark.parametrize("name", ALL)
def test_smtp_sink_after_prepend_header(name: str, smtp_sink: Any) -> None:
    """A trace header added the usual way: only that line is new."""
    data = load(name)
    env = envelope_for(name)
    env.prepend_header("Received", RECEIVED)
    model = HeaderModel.from_message(data)
    model.prepend("Received", RECEIVED)
    sink = smtp_sink()
    assert_delivered(relay_once(smtp_relay(sink.address), env))
    [got] = sink.messages()
    assert_bytes(got.data, expected_wire(model.flat()))
    if not model.lead:
        assert_bytes(got.data, f"Received: {RECEIVED}\r\n".encode() + expected_wire(data))


@pytest.mark.parametrize("name", WELL_FORMED)
def test_smtp_sink_after_replace_and_delete(name: str, smtp_sink: Any) -> None:
    data = load(name)
    env = envelope_for(name)
    model = HeaderModel.from_message(data)
    assert env.headers is not None
    env.headers.replace_header("Subject", "[EXTERNAL] rewritten")
    model.replace("Subject", "[EXTERNAL] rewritten")
    target = "Message-ID"
    del env.headers[target]
    model.delete(target)
    env.headers["X-Relayed-By"] = "slimta-relay"
    model.append("X-Relayed-By", "slimta-relay")
    sink = smtp_sink()
    assert_delivered(relay_once(smtp_relay(sink.address), env))
    [got] = sink.messages()
    assert_bytes(got.data, expected_wire(model.flat()))


def test_one_connection_carries_the_whole_corpus(smtp_sink: Any) -> None:
    """The corpus back to back on one reused, pipelined connection."""
    sink = smtp_sink()
    relay = StaticSmtpRelay(sink.host, sink.port, pool_size=1, ehlo_as="relay.example.test",
                            idle_timeout=10.0)
    try:
        with gevent.Timeout(GUARD_SECONDS * 3, AssertionError("attempts did not return")):
            for index, name in enumerate(ALL):
                assert_delivered(relay.attempt(envelope_for(name, rcpt=f"r{index}@x.test"), 0),
                                 f"r{index}@x.test")
    finally:
        relay.kill()
    got = {message.rcpt_to[0]: message.data for message in sink.messages()}
    for index, name in enumerate(ALL):
        assert_bytes(got[f"r{index}@x.test"], expected_wire(load(name)))


# -- LMTP: Dovecot ---------------------------------------------------------------------------------


def _dovecot_body(dovecot: DovecotLmtp, sent: bytes, sender: str) -> tuple[bytes, bytes]:
    """``(stored message minus Dovecot's trace, what was sent)``, both with LF ends.

    Dovecot's Maildir files use LF line ends (``mail_save_crlf = no``, its default),
    so the expected bytes are compared with their CRLFs made LF. Every CR in what
    we send is part of a CRLF (the data sender normalises line ends), so nothing is
    lost by that comparison.
    """
    [stored] = dovecot.messages("alice")
    expected = sent.replace(b"\r\n", b"\n")
    assert b"\r" not in expected
    return strip_dovecot_trace(stored, expected, sender, RECIPIENT), expected


@pytest.mark.parametrize("name", ALL)
def test_dovecot_lmtp(name: str, dovecot_lmtp: DovecotLmtp) -> None:
    data = load(name)
    result = relay_once(lmtp_relay(dovecot_lmtp.address), envelope_for(name))
    assert_delivered(result)
    got, want = _dovecot_body(dovecot_lmtp, expected_wire(data), sender_for(name))
    assert_bytes(got, want)


@pytest.mark.parametrize("name", ALL)
def test_dovecot_lmtp_after_prepend_header(name: str, dovecot_lmtp: DovecotLmtp) -> None:
    data = load(name)
    env = envelope_for(name)
    env.prepend_header("Received", RECEIVED)
    model = HeaderModel.from_message(data)
    model.prepend("Received", RECEIVED)
    assert_delivered(relay_once(lmtp_relay(dovecot_lmtp.address), env))
    got, want = _dovecot_body(dovecot_lmtp, expected_wire(model.flat()), sender_for(name))
    assert_bytes(got, want)


# -- pipe: maildrop --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_maildrop(name: str, maildrop_box: MaildropBox) -> None:
    """The pipe relay writes ``flatten()``'s bytes to maildrop's stdin unchanged.

    There is no SMTP data sender in between, so the header block arrives with CRLF
    line ends and the body as stored (a bare LF stays a bare LF). maildrop 2.9
    stores what it reads without converting line ends: CRLF stays CRLF in the
    Maildir file (checked here, message by message). The one change it makes is
    to end an unterminated last line with a LF (19-no-final-newline), as a
    Maildir file holds whole lines.
    """
    data = load(name)
    relay = MaildropRelay(maildrop_box.program, timeout=GUARD_SECONDS,
                          extra_args=[maildrop_box.filter_path])
    assert relay_once(relay, envelope_for(name)) is None
    [stored] = maildrop_box.messages()
    want = expected_flatten(data)
    if not want.endswith(b"\n"):
        want += b"\n"
    assert_bytes(stored, want)


# -- HTTP: the WSGI receiver -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_http(name: str, wsgi_server: Any) -> None:
    """The request body is ``flatten()``'s bytes, unchanged."""
    data = load(name)
    server = wsgi_server()
    relay = HttpRelay(server.url, pool_size=1, ehlo_as="relay.example.test", timeout=10.0)
    assert_delivered(relay_once(relay, envelope_for(name)))
    [request] = server.requests
    assert request.header("Content-Type") == "message/rfc822"
    assert request.header("Content-Length") == str(len(expected_flatten(data)))
    assert_bytes(request.body, expected_flatten(data))


# -- SMTPUTF8 --------------------------------------------------------------------------------------


def test_smtp_sink_and_dovecot_do_not_offer_smtputf8(
    smtp_sink: Any, dovecot_lmtp: DovecotLmtp
) -> None:
    """Why the SMTPUTF8 cases below use aiosmtpd: the other two never offer it."""
    sink = smtp_sink()
    sink_ext = extensions(sink.address, b"EHLO")
    assert b"8BITMIME" in sink_ext and b"SMTPUTF8" not in sink_ext
    lmtp_ext = extensions(dovecot_lmtp.address, b"LHLO")
    assert b"8BITMIME" in lmtp_ext and b"SMTPUTF8" not in lmtp_ext


@pytest.fixture
def utf8_server(aiosmtpd_server: Any) -> Iterator[Any]:
    yield aiosmtpd_server(smtputf8=True)


@pytest.mark.parametrize("name", ["07-smtputf8-headers.eml", "06-utf8-8bit-body.eml"])
def test_smtputf8(name: str, utf8_server: Any) -> None:
    """Non-ASCII envelope addresses with RFC 6532 headers, through aiosmtpd."""
    data = load(name)
    sender, rcpt = "jöran@exämple.test", "zoë@example.test"
    env = envelope_for(name, sender=sender, rcpt=rcpt)
    relay = smtp_relay(utf8_server.address)
    assert_delivered(relay_once(relay, env), rcpt)
    [got] = utf8_server.envelopes
    assert got.smtp_utf8
    assert (got.mail_from, got.rcpt_tos) == (sender, [rcpt])
    assert_bytes(got.content, expected_wire(data))


def test_smtputf8_after_prepend_header(utf8_server: Any) -> None:
    name = "07-smtputf8-headers.eml"
    data = load(name)
    env = envelope_for(name, sender="jöran@exämple.test", rcpt="zoë@example.test")
    env.prepend_header("Received", "from relay.example.test by mx.example.test; x")
    relay = smtp_relay(utf8_server.address)
    assert_delivered(relay_once(relay, env), "zoë@example.test")
    [got] = utf8_server.envelopes
    assert_bytes(
        got.content,
        b"Received: from relay.example.test by mx.example.test; x\r\n" + expected_wire(data),
    )
