"""Client and LmtpClient against a scripted peer: exact bytes out, Replies in."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator

import gevent
import pytest
from support.smtp_peer import Peer, connected
from support.tls import TlsCert
from support.util import GUARD_SECONDS

from slimta.smtp import BadReply, ConnectionLost
from slimta.smtp.client import AddressEncodingError, AddressError, Client, LmtpClient
from slimta.smtp.reply import Reply

EHLO_PLAIN = b"250-mx.example Hello\r\n250-SIZE 1000\r\n250 8BITMIME\r\n"
EHLO_FULL = (
    b"250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n"
)


@pytest.fixture
def pair() -> Iterator[tuple[Client, Peer]]:
    with connected(Client) as (client, peer):
        yield client, peer


@pytest.fixture
def lmtp() -> Iterator[tuple[LmtpClient, Peer]]:
    with connected(LmtpClient) as (client, peer):
        yield client, peer


def greet(client: Client, peer: Peer, ehlo: bytes = EHLO_FULL) -> None:
    peer.send(ehlo)
    assert client.ehlo("client.example").code == "250"
    peer.expect(b"EHLO client.example\r\n")


def send_lines(caplog: pytest.LogCaptureFixture) -> int:
    return sum(":send " in r.getMessage() for r in caplog.records)


# -- greeting -------------------------------------------------------------------


def test_banner(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    peer.send(b"220 mx.example ESMTP\r\n")
    reply = client.get_banner()
    assert (reply.code, reply.command) == ("220", b"[BANNER]")
    assert reply.enhanced_status_code is None
    assert peer.nothing_written()


def test_ehlo_parses_extensions(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    peer.send(EHLO_FULL)
    reply = client.ehlo("client.example")
    peer.expect(b"EHLO client.example\r\n")
    assert reply.command == b"EHLO"
    assert reply.message == "mx.example Hello"
    assert reply.enhanced_status_code is None
    assert "PIPELINING" in client.extensions
    assert client.extensions.getparam("SIZE", int) == 1000
    assert client.extensions.getparam("AUTH") == "PLAIN LOGIN"


def test_ehlo_error_keeps_extensions(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    greet(client, peer)
    peer.send(b"502 5.5.1 no EHLO here\r\n")
    reply = client.ehlo("client.example")
    assert reply.code == "502"
    assert client.last_error is reply
    assert "PIPELINING" in client.extensions


def test_helo_clears_extensions(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    greet(client, peer)
    peer.send(b"250 mx.example\r\n")
    assert client.helo("client.example").code == "250"
    peer.expect(b"HELO client.example\r\n")
    assert not client.extensions.extensions


@pytest.mark.parametrize("name", ["", "two words", "x\r\nMAIL FROM:<a@b>", "h\u00f6st", "t\tab"])
def test_bad_ehlo_name(pair: tuple[Client, Peer], name: str) -> None:
    client, peer = pair
    with pytest.raises(ValueError):
        client.ehlo(name)
    with pytest.raises(ValueError):
        client.helo(name)
    assert peer.nothing_written() and not client.reply_queue


def test_lhlo_not_on_client(pair: tuple[Client, Peer]) -> None:
    with pytest.raises(NotImplementedError):
        pair[0].lhlo("client.example")


# -- transaction without pipelining ---------------------------------------------


def test_plain_transaction(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    greet(client, peer, EHLO_PLAIN)
    peer.send(b"250 2.1.0 Ok\r\n")
    mail = client.mailfrom("sender@example.com", data_size=42)
    peer.expect(b"MAIL FROM:<sender@example.com> SIZE=42\r\n")
    assert (mail.code, mail.command, mail.enhanced_status_code) == ("250", b"MAIL", "2.1.0")
    peer.send(b"550 5.1.1 No such user\r\n")
    rcpt = client.rcptto("nobody@example.com")
    peer.expect(b"RCPT TO:<nobody@example.com>\r\n")
    assert (rcpt.code, rcpt.command) == ("550", b"RCPT")
    assert client.last_error is rcpt
    peer.send(b"250 2.1.5 Ok\r\n354 go ahead\r\n")
    assert client.rcptto("rcpt@example.com").code == "250"
    data = client.data()
    peer.expect(b"RCPT TO:<rcpt@example.com>\r\nDATA\r\n")
    assert (data.code, data.command) == ("354", b"DATA")
    peer.send(b"250 2.0.0 queued\r\n")
    sent = client.send_data(b"Subject: hi\r\n\r\n", b".dot\nline")
    peer.expect(b"Subject: hi\r\n\r\n..dot\r\nline\r\n.\r\n")
    assert (sent.code, sent.command) == ("250", b"[SEND_DATA]")
    peer.send(b"250 2.0.0 reset\r\n221 2.0.0 bye\r\n")
    assert client.rset().command == b"RSET"
    assert client.quit().command == b"QUIT"
    peer.expect(b"RSET\r\nQUIT\r\n")


def test_null_sender(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    peer.send(b"250 ok\r\n250 ok\r\n")
    client.mailfrom(None)
    client.mailfrom("")
    peer.expect(b"MAIL FROM:<>\r\nMAIL FROM:<>\r\n")


def test_mail_parameters_in_order(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    greet(client, peer, EHLO_FULL.replace(b"250-PIPELINING\r\n", b""))
    peer.send(b"250 ok\r\n" * 3)
    client.mailfrom("s\u00e9@example.com", 100, "e=mc2@example.com", "8bitmime", True)
    peer.expect(
        "MAIL FROM:<s\u00e9@example.com> SIZE=100 BODY=8BITMIME SMTPUTF8 "
        "AUTH=e+3Dmc2@example.com\r\n".encode()
    )
    client.mailfrom("s@example.com", auth=False)
    peer.expect(b"MAIL FROM:<s@example.com> AUTH=<>\r\n")
    client.mailfrom("s@example.com", auth="")
    peer.expect(b"MAIL FROM:<s@example.com> AUTH=<>\r\n")


def test_mail_parameters_only_when_advertised(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    greet(client, peer, b"250 mx.example\r\n")
    peer.send(b"250 ok\r\n")
    client.mailfrom("s@example.com", 100, False, "8BITMIME", True)
    peer.expect(b"MAIL FROM:<s@example.com>\r\n")


def test_bad_body_value(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    greet(client, peer)
    with pytest.raises(ValueError):
        client.mailfrom("s@example.com", body="8BIT MIME")
    assert not client.reply_queue and not client.io.send_buffer


@pytest.mark.parametrize(
    "address",
    ["a@x>\r\nRCPT TO:<evil@example.com", "a b@example.com", "a@example.com>", "a\0@x", ""],
)
def test_hostile_recipient_is_refused_before_writing(
    pair: tuple[Client, Peer], address: str
) -> None:
    client, peer = pair
    greet(client, peer)
    peer.send(b"250 ok\r\n")
    client.mailfrom("s@example.com")
    with pytest.raises(AddressError):
        client.rcptto(address)
    assert client.io.send_buffer == bytearray(b"MAIL FROM:<s@example.com>\r\n")
    assert len(client.reply_queue) == 1


def test_hostile_sender(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    with pytest.raises(AddressError):
        client.mailfrom("s@example.com>\r\nRCPT TO:<x@y>")
    assert peer.nothing_written() and not client.reply_queue


def test_non_ascii_address_needs_smtputf8(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    greet(client, peer, EHLO_PLAIN)
    with pytest.raises(AddressEncodingError):
        client.mailfrom("j\u00f6rg@example.com")
    with pytest.raises(ValueError):
        client.rcptto("j\u00f6rg@example.com")
    assert peer.nothing_written()


# -- pipelining -----------------------------------------------------------------


def test_pipelined_batch_is_one_write(
    pair: tuple[Client, Peer], caplog: pytest.LogCaptureFixture
) -> None:
    client, peer = pair
    greet(client, peer)
    caplog.set_level(logging.DEBUG, logger="slimta.smtp.io")
    mail = client.mailfrom("s@example.com", data_size=10)
    rcpts = [client.rcptto(r) for r in ("a@example.com", "b@example.com", "c@example.com")]
    assert not mail and not any(rcpts)  # not filled yet
    assert peer.nothing_written()
    assert len(client.reply_queue) == 4
    peer.send(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n450 4.2.1 later\r\n550 5.1.1 unknown\r\n354 go\r\n")
    data = client.data()
    peer.expect(
        b"MAIL FROM:<s@example.com> SIZE=10\r\nRCPT TO:<a@example.com>\r\n"
        b"RCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n"
    )
    assert send_lines(caplog) == 1
    assert [r.code for r in (mail, *rcpts, data)] == ["250", "250", "450", "550", "354"]
    assert client.last_error is rcpts[2]
    assert not client.reply_queue


def test_pipelined_data_reply_filled_by_flush(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    greet(client, peer)
    sent = client.send_data(b"body\r\n")
    assert not sent and client.reply_queue == [sent]
    peer.send(b"250 2.0.0 queued\r\n")
    client.flush()
    peer.expect(b"body\r\n.\r\n")
    assert sent.code == "250"


def test_queue_command_waits_for_the_next_flush(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    greet(client, peer)
    sent = client.send_data(b"body\r\n")
    mail = client.mailfrom("s@example.com")
    data = client.queue_command(b"DATA")
    assert not data and data.command == b"DATA"
    assert client.reply_queue == [sent, mail, data]
    assert peer.nothing_written()
    peer.send(b"250 2.0.0 queued\r\n250 2.1.0 ok\r\n354 go on\r\n")
    client.flush()
    # One write: the end of the message, then the next transaction's commands.
    peer.expect(b"body\r\n.\r\nMAIL FROM:<s@example.com>\r\nDATA\r\n")
    assert [r.code for r in (sent, mail, data)] == ["250", "250", "354"]
    assert not client.reply_queue


@pytest.mark.parametrize("arg", [None, b"x\r\nRSET", "x\x00"])
def test_queue_command_refuses_line_breaks(pair: tuple[Client, Peer], arg: bytes | None) -> None:
    client, peer = pair
    with pytest.raises(ValueError):
        client.queue_command(b"NOOP\r\n" if arg is None else b"NOOP", arg)
    assert not client.reply_queue and not client.io.send_buffer


def test_flush_pipeline_is_the_old_name_of_flush(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    reply = client.queue_command(b"NOOP")
    peer.send(b"250 2.0.0 ok\r\n")
    client._flush_pipeline()
    peer.expect(b"NOOP\r\n")
    assert reply.code == "250"


def test_pipelined_empty_data(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    greet(client, peer)
    peer.send(b"503 5.5.1 no valid recipients\r\n250 reset\r\n")
    empty = client.send_empty_data()
    assert client.rset().code == "250"
    peer.expect(b".\r\nRSET\r\n")
    assert (empty.code, empty.command) == ("503", b"[SEND_DATA]")


def test_pipeline_ended_by_connection_loss(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    greet(client, peer)
    mail = client.mailfrom("s@example.com")
    client.rcptto("r@example.com")
    peer.send(b"421 4.3.0 shutting down\r\n")
    peer.sock.shutdown(1)
    with pytest.raises(ConnectionLost):
        client.data()
    assert mail.code == "421" and client.last_error is mail


# -- misc commands --------------------------------------------------------------


def test_custom_command(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    peer.send(b"252 2.5.2 maybe\r\n250 ok\r\n")
    reply = client.custom_command(b"vrfy", b"user")
    assert (reply.code, reply.command) == ("252", b"VRFY")
    assert client.custom_command("NOOP").command == b"NOOP"
    peer.expect(b"vrfy user\r\nNOOP\r\n")
    with pytest.raises(ValueError):
        client.custom_command(b"VRFY", b"user\r\nRSET")
    with pytest.raises(ValueError):
        client.custom_command(b"VR\0FY")
    assert peer.nothing_written()


def test_get_reply(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    peer.send(b"421 4.4.2 idle too long\r\n")
    reply = client.get_reply()
    assert (reply.code, reply.command) == ("421", b"[TIMEOUT]")


def test_has_reply_waiting(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    ran: list[bool] = []
    gevent.spawn(ran.append, True)
    assert client.has_reply_waiting() is False
    assert not ran  # it did not yield to the hub, let alone wait
    peer.send(b"421 4.3.2 bye\r\n")
    assert client.has_reply_waiting() is True
    assert client.get_reply().code == "421"
    assert client.has_reply_waiting() is False
    client.io.close()
    assert client.has_reply_waiting() is False


def test_has_buffered_data(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    peer.send(b"250 a\r\n250 b\r\n")
    assert not client.has_buffered_data()
    client.get_reply()
    assert client.has_buffered_data()
    assert client.has_reply_waiting()


# -- STARTTLS -------------------------------------------------------------------


def tls_server(peer: Peer, context: ssl.SSLContext) -> list[bytes]:
    assert peer.read_line() == b"STARTTLS\r\n"
    peer.send(b"220 2.0.0 ready\r\n")
    peer.start_tls(context)
    lines = [peer.read_line()]
    peer.send(b"250-mx.example\r\n250 AUTH PLAIN\r\n")
    lines.append(peer.read_line())
    peer.send(b"235 2.7.0 ok\r\n")
    return lines


def test_starttls_then_auth(pair: tuple[Client, Peer], tls_cert: TlsCert) -> None:
    client, peer = pair
    greet(client, peer)
    server = gevent.spawn(tls_server, peer, tls_cert.server_context())
    context = ssl.create_default_context(cafile=tls_cert.ca_path)
    with gevent.Timeout(GUARD_SECONDS):
        reply = client.starttls(context)
    assert (reply.code, reply.command) == ("220", b"STARTTLS")
    assert client.io.encrypted
    assert not client.extensions.extensions  # forgotten: EHLO again
    with gevent.Timeout(GUARD_SECONDS):
        assert client.ehlo("client.example").code == "250"
        assert client.auth("user", "secret").code == "235"
    assert server.get(timeout=GUARD_SECONDS) == [
        b"EHLO client.example\r\n",
        b"AUTH PLAIN AHVzZXIAc2VjcmV0\r\n",
    ]
    client.io.close()


def test_starttls_refused(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    peer.send(b"454 4.7.0 TLS not available\r\n")
    reply = client.starttls()
    peer.expect(b"STARTTLS\r\n")
    assert reply.code == "454" and not client.io.encrypted


def test_starttls_leftover_bytes(pair: tuple[Client, Peer]) -> None:
    """Plaintext after the 220 to STARTTLS must not pass for a TLS-protected reply."""
    client, peer = pair
    greet(client, peer)
    peer.send(b"220 2.0.0 ready\r\n250-injected\r\n250 AUTH PLAIN\r\n")
    with pytest.raises(BadReply) as info:
        client.starttls()
    assert info.value.data.startswith(b"250-injected")
    assert not client.io.encrypted


def test_starttls_handshake_failure_raises(pair: tuple[Client, Peer], tls_cert: TlsCert) -> None:
    """Never carry on in clear after a failed handshake."""
    client, peer = pair

    def bad_server() -> None:
        assert peer.read_line() == b"STARTTLS\r\n"
        peer.send(b"220 2.0.0 ready\r\n")
        peer.read_exactly(1)
        peer.send(b"this is not TLS\r\n")

    server = gevent.spawn(bad_server)
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(ssl.SSLError):
        client.starttls(ssl.create_default_context(cafile=tls_cert.ca_path))
    server.get(timeout=GUARD_SECONDS)


# -- AUTH (wire details are in test_slimta_smtp_auth.py) -------------------------


def test_auth_not_advertised(pair: tuple[Client, Peer]) -> None:
    from slimta.smtp.reply import unknown_command

    client, peer = pair
    greet(client, peer, EHLO_PLAIN)
    reply = client.auth("user", "secret", allow_insecure=True)
    assert (reply.code, reply.command) == ("500", b"AUTH")
    assert reply.message == "5.5.2 Syntax error, command unrecognized"
    assert reply == unknown_command
    assert reply is not unknown_command
    assert client.last_error is reply
    assert peer.nothing_written()


def test_auth_flushes_pipeline(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    greet(client, peer)
    rset = Reply(command=b"RSET")
    client.reply_queue.append(rset)
    client.io.send_buffer += b"RSET\r\n"
    peer.send(b"250 reset\r\n235 ok\r\n")
    assert client.auth("u", "p", allow_insecure=True).code == "235"
    assert rset.code == "250"
    peer.expect(b"RSET\r\nAUTH PLAIN AHUAcA==\r\n")


def test_auth_cleartext_refused(pair: tuple[Client, Peer]) -> None:
    client, peer = pair
    greet(client, peer)
    reply = client.auth("user", "secret")
    assert (reply.code, reply.enhanced_status_code) == ("454", "4.7.0")
    assert client.last_error is reply
    assert peer.nothing_written()


# -- LMTP -----------------------------------------------------------------------


LHLO = b"250-lmtp.example\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"


def test_lmtp_session(lmtp: tuple[LmtpClient, Peer]) -> None:
    client, peer = lmtp
    with pytest.raises(NotImplementedError):
        client.ehlo("x")
    with pytest.raises(NotImplementedError):
        client.helo("x")
    peer.send(LHLO)
    assert client.lhlo("client.example").message == "lmtp.example"
    peer.expect(b"LHLO client.example\r\n")
    client.mailfrom("s@example.com")
    for rcpt in ("a@example.com", "b@example.com", "c@example.com"):
        client.rcptto(rcpt)
    peer.send(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n")
    assert client.data().code == "354"
    assert [a for a, _ in client.rcpttos] == ["a@example.com", "b@example.com", "c@example.com"]
    peer.send(b"250 2.0.0 a done\r\n452 4.2.2 c full\r\n")
    results = client.send_data(b"H: v\r\n\r\n", b"body\r\n")
    peer.expect(
        b"MAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
        b"RCPT TO:<c@example.com>\r\nDATA\r\nH: v\r\n\r\nbody\r\n.\r\n"
    )
    assert [(a, r.code) for a, r in results] == [("a@example.com", "250"), ("c@example.com", "452")]
    assert client.rcpttos == []


def test_lmtp_partial_replies_survive_connection_loss(lmtp: tuple[LmtpClient, Peer]) -> None:
    client, peer = lmtp
    peer.send(LHLO)
    client.lhlo("client.example")
    client.mailfrom("s@example.com")
    client.rcptto("a@example.com")
    client.rcptto("b@example.com")
    peer.send(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 a done\r\n")
    client.data()
    peer.sock.shutdown(1)
    with pytest.raises(ConnectionLost):
        client.send_data(b"body\r\n")
    assert [(a, r.code) for a, r in client.data_replies] == [
        ("a@example.com", "250"),
        ("b@example.com", None),
    ]


def test_lmtp_rset_and_empty_data(lmtp: tuple[LmtpClient, Peer]) -> None:
    client, peer = lmtp
    peer.send(b"250 ok\r\n250 ok\r\n")
    client.rcptto("a@example.com")
    assert client.rset().code == "250"
    assert client.rcpttos == []
    peer.send(b"250 ok\r\n250 2.0.0 nothing\r\n")
    client.rcptto("a@example.com")
    assert [(a, r.code) for a, r in client.send_empty_data()] == [("a@example.com", "250")]
    peer.expect(b"RCPT TO:<a@example.com>\r\nRSET\r\nRCPT TO:<a@example.com>\r\n.\r\n")
