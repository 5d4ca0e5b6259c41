"""slimta.smtp.server.Server over a socket pair: exact bytes in, replies and hook calls out."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from gevent import socket as gsocket
from support.smtp_wire import Wire
from support.smuggling import SMUGGLED, SMUGGLING_VARIANTS
from support.util import GUARD_SECONDS

from slimta.smtp import ConnectionLost, MessageTooBig
from slimta.smtp._server_core import BadDataError
from slimta.smtp.auth import ServerAuth
from slimta.smtp.reply import Reply
from slimta.smtp.server import Server

CLIENT = ("192.0.2.7", 40000)


class Recorder:
    """Handlers that record every call; ``AUTH`` accepts user/pass."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.messages: list[bytes] = []
        self.errors: list[Exception] = []

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def BANNER_(self, reply: Reply) -> None:  # noqa: N802
        self._record("BANNER_")

    def EHLO(self, reply: Reply, ehlo_as: str) -> None:  # noqa: N802
        self._record("EHLO", ehlo_as)

    def MAIL(self, reply: Reply, address: str, params: dict[bytes, Any]) -> None:  # noqa: N802
        self._record("MAIL", address, params)

    def RCPT(self, reply: Reply, address: str, params: dict[bytes, Any]) -> None:  # noqa: N802
        self._record("RCPT", address, params)
        if address.startswith("bad"):
            reply.code = "550"
            reply.message = "5.1.1 No such user"

    def HAVE_DATA(self, reply: Reply, data: bytes | None, err: Exception | None) -> None:  # noqa: N802
        self._record("HAVE_DATA")
        if err is not None:
            self.errors.append(err)
        else:
            assert data is not None
            self.messages.append(data)

    def AUTH(self, reply: Reply, creds: Any) -> None:  # noqa: N802
        self._record("AUTH", creds.authcid)
        if not creds.check_secret("pass"):
            reply.code = "535"
            reply.message = "5.7.8 Authentication credentials invalid"

    def CLOSE(self) -> None:  # noqa: N802
        self._record("CLOSE")

    def XYZZY(self, reply: Reply, arg: bytes | None, server: Server) -> None:  # noqa: N802
        self._record("XYZZY", arg)
        reply.code = "250"
        reply.message = "2.0.0 Nothing happens"


class Session:
    def __init__(self, wire: Wire, recorder: Recorder, server: Server, greenlet: Any) -> None:
        self.wire = wire
        self.recorder = recorder
        self.server = server
        self.greenlet = greenlet

    def outcome(self) -> Any:
        """Wait for the server to end; the exception it ended with, or None."""
        self.greenlet.join(GUARD_SECONDS)
        assert self.greenlet.ready()
        return self.greenlet.exception


SessionFactory = Callable[..., Session]


@pytest.fixture
def session() -> Iterator[SessionFactory]:
    made: list[Session] = []

    def start(size: int | None = None, recorder: Recorder | None = None, **kwargs: Any) -> Session:
        ours, theirs = gsocket.socketpair()
        recorder = recorder or Recorder()
        kwargs.setdefault("auth_failure_base_delay", 0.0)
        server = Server(ours, recorder, CLIENT, **kwargs)
        if size:
            server.extensions.add("SIZE", str(size))

        def run() -> None:
            try:
                server.handle()
            finally:
                server.io.close()

        greenlet = gevent.spawn(run)
        wire = Wire(theirs)
        made.append(Session(wire, recorder, server, greenlet))
        return made[-1]

    yield start
    for item in made:
        item.wire.close()
        item.greenlet.kill()


def greet(s: Session) -> list[str]:
    s.wire.send(b"EHLO client.test\r\n")
    banner, ehlo = s.wire.replies(2)
    assert banner[0] == "220"
    assert ehlo[0] == "250"
    return ehlo[1].split("\r\n")


# -- basics ------------------------------------------------------------------------------


