"""LmtpRelayClient: LHLO, one reply per recipient, replies received before a fault kept.

Delivery is checked in real Maildirs of a private Dovecot (TCP and unix socket); the
per-recipient and hostile cases use aiosmtpd in LMTP mode and the fault server.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import gevent
import pytest
from support import envelopes
from support.faultserver import CLOSE, STALL, Hangup
from support.util import GUARD_SECONDS

from slimta.envelope import Envelope
from slimta.relay.smtp import SmtpPermanentRelayError, SmtpRelayError, SmtpTransientRelayError
from slimta.relay.smtp.lmtpclient import LmtpRelayClient
from slimta.relay.smtp.static import StaticLmtpRelay
from slimta.smtp.client import LmtpClient
from slimta.smtp.reply import Reply

pytestmark = pytest.mark.usefixtures("no_relay_leaks")

LMTP_EXTENSIONS = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"]


make_envelope = partial(
    envelopes.make_envelope,
    headers=b"Subject: lmtp test\r\nMessage-Id: <1@example.test>\r\n",
    body=b"Hello LMTP.\r\n",
)


def run(host: str, port: int, envelope: Envelope, **kwargs: Any) -> Any:
    kwargs.setdefault("ehlo_as", "relay.test")
    kwargs.setdefault("command_timeout", 5.0)
    relay = StaticLmtpRelay(host, port, pool_size=1, **kwargs)
    try:
        with gevent.Timeout(GUARD_SECONDS, AssertionError("attempt hung")):
            try:
                return relay.attempt(envelope, 0)
            finally:
                clients = list(relay.pool)
                gevent.joinall(clients)
                assert all(client.dead for client in clients)
    finally:
        relay.kill()


def test_class_wiring() -> None:
    assert LmtpRelayClient._client_class is LmtpClient
    relay = StaticLmtpRelay()
    assert (relay.host, relay.port) == ("localhost", 24)
    assert relay._client_class is LmtpRelayClient


# -- dovecot ----------------------------------------------------------------------------


def _check_delivered(dovecot: Any, user: str, result: Any, rcpt: str) -> None:
    reply = result[rcpt]
    assert isinstance(reply, Reply) and reply.code == "250", reply
    (message,) = dovecot.messages(user)
    assert b"Subject: lmtp test" in message
    assert message.replace(b"\r\n", b"\n").endswith(b"\nHello LMTP.\n")


def test_dovecot_tcp_known_and_unknown_user(dovecot_lmtp: Any) -> None:
    env = make_envelope(rcpts=("alice@example.test", "nobody@x.test"))
    result = run(*dovecot_lmtp.address, env)
    _check_delivered(dovecot_lmtp, "alice", result, "alice@example.test")
    unknown = result["nobody@x.test"]
    assert isinstance(unknown, SmtpPermanentRelayError)
    assert unknown.reply.code == "550" and unknown.reply.enhanced_status_code == "5.1.1"
    assert unknown.reply.command == b"RCPT"


def test_dovecot_unix_socket(dovecot_lmtp: Any) -> None:
    result = run(dovecot_lmtp.socket_path, 0, make_envelope(rcpts=("bob@example.test",)))
    _check_delivered(dovecot_lmtp, "bob", result, "bob@example.test")
    assert dovecot_lmtp.messages("alice") == []


def test_dovecot_per_recipient_after_data(dovecot_lmtp: Any) -> None:
    # "broken" passes RCPT but its delivery fails after the data (451 4.2.0).
    env = make_envelope(rcpts=("alice@example.test", "broken@x.test"))
    result = run(*dovecot_lmtp.address, env)
    _check_delivered(dovecot_lmtp, "alice", result, "alice@example.test")
    broken = result["broken@x.test"]
    assert isinstance(broken, SmtpTransientRelayError)
    assert broken.reply.code.startswith("4") and broken.reply.command == b"[SEND_DATA]"


def test_dovecot_all_unknown_raises(dovecot_lmtp: Any) -> None:
    with pytest.raises(SmtpPermanentRelayError) as info:
        run(*dovecot_lmtp.address, make_envelope(rcpts=("x@x.test", "y@x.test")))
    assert info.value.reply.code == "550" and info.value.reply.command == b"RCPT"


def test_dovecot_reuses_connection(dovecot_lmtp: Any) -> None:
    connections = []

    def creator(address: Any) -> Any:
        connections.append(address)
        return gevent.socket.create_connection(address)

    relay = StaticLmtpRelay(*dovecot_lmtp.address, pool_size=1, ehlo_as="relay.test",
                            idle_timeout=30.0, socket_creator=creator)
    try:
        with gevent.Timeout(GUARD_SECONDS):
            for _ in range(3):
                result = relay.attempt(make_envelope(rcpts=("alice@example.test",)), 0)
                assert result["alice@example.test"].code == "250"
    finally:
        relay.kill()
    assert len(connections) == 1
    assert len(dovecot_lmtp.messages("alice")) == 3


# -- aiosmtpd in LMTP mode -----------------------------------------------------------------


def test_aiosmtpd_lmtp_replies_per_recipient(aiosmtpd_server: Any) -> None:
    server = aiosmtpd_server(
        lmtp=True,
        reject_rcpt={"gone@x.test"},
        lmtp_data_replies={"full@x.test": "552 5.2.2 Mailbox full",
                           "busy@x.test": "450 4.2.0 Mailbox busy"},
    )
    env = make_envelope(rcpts=("ok@x.test", "gone@x.test", "full@x.test", "busy@x.test"))
    result = run(*server.address, env)
    assert result["ok@x.test"].code == "250"
    assert isinstance(result["gone@x.test"], SmtpPermanentRelayError)
    assert result["gone@x.test"].reply.command == b"RCPT"
    assert isinstance(result["full@x.test"], SmtpPermanentRelayError)
    assert str(result["full@x.test"].reply) == "552 5.2.2 Mailbox full"
    assert isinstance(result["busy@x.test"], SmtpTransientRelayError)
    (recorded,) = server.envelopes
    assert recorded.rcpt_tos == ["ok@x.test", "full@x.test", "busy@x.test"]
    assert recorded.helo == "relay.test"


# -- the fault server in LMTP mode ----------------------------------------------------------


def test_connection_lost_keeps_replies_already_received(fault_server: Any) -> None:
    # The first recipient's 250 arrived before the drop; only the rest are retried.
    server = fault_server({"DATA_END": Hangup("250 2.0.0 <a@x.test> Delivered")}, lmtp=True,
                          extensions=LMTP_EXTENSIONS)
    result = run(*server.address, make_envelope(rcpts=("a@x.test", "b@x.test", "c@x.test")))
    assert str(result["a@x.test"]) == "250 2.0.0 <a@x.test> Delivered"
    for rcpt in ("b@x.test", "c@x.test"):
        error = result[rcpt]
        assert isinstance(error, SmtpTransientRelayError)
        assert (error.reply.code, error.reply.enhanced_status_code) == ("421", "4.3.0")
        assert error.reply.command == b"[SEND_DATA]"
    server.wait_closed()
    assert server.sessions[0].verbs() == [b"LHLO", b"MAIL", b"RCPT", b"RCPT", b"RCPT", b"DATA"]


def test_timeout_keeps_replies_already_received(fault_server: Any) -> None:
    server = fault_server({"DATA_END": b"250 2.0.0 first ok\r\n"}, lmtp=True,
                          extensions=LMTP_EXTENSIONS)
    result = run(*server.address, make_envelope(rcpts=("a@x.test", "b@x.test")), data_timeout=0.3)
    assert str(result["a@x.test"]) == "250 2.0.0 first ok"
    error = result["b@x.test"]
    assert isinstance(error, SmtpTransientRelayError)
    assert str(error.reply) == "421 4.4.2 Connection timed out"


def test_nothing_received_raises(fault_server: Any) -> None:
    server = fault_server({"DATA_END": CLOSE}, lmtp=True, extensions=LMTP_EXTENSIONS)
    with pytest.raises(SmtpTransientRelayError) as info:
        run(*server.address, make_envelope(rcpts=("a@x.test", "b@x.test")))
    assert info.value.reply.code == "421"


def test_data_stall_times_out(fault_server: Any) -> None:
    server = fault_server({"DATA_END": STALL}, lmtp=True, extensions=LMTP_EXTENSIONS)
    with pytest.raises(SmtpTransientRelayError) as info:
        run(*server.address, make_envelope(rcpts=("a@x.test",)), command_timeout=60.0,
            data_timeout=0.3)
    assert str(info.value.reply) == "421 4.4.2 Connection timed out"
    server.wait_closed()


def test_lhlo_refused_has_no_helo_fallback(fault_server: Any) -> None:
    server = fault_server({"LHLO": "500 5.5.1 Unknown"}, lmtp=True)
    with pytest.raises(SmtpRelayError) as info:
        run(*server.address, make_envelope(rcpts=("a@x.test",)))
    assert info.value.reply.code == "500" and info.value.reply.command == b"LHLO"
    server.wait_closed()
    assert b"HELO" not in server.sessions[0].verbs()


def test_rset_after_a_recipient_failed(fault_server: Any) -> None:
    server = fault_server({"DATA_END": "250 2.0.0 ok\r\n452 4.2.2 Over quota"}, lmtp=True,
                          extensions=LMTP_EXTENSIONS)
    result = run(*server.address, make_envelope(rcpts=("a@x.test", "b@x.test")))
    assert result["a@x.test"].code == "250"
    assert isinstance(result["b@x.test"], SmtpTransientRelayError)
    server.wait_closed()
    assert server.sessions[0].verbs()[-2:] == [b"RSET", b"QUIT"]
