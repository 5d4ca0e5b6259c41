"""The delivery task's side of :class:`~slimta.celeryqueue.CeleryQueue`.

What a worker does with one task: take the lease, load the envelope, attempt
it, record what was delivered at once, bounce permanent failures, and retry the
rest with a countdown (or bounce them when the backoff gives up).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import gevent
from celery.exceptions import Reject
from gevent import Greenlet

from slimta.envelope import Envelope
from slimta.logging import log_exception
from slimta.queue import QueueError
from slimta.queue.outcome import (
    Outcome,
    bounce_address,
    bounce_permanent,
    classify,
    default_backoff,
    group_by_reply,
    is_null_sender,
    too_many_retries,
    unhandled_reply,
)
from slimta.redisstorage import RedisStorage
from slimta.relay import PermanentRelayError, Relay, TransientRelayError
from slimta.smtp.reply import Reply

from ._ledger import Ledger
from ._payload import PayloadError, make_payload, parse_payload

__all__ = ["CLOCK_SKEW_SECONDS", "DeliveryTask"]

_log = logging.getLogger("slimta.celeryqueue")

#: A task may arrive this many seconds before its retry time (clocks differ).
CLOCK_SKEW_SECONDS = 5.0


class DeliveryTask:
    """The body of the delivery task; :class:`~slimta.celeryqueue.CeleryQueue` sets it up."""

    relay: Relay
    store: RedisStorage
    ledger: Ledger
    lease: float
    dispatch_timeout: float
    backoff: Callable[[Envelope, int], float | None] | None
    bounce_factory: Callable[[Envelope, Reply], Envelope | None]
    _time: Callable[[], float]
    #: The leases this process holds, ID -> token, renewed by ``_renewer``.
    _held: dict[str, str]
    _renewer: Greenlet | None

    def enqueue(self, envelope: Envelope) -> list[tuple[Envelope, str | QueueError]]:
        """Store and send a new message (bounces go this way)."""
        raise NotImplementedError()

    def _task_body(self, task: Any, *args: Any, **kwargs: Any) -> str:
        try:
            if len(args) != 1 or kwargs:
                raise PayloadError("the task takes one payload argument")
            id = parse_payload(args[0])
        except PayloadError as exc:
            _log.error("celeryqueue: task %s rejected: %s", _task_id(task), exc)
            raise Reject(str(exc), requeue=False) from None
        token = uuid.uuid4().hex
        try:
            taken = self.ledger.take(id, token, self.lease, self._time())
        except KeyError:
            return "gone"  # delivered or bounced already; its deadline is dropped
        except QueueError:
            log_exception(__name__, queue_id=id)
            self._release(id, token)
            return "store-error"  # the deadline brings it back
        if taken is None:
            return "busy"
        lease = _Lease(id, token)
        self._hold(id, token)
        try:
            return self._deliver(task, lease, *taken)
        finally:
            self._unhold(lease)
            if lease.held:
                self._release(id, token)

    def _hold(self, id: str, token: str) -> None:
        """Keep ``id``'s lease alive until the delivery ends."""
        self._held[id] = token
        if self._renewer is None or self._renewer.dead:
            self._renewer = gevent.spawn(self._renew_held)

    def _unhold(self, lease: _Lease) -> None:
        """Stop renewing ``lease`` (before it is given up, so no renewal finds it gone)."""
        if self._held.get(lease.id) == lease.token:
            del self._held[lease.id]

    def _renew_held(self) -> None:
        """Every third of a lease, renew all of this process's leases in one round trip.

        One greenlet per process, not one per delivery; it ends when nothing is held.
        """
        while True:
            gevent.sleep(self.lease / 3.0)
            held = dict(self._held)
            if not held:
                return
            try:
                lost = self.ledger.renew_all(held, self.lease, self._time())
            except QueueError:
                log_exception(__name__)
                continue
            for id in lost:
                _log.warning("celeryqueue: %s: lease lost during delivery", id)
                if self._held.get(id) == held[id]:
                    del self._held[id]

    def _stop_renewing(self) -> None:
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.kill()

    def _release(self, id: str, token: str) -> None:
        try:
            self.ledger.release(id, token)
        except QueueError:
            log_exception(__name__, queue_id=id)

    def _finish(self, lease: _Lease) -> None:
        """Delete the message and give the lease up (one round trip)."""
        self._unhold(lease)
        self.ledger.finish(lease.id, lease.token)
        lease.held = False

    def _reschedule(self, lease: _Lease, deadline: float, next_attempt: float | None) -> None:
        """Move the deadline (and the next attempt) and give the lease up (one round trip)."""
        self._unhold(lease)
        self.ledger.reschedule(lease.id, lease.token, deadline, next_attempt)
        lease.held = False

    def _deliver(
        self, task: Any, lease: _Lease, envelope: Envelope, attempts: int, next_at: float
    ) -> str:
        id = lease.id
        recipients = list(envelope.recipients)
        try:
            if next_at > self._time() + CLOCK_SKEW_SECONDS:
                # A duplicate: the real retry (or the sweeper) comes later. Taking
                # the lease moved the deadline; put it back after the retry time.
                self._reschedule(lease, next_at + self.dispatch_timeout, None)
                return "early"
            if not recipients:
                self._finish(lease)
                return "delivered"
            outcome = self._attempt(id, envelope, recipients, attempts)
            return self._settle(task, lease, envelope, recipients, outcome)
        except QueueError:
            # What was recorded stands; the deadline brings the rest back.
            log_exception(__name__, queue_id=id)
            return "store-error"

    def _attempt(
        self, id: str, envelope: Envelope, recipients: list[str], attempts: int
    ) -> Outcome:
        try:
            result = self.relay._attempt(envelope, attempts)
            return classify(recipients, envelope.recipients, result)
        except PermanentRelayError as exc:
            return Outcome(permanent=[(i, exc.reply) for i in range(len(recipients))])
        except TransientRelayError as exc:
            return Outcome(transient=[(i, exc.reply) for i in range(len(recipients))])
        except Exception as exc:
            log_exception(__name__, queue_id=id)
            reply = unhandled_reply(exc)
            return Outcome(transient=[(i, reply) for i in range(len(recipients))])

    def _settle(
        self,
        task: Any,
        lease: _Lease,
        envelope: Envelope,
        recipients: list[str],
        outcome: Outcome,
    ) -> str:
        id = lease.id
        delivered = set(outcome.delivered)
        if len(delivered) == len(recipients):
            self._finish(lease)
            return "delivered"
        if delivered:
            # First of all: nothing after this may deliver them again.
            self.store.set_recipients_delivered(id, sorted(delivered))
        left = [i for i in range(len(recipients)) if i not in delivered]
        position = {index: n for n, index in enumerate(left)}
        bounced, transient = bounce_permanent(outcome, recipients, envelope, self._bounce)
        if not transient:
            self._finish(lease)
            return "bounced" if bounced else "delivered"
        if bounced:
            self.store.set_recipients_delivered(id, sorted(position[i] for i in bounced))
        transient.sort(key=lambda pair: pair[0])
        remaining = envelope.copy([recipients[i] for i, _ in transient])
        attempts = self.store.increment_attempts(id)
        wait = self._backoff(id, remaining, attempts)
        if wait is None:
            failed = [(recipients[i], too_many_retries(reply)) for i, reply in transient]
            for reply, rcpts in group_by_reply(failed):
                self._bounce(envelope.copy(rcpts), reply)
            self._finish(lease)
            return "bounced"
        now = self._time()
        # Released before the retry is sent, so the retry never finds it taken.
        self._reschedule(lease, now + wait + self.dispatch_timeout, now + wait)
        raise task.retry(args=[make_payload(id)], kwargs={}, countdown=wait)

    def _backoff(self, id: str, envelope: Envelope, attempts: int) -> float | None:
        try:
            if self.backoff is None:
                return default_backoff(envelope, attempts, now=self._time())
            wait = self.backoff(envelope, attempts)
            return None if wait is None else max(0.0, float(wait))
        except Exception:
            log_exception(__name__, queue_id=id)
            return default_backoff(envelope, attempts, now=self._time())

    def _bounce(self, envelope: Envelope, reply: Reply) -> bool:
        """Queue the bounce of ``envelope``'s recipients; ``False`` if it could not be queued."""
        if is_null_sender(envelope.sender):
            return True  # never bounce a bounce (RFC 5321 §4.5.5)
        address = bounce_address(envelope.sender)
        if address is None:
            _log.error("celeryqueue: no bounce for %r: bad sender (%s)", envelope.sender, reply)
            return True
        envelope.sender = address
        try:
            bounce = self.bounce_factory(envelope, reply)
            if not bounce:
                return True
            results = self.enqueue(bounce)
        except Exception:
            log_exception(__name__, sender=envelope.sender)
            return False
        return all(not isinstance(result, BaseException) for _, result in results)


class _Lease:
    """One delivery's hold on a message: given up once, by whichever step ends it."""

    __slots__ = ("held", "id", "token")

    def __init__(self, id: str, token: str) -> None:
        self.id = id
        self.token = token
        self.held = True


def _task_id(task: Any) -> str:
    return str(getattr(getattr(task, "request", None), "id", None))