def test_ehlo_extensions_and_a_message(session: SessionFactory) -> None:
    s = session(size=1000)
    lines = greet(s)
    assert lines[0] == "Hello client.test"
    assert set(lines[1:]) == {
        "8BITMIME",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "SIZE 1000",
    }
    s.wire.send(b"MAIL FROM:<a@example.test> SIZE=20 BODY=8BITMIME\r\n")
    assert s.wire.reply() == ("250", "2.1.0 Sender <a@example.test> Ok")
    s.wire.send(b"RCPT TO:<b@example.test>\r\n")
    assert s.wire.reply() == ("250", "2.1.5 Recipient <b@example.test> Ok")
    s.wire.send(b"DATA\r\n")
    assert s.wire.reply()[0] == "354"
    s.wire.send(b"Subject: x\r\n\r\n..dot\r\n.\r\n")
    assert s.wire.reply() == ("250", "2.6.0 Message accepted for delivery")
    s.wire.send(b"QUIT\r\n")
    assert s.wire.reply() == ("221", "2.0.0 Bye")
    assert s.outcome() is None
    assert s.recorder.messages == [b"Subject: x\r\n\r\n.dot\r\n"]
    mail = s.recorder.calls[2]
    assert mail == ("MAIL", ("a@example.test", {b"SIZE": b"20", b"BODY": b"8BITMIME"}))
    assert s.recorder.names()[-1] == "CLOSE"


def test_everything_pipelined_in_one_write(session: SessionFactory) -> None:
    s = session()
    s.wire.send(
        b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<bad@x.test>\r\n"
        b"RCPT TO:<c@x.test>\r\nDATA\r\n"
    )
    assert s.wire.codes(7) == ["220", "250", "250", "250", "550", "250", "354"]
    s.wire.send(b"one\r\n.\r\nMAIL FROM:<d@x.test>\r\nRCPT TO:<e@x.test>\r\nDATA\r\n")
    assert s.wire.codes(4) == ["250", "250", "250", "354"]
    s.wire.send(b"two\r\n.\r\nQUIT\r\n")
    assert s.wire.codes(2) == ["250", "221"]
    assert s.recorder.messages == [b"one\r\n", b"two\r\n"]


class CountingSocket:
    """Wraps the server's socket and counts its writes."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.writes: list[bytes] = []

    def send(self, data: Any) -> int:
        self.writes.append(bytes(data))
        return int(self.sock.send(data))

    def sendall(self, data: Any) -> None:
        self.writes.append(bytes(data))
        self.sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_a_pipelined_batch_is_answered_in_one_write(session: SessionFactory) -> None:
    s = session()
    counting = CountingSocket(s.server.io.socket)
    s.server.io.socket = counting
    # Written before the server first runs: it reads the whole batch at once.
    s.wire.send(
        b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n"
        b"RCPT TO:<c@x.test>\r\nDATA\r\n"
    )
    assert s.wire.codes(6) == ["220", "250", "250", "250", "250", "354"]
    # The banner went out before the first read; the five replies in one write.
    assert len(counting.writes) == 2
    assert counting.writes[0].startswith(b"220 ")
    assert [line[:3] for line in counting.writes[1].split(b"\r\n")[:-1]][-4:] == [
        b"250", b"250", b"250", b"354"]
    s.wire.send(b"x\r\n.\r\nQUIT\r\n")
    assert s.wire.codes(2) == ["250", "221"]
    assert len(counting.writes) == 3  # 250 and 221 together
    assert s.outcome() is None


def test_timeouts_are_not_rebuilt_per_command(
    session: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One native timer armed per session, however many commands; no Timeout built."""
    import slimta.util.timer as timer_module

    made: list[Any] = []
    armed: list[float] = []
    real_arm = timer_module.SessionDeadline._arm

    def counting_arm(self: Any, delay: float, fires_at: float) -> None:
        armed.append(delay)
        real_arm(self, delay, fires_at)

    class CountingTimeout(gevent.Timeout):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(timer_module, "Timeout", CountingTimeout)
    monkeypatch.setattr(timer_module.SessionDeadline, "_arm", counting_arm)
    s = session()
    s.wire.send(b"EHLO c.test\r\n")
    assert s.wire.codes(2) == ["220", "250"]
    for index in range(5):
        s.wire.send(b"MAIL FROM:<a@x.test>\r\n")
        assert s.wire.codes(1) == ["250"]
        s.wire.send(b"RCPT TO:<b@x.test>\r\n")
        assert s.wire.codes(1) == ["250"]
        s.wire.send(b"DATA\r\n")
        assert s.wire.codes(1) == ["354"]
        s.wire.send(b"m%d\r\n.\r\n" % index)
        assert s.wire.codes(1) == ["250"]
    s.wire.send(b"QUIT\r\n")
    assert s.wire.codes(1) == ["221"]
    assert s.outcome() is None
    assert len(s.recorder.messages) == 5
    assert made == []
    # Armed for the first command wait; the data waits (600 s) end later than
    # the armed timer, so they only move the deadline.
    assert len(armed) == 1


