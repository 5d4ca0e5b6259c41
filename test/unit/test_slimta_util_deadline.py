"""slimta.util.timer.SessionDeadline: one lazily re-armed native timer for a session's waits.

Every wait that must time out uses a small real limit (hundredths of a second) and
is itself bounded by a guard, so a broken deadline fails the test instead of hanging
it. Where time must pass outside a bound, the test waits on an event set by a gevent
timer (``gevent.spawn_later``) or by the deadline's own expiry, never on a sleep.
"""

from __future__ import annotations

from collections.abc import Iterator
from time import monotonic
from typing import Any

import gevent
import pytest
from gevent import getcurrent
from gevent.event import Event
from support.util import GUARD_SECONDS

import slimta.util.timer as timer_module
from slimta.util.timer import SessionDeadline

#: A limit no test waits out: a wait bounded by it only ends early if something is wrong.
LONG = GUARD_SECONDS * 10


class Expired(Exception):
    """What the deadlines under test raise."""


def guard(what: str) -> gevent.Timeout:
    """A bound on one blocking step of a test: a hang becomes a failure naming ``what``."""
    return gevent.Timeout(GUARD_SECONDS, AssertionError(what))


class ArmSpy:
    """Records every ``SessionDeadline._arm(delay, fires_at)`` call, then arms for real."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.delays: list[float] = []
        self.fires_at: list[float] = []
        real = SessionDeadline._arm

        def arm(deadline: SessionDeadline, delay: float, fires_at: float) -> None:
            self.delays.append(delay)
            self.fires_at.append(fires_at)
            real(deadline, delay, fires_at)

        monkeypatch.setattr(SessionDeadline, "_arm", arm)


class ExpirySpy:
    """Records each firing of the native timer (``SessionDeadline._expired``).

    ``calls`` holds, per firing, whether a bounded wait was in progress then;
    ``fired`` is set on the first firing. The real handler runs afterwards (it
    may throw into the waiting greenlet).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[bool] = []
        self.fired = Event()
        real = SessionDeadline._expired

        def expired(deadline: SessionDeadline) -> None:
            self.calls.append(deadline.waiting)
            self.fired.set()
            real(deadline)

        monkeypatch.setattr(SessionDeadline, "_expired", expired)


class FakeClock:
    """Stands in for ``slimta.util.timer.monotonic``; moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def deadlines() -> Iterator[list[SessionDeadline]]:
    """Deadlines a test makes; each one's native timer is closed afterwards."""
    made: list[SessionDeadline] = []
    yield made
    for deadline in made:
        deadline.close()


@pytest.fixture
def helpers() -> Iterator[list[gevent.Greenlet]]:
    """Greenlets a test starts (``spawn_later`` timers); all killed afterwards."""
    started: list[gevent.Greenlet] = []
    yield started
    gevent.killall(started)


def make(deadlines: list[SessionDeadline], exception: Any = Expired) -> SessionDeadline:
    deadline = SessionDeadline(exception)
    deadlines.append(deadline)
    return deadline


def set_later(helpers: list[gevent.Greenlet], seconds: float) -> Event:
    """An event that a gevent timer sets after ``seconds``."""
    event = Event()
    helpers.append(gevent.spawn_later(seconds, event.set))
    return event


# -- expiry ------------------------------------------------------------------------------


def test_a_blocked_wait_gets_the_exception_class(deadlines: list[SessionDeadline]) -> None:
    deadline = make(deadlines, Expired)
    with guard("the deadline never fired"), pytest.raises(Expired) as info:
        with deadline.bound(0.02):
            Event().wait()  # never set: only the deadline can end this wait
    assert type(info.value) is Expired
    assert not deadline.waiting


def test_a_blocked_wait_gets_the_exception_instance(deadlines: list[SessionDeadline]) -> None:
    instance = Expired("session timed out")
    deadline = make(deadlines, instance)
    with guard("the deadline never fired"), pytest.raises(Expired) as info:
        with deadline.bound(0.02):
            gevent.sleep(GUARD_SECONDS * 2)  # blocks far longer than the limit
    assert info.value is instance
    assert not deadline.waiting


def test_the_exception_is_thrown_into_the_waiting_greenlet(
    deadlines: list[SessionDeadline],
) -> None:
    instance = Expired("late")
    deadline = make(deadlines, instance)
    caught: list[tuple[Any, BaseException]] = []

    def wait() -> None:
        try:
            with deadline.bound(0.02):
                Event().wait()
        except Expired as exc:
            caught.append((getcurrent(), exc))

    waiter = gevent.spawn(wait)
    try:
        with guard("the waiting greenlet was never woken"):
            waiter.join()
    finally:
        waiter.kill()
    assert waiter.successful()
    assert caught == [(waiter, instance)]


