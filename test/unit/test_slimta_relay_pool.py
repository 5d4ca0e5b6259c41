"""RelayPool / RelayPoolClient, driven with small in-memory clients (no sockets)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import gevent
import pytest
from gevent.event import AsyncResult, Event
from support import envelopes
from support.util import GUARD_SECONDS

from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.relay.pool import RelayPool, RelayPoolClient
from slimta.smtp.reply import Reply
from slimta.util.deque import BlockingDeque


class EchoClient(RelayPoolClient):
    """Resolves each request with a reply naming the envelope's first recipient."""

    def _run(self) -> None:
        while True:
            result, envelope = self.poll()
            if result is None or envelope is None:
                return
            if envelope.recipients[0] == "fail":
                result.set_exception(PermanentRelayError("refused"))
            else:
                result.set(Reply("250", "2.0.0 " + envelope.recipients[0]))


class Pool(RelayPool):
    def __init__(self, factory: Callable[[], RelayPoolClient], pool_size: int | None = None):
        super().__init__(pool_size)
        self.factory = factory
        self.started: list[RelayPoolClient] = []

    def add_client(self) -> RelayPoolClient:
        client = self.factory()
        self.started.append(client)
        return client


make_envelope = partial(envelopes.make_envelope, sender="s@x.test")


def test_add_client_is_abstract() -> None:
    with pytest.raises(NotImplementedError):
        RelayPool().add_client()
    with pytest.raises(NotImplementedError):
        RelayPoolClient(None)._run()


def test_results_and_errors_reach_the_caller() -> None:
    pool = Pool(lambda: EchoClient(None, idle_timeout=10))
    try:
        with gevent.Timeout(GUARD_SECONDS):
            assert str(pool.attempt(make_envelope(rcpts=["a"]), 0)) == "250 2.0.0 a"
            with pytest.raises(PermanentRelayError):
                pool.attempt(make_envelope(rcpts=["fail"]), 0)
            assert str(pool.attempt(make_envelope(rcpts=["b"]), 0)) == "250 2.0.0 b"
    finally:
        pool.kill()
    assert len(pool.started) == 1  # the idle client was reused
    assert all(client.queue is pool.queue for client in pool.started)


def test_pool_size_is_a_bound() -> None:
    gate = Event()

    class Slow(EchoClient):
        def _run(self) -> None:
            gate.wait()
            super()._run()

    pool = Pool(lambda: Slow(None, idle_timeout=10), pool_size=3)
    try:
        with gevent.Timeout(GUARD_SECONDS):
            jobs = [gevent.spawn(pool.attempt, make_envelope(rcpts=[str(n)]), 0) for n in range(10)]
            gevent.idle()
            assert len(pool.pool) == 3
            gate.set()
            gevent.joinall(jobs, raise_error=True)
    finally:
        pool.kill()
    assert sorted(job.value.message for job in jobs) == sorted(f"2.0.0 {n}" for n in range(10))
    assert len(pool.started) == 3


def test_burst_starts_clients_beyond_one_idle() -> None:
    pool = Pool(lambda: EchoClient(None, idle_timeout=10))
    gate = Event()

    class Blocking(EchoClient):
        def _run(self) -> None:
            gate.wait()
            super()._run()

    pool.factory = lambda: Blocking(None, idle_timeout=10)
    try:
        with gevent.Timeout(GUARD_SECONDS):
            jobs = [gevent.spawn(pool.attempt, make_envelope(rcpts=[str(n)]), 0) for n in range(4)]
            gevent.idle()
            assert len(pool.pool) == 4  # a new client for each request no idle one can take
            gate.set()
            gevent.joinall(jobs, raise_error=True)
    finally:
        pool.kill()


def test_idle_timeout_ends_the_client() -> None:
    client = EchoClient(BlockingDeque(), idle_timeout=0.01)
    client.start()
    client.join(GUARD_SECONDS)
    assert client.dead and client.value is None
    assert client.poll() == (None, None)


def test_client_crash_fails_its_request() -> None:
    class Crash(RelayPoolClient):
        def _run(self) -> None:
            self.poll()
            raise RuntimeError("bug")

    pool = Pool(lambda: Crash(None))
    try:
        with gevent.Timeout(GUARD_SECONDS):
            with pytest.raises(TransientRelayError) as info:
                pool.attempt(make_envelope(rcpts=["a"]), 0)
    finally:
        pool.kill()
    assert str(info.value.reply) == "451 4.3.0 Relay client exited unexpectedly"


def test_client_exit_without_resolving_fails_its_request() -> None:
    class Forgetful(RelayPoolClient):
        def _run(self) -> None:
            self.poll()

    pool = Pool(lambda: Forgetful(None))
    with gevent.Timeout(GUARD_SECONDS):
        with pytest.raises(TransientRelayError):
            pool.attempt(make_envelope(rcpts=["a"]), 0)
    pool.kill()


