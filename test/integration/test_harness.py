"""The real-server fixtures themselves, driven with the standard library only.

If these pass, a failing integration test points at slimta, not at the harness: each
test talks to one server the way a plain client would and checks what the server
recorded or did.
"""

from __future__ import annotations

import os
import re
import smtplib
import ssl
import threading
from collections.abc import Callable, Iterator

import gevent
import gevent.socket
import gevent.ssl
import pytest
from cryptography import x509
from support.aiosmtpd_server import AiosmtpdServer
from support.dovecot import DovecotLda, DovecotLmtp
from support.maildrop import MaildropBox
from support.smtp_sink import SmtpSink
from support.tls import TlsCert
from support.util import GUARD_SECONDS
from support.wsgi_server import WsgiServer, gevent_http_connection

MESSAGE = b"From: a@example.com\r\nSubject: harness\r\n\r\nline one\r\n.starts with a dot\r\n"

SinkFactory = Callable[..., SmtpSink]
AiosmtpdFactory = Callable[..., AiosmtpdServer]
WsgiFactory = Callable[..., WsgiServer]


def _children() -> set[int]:
    """PIDs of this process's live children (all threads), from /proc."""
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children", encoding="ascii") as handle:
                pids.update(int(pid) for pid in handle.read().split())
        except FileNotFoundError:
            continue  # the thread ended after listdir(): it has no children now
    return pids


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a harness test whose fixtures leave threads, descriptors or children behind.

    Autouse function fixtures are set up before the server fixtures a test asks for,
    so this check runs after their teardown. Session-wide state (the gevent hub, the
    shared Dovecot) is created before the snapshot.
    """
    gevent.get_hub()
    threads = set(threading.enumerate())
    fds = set(os.listdir("/proc/self/fd"))
    children = _children()
    yield
    assert set(threading.enumerate()) - threads == set()
    assert _children() - children == set()
    # Compare after the listdir's own descriptor has come and gone.
    assert set(os.listdir("/proc/self/fd")) - fds == set()


def ehlo_features(sink: SmtpSink) -> dict[str, str]:
    """The EHLO extensions ``sink`` announces, as smtplib parses them."""
    with smtplib.SMTP(sink.host, sink.port, timeout=GUARD_SECONDS) as client:
        client.ehlo()
        return dict(client.esmtp_features)


def lmtp_data(client: smtplib.LMTP, message: bytes, replies: int) -> list[tuple[int, bytes]]:
    """Send DATA and read one reply per accepted recipient (smtplib reads only one)."""
    assert client.docmd("DATA")[0] == 354
    stuffed = re.sub(rb"(?m)^\.", b"..", message)
    client.send(stuffed + b".\r\n")
    return [client.getreply() for _ in range(replies)]


# -- smtp-sink ---------------------------------------------------------------------------


def test_smtp_sink_records_each_transaction(smtp_sink: SinkFactory) -> None:
    """Envelope, parameters and unstuffed body come back as the client sent them."""
    sink = smtp_sink()
    with smtplib.SMTP(sink.host, sink.port, timeout=GUARD_SECONDS) as client:
        client.sendmail(
            "sender@example.com",
            ["one@example.com", "two@example.com"],
            MESSAGE,
            mail_options=["BODY=8BITMIME"],
            rcpt_options=["NOTIFY=NEVER"],
        )
        client.sendmail("", ["three@example.com"], b"Subject: bounce\r\n\r\nx\r\n")
    first, second = sink.messages()
    assert first.mail_from == "sender@example.com"
    assert first.mail_args == ["BODY=8BITMIME"]
    assert first.rcpt_to == ["one@example.com", "two@example.com"]
    assert first.rcpt_args == [["NOTIFY=NEVER"], ["NOTIFY=NEVER"]]
    assert first.data == MESSAGE
    assert first.protocol == "ESMTP"
    assert second.mail_from == ""
    assert second.rcpt_to == ["three@example.com"]
    assert second.data == b"Subject: bounce\r\n\r\nx\r\n"


def test_smtp_sink_keeps_completion_order(smtp_sink: SinkFactory) -> None:
    """Back-to-back messages come back in the order sent, an abandoned one not at all."""
    sink = smtp_sink()
    senders = [f"s{number}@example.com" for number in range(8)]
    with smtplib.SMTP(sink.host, sink.port, timeout=GUARD_SECONDS) as client:
        client.mail("abandoned@example.com")
        client.rcpt("r@example.com")
        client.rset()
        for sender in senders:
            client.sendmail(sender, ["r@example.com"], MESSAGE)
    assert [message.mail_from for message in sink.messages()] == senders


def test_smtp_sink_default_extensions(smtp_sink: SinkFactory) -> None:
    """The default sink offers what the relay's fast path needs, and no STARTTLS."""
    features = ehlo_features(smtp_sink())
    assert {"pipelining", "8bitmime", "enhancedstatuscodes", "dsn", "auth"} <= set(features)
    assert "starttls" not in features


