"""Queue: the bound on attempts in flight, and what reaches the store around it.

Attempts run in at most ``max_attempts`` greenlets that take one message after
another; messages beyond that wait in arrival order, with their envelope. The
relay here is a :class:`~slimta.relay.pool.RelayPool` whose attempts block until
the test releases them, so the tests can count what is in flight at any moment.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import gevent
import gevent.queue
import pytest
from gevent.event import Event
from support import envelopes
from support.util import GUARD_SECONDS

import slimta.queue as queue_module
from slimta.envelope import Envelope
from slimta.queue import ATTEMPTS_PER_CONNECTION, Queue
from slimta.queue.dict import DictStorage
from slimta.relay import Relay
from slimta.relay.pool import RelayPool

make_envelope = partial(
    envelopes.make_envelope,
    sender="sender@src.test",
    data=b"From: sender@src.test\r\nSubject: inflight\r\n\r\nbody\r\n",
    timestamp=1_700_000_000.0,
)


class GatedRelay(RelayPool):
    """A relay with ``pool_size`` whose attempts wait for ``gate``; counts what is in flight."""

    def __init__(self, pool_size: int | None) -> None:
        super().__init__(pool_size)
        self.gate = Event()
        self.in_flight = 0
        self.most_in_flight = 0
        self.order: list[str] = []
        self.started: gevent.queue.Queue[str] = gevent.queue.Queue()
        #: Set each time an attempt starts.
        self.moved = Event()

    def attempt(self, envelope: Envelope, attempts: int) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.moved.set()
        self.order.append(envelope.recipients[0])
        self.started.put(envelope.recipients[0])
        try:
            self.gate.wait()
        finally:
            self.in_flight -= 1

    def wait_started(self, count: int) -> None:
        with gevent.Timeout(GUARD_SECONDS):
            while len(self.order) < count:
                self.started.get()


class PlainGatedRelay(Relay):
    """The same, without a pool size (as MxSmtpRelay, PipeRelay, a custom Relay)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = Event()
        self.in_flight = 0
        self.most_in_flight = 0
        self.moved = Event()

    def attempt(self, envelope: Envelope, attempts: int) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.moved.set()
        try:
            self.gate.wait()
        finally:
            self.in_flight -= 1


class CountingStore(DictStorage):
    """Counts get() calls (a read back from the store) per ID."""

    def __init__(self) -> None:
        super().__init__()
        self.gets: list[str] = []
        #: Set each time a message is removed.
        self.removed = Event()

    def get(self, id: str) -> tuple[Envelope, int]:
        self.gets.append(id)
        return super().get(id)

    def remove(self, id: str) -> None:
        super().remove(id)
        self.removed.set()


@pytest.fixture
def queues() -> Iterator[list[Queue]]:
    made: list[Queue] = []
    yield made
    for queue in made:
        queue.kill()


def start(queues: list[Queue], store: Any, relay: Relay | None, **kwargs: Any) -> Queue:
    kwargs.setdefault("backoff", lambda env, attempts: 0)
    queue = Queue(store, relay, **kwargs)
    queue.start()
    queues.append(queue)
    gevent.idle()  # let it load the store
    return queue


def wait_empty(store: CountingStore) -> None:
    """Wait, woken by each removal, until the store holds nothing."""
    with gevent.Timeout(GUARD_SECONDS):
        while store.env_db:
            store.removed.clear()
            store.removed.wait()


def wait_in_flight(relay: GatedRelay | PlainGatedRelay, count: int) -> None:
    """Wait, woken by each attempt that starts, until ``count`` are in flight."""
    with gevent.Timeout(GUARD_SECONDS):
        while relay.in_flight < count:
            relay.moved.clear()
            relay.moved.wait()


