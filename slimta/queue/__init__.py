"""The delivery queue: store each message, then deliver it, retry it or bounce it.

A message is written to a :class:`QueueStorage` before :meth:`Queue.enqueue`
returns, so an edge may answer ``250`` as soon as it has the queue IDs. The queue
then hands the envelope to its relay and acts on the result, recipient by
recipient: delivered and permanently failed recipients are done (the failures are
bounced to the sender), transient failures are retried after ``backoff`` seconds.

What a delivery achieved is recorded in the store before anything else happens to
that message, so a crash or a restart never delivers twice to a recipient that
was already delivered.
"""

from __future__ import annotations

import bisect
import collections
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import gevent
import gevent.pool
from gevent import Greenlet, GreenletExit
from gevent.event import Event
from gevent.pool import Group, Pool

from slimta.core import SlimtaError
from slimta.envelope import Envelope
from slimta.logging import log_exception
from slimta.policy import QueuePolicy, apply_queue_policies
from slimta.relay import PermanentRelayError, Relay, TransientRelayError
from slimta.relay.pool import RelayPool
from slimta.smtp.reply import Reply
from slimta.util.recycler import GreenletRecycler

from .outcome import (
    Outcome,
    all_delivered,
    bounce_address,
    bounce_permanent,
    classify,
    default_backoff,
    group_by_reply,
    is_null_sender,
    too_many_retries,
    unhandled_reply,
)

__all__ = ["QueueError", "Queue", "QueueStorage"]

_log = logging.getLogger(__name__)

#: After a store operation fails, it is tried again this many seconds later.
STORE_RETRY_SECONDS = 60.0
#: How many finished message IDs are remembered, so that an ID a store's
#: load()/wait() handed out while enqueue() was still writing it (and that was
#: delivered meanwhile) is not attempted a second time when enqueue() returns.
FINISHED_MEMORY = 10_000
#: Without ``relay_pool``, a relay that keeps at most ``pool_size`` connections
#: (a :class:`~slimta.relay.pool.RelayPool`) gets at most this many attempts per
#: connection at once: one on the wire, the next queued where the connection
#: takes it (and pipelines it) as soon as the first is done, and a margin for
#: the queue's own work between attempts. With two, the relay's queue ran dry
#: and its connections idled (about 0.76x the bare relay's rate, against 0.9x
#: and more with three to ten). Messages beyond that wait in the queue, in
#: order, instead of as parked greenlets.
ATTEMPTS_PER_CONNECTION = 4
#: Messages waiting for an attempt slot keep their envelope in memory, up to
#: this many; beyond that they are read back from the store when their turn comes.
READY_ENVELOPES = 10_000

Backoff = Callable[[Envelope, int], "float | None"]
BounceFactory = Callable[[Envelope, Reply], "Envelope | None"]


class QueueError(SlimtaError):
    """A message could not be queued.

    .. attribute:: reply

       When set, the :class:`~slimta.smtp.reply.Reply` an edge should give its
       client instead of a generic error.
    """

    reply: Reply | None = None

    def __init__(self, *args: Any, reply: Reply | None = None) -> None:
        super().__init__(*args)
        if reply is not None:
            self.reply = reply


def _queue_error(message: str, reply: Reply) -> QueueError:
    return QueueError(message, reply=reply)