@pytest.mark.parametrize(
    ("flag", "extension"),
    [("-p", "pipelining"), ("-8", "8bitmime"), ("-E", "enhancedstatuscodes"), ("-a", "auth")],
)
def test_smtp_sink_extension_flags(smtp_sink: SinkFactory, flag: str, extension: str) -> None:
    """Each flag hides exactly its extension."""
    features = ehlo_features(smtp_sink(flag))
    assert extension not in features
    assert len(features) >= 4


def test_smtp_sink_without_esmtp(smtp_sink: SinkFactory) -> None:
    """``-e`` refuses EHLO, so a client must fall back to HELO."""
    sink = smtp_sink("-e")
    with smtplib.SMTP(sink.host, sink.port, timeout=GUARD_SECONDS) as client:
        assert client.ehlo()[0] == 500
        assert client.helo()[0] == 250
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    [message] = sink.messages()
    assert message.protocol == "SMTP"


def test_smtp_sink_rejects_rcpt_permanently(smtp_sink: SinkFactory) -> None:
    """``-f RCPT`` answers every RCPT with 5xx, and nothing is dumped."""
    sink = smtp_sink("-f", "RCPT")
    with smtplib.SMTP(sink.host, sink.port, timeout=GUARD_SECONDS) as client:
        client.ehlo()
        assert not client.has_extn("pipelining")  # -f implies -p
        client.mail("a@example.com")
        code, text = client.rcpt("b@example.com")
    assert (code, text) == (500, b"5.3.0 Error: command failed")
    assert sink.messages() == []


def test_smtp_sink_rejects_data_temporarily(smtp_sink: SinkFactory) -> None:
    """``-r .`` answers the end of data with 4xx; the sink still dumps the message."""
    sink = smtp_sink("-r", ".")
    with smtplib.SMTP(sink.host, sink.port, timeout=GUARD_SECONDS) as client:
        with pytest.raises(smtplib.SMTPDataError) as caught:
            client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    assert caught.value.smtp_code == 450
    assert [message.data for message in sink.messages()] == [MESSAGE]


def test_smtp_sink_disconnects_on_data(smtp_sink: SinkFactory) -> None:
    """``-q DATA`` hangs up without a reply: the client sees the connection drop."""
    sink = smtp_sink("-q", "DATA")
    with smtplib.SMTP(sink.host, sink.port, timeout=GUARD_SECONDS) as client:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    assert sink.messages() == []


def test_smtp_sink_lmtp_mode(smtp_sink: SinkFactory) -> None:
    """``-L`` speaks LMTP: LHLO works and the dump says so."""
    sink = smtp_sink("-L")
    with smtplib.LMTP(sink.host, sink.port, timeout=GUARD_SECONDS) as client:
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    [message] = sink.wait_for_messages(1)
    assert message.protocol == "LMTP"
    assert message.data == MESSAGE


# -- tls_cert ----------------------------------------------------------------------------


