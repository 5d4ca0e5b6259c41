"""SmtpRelayClient: the session, its failure→reply map, and real servers.

Hostile and edge cases run against the scriptable fault server (``support.faultserver``);
delivery is checked against postfix smtp-sink and aiosmtpd (TLS, AUTH, SMTPUTF8).
Every test asserts what the server received and the exact result; every attempt runs
under a guard timeout so that a hang fails the test instead of blocking the run.
"""

from __future__ import annotations

import email.encoders
import socket
import ssl
from typing import Any

import gevent
import pytest
from gevent.event import Event
from support.envelopes import make_envelope
from support.faultserver import (
    CLOSE,
    GARBAGE,
    OVERSIZED_LINE,
    OVERSIZED_REPLY,
    RESET,
    STALL,
    FaultServer,
    Hangup,
    Split,
)
from support.util import GUARD_SECONDS

from slimta.envelope import Envelope
from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.relay.smtp import (
    SmtpPermanentRelayError,
    SmtpRelayError,
    SmtpTransientRelayError,
)
from slimta.relay.smtp._failures import Abort, reply_for_exception
from slimta.relay.smtp.client import SmtpRelayClient
from slimta.relay.smtp.static import StaticSmtpRelay
from slimta.smtp import BadReply, ConnectionLost
from slimta.smtp.reply import Reply

pytestmark = pytest.mark.usefixtures("no_relay_leaks")


def run(address: Any, envelope: Envelope, **kwargs: Any) -> Any:
    """One attempt through a one-connection relay; waits until the client is gone."""
    kwargs.setdefault("ehlo_as", "relay.test")
    kwargs.setdefault("connect_timeout", 5.0)
    kwargs.setdefault("command_timeout", 5.0)
    relay = StaticSmtpRelay(address[0], address[1], pool_size=1, **kwargs)
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


def fails(address: Any, envelope: Envelope, **kwargs: Any) -> SmtpRelayError:
    with pytest.raises(SmtpRelayError) as info:
        run(address, envelope, **kwargs)
    error = info.value
    # Every relay error carries a code and an enhanced status code of the same class.
    assert error.reply.code is not None
    assert error.reply.enhanced_status_code is not None
    assert error.reply.enhanced_status_code[0] == error.reply.code[0]
    return error


def expect(error: SmtpRelayError, cls: type, code: str, esc: str, command: bytes) -> None:
    assert type(error) is cls, error
    assert error.reply.code == code, error
    assert error.reply.enhanced_status_code == esc, error
    assert error.reply.command == command, error


# -- the failure → reply map ----------------------------------------------------------


class TestReplyForException:
    def test_timeouts(self) -> None:
        for exc in (gevent.Timeout(1), TimeoutError("timed out"), TimeoutError()):
            reply = reply_for_exception(exc, b"MAIL")
            assert (reply.code, reply.message) == ("421", "4.4.2 Connection timed out")
            assert reply.command == b"MAIL"

    def test_socket_error_is_connection_failed(self) -> None:
        reply = reply_for_exception(ConnectionRefusedError(111, "refused"), b"[CONNECT]")
        assert str(reply) == "451 4.3.0 Connection failed"
        assert reply.command == b"[CONNECT]"

    def test_connection_lost_uses_server_421(self) -> None:
        last = Reply("421", "4.3.2 Shutting down", b"MAIL")
        reply = reply_for_exception(ConnectionLost(), b"RCPT", last)
        assert str(reply) == "421 4.3.2 Shutting down"
        assert reply.command == b"RCPT"
        assert last.command == b"MAIL"  # not mutated

    def test_connection_lost_without_421(self) -> None:
        last = Reply("550", "5.1.1 No", b"RCPT")
        reply = reply_for_exception(ConnectionLost(), b"DATA", last)
        assert str(reply) == "421 4.3.0 Connection was closed prematurely"

    def test_bad_reply_text_is_one_safe_line(self) -> None:
        reply = reply_for_exception(BadReply(b"x" * 1000 + b"\r\nQUIT\r\n"), b"EHLO")
        assert reply.code == "421" and reply.enhanced_status_code == "4.3.0"
        assert reply.message is not None
        assert "\r" not in reply.message and "\n" not in reply.message
        assert len(reply.message) < 300

    def test_tls_failures(self) -> None:
        for exc, command in (
            (ssl.SSLError(1, "handshake failure"), b"STARTTLS"),
            (BadReply(b"250 injected"), b"STARTTLS"),
            (ssl.SSLCertVerificationError("bad cert"), b"[CONNECT]"),
        ):
            reply = reply_for_exception(exc, command)
            assert reply.code == "421" and reply.enhanced_status_code == "4.7.0", exc
            assert reply.raw_message is not None
            assert reply.raw_message.startswith("TLS negotiation failed"), exc

    def test_anything_else(self) -> None:
        reply = reply_for_exception(RuntimeError("boom"), b"MAIL")
        assert str(reply) == "451 4.3.0 boom"
        assert str(reply_for_exception(KeyError(), None)) == "451 4.3.0 KeyError"

    def test_prepared_reply_passes_through(self) -> None:
        prepared = Reply("501", "5.1.7 bad", b"MAIL")
        assert reply_for_exception(Abort(prepared), b"RCPT") is prepared