def test_the_deadline_expires_again_on_later_waits(deadlines: list[SessionDeadline]) -> None:
    deadline = make(deadlines)
    for _ in range(3):
        with guard("the deadline never fired"), pytest.raises(Expired):
            with deadline.bound(0.01):
                Event().wait()
        assert not deadline.waiting


# -- one native timer for many waits ------------------------------------------------------


def test_fast_waits_arm_the_timer_once_and_build_no_timeout(
    deadlines: list[SessionDeadline], monkeypatch: pytest.MonkeyPatch
) -> None:
    arms = ArmSpy(monkeypatch)
    built: list[tuple[Any, ...]] = []

    def counting_timeout(*args: Any) -> gevent.Timeout:
        built.append(args)
        return gevent.Timeout(*args)

    monkeypatch.setattr(timer_module, "Timeout", counting_timeout)
    deadline = make(deadlines)
    for _ in range(200):
        with deadline.bound(LONG):
            gevent.sleep(0)  # a real switch to the hub and back
    assert arms.delays == [LONG]
    assert built == []


def test_the_timer_firing_outside_a_wait_throws_nothing(
    deadlines: list[SessionDeadline], monkeypatch: pytest.MonkeyPatch
) -> None:
    arms = ArmSpy(monkeypatch)
    expiries = ExpirySpy(monkeypatch)
    deadline = make(deadlines)
    with deadline.bound(0.02):
        gevent.sleep(0)
    assert not deadline.waiting
    # Block outside any bound until the armed timer has fired (longer than 0.02 s).
    with guard("the armed timer never fired"):
        expiries.fired.wait()
    assert expiries.calls == [False]
    # The next bounded wait arms the timer again and still times out.
    with guard("the deadline did not fire after an idle expiry"), pytest.raises(Expired):
        with deadline.bound(0.02):
            Event().wait()
    assert arms.delays[:2] == [0.02, 0.02]
    assert expiries.calls[0] is False and True in expiries.calls[1:]


def test_an_exception_leaving_the_wait_ends_it(
    deadlines: list[SessionDeadline], monkeypatch: pytest.MonkeyPatch
) -> None:
    expiries = ExpirySpy(monkeypatch)
    deadline = make(deadlines)
    with pytest.raises(ValueError):
        with deadline.bound(0.02):
            assert deadline.waiting
            raise ValueError("handler failed")
    assert not deadline.waiting
    with guard("the armed timer never fired"):
        expiries.fired.wait()  # no Expired reaches this greenlet out here
    assert expiries.calls == [False]


