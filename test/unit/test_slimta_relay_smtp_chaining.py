"""Pipelining the next transaction behind the previous end-of-data (RFC 2920).

With PIPELINING and more envelopes queued, a reused connection sends the next
MAIL/RCPT/DATA in the same write as the previous message's final ``.``. No
server listens: the relay's ``socket_creator`` hands each connection one end of
a socketpair, and the fault server runs its script on the other end, recording
what it received. The tests check the outcome: one round trip per message, and
every result right when the server fails or hangs up between the two
transactions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from support.envelopes import make_envelope
from support.faultserver import FaultServer, Hangup, Hold
from support.util import GUARD_SECONDS

from slimta.envelope import Envelope
from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.relay.smtp.static import StaticSmtpRelay
from slimta.smtp.reply import Reply


@pytest.fixture
def peer() -> Iterator[Any]:
    """Factory: ``peer(first_session_script, **options)`` makes an unstarted fault server.

    Only the first connection runs the script; any later one behaves. The server
    advertises PIPELINING only. Every server made is stopped when the test ends.
    """
    servers: list[FaultServer] = []

    def make(script: dict[str, Any] | None = None, **options: Any) -> FaultServer:
        server = FaultServer(sessions=[script or {}], extensions=["PIPELINING"], **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def envelope(i: int) -> Envelope:
    return make_envelope(rcpts=(f"rcpt{i}@example.test",),
                         headers=b"Subject: chained %d\r\n" % i, body=b"body %d\r\n" % i)


def relay_for(server: FaultServer) -> StaticSmtpRelay:
    return StaticSmtpRelay("mx.example.test", 25, pool_size=1, idle_timeout=5.0,
                           ehlo_as="relay.test", command_timeout=5.0, data_timeout=5.0,
                           socket_creator=server.socket_creator)


def attempt_all(server: FaultServer, count: int) -> list[Any]:
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


def test_next_transaction_goes_out_before_the_final_reply(peer: Any) -> None:
    # The server answers message 0's end of data only once message 1's MAIL has
    # arrived: a client that waited for that answer first would stall 3 s here.
    server = peer({"DATA_END": [Hold("250 2.0.0 first"), Hold("250 2.0.0 second")]})
    outcomes = attempt_all(server, 3)
    assert all(delivered(outcome, i) for i, outcome in enumerate(outcomes))
    assert server.sessions[0].holds == [True, True]
    assert len(server.sessions) == 1
    assert len(server.sessions[0].messages) == 3


def test_failed_message_does_not_disturb_the_chained_one(peer: Any) -> None:
    server = peer({"DATA_END": ["554 5.6.0 Rejected content"]})
    outcomes = attempt_all(server, 3)
    assert isinstance(outcomes[0], PermanentRelayError)
    assert outcomes[0].reply.code == "554"
    assert delivered(outcomes[1], 1) and delivered(outcomes[2], 2)
    # No RSET may come between: the next transaction was already open.
    assert b"RSET" not in server.sessions[0].verbs()
    assert len(server.sessions) == 1


def test_hangup_after_a_final_250_keeps_that_delivery(peer: Any) -> None:
    # The server accepts message 0 and hangs up without answering message 1's
    # MAIL: message 0 is delivered (never retried), message 1 goes out again.
    server = peer({"DATA_END": Hangup("250 2.0.0 kept")})
    outcomes = attempt_all(server, 2)
    assert delivered(outcomes[0], 0)
    assert str(outcomes[0]["rcpt0@example.test"]) == "250 2.0.0 kept"
    assert delivered(outcomes[1], 1)
    assert [len(s.messages) for s in server.sessions] == [1, 1]


def test_421_to_the_end_of_data_requeues_the_chained_message(peer: Any) -> None:
    server = peer({"DATA_END": Hangup("421 4.3.2 Shutting down")})
    outcomes = attempt_all(server, 2)
    assert isinstance(outcomes[0], TransientRelayError)
    assert outcomes[0].reply.code == "421"
    assert delivered(outcomes[1], 1)
    assert len(server.sessions) == 2


def test_chained_recipient_rejection_is_that_messages_result(peer: Any) -> None:
    # The second DATA (message 1, whose only recipient was refused) gets a 354
    # anyway; the client then ends that empty message with a lone "." to stay in step.
    server = peer({"DATA": [None, "354 Go ahead"]}, reject=["rcpt1@example.test"])
    outcomes = attempt_all(server, 3)
    assert delivered(outcomes[0], 0) and delivered(outcomes[2], 2)
    assert isinstance(outcomes[1], PermanentRelayError)
    assert str(outcomes[1].reply) == "550 5.1.1 No such user"
    assert len(server.sessions) == 1
    assert server.sessions[0].messages == [
        b"Subject: chained 0\r\n\r\nbody 0\r\n",
        b"",
        b"Subject: chained 2\r\n\r\nbody 2\r\n",
    ]


def test_kill_with_a_chained_request_resolves_everything(peer: Any) -> None:
    server = peer({"DATA_END": Hold("250 2.0.0 first")})
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