# -- constructor ----------------------------------------------------------------------


def test_constructor_keeps_arguments() -> None:
    client = SmtpRelayClient(
        ("mx.test", 25), None, None, "me.test", None, "PLAIN", True, True, 1.0, 2.0, 3.0, 4.0,
        ("u", "p"), email.encoders.encode_base64, True,
    )
    assert client.address == ("mx.test", 25)
    assert client.ehlo_as == "me.test"
    assert client.auth_mechanism == "PLAIN"
    assert client.tls_immediately and client.tls_required
    assert (client.connect_timeout, client.command_timeout) == (1.0, 2.0)
    assert (client.data_timeout, client.idle_timeout) == (3.0, 4.0)
    assert client.credentials == ("u", "p")
    assert client.allow_insecure_auth is True
    assert client.socket is None and client.client is None and client.current_command is None


def test_no_work_means_no_connection() -> None:
    calls = []
    queue: Any = __import__("slimta.util.deque", fromlist=["BlockingDeque"]).BlockingDeque()
    client = SmtpRelayClient(("x.test", 25), queue, calls.append, idle_timeout=0.01)
    client.start()
    client.join(GUARD_SECONDS)
    assert client.dead and calls == []


# -- the session against the fault server ---------------------------------------------


def test_delivers_and_reports_per_recipient(fault_server: Any) -> None:
    server: FaultServer = fault_server()
    env = make_envelope(rcpts=("a@example.test", "b@example.test"), body=b".dot\r\nline\r\n")
    result = run(server.address, env)
    assert set(result) == {"a@example.test", "b@example.test"}
    for reply in result.values():
        assert isinstance(reply, Reply) and str(reply) == "250 2.0.0 Ok: queued"
    server.wait_closed()
    session = server.sessions[0]
    assert session.commands == [
        b"EHLO relay.test",
        b"MAIL FROM:<sender@example.test> SIZE=29",
        b"RCPT TO:<a@example.test>",
        b"RCPT TO:<b@example.test>",
        b"DATA",
        b"QUIT",
    ]
    assert session.messages == [b"Subject: test\r\n\r\n.dot\r\nline\r\n"]
    assert session.raw_data == [b"Subject: test\r\n\r\n..dot\r\nline\r\n.\r\n"]


def test_without_pipelining_waits_for_each_reply(fault_server: Any) -> None:
    server = fault_server({"MAIL": "550 5.7.1 Sender refused"}, extensions=["8BITMIME"])
    error = fails(server.address, make_envelope())
    expect(error, SmtpPermanentRelayError, "550", "5.7.1", b"MAIL")
    assert str(error) == "Permanent failure on MAIL: 550 5.7.1 Sender refused"
    server.wait_closed()
    # No RCPT after the refused MAIL; RSET closes the transaction.
    assert server.sessions[0].verbs() == [b"EHLO", b"MAIL", b"RSET", b"QUIT"]


def test_pipelined_mail_failure_after_354_sends_lone_dot(fault_server: Any) -> None:
    server = fault_server({"MAIL": "451 4.3.0 Try later"})
    error = fails(server.address, make_envelope())
    expect(error, SmtpTransientRelayError, "451", "4.3.0", b"MAIL")
    server.wait_closed()
    session = server.sessions[0]
    assert session.verbs() == [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"RSET", b"QUIT"]
    assert session.raw_data == [b".\r\n"]  # stayed in sync, sent no message


@pytest.mark.parametrize("code", ["500", "502"])
def test_ehlo_falls_back_to_helo(fault_server: Any, code: str) -> None:
    server = fault_server({"EHLO": f"{code} 5.5.1 What?"})
    result = run(server.address, make_envelope())
    assert str(result["rcpt@example.test"]) == "250 2.0.0 Ok: queued"
    server.wait_closed()
    assert server.sessions[0].verbs()[:3] == [b"EHLO", b"HELO", b"MAIL"]
    # No extensions after HELO: no SIZE parameter.
    assert server.sessions[0].commands[2] == b"MAIL FROM:<sender@example.test>"


def test_ehlo_other_error_fails(fault_server: Any) -> None:
    server = fault_server({"EHLO": "554 5.7.1 Go away"})
    expect(fails(server.address, make_envelope()), SmtpPermanentRelayError, "554", "5.7.1",
           b"EHLO")
    server.wait_closed()
    assert b"HELO" not in server.sessions[0].verbs()


@pytest.mark.parametrize(
    "banner, cls, code",
    [("554 No service", SmtpPermanentRelayError, "554"),
     ("421 Too busy", SmtpTransientRelayError, "421")],
)
def test_error_banner(fault_server: Any, banner: str, cls: type, code: str) -> None:
    server = fault_server({"BANNER": banner})
    error = fails(server.address, make_envelope())
    assert type(error) is cls and error.reply.code == code
    assert error.reply.command == b"[BANNER]"
    assert error.reply.enhanced_status_code == code[0] + ".0.0"  # always an enhanced status code
    server.wait_closed()
    assert b"EHLO" not in server.sessions[0].verbs()