class QueueStorage:
    """The interface every store used by :class:`Queue` implements.

    Recipient indexes given to :meth:`set_recipients_delivered` refer to the
    recipients of the envelope as :meth:`get` (or, before any attempt,
    :meth:`write`) last handed it out; :meth:`get` leaves out every recipient
    marked delivered.
    """

    def __init__(self) -> None:
        pass

    @staticmethod
    def _remove_delivered_rcpts(envelope: Envelope, rcpt_indexes: Iterable[int]) -> None:
        for index in sorted(set(rcpt_indexes), reverse=True):
            if 0 <= index < len(envelope.recipients):
                del envelope.recipients[index]

    def write(self, envelope: Envelope, timestamp: float) -> str:
        """Store a new message, with no attempts yet.

        :param envelope: the message.
        :param timestamp: when its first attempt is due (seconds since the epoch).
        :returns: the message's queue ID.
        :raises QueueError: the message was not stored.
        """
        raise NotImplementedError()

    def set_timestamp(self, id: str, timestamp: float) -> None:
        """Set when the message's next attempt is due.

        :raises QueueError:
        """
        raise NotImplementedError()

    def increment_attempts(self, id: str) -> int:
        """Count one more delivery attempt.

        :returns: the new number of attempts.
        :raises QueueError:
        """
        raise NotImplementedError()

    def set_recipients_delivered(self, id: str, rcpt_indexes: Sequence[int]) -> None:
        """Mark recipients as done (delivered, or bounced) so no later attempt includes them.

        :param rcpt_indexes: indexes into the recipients of the envelope that
            :meth:`get` last returned for ``id``.
        :raises QueueError:
        """
        raise NotImplementedError()

    def load(self) -> Iterable[tuple[float, str]]:
        """Every stored message, as ``(timestamp, id)`` pairs.

        :raises QueueError:
        """
        raise NotImplementedError()

    def get(self, id: str) -> tuple[Envelope, int]:
        """The message and its number of attempts so far.

        :raises KeyError: no such message.
        :raises QueueError:
        """
        raise NotImplementedError()

    def remove(self, id: str) -> None:
        """Delete the message (delivered, or failed for good).

        :raises QueueError:
        """
        raise NotImplementedError()

    def wait(self) -> Iterable[tuple[float, str]]:
        """Wait for messages stored by another process.

        :returns: ``(timestamp, id)`` pairs of new messages; when exhausted,
            :meth:`wait` is called again. Stores without such a feed raise
            :exc:`NotImplementedError`.
        """
        raise NotImplementedError()

    def get_info(self) -> dict[str, Any]:
        """Facts about the store; the ``size`` key (messages stored) is always present."""
        raise NotImplementedError()


