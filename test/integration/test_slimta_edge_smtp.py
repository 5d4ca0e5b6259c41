"""slimta.edge.smtp.SmtpEdge with a real Queue(DictStorage): replies, stored envelopes, limits."""

from __future__ import annotations

import base64
import errno
from typing import Any

import gevent
import pytest
import support.smtp_edge
from gevent.event import Event
from support.envelopes import record_splits
from support.smtp_edge import PASSWORD, USER, EdgeUnderTest, UserPassValidators, cooperative_wait
from support.smtp_wire import Wire, connect
from support.util import GUARD_SECONDS

from slimta.edge import Edge, EdgeServer
from slimta.edge.smtp import SmtpEdge, SmtpSession, SmtpValidators
from slimta.envelope import Envelope
from slimta.queue import QueueError
from slimta.queue.dict import DictStorage
from slimta.smtp.reply import Reply

#: The fixture (not registered suite-wide by support.servers).
smtp_edge = support.smtp_edge.smtp_edge

MESSAGE = b"From: a@src.test\r\nSubject: edge\r\n\r\nHello.\r\n..leading dot\r\n"


def send_message(
    wire: Wire,
    message: bytes = MESSAGE,
    rcpts: tuple[str, ...] = ("b@dst.test",),
    ehlo: bool = True,
) -> list[tuple[str, str]]:
    out = []
    if ehlo:
        wire.send(b"EHLO client.src.test\r\n")
        out += wire.replies(2)
    wire.send(
        b"MAIL FROM:<a@src.test>\r\n"
        + b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts)
        + b"DATA\r\n"
    )
    out += wire.replies(2 + len(rcpts))
    wire.send(message + b".\r\n")
    out.append(wire.reply())
    return out


def test_message_is_stored_with_its_envelope(smtp_edge: Any) -> None:
    e: EdgeUnderTest = smtp_edge()
    wire = connect(e.address)
    try:
        replies = send_message(wire, rcpts=("b@dst.test", "c@reject.test", "d@dst.test"))
        assert [c for c, _ in replies] == ["220", "250", "250", "250", "550", "250", "354", "250"]
        assert replies[-1] == ("250", "2.6.0 Message accepted for delivery")
        wire.send(b"QUIT\r\n")
        assert wire.reply()[0] == "221"
    finally:
        wire.close()
    (env,) = e.stored()
    assert env.sender == "a@src.test"
    assert env.recipients == ["b@dst.test", "d@dst.test"]
    assert env.receiver == "edge.example.test"
    assert env.client["ip"] == "127.0.0.1"
    assert env.client["name"] == "client.src.test"
    assert env.client["protocol"] == "ESMTP"
    assert env.client["auth"] is None
    header, body = env.flatten()
    assert header + body == MESSAGE.replace(b"\r\n..", b"\r\n.")