def test_connection_refused() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    address = sock.getsockname()
    sock.close()  # nothing listens there now
    error = fails(address, make_envelope())
    expect(error, SmtpTransientRelayError, "451", "4.3.0", b"[CONNECT]")
    assert str(error.reply) == "451 4.3.0 Connection failed"


def test_connect_timeout_and_one_positional_argument() -> None:
    never = Event()
    seen: list[tuple[Any, ...]] = []

    def creator(*args: Any, **kwargs: Any) -> socket.socket:
        seen.append((args, kwargs))
        never.wait()
        raise AssertionError("unreachable")

    error = fails(("mx.test", 25), make_envelope(), socket_creator=creator, connect_timeout=0.2)
    expect(error, SmtpTransientRelayError, "421", "4.4.2", b"[CONNECT]")
    assert seen == [((("mx.test", 25),), {})]


def test_socket_creator_is_used(fault_server: Any) -> None:
    server = fault_server()
    seen = []

    def creator(address: Any) -> socket.socket:
        seen.append(address)
        return gevent.socket.create_connection(server.address)

    run(("smarthost.test", 2525), make_envelope(), socket_creator=creator)
    assert seen == [("smarthost.test", 2525)]


def test_ehlo_as_callable_and_invalid(fault_server: Any) -> None:
    server = fault_server()
    run(server.address, make_envelope(), ehlo_as=lambda address: f"n{address[1]}.test")
    assert server.sessions[0].commands[0] == f"EHLO n{server.address[1]}.test".encode()
    error = fails(server.address, make_envelope(), ehlo_as="bad name\r\nMAIL FROM:<x>")
    expect(error, SmtpTransientRelayError, "451", "4.3.5", b"EHLO")
    server.wait_closed()
    assert server.sessions[1].verbs() == [b"QUIT"]


def test_default_ehlo_is_fqdn(fault_server: Any) -> None:
    server = fault_server()
    run(server.address, make_envelope(), ehlo_as=None)
    assert server.sessions[0].commands[0] == b"EHLO " + socket.getfqdn().encode()


def test_null_sender(fault_server: Any) -> None:
    server = fault_server(extensions=["PIPELINING"])
    run(server.address, make_envelope(sender=""))
    run(server.address, make_envelope(sender=None))
    assert [s.commands[1] for s in server.sessions] == [b"MAIL FROM:<>"] * 2


# -- recipients: per-recipient results, hostile and non-ASCII addresses -----------------


def test_some_recipients_rejected(fault_server: Any) -> None:
    server = fault_server({"RCPT": ["250 2.1.5 Ok", "550 5.1.1 No such user"]})
    result = run(server.address, make_envelope(rcpts=("good@x.test", "bad@x.test")))
    assert str(result["good@x.test"]) == "250 2.0.0 Ok: queued"
    bad = result["bad@x.test"]
    assert isinstance(bad, SmtpPermanentRelayError)
    assert str(bad) == "Permanent failure on RCPT: 550 5.1.1 No such user"


@pytest.mark.parametrize(
    "replies, cls",
    [(["550 5.1.1 No", "551 5.1.6 Moved"], SmtpPermanentRelayError),
     (["450 4.2.1 Later", "451 4.3.0 Later"], SmtpTransientRelayError)],
)
def test_all_recipients_rejected_alike_raises_first(
    fault_server: Any, replies: list[str], cls: type
) -> None:
    server = fault_server({"RCPT": replies})
    error = fails(server.address, make_envelope(rcpts=("a@x.test", "b@x.test")))
    assert type(error) is cls and str(error.reply) == replies[0]
    assert error.reply.command == b"RCPT"
    server.wait_closed()
    assert server.sessions[0].verbs() == [b"EHLO", b"MAIL", b"RCPT", b"RCPT", b"DATA", b"RSET",
                                          b"QUIT"]


def test_mixed_rejections_give_the_dict(fault_server: Any) -> None:
    server = fault_server({"RCPT": ["550 5.1.1 No such user", "450 4.2.1 Mailbox busy"]})
    result = run(server.address, make_envelope(rcpts=("a@x.test", "b@x.test")))
    assert isinstance(result["a@x.test"], SmtpPermanentRelayError)
    assert isinstance(result["b@x.test"], SmtpTransientRelayError)
    server.wait_closed()
    assert b"RSET" in server.sessions[0].verbs()


def test_hostile_sender_is_never_written(fault_server: Any) -> None:
    server = fault_server()
    error = fails(server.address, make_envelope(sender="a@x.test>\r\nRCPT TO:<evil@x.test"))
    expect(error, SmtpPermanentRelayError, "501", "5.1.7", b"MAIL")
    server.wait_closed()
    assert server.sessions[0].verbs() == [b"EHLO", b"QUIT"]


