"""One mail transaction on an open session: plan, send, finish, chain the next.

:meth:`Transaction.run` delivers one envelope:

1. **plan**: check the envelope against the server's extensions, without I/O
   (:mod:`slimta.relay.smtp._plan`);
2. **send**: ``MAIL``, the ``RCPT``\\ s and ``DATA``, in one write with PIPELINING;
3. **finish**: the message data, then its final reply (SMTP) or one reply per
   accepted recipient (LMTP);
4. **chain**: with PIPELINING and more work waiting, the next envelope's
   ``MAIL``/``RCPT``/``DATA`` go out in the same write as this message's
   end-of-data marker (RFC 2920 lets message content start a command group),
   so a reused connection costs one round trip per message.

It takes more work from, and gives work back to, its owner through the pool's
public seams (:meth:`~slimta.relay.pool.RelayPoolClient.poll_nowait`,
:meth:`~slimta.relay.pool.RelayPoolClient.requeue`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple, Protocol

import gevent

from slimta.relay import RelayError, RelayResult
from slimta.relay.smtp import SmtpRelayError
from slimta.relay.smtp._failures import server_error
from slimta.relay.smtp._plan import (
    Plan,
    RcptOutcome,
    in_envelope_order,
    plan_transaction,
    raise_if_uniform,
)
from slimta.smtp import ConnectionLost
from slimta.smtp.client import LmtpClient
from slimta.smtp.reply import Reply

if TYPE_CHECKING:
    from email.message import Message

    from gevent.event import AsyncResult

    from slimta.envelope import Envelope
    from slimta.relay._timeouts import Timeouts
    from slimta.relay.smtp._session import Session

__all__ = ["Chained", "Owner", "Requeue", "Sent", "Transaction"]


class Owner(Protocol):
    """What a :class:`Transaction` needs from the relay client it works for."""

    binary_encoder: Callable[[Message], None] | None
    timeouts: Timeouts

    def poll_nowait(self) -> tuple[AsyncResult, Envelope] | tuple[None, None]: ...

    def requeue(self, result: AsyncResult, envelope: Envelope) -> None: ...


class Requeue(Exception):
    """The reused connection went away before the server saw the message.

    The message can go on another connection: nothing of it was delivered.
    """


class Sent(NamedTuple):
    """The replies to a transaction's commands (filled when the pipeline is flushed)."""

    mail: Reply
    rcpts: list[tuple[str, Reply]]
    #: ``None`` when DATA was not sent (no recipient accepted, without PIPELINING).
    data: Reply | None


class Chained(NamedTuple):
    """The next envelope, whose MAIL/RCPT/DATA went out behind the previous message."""

    result: AsyncResult
    envelope: Envelope
    plan: Plan
    sent: Sent


