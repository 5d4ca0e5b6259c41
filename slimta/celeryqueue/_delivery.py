"""The delivery task's side of :class:`~slimta.celeryqueue.CeleryQueue`.

What a worker does with one task: take the lease, load the envelope, attempt
it, record what was delivered at once, bounce permanent failures, and retry the
rest with a countdown (or bounce them when the backoff gives up).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import gevent
from celery.exceptions import Reject

from slimta.envelope import Envelope
from slimta.logging import log_exception
from slimta.queue import QueueError
from slimta.queue._outcome import (
    Outcome,
    bounce_address,
    classify,
    default_backoff,
    group_by_reply,
    is_null_sender,
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
            if not self.ledger.acquire(id, token, self.lease, self._time()):
                return "busy"
        except QueueError:
            log_exception(__name__, queue_id=id)
            return "store-error"  # the deadline brings it back
        heartbeat = gevent.spawn(self._heartbeat, id, token)
        try:
            return self._deliver(task, id, token)
        finally:
            heartbeat.kill()
            self._release(id, token)

    def _heartbeat(self, id: str, token: str) -> None:
        while True:
            gevent.sleep(self.lease / 3.0)
            try:
                if not self.ledger.renew(id, token, self.lease, self._time()):
                    _log.warning("celeryqueue: %s: lease lost during delivery", id)
                    return
            except QueueError:
                log_exception(__name__, queue_id=id)

    def _release(self, id: str, token: str) -> None:
        try:
            self.ledger.release(id, token)
        except QueueError:
            log_exception(__name__, queue_id=id)

    def _deliver(self, task: Any, id: str, token: str) -> str:
        try:
            envelope, attempts, next_at = self.ledger.read(id)
        except KeyError:
            self._forget(id)
            return "gone"
        except QueueError:
            log_exception(__name__, queue_id=id)
            return "store-error"
        recipients = list(envelope.recipients)
        try:
            if next_at > self._time() + CLOCK_SKEW_SECONDS:
                # A duplicate: the real retry (or the sweeper) comes later. Taking
                # the lease moved the deadline; put it back after the retry time.
                self.ledger.set_deadline(id, next_at + self.dispatch_timeout)
                return "early"
            if not recipients:
                self.ledger.remove(id)
                return "delivered"
            outcome = self._attempt(id, envelope, recipients, attempts)
            return self._settle(task, id, token, envelope, recipients, outcome)
        except QueueError:
            # What was recorded stands; the deadline brings the rest back.
            log_exception(__name__, queue_id=id)
            return "store-error"

    def _forget(self, id: str) -> None:
        try:
            self.ledger.forget(id)
        except QueueError:
            log_exception(__name__, queue_id=id)

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
        id: str,
        token: str,
        envelope: Envelope,
        recipients: list[str],
        outcome: Outcome,
    ) -> str:
        delivered = set(outcome.delivered)
        if len(delivered) == len(recipients):
            self.ledger.remove(id)
            return "delivered"
        if delivered:
            # First of all: nothing after this may deliver them again.
            self.store.set_recipients_delivered(id, sorted(delivered))
        left = [i for i in range(len(recipients)) if i not in delivered]
        position = {index: n for n, index in enumerate(left)}
        transient = list(outcome.transient)
        bounced: list[int] = []
        for reply, indexes in _group_indexes(outcome.permanent):
            if self._bounce(envelope.copy([recipients[i] for i in indexes]), reply):
                bounced.extend(indexes)
            else:
                transient.extend((i, reply) for i in indexes)
        if not transient:
            self.ledger.remove(id)
            return "bounced" if bounced else "delivered"
        if bounced:
            self.store.set_recipients_delivered(id, sorted(position[i] for i in bounced))
        transient.sort(key=lambda pair: pair[0])
        remaining = envelope.copy([recipients[i] for i, _ in transient])
        attempts = self.store.increment_attempts(id)
        wait = self._backoff(id, remaining, attempts)
        if wait is None:
            failed = [(recipients[i], _too_many_retries(reply)) for i, reply in transient]
            for reply, rcpts in group_by_reply(failed):
                self._bounce(envelope.copy(rcpts), reply)
            self.ledger.remove(id)
            return "bounced"
        now = self._time()
        self.store.set_timestamp(id, now + wait)
        self.ledger.set_deadline(id, now + wait + self.dispatch_timeout)
        # Released before the retry is sent, so the retry never finds it taken.
        self._release(id, token)
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


def _task_id(task: Any) -> str:
    return str(getattr(getattr(task, "request", None), "id", None))


def _group_indexes(pairs: Sequence[tuple[int, Reply]]) -> list[tuple[Reply, list[int]]]:
    return [
        (reply, [int(i) for i in ids])
        for reply, ids in group_by_reply([(str(index), reply) for index, reply in pairs])
    ]


def _too_many_retries(reply: Reply) -> Reply:
    text = reply.message or ""
    new = Reply(reply.code or "450", f"{text} (Too many retries)".strip(), reply.command)
    new.address = reply.address
    return new