@pytest.mark.parametrize(
    "bad",
    ["evil@x.test>\r\nRCPT TO:<evil2@x.test", "a b@x.test", "nul\x00@x.test", "del\x7f@x.test",
     "x" * 65 + "@x.test", "a@" + "d" * 256],
)
def test_hostile_recipient_gets_its_own_error(fault_server: Any, bad: str) -> None:
    server = fault_server()
    result = run(server.address, make_envelope(rcpts=(bad, "good@x.test")))
    assert str(result["good@x.test"]) == "250 2.0.0 Ok: queued"
    error = result[bad]
    expect(error, SmtpPermanentRelayError, "501", "5.1.3", b"RCPT")
    server.wait_closed()
    rcpts = [c for c in server.sessions[0].commands if c.startswith(b"RCPT")]
    assert rcpts == [b"RCPT TO:<good@x.test>"]


def test_only_hostile_recipients_raise(fault_server: Any) -> None:
    server = fault_server()
    error = fails(server.address, make_envelope(rcpts=("a\r\n@x.test",)))
    expect(error, SmtpPermanentRelayError, "501", "5.1.3", b"RCPT")
    server.wait_closed()
    assert server.sessions[0].verbs() == [b"EHLO", b"QUIT"]


def test_non_ascii_addresses_without_smtputf8(fault_server: Any) -> None:
    server = fault_server()
    result = run(server.address, make_envelope(rcpts=("jörg@x.test", "ok@x.test")))
    expect(result["jörg@x.test"], SmtpPermanentRelayError, "553", "5.6.7", b"RCPT")
    assert isinstance(result["ok@x.test"], Reply)
    error = fails(server.address, make_envelope(sender="jörg@x.test"))
    expect(error, SmtpPermanentRelayError, "553", "5.6.7", b"MAIL")
    server.wait_closed()
    assert b"MAIL" not in server.sessions[1].verbs()


def test_non_ascii_addresses_with_smtputf8(fault_server: Any) -> None:
    server = fault_server(extensions=["PIPELINING", "8BITMIME", "SMTPUTF8"])
    run(server.address, make_envelope(sender="jörg@x.test", rcpts=("zoë@x.test",)))
    commands = server.sessions[0].commands
    assert commands[1] == "MAIL FROM:<jörg@x.test> SMTPUTF8".encode()
    assert commands[2] == "RCPT TO:<zoë@x.test>".encode()


# -- SIZE and 8-bit: refused or converted before MAIL FROM ------------------------------


def test_size_limit_fails_before_mail(fault_server: Any) -> None:
    server = fault_server(extensions=["PIPELINING", "SIZE 100"])
    error = fails(server.address, make_envelope(body=b"x" * 200 + b"\r\n"))
    expect(error, SmtpPermanentRelayError, "552", "5.3.4", b"MAIL")
    server.wait_closed()
    assert server.sessions[0].verbs() == [b"EHLO", b"QUIT"]


def test_eight_bit_with_8bitmime(fault_server: Any) -> None:
    server = fault_server()
    body = "Grüße\r\n".encode()
    run(server.address, make_envelope(body=body))
    assert server.sessions[0].commands[1].endswith(b" BODY=8BITMIME")
    assert server.sessions[0].messages[0].endswith(body)


def test_eight_bit_without_8bitmime_and_no_encoder(fault_server: Any) -> None:
    server = fault_server(extensions=["PIPELINING"])
    error = fails(server.address, make_envelope(body="Grüße\r\n".encode()))
    expect(error, SmtpPermanentRelayError, "554", "5.6.3", b"[data conversion]")
    assert str(error.reply) == "554 5.6.3 Conversion not allowed"
    server.wait_closed()
    assert b"MAIL" not in server.sessions[0].verbs()


def test_eight_bit_converted_with_binary_encoder(fault_server: Any) -> None:
    server = fault_server(extensions=["PIPELINING"])
    env = make_envelope(
        body="Grüße\r\n".encode(),
        headers=b"Content-Type: text/plain; charset=utf-8\r\nSubject: t\r\n",
    )
    run(server.address, env, binary_encoder=email.encoders.encode_base64)
    message = server.sessions[0].messages[0]
    assert message.isascii()
    assert b"Content-Transfer-Encoding: base64" in message
    assert b"R3LDvMOfZQ0K" in message  # base64 of the body


# -- timeouts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step, command",
    [("BANNER", b"[BANNER]"), ("EHLO", b"EHLO"), ("DATA", b"DATA")],
)
def test_command_timeout_at_each_stage(fault_server: Any, step: str, command: bytes) -> None:
    server = fault_server({step: STALL})
    error = fails(server.address, make_envelope(), command_timeout=0.3)
    expect(error, SmtpTransientRelayError, "421", "4.4.2", command)
    server.wait_closed()  # the client let go of its socket


def test_timeout_without_pipelining_names_the_command(fault_server: Any) -> None:
    server = fault_server({"RCPT": STALL}, extensions=[])
    error = fails(server.address, make_envelope(), command_timeout=0.3)
    expect(error, SmtpTransientRelayError, "421", "4.4.2", b"RCPT")
    server.wait_closed()


