"""slimta.smtp.syntax: the public home of the client's path and EHLO-name rules."""

from __future__ import annotations

import pytest

import slimta.smtp.client
from slimta.smtp import syntax


def test_the_errors_are_the_ones_the_client_raises() -> None:
    # A caller catching syntax.AddressError around a Client call must catch the
    # client's refusals: the classes are the same objects, not look-alikes.
    assert syntax.AddressError is slimta.smtp.client.AddressError
    assert syntax.AddressEncodingError is slimta.smtp.client.AddressEncodingError
    assert issubclass(syntax.AddressEncodingError, syntax.AddressError)
    assert issubclass(syntax.AddressError, ValueError)


def test_limits_are_rfc_5321s() -> None:
    assert (syntax.MAX_LOCAL_PART_BYTES, syntax.MAX_DOMAIN_BYTES, syntax.MAX_PATH_BYTES) == (
        64,
        255,
        256,
    )


def test_check_address_splits_and_refuses() -> None:
    assert syntax.check_address("user@example.test") == ("user", "example.test")
    assert syntax.check_address("") == ("", "")  # the null path
    local = "l" * (syntax.MAX_LOCAL_PART_BYTES + 1)
    for bad in ("a\r\nRCPT TO:<x@y.test>@z.test", "a b@c.test", f"{local}@example.test"):
        with pytest.raises(syntax.AddressError):
            syntax.check_address(bad)


def test_path_limit_counts_brackets_and_utf8_octets() -> None:
    domain = ("d" * 60 + ".") * 3 + "d" * 56 + ".test"
    assert len(domain) == 244
    # 9 + 1 + 244 = 254 octets, 256 with the brackets: the limit.
    syntax.check_address("a" * 9 + "@" + domain)
    syntax.check_address("\u00e9" * 4 + "a@" + domain)  # 9 octets in 5 characters
    for local in ("a" * 10, "\u00e9" * 5):  # 10 octets: one too many
        with pytest.raises(syntax.AddressError):
            syntax.check_address(local + "@" + domain)


def test_encode_address_needs_smtputf8_for_non_ascii() -> None:
    assert syntax.encode_address("ü@exämple.test", utf8=True) == "ü@exämple.test".encode()
    assert syntax.encode_address(None, utf8=False) == b""
    with pytest.raises(syntax.AddressEncodingError):
        syntax.encode_address("ü@exämple.test", utf8=False)


def test_check_ehlo_name() -> None:
    assert syntax.check_ehlo_name("relay.example.test") == b"relay.example.test"
    for bad in ("", "two words", "tab\there", "ünicode.test", "crlf\r\n"):
        with pytest.raises(ValueError):
            syntax.check_ehlo_name(bad)


def test_every_public_name_is_exported() -> None:
    assert sorted(syntax.__all__) == sorted(
        name for name in vars(syntax) if not name.startswith("_") and name != "annotations"
    )