class Queue(Greenlet):
    """Stores messages and delivers them through a relay, with retries and bounces.

    Start it with :meth:`~gevent.Greenlet.start`: it then loads the messages
    already in the store and schedules their attempts.

    :param store: a :class:`QueueStorage`.
    :param relay: the :class:`~slimta.relay.Relay` that delivers; without one,
        messages are only stored.
    :param backoff: ``backoff(envelope, attempts)`` gives the seconds until the
        next attempt after a transient failure, or ``None`` to give up and bounce
        ("too many retries"). The default retries with an exponential interval
        from 5 minutes up to 2 hours and gives up 5 days after the message
        arrived (RFC 5321 §4.5.4.1).
    :param bounce_factory: ``bounce_factory(envelope, reply)`` builds the bounce
        for failed recipients, or returns ``None`` for none;
        :class:`~slimta.bounce.Bounce` by default.
    :param bounce_queue: the queue bounces are enqueued to; this queue by default.
    :param store_pool: the most store operations at once (a number or a
        :class:`gevent.pool.Pool`); unlimited by default.
    :param relay_pool: the most delivery attempts at once (a number, or a
        :class:`gevent.pool.Pool` whose ``size`` is used). By default, for a
        relay with a bounded connection pool (a
        :class:`~slimta.relay.pool.RelayPool` with a ``pool_size``),
        :data:`ATTEMPTS_PER_CONNECTION` times its ``pool_size``; otherwise
        unlimited. Messages beyond the limit wait their turn in arrival order;
        :meth:`enqueue` never waits for a slot.

    .. versionchanged:: 0.1
       The default backoff retries; python-slimta's never did.

    .. versionchanged:: 0.1
       Attempts run in at most ``relay_pool`` greenlets that take one message
       after another, instead of one greenlet per message; without
       ``relay_pool`` the limit follows the relay's ``pool_size``.
    """

    def __init__(
        self,
        store: QueueStorage,
        relay: Relay | None = None,
        backoff: Callable[[Envelope, int], float | None] | None = None,
        bounce_factory: Callable[[Envelope, Reply], Envelope | None] | None = None,
        bounce_queue: Any = None,
        store_pool: int | gevent.pool.Pool | None = None,
        relay_pool: int | gevent.pool.Pool | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.relay = relay
        self.backoff: Backoff = backoff or self._default_backoff
        self._own_backoff = backoff is None
        if bounce_factory is None:
            from slimta.bounce import Bounce

            bounce_factory = Bounce
        self.bounce_factory: BounceFactory = bounce_factory
        self.bounce_queue = bounce_queue if bounce_queue is not None else self
        #: Set whenever an entry is added to :attr:`queued`.
        self.wake = Event()
        #: ``(timestamp, id)`` of messages waiting for their next attempt, in order.
        self.queued: list[tuple[float, str]] = []
        #: IDs of messages with an attempt in progress.
        self.active_ids: set[str] = set()
        #: IDs present in :attr:`queued`.
        self.queued_ids: set[str] = set()
        self.queue_policies: list[QueuePolicy] = []
        self.store_pool = _as_pool(store_pool)
        self.relay_pool = _as_pool(relay_pool)
        #: The most attempts in flight at once (``None``: no limit).
        self.max_attempts: int | None = _attempt_limit(self.relay_pool, relay)
        # The greenlets that run attempts, each taking one message after
        # another from _ready until it is empty; they park for reuse after.
        self._attempts = GreenletRecycler()
        self._runners = 0
        # (id, envelope or None: read it from the store) of messages due now,
        # in order; each of their IDs is in active_ids.
        self._ready: collections.deque[tuple[str, Envelope | None]] = collections.deque()
        self._ready_envelopes = 0
        # IDs in _ready that _dequeue() will read from the store, and the
        # envelopes enqueue() stored for some of them meanwhile: a store's
        # wait() may announce a new message before enqueue() has its ID, and
        # then no store.get() is needed to attempt it.
        self._unread: set[str] = set()
        self._fresh: dict[str, Envelope] = {}
        self._helpers = Group()
        self._finished: set[str] = set()
        self._finished_order: collections.deque[str] = collections.deque()
        self._closed = False
        self._time: Callable[[], float] = time.time

    # -- policies ----------------------------------------------------------
    def add_policy(self, policy: QueuePolicy) -> None:
        """Run ``policy`` on every message before it is stored.

        :raises TypeError: when ``policy`` is not a :class:`~slimta.policy.QueuePolicy`.
        """
        if not isinstance(policy, QueuePolicy):
            raise TypeError("Argument not a QueuePolicy.")
        self.queue_policies.append(policy)

    @staticmethod
    def _default_backoff(envelope: Envelope, attempts: int) -> float | None:
        return default_backoff(envelope, attempts)

    def _run_policies(self, envelope: Envelope) -> list[Envelope]:
        return apply_queue_policies(self.queue_policies, envelope)

    # -- storing -----------------------------------------------------------
    def _store_call(self, func: Callable[..., Any], *args: Any) -> Any:
        if self.store_pool is None:
            return func(*args)
        return self.store_pool.apply(func, args)

    def _write_one(self, envelope: Envelope, timestamp: float) -> str | QueueError:
        if not envelope.recipients:
            return _queue_error("Envelope has no recipients", Reply("554", "5.5.1 No recipients"))
        try:
            return str(self._store_call(self.store.write, envelope, timestamp))
        except QueueError as exc:
            if exc.reply is None:  # a store's own error: still tell the edge what to say
                exc.reply = Reply("451", "4.3.0 Could not store the message")
            return exc
        except Exception as exc:
            log_exception(__name__)
            return _queue_error(
                f"Could not store the message: {exc}",
                Reply("451", "4.3.0 Could not store the message"),
            )

    def enqueue(self, envelope: Envelope) -> list[tuple[Envelope, str | QueueError]]:
        """Run the queue policies, store the result and start delivering it.

        Returns only once the store holds each message.

        :returns: ``(envelope, id)`` for each stored envelope (a policy may have
            split the message), or ``(envelope, QueueError)`` for one that was
            not stored. Nothing else is raised: a failing policy or store is
            logged and reported as a :class:`QueueError` with a ``4xx`` reply.
        """
        now = self._time()
        if envelope.timestamp is None:
            envelope.timestamp = now
        try:
            envelopes = self._run_policies(envelope)
        except Exception as exc:
            log_exception(__name__)
            error = _queue_error(
                f"Queue policy failed: {exc}", Reply("451", "4.3.0 Message policy failed")
            )
            return [(envelope, error)]
        ids: list[str | QueueError]
        if len(envelopes) == 1:
            ids = [self._write_one(envelopes[0], now)]
        else:
            writers = [gevent.spawn(self._write_one, env, now) for env in envelopes]
            gevent.joinall(writers)
            ids = [
                writer.value
                if writer.successful()
                else _queue_error("Write failed", Reply("451", "4.3.0 Could not store"))
                for writer in writers
            ]
        results = list(zip(envelopes, ids, strict=True))
        for env, id in results:
            if isinstance(id, str):
                self._start_new(id, env)
        return results

    def _start_new(self, id: str, envelope: Envelope) -> None:
        if self.relay is None or self._closed:
            return
        if id in self.queued_ids or id in self._unread:
            # load() or wait() saw the message while store.write() was still
            # returning, and it is scheduled but not yet read back: hand over
            # the envelope instead.
            self._fresh[id] = envelope
            return
        if id in self.active_ids or id in self._finished:
            # Already being attempted, or even done: a second attempt would
            # deliver it twice.
            return
        self.active_ids.add(id)
        self._submit(id, envelope)

    # -- attempt slots -----------------------------------------------------
    def _submit(self, id: str, envelope: Envelope | None) -> None:
        """Run an attempt for ``id`` (already in :attr:`active_ids`) when a slot is free.

        Never blocks: the message waits in arrival order for a free slot.
        """
        if envelope is not None:
            if self._ready_envelopes >= READY_ENVELOPES:
                envelope = None  # read back from the store when its turn comes
            else:
                self._ready_envelopes += 1
        if envelope is None:
            self._unread.add(id)
        self._ready.append((id, envelope))
        limit = self.max_attempts
        if limit is None or self._runners < limit:
            self._runners += 1
            self._attempts.spawn(self._run_attempts)

    def _run_attempts(self) -> None:
        # Takes messages until none is waiting. The check for an empty _ready
        # and the count's decrement happen with no switch in between, so a
        # message _submit() leaves here always has a runner that will see it.
        try:
            ready = self._ready
            while ready and not self._closed:
                id, envelope = ready.popleft()
                try:
                    if envelope is None:
                        self._dequeue(id)
                    else:
                        self._ready_envelopes -= 1
                        self._attempt(id, envelope, 0)
                except Exception:
                    # _attempt() classifies everything a relay or store does;
                    # this is a bug of ours: the store still holds the message.
                    log_exception(__name__, queue_id=id)
                    self._retry_store_later(id)
        finally:
            self._runners -= 1

    # -- scheduling --------------------------------------------------------
    def _add_queued(self, entry: tuple[float, str]) -> None:
        timestamp, id = entry
        if id in self.queued_ids or id in self.active_ids:
            return
        bisect.insort(self.queued, (float(timestamp), id))
        self.queued_ids.add(id)
        self.wake.set()

    def _add_fed(self, entry: tuple[float, str]) -> None:
        # From load() or wait(): a message this queue already finished (its
        # own write, announced after the delivery) needs no store.get() to find
        # it gone.
        if entry[1] not in self._finished:
            self._add_queued(entry)

    def _forget(self, id: str) -> None:
        self.active_ids.discard(id)
        self.queued_ids.discard(id)
        self._fresh.pop(id, None)
        # Remembered for a while, for _start_new(); oldest first out.
        if id in self._finished:
            return
        self._finished.add(id)
        self._finished_order.append(id)
        if len(self._finished_order) > FINISHED_MEMORY:
            self._finished.discard(self._finished_order.popleft())

    def _retry_store_later(self, id: str) -> None:
        self.active_ids.discard(id)
        self._add_queued((self._time() + STORE_RETRY_SECONDS, id))

    def _load_all(self) -> None:
        # Until the store can be listed, what it already holds is not scheduled:
        # keep trying, or those messages would wait for the next restart.
        while not self._closed:
            try:
                entries = self._store_call(lambda: list(self.store.load()))
            except Exception:
                log_exception(__name__)
                gevent.sleep(STORE_RETRY_SECONDS)
                continue
            for entry in entries:
                self._add_fed(entry)
            return

    def _wait_store(self) -> None:
        while not self._closed:
            try:
                for entry in self.store.wait():
                    self._add_fed(entry)
            except NotImplementedError:
                return
            except Exception:
                log_exception(__name__)
                gevent.sleep(STORE_RETRY_SECONDS)

    def _take_ready(self, now: float) -> list[str]:
        queued = self.queued
        split = 0
        while split < len(queued) and queued[split][0] <= now:
            split += 1
        ready = [id for _, id in queued[:split]]
        del queued[:split]
        for id in ready:
            self.queued_ids.discard(id)
        return ready

    def _dequeue(self, id: str) -> None:
        self._unread.discard(id)
        fresh = self._fresh.pop(id, None)
        if fresh is not None:
            self._attempt(id, fresh, 0)  # just stored by enqueue(): no attempt yet
            return
        try:
            envelope, attempts = self._store_call(self.store.get, id)
        except KeyError:
            self._forget(id)
            return
        except Exception:
            log_exception(__name__, queue_id=id)
            self._retry_store_later(id)
            return
        self._attempt(id, envelope, attempts)

    def flush(self) -> None:
        """Attempt every waiting message now, whatever its retry time."""
        self.queued[:] = sorted((0.0, id) for _, id in self.queued)
        self.wake.set()

    def _run(self) -> None:
        if self.relay is None:
            return
        self._helpers.spawn(self._load_all)
        self._helpers.spawn(self._wait_store)
        while not self._closed:
            self.wake.clear()
            for id in self._take_ready(self._time()):
                if self._closed:
                    break
                if id not in self.active_ids:
                    self.active_ids.add(id)
                    self._submit(id, None)
            timeout = None
            if self.queued:
                timeout = max(0.0, self.queued[0][0] - self._time())
            self.wake.wait(timeout)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop gracefully: start no new attempt, let those in flight finish.

        Messages keep their place in the store; a new queue on the same store
        finds them with :meth:`QueueStorage.load`.

        :param timeout: the most seconds to wait for attempts in flight; those
            still running then are killed, as by :meth:`kill`.
        :returns: ``True`` when every attempt in flight finished in time.
        """
        self._closed = True
        self.wake.set()
        self._helpers.kill()
        finished = self._attempts.join(timeout=timeout)
        super().kill()
        self._attempts.kill()  # those still running, and the parked ones
        return bool(finished)

    def kill(
        self, exception: Any = GreenletExit, block: bool = True, timeout: float | None = None
    ) -> None:
        """Stop at once, killing the attempts in flight.

        The messages they were delivering stay in the store: the next
        :meth:`QueueStorage.load` finds them again.
        """
        self._closed = True
        self._helpers.kill(block=block, timeout=timeout)
        self._attempts.kill(block=block, timeout=timeout)
        super().kill(exception, block=block, timeout=timeout)

    # -- attempts ----------------------------------------------------------
    def _attempt(self, id: str, envelope: Envelope, attempts: int) -> None:
        recipients = list(envelope.recipients)
        if not recipients:
            _log.warning("queue:%s: no recipients left, removing", id)
            self._remove(id)
            return
        assert self.relay is not None
        outcome: Outcome | None
        try:
            result = self.relay._attempt(envelope, attempts)
            if all_delivered(recipients, envelope.recipients, result):
                outcome = None  # the common case, with nothing to build
            else:
                outcome = classify(recipients, envelope.recipients, result)
        except PermanentRelayError as exc:
            outcome = Outcome(permanent=[(i, exc.reply) for i in range(len(recipients))])
        except TransientRelayError as exc:
            outcome = Outcome(transient=[(i, exc.reply) for i in range(len(recipients))])
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            if isinstance(exc, GreenletExit) and self._closed:
                raise  # this attempt is being killed: the message stays in the store
            # Anything else, even a GreenletExit or a gevent.Timeout escaping the
            # relay, is a relay bug: retried, so the message is never stranded.
            log_exception(__name__, queue_id=id)
            reply = unhandled_reply(exc)
            outcome = Outcome(transient=[(i, reply) for i in range(len(recipients))])
        try:
            if outcome is None:
                self._remove(id)
            else:
                self._settle(id, envelope, recipients, outcome)
        except Exception:
            # The store is the record of what is left to do: start over from it.
            log_exception(__name__, queue_id=id)
            self._retry_store_later(id)

    def _settle(self, id: str, envelope: Envelope, recipients: list[str], outcome: Outcome) -> None:
        if len(outcome.delivered) == len(recipients):
            self._remove(id)
            return
        if not outcome.delivered:
            self._settle_failures(id, envelope, recipients, outcome)
            return
        # First of all, so that nothing after this can deliver them again.
        self._mark_done(
            id,
            [recipients[i] for i in outcome.delivered],
            outcome.delivered,
            lambda: self._settle_failures(id, envelope, recipients, outcome),
        )

    def _settle_failures(
        self, id: str, envelope: Envelope, recipients: list[str], outcome: Outcome
    ) -> None:
        # A permanent failure is bounced before it is recorded as done: once
        # enqueue() has returned, the bounce is stored, so a crash at any point
        # can repeat a bounce but never lose one. A bounce that cannot be queued
        # leaves its recipients to be retried (and bounced again) later.
        bounced, transient = bounce_permanent(outcome, recipients, envelope, self._bounce)
        if not transient:
            self._remove(id)
            return
        transient.sort(key=lambda pair: pair[0])

        def retry() -> None:
            self._retry_later(id, envelope, recipients, transient)

        if not bounced:
            retry()
            return
        # Indexes into what the store now holds: the delivered ones are gone.
        left = [i for i in range(len(recipients)) if i not in set(outcome.delivered)]
        position = {index: n for n, index in enumerate(left)}
        self._mark_done(
            id, [recipients[i] for i in bounced], [position[i] for i in sorted(bounced)], retry
        )

    def _mark_done(
        self, id: str, rcpts: list[str], indexes: list[int], then: Callable[[], None]
    ) -> None:
        """Record ``rcpts`` (at ``indexes`` in the stored envelope) as done, then call ``then``.

        When the store fails, it is tried again later, and what is recorded then
        is found by address in the envelope the store holds at that time: a
        store that failed after all (a timeout after the write) is never asked
        to mark the same recipients twice, which with relative indexes would
        mark others.
        """
        try:
            self._store_call(self.store.set_recipients_delivered, id, sorted(indexes))
        except Exception:
            log_exception(__name__, queue_id=id)
            self._helpers.add(
                gevent.spawn_later(STORE_RETRY_SECONDS, self._mark_done_again, id, rcpts, then)
            )
            return
        then()

    def _mark_done_again(self, id: str, rcpts: list[str], then: Callable[[], None]) -> None:
        try:
            stored, _ = self._store_call(self.store.get, id)
            wanted = list(rcpts)
            indexes = []
            for index, rcpt in enumerate(stored.recipients):
                if rcpt in wanted:
                    wanted.remove(rcpt)
                    indexes.append(index)
            if indexes:
                self._store_call(self.store.set_recipients_delivered, id, indexes)
        except KeyError:
            self._forget(id)
            return
        except Exception:
            log_exception(__name__, queue_id=id)
            self._helpers.add(
                gevent.spawn_later(STORE_RETRY_SECONDS, self._mark_done_again, id, rcpts, then)
            )
            return
        try:
            then()
        except Exception:
            log_exception(__name__, queue_id=id)
            self._retry_store_later(id)

    def _retry_later(
        self,
        id: str,
        envelope: Envelope,
        recipients: list[str],
        transient: list[tuple[int, Reply]],
    ) -> None:
        remaining = envelope.copy([recipients[i] for i, _ in transient])
        try:
            attempts = int(self._store_call(self.store.increment_attempts, id))
        except Exception:
            log_exception(__name__, queue_id=id)
            self._retry_store_later(id)
            return
        try:
            if self._own_backoff:
                wait = default_backoff(remaining, attempts, now=self._time())
            else:
                wait = self.backoff(remaining, attempts)
        except Exception:
            log_exception(__name__, queue_id=id)
            wait = default_backoff(remaining, attempts, now=self._time())
        if wait is None:
            failed = [(recipients[i], too_many_retries(reply)) for i, reply in transient]
            for reply, rcpts in group_by_reply(failed):
                self._bounce(envelope.copy(rcpts), reply)
            self._remove(id)
            return
        when = self._time() + float(wait)
        try:
            self._store_call(self.store.set_timestamp, id, when)
        except Exception:
            log_exception(__name__, queue_id=id)
        self.active_ids.discard(id)
        self._add_queued((when, id))

    def _remove(self, id: str) -> None:
        try:
            self._store_call(self.store.remove, id)
        except Exception:
            log_exception(__name__, queue_id=id)
            # Still active, so that nothing attempts it again; the removal is retried.
            self.active_ids.add(id)
            self._helpers.add(gevent.spawn_later(STORE_RETRY_SECONDS, self._remove, id))
            return
        self._forget(id)

    def _bounce(self, envelope: Envelope, reply: Reply) -> bool:
        """Queue the bounce of ``envelope``'s recipients; ``False`` if it could not be queued."""
        if is_null_sender(envelope.sender):
            return True  # never bounce a bounce (RFC 5321 §4.5.5)
        address = bounce_address(envelope.sender)
        if address is None:
            _log.error(
                "no bounce for %s: the sender %r is not a valid address (%s)",
                ", ".join(repr(r) for r in envelope.recipients),
                envelope.sender,
                reply,
            )
            return True
        envelope.sender = address
        try:
            bounce = self.bounce_factory(envelope, reply)
            if not bounce:
                return True
            results = self.bounce_queue.enqueue(bounce)
        except Exception:
            log_exception(__name__, sender=envelope.sender)
            return False
        queued = True
        for _, result in results or ():
            if isinstance(result, BaseException):
                _log.error("bounce to %r not queued: %s", envelope.sender, result)
                queued = False
        return queued


def _attempt_limit(relay_pool: Pool | None, relay: Relay | None) -> int | None:
    if relay_pool is not None:
        return None if relay_pool.size is None else max(1, int(relay_pool.size))
    if isinstance(relay, RelayPool) and isinstance(relay.pool_size, int) and relay.pool_size > 0:
        return ATTEMPTS_PER_CONNECTION * relay.pool_size
    return None


def _as_pool(pool: int | Pool | None) -> Pool | None:
    if pool is None or isinstance(pool, Pool):
        return pool
    return Pool(pool)