def test_sequence_errors(session: SessionFactory) -> None:
    s = session()
    s.wire.send(
        b"MAIL FROM:<a@x>\r\nHELO\r\nEHLO c\r\nRCPT TO:<b@x>\r\nDATA\r\n"
        b"MAIL FROM:<a@x>\r\nDATA\r\nMAIL FROM:<a@x>\r\nRSET\r\nDATA x\r\nQUIT now\r\n"
    )
    assert s.wire.codes(12) == [
        "220",
        "503",
        "501",
        "250",
        "503",
        "503",
        "250",
        "554",
        "503",
        "250",
        "501",
        "501",
    ]


@pytest.mark.parametrize(
    "line, code",
    [
        (b"MAIL FROM:<a@x> SIZE=abc\r\n", "501"),
        (b"MAIL FROM:<a@x> BODY=BINARYMIME\r\n", "501"),
        (b"MAIL FROM:<a@x> SMTPUTF8=yes\r\n", "501"),
        (b"MAIL FROM:<a@x> RET=HDRS\r\n", "555"),
        (b"MAIL FROM:<a@x> SIZE=10\r\n", "504"),
        (b"MAIL FROM:a@x\r\n", "501"),
        (b"MAIL FROM:<a\xff@x>\r\n", "501"),
        (b"MAIL FROM:<a@x> SMTPUTF8\r\n", "250"),
        ("MAIL FROM:<ü@é.test> SMTPUTF8\r\n".encode(), "250"),
    ],
)
def test_mail_parameters(session: SessionFactory, line: bytes, code: str) -> None:
    s = session()
    greet(s)
    s.wire.send(line)
    assert s.wire.reply()[0] == code


def test_rcpt_unknown_parameter(session: SessionFactory) -> None:
    s = session()
    greet(s)
    s.wire.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x> NOTIFY=NEVER\r\n")
    assert s.wire.codes(2) == ["250", "555"]


def test_unknown_and_custom_commands(session: SessionFactory) -> None:
    s = session()
    greet(s)
    s.wire.send(b"VRFY x\r\nXYZZY plugh\r\nCLOSE\r\nHAVE\r\n123 x\r\n\r\nNOOP\r\n")
    codes = s.wire.replies(7)
    assert [c for c, _ in codes] == ["500", "250", "500", "500", "500", "500", "250"]
    assert ("XYZZY", (b"plugh",)) in s.recorder.calls
    assert "CLOSE" not in s.recorder.names()


def test_too_long_command_line(session: SessionFactory) -> None:
    s = session()
    greet(s)
    s.wire.send(b"NOOP " + b"a" * 100000 + b"\r\nNOOP\r\n")
    assert s.wire.replies(2) == [("500", "5.5.2 Line too long"), ("250", "2.0.0 Ok")]