@pytest.mark.parametrize("extensions", [["PIPELINING"], []])
def test_data_timeout_bounds_the_final_reply(fault_server: Any, extensions: list[str]) -> None:
    # The final reply after the data is bounded by data_timeout, not command_timeout:
    # with a 60 s command timeout, only data_timeout can end this within the guard.
    server = fault_server({"DATA_END": STALL}, extensions=extensions)
    error = fails(server.address, make_envelope(), command_timeout=60.0, data_timeout=0.3)
    expect(error, SmtpTransientRelayError, "421", "4.4.2", b"[SEND_DATA]")
    server.wait_closed()


# -- connection faults ------------------------------------------------------------------


@pytest.mark.parametrize("step", ["BANNER", "EHLO", "MAIL", "DATA", "DATA_END"])
@pytest.mark.parametrize("fault", [CLOSE, RESET])
def test_connection_dropped(fault_server: Any, step: str, fault: Any) -> None:
    server = fault_server({step: fault})
    error = fails(server.address, make_envelope())
    assert type(error) is SmtpTransientRelayError
    assert error.reply.code in ("421", "451")
    assert error.reply.enhanced_status_code == "4.3.0"
    server.wait_closed()


def test_server_421_then_close_is_reported(fault_server: Any) -> None:
    server = fault_server({"RCPT": [Hangup("421 4.3.2 Shutting down")]}, extensions=[])
    error = fails(server.address, make_envelope(rcpts=("a@x.test", "b@x.test")))
    assert type(error) is SmtpTransientRelayError
    assert str(error.reply) == "421 4.3.2 Shutting down"


@pytest.mark.parametrize("step", ["BANNER", "EHLO", "MAIL", "DATA_END"])
@pytest.mark.parametrize("junk", [GARBAGE, OVERSIZED_LINE, OVERSIZED_REPLY])
def test_bad_replies(fault_server: Any, step: str, junk: bytes) -> None:
    server = fault_server({step: junk})
    error = fails(server.address, make_envelope())
    assert type(error) is SmtpTransientRelayError
    assert (error.reply.code, error.reply.enhanced_status_code) == ("421", "4.3.0")
    assert error.reply.raw_message is not None
    assert error.reply.raw_message.startswith("Bad SMTP reply")
    server.wait_closed()


def test_split_replies_are_reassembled(fault_server: Any) -> None:
    ehlo = "250-fault.test\r\n250-PIPELINING\r\n250 SIZE 1000"
    server = fault_server({"BANNER": Split("220 slow.test"), "EHLO": Split(ehlo),
                           "DATA_END": Split("250 2.0.0 Queued as X")})
    result = run(server.address, make_envelope())
    assert str(result["rcpt@example.test"]) == "250 2.0.0 Queued as X"
    assert server.sessions[0].commands[1].endswith(b"SIZE=31")


def test_data_rejections(fault_server: Any) -> None:
    server = fault_server({"DATA": "554 5.5.1 No thanks", "DATA_END": "452 4.3.1 Full"})
    expect(fails(server.address, make_envelope()), SmtpPermanentRelayError, "554", "5.5.1",
           b"DATA")
    server2 = fault_server({"DATA_END": "452 4.3.1 Full"})
    expect(fails(server2.address, make_envelope()), SmtpTransientRelayError, "452", "4.3.1",
           b"[SEND_DATA]")
    server2.wait_closed()
    assert server2.sessions[0].verbs()[-2:] == [b"RSET", b"QUIT"]


# -- TLS --------------------------------------------------------------------------------


def test_starttls_opportunistic(fault_server: Any, tls_cert: Any) -> None:
    server = fault_server(
        extensions=["PIPELINING", "STARTTLS"], tls_context=tls_cert.gevent_server_context()
    )
    run(server.address, make_envelope(), context=tls_cert.client_context())
    session = server.sessions[0]
    assert session.tls
    assert session.verbs()[:4] == [b"EHLO", b"STARTTLS", b"EHLO", b"MAIL"]
    assert session.messages


def test_starttls_with_plain_stdlib_context(fault_server: Any, tls_cert: Any) -> None:
    server = fault_server(
        extensions=["PIPELINING", "STARTTLS"], tls_context=tls_cert.gevent_server_context()
    )
    # The server runs in this hub: a blocking handshake would deadlock into the guard.
    run(server.address, make_envelope(), context=tls_cert.stdlib_client_context())
    assert server.sessions[0].tls


def test_starttls_plaintext_injection(fault_server: Any, tls_cert: Any) -> None:
    server = fault_server(
        {"STARTTLS": b"220 2.0.0 Go ahead\r\n250 2.0.0 injected\r\n"},
        extensions=["PIPELINING", "STARTTLS"],
        tls_context=tls_cert.gevent_server_context(),
    )
    error = fails(server.address, make_envelope(), context=tls_cert.client_context())
    expect(error, SmtpTransientRelayError, "421", "4.7.0", b"STARTTLS")
    server.wait_closed()
    assert server.sessions[0].verbs() == [b"EHLO", b"STARTTLS"]


def test_tls_required_not_offered(fault_server: Any) -> None:
    server = fault_server()
    error = fails(server.address, make_envelope(), tls_required=True)
    expect(error, SmtpTransientRelayError, "421", "4.7.0", b"STARTTLS")
    server.wait_closed()
    assert b"STARTTLS" not in server.sessions[0].verbs()
    assert b"MAIL" not in server.sessions[0].verbs()


