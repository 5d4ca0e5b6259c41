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

import base64
import re
from collections.abc import Callable
from typing import Any

import dkim
import gevent
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support.corpus import HeaderModel, load
from support.dovecot import DovecotLmtp

from slimta.envelope import Envelope
from slimta.relay.smtp.static import StaticLmtpRelay, StaticSmtpRelay
from slimta.smtp.reply import Reply

pytestmark = pytest.mark.usefixtures("no_relay_leaks")

GUARD_SECONDS = 20.0
DOMAIN = b"example.org"
#: Two selectors, one per canonicalisation; both publish the same key.
SELECTORS = {b"relaxed2023": (b"relaxed", b"relaxed"), b"simple2023": (b"simple", b"simple")}
SIGNED_HEADERS = [
    b"From",
    b"To",
    b"Subject",
    b"Date",
    b"Message-ID",
    b"Content-Type",
    b"List-Unsubscribe",
]
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
PLACEHOLDERS = {"dkim-signature", "arc-seal", "arc-message-signature", "arc-authentication-results"}
RECIPIENT = "alice@example.test"
#: Long enough that the policy folds it, as a real trace field is.
RECEIVED = (
    "from mail-out.example.org (mail-out.example.org [192.0.2.25]) by relay.example.test "
    "(slimta-relay) with ESMTPS id 4QxZ9k1Lm2z9sWx for <alice@example.test>; "
    "Tue, 14 Mar 2023 09:12:45 +0100"
)

# The b= tag of a DKIM-Signature field, up to the end of the field.
_B_TAG_RE = re.compile(rb"(?<=[;\s])b=([A-Za-z0-9+/=\s]+)\Z")


class Keys:
    """One RSA key: the PEM dkimpy signs with and the TXT record it verifies with."""

    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public_der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_der)
        self.lookups: list[bytes] = []

    def dnsfunc(self, name: bytes, timeout: float = 5) -> bytes:
        """dkimpy's DNS hook: the TXT record of ``<selector>._domainkey.<domain>.``."""
        self.lookups.append(name)
        wanted = {selector + b"._domainkey." + DOMAIN + b"." for selector in SELECTORS}
        return self.txt if name in wanted else b""


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def unfold_b(signature: bytes) -> bytes:
    """Put the ``b=`` value of a signature field on one line.

    The value's folding whitespace is part of the value, and the value is left out
    when the signature is computed, so the signature stays valid either way.
    """
    body = signature[:-2] if signature.endswith(b"\r\n") else signature
    match = _B_TAG_RE.search(body)
    assert match is not None, signature
    value = re.sub(rb"\s+", b"", match.group(1))
    return body[: match.start()] + b"b=" + value + b"\r\n"


def without_placeholders(data: bytes) -> bytes:
    model = HeaderModel.from_message(data)
    model.fields = [raw for raw in model.fields if model.name_of(raw).lower() not in PLACEHOLDERS]
    return model.flat()


def signed(name: str, keys: Keys, long_b: bool) -> bytes:
    """The corpus message ``name`` with two fresh signatures on top."""
    message = without_placeholders(load(name))
    for selector, canonicalize in SELECTORS.items():
        signature = dkim.sign(
            message,
            selector,
            DOMAIN,
            keys.private_pem,
            canonicalize=canonicalize,
            include_headers=SIGNED_HEADERS,
        )
        if long_b:
            signature = unfold_b(signature)
            assert max(len(line) for line in signature.split(b"\r\n")) > 300
        message = signature + message
    return message


def verify_all(message: bytes, keys: Keys) -> list[bool]:
    """Whether each DKIM-Signature in ``message`` verifies, top to bottom."""
    count = len(re.findall(rb"(?im)^DKIM-Signature:", message))
    checker = dkim.DKIM(message, minkey=1024)
    return [bool(checker.verify(idx=index, dnsfunc=keys.dnsfunc)) for index in range(count)]


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
    env = Envelope("sender@example.org", [RECIPIENT])
    env.parse(message)
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