class GatedStorage(DictStorage):
    """write() waits until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = Event()
        self.release = Event()

    def write(self, envelope: Envelope, timestamp: float) -> str:
        self.entered.set()
        self.release.wait(GUARD_SECONDS)
        return super().write(envelope, timestamp)


def test_250_only_once_the_store_holds_the_message(smtp_edge: Any) -> None:
    storage = GatedStorage()
    e = smtp_edge(storage=storage)
    wire = connect(e.address)
    try:
        wire.send(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        assert wire.codes(5) == ["220", "250", "250", "250", "354"]
        wire.send(MESSAGE + b".\r\n")
        assert storage.entered.wait(GUARD_SECONDS)
        wire.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            wire.sock.recv(100)  # nothing yet: the store is still writing
        wire.sock.setblocking(True)
        wire.sock.settimeout(10)
        storage.release.set()
        assert wire.reply()[0] == "250"
        assert len(e.stored()) == 1
    finally:
        wire.close()


class FailingStorage(DictStorage):
    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    def write(self, envelope: Envelope, timestamp: float) -> str:
        raise self.exc


@pytest.mark.parametrize(
    "exc, reply",
    [
        (OSError(errno.ENOSPC, "No space left"), ("451", "4.3.0 Could not store the message")),
        (QueueError("full", reply=Reply("452", "4.3.1 Queue full")), ("452", "4.3.1 Queue full")),
    ],
)
def test_store_failure_is_a_transient_reply(
    smtp_edge: Any, exc: Exception, reply: tuple[str, str]
) -> None:
    e = smtp_edge(storage=FailingStorage(exc))
    wire = connect(e.address)
    try:
        assert send_message(wire)[-1] == reply
        wire.send(b"RSET\r\n")  # the session goes on
        assert wire.reply()[0] == "250"
    finally:
        wire.close()


def test_disconnect_before_the_end_queues_nothing(smtp_edge: Any) -> None:
    e = smtp_edge()
    wire = connect(e.address)
    wire.send(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
    assert wire.codes(5) == ["220", "250", "250", "250", "354"]
    wire.send(MESSAGE + b"more text, and no end marker\r\n")
    wire.close()
    # A second session completes after the first was dropped: the store has only it.
    other = connect(e.address)
    try:
        assert send_message(other)[-1][0] == "250"
    finally:
        other.close()
    assert [env.sender for env in e.stored()] == ["a@src.test"]


def test_max_sessions_answers_421(smtp_edge: Any) -> None:
    e = smtp_edge(max_sessions=1)
    first = connect(e.address)
    second = None
    try:
        assert first.reply()[0] == "220"
        second = connect(e.address)
        assert second.rest() == b"421 4.3.2 Too many connections, try again later\r\n"
        first.send(b"QUIT\r\n")
        assert first.reply()[0] == "221"
        assert first.closed()
        for _ in range(1000):
            if e.edge.sessions == 0:
                break
            gevent.sleep(0)
        third = connect(e.address)
        assert third.reply()[0] == "220"
        third.close()
    finally:
        first.close()
        if second is not None:
            second.close()


class HookValidators(SmtpValidators):
    calls: list[str] = []

    def handle_banner(self, reply: Reply, address: Any) -> None:
        self.calls.append("banner")
        reply.message = "edge.example.test ESMTP ready"

    def handle_ehlo(self, reply: Reply, ehlo_as: str) -> None:
        self.calls.append("ehlo")

    def handle_mail(self, reply: Reply, sender: str, params: Any) -> None:
        self.calls.append("mail")

    def handle_rcpt(self, reply: Reply, rcpt: str, params: Any) -> None:
        self.calls.append("rcpt")

    def handle_data(self, reply: Reply) -> None:
        self.calls.append("data")

    def handle_have_data(self, reply: Reply, data: bytes) -> None:
        self.calls.append("have_data")
        if b"spam" in data:
            reply.code = "554"
            reply.message = "5.6.0 Message content rejected"

    def handle_queued(self, reply: Reply, results: Any) -> None:
        self.calls.append("queued")
        reply.message = "2.6.0 Queued as " + results[0][1]

    def handle_rset(self, reply: Reply) -> None:
        self.calls.append("rset")

    def handle_noop(self, reply: Reply) -> None:
        self.calls.append("noop")

    def handle_quit(self, reply: Reply) -> None:
        self.calls.append("quit")

    def handle_close(self) -> None:
        self.calls.append("close")


def test_validator_hooks(smtp_edge: Any) -> None:
    HookValidators.calls = []
    e = smtp_edge(validator_class=HookValidators)
    wire = connect(e.address)
    try:
        replies = send_message(wire)
        assert replies[0] == ("220", "edge.example.test ESMTP ready")
        (id,) = [id for _, id in e.storage.load()]
        assert replies[-1] == ("250", "2.6.0 Queued as " + id)
        send_message(wire, b"Subject: spam\r\n\r\nspam\r\n", ehlo=False)
        wire.send(b"RSET\r\nNOOP\r\nQUIT\r\n")
        assert wire.codes(3) == ["250", "250", "221"]
        assert wire.closed()
    finally:
        wire.close()
    assert len(e.stored()) == 1
    for _ in range(1000):
        if "close" in HookValidators.calls:
            break
        gevent.sleep(0)
    assert HookValidators.calls == [
        "banner",
        "ehlo",
        "mail",
        "rcpt",
        "data",
        "have_data",
        "queued",
        "mail",
        "rcpt",
        "data",
        "have_data",
        "rset",
        "noop",
        "quit",
        "close",
    ]


def test_banner_421_closes(smtp_edge: Any) -> None:
    class Closed(SmtpValidators):
        def handle_banner(self, reply: Reply, address: Any) -> None:
            reply.code = "421"
            reply.message = "4.3.2 Not now"

    e = smtp_edge(validator_class=Closed)
    wire = connect(e.address)
    try:
        assert wire.rest() == b"421 4.3.2 Not now\r\n"
    finally:
        wire.close()


def test_starttls_and_auth_are_recorded(smtp_edge: Any, tls_cert: Any) -> None:
    tls = []

    class Validators(SmtpValidators):
        def handle_auth(self, reply: Reply, creds: Any) -> None:
            if not creds.check_secret(PASSWORD):
                reply.code = "535"
                reply.message = "5.7.8 Nope"

        def handle_tls2(self, ssl_socket: Any) -> None:
            tls.append(ssl_socket.version())

    e = smtp_edge(validator_class=Validators, auth=True, context=tls_cert.gevent_server_context())
    wire = connect(e.address)
    try:
        wire.send(b"EHLO c\r\n")
        assert "AUTH" not in wire.replies(2)[1][1]
        wire.send(b"STARTTLS\r\n")
        assert wire.reply()[0] == "220"
        wire.starttls(tls_cert.client_context())
        secret = base64.b64encode(b"\0" + USER.encode() + b"\0" + PASSWORD.encode())
        wire.send(b"EHLO c\r\nAUTH PLAIN " + secret + b"\r\n")
        ehlo, auth = wire.replies(2)
        assert "AUTH PLAIN LOGIN" in ehlo[1].split("\r\n")
        assert auth == ("235", "2.7.0 Authentication successful")
        assert send_message(wire, ehlo=False)[-1][0] == "250"
    finally:
        wire.close()
    (env,) = e.stored()
    assert env.client["protocol"] == "ESMTPSA"
    assert env.client["auth"] == (USER, USER)
    assert tls and tls[0].startswith("TLS")


def test_command_timeout(smtp_edge: Any) -> None:
    e = smtp_edge(command_timeout=0.2)
    wire = connect(e.address)
    try:
        assert wire.reply()[0] == "220"
        assert wire.rest() == b"\r\n421 4.4.2 Connection timed out\r\n"
    finally:
        wire.close()


class BigNoopReplies(UserPassValidators):
    """NOOP answers with 64 KiB of text, so that a few replies fill the socket buffers."""

    def handle_noop(self, reply: Reply) -> None:
        reply.message = "2.0.0 " + "n" * 65536


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_client_that_stops_reading_is_dropped_at_the_command_timeout(
    smtp_edge: Any, pipelined: bool
) -> None:
    # The replies cannot all be written: the server's write waits for a client
    # that never reads, and that wait is bounded like the wait for a command.
    e = smtp_edge(command_timeout=0.3, validator_class=BigNoopReplies)
    wire = connect(e.address)
    try:
        assert wire.reply()[0] == "220"
        if pipelined:
            wire.send(b"NOOP\r\n" * 400)  # 25 MiB of replies
        else:
            # One command per write, each read on its own: every reply is
            # written as soon as its command is handled.
            for _ in range(400):
                wire.send(b"NOOP\r\n")
                gevent.sleep(0)
        cooperative_wait(lambda: e.edge.sessions == 0, "the stalled session to end",
                         timeout=GUARD_SECONDS)
    finally:
        wire.close()


def test_session_class_and_names() -> None:
    assert issubclass(SmtpEdge, EdgeServer) and issubclass(EdgeServer, Edge)
    assert issubclass(EdgeServer, gevent.Greenlet)
    assert SmtpEdge._default_session_class is SmtpSession

    class Custom(SmtpSession):
        pass

    edge = SmtpEdge(None, None, session_class=Custom, hostname="h.test")
    assert edge.session_class is Custom and edge.server is None and edge.hostname == "h.test"
    with pytest.raises(NotImplementedError):
        EdgeServer(None, None).handle(None, None)


def test_edge_handoff_stamps_the_envelope() -> None:
    class RecordingQueue:
        def enqueue(self, envelope: Envelope) -> list[tuple[Envelope, str]]:
            return [(envelope, "id-1")]

    edge = Edge(RecordingQueue(), "mx.test")
    env = Envelope("a@x", ["b@y"])
    assert edge.handoff(env) == [(env, "id-1")]
    assert env.receiver == "mx.test" and env.timestamp is not None
    edge.kill()


def test_the_edge_leaves_splitting_the_message_to_whoever_reads_it(
    smtp_edge: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits = record_splits(monkeypatch)
    e: EdgeUnderTest = smtp_edge()
    wire = connect(e.address)
    try:
        assert send_message(wire)[-1] == ("250", "2.6.0 Message accepted for delivery")
    finally:
        wire.close()
    (env,) = e.stored()
    assert splits == []  # stored, not split
    header, body = env.flatten()
    assert header + body == MESSAGE.replace(b"\r\n..", b"\r\n.")
    assert env.headers is not None and env.headers["Subject"] == "edge"
    assert len(splits) == 1