def test_starttls_refused(fault_server: Any) -> None:
    script = {"STARTTLS": "554 5.7.0 Not now"}
    server = fault_server(script, extensions=["PIPELINING", "STARTTLS"])
    error = fails(server.address, make_envelope(), tls_required=True)
    expect(error, SmtpTransientRelayError, "421", "4.7.0", b"STARTTLS")  # transient, not 5xx
    # Without tls_required, carry on in clear (Compat).
    result = run(server.address, make_envelope())
    assert isinstance(result["rcpt@example.test"], Reply)
    assert server.sessions[1].verbs()[:3] == [b"EHLO", b"STARTTLS", b"MAIL"]


def test_starttls_handshake_failure(fault_server: Any, tls_cert: Any) -> None:
    server = fault_server(
        extensions=["PIPELINING", "STARTTLS"], tls_context=tls_cert.gevent_server_context()
    )
    # The default context does not trust the self-signed certificate.
    untrusting = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    untrusting.load_default_certs()
    error = fails(server.address, make_envelope(), context=untrusting, tls_required=True)
    expect(error, SmtpTransientRelayError, "421", "4.7.0", b"STARTTLS")
    server.wait_closed()
    assert b"MAIL" not in server.sessions[0].verbs()


def test_opportunistic_handshake_failure_retries_once_in_clear(
    fault_server: Any, tls_cert: Any
) -> None:
    server = fault_server(
        extensions=["PIPELINING", "STARTTLS"], tls_context=tls_cert.gevent_server_context()
    )
    untrusting = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    untrusting.load_default_certs()
    result = run(server.address, make_envelope(), context=untrusting)
    assert isinstance(result["rcpt@example.test"], Reply)
    server.wait_closed()
    first, second = server.sessions
    assert first.verbs() == [b"EHLO", b"STARTTLS"] and not first.tls
    assert second.verbs()[:2] == [b"EHLO", b"MAIL"] and not second.tls


def test_tls_immediately(fault_server: Any, tls_cert: Any) -> None:
    server = fault_server(implicit_tls=True, tls_context=tls_cert.gevent_server_context(),
                          extensions=["PIPELINING", "STARTTLS"])
    run(server.address, make_envelope(), context=tls_cert.client_context(),
        tls_immediately=True, tls_required=True)
    session = server.sessions[0]
    assert session.tls and session.messages
    assert b"STARTTLS" not in session.verbs()


def test_tls_immediately_handshake_failure(fault_server: Any, tls_cert: Any) -> None:
    server = fault_server()  # speaks plain SMTP: the handshake cannot succeed
    error = fails(server.address, make_envelope(), context=tls_cert.client_context(),
                  tls_immediately=True, command_timeout=2.0)
    assert type(error) is SmtpTransientRelayError
    assert error.reply.command == b"[CONNECT]"
    assert error.reply.code == "421"


# -- AUTH -------------------------------------------------------------------------------


def test_no_cleartext_auth_without_opt_in(fault_server: Any) -> None:
    server = fault_server(extensions=["PIPELINING", "AUTH PLAIN LOGIN"])
    error = fails(server.address, make_envelope(), credentials=("user", "secret"))
    expect(error, SmtpTransientRelayError, "454", "4.7.0", b"AUTH")
    server.wait_closed()
    assert b"AUTH" not in server.sessions[0].verbs()
    assert b"MAIL" not in server.sessions[0].verbs()


def test_cleartext_auth_with_opt_in_and_callable_credentials(fault_server: Any) -> None:
    server = fault_server(extensions=["PIPELINING", "AUTH PLAIN"])
    run(server.address, make_envelope(), credentials=lambda: ("user", "secret"),
        allow_insecure_auth=True)
    commands = server.sessions[0].commands
    assert commands[1] == b"AUTH PLAIN AHVzZXIAc2VjcmV0"
    assert commands[2] == b"MAIL FROM:<sender@example.test> AUTH=<>"


def test_auth_not_advertised(fault_server: Any) -> None:
    server = fault_server()
    error = fails(server.address, make_envelope(), credentials=("u", "p"))
    expect(error, SmtpPermanentRelayError, "500", "5.5.2", b"AUTH")


def test_auth_rejected(fault_server: Any) -> None:
    server = fault_server({"AUTH": "535 5.7.8 Bad credentials"},
                          extensions=["AUTH PLAIN"])
    error = fails(server.address, make_envelope(), credentials=("u", "p"),
                  allow_insecure_auth=True)
    expect(error, SmtpPermanentRelayError, "535", "5.7.8", b"AUTH")


# -- connection reuse -------------------------------------------------------------------


def _reuse_relay(address: Any, **kwargs: Any) -> StaticSmtpRelay:
    return StaticSmtpRelay(address[0], address[1], pool_size=1, ehlo_as="relay.test",
                           idle_timeout=30.0, command_timeout=5.0, **kwargs)