def test_bare_cr_in_command(session: SessionFactory) -> None:
    s = session()
    greet(s)
    s.wire.send(b"MAIL FROM:<a@x>\rRCPT TO:<b@x>\r\n")
    assert s.wire.reply()[0] == "500"
    assert "MAIL" not in s.recorder.names()


def test_client_gone_mid_data_raises_connection_lost(session: SessionFactory) -> None:
    s = session()
    greet(s)
    s.wire.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
    assert s.wire.codes(3) == ["250", "250", "354"]
    s.wire.send(b"Subject: half\r\n\r\nno end")
    s.wire.close()
    assert isinstance(s.outcome(), ConnectionLost)
    assert "HAVE_DATA" not in s.recorder.names()


def test_command_timeout(session: SessionFactory) -> None:
    s = session(command_timeout=0.2)
    greet(s)
    assert s.wire.rest() == b"\r\n421 4.4.2 Connection timed out\r\n"
    assert isinstance(s.outcome(), ConnectionLost)


def test_data_timeout_is_cumulative(session: SessionFactory) -> None:
    s = session(command_timeout=5, data_timeout=0.3)
    greet(s)
    s.wire.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
    assert s.wire.codes(3) == ["250", "250", "354"]
    s.wire.send(b"trickle\r\n")
    assert s.wire.rest() == b"\r\n421 4.4.2 Connection timed out\r\n"
    assert isinstance(s.outcome(), ConnectionLost)


# -- size ---------------------------------------------------------------------------------


def test_size_refused_at_mail(session: SessionFactory) -> None:
    s = session(size=100)
    greet(s)
    s.wire.send(b"MAIL FROM:<a@x> SIZE=101\r\nMAIL FROM:<a@x> SIZE=100\r\n")
    assert s.wire.replies(2) == [
        ("552", "5.3.4 Message size exceeds 100 limit"),
        ("250", "2.1.0 Sender <a@x> Ok"),
    ]


def test_oversized_data_is_refused_after_the_end_and_the_session_goes_on(
    session: SessionFactory,
) -> None:
    s = session(size=100)
    greet(s)
    s.wire.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
    assert s.wire.codes(3) == ["250", "250", "354"]
    for _ in range(50):
        s.wire.send(b"x" * 1000 + b"\r\nMAIL FROM:<smuggled@x>\r\n")
    s.wire.send(b".\r\nNOOP\r\n")
    assert s.wire.replies(2) == [
        ("552", "5.3.4 Message size exceeds 100 limit"),
        ("250", "2.0.0 Ok"),
    ]
    assert len(s.recorder.errors) == 1 and isinstance(s.recorder.errors[0], MessageTooBig)
    assert [n for n in s.recorder.names() if n == "MAIL"] == ["MAIL"]


# -- smuggling ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", SMUGGLING_VARIANTS, ids=repr)
def test_smuggling_variant_gives_one_message(session: SessionFactory, variant: bytes) -> None:
    s = session()
    greet(s)
    s.wire.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
    assert s.wire.codes(3) == ["250", "250", "354"]
    s.wire.send(b"Subject: one\r\n\r\nbody" + variant + SMUGGLED + b".\r\nQUIT\r\n")
    assert s.wire.codes(2) == ["250", "221"]
    assert len(s.recorder.messages) == 1
    assert s.recorder.names().count("MAIL") == 1
    message = s.recorder.messages[0]
    assert message.count(b"\r") == message.count(b"\n") == message.count(b"\r\n")


def test_bare_newline_reject_policy(session: SessionFactory) -> None:
    s = session(bare_newline="reject")
    greet(s)
    s.wire.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
    assert s.wire.codes(3) == ["250", "250", "354"]
    s.wire.send(b"a\n.\nMAIL FROM:<e@x>\r\n.\r\nNOOP\r\n")
    assert s.wire.codes(2) == ["550", "250"]
    assert isinstance(s.recorder.errors[0], BadDataError)


