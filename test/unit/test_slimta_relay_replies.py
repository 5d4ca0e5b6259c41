"""The replies the relays build themselves (slimta.relay._replies): pure functions."""

from __future__ import annotations

import pytest

from slimta.relay import TransientRelayError
from slimta.relay._replies import (
    MAX_DETAIL_CHARS,
    address_refusal,
    internal_failure,
    misconfigured,
    no_valid_recipients,
    scrub,
)


def test_scrub_replaces_control_runs_and_caps() -> None:
    assert scrub("a\r\n\x00b\x7fc\td") == "a b c d"
    assert len(scrub("x" * 1000)) == MAX_DETAIL_CHARS
    assert scrub("x" * 1000, None) == "x" * 1000
    assert scrub("abc", 2) == "ab"


def test_internal_failure() -> None:
    error = internal_failure("Relay shut down")
    assert isinstance(error, TransientRelayError)
    assert str(error) == "Relay shut down"
    assert (error.reply.code, error.reply.message) == ("451", "4.3.0 Relay shut down")
    assert internal_failure("x", b"RCPT").reply.command == b"RCPT"


def test_misconfigured_and_no_recipients() -> None:
    reply = misconfigured("Invalid EHLO name configured", b"EHLO")
    assert (str(reply), reply.command) == ("451 4.3.5 Invalid EHLO name configured", b"EHLO")
    reply = no_valid_recipients()
    assert (str(reply), reply.command) == ("554 5.5.1 No valid recipients", b"RCPT")
    assert no_valid_recipients() is not reply  # each caller may change its own


@pytest.mark.parametrize(
    "address", ["a\r\nRSET@x.test", "user@host>", "sp ace@x.test", "x" * 65 + "@x.test"]
)
def test_address_refusal_names_the_stage(address: str) -> None:
    reply = address_refusal(address, "5.1.7", b"MAIL")
    assert reply is not None
    assert (reply.code, reply.enhanced_status_code, reply.command) == ("501", "5.1.7", b"MAIL")
    assert "\r" not in str(reply) and "\n" not in str(reply)


def test_address_refusal_non_ascii_needs_smtputf8() -> None:
    assert address_refusal("j\u00f6rg@x.test", "5.1.3", b"RCPT") is None
    reply = address_refusal("j\u00f6rg@x.test", "5.1.3", b"RCPT", utf8_ok=False)
    assert reply is not None and str(reply).startswith("553 5.6.7 ")
    assert address_refusal("plain@x.test", "5.1.3", b"RCPT", utf8_ok=False) is None