def test_reuse_then_rset_after_failure(fault_server: Any) -> None:
    server = fault_server({"RCPT": ["550 5.1.1 No such user"]})
    relay = _reuse_relay(server.address)
    try:
        with gevent.Timeout(GUARD_SECONDS):
            with pytest.raises(SmtpPermanentRelayError):
                relay.attempt(make_envelope(), 0)
            result = relay.attempt(make_envelope(), 0)
    finally:
        relay.kill()
    assert isinstance(result["rcpt@example.test"], Reply)
    server.wait_closed()
    assert len(server.sessions) == 1
    assert server.sessions[0].verbs() == [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"RSET",
                                          b"MAIL", b"RCPT", b"DATA"]


@pytest.mark.parametrize("idle", [Hangup("421 4.4.2 Idle timeout"), CLOSE, RESET])
def test_server_closing_idle_connection_is_transparent(fault_server: Any, idle: Any) -> None:
    server = fault_server(sessions=[{"IDLE": idle}])
    relay = _reuse_relay(server.address)
    try:
        with gevent.Timeout(GUARD_SECONDS):
            first = relay.attempt(make_envelope(rcpts=("one@x.test",)), 0)
            server.wait_closed(1)
            second = relay.attempt(make_envelope(rcpts=("two@x.test",)), 0)
    finally:
        relay.kill()
    assert isinstance(first["one@x.test"], Reply)
    assert isinstance(second["two@x.test"], Reply)
    assert [len(s.messages) for s in server.sessions] == [1, 1]


class _NoPeek(SmtpRelayClient):
    """Never notices an unsolicited reply, to force the 'lost at MAIL' path."""

    def _server_has_spoken(self) -> bool:
        return False


@pytest.mark.parametrize("idle", [CLOSE, Hangup("421 4.4.2 Idle timeout")])
@pytest.mark.parametrize("extensions", [["PIPELINING"], []])
def test_lost_at_mail_on_reused_connection_is_requeued(
    fault_server: Any, idle: Any, extensions: list[str]
) -> None:
    server = fault_server(sessions=[{"IDLE": idle}], extensions=extensions)
    relay = _reuse_relay(server.address, client_class=_NoPeek)
    try:
        with gevent.Timeout(GUARD_SECONDS):
            relay.attempt(make_envelope(rcpts=("one@x.test",)), 0)
            server.wait_closed(1)
            second = relay.attempt(make_envelope(rcpts=("two@x.test",)), 0)
    finally:
        relay.kill()
    assert isinstance(second["two@x.test"], Reply)
    assert server.sessions[1].messages


def test_kill_resolves_a_stalled_request(fault_server: Any) -> None:
    server = fault_server({"DATA_END": STALL})
    relay = _reuse_relay(server.address)
    waiter = gevent.spawn(relay.attempt, make_envelope(), 0)
    with gevent.Timeout(GUARD_SECONDS):
        while not server.sessions or not server.sessions[0].raw_data:
            gevent.idle()
        relay.kill()
        with pytest.raises(TransientRelayError):
            waiter.get()
    assert not relay.pool
    server.wait_closed()


def test_idle_client_quits_after_idle_timeout(fault_server: Any) -> None:
    server = fault_server()
    relay = StaticSmtpRelay(*server.address, pool_size=1, ehlo_as="relay.test",
                            idle_timeout=0.05)
    try:
        with gevent.Timeout(GUARD_SECONDS):
            relay.attempt(make_envelope(), 0)
            server.wait_closed()
    finally:
        relay.kill()
    assert server.sessions[0].verbs()[-1] == b"QUIT"


# -- postfix smtp-sink --------------------------------------------------------------------


def test_sink_delivery(smtp_sink: Any) -> None:
    sink = smtp_sink()
    env = make_envelope(rcpts=("a@example.test", "b@example.test"),
                        body=b"line one\r\n.leading dot\r\n")
    result = run(sink.address, env)
    assert set(result) == {"a@example.test", "b@example.test"}
    assert all(isinstance(r, Reply) and r.code == "250" for r in result.values())
    (message,) = sink.messages()
    assert message.mail_from == "sender@example.test"
    assert message.rcpt_to == ["a@example.test", "b@example.test"]
    assert message.data == b"Subject: test\r\n\r\nline one\r\n.leading dot\r\n"
    assert message.helo == "relay.test"


def test_sink_8bitmime(smtp_sink: Any) -> None:
    sink = smtp_sink()
    body = "Grüße\r\n".encode()
    run(sink.address, make_envelope(body=body))
    (message,) = sink.messages()
    assert "BODY=8BITMIME" in message.mail_args
    assert message.data.endswith(body)


def test_sink_helo_fallback(smtp_sink: Any) -> None:
    sink = smtp_sink("-e")
    run(sink.address, make_envelope())
    (message,) = sink.messages()
    assert message.protocol == "SMTP"


@pytest.mark.parametrize("flag, cls, code", [("-f", SmtpPermanentRelayError, "500"),
                                             ("-r", SmtpTransientRelayError, "450")])
