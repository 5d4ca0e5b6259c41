"""Client-side SASL: mechanism choice, the cleartext rule, and the exact wire."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator

import pytest
from support.smtp_peer import Peer, connected

from slimta.smtp.auth import (
    CramMd5,
    InvalidMechanismError,
    Login,
    Plain,
    ServerAuthError,
    XOAuth2,
    choose_mechanism,
)
from slimta.smtp.client import Client

EHLO = b"250-mx.example\r\n250 AUTH %s\r\n"


@pytest.fixture
def pair() -> Iterator[tuple[Client, Peer]]:
    with connected(Client) as (client, peer):
        yield client, peer


def advertise(client: Client, peer: Peer, mechanisms: bytes) -> None:
    peer.send(EHLO % mechanisms)
    client.ehlo("client.example")
    peer.expect(b"EHLO client.example\r\n")


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# -- choice ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("advertised", "encrypted", "expected"),
    [
        ("PLAIN LOGIN CRAM-MD5", True, Plain),
        ("LOGIN PLAIN", True, Login),  # the server's order
        ("login plain", True, Login),  # case-insensitive
        ("SCRAM-SHA-256 GSSAPI LOGIN", True, Login),  # unknown names ignored
        ("XOAUTH2 PLAIN", True, Plain),  # XOAUTH2 only when named
        ("PLAIN LOGIN CRAM-MD5", False, CramMd5),  # in clear text, only CRAM-MD5
        ("PLAIN LOGIN", False, None),
    ],
)
def test_automatic_choice(advertised: str, encrypted: bool, expected: type | None) -> None:
    assert choose_mechanism(advertised, None, encrypted) is expected


def test_allow_insecure() -> None:
    assert choose_mechanism("PLAIN LOGIN", None, False, allow_insecure=True) is Plain
    assert choose_mechanism("XOAUTH2", "xoauth2", False, allow_insecure=True) is XOAuth2


@pytest.mark.parametrize("mechanism", ["LOGIN", b"login", "Login"])
def test_explicit_choice(mechanism: str | bytes) -> None:
    assert choose_mechanism("PLAIN LOGIN", mechanism, True) is Login


@pytest.mark.parametrize(
    ("advertised", "mechanism"),
    [("PLAIN", "LOGIN"), ("SCRAM-SHA-1 PLAIN", "SCRAM-SHA-1"), ("GSSAPI", None), ("", None)],
)
def test_invalid_mechanism(advertised: str, mechanism: str | None) -> None:
    with pytest.raises(InvalidMechanismError) as info:
        choose_mechanism(advertised, mechanism, True)
    reply = info.value.reply
    assert (reply.code, reply.enhanced_status_code, reply.command) == ("504", "5.5.4", b"AUTH")


def test_explicit_cleartext_without_tls() -> None:
    assert choose_mechanism("PLAIN", "PLAIN", False) is None


# -- mechanisms, no I/O ---------------------------------------------------------


def test_mechanism_responses() -> None:
    assert Plain("u", "p", "z").initial_response() == b"z\0u\0p"
    login = Login("u", "p")
    assert login.initial_response() is None
    assert (login.respond(b"Username:"), login.respond(b"Password:")) == (b"u", b"p")
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    digest = hmac.new(b"tanstaaftanstaaf", challenge, hashlib.md5).hexdigest()
    # RFC 2195's worked example.
    assert digest == "b913a602c7eda7a495b4e6e7334d3890"
    assert CramMd5("tim", "tanstaaftanstaaf").respond(challenge) == b"tim " + digest.encode()
    assert XOAuth2("u@x", "tok").initial_response() == b"user=u@x\x01auth=Bearer tok\x01\x01"


# -- the wire -------------------------------------------------------------------


def test_plain(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    advertise(client, peer, b"PLAIN LOGIN")
    peer.send(b"235 2.7.0 Authentication successful\r\n")
    reply = client.auth("user", "secret", "admin", allow_insecure=True)
    peer.expect(b"AUTH PLAIN " + b64(b"admin\0user\0secret") + b"\r\n")
    assert (reply.code, reply.command) == ("235", b"AUTH")
    assert client.last_error is None


def test_login(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    advertise(client, peer, b"LOGIN")
    peer.send(b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 ok\r\n")
    assert client.auth("user", "secret", allow_insecure=True).code == "235"
    peer.expect(b"AUTH LOGIN\r\n" + b64(b"user") + b"\r\n" + b64(b"secret") + b"\r\n")


def test_cram_md5_over_clear_connection(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    advertise(client, peer, b"PLAIN CRAM-MD5")
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    peer.send(b"334 " + b64(challenge) + b"\r\n235 2.7.0 ok\r\n")
    assert client.auth("tim", "tanstaaftanstaaf").code == "235"
    answer = b"tim b913a602c7eda7a495b4e6e7334d3890"
    peer.expect(b"AUTH CRAM-MD5\r\n" + b64(answer) + b"\r\n")


def test_xoauth2_error_challenge(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    advertise(client, peer, b"XOAUTH2 PLAIN")
    error = b64(b'{"status":"401","schemes":"bearer"}')
    peer.send(b"334 " + error + b"\r\n535 5.7.8 bad token\r\n")
    reply = client.auth("u@example.com", "tok", mechanism="XOAUTH2", allow_insecure=True)
    token = b64(b"user=u@example.com\x01auth=Bearer tok\x01\x01")
    peer.expect(b"AUTH XOAUTH2 " + token + b"\r\n\r\n")
    assert (reply.code, reply.enhanced_status_code) == ("535", "5.7.8")
    assert client.last_error is reply


def test_rejected_credentials(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    advertise(client, peer, b"PLAIN")
    peer.send(b"535 5.7.8 Authentication credentials invalid\r\n")
    reply = client.auth("user", "wrong", allow_insecure=True)
    assert reply.code == "535" and client.last_error is reply


def test_cleartext_rule_writes_nothing(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    advertise(client, peer, b"PLAIN LOGIN XOAUTH2")
    for mechanism in (None, "PLAIN", "XOAUTH2"):
        reply = client.auth("user", "secret", mechanism=mechanism)
        assert (reply.code, reply.enhanced_status_code) == ("454", "4.7.0")
        assert reply.raw_message == "Refusing to authenticate over an unencrypted connection"
    assert peer.nothing_written()


def test_invalid_mechanism_writes_nothing(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    advertise(client, peer, b"SCRAM-SHA-256 PLAIN")
    with pytest.raises(InvalidMechanismError):
        client.auth("user", "secret", mechanism="SCRAM-SHA-256", allow_insecure=True)
    assert peer.nothing_written()


def test_bad_challenge(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    advertise(client, peer, b"LOGIN")
    peer.send(b"334 not*base64!\r\n")
    with pytest.raises(ServerAuthError) as info:
        client.auth("user", "secret", allow_insecure=True)
    assert info.value.reply.code == "334"
    peer.expect(b"AUTH LOGIN\r\n")


def test_too_many_challenges(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    advertise(client, peer, b"LOGIN")
    peer.send(b"334 VXNlcm5hbWU6\r\n" * 3)
    with pytest.raises(ServerAuthError):
        client.auth("user", "secret", allow_insecure=True)
    peer.expect(b"AUTH LOGIN\r\n" + b64(b"user") + b"\r\n" + b64(b"secret") + b"\r\n")


def test_plain_does_not_answer_challenges(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    advertise(client, peer, b"PLAIN")
    peer.send(b"334 \r\n")
    with pytest.raises(ServerAuthError):
        client.auth("user", "secret", allow_insecure=True)