def test_default_bound_follows_the_relays_pool_size(queues) -> None:
    store = CountingStore()
    relay = GatedRelay(pool_size=3)
    queue = start(queues, store, relay)
    limit = ATTEMPTS_PER_CONNECTION * 3
    assert queue.max_attempts == limit
    with gevent.Timeout(GUARD_SECONDS):  # enqueue() never waits for a slot
        ids = [queue.enqueue(make_envelope(rcpts=[f"r{n}@x.test"]))[0][1] for n in range(25)]
    relay.wait_started(limit)
    gevent.idle()
    assert relay.in_flight == limit and len(queue._attempts) == limit
    assert len(queue.active_ids) == 25  # the rest wait their turn, known to the queue
    relay.gate.set()
    wait_empty(store)
    assert relay.most_in_flight == limit
    # Attempted once each, in arrival order, and never read back from the store.
    assert relay.order == [f"r{n}@x.test" for n in range(25)]
    assert store.gets == [] and all(isinstance(id, str) for id in ids)
    with gevent.Timeout(GUARD_SECONDS):
        queue._attempts.join()
    assert not queue.active_ids and queue._runners == 0


def test_explicit_relay_pool_is_the_bound(queues) -> None:
    store = CountingStore()
    relay = GatedRelay(pool_size=20)
    queue = start(queues, store, relay, relay_pool=2)
    assert queue.max_attempts == 2
    for n in range(6):
        queue.enqueue(make_envelope(rcpts=[f"r{n}@x.test"]))
    relay.wait_started(2)
    gevent.idle()
    assert relay.in_flight == 2
    relay.gate.set()
    wait_empty(store)
    assert relay.most_in_flight == 2 and len(relay.order) == 6


@pytest.mark.parametrize("relay_factory", [PlainGatedRelay, lambda: GatedRelay(pool_size=None)])
def test_without_a_pool_size_nothing_is_bounded(queues, relay_factory) -> None:
    # As in python-slimta: a relay with no connection limit gets every message at once.
    store = CountingStore()
    relay = relay_factory()
    queue = start(queues, store, relay)
    assert queue.max_attempts is None
    for n in range(30):
        queue.enqueue(make_envelope(rcpts=[f"r{n}@x.test"]))
    wait_in_flight(relay, 30)
    relay.gate.set()
    wait_empty(store)
    assert relay.most_in_flight == 30


def test_past_the_memory_cap_waiting_messages_are_read_back(queues, monkeypatch) -> None:
    monkeypatch.setattr(queue_module, "READY_ENVELOPES", 2)
    store = CountingStore()
    relay = GatedRelay(pool_size=1)
    queue = start(queues, store, relay, relay_pool=1)
    ids = [queue.enqueue(make_envelope(rcpts=[f"r{n}@x.test"]))[0][1] for n in range(6)]
    relay.gate.set()
    wait_empty(store)
    # Enqueued with no switch in between: the first two kept their envelope
    # (READY_ENVELOPES), the last four are read back when their turn comes.
    assert store.gets == ids[2:]
    assert relay.order == [f"r{n}@x.test" for n in range(6)]


def test_stop_with_messages_waiting_for_a_slot_loses_and_repeats_nothing(queues) -> None:
    store = CountingStore()
    relay = GatedRelay(pool_size=1)
    queue = start(queues, store, relay)
    limit = ATTEMPTS_PER_CONNECTION
    ids = [queue.enqueue(make_envelope(rcpts=[f"r{n}@x.test"]))[0][1] for n in range(limit + 6)]
    relay.wait_started(limit)
    stopper = gevent.spawn(queue.stop, GUARD_SECONDS)
    gevent.idle()
    assert not stopper.ready()  # waits for those in flight, not for the six waiting
    relay.gate.set()
    assert stopper.get(timeout=GUARD_SECONDS) is True
    assert len(relay.order) == limit
    assert sorted(store.env_db) == sorted(ids[limit:])  # the waiting ones stay stored
    # A new queue on the same store delivers exactly those, once each.
    relay2 = GatedRelay(pool_size=1)
    relay2.gate.set()
    start(queues, store, relay2)
    wait_empty(store)
    assert sorted(relay.order + relay2.order) == sorted(
        f"r{n}@x.test" for n in range(limit + 6)
    )