def test_sink_rejects_every_rcpt(smtp_sink: Any, flag: str, cls: type, code: str) -> None:
    sink = smtp_sink(flag, "RCPT")
    error = fails(sink.address, make_envelope(rcpts=("a@x.test", "b@x.test")))
    assert type(error) is cls and error.reply.code == code
    assert error.reply.command == b"RCPT"
    assert sink.messages() == []


def test_sink_disconnects_at_data(smtp_sink: Any) -> None:
    sink = smtp_sink("-q", "DATA")
    error = fails(sink.address, make_envelope())
    expect(error, SmtpTransientRelayError, "421", "4.3.0", b"DATA")
    assert sink.messages() == []


def test_sink_rejects_end_of_data(smtp_sink: Any) -> None:
    sink = smtp_sink("-r", ".")
    error = fails(sink.address, make_envelope())
    expect(error, SmtpTransientRelayError, "450", "4.3.0", b"[SEND_DATA]")


def test_sink_reuses_one_connection(smtp_sink: Any) -> None:
    sink = smtp_sink()
    connections = []

    def creator(address: Any) -> socket.socket:
        connections.append(address)
        return gevent.socket.create_connection(address)

    relay = _reuse_relay(sink.address, socket_creator=creator)
    try:
        with gevent.Timeout(GUARD_SECONDS):
            for n in range(10):
                result = relay.attempt(make_envelope(rcpts=(f"r{n}@x.test",)), 0)
                assert isinstance(result[f"r{n}@x.test"], Reply)
    finally:
        relay.kill()
    assert len(connections) == 1
    assert sorted(m.rcpt_to[0] for m in sink.messages()) == sorted(
        f"r{n}@x.test" for n in range(10)
    )


def test_sink_auth_with_opt_in(smtp_sink: Any) -> None:
    sink = smtp_sink()
    result = run(sink.address, make_envelope(), credentials=("u", "p"), allow_insecure_auth=True)
    assert isinstance(result["rcpt@example.test"], Reply)
    assert len(sink.messages()) == 1


# -- aiosmtpd: STARTTLS, AUTH, SMTPUTF8 ----------------------------------------------------


def test_aiosmtpd_starttls_and_auth(aiosmtpd_server: Any, tls_cert: Any) -> None:
    server = aiosmtpd_server(starttls=True, auth=("alice", "wonderland"))
    run(server.address, make_envelope(), context=tls_cert.client_context(), tls_required=True,
        credentials=("alice", "wonderland"))
    (env,) = server.envelopes
    assert env.tls and env.auth_login == "alice"
    assert env.rcpt_tos == ["rcpt@example.test"]
    assert env.content.endswith(b"Hello there.\r\n")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_aiosmtpd_auth_mechanisms(aiosmtpd_server: Any, tls_cert: Any, mechanism: str) -> None:
    server = aiosmtpd_server(starttls=True, auth=("alice", "wonderland"))
    run(server.address, make_envelope(), context=tls_cert.client_context(),
        credentials=("alice", "wonderland"), auth_mechanism=mechanism)
    assert server.auth_attempts[-1].mechanism == mechanism
    assert server.auth_attempts[-1].success


def test_aiosmtpd_bad_password(aiosmtpd_server: Any, tls_cert: Any) -> None:
    server = aiosmtpd_server(starttls=True, auth=("alice", "wonderland"))
    error = fails(server.address, make_envelope(), context=tls_cert.client_context(),
                  credentials=("alice", "nope"))
    assert type(error) is SmtpPermanentRelayError
    assert error.reply.code == "535" and error.reply.command == b"AUTH"
    assert server.envelopes == []


def test_aiosmtpd_tls_required_without_starttls(aiosmtpd_server: Any) -> None:
    server = aiosmtpd_server()
    error = fails(server.address, make_envelope(), tls_required=True)
    expect(error, SmtpTransientRelayError, "421", "4.7.0", b"STARTTLS")
    assert server.envelopes == []


def test_aiosmtpd_implicit_tls(aiosmtpd_server: Any, tls_cert: Any) -> None:
    server = aiosmtpd_server(implicit_tls=True)
    run(server.address, make_envelope(), context=tls_cert.client_context(), tls_immediately=True)
    (env,) = server.envelopes
    assert env.tls


def test_aiosmtpd_smtputf8(aiosmtpd_server: Any) -> None:
    server = aiosmtpd_server(smtputf8=True)
    run(server.address, make_envelope(sender="jörg@x.test", rcpts=("zoë@x.test",)))
    (env,) = server.envelopes
    assert env.smtp_utf8
    assert env.mail_from == "jörg@x.test" and env.rcpt_tos == ["zoë@x.test"]


def test_aiosmtpd_no_smtputf8(aiosmtpd_server: Any) -> None:
    server = aiosmtpd_server()
    error = fails(server.address, make_envelope(rcpts=("zoë@x.test",)))
    expect(error, SmtpPermanentRelayError, "553", "5.6.7", b"RCPT")
    assert server.envelopes == []


def test_errors_are_relay_errors() -> None:
    assert issubclass(SmtpPermanentRelayError, PermanentRelayError)
    assert issubclass(SmtpTransientRelayError, TransientRelayError)