# -- STARTTLS --------------------------------------------------------------------------------


def test_starttls_discards_cleartext_pipelined_after_it(
    session: SessionFactory, tls_cert: Any
) -> None:
    s = session(context=tls_cert.gevent_server_context(), auth=True)
    lines = greet(s)
    assert "STARTTLS" in lines
    assert not any(line.startswith("AUTH") for line in lines)
    s.wire.send(b"STARTTLS\r\nMAIL FROM:<injected@x>\r\nRCPT TO:<b@x>\r\n")
    assert s.wire.reply() == ("220", "2.7.0 Go ahead")
    s.wire.starttls(tls_cert.client_context())
    s.wire.send(b"MAIL FROM:<a@x>\r\n")
    assert s.wire.reply()[0] == "503"  # EHLO again first; the injected MAIL never ran
    s.wire.send(b"EHLO c\r\n")
    code, text = s.wire.reply()
    assert code == "250"
    assert "STARTTLS" not in text.split("\r\n")
    assert "AUTH PLAIN LOGIN" in text.split("\r\n")
    assert s.server.encrypted
    assert "MAIL" not in s.recorder.names()


def test_starttls_not_offered_without_context(session: SessionFactory) -> None:
    s = session()
    greet(s)
    s.wire.send(b"STARTTLS\r\n")
    assert s.wire.reply()[0] == "500"


def test_tls_immediately(session: SessionFactory, tls_cert: Any) -> None:
    ours, theirs = gsocket.socketpair()
    recorder = Recorder()
    server = Server(
        ours, recorder, CLIENT, context=tls_cert.gevent_server_context(), tls_immediately=True
    )
    greenlet = gevent.spawn(server.handle)
    client = tls_cert.client_context().wrap_socket(theirs, server_hostname="localhost")
    wire = Wire(client)
    try:
        wire.send(b"EHLO c\r\n")
        banner, ehlo = wire.replies(2)
        assert banner[0] == "220"
        assert "STARTTLS" not in ehlo[1]
    finally:
        wire.close()
        greenlet.kill()
        server.io.close()


# -- AUTH ---------------------------------------------------------------------------------------


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_auth_hidden_and_refused_without_tls(session: SessionFactory) -> None:
    s = session(auth=True)
    lines = greet(s)
    assert not any(line.startswith("AUTH") for line in lines)
    s.wire.send(b"AUTH PLAIN " + b64(b"\0user\0pass") + b"\r\n")
    assert s.wire.reply()[0] == "538"
    assert "AUTH" not in s.recorder.names()


def test_auth_plain_and_login(session: SessionFactory) -> None:
    s = session(auth=True, allow_insecure_auth=True)
    assert "AUTH PLAIN LOGIN" in greet(s)
    s.wire.send(b"AUTH PLAIN " + b64(b"\0user\0pass") + b"\r\n")
    assert s.wire.reply() == ("235", "2.7.0 Authentication successful")
    s.wire.send(b"AUTH LOGIN\r\n")
    assert s.wire.reply()[0] == "503"  # already authenticated

    t = session(auth=["LOGIN"], allow_insecure_auth=True)
    assert "AUTH LOGIN" in greet(t)
    t.wire.send(b"AUTH LOGIN\r\n")
    assert t.wire.reply() == ("334", b64(b"Username:").decode())
    t.wire.send(b64(b"user") + b"\r\n")
    assert t.wire.reply() == ("334", b64(b"Password:").decode())
    t.wire.send(b64(b"pass") + b"\r\n")
    assert t.wire.reply()[0] == "235"
    assert ("AUTH", ("user",)) in t.recorder.calls