def test_a_wait_started_after_the_timer_was_armed_is_not_cut_short(
    deadlines: list[SessionDeadline],
    helpers: list[gevent.Greenlet],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bound(0.05): a fast wait at t=0 arms the timer for t=0.05; a second wait
    starting at t=0.03 (deadline t=0.08) and ending at t=0.06 must succeed, the
    timer re-arming itself when it fires in the middle of that wait.

    Real timers on a busy machine may run late; an attempt whose timing did not
    produce that scenario (the timer fired before the second wait began, or the
    wait really outlived its own deadline) is retried, never counted as a pass.
    """
    arms = ArmSpy(monkeypatch)
    expiries = ExpirySpy(monkeypatch)
    seconds = 0.05
    for _ in range(5):
        deadline = make(deadlines)
        del arms.delays[:]
        with deadline.bound(seconds):
            gevent.sleep(0)
        with guard("the gap timer never fired"):
            set_later(helpers, 0.03).wait()
        if not deadline._timer:  # the armed timer already fired: too late to test
            continue
        first_fire = len(expiries.calls)
        done = set_later(helpers, 0.03)
        entered = monotonic()
        try:
            with guard("the second wait never ended"), deadline.bound(seconds):
                done.wait()
        except Expired:
            ended = monotonic()
            assert ended - entered >= seconds, (
                f"cut short after {ended - entered:.3f}s of its {seconds}s"
            )
            continue  # the machine stalled past the wait's own deadline: retry
        assert done.is_set()
        if True not in expiries.calls[first_fire:]:
            continue  # the armed timer did not fire during the wait: retry
        assert len(arms.delays) >= 2
        assert arms.delays[1] < seconds  # re-armed for what was left, not anew
        return
    pytest.fail("the scheduler never ran the timers in time to exercise the re-arm")


def test_re_arming_uses_what_is_left_of_the_later_deadline(
    deadlines: list[SessionDeadline],
    helpers: list[gevent.Greenlet],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same scenario on a fake clock: the deadline arithmetic is exact."""
    clock = FakeClock(1000.0)
    monkeypatch.setattr(timer_module, "monotonic", clock)
    arms = ArmSpy(monkeypatch)
    expiries = ExpirySpy(monkeypatch)
    deadline = make(deadlines)
    with deadline.bound(0.05):
        gevent.sleep(0)
    assert arms.fires_at == [pytest.approx(1000.05)]
    clock.now = 1000.03
    done = Event()

    def finish_after_the_timer_fired() -> None:
        expiries.fired.wait()
        done.set()

    helpers.append(gevent.spawn(finish_after_the_timer_fired))
    with guard("the wait never ended"), deadline.bound(0.05):
        assert arms.delays == [0.05]  # a later deadline does not re-arm on entry
        done.wait()
    assert expiries.calls == [True]
    assert arms.delays == [0.05, pytest.approx(0.05)]
    assert arms.fires_at == [pytest.approx(1000.05), pytest.approx(1000.08)]


def test_the_fake_clock_past_the_deadline_expires_the_wait(
    deadlines: list[SessionDeadline], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(1000.0)
    monkeypatch.setattr(timer_module, "monotonic", clock)
    expiries = ExpirySpy(monkeypatch)
    deadline = make(deadlines)
    with guard("the deadline never fired"), pytest.raises(Expired):
        with deadline.bound(0.02):
            clock.now = 1000.02  # exactly at the deadline: nothing is left
            Event().wait()
    assert expiries.calls == [True]


def test_a_shorter_deadline_re_arms_earlier(
    deadlines: list[SessionDeadline], monkeypatch: pytest.MonkeyPatch
) -> None:
    arms = ArmSpy(monkeypatch)
    deadline = make(deadlines)
    with deadline.bound(LONG):
        gevent.sleep(0)
    # Without re-arming, only the LONG timer could end this wait: the guard fires first.
    with guard("the shorter deadline did not re-arm the timer"), pytest.raises(Expired):
        with deadline.bound(0.02):
            Event().wait()
    assert arms.delays[:2] == [LONG, 0.02]


# -- nesting -------------------------------------------------------------------------------


def test_a_nested_bound_is_a_plain_timeout_raising_the_same_exception(
    deadlines: list[SessionDeadline],
) -> None:
    instance = Expired("inner")
    deadline = make(deadlines, instance)
    with deadline.bound(LONG):
        inner = deadline.bound(0.02)
        assert isinstance(inner, gevent.Timeout)
        assert type(inner) is gevent.Timeout  # not the session's own deadline
        assert inner.seconds == 0.02
        with guard("the nested timeout never fired"), pytest.raises(Expired) as info:
            with inner:
                Event().wait()
        assert info.value is instance
        assert deadline.waiting  # the outer wait goes on
    assert not deadline.waiting


def test_the_outer_deadline_still_ends_a_nested_wait(deadlines: list[SessionDeadline]) -> None:
    deadline = make(deadlines)
    with guard("the outer deadline never fired"), pytest.raises(Expired):
        with deadline.bound(0.02):
            with deadline.bound(LONG):
                Event().wait()
    assert not deadline.waiting


# -- waiting and close ---------------------------------------------------------------------


def test_waiting_is_true_only_inside_the_with(deadlines: list[SessionDeadline]) -> None:
    deadline = make(deadlines)
    bound = deadline.bound(LONG)
    assert not deadline.waiting  # bound() alone starts nothing
    with bound:
        assert deadline.waiting
        gevent.sleep(0)
        assert deadline.waiting
    assert not deadline.waiting


def test_close_stops_the_native_timer(
    deadlines: list[SessionDeadline],
    helpers: list[gevent.Greenlet],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expiries = ExpirySpy(monkeypatch)
    deadline = make(deadlines)
    with deadline.bound(0.02):
        gevent.sleep(0)
    deadline.close()
    assert deadline._timer is None
    # Let three times the limit pass: a live timer would have fired by then.
    with guard("the gap timer never fired"):
        set_later(helpers, 0.06).wait()
    assert expiries.calls == []
    assert not deadline.waiting
    # A later wait arms a new timer.
    with guard("no timer after close()"), pytest.raises(Expired):
        with deadline.bound(0.02):
            Event().wait()
    assert expiries.calls == [True]


def test_close_inside_a_wait_ends_it_without_an_exception(
    deadlines: list[SessionDeadline],
    helpers: list[gevent.Greenlet],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expiries = ExpirySpy(monkeypatch)
    deadline = make(deadlines)
    with guard("the gap timer never fired"), deadline.bound(0.02):
        deadline.close()
        assert not deadline.waiting
        set_later(helpers, 0.06).wait()  # past the closed deadline: no Expired
    assert expiries.calls == []