class Transaction:
    """One envelope's transaction on ``session``.

    :param session: the open session.
    :param owner: the relay client, for its settings and its pool's queue.
    :param chain: the connection is kept for more envelopes, so the next one
        may be started behind this message.
    """

    def __init__(self, session: Session, owner: Owner, chain: bool = False) -> None:
        self.session = session
        self.owner = owner
        self.chain = chain
        client = session.client
        assert client is not None, "the session is not connected"
        self.client = client
        #: The next envelope, if its commands went out behind this message. The
        #: caller delivers it next, or requeues it when the session ends first.
        self.next: Chained | None = None

    def run(self, envelope: Envelope, reused: bool, chained: Chained | None = None) -> RelayResult:
        """Deliver ``envelope``: its result, or a raised RelayError.

        :param reused: an earlier transaction ran on this connection.
        :param chained: this envelope's commands already went out behind the
            previous message (``envelope`` is then ``chained.envelope``).
        :raises Requeue: a reused connection was closed under us before the
            server saw anything; the message can go on another connection.
        """
        session, client = self.session, self.client
        if chained is not None:
            plan, sent = chained.plan, chained.sent
        else:
            plan, sent = self._plan(envelope), None
        while True:
            session.needs_rset = True
            if sent is None:
                sent = self._send_envelope(plan, reused)
            mail, rcpt_replies, data = sent
            if reused and mail.code == "421":
                raise Requeue()  # the server was closing the idle connection
            if not (mail.code == "555" and session.auth_param and "AUTH" in client.extensions):
                break
            # Some servers (aiosmtpd) refuse the AUTH=<> parameter that RFC 4954
            # allows: send this transaction again, and the connection's next
            # ones, without it.
            session.auth_param = False
            self._resync(data)
            with session.stage(b"RSET", session.command_timeout):
                client.rset()
            sent = None
        if mail.is_error():
            self._resync(data)
            raise server_error(mail)

        outcomes: dict[str, RcptOutcome] = dict(plan.refused)
        accepted: list[str] = []
        for rcpt, reply in rcpt_replies:
            if reply.is_error():
                outcomes.setdefault(rcpt, server_error(reply))
            else:
                accepted.append(rcpt)
        if not accepted:
            self._resync(data)
            raise_if_uniform(plan.order, outcomes)
            # Mixed classes: each recipient keeps its own.
            return in_envelope_order(plan.order, outcomes)
        assert data is not None
        if data.code != "354":
            raise server_error(data)
        with session.stage(b"[SEND_DATA]", self.owner.timeouts.data_phase):
            if isinstance(client, LmtpClient):
                outcomes.update(self._finish_lmtp(client, plan, accepted))
            elif outcomes:
                outcomes.update(self._finish(plan, accepted))
            else:
                # Every recipient was sent and accepted: the final reply's
                # outcomes are already in envelope order.
                return self._finish(plan, accepted)
        return in_envelope_order(plan.order, outcomes)

    # -- plan ----------------------------------------------------------------------
    def _plan(self, envelope: Envelope) -> Plan:
        try:
            return plan_transaction(envelope, self.client.extensions, self.owner.binary_encoder)
        except RelayError:
            raise
        except Exception as exc:  # nothing was sent: the session goes on
            raise SmtpRelayError.factory(self.session.reply_for(exc, b"MAIL", None))

    # -- send ----------------------------------------------------------------------
    def _mail(self, plan: Plan) -> Reply:
        return self.client.mailfrom(
            plan.sender,
            data_size=plan.size,
            auth=False if self.session.auth_param else None,
            body=plan.body_type,
            smtputf8=plan.smtputf8,
        )

    def _send_envelope(self, plan: Plan, reused: bool) -> Sent:
        """MAIL, RCPTs and DATA: one write with PIPELINING, else one at a time.

        Without PIPELINING, stops after a failed MAIL, and skips DATA when every
        RCPT failed.

        :raises Requeue: see :meth:`run`.
        """
        session, client = self.session, self.client
        timeout = session.command_timeout
        pipelining = "PIPELINING" in client.extensions
        mail: Reply | None = None
        try:
            with session.stage(b"MAIL", timeout):
                mail = self._mail(plan)
            if not pipelining and mail.is_error():
                return Sent(mail, [], None)
            rcpt_replies: list[tuple[str, Reply]] = []
            for rcpt in plan.recipients:
                with session.stage(b"RCPT", timeout):
                    rcpt_replies.append((rcpt, client.rcptto(rcpt)))
            data: Reply | None = None
            if pipelining or any(not reply.is_error() for _, reply in rcpt_replies):
                with session.stage(b"DATA", timeout):
                    data = client.data()
        except (ConnectionLost, OSError) as exc:
            # On a reused connection the server may have closed it while idle:
            # when MAIL got no reply (or a 421), the message was never seen, so
            # another connection can carry it.
            nothing_yet = not mail or mail.code == "421"
            if reused and nothing_yet and not isinstance(exc, TimeoutError):
                raise Requeue()
            raise
        return Sent(mail, rcpt_replies, data)

    def _resync(self, data: Reply | None) -> None:
        """After a failure that the server answered with 354, end the empty message."""
        if data is None or data.code != "354":
            return
        with self.session.stage(b"[SEND_DATA]", self.session.command_timeout):
            self.client.send_empty_data()

    # -- finish --------------------------------------------------------------------
    def _finish(self, plan: Plan, accepted: list[str]) -> dict[str, RcptOutcome]:
        """Send the data and read the final reply: one outcome per accepted recipient.

        Runs inside the data timeout. Raises a RelayError when the whole message
        was refused.
        """
        client = self.client
        reply = client.send_data(plan.header, plan.body)
        if not reply:  # pipelined: the end-of-data marker has not been flushed
            chained = self._chain_next()
            flushed = False
            try:
                client.flush()
                flushed = True
            except (Exception, gevent.Timeout):
                if not reply:
                    raise  # this message's own reply never came
                # Only the next transaction's replies were lost: this message's
                # reply stands, and the broken connection ends after it.
                self.session.usable = False
            finally:
                if chained is not None:
                    if flushed:
                        self.next = chained
                    else:
                        self.owner.requeue(chained.result, chained.envelope)
        if reply.is_error():
            raise server_error(reply)  # RSET follows, unless the next one is open
        self.session.needs_rset = False
        return dict.fromkeys(accepted, reply)

    def _finish_lmtp(
        self, client: LmtpClient, plan: Plan, accepted: list[str]
    ) -> Mapping[str, RcptOutcome]:
        """Send the data, then read one reply per accepted recipient, in RCPT order.

        If the connection fails partway, the recipients that already have a
        reply keep it, and only the others get the transient error: those
        replies are final, and retrying would deliver twice.
        """
        session = self.session
        outcomes: dict[str, RcptOutcome] = {}
        try:
            replies = client.send_data(plan.header, plan.body)
        except (Exception, gevent.Timeout) as exc:
            # LmtpClient keeps what arrived before the failure; a falsy Reply did not.
            received = [(rcpt, reply) for rcpt, reply in client.data_replies if reply]
            if not received:
                raise
            session.usable = False
            lost = SmtpRelayError.factory(
                session.reply_for(exc, session.owner.current_command, client.last_error)
            )
            replies = received
            for rcpt in accepted[len(received) :]:
                outcomes[rcpt] = lost
        for rcpt, reply in replies:
            outcomes[rcpt] = reply if (reply.code or "")[:1] == "2" else server_error(reply)
        # As python-slimta does: RSET after a message that some recipient did not get.
        session.needs_rset = any(not isinstance(o, Reply) for o in outcomes.values())
        return outcomes

    # -- chain ---------------------------------------------------------------------
    def _chain_next(self) -> Chained | None:
        """Queue the next envelope's MAIL/RCPT/DATA behind this message, if one waits.

        Only with PIPELINING on a connection that is kept for reuse; nothing is
        written here.
        """
        session, client, owner = self.session, self.client, self.owner
        if not self.chain or not session.usable or "PIPELINING" not in client.extensions:
            return None
        result, envelope = owner.poll_nowait()
        if result is None or envelope is None:
            return None
        try:
            plan = plan_transaction(envelope, client.extensions, owner.binary_encoder)
        except Exception:
            owner.requeue(result, envelope)  # it fails on its own turn, the ordinary way
            return None
        try:
            mail = self._mail(plan)
            rcpt_replies = [(rcpt, client.rcptto(rcpt)) for rcpt in plan.recipients]
        except Exception:
            # The plan checked every address, so this should not happen; if it
            # does, the wire holds part of a transaction: end the connection.
            session.usable = False
            owner.requeue(result, envelope)
            return None
        data = client.queue_command(b"DATA")
        return Chained(result, envelope, plan, Sent(mail, rcpt_replies, data))