def test_requeue_hands_the_request_to_a_fresh_client() -> None:
    clients: list[RelayPoolClient] = []

    class RequeueOnce(EchoClient):
        def _run(self) -> None:
            if not clients:
                clients.append(self)
                result, envelope = self.poll()
                assert result is not None and envelope is not None
                self.requeue(result, envelope)  # e.g. the server closed while idle
                return
            super()._run()

    pool = Pool(lambda: RequeueOnce(None, idle_timeout=10))
    try:
        with gevent.Timeout(GUARD_SECONDS):
            assert str(pool.attempt(make_envelope(rcpts=["a"]), 0)) == "250 2.0.0 a"
    finally:
        pool.kill()
    assert len(pool.started) == 2


def test_requeue_goes_to_the_head() -> None:
    queue = BlockingDeque()
    client = EchoClient(queue)
    first = (AsyncResult(), make_envelope(rcpts=["a"]))
    second = (AsyncResult(), make_envelope(rcpts=["b"]))
    queue.append(first)
    queue.append(second)
    item = client.poll()
    assert client.pending == (first[0],)
    client.requeue(*item)
    assert list(queue) == [first, second]
    assert client.pending == ()
    assert client._requeue == client.requeue  # python-slimta-era name, kept


def test_poll_nowait_never_blocks_and_tracks_what_it_takes() -> None:
    queue = BlockingDeque()
    client = EchoClient(queue)
    assert client.poll_nowait() == (None, None)
    assert EchoClient(None).poll_nowait() == (None, None)
    first = (AsyncResult(), make_envelope(rcpts=["a"]))
    second = (AsyncResult(), make_envelope(rcpts=["b"]))
    queue.extend([first, second])
    assert client.poll() == first
    assert client.poll_nowait() == second
    assert client.pending == (first[0], second[0])
    first[0].set(Reply("250", "2.0.0 Ok"))
    assert client.pending == (second[0],)
    assert client.poll_nowait() == (None, None) and not queue


def test_poll_nowait_keeps_the_count_in_step_with_a_woken_waiter() -> None:
    queue = BlockingDeque()
    waiting, taker = EchoClient(queue), EchoClient(queue)
    waiter = gevent.spawn(waiting.poll)
    gevent.idle()  # the waiter blocks in popleft()
    first = (AsyncResult(), make_envelope(rcpts=["a"]))
    second = (AsyncResult(), make_envelope(rcpts=["b"]))
    queue.append(first)  # wakes the waiter, which has not run yet
    assert taker.poll_nowait() == first
    gevent.idle()
    assert not waiter.ready()  # it found nothing and waits again, no IndexError
    queue.append(second)
    with gevent.Timeout(GUARD_SECONDS):
        assert waiter.get() == second


def test_a_dead_client_fails_every_request_it_took() -> None:
    class TakesTwo(RelayPoolClient):
        def _run(self) -> None:
            self.poll()
            self.poll_nowait()
            raise RuntimeError("bug")

    pool = Pool(lambda: TakesTwo(None))
    waiters = [gevent.spawn(pool.attempt, make_envelope(rcpts=[rcpt]), 0) for rcpt in ("a", "b")]
    with gevent.Timeout(GUARD_SECONDS):
        gevent.joinall(waiters)
    pool.kill()
    for waiter in waiters:
        assert isinstance(waiter.exception, TransientRelayError)
        assert str(waiter.exception.reply) == "451 4.3.0 Relay client exited unexpectedly"


def test_kill_fails_queued_and_running_requests() -> None:
    started = Event()

    class Hang(RelayPoolClient):
        def _run(self) -> None:
            self.poll()
            started.set()
            Event().wait()

    pool = Pool(lambda: Hang(None), pool_size=1)
    with gevent.Timeout(GUARD_SECONDS):
        running = gevent.spawn(pool.attempt, make_envelope(rcpts=["a"]), 0)
        queued = gevent.spawn(pool.attempt, make_envelope(rcpts=["b"]), 0)
        started.wait()
        gevent.idle()
        pool.kill()
        for job in (running, queued):
            job.join()
            assert isinstance(job.exception, TransientRelayError)
    assert str(queued.exception.reply) == "451 4.3.0 Relay shut down"
    assert not pool.pool and not pool.queue
    assert all(client.dead for client in pool.started)


def test_pool_restarts_a_client_when_work_remains() -> None:
    runs: list[Any] = []

    class OneShot(RelayPoolClient):
        def _run(self) -> None:
            result, envelope = self.poll()
            runs.append(envelope)
            assert result is not None and envelope is not None
            result.set(Reply("250", "2.0.0 " + envelope.recipients[0]))

    pool = Pool(lambda: OneShot(None), pool_size=1)
    try:
        with gevent.Timeout(GUARD_SECONDS):
            jobs = [gevent.spawn(pool.attempt, make_envelope(rcpts=[str(n)]), 0) for n in range(3)]
            gevent.joinall(jobs, raise_error=True)
    finally:
        pool.kill()
    assert len(runs) == 3 and len(pool.started) == 3
