"""A pool of worker greenlets that deliver queued envelopes.

:class:`RelayPool` knows nothing about protocols: it keeps a queue of
``(AsyncResult, Envelope)`` requests and a set of :class:`RelayPoolClient`
greenlets that take requests from it. A subclass supplies the clients through
:meth:`RelayPool.add_client`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import AsyncResult

from slimta.relay import Relay, RelayResult, TransientRelayError
from slimta.relay._replies import internal_failure
from slimta.util.deque import BlockingDeque

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["RelayPool", "RelayPoolClient"]

Request = tuple[AsyncResult, "Envelope"]

# A client forgets the requests it resolved once it has taken this many.
_PRUNE_AT = 4

# Queued by RelayPool.close(), behind the requests: the client that takes it
# ends as after an idle timeout (QUIT, close), so close() needs no kill.
# (Built at run time: a literal ``(None, None)`` may be a shared constant.)
_WAKE: Any = tuple([None, None])


def _shutdown_error() -> TransientRelayError:
    return internal_failure("Relay shut down")


def closing_error() -> TransientRelayError:
    """``451 4.3.0 Relay is closing``: what an attempt gets once ``close()`` was called."""
    return internal_failure("Relay is closing")


def _client_lost_error() -> TransientRelayError:
    return internal_failure("Relay client exited unexpectedly")


class RelayPool(Relay):
    """A relay that hands envelopes to a bounded set of client greenlets.

    :param pool_size: the most clients alive at once; ``None`` means no limit.
    """

    def __init__(self, pool_size: int | None = None) -> None:
        super().__init__()
        self.pool: set[RelayPoolClient] = set()
        self.pool_size = pool_size
        self.queue: BlockingDeque = BlockingDeque()
        #: True once :meth:`close` was called: new attempts fail at once.
        self.closing = False

    def add_client(self) -> RelayPoolClient:
        """Return a new, unstarted client. Subclasses must override this."""
        raise NotImplementedError()

    def _start_client(self) -> None:
        client = self.add_client()
        client.queue = self.queue
        client.link(self._client_exited)
        self.pool.add(client)
        client.start()

    def _client_exited(self, client: Any) -> None:
        self.pool.discard(client)
        client._fail_pending(_client_lost_error)
        if self.queue:
            self._check_idle()

    # python-slimta's names for these two, kept for subclasses that call them.
    _add_client = _start_client
    _remove_client = _client_exited

    def _check_idle(self) -> None:
        if self.pool_size is not None and len(self.pool) >= self.pool_size:
            return
        idle = sum(1 for client in self.pool if client.idle)
        waiting = len(self.queue)
        if self.closing:  # wake-ups queued by close() are not work
            waiting = sum(1 for item in self.queue if item is not _WAKE)
        if waiting > idle:
            self._start_client()

    def attempt(self, envelope: Envelope, attempts: int) -> RelayResult:
        """Queue ``envelope`` for the next free client and wait for its result.

        A client is started when queued requests outnumber idle clients and the
        pool is below :attr:`pool_size`; otherwise the request waits its turn.

        :raises TransientRelayError: ``451 4.3.0`` once :meth:`close` was called.
        """
        if self.closing:
            raise closing_error()
        result: AsyncResult = AsyncResult()
        self.queue.append((result, envelope))
        self._check_idle()
        return result.get()

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting work, let what is in flight finish, then stop.

        From now on :meth:`attempt` fails at once with ``451 4.3.0``. Requests
        already queued or being delivered go on; each client then ends the way
        it would after an idle timeout (an SMTP client sends ``QUIT``). What is
        still running after ``timeout`` seconds is killed as by :meth:`kill`,
        and its requests fail with ``451 4.3.0``.

        :param timeout: the most seconds to wait; ``None`` waits for as long as
            the deliveries take (each is bounded by its own timeouts).
        """
        self.closing = True
        with gevent.Timeout(timeout, False):
            while self.pool:
                clients = [client for client in self.pool if not client.dead]
                if not clients:
                    gevent.sleep(0)  # let exit callbacks run; one may start a client
                    continue
                wakes = sum(1 for item in self.queue if item is _WAKE)
                # One wake-up per client, behind the requests already queued.
                self.queue.extend([_WAKE] * (len(clients) - wakes))
                gevent.wait(clients, count=1)
        self.kill()

    def kill(self) -> None:
        """Stop every client. Requests still queued fail with ``451 4.3.0``."""
        clients = list(self.pool)
        self.pool.clear()
        for client in clients:
            client.unlink(self._client_exited)
        gevent.killall(clients, block=True)
        for client in clients:
            client._fail_pending(_shutdown_error)
        while self.queue:
            result, _ = self.queue.popleft()
            if result is not None and not result.ready():
                result.set_exception(_shutdown_error())


