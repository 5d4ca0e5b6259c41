"""DKIM signatures survive the relay (issue 12): signed with dkimpy, verified at the receiver.

dkimpy is a real, independent DKIM implementation. Each corpus-shaped message is
signed twice, as an author domain and an ESP commonly both do: once with
relaxed/relaxed and once with simple/simple canonicalisation, over From, To,
Subject, Date, Message-ID, Content-Type and List-Unsubscribe. The messages include
multipart mail with an attachment, a digest, a PGP-signed message, Exim/Postfix
folding with odd spacing, and a newsletter with a 150-character one-click
``List-Unsubscribe`` URL. Each signature's ``b=`` is either folded (dkimpy's output)
or on one long line (about 350 characters, as many signers write it).

The signed bytes are relayed with ``StaticSmtpRelay`` to smtp-sink and with
``StaticLmtpRelay`` to Dovecot, and what the receiver stored is verified with
dkimpy against the public key (served by a ``dnsfunc``, no DNS). Every signature
must verify, also after a ``Received`` field is added with ``prepend_header``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import pytest
from support.dkim_keys import Keys, signed, verify_all
from support.dovecot import DovecotLmtp
from support.envelopes import make_envelope
from support.util import GUARD_SECONDS

from slimta.envelope import Envelope
from slimta.relay.smtp.static import StaticLmtpRelay, StaticSmtpRelay
from slimta.smtp.reply import Reply

pytestmark = pytest.mark.usefixtures("no_relay_leaks")

#: Corpus messages to sign. Their placeholder signatures (DKIM, ARC) are removed
#: first: they are not verifiable, and "every signature verifies" is the check.
MESSAGES = [
    "01-thunderbird-alternative-attachment.eml",
    "02-mailman-digest.eml",
    "04-forward-as-attachment.eml",
    "08-folding-and-spacing.eml",
    "09-esp-bulk-long-tokens.eml",
    "11-received-chain-arc.eml",
    "18-pgp-signed-preamble-epilogue.eml",
    "21-large-attachment.eml",
]
RECIPIENT = "alice@example.test"
#: Long enough that the policy folds it, as a real trace field is.
RECEIVED = (
    "from mail-out.example.org (mail-out.example.org [192.0.2.25]) by relay.example.test "
    "(slimta-relay) with ESMTPS id 4QxZ9k1Lm2z9sWx for <alice@example.test>; "
    "Tue, 14 Mar 2023 09:12:45 +0100"
)

@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def relay_once(relay: Any, env: Envelope) -> Any:
    try:
        with gevent.Timeout(GUARD_SECONDS, AssertionError("attempt() did not return")):
            return relay.attempt(env, 0)
    finally:
        relay.kill()


def assert_delivered(result: Any) -> None:
    reply = result[RECIPIENT] if isinstance(result, dict) else result
    assert isinstance(reply, Reply) and reply.code == "250", reply


Prepare = Callable[[Envelope], None]


def _untouched(env: Envelope) -> None:
    """Relay the envelope as parsed."""


def _with_received(env: Envelope) -> None:
    env.prepend_header("Received", RECEIVED)


EDITS = pytest.mark.parametrize("edit", [_untouched, _with_received], ids=["as-is", "received"])
LONG_B = pytest.mark.parametrize("long_b", [False, True], ids=["folded-b", "long-b"])
NAMES = pytest.mark.parametrize("name", MESSAGES)


def envelope(message: bytes, edit: Prepare) -> Envelope:
    env = make_envelope(sender="sender@example.org", rcpts=(RECIPIENT,), data=message)
    edit(env)
    return env


@LONG_B
@NAMES
def test_signatures_verify_before_relaying(name: str, long_b: bool, keys: Keys) -> None:
    """The fixture itself: both signatures verify on the bytes we hand to the relay."""
    message = signed(name, keys, long_b)
    assert verify_all(message, keys) == [True, True]
    if name.startswith("09-"):
        assert b"List-Unsubscribe: <https://" in message


@EDITS
@LONG_B
@NAMES
def test_smtp_sink(name: str, long_b: bool, edit: Prepare, keys: Keys, smtp_sink: Any) -> None:
    message = signed(name, keys, long_b)
    sink = smtp_sink()
    relay = StaticSmtpRelay(sink.host, sink.port, pool_size=1, ehlo_as="relay.example.test")
    assert_delivered(relay_once(relay, envelope(message, edit)))
    [got] = sink.messages()
    assert verify_all(got.data, keys) == [True, True]
    if edit is _with_received:
        assert got.data.startswith(b"Received: from mail-out.example.org")


@EDITS
@LONG_B
@NAMES
def test_dovecot_lmtp(
    name: str, long_b: bool, edit: Prepare, keys: Keys, dovecot_lmtp: DovecotLmtp
) -> None:
    """Verified as a mail reader would see it: Dovecot's stored file (LF line ends,
    which IMAP serves as CRLF) with Dovecot's own trace fields on top."""
    message = signed(name, keys, long_b)
    relay = StaticLmtpRelay(
        dovecot_lmtp.host, dovecot_lmtp.port, pool_size=1, ehlo_as="relay.example.test"
    )
    assert_delivered(relay_once(relay, envelope(message, edit)))
    [stored] = dovecot_lmtp.messages("alice")
    assert b"\r" not in stored
    assert stored.startswith(b"Return-Path: <sender@example.org>\n")
    assert verify_all(stored.replace(b"\n", b"\r\n"), keys) == [True, True]


def test_a_changed_signed_header_fails_verification(keys: Keys, smtp_sink: Any) -> None:
    """The check has teeth: a signed header replaced before relaying breaks both."""
    message = signed("09-esp-bulk-long-tokens.eml", keys, True)
    env = Envelope("sender@example.org", [RECIPIENT])
    env.parse(message)
    assert env.headers is not None
    env.headers.replace_header("Subject", "Spring sale: up to 60% off everything")
    sink = smtp_sink()
    relay = StaticSmtpRelay(sink.host, sink.port, pool_size=1, ehlo_as="relay.example.test")
    assert_delivered(relay_once(relay, env))
    [got] = sink.messages()
    assert verify_all(got.data, keys) == [False, False]
