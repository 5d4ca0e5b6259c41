"""slimta.smtp.client.Client against a real server: aiosmtpd in a thread on loopback.

The unit tests drive the client against a scripted peer byte by byte; these
check that the same commands work with an independent server implementation,
and assert what that server recorded (the envelope, the TLS state, the AUTH
attempts), not only the replies the client saw.
"""

from __future__ import annotations

import gevent
import gevent.socket
from support.aiosmtpd_server import AiosmtpdFactory
from support.tls import TlsCert
from support.util import GUARD_SECONDS

from slimta.smtp.client import Client


def test_starttls_auth_and_a_pipelined_transaction(
    aiosmtpd_server: AiosmtpdFactory, tls_cert: TlsCert
) -> None:
    server = aiosmtpd_server(starttls=True, auth=("user", "pw"), reject_rcpt=["bad@example.com"])
    sock = gevent.socket.create_connection(server.address)
    client = Client(sock, ("localhost", server.port))
    try:
        with gevent.Timeout(GUARD_SECONDS):
            assert client.get_banner().code == "220"
            assert client.ehlo("client.example").code == "250"
            assert client.starttls(tls_cert.stdlib_client_context()).code == "220"
            assert client.ehlo("client.example").code == "250"
            assert client.auth("user", "pw").code == "235"
            mail = client.mailfrom("s@example.com", data_size=20)
            good = client.rcptto("good@example.com")
            bad = client.rcptto("bad@example.com")
            assert client.data().code == "354"
            assert (mail.code, good.code, bad.code) == ("250", "250", "550")
            sent = client.send_data(b"Subject: t\r\n\r\n", b".hi\nthere")
            client.flush()
            assert sent.code == "250"
            assert client.quit().code == "221"
    finally:
        client.io.close()
    [envelope] = server.envelopes
    assert envelope.tls and envelope.auth_login == "user"
    assert envelope.rcpt_tos == ["good@example.com"]
    assert envelope.content == b"Subject: t\r\n\r\n.hi\r\nthere\r\n"


def test_login_and_plain_over_cleartext_when_allowed(aiosmtpd_server: AiosmtpdFactory) -> None:
    """LOGIN and PLAIN against a real server (cleartext explicitly allowed)."""
    server = aiosmtpd_server(auth=("user", "pw"), auth_require_tls=False)
    for mechanism, password, code in (("LOGIN", "pw", "235"), ("PLAIN", "nope", "535")):
        sock = gevent.socket.create_connection(server.address)
        client = Client(sock, server.address)
        try:
            with gevent.Timeout(GUARD_SECONDS):
                client.get_banner()
                client.ehlo("client.example")
                reply = client.auth("user", password, mechanism=mechanism, allow_insecure=True)
                assert reply.code == code
                client.quit()
        finally:
            client.io.close()
    assert [(a.mechanism, a.success) for a in server.auth_attempts] == [
        ("LOGIN", True),
        ("PLAIN", False),
    ]