def test_tls_cert_names_and_contexts(tls_cert: TlsCert) -> None:
    """The certificate covers the test names; client contexts verify by default."""
    with open(tls_cert.cert_path, "rb") as handle:
        cert = x509.load_pem_x509_certificate(handle.read())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "*.test"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    client = tls_cert.client_context()
    assert isinstance(client, gevent.ssl.SSLContext)
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname


# -- aiosmtpd ----------------------------------------------------------------------------


def test_aiosmtpd_records_envelopes_and_rejects(aiosmtpd_server: AiosmtpdFactory) -> None:
    """Configured recipients get 550/450 at RCPT; the rest are recorded with options."""
    server = aiosmtpd_server(reject_rcpt={"bad@example.com"}, tempfail_rcpt={"later@example.com"})
    with smtplib.SMTP(server.host, server.port, timeout=GUARD_SECONDS) as client:
        client.ehlo("client.test")
        client.mail("a@example.com", ["BODY=8BITMIME"])
        assert client.rcpt("bad@example.com")[0] == 550
        assert client.rcpt("later@example.com")[0] == 450
        # aiosmtpd refuses every RCPT parameter; smtp-sink is the peer for DSN options.
        assert client.rcpt("good@example.com", ["NOTIFY=NEVER"])[0] == 555
        assert client.rcpt("good@example.com")[0] == 250
        assert client.rcpt("also@example.com")[0] == 250
        assert client.data(MESSAGE)[0] == 250
    [envelope] = server.envelopes
    assert envelope.mail_from == "a@example.com"
    assert envelope.mail_options == ["BODY=8BITMIME"]
    assert envelope.rcpt_tos == ["good@example.com", "also@example.com"]
    assert envelope.rcpt_options == [[], []]
    assert envelope.content == MESSAGE
    assert envelope.helo == "client.test"
    assert not envelope.tls and envelope.auth_login is None


def test_aiosmtpd_starttls_then_auth(aiosmtpd_server: AiosmtpdFactory, tls_cert: TlsCert) -> None:
    """AUTH is offered only after STARTTLS; the wrong password is refused and logged."""
    server = aiosmtpd_server(starttls=True, require_starttls=True, auth=("user", "pass"))
    with smtplib.SMTP(server.host, server.port, timeout=GUARD_SECONDS) as client:
        client.ehlo()
        assert client.has_extn("starttls") and not client.has_extn("auth")
        assert client.mail("a@example.com")[0] == 530
        client.starttls(context=tls_cert.stdlib_client_context())
        client.ehlo()
        assert client.has_extn("auth")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("user", "wrong")
        client.login("user", "pass")
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    [envelope] = server.envelopes
    assert envelope.tls and envelope.auth_login == "user"
    # smtplib tries PLAIN, then LOGIN with the wrong password, then PLAIN again.
    assert [(a.mechanism, a.login, a.success) for a in server.auth_attempts] == [
        ("PLAIN", "user", False),
        ("LOGIN", "user", False),
        ("PLAIN", "user", True),
    ]


def test_aiosmtpd_auth_login_without_tls(aiosmtpd_server: AiosmtpdFactory) -> None:
    """With ``auth_require_tls=False`` AUTH works in clear; the mechanism is recorded."""
    server = aiosmtpd_server(auth=("user", "pass"), auth_require_tls=False)
    with smtplib.SMTP(server.host, server.port, timeout=GUARD_SECONDS) as client:
        client.ehlo()
        client.user, client.password = "user", "pass"
        code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235
    assert [(a.mechanism, a.success) for a in server.auth_attempts] == [("LOGIN", True)]


def test_aiosmtpd_implicit_tls(aiosmtpd_server: AiosmtpdFactory, tls_cert: TlsCert) -> None:
    """``implicit_tls`` serves TLS from the first byte, verified against the test CA."""
    server = aiosmtpd_server(implicit_tls=True)
    context = tls_cert.stdlib_client_context()
    with smtplib.SMTP_SSL(
        server.host, server.port, context=context, timeout=GUARD_SECONDS
    ) as client:
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    assert [envelope.tls for envelope in server.envelopes] == [True]


