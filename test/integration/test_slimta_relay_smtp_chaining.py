"""Pipelining the next transaction behind the previous end-of-data (RFC 2920).

With PIPELINING and more envelopes queued, a reused connection sends the next
MAIL/RCPT/DATA in the same write as the previous message's final ``.``. These
tests use a small scripted server that records what it received and when, so
they check the outcome: one round trip per message, and every result right
when the server fails or hangs up between the two transactions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event
from gevent.server import StreamServer

from slimta.envelope import Envelope
from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.relay.smtp.static import StaticSmtpRelay
from slimta.smtp.reply import Reply

GUARD_SECONDS = 10.0
#: How long the server holds a final reply waiting for the next MAIL to arrive.
HOLD_SECONDS = 3.0


class Session:
    def __init__(self) -> None:
        self.commands: list[bytes] = []
        self.messages: list[bytes] = []


class ScriptedServer:
    """SMTP with PIPELINING; ``finals`` scripts the reply to each end of data.

    An entry is a reply line, ``'hold:<reply>'`` (send it only once the next
    ``MAIL`` arrived, or after HOLD_SECONDS), or ``'<reply>|close'`` (send it,
    then hang up without reading anything else). Once the script runs out,
    every message gets ``250 2.0.0 Ok``.
    """

    def __init__(self, finals: list[str], rcpt_replies: dict[str, str] | None = None) -> None:
        self.finals = list(finals)
        self.rcpt_replies = rcpt_replies or {}
        self.sessions: list[Session] = []
        self.held_until_next_mail: list[bool] = []
        #: Set once a first message body has been read completely.
        self.message_seen = Event()
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server.server_port)

    def stop(self) -> None:
        self.server.stop(timeout=1)

    def _handle(self, sock: Any, _address: Any) -> None:
        session = Session()
        self.sessions.append(session)
        buf = bytearray()
        got_mail = Event()

        def read_line() -> bytes | None:
            while b"\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return None
                buf.extend(data)
                if b"MAIL FROM" in data:
                    got_mail.set()
            index = buf.index(b"\n") + 1
            line = bytes(buf[:index])
            del buf[:index]
            return line

        try:
            sock.sendall(b"220 scripted ESMTP\r\n")
            while True:
                line = read_line()
                if line is None:
                    return
                command = line.rstrip(b"\r\n")
                session.commands.append(command)
                verb = command.split(b" ", 1)[0].upper()
                if verb == b"EHLO":
                    sock.sendall(b"250-scripted\r\n250 PIPELINING\r\n")
                elif verb == b"MAIL":
                    got_mail.clear()
                    sock.sendall(b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT":
                    rcpt = command.split(b"<", 1)[1].rstrip(b">").decode()
                    reply = self.rcpt_replies.get(rcpt, "250 2.1.5 Ok")
                    sock.sendall(reply.encode() + b"\r\n")
                elif verb == b"DATA":
                    sock.sendall(b"354 Go ahead\r\n")
                    body = bytearray()
                    while True:
                        data_line = read_line()
                        if data_line is None:
                            return
                        if data_line == b".\r\n":
                            break
                        body += data_line
                    session.messages.append(bytes(body))
                    self.message_seen.set()
                    if got_mail.is_set() or b"MAIL FROM" in buf:
                        got_mail.set()
                    else:
                        got_mail.clear()
                    if not self._final(sock, got_mail):
                        return
                elif verb == b"RSET":
                    sock.sendall(b"250 2.0.0 Ok\r\n")
                elif verb == b"QUIT":
                    sock.sendall(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    sock.sendall(b"500 5.5.2 What?\r\n")
        finally:
            sock.close()

    def _final(self, sock: Any, got_mail: Event) -> bool:
        action = self.finals.pop(0) if self.finals else "250 2.0.0 Ok"
        if action.startswith("hold:"):
            action = action[5:]
            self.held_until_next_mail.append(got_mail.wait(HOLD_SECONDS))
        reply, _, then = action.partition("|")
        sock.sendall(reply.encode() + b"\r\n")
        return then != "close"


@pytest.fixture
def scripted() -> Iterator[Any]:
    servers: list[ScriptedServer] = []

    def make(*finals: str, **kwargs: Any) -> ScriptedServer:
        server = ScriptedServer(list(finals), **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def envelope(i: int) -> Envelope:
    env = Envelope("sender@example.test", [f"rcpt{i}@example.test"])
    env.parse(b"Subject: chained %d\r\n\r\nbody %d\r\n" % (i, i))
    return env


def relay_for(server: ScriptedServer) -> StaticSmtpRelay:
    return StaticSmtpRelay(*server.address, pool_size=1, idle_timeout=5.0,
                           ehlo_as="relay.test", command_timeout=5.0, data_timeout=5.0)


def attempt_all(server: ScriptedServer, count: int) -> list[Any]:
    """Queue ``count`` envelopes at once on one pooled connection to ``server``.

    Every envelope after the first waits in the queue, so each transaction can
    be chained behind the one before. The relay is killed afterwards.
    """
    relay = relay_for(server)

    def one(i: int) -> Any:
        try:
            return relay.attempt(envelope(i), 0)
        except Exception as exc:
            return exc

    try:
        with gevent.Timeout(GUARD_SECONDS):
            jobs = [gevent.spawn(one, i) for i in range(count)]
            gevent.joinall(jobs)
    finally:
        relay.kill()
    return [job.value for job in jobs]


def delivered(outcome: Any, i: int) -> bool:
    return isinstance(outcome, dict) and isinstance(outcome[f"rcpt{i}@example.test"], Reply)


def test_next_transaction_goes_out_before_the_final_reply(scripted: Any) -> None:
    # The server answers message 0's end of data only once message 1's MAIL has
    # arrived: a client that waited for that answer first would stall 3 s here.
    server = scripted("hold:250 2.0.0 first", "hold:250 2.0.0 second")
    outcomes = attempt_all(server, 3)
    assert all(delivered(outcome, i) for i, outcome in enumerate(outcomes))
    assert server.held_until_next_mail == [True, True]
    assert len(server.sessions) == 1
    assert len(server.sessions[0].messages) == 3


def test_failed_message_does_not_disturb_the_chained_one(scripted: Any) -> None:
    server = scripted("554 5.6.0 Rejected content")
    outcomes = attempt_all(server, 3)
    assert isinstance(outcomes[0], PermanentRelayError)
    assert outcomes[0].reply.code == "554"
    assert delivered(outcomes[1], 1) and delivered(outcomes[2], 2)
    # No RSET may come between: the next transaction was already open.
    commands = [c.split(b" ")[0] for c in server.sessions[0].commands]
    assert b"RSET" not in commands
    assert len(server.sessions) == 1


def test_hangup_after_a_final_250_keeps_that_delivery(scripted: Any) -> None:
    # The server accepts message 0 and hangs up without answering message 1's
    # MAIL: message 0 is delivered (never retried), message 1 goes out again.
    server = scripted("250 2.0.0 kept|close")
    outcomes = attempt_all(server, 2)
    assert delivered(outcomes[0], 0)
    assert str(outcomes[0]["rcpt0@example.test"]) == "250 2.0.0 kept"
    assert delivered(outcomes[1], 1)
    assert [len(s.messages) for s in server.sessions] == [1, 1]


def test_421_to_the_end_of_data_requeues_the_chained_message(scripted: Any) -> None:
    server = scripted("421 4.3.2 Shutting down|close")
    outcomes = attempt_all(server, 2)
    assert isinstance(outcomes[0], TransientRelayError)
    assert outcomes[0].reply.code == "421"
    assert delivered(outcomes[1], 1)
    assert len(server.sessions) == 2


def test_chained_recipient_rejection_is_that_messages_result(scripted: Any) -> None:
    server = scripted(rcpt_replies={"rcpt1@example.test": "550 5.1.1 No such user"})
    outcomes = attempt_all(server, 3)
    assert delivered(outcomes[0], 0) and delivered(outcomes[2], 2)
    assert isinstance(outcomes[1], PermanentRelayError)
    assert str(outcomes[1].reply) == "550 5.1.1 No such user"
    assert len(server.sessions) == 1
    # This server answers DATA with 354 even with no valid recipient; the client
    # then ends that empty message with a lone "." to stay in step.
    assert [m for m in server.sessions[0].messages if m] == [
        b"Subject: chained 0\r\n\r\nbody 0\r\n",
        b"Subject: chained 2\r\n\r\nbody 2\r\n",
    ]


def test_kill_with_a_chained_request_resolves_everything(scripted: Any) -> None:
    server = scripted("hold:250 2.0.0 first")
    relay = relay_for(server)
    results: list[Any] = []

    def one(i: int) -> None:
        try:
            results.append(relay.attempt(envelope(i), 0))
        except Exception as exc:
            results.append(exc)

    with gevent.Timeout(GUARD_SECONDS):
        jobs = [gevent.spawn(one, i) for i in range(4)]
        # The server holds message 0's reply while message 1 is chained behind it.
        assert server.message_seen.wait(GUARD_SECONDS)
        relay.kill()
        gevent.joinall(jobs)
    assert len(results) == 4  # nobody is left waiting
    assert all(isinstance(r, (dict, TransientRelayError)) for r in results)
