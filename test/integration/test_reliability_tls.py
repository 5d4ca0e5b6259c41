"""TLS with ``tls_required``: verification by default, and nothing leaks in clear.

* Without a ``context`` the relay uses :func:`ssl.create_default_context`: the
  certificate chain *and* the host name are verified. The test server's certificate
  is self-signed, so the default context must refuse it (421 4.7.0, transient), and
  only a context that trusts it may deliver.
* A server that does not offer STARTTLS, or refuses it, gets nothing but ``EHLO``
  (and ``STARTTLS`` when offered) and ``QUIT``: no envelope, no AUTH, no data.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import gevent.socket
import pytest
from support.faultserver import FaultServer
from support.reliability import (
    assert_no_leaks,
    assert_relay_error,
    make_envelope,
    resources,
    timed_attempt,
)

from slimta.relay.smtp.static import StaticSmtpRelay
from slimta.smtp.reply import Reply

pytestmark = pytest.mark.usefixtures("no_relay_leaks")


def _relay(host: str, port: int, **options: Any) -> StaticSmtpRelay:
    options.setdefault("ehlo_as", "relay.test")
    return StaticSmtpRelay(host, port, pool_size=1, connect_timeout=5.0, command_timeout=5.0,
                           tls_required=True, **options)


def _tls_server(fast_fault_server: Callable[..., FaultServer], tls_cert: Any,
                **options: Any) -> FaultServer:
    return fast_fault_server(extensions=["PIPELINING", "STARTTLS", "AUTH PLAIN"],
                             tls_context=tls_cert.gevent_server_context(), **options)


def test_default_context_verifies_chain_and_host_name() -> None:
    relay = _relay("localhost", 25)
    context = relay._client_kwargs["context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_self_signed_certificate_fails_with_the_default_context(
    fast_fault_server: Callable[..., FaultServer], tls_cert: Any
) -> None:
    server = _tls_server(fast_fault_server, tls_cert)
    before = resources()
    relay = _relay("localhost", server.address[1],
                   socket_creator=lambda _a: gevent.socket.create_connection(server.address),
                   credentials=("user", "secret"))
    try:
        outcome = timed_attempt(relay, make_envelope())
    finally:
        relay.kill()
    error = assert_relay_error(outcome.error, False, "421", "4.7.0", b"STARTTLS")
    assert "certificate verify failed" in str(error.reply), error.reply
    server.wait_closed()
    session = server.sessions[0]
    # The handshake failed: nothing after STARTTLS, in clear or otherwise.
    assert session.commands == [b"EHLO relay.test", b"STARTTLS"]
    assert session.messages == [] and not session.tls
    assert_no_leaks(before)


def test_trusting_context_delivers_over_tls(
    fast_fault_server: Callable[..., FaultServer], tls_cert: Any
) -> None:
    server = _tls_server(fast_fault_server, tls_cert)
    relay = _relay("localhost", server.address[1], context=tls_cert.client_context(),
                   socket_creator=lambda _a: gevent.socket.create_connection(server.address))
    try:
        outcome = timed_attempt(relay, make_envelope())
    finally:
        relay.kill()
    assert outcome.error is None, outcome.error
    assert isinstance(outcome.result["rcpt@example.test"], Reply)
    server.wait_closed()
    session = server.sessions[0]
    assert session.tls
    assert session.verbs()[:3] == [b"EHLO", b"STARTTLS", b"EHLO"]


def test_host_name_mismatch_fails_even_with_a_trusted_certificate(
    fast_fault_server: Callable[..., FaultServer], tls_cert: Any
) -> None:
    # The certificate is trusted, but it does not name mail.example.org.
    server = _tls_server(fast_fault_server, tls_cert)
    relay = _relay("mail.example.org", 25, context=tls_cert.client_context(),
                   socket_creator=lambda _a: gevent.socket.create_connection(server.address))
    try:
        outcome = timed_attempt(relay, make_envelope())
    finally:
        relay.kill()
    error = assert_relay_error(outcome.error, False, "421", "4.7.0", b"STARTTLS")
    assert "mail.example.org" in str(error.reply) or "mismatch" in str(error.reply).lower()
    server.wait_closed()
    assert server.sessions[0].commands == [b"EHLO relay.test", b"STARTTLS"]


@pytest.mark.parametrize("credentials", [None, ("user", "secret")])
def test_server_without_starttls_gets_only_ehlo_and_quit(
    fast_fault_server: Callable[..., FaultServer], credentials: Any
) -> None:
    server = fast_fault_server(extensions=["PIPELINING", "AUTH PLAIN", "SIZE 1000000"])
    before = resources()
    relay = _relay(*server.address, credentials=credentials, allow_insecure_auth=True)
    try:
        outcome = timed_attempt(relay, make_envelope())
    finally:
        relay.kill()
    assert_relay_error(outcome.error, False, "421", "4.7.0", b"STARTTLS")
    server.wait_closed()
    # Exactly these bytes, nothing else: no envelope, no AUTH secret, no data.
    assert server.sessions[0].commands == [b"EHLO relay.test", b"QUIT"]
    assert server.sessions[0].raw_data == []
    assert_no_leaks(before)


@pytest.mark.parametrize("refusal", ["454 4.7.0 TLS not available", "502 5.5.1 No"])
def test_refused_starttls_gets_only_ehlo_starttls_and_quit(
    fast_fault_server: Callable[..., FaultServer], refusal: str
) -> None:
    server = fast_fault_server({"STARTTLS": refusal},
                               extensions=["PIPELINING", "STARTTLS", "AUTH PLAIN"])
    relay = _relay(*server.address, credentials=("user", "secret"), allow_insecure_auth=True)
    try:
        outcome = timed_attempt(relay, make_envelope())
    finally:
        relay.kill()
    assert_relay_error(outcome.error, False, "421", "4.7.0", b"STARTTLS")
    server.wait_closed()
    assert server.sessions[0].commands == [b"EHLO relay.test", b"STARTTLS", b"QUIT"]


def test_plain_server_behind_implicit_tls_port(
    fast_fault_server: Callable[..., FaultServer],
) -> None:
    # tls_immediately against a server that speaks plain SMTP: the greeting is not
    # a TLS record; transient, and the server sees no command at all.
    server = fast_fault_server()
    relay = _relay(*server.address, tls_immediately=True)
    try:
        outcome = timed_attempt(relay, make_envelope())
    finally:
        relay.kill()
    assert_relay_error(outcome.error, False, "421")
    server.wait_closed()
    assert all(not line.startswith((b"MAIL", b"RCPT")) for line in server.sessions[0].commands)




def test_opportunistic_fallback_never_sends_credentials_in_clear(
    fast_fault_server: Callable[..., FaultServer], tls_cert: Any
) -> None:
    # Without tls_required, a failed handshake is retried once in clear; with
    # credentials set (and no allow_insecure_auth) that retry must stop at AUTH.
    server = _tls_server(fast_fault_server, tls_cert)
    before = resources()
    relay = StaticSmtpRelay("localhost", server.address[1], pool_size=1, connect_timeout=5.0,
                            command_timeout=5.0, ehlo_as="relay.test",
                            credentials=("user", "secret"),
                            socket_creator=lambda _a: gevent.socket.create_connection(
                                server.address))
    try:
        outcome = timed_attempt(relay, make_envelope())
    finally:
        relay.kill()
    assert_relay_error(outcome.error, False, "454", "4.7.0", b"AUTH")
    server.wait_closed()
    first, second = server.sessions
    assert first.commands == [b"EHLO relay.test", b"STARTTLS"]
    assert second.commands == [b"EHLO relay.test", b"QUIT"]
    assert not any(b"secret" in line or b"AUTH" in line for line in second.commands)
    assert_no_leaks(before)