def test_aiosmtpd_smtputf8(aiosmtpd_server: AiosmtpdFactory) -> None:
    """With ``smtputf8`` the server accepts UTF-8 addresses flagged SMTPUTF8."""
    server = aiosmtpd_server(smtputf8=True)
    with smtplib.SMTP(server.host, server.port, timeout=GUARD_SECONDS) as client:
        client.ehlo()
        assert client.has_extn("smtputf8")
        client.sendmail("jöe@exämple.test", ["zoë@example.test"], MESSAGE, ["SMTPUTF8"])
    [envelope] = server.envelopes
    assert envelope.smtp_utf8
    assert (envelope.mail_from, envelope.rcpt_tos) == ("jöe@exämple.test", ["zoë@example.test"])


def test_aiosmtpd_lmtp_replies_per_recipient(aiosmtpd_server: AiosmtpdFactory) -> None:
    """In LMTP mode DATA gets one reply per accepted recipient, some made to fail."""
    server = aiosmtpd_server(
        lmtp=True, lmtp_data_replies={"full@example.com": "452 4.2.2 Mailbox full"}
    )
    with smtplib.LMTP(server.host, server.port, timeout=GUARD_SECONDS) as client:
        client.ehlo_or_helo_if_needed()
        client.mail("a@example.com")
        client.rcpt("ok@example.com")
        client.rcpt("full@example.com")
        replies = lmtp_data(client, MESSAGE, 2)
    assert replies == [
        (250, b"2.0.0 <ok@example.com> Ok"),
        (452, b"4.2.2 Mailbox full"),
    ]
    [envelope] = server.envelopes
    assert envelope.rcpt_tos == ["ok@example.com", "full@example.com"]
    assert envelope.content == MESSAGE


# -- dovecot -----------------------------------------------------------------------------


def test_dovecot_lmtp_tcp(dovecot_lmtp: DovecotLmtp) -> None:
    """Over TCP: unknown users fail at RCPT, ``broken`` after DATA, the rest are saved."""
    with smtplib.LMTP(dovecot_lmtp.host, dovecot_lmtp.port, timeout=GUARD_SECONDS) as client:
        client.ehlo_or_helo_if_needed()
        client.mail("sender@example.com")
        assert client.rcpt("alice@example.com")[0] == 250
        assert client.rcpt("Bob@Example.COM")[0] == 250
        assert client.rcpt("nosuch@example.com")[0] == 550
        assert client.rcpt("broken@example.com")[0] == 250
        codes = [code for code, _ in lmtp_data(client, MESSAGE, 3)]
    assert codes == [250, 250, 451]
    [alice] = dovecot_lmtp.messages("alice")
    [bob] = dovecot_lmtp.messages("bob")
    assert b"Return-Path: <sender@example.com>" in alice
    assert alice.endswith(MESSAGE.replace(b"\r\n", b"\n"))
    assert bob.endswith(MESSAGE.replace(b"\r\n", b"\n"))


def test_dovecot_lmtp_unix_socket(dovecot_lmtp: DovecotLmtp) -> None:
    """Over the unix socket; alice's mailbox holds only this test's message."""
    with smtplib.LMTP(dovecot_lmtp.socket_path, timeout=GUARD_SECONDS) as client:
        refused = client.sendmail("sender@example.com", ["alice"], b"Subject: unix\r\n\r\nhi\r\n")
    assert refused == {}
    [message] = dovecot_lmtp.messages("alice")
    assert message.endswith(b"Subject: unix\n\nhi\n")
    assert dovecot_lmtp.messages("bob") == []


