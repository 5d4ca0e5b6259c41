"""Python's smtplib against SmtpEdge → Queue(DictStorage): what test_edge_mta.py leaves out.

That file covers a plain ``sendmail`` with a refused recipient, ``login()`` after
STARTTLS and a wrong password. Here: STARTTLS without AUTH, implicit TLS
(``SMTP_SSL``), AUTH PLAIN with and without an initial response and AUTH LOGIN
driven one mechanism at a time, an authorisation identity, a submission validator
that refuses MAIL before AUTH, SMTPUTF8 addresses with an 8-bit body, ``SIZE``,
HELO-only sessions, and several transactions (with RSET and NOOP) on one
connection. smtplib is blocking, so it runs in a real thread while the hub serves
the edge.
"""

from __future__ import annotations

import base64
import smtplib
import ssl
from typing import Any

import gevent
import pytest
import support.smtp_edge
from support.smtp_edge import PASSWORD, USER, UserPassValidators
from support.util import GUARD_SECONDS

from slimta.smtp.reply import Reply

#: The fixture (not registered suite-wide by support.servers).
smtp_edge = support.smtp_edge.smtp_edge

CLIENT = "client.src.test"
MESSAGE = b"From: a@src.test\r\nTo: b@dst.test\r\nSubject: smtplib\r\n\r\nHi.\r\n.dot\r\n"
UTF8_MESSAGE = (
    "From: Jösé <jösé@src.test>\r\nTo: ümlaut@dst.test\r\nSubject: Grüße\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n\r\nHallo, wie geht's? 日本語\r\n"
).encode()


def in_thread(func: Any, *args: Any) -> Any:
    """Run blocking stdlib code in a real thread while the hub serves the edge."""
    return gevent.get_hub().threadpool.apply(func, args)


def stored_bytes(env: Any) -> bytes:
    return b"".join(env.flatten())


class SubmissionValidators(UserPassValidators):
    """A submission port: MAIL only after AUTH; remembers every AUTH attempt."""

    attempts: list[tuple[str, str]] = []

    def handle_auth(self, reply: Reply, creds: Any) -> None:
        self.attempts.append((creds.authcid, creds.authzid))
        super().handle_auth(reply, creds)
        if reply.code == "235" and creds.authzid not in (creds.authcid, "alias@example.test"):
            reply.code = "535"
            reply.message = "5.7.8 Not allowed to act as that identity"

    def handle_mail(self, reply: Reply, sender: str, params: Any) -> None:
        if not self.session.auth:
            reply.code = "530"
            reply.message = "5.7.0 Authentication required"


@pytest.fixture
def submission(smtp_edge: Any, tls_cert: Any) -> Any:
    SubmissionValidators.attempts = []
    return smtp_edge(
        auth=True, context=tls_cert.gevent_server_context(), validator_class=SubmissionValidators
    )


def tls_client(address: tuple[str, int], tls_cert: Any) -> smtplib.SMTP:
    client = smtplib.SMTP(*address, timeout=GUARD_SECONDS)
    client.ehlo(CLIENT)
    client.starttls(context=tls_cert.stdlib_client_context())
    client.ehlo(CLIENT)
    return client


def test_starttls_without_auth(smtp_edge: Any, tls_cert: Any) -> None:
    edge = smtp_edge(context=tls_cert.gevent_server_context())

    def send() -> Any:
        with tls_client(edge.address, tls_cert) as client:
            assert isinstance(client.sock, ssl.SSLSocket)
            assert not client.has_extn("starttls")  # offered once only
            return client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)

    assert in_thread(send) == {}
    (env,) = edge.stored()
    assert env.client["protocol"] == "ESMTPS"
    assert env.client["auth"] is None
    assert stored_bytes(env) == MESSAGE


def test_implicit_tls(smtp_edge: Any, tls_cert: Any) -> None:
    edge = smtp_edge(context=tls_cert.gevent_server_context(), tls_immediately=True, auth=True)

    def send() -> Any:
        context = tls_cert.stdlib_client_context()
        with smtplib.SMTP_SSL(*edge.address, timeout=GUARD_SECONDS, context=context) as client:
            client.ehlo(CLIENT)
            assert not client.has_extn("starttls")
            assert client.has_extn("auth")  # already encrypted
            client.login(USER, PASSWORD)
            return client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)

    assert in_thread(send) == {}
    (env,) = edge.stored()
    assert env.client["protocol"] == "ESMTPSA"
    assert stored_bytes(env) == MESSAGE


@pytest.mark.parametrize("initial_response", [True, False], ids=["initial", "challenge"])
def test_auth_plain(submission: Any, tls_cert: Any, initial_response: bool) -> None:
    def send() -> Any:
        with tls_client(submission.address, tls_cert) as client:
            client.user, client.password = USER, PASSWORD
            code, text = client.auth(
                "PLAIN", client.auth_plain, initial_response_ok=initial_response
            )
            assert (code, text) == (235, b"2.7.0 Authentication successful")
            return client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)

    assert in_thread(send) == {}
    assert SubmissionValidators.attempts == [(USER, USER)]
    (env,) = submission.stored()
    assert env.client["auth"] == (USER, USER)
    assert env.client["protocol"] == "ESMTPSA"


def test_auth_login(submission: Any, tls_cert: Any) -> None:
    def send() -> Any:
        with tls_client(submission.address, tls_cert) as client:
            client.user, client.password = USER, PASSWORD
            code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
            assert code == 235
            return client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)

    assert in_thread(send) == {}
    (env,) = submission.stored()
    assert env.client["auth"] == (USER, USER)


