"""A queue that delivers through Celery workers: one relay, many processes or machines.

Install with the ``celery`` extra: ``pip install 'slimta-relay[celery]'``. It
replaces python-slimta-celeryqueue, with the same constructor and methods, on
Celery 5 with a Redis broker and gevent worker pools (``celery worker -P gevent``).

How a message travels:

1. :meth:`CeleryQueue.enqueue` runs the queue policies, writes each envelope to
   a :class:`~slimta.redisstorage.RedisStorage` (the source of truth, without
   pickle), gives it a *deadline* (``dispatch_timeout`` from now: a sent task
   that has not started by then is taken for lost) and only then sends a task
   whose payload is
   ``{"v": 1, "id": "<queue id>"}``. The task ID is the queue ID. If the task
   cannot be sent (broker unreachable), the stored copy is removed again and the
   envelope's result is a :class:`~slimta.queue.QueueError` with a ``451``
   reply: the client keeps the message and retries, so nothing is delivered
   behind its back and nothing is lost. (Only if that removal fails too is the
   copy left for the sweeper; the message may then arrive twice.)
2. A worker runs the task (``acks_late``, ``reject_on_worker_lost``): in one
   Redis round trip (a script) it takes a short *lease* on the ID, moves the
   deadline ``lease`` seconds ahead and reads the envelope without the
   recipients already delivered; one greenlet per worker process renews all of
   its leases (and their deadlines) every third of ``lease``, in one round trip.
   It calls the relay. Recipients the relay delivered are recorded
   at once, before anything else happens; permanent failures are bounced
   (``bounce_factory``, :class:`~slimta.bounce.Bounce` by default, enqueued
   through this same queue) and recorded; transient ones are retried with
   ``task.retry(countdown=backoff(envelope, attempts))``, with only the
   remaining recipients (deadline: the retry time plus ``dispatch_timeout``).
   When ``backoff`` returns ``None`` they are bounced ("Too many retries"). A
   message done with (delivered or bounced) is deleted and its lease given up
   in one round trip, so a delivered message costs the worker two round trips
   to the store. A task that finds the lease taken, the message gone or its
   retry time not yet come does nothing (a duplicate).
3. The sweeper re-sends the task of every ID whose deadline has passed: a
   message whose task the broker lost (kombu's Redis transport can lose a
   message a worker popped just before it was SIGKILLed), or whose worker died.
   It is a greenlet started in every worker of the app (Celery's
   ``worker_ready`` signal); each round one worker wins a short lock in Redis
   and sweeps, and IDs are claimed atomically, so a crashed sweeper is replaced
   within one interval and no ID is sent twice per round. A timer in the
   workers was chosen over a beat task so that no extra process (beat) has to
   be kept alive; :meth:`CeleryQueue.sweep` does one round, for a beat task if
   wanted.

The task is named ``slimta.celeryqueue.attempt_delivery``, or
``attempt_delivery_<suffix>`` with a ``suffix``: python-slimta-celeryqueue's
names, so ``task_routes`` written for it still apply. It is registered on the
given app only (not as a shared task). An app can hold several queues (one per
relay, say) as long as each has its own ``suffix``; a second queue under a name
already taken is refused with :class:`ValueError`, since Celery would keep the
first task and every message would reach the first queue's relay.

Delivery is at least once: a worker killed after the receiver accepted the
message but before the delivered record was written delivers it again. A
payload that is not valid (an unknown version, a corrupt one) is rejected and
logged, never retried. Workers must accept JSON only: an app whose
``accept_content`` allows pickle is refused.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
import uuid
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import gevent
from celery import signals
from gevent import Greenlet

from slimta.envelope import Envelope
from slimta.logging import log_exception
from slimta.policy import QueuePolicy, apply_queue_policies
from slimta.queue import QueueError
from slimta.redisstorage import RedisStorage
from slimta.relay import Relay
from slimta.smtp.reply import Reply

from ._delivery import DeliveryTask
from ._ledger import Ledger
from ._payload import PAYLOAD_VERSION, PayloadError, make_payload, parse_payload

__all__ = [
    "CeleryApp",
    "CeleryQueue",
    "PAYLOAD_VERSION",
    "SUFFIXED_TASK_NAME",
    "TASK_NAME",
    "PayloadError",
    "make_payload",
    "parse_payload",
]

_log = logging.getLogger(__name__)

#: The delivery task's name without a ``suffix`` (the name Celery gave
#: python-slimta-celeryqueue's task: its module plus ``attempt_delivery``).
TASK_NAME = "slimta.celeryqueue.attempt_delivery"
#: The delivery task's name with a ``suffix``: ``attempt_delivery_<suffix>``
#: (python-slimta-celeryqueue's naming, without the module).
SUFFIXED_TASK_NAME = "attempt_delivery_{}"
#: Default seconds a worker's lease on a message lasts without a heartbeat.
DEFAULT_LEASE_SECONDS = 60.0
#: Default seconds between two sweeps.
DEFAULT_SWEEP_SECONDS = 15.0
#: Default seconds a sent task may wait in the broker before it is sent again.
DEFAULT_DISPATCH_SECONDS = 600.0
#: IDs re-sent per sweep at most.
SWEEP_BATCH = 1000
#: Content types that would let a worker unpickle broker data.
_PICKLE_TYPES = frozenset({"pickle", "application/x-python-serialize"})


class CeleryApp(Protocol):
    """What :class:`CeleryQueue` uses of a Celery app (:obj:`celery.Celery`)."""

    #: The app's configuration (``accept_content``, ``broker_url``).
    conf: Any

    def task(self, *args: Any, **opts: Any) -> Any:
        """Register a task (the decorator form)."""


class CeleryQueue(DeliveryTask):
    """Stores messages in Redis and delivers them with a Celery task, on any worker.

    :param celery: the :obj:`celery.Celery` app, the same in the enqueuing
        process and in the workers.
    :param relay: the :class:`~slimta.relay.Relay` the task delivers with.
    :param suffix: names the task ``attempt_delivery_<suffix>`` instead of
        ``slimta.celeryqueue.attempt_delivery`` (python-slimta-celeryqueue's
        names), so that an app can have one queue per relay.
    :param backoff: ``backoff(envelope, attempts)``: seconds before the next
        attempt after a transient failure, or ``None`` to bounce. By default
        exponential from 5 minutes to 2 hours, giving up after 5 days.
    :param bounce_factory: ``bounce_factory(envelope, reply)`` builds the bounce
        (or returns ``None`` for none); :class:`~slimta.bounce.Bounce` by default.
    :param store: where messages live: a :class:`~slimta.redisstorage.RedisStorage`
        used by this queue only. By default one on the broker's Redis (the
        broker URL must then be ``redis://``). A new keyword.
    :param lease: seconds a message stays with a worker that stopped answering
        before the sweeper sends it again. A new keyword.
    :param sweep_interval: seconds between sweeps. A new keyword.
    :param dispatch_timeout: seconds a task may wait in the broker (or, with
        its countdown, in a worker) before the sweeper sends it again; longer
        than the longest backlog, or a backlog is sent twice. A new keyword.
    :raises ValueError: the app accepts pickle; or no store is given and the
        broker is not Redis; or the app already has a task of this name (another
        CeleryQueue without a ``suffix``, or with the same one): Celery would
        keep the first task, and every message would go to the first queue's
        relay, so each queue of an app needs its own ``suffix``.
    """

    def __init__(
        self,
        celery: CeleryApp,
        relay: Relay,
        suffix: str | None = None,
        backoff: Callable[[Envelope, int], float | None] | None = None,
        bounce_factory: Callable[[Envelope, Reply], Envelope | None] | None = None,
        *,
        store: RedisStorage | None = None,
        lease: float = DEFAULT_LEASE_SECONDS,
        sweep_interval: float = DEFAULT_SWEEP_SECONDS,
        dispatch_timeout: float = DEFAULT_DISPATCH_SECONDS,
    ) -> None:
        accepted = {str(c) for c in (celery.conf.accept_content or ())}
        if accepted & _PICKLE_TYPES:
            raise ValueError("the Celery app accepts pickle; set accept_content = ['json']")
        self.celery = celery
        self.relay = relay
        self.backoff = backoff
        if bounce_factory is None:
            from slimta.bounce import Bounce

            bounce_factory = Bounce
        self.bounce_factory: Callable[[Envelope, Reply], Envelope | None] = bounce_factory
        self.queue_policies: list[QueuePolicy] = []
        self.lease = float(lease)
        self.sweep_interval = float(sweep_interval)
        self.dispatch_timeout = float(dispatch_timeout)
        self.store = store if store is not None else _store_for(celery)
        task_name = SUFFIXED_TASK_NAME.format(suffix) if suffix else TASK_NAME
        _claim_task_name(celery, task_name)  # the last check before the task is registered
        self.ledger = Ledger(self.store, task_name)
        queue = self

        def attempt_delivery(task: Any, *args: Any, **kwargs: Any) -> str:
            return queue._task_body(task, *args, **kwargs)

        #: The Celery task that delivers one stored message.
        self.attempt_task: Any = celery.task(
            name=task_name,
            # This app only: a shared task would be added to every app created
            # later in the process, each time under the same name.
            shared=False,
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            max_retries=None,
            serializer="json",
            ignore_result=True,
        )(attempt_delivery)
        self._sweeper: Greenlet | None = None
        self._held = {}
        self._renewer = None
        self._time: Callable[[], float] = time.time
        signals.worker_ready.connect(self._on_worker_ready)
        signals.worker_shutdown.connect(self._on_worker_shutdown)

    # -- the python-slimta-celeryqueue API ----------------------------------
    def add_policy(self, policy: QueuePolicy) -> None:
        """Run ``policy`` on every message before it is stored.

        :raises TypeError: when ``policy`` is not a :class:`~slimta.policy.QueuePolicy`.
        """
        if not isinstance(policy, QueuePolicy):
            raise TypeError("Argument not a QueuePolicy.")
        self.queue_policies.append(policy)

    def flush(self) -> None:
        """Not supported: a task's countdown cannot be shortened.

        :raises NotImplementedError: always.
        """
        raise NotImplementedError()

    def kill(self) -> None:
        """Stop this process's sweeper and lease renewer, if they run.

        Tasks in flight are Celery's to stop (a worker calls this once its
        tasks are done).
        """
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.kill()
        self._stop_renewing()

    def enqueue(self, envelope: Envelope) -> list[tuple[Envelope, str | QueueError]]:
        """Run the policies, store each resulting envelope, then send its task.

        Returns once each message is stored and its task sent.

        :returns: ``(envelope, id)`` (the queue ID, also the task ID) or
            ``(envelope, QueueError)`` for each envelope; nothing is raised. A
            failing policy, store or broker gives a ``451`` reply, an envelope
            without recipients ``554``.
        """
        now = self._time()
        if envelope.timestamp is None:
            envelope.timestamp = now
        try:
            envelopes = self._run_policies(envelope)
        except Exception as exc:
            log_exception(__name__)
            return [(envelope, _error(f"Queue policy failed: {exc}", "Message policy failed"))]
        return [(env, self._enqueue_one(env, now)) for env in envelopes]

    # -- enqueuing -----------------------------------------------------------
    def _run_policies(self, envelope: Envelope) -> list[Envelope]:
        return apply_queue_policies(self.queue_policies, envelope)

    def _enqueue_one(self, envelope: Envelope, now: float) -> str | QueueError:
        if not envelope.recipients:
            return QueueError(
                "Envelope has no recipients", reply=Reply("554", "5.5.1 No recipients")
            )
        try:
            id = self.ledger.write(envelope, now, now + self.dispatch_timeout)
        except Exception as exc:
            log_exception(__name__)
            return _error(f"Could not store the message: {exc}", "Could not store the message")
        try:
            self._send(id)
        except Exception as exc:
            log_exception(__name__, queue_id=id)
            try:
                self.ledger.remove(id)
            except Exception:
                # Left for the sweeper: delivered once the broker is back, and
                # perhaps a second time if the client also sends it again.
                log_exception(__name__, queue_id=id)
            return _error(f"Could not send the delivery task: {exc}", "Could not queue the message")
        return id

    def _send(self, id: str, countdown: float | None = None) -> None:
        self.attempt_task.apply_async(
            args=[make_payload(id)], task_id=id, countdown=countdown, retry=False
        )

    # -- the sweeper -----------------------------------------------------------
    def sweep(self) -> int:
        """Send the task again for every message whose deadline passed; returns how many.

        :raises slimta.queue.QueueError: Redis failed.
        """
        now = self._time()
        ids = self.ledger.claim_overdue(now, now + self.dispatch_timeout, SWEEP_BATCH)
        sent = 0
        for id in ids:
            try:
                self._send(id)
                sent += 1
            except Exception:
                log_exception(__name__, queue_id=id)  # its new deadline brings it back
        if ids:
            _log.warning("celeryqueue: re-sent %d of %d overdue messages", sent, len(ids))
        return sent

    def start_sweeper(self) -> Greenlet:
        """Start sweeping every ``sweep_interval`` seconds in this process (idempotent)."""
        if self._sweeper is None or self._sweeper.dead:
            self._sweeper = gevent.spawn(self._sweep_forever)
        return self._sweeper

    def _sweep_forever(self) -> None:
        token = uuid.uuid4().hex
        while True:
            try:
                # The lock expires before the next round, so another worker can
                # take over at once if this one dies.
                if self.ledger.try_sweep_lock(token, self.sweep_interval * 0.9):
                    self.sweep()
            except Exception:
                log_exception(__name__)
            gevent.sleep(self.sweep_interval)

    def _on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is self.celery:
            self.start_sweeper()

    def _on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        self.kill()

    def get_info(self) -> dict[str, int]:
        """``size`` (messages stored), ``due`` (with a deadline) and ``overdue`` (past it)."""
        return self.ledger.info(self._time())


#: Task names taken by a CeleryQueue, per app.
_TASK_NAMES: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def _claim_task_name(celery: CeleryApp, name: str) -> None:
    """Take ``name`` for a new queue on ``celery``.

    :raises ValueError: another CeleryQueue on this app has it, or (in an app
        already finalized) any other task does.
    """
    taken = _TASK_NAMES.setdefault(celery, set())
    in_app = bool(getattr(celery, "finalized", False)) and name in getattr(celery, "tasks", {})
    if name in taken or in_app:
        raise ValueError(
            f"the Celery app already has a task named {name!r}; "
            "give each CeleryQueue of an app its own suffix"
        )
    taken.add(name)


def _error(message: str, text: str) -> QueueError:
    return QueueError(message, reply=Reply("451", f"4.3.0 {text}"))


def _store_for(celery: CeleryApp) -> RedisStorage:
    """A store on the broker's Redis (``redis://[:password@]host[:port][/db]``)."""
    url = urllib.parse.urlsplit(str(celery.conf.broker_url or ""))
    if url.scheme != "redis":
        raise ValueError("CeleryQueue needs store= unless the broker is redis://")
    db = url.path.strip("/")
    return RedisStorage(
        host=url.hostname or "localhost",
        port=url.port or 6379,
        db=int(db) if db else 0,
        password=urllib.parse.unquote(url.password) if url.password else None,
        prefix="slimta:",
    )