def test_dovecot_lda_exit_codes(dovecot_lda: DovecotLda) -> None:
    """Delivered: 0; unknown user: 67 (EX_NOUSER); unwritable home: 75 (EX_TEMPFAIL)."""
    delivered = dovecot_lda.run("alice", "sender@example.com", MESSAGE)
    assert delivered.returncode == 0, delivered.stderr
    assert dovecot_lda.run("nosuch", "sender@example.com", MESSAGE).returncode == 67
    assert dovecot_lda.run("broken", "sender@example.com", MESSAGE).returncode == 75
    [message] = dovecot_lda.messages("alice")
    assert message.endswith(MESSAGE.replace(b"\r\n", b"\n"))


# -- maildrop ----------------------------------------------------------------------------


def test_maildrop_delivers_into_maildir(maildrop_box: MaildropBox) -> None:
    """The default filter stores the message unchanged."""
    result = maildrop_box.run(MESSAGE, "sender@example.com")
    assert result.returncode == 0, result.stderr
    assert maildrop_box.messages() == [MESSAGE]


def test_maildrop_exit_codes(maildrop_box: MaildropBox) -> None:
    """A missing box gives 75 (EX_TEMPFAIL); a filter can choose 77 (EX_NOPERM)."""
    missing = maildrop_box.run(MESSAGE, "s@example.com", maildrop_box.missing_box_filter())
    assert missing.returncode == 75
    chosen = maildrop_box.run(MESSAGE, "s@example.com", maildrop_box.exit_filter(77))
    assert chosen.returncode == 77
    assert maildrop_box.messages() == []


# -- wsgi --------------------------------------------------------------------------------


def test_wsgi_server_records_and_counts_connections(wsgi_server: WsgiFactory) -> None:
    """Requests are recorded with repeated headers; keep-alive reuse is one connection."""
    server = wsgi_server()
    connection = gevent_http_connection(server)
    try:
        for number in range(2):
            connection.putrequest("POST", f"/relay?n={number}")
            connection.putheader("X-Envelope-Recipient", "a@example.com")
            connection.putheader("X-Envelope-Recipient", "b@example.com")
            connection.putheader("Content-Length", str(len(MESSAGE)))
            connection.endheaders(MESSAGE)
            response = connection.getresponse()
            assert response.status == 200
            assert response.getheader("X-Smtp-Reply") == '250; message="2.0.0 Ok"'
            response.read()
    finally:
        connection.close()
    second = gevent_http_connection(server)
    try:
        second.request("GET", "/")
        second.getresponse().read()
    finally:
        second.close()
    assert server.connection_count == 2
    first = server.requests[0]
    assert (first.method, first.path, first.query, first.body) == ("POST", "/relay", "n=0", MESSAGE)
    assert first.header_all("x-envelope-recipient") == ["a@example.com", "b@example.com"]
    assert [request.client_address for request in server.requests[:2]] == [
        server.connections[0]
    ] * 2


def test_wsgi_server_tls_and_custom_app(wsgi_server: WsgiFactory, tls_cert: TlsCert) -> None:
    """A custom app answers over HTTPS; the request is still recorded."""

    def app(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
        start_response("503 Service Unavailable", [("Retry-After", "1")])
        return [b"busy"]

    server = wsgi_server(app, tls=True)
    connection = gevent_http_connection(server, tls_cert)
    try:
        with gevent.Timeout(GUARD_SECONDS):
            connection.request("POST", "/", body=b"payload")
            response = connection.getresponse()
            body = response.read()
    finally:
        connection.close()
    assert (response.status, response.getheader("Retry-After"), body) == (503, "1", b"busy")
    assert [request.body for request in server.requests] == [b"payload"]


def test_wsgi_server_raw_http10(wsgi_server: WsgiFactory) -> None:
    """A bare HTTP/1.0 request over a gevent socket gets the default answer, then EOF."""
    server = wsgi_server()
    sock = gevent.socket.create_connection(server.address, timeout=GUARD_SECONDS)
    try:
        sock.sendall(b"GET /raw HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    finally:
        sock.close()
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert [request.path for request in server.requests] == ["/raw"]