@pytest.mark.parametrize(
    ("authzid", "code"), [("alias@example.test", 235), ("root@example.test", 535)]
)
def test_auth_plain_with_an_authorization_identity(
    submission: Any, tls_cert: Any, authzid: str, code: int
) -> None:
    def authenticate() -> Any:
        with tls_client(submission.address, tls_cert) as client:
            token = base64.b64encode(f"{authzid}\0{USER}\0{PASSWORD}".encode()).decode()
            got = client.docmd("AUTH", "PLAIN " + token)[0]
            if got == 235:
                client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)
            return got

    assert in_thread(authenticate) == code
    assert SubmissionValidators.attempts == [(USER, authzid)]
    if code == 235:
        (env,) = submission.stored()
        assert env.client["auth"] == (USER, authzid)
    else:
        assert submission.stored() == []


def test_mail_before_auth_is_refused(submission: Any, tls_cert: Any) -> None:
    def send() -> None:
        with tls_client(submission.address, tls_cert) as client:
            client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)

    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        in_thread(send)
    assert (info.value.smtp_code, info.value.smtp_error) == (530, b"5.7.0 Authentication required")
    assert submission.stored() == []


def test_auth_in_clear_is_not_possible(submission: Any) -> None:
    def login() -> None:
        with smtplib.SMTP(*submission.address, timeout=GUARD_SECONDS) as client:
            client.ehlo(CLIENT)
            client.login(USER, PASSWORD)

    with pytest.raises(smtplib.SMTPNotSupportedError):
        in_thread(login)
    assert SubmissionValidators.attempts == []


def test_smtputf8_addresses_and_8bit_body(smtp_edge: Any) -> None:
    edge = smtp_edge()

    def send() -> Any:
        with smtplib.SMTP(*edge.address, timeout=GUARD_SECONDS) as client:
            client.ehlo(CLIENT)
            assert client.has_extn("smtputf8") and client.has_extn("8bitmime")
            return client.sendmail(
                "jösé@src.test",
                ["ümlaut@dst.test", "日本@dst.test"],
                UTF8_MESSAGE,
                mail_options=["SMTPUTF8", "BODY=8BITMIME"],
            )

    assert in_thread(send) == {}
    (env,) = edge.stored()
    assert env.sender == "jösé@src.test"
    assert env.recipients == ["ümlaut@dst.test", "日本@dst.test"]
    assert stored_bytes(env) == UTF8_MESSAGE


def test_size_declared_too_big_is_refused_at_mail(smtp_edge: Any) -> None:
    edge = smtp_edge(max_size=1000)
    big = MESSAGE + b"x" * 998 + b"\r\n"

    def send() -> Any:
        with smtplib.SMTP(*edge.address, timeout=GUARD_SECONDS) as client:
            client.ehlo(CLIENT)
            assert client.esmtp_features["size"] == "1000"
            try:
                # smtplib declares SIZE=len(message) since the edge advertises SIZE.
                client.sendmail("a@src.test", ["b@dst.test"], big)
            except smtplib.SMTPSenderRefused as exc:
                refused = (exc.smtp_code, exc.smtp_error)
            else:
                raise AssertionError("the big message was accepted")
            # The session goes on: a small one still gets through.
            return refused, client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)

    refused, second = in_thread(send)
    assert refused == (552, b"5.3.4 Message size exceeds 1000 limit")
    assert second == {}
    (env,) = edge.stored()
    assert stored_bytes(env) == MESSAGE


def test_helo_only_session(smtp_edge: Any) -> None:
    edge = smtp_edge()

    def send() -> Any:
        with smtplib.SMTP(*edge.address, timeout=GUARD_SECONDS) as client:
            code, _ = client.helo(CLIENT)
            assert code == 250 and not client.does_esmtp
            return client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)

    assert in_thread(send) == {}
    (env,) = edge.stored()
    assert env.client["protocol"] == "SMTP"
    assert env.client["name"] == CLIENT
    assert stored_bytes(env) == MESSAGE


def test_several_transactions_rset_and_noop(smtp_edge: Any) -> None:
    edge = smtp_edge()

    def send() -> list[Any]:
        with smtplib.SMTP(*edge.address, timeout=GUARD_SECONDS) as client:
            client.ehlo(CLIENT)
            results = []
            for index in range(3):
                data = MESSAGE.replace(b"Hi.", b"Message %d." % index)
                results.append(client.sendmail(f"s{index}@src.test", [f"r{index}@dst.test"], data))
            # A transaction abandoned with RSET leaves nothing behind.
            assert client.mail("dropped@src.test")[0] == 250
            assert client.rcpt("dropped@dst.test")[0] == 250
            assert client.rset()[0] == 250
            assert client.noop()[0] == 250
            # DATA without a transaction is a bad sequence.
            assert client.docmd("DATA")[0] == 503
            return results

    assert in_thread(send) == [{}, {}, {}]
    envs = sorted(edge.stored(), key=lambda env: env.sender)
    assert [(env.sender, env.recipients) for env in envs] == [
        (f"s{index}@src.test", [f"r{index}@dst.test"]) for index in range(3)
    ]
    for index, env in enumerate(envs):
        assert stored_bytes(env) == MESSAGE.replace(b"Hi.", b"Message %d." % index)