def test_auth_login_with_initial_response_and_cancel(session: SessionFactory) -> None:
    s = session(auth=ServerAuth(["LOGIN"], allow_insecure=True))
    greet(s)
    s.wire.send(b"AUTH LOGIN " + b64(b"user") + b"\r\n")
    assert s.wire.reply()[0] == "334"
    s.wire.send(b"*\r\n")
    assert s.wire.reply() == ("501", "5.7.0 Authentication canceled by client")


def test_auth_cram_md5(session: SessionFactory) -> None:
    import hashlib
    import hmac

    s = session(auth=["CRAM-MD5"])
    assert "AUTH CRAM-MD5" in greet(s)  # not a cleartext mechanism: offered in clear
    s.wire.send(b"AUTH CRAM-MD5\r\n")
    code, text = s.wire.reply()
    assert code == "334"
    challenge = base64.b64decode(text)
    digest = hmac.new(b"pass", challenge, hashlib.md5).hexdigest().encode()
    s.wire.send(b64(b"user " + digest) + b"\r\n")
    assert s.wire.reply()[0] == "235"


@pytest.mark.parametrize(
    "line, code",
    [
        (b"AUTH\r\n", "504"),
        (b"AUTH GSSAPI\r\n", "504"),
        (b"AUTH PLAIN !!!\r\n", "501"),
        (b"AUTH PLAIN " + b64(b"only-one-part") + b"\r\n", "501"),
        (b"AUTH PLAIN " + b64(b"\0user\0wrong") + b"\r\n", "535"),
    ],
)
def test_auth_errors(session: SessionFactory, line: bytes, code: str) -> None:
    s = session(auth=True, allow_insecure_auth=True)
    greet(s)
    s.wire.send(line)
    assert s.wire.reply()[0] == code


def test_auth_without_handler_never_succeeds(session: SessionFactory) -> None:
    class NoAuth:
        pass

    s = session(recorder=NoAuth(), auth=True, allow_insecure_auth=True)  # type: ignore[arg-type]
    greet(s)
    s.wire.send(b"AUTH PLAIN " + b64(b"\0user\0pass") + b"\r\n")
    assert s.wire.reply()[0] == "535"