def test_kill_with_messages_waiting_for_a_slot_keeps_them_all(queues) -> None:
    store = CountingStore()
    relay = GatedRelay(pool_size=1)
    queue = start(queues, store, relay)
    ids = [queue.enqueue(make_envelope(rcpts=[f"r{n}@x.test"]))[0][1] for n in range(8)]
    relay.wait_started(ATTEMPTS_PER_CONNECTION)
    queue.kill()
    assert queue.dead and len(queue._attempts) == 0 and relay.in_flight == 0
    assert sorted(store.env_db) == sorted(ids)  # those killed in flight too
    relay2 = GatedRelay(pool_size=4)
    relay2.gate.set()
    start(queues, store, relay2)
    wait_empty(store)
    assert sorted(relay2.order) == sorted(f"r{n}@x.test" for n in range(8))


class FeedingStore(CountingStore):
    """Announces each write through wait() before write() returns (as Redis may).

    The announced time is ``delay`` seconds after the write's, so that the test
    decides when the queue gets to the entry (with :meth:`Queue.flush`).
    """

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.feed: gevent.queue.Queue[tuple[float, str]] = gevent.queue.Queue()

    def write(self, envelope: Envelope, timestamp: float) -> str:
        id = super().write(envelope, timestamp)
        self.feed.put((timestamp + self.delay, id))
        gevent.idle()  # the store's reply is slow: its feed is read first
        return id

    def wait(self) -> Iterator[tuple[float, str]]:
        yield self.feed.get()


def test_a_write_announced_before_enqueue_returns_is_attempted_once_unread(queues) -> None:
    store = FeedingStore(delay=1000.0)
    relay = GatedRelay(pool_size=2)
    relay.gate.set()
    queue = start(queues, store, relay)
    queue._time = lambda: 5000.0
    ids = [queue.enqueue(make_envelope(rcpts=[f"r{n}@x.test"]))[0][1] for n in range(5)]
    # Each ID was scheduled from the feed before enqueue() had it: the queue
    # keeps the envelope for it instead of starting a second attempt.
    assert sorted(queue.queued_ids) == sorted(ids) and sorted(queue._fresh) == sorted(ids)
    assert relay.order == []
    queue.flush()
    wait_empty(store)
    assert sorted(relay.order) == sorted(f"r{n}@x.test" for n in range(5))
    assert store.gets == []  # the envelope enqueue() had was used, not read back
    assert not queue._fresh and not queue._unread


def test_a_write_announced_and_read_before_enqueue_returns_is_attempted_once(queues) -> None:
    store = FeedingStore()
    relay = GatedRelay(pool_size=2)
    relay.gate.set()
    queue = start(queues, store, relay)
    ids = [queue.enqueue(make_envelope(rcpts=[f"r{n}@x.test"]))[0][1] for n in range(5)]
    wait_empty(store)
    # Here the queue read each one back before enqueue() returned: still one
    # attempt each, and nothing left behind.
    assert sorted(relay.order) == sorted(f"r{n}@x.test" for n in range(5))
    assert sorted(store.gets) == sorted(ids)
    assert not queue._fresh and not queue._unread and not queue.active_ids


def test_an_id_announced_after_its_delivery_is_not_read_back(queues) -> None:
    store = FeedingStore()
    store.write = DictStorage.write.__get__(store)  # type: ignore[method-assign]
    relay = GatedRelay(pool_size=2)
    relay.gate.set()
    queue = start(queues, store, relay)
    [(_, id)] = queue.enqueue(make_envelope(rcpts=["late@x.test"]))
    wait_empty(store)
    store.feed.put((0.0, id))  # the store's feed is late
    gevent.idle()
    gevent.idle()
    assert not queue.queued and store.gets == [] and relay.order == ["late@x.test"]


def test_finished_ids_are_remembered_up_to_a_limit(queues, monkeypatch) -> None:
    monkeypatch.setattr(queue_module, "FINISHED_MEMORY", 3)
    store = CountingStore()
    relay = GatedRelay(pool_size=2)
    relay.gate.set()
    queue = start(queues, store, relay)
    ids = [queue.enqueue(make_envelope(rcpts=[f"r{n}@x.test"]))[0][1] for n in range(7)]
    wait_empty(store)
    with gevent.Timeout(GUARD_SECONDS):
        queue._attempts.join()
    assert len(queue._finished) == 3 and len(queue._finished_order) == 3
    assert queue._finished <= set(ids)