class RelayPoolClient(gevent.Greenlet):
    """One worker of a :class:`RelayPool`.

    :param queue: the pool's queue of ``(AsyncResult, Envelope)`` requests.
    :param idle_timeout: how long :meth:`poll` waits for work; ``None`` waits
        forever.
    """

    def __init__(self, queue: BlockingDeque | None, idle_timeout: float | None = None) -> None:
        super().__init__()
        self.queue = queue
        self.idle_timeout = idle_timeout
        #: True only while blocked in :meth:`poll`.
        self.idle = False
        # The requests taken from the queue and not handed back; the pool fails
        # the unresolved ones if this greenlet dies without resolving them.
        self._taken: list[AsyncResult] = []

    def poll(self) -> tuple[AsyncResult, Envelope] | tuple[None, None]:
        """Take the next request, waiting up to :attr:`idle_timeout` seconds.

        :returns: ``(result, envelope)``, or ``(None, None)`` after the timeout.
        """
        assert self.queue is not None
        self.idle = True
        try:
            with gevent.Timeout(self.idle_timeout, False):
                item = self.queue.popleft()
                self._track(item)
                return item
            return None, None
        finally:
            self.idle = False

    def poll_nowait(self) -> tuple[AsyncResult, Envelope] | tuple[None, None]:
        """Take the next request only if one is waiting now; never blocks.

        The request is this client's from then on, exactly as one from
        :meth:`poll`: resolve it, or give it back with :meth:`requeue`.

        :returns: ``(result, envelope)``, or ``(None, None)`` when none is waiting.
        """
        if self.queue is None:
            return None, None
        item = self.queue.popleft_nowait()
        if item is None:
            return None, None
        if item is _WAKE:  # for poll(): the pool is closing
            self.queue.appendleft(item)
            return None, None
        self._track(item)
        return item

    def requeue(self, result: AsyncResult, envelope: Envelope) -> None:
        """Give a request back, at the head of the queue, for the next free client.

        For a request this client took but never started on the wire, e.g.
        because its connection closed while idle.
        """
        assert self.queue is not None
        if result in self._taken:
            self._taken.remove(result)
        self.queue.appendleft((result, envelope))

    # The name this had before it was public.
    _requeue = requeue

    @property
    def pending(self) -> tuple[AsyncResult, ...]:
        """The requests this client took and has neither resolved nor requeued."""
        return tuple(result for result in self._taken if not result.ready())

    def _track(self, item: Any) -> None:
        # A subclass's pool may queue other items: only a request is tracked.
        if isinstance(item, tuple) and isinstance(item[0], AsyncResult):
            taken = self._taken
            if len(taken) >= _PRUNE_AT:  # keep the list short: drop resolved requests
                taken[:] = [result for result in taken if not result.ready()]
            taken.append(item[0])

    def _fail_pending(self, make_error: Callable[[], BaseException]) -> None:
        taken, self._taken = self._taken, []
        for result in taken:
            if not result.ready():
                result.set_exception(make_error())

    def _run(self) -> None:
        """The greenlet body: take work with :meth:`poll` and resolve each request.

        Subclasses must override this, and resolve every request they take
        exactly once (``set`` or ``set_exception``).
        """
        raise NotImplementedError()
