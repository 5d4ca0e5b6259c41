"""SmtpSession.HAVE_DATA: the reply after the data, from what the queue returned."""

from __future__ import annotations

from typing import Any

import pytest

from slimta.edge.smtp import SmtpSession
from slimta.envelope import Envelope
from slimta.queue import QueueError
from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.smtp.reply import Reply

DATA = b"Subject: x\r\n\r\nbody\r\n"


def finish(results: list[tuple[Envelope, Any]]) -> tuple[Reply, list[Envelope]]:
    """One message through the session's hooks, with the queue answering ``results``."""
    handed: list[Envelope] = []

    def handoff(envelope: Envelope) -> list[tuple[Envelope, Any]]:
        handed.append(envelope)
        return results

    session = SmtpSession(("192.0.2.1", 25), None, handoff)
    session.EHLO(Reply("250", "Hello"), "client.test")
    session.MAIL(Reply("250", "2.1.0 Ok"), "a@b.test", {})
    session.RCPT(Reply("250", "2.1.5 Ok"), "c@d.test", {})
    reply = Reply.from_parts("250", "2.6.0", "Message accepted for delivery")
    session.HAVE_DATA(reply, DATA, None)
    return reply, handed


def test_stored_message_gets_250() -> None:
    env = Envelope()
    reply, handed = finish([(env, "id-1")])
    assert (reply.code, reply.message) == ("250", "2.6.0 Message accepted for delivery")
    assert handed[0].sender == "a@b.test"
    assert handed[0].recipients == ["c@d.test"]
    assert handed[0].client["ip"] == "192.0.2.1"
    assert handed[0].client["name"] == "client.test"
    assert handed[0].client["protocol"] == "ESMTP"
    assert b"".join(handed[0].flatten()) == DATA


def test_nothing_queued_is_a_transient_failure() -> None:
    reply, _ = finish([])
    assert (reply.code, reply.message) == ("451", "4.3.0 Error queuing message")


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        # One failed envelope of a split fails the whole message, whichever it is.
        (["id-1", QueueError("full", reply=Reply("452", "4.3.1 Queue full"))],
         ("452", "4.3.1 Queue full")),
        ([QueueError("no reply"), "id-2"], ("451", "4.3.0 Error queuing message")),
        (["id-1", PermanentRelayError("no", Reply("550", "5.7.1 Refused"))],
         ("550", "5.7.1 Refused")),
        # The first failure is the one the client hears about.
        ([TransientRelayError("later", Reply("450", "4.4.1 Later")),
          QueueError("full", reply=Reply("452", "4.3.1 Queue full"))],
         ("450", "4.4.1 Later")),
        (["id-1", "id-2"], ("250", "2.6.0 Message accepted for delivery")),
    ],
)
def test_split_message_outcome(outcomes: list[Any], expected: tuple[str, str]) -> None:
    reply, _ = finish([(Envelope(), outcome) for outcome in outcomes])
    assert (reply.code, reply.message) == expected