def test_failed_auth_is_slowed_then_disconnected(
    session: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    delays: list[float] = []
    monkeypatch.setattr("slimta.smtp.server.gevent.sleep", delays.append)
    s = session(
        auth=True, allow_insecure_auth=True, auth_failure_base_delay=1.0, max_auth_failures=4
    )
    greet(s)
    bad = b"AUTH PLAIN " + b64(b"\0user\0wrong") + b"\r\n"
    s.wire.send(bad * 4)
    assert s.wire.codes(4) == ["535", "535", "535", "421"]
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert s.wire.closed()


def test_credentials_never_logged(
    session: SessionFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    s = session(auth=True, allow_insecure_auth=True)
    greet(s)
    s.wire.send(b"AUTH PLAIN " + b64(b"\0user\0s3cr3t-pw") + b"\r\n")
    assert s.wire.reply()[0] == "535"
    s.wire.send(b"AUTH LOGIN\r\n")
    s.wire.reply()
    s.wire.send(b64(b"user") + b"\r\n")
    s.wire.reply()
    s.wire.send(b64(b"s3cr3t-pw") + b"\r\n")
    assert s.wire.reply()[0] == "535"
    s.wire.send(b"QUIT\r\n")
    s.wire.reply()
    s.outcome()
    text = caplog.text
    assert "recv" in text  # the socket logger did log the session
    assert "s3cr3t-pw" not in text
    assert b64(b"s3cr3t-pw").decode() not in text
    assert b64(b"\0user\0s3cr3t-pw").decode() not in text


# -- limits that python-slimta lacked ---------------------------------------------------------


def test_helo_keeps_the_size_limit(session: SessionFactory) -> None:
    s = session(size=100)
    s.wire.send(
        b"HELO client.test\r\nMAIL FROM:<a@x> SIZE=10\r\nMAIL FROM:<a@x>\r\n"
        b"RCPT TO:<b@x>\r\nDATA\r\n"
    )
    assert s.wire.codes(6) == ["220", "250", "555", "250", "250", "354"]
    s.wire.send(b"y" * 500 + b"\r\n.\r\n")
    assert s.wire.reply()[0] == "552"
    assert s.recorder.messages == []


def test_no_starttls_or_auth_after_helo(session: SessionFactory, tls_cert: Any) -> None:
    s = session(context=tls_cert.gevent_server_context(), auth=True, allow_insecure_auth=True)
    s.wire.send(b"HELO c\r\nSTARTTLS\r\nAUTH PLAIN " + b64(b"\0user\0pass") + b"\r\n")
    assert s.wire.codes(4) == ["220", "250", "503", "503"]
    assert "AUTH" not in s.recorder.names()


def test_too_many_errors_end_the_session(session: SessionFactory) -> None:
    s = session(max_errors=3)
    greet(s)
    s.wire.send(b"BOGUS\r\nRCPT TO:<a@x>\r\nBOGUS\r\nNOOP\r\n")
    assert s.wire.replies(3) == [
        ("500", "5.5.2 Syntax error, command unrecognized"),
        ("503", "5.5.1 Bad sequence of commands"),
        ("421", "4.7.0 Too many errors, closing connection"),
    ]
    assert s.wire.closed()


def test_auth_line_split_across_reads_is_not_logged(
    session: SessionFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    s = session(auth=True, allow_insecure_auth=True)
    greet(s)
    line = b"AUTH PLAIN " + b64(b"\0user\0s3cr3t-pw") + b"\r\n"
    s.wire.send(line[:2])
    gevent.idle()  # let the server read the first part on its own
    s.wire.send(line[2:])
    assert s.wire.reply()[0] == "535"
    assert b64(b"\0user\0s3cr3t-pw").decode()[4:] not in caplog.text


# -- when replies leave ---------------------------------------------------------------


class UnsentAtClose(Recorder):
    """Records how many reply bytes were still unsent when CLOSE ran."""

    server: Server

    def CLOSE(self) -> None:  # noqa: N802
        self._record("CLOSE", len(self.server.io.send_buffer))


def test_the_last_reply_is_sent_before_the_close_handler_runs(session: SessionFactory) -> None:
    recorder = UnsentAtClose()
    s = session(recorder=recorder)
    recorder.server = s.server
    s.wire.send(b"QUIT\r\n")
    assert s.wire.codes(2) == ["220", "221"]
    assert s.outcome() is None
    assert recorder.calls[-1] == ("CLOSE", (0,))


def test_the_close_handler_runs_when_the_last_reply_cannot_be_sent(
    session: SessionFactory,
) -> None:
    s = session()
    assert s.wire.codes(1) == ["220"]
    s.wire.send(b"QUIT\r\n")
    s.wire.close()  # gone before the 221
    assert isinstance(s.outcome(), ConnectionLost)
    assert s.recorder.names()[-1] == "CLOSE"


def test_a_lone_commands_reply_is_sent_before_the_bookkeeping_after_it(
    session: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    unsent: list[int] = []
    real = Server._reset_transaction

    def reset(self: Server) -> None:
        unsent.append(len(self.io.send_buffer))
        real(self)

    monkeypatch.setattr(Server, "_reset_transaction", reset)
    s = session()
    s.wire.send(b"HELO c.test\r\n")
    assert s.wire.codes(2) == ["220", "250"]
    # HELO resets the transaction after its reply: by then the reply was sent.
    assert unsent == [0]
    # Pipelined, the reply waits for the commands behind it, and goes with theirs.
    s.wire.send(b"HELO c.test\r\nNOOP\r\n")
    assert s.wire.codes(2) == ["250", "250"]
    assert unsent[1] > 0
