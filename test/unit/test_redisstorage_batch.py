"""The group commit behind RedisStorage's writes and removals (no Redis server needed)."""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event
from support.util import GUARD_SECONDS

pytest.importorskip("redis")

from slimta.queue import QueueError  # noqa: E402
from slimta.redisstorage._batch import Coalescer  # noqa: E402


def interrupted() -> Exception:
    return QueueError("interrupted")


class Recorder:
    """An ``execute`` that records each batch; optionally held until ``release`` is set."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.release = Event()
        if not hold:
            self.release.set()
        self.fail: Exception | None = None

    def __call__(self, ops: list[int]) -> list[object]:
        self.batches.append(list(ops))
        self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [op * 10 for op in ops]


def test_a_lone_caller_gets_a_batch_of_its_own() -> None:
    execute = Recorder()
    batcher: Coalescer[int] = Coalescer(execute, interrupted)
    assert batcher.run(1) == 10
    assert batcher.run(2) == 20
    assert execute.batches == [[1], [2]] and batcher.batches == 2


def test_callers_arriving_together_share_a_batch_and_get_their_own_value() -> None:
    execute = Recorder(hold=True)
    batcher: Coalescer[int] = Coalescer(execute, interrupted)
    first = gevent.spawn(batcher.run, 0)
    gevent.idle()  # the first batch is on its way: [0]
    rest = [gevent.spawn(batcher.run, n) for n in range(1, 8)]
    gevent.idle()
    execute.release.set()
    gevent.joinall([first, *rest], timeout=GUARD_SECONDS, raise_error=True)
    # The seven that came while the first was out went together.
    assert execute.batches == [[0], [1, 2, 3, 4, 5, 6, 7]]
    assert [job.value for job in [first, *rest]] == [n * 10 for n in range(8)]


def test_batches_are_capped() -> None:
    execute = Recorder(hold=True)
    batcher: Coalescer[int] = Coalescer(execute, interrupted, max_batch=3)
    jobs = [gevent.spawn(batcher.run, n) for n in range(7)]
    gevent.idle()
    execute.release.set()
    gevent.joinall(jobs, timeout=GUARD_SECONDS, raise_error=True)
    assert execute.batches == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_failed_batch_fails_each_of_its_callers_and_not_the_next() -> None:
    execute = Recorder(hold=True)
    execute.fail = QueueError("redis down")
    batcher: Coalescer[int] = Coalescer(execute, interrupted)
    jobs = [gevent.spawn(batcher.run, n) for n in range(3)]
    gevent.idle()
    execute.release.set()
    gevent.joinall(jobs, timeout=GUARD_SECONDS)
    assert all(isinstance(job.exception, QueueError) for job in jobs)
    execute.fail = None
    assert batcher.run(4) == 40


def test_a_killed_flusher_never_leaves_a_caller_waiting() -> None:
    execute = Recorder(hold=True)
    batcher: Coalescer[int] = Coalescer(execute, interrupted)
    jobs = [gevent.spawn(batcher.run, n) for n in range(3)]
    gevent.idle()
    late = gevent.spawn(batcher.run, 9)  # queued behind the batch in flight
    gevent.idle()
    assert batcher._flusher is not None
    batcher._flusher.kill()
    gevent.joinall([*jobs, late], timeout=GUARD_SECONDS)
    assert all(job.ready() for job in [*jobs, late])
    assert all(str(job.exception) == "interrupted" for job in [*jobs, late])
    execute.release.set()
    assert batcher.run(5) == 50  # a new flusher starts for the next caller
