"""slimta.util.recycler.GreenletRecycler: calls run in greenlets that are parked and reused.

Which greenlet ran a call is recorded with ``gevent.getcurrent()`` inside the call;
every wait is bounded by a guard, and every recycler is killed after its test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from gevent import getcurrent
from gevent.event import Event
from support.util import GUARD_SECONDS

from slimta.util.recycler import DEFAULT_MAX_IDLE, GreenletRecycler


def guard(what: str) -> gevent.Timeout:
    """A bound on one blocking step of a test: a hang becomes a failure naming ``what``."""
    return gevent.Timeout(GUARD_SECONDS, AssertionError(what))


Factory = Callable[..., GreenletRecycler]


@pytest.fixture
def make() -> Iterator[Factory]:
    """Builds recyclers; each is killed afterwards and must then hold no greenlet."""
    made: list[GreenletRecycler] = []

    def build(**kwargs: Any) -> GreenletRecycler:
        made.append(GreenletRecycler(**kwargs))
        return made[-1]

    yield build
    for recycler in made:
        recycler.kill()
        assert recycler.greenlets == frozenset()


class Calls:
    """Callables for the recycler that record the greenlet each call ran in."""

    def __init__(self) -> None:
        self.ran: list[Any] = []
        self.release = Event()
        self._started: list[Any] = []
        self._started_enough = Event()
        self._wanted = 0

    def quick(self) -> None:
        self.ran.append(getcurrent())

    def blocked(self) -> None:
        """Records its greenlet, then waits until ``release`` is set."""
        self.ran.append(getcurrent())
        self._started.append(getcurrent())
        if len(self._started) >= self._wanted:
            self._started_enough.set()
        self.release.wait()

    def wait_started(self, count: int) -> None:
        """Wait until ``count`` :meth:`blocked` calls are running in all."""
        self._wanted = count
        if len(self._started) >= count:
            return
        self._started_enough.clear()
        with guard(f"{count} blocked calls never all started"):
            self._started_enough.wait()


def join(recycler: GreenletRecycler) -> None:
    with guard("the recycler's calls never finished"):
        assert recycler.join() is True
    assert len(recycler) == 0


# -- reuse ---------------------------------------------------------------------------------


def test_a_call_runs_beside_the_caller_then_its_greenlet_is_reused(make: Factory) -> None:
    recycler = make()
    calls = Calls()
    recycler.spawn(calls.quick)
    assert calls.ran == []  # not run inline, as with gevent.spawn
    join(recycler)
    first = calls.ran[0]
    assert first is not getcurrent()
    assert recycler.greenlets == frozenset({first})  # parked, not ended
    assert not first.dead
    for _ in range(10):
        recycler.spawn(calls.quick)
        join(recycler)
    assert calls.ran == [first] * 11
    assert recycler.greenlets == frozenset({first})


def test_arguments_are_passed_to_the_call(make: Factory) -> None:
    recycler = make()
    got: list[tuple[Any, ...]] = []
    recycler.spawn(lambda *args: got.append(args), 1, "two", None)
    join(recycler)
    recycler.spawn(lambda *args: got.append(args))
    join(recycler)
    assert got == [(1, "two", None), ()]


def test_the_default_max_idle() -> None:
    assert GreenletRecycler().max_idle == DEFAULT_MAX_IDLE


# -- len and join --------------------------------------------------------------------------


def test_len_counts_running_calls_only(make: Factory) -> None:
    recycler = make()
    calls = Calls()
    assert len(recycler) == 0
    recycler.spawn(calls.blocked)
    recycler.spawn(calls.blocked)
    assert len(recycler) == 2  # counted from spawn()
    calls.wait_started(2)
    assert len(recycler) == 2
    calls.release.set()
    join(recycler)
    assert len(recycler.greenlets) == 2  # both parked: they do not count


def test_join_with_none_running_returns_true_at_once(make: Factory) -> None:
    recycler = make()
    with guard("join() blocked with nothing running"):
        assert recycler.join() is True
        assert recycler.join(0) is True
    recycler.spawn(lambda: None)
    join(recycler)
    with guard("join() blocked with only parked greenlets"):
        assert recycler.join() is True


def test_join_timeout_returns_false_while_a_call_is_blocked(make: Factory) -> None:
    recycler = make()
    calls = Calls()
    recycler.spawn(calls.blocked)
    calls.wait_started(1)
    with guard("join(timeout) did not honour its timeout"):
        assert recycler.join(0.01) is False
    assert len(recycler) == 1
    calls.release.set()
    join(recycler)


def test_join_waits_for_a_running_call(make: Factory) -> None:
    recycler = make()
    calls = Calls()
    recycler.spawn(calls.blocked)
    calls.wait_started(1)
    joiner = gevent.spawn(recycler.join)
    try:
        with guard("join(timeout) did not honour its timeout"):
            assert recycler.join(0.01) is False  # meanwhile the joiner runs, and waits
        assert not joiner.ready()
        calls.release.set()
        with guard("join() never returned"):
            assert joiner.get() is True
    finally:
        joiner.kill()
    assert len(recycler) == 0


def test_join_waits_again_after_new_calls(make: Factory) -> None:
    recycler = make()
    calls = Calls()
    recycler.spawn(lambda: None)
    join(recycler)  # the recycler's "none running" event is set now
    recycler.spawn(calls.blocked)
    calls.wait_started(1)
    with guard("join(timeout) did not honour its timeout"):
        assert recycler.join(0.01) is False
    calls.release.set()
    join(recycler)


# -- errors --------------------------------------------------------------------------------


def test_an_exception_goes_to_the_hub_and_the_greenlet_is_reused(
    make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    recycler = make()
    reported: list[tuple[Any, ...]] = []
    hub = recycler._hub

    def handle_error(self: Any, *args: Any) -> None:
        assert self is hub
        reported.append(args)

    monkeypatch.setattr(type(hub), "handle_error", handle_error)
    error = ValueError("call failed")
    ran: list[Any] = []

    def failing() -> None:
        ran.append(getcurrent())
        raise error

    recycler.spawn(failing)
    join(recycler)
    assert len(reported) == 1
    context, kind, value, tb = reported[0]
    assert context is ran[0]
    assert kind is ValueError
    assert value is error
    assert tb is not None
    recycler.spawn(lambda: ran.append(getcurrent()))
    join(recycler)
    assert ran == [ran[0], ran[0]]
    assert recycler.greenlets == frozenset({ran[0]})


# -- max_idle ------------------------------------------------------------------------------


def test_max_idle_bounds_the_parked_greenlets(make: Factory) -> None:
    recycler = make(max_idle=2)
    calls = Calls()
    for _ in range(5):
        recycler.spawn(calls.blocked)
    calls.wait_started(5)
    workers = set(calls.ran)
    assert len(workers) == 5
    assert recycler.greenlets == frozenset(workers)
    calls.release.set()
    join(recycler)
    kept = recycler.greenlets
    assert len(kept) == 2
    assert kept <= workers
    assert all(not g.dead for g in kept)
    ended = workers - kept
    with guard("the surplus greenlets never ended"):
        gevent.joinall(list(ended))
    assert all(g.dead for g in ended)
    # Two concurrent calls later run in exactly the two kept greenlets.
    again = Calls()
    recycler.spawn(again.blocked)
    recycler.spawn(again.blocked)
    again.wait_started(2)
    assert set(again.ran) == set(kept)
    again.release.set()
    join(recycler)


def test_max_idle_zero_keeps_no_greenlet(make: Factory) -> None:
    recycler = make(max_idle=0)
    calls = Calls()
    recycler.spawn(calls.quick)
    join(recycler)
    recycler.spawn(calls.quick)
    join(recycler)
    assert calls.ran[0] is not calls.ran[1]
    assert recycler.greenlets == frozenset()


def park(recycler: GreenletRecycler, count: int) -> set[gevent.Greenlet]:
    """Leave ``count`` greenlets parked: run that many calls at once, then let them end."""
    parking = Calls()
    for _ in range(count):
        recycler.spawn(parking.blocked)
    parking.wait_started(count)
    parking.release.set()
    join(recycler)
    return set(parking.ran)


# -- kill ----------------------------------------------------------------------------------


def test_kill_ends_parked_and_running_greenlets(make: Factory) -> None:
    recycler = make()
    everyone = park(recycler, 3)
    assert len(everyone) == 3
    running = Calls()
    recycler.spawn(running.blocked)  # one parked greenlet runs it, two stay parked
    running.wait_started(1)
    assert running.ran[0] in everyone
    assert recycler.greenlets == frozenset(everyone)
    assert len(recycler) == 1
    with guard("kill() did not return"):
        recycler.kill()
    assert all(g.dead for g in everyone)
    assert recycler.greenlets == frozenset()
    assert len(recycler) == 0
    with guard("join() after kill() blocked"):
        assert recycler.join() is True
    # The recycler still works afterwards, with a new greenlet.
    after = Calls()
    recycler.spawn(after.quick)
    join(recycler)
    assert after.ran[0] not in everyone


# -- the hand-over race --------------------------------------------------------------------


def park_one(recycler: GreenletRecycler) -> Any:
    calls = Calls()
    recycler.spawn(calls.quick)
    join(recycler)
    (parked,) = recycler.greenlets
    assert parked is calls.ran[0]
    return parked


def test_a_call_handed_to_a_greenlet_killed_meanwhile_runs_in_a_new_one(
    make: Factory,
) -> None:
    """The kill of the only parked greenlet is queued before the spawn but takes
    effect after spawn() chose that greenlet, and before the hub hands it the call.
    """
    recycler = make()
    parked = park_one(recycler)
    parked.kill(block=False)  # queued in the hub: the greenlet is still parked...
    assert not parked.dead
    calls = Calls()
    recycler.spawn(calls.quick)  # ...so spawn() picks it
    assert recycler.greenlets == frozenset({parked})
    join(recycler)
    assert parked.dead
    assert len(calls.ran) == 1
    assert calls.ran[0] is not parked
    assert recycler.greenlets == frozenset({calls.ran[0]})


def test_killing_the_chosen_greenlet_right_after_spawn_still_runs_the_call(
    make: Factory,
) -> None:
    recycler = make()
    parked = park_one(recycler)
    calls = Calls()
    recycler.spawn(calls.quick)
    parked.kill(block=False)
    join(recycler)
    with guard("the killed greenlet never ended"):
        parked.join()
    assert parked.dead
    assert len(calls.ran) == 1
    assert len(recycler) == 0
    # gevent runs the hand-over (queued first) before the kill, so the call runs
    # in the parked greenlet, which the kill then ends while it is parked again;
    # had the kill come first, the call would have run in a new greenlet.
    if calls.ran[0] is parked:
        assert recycler.greenlets == frozenset()
    else:
        assert recycler.greenlets == frozenset({calls.ran[0]})
    recycler.spawn(calls.quick)
    join(recycler)
    assert calls.ran[1] is not parked


def test_a_killed_parked_greenlet_is_not_handed_calls(make: Factory) -> None:
    recycler = make()
    parked = park_one(recycler)
    with guard("the parked greenlet did not die"):
        parked.kill()
    assert recycler.greenlets == frozenset()
    calls = Calls()
    recycler.spawn(calls.quick)
    join(recycler)
    assert len(calls.ran) == 1
    assert calls.ran[0] is not parked


# -- order ---------------------------------------------------------------------------------


def test_calls_start_in_spawn_order(make: Factory) -> None:
    recycler = make()
    park(recycler, 3)
    assert len(recycler.greenlets) == 3
    started: list[int] = []
    for index in range(8):  # three reuse parked greenlets, five start new ones
        recycler.spawn(started.append, index)
    join(recycler)
    assert started == list(range(8))
