"""Shared checks for the reliability tests (``test/test_reliability_*.py``, soak, hostile input).

* :func:`resources` / :func:`assert_no_leaks`: count this process's open file
  descriptors (``/proc/self/fd``) and live greenlets before and after an attempt;
* :func:`timed_attempt`: run one ``relay.attempt`` under a guard, measure it with
  :func:`time.monotonic` and return what it returned or raised;
* :func:`assert_relay_error`: every relay error carries a reply (a code and an enhanced status
  code whose class digit matches) plus the expected classification.

The time bounds asserted with these helpers are outcome bounds: an attempt that
must give up after a configured timeout has to return before that timeout plus
:data:`SLACK_SECONDS`. Nothing here sleeps to synchronise; settling waits poll a
condition cooperatively under a guard that fails the test.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent
import greenlet
import pytest
from gevent.hub import Hub
from gevent.threadpool import _WorkerGreenlet as _ThreadPoolWorker

from slimta.envelope import Envelope
from slimta.relay import PermanentRelayError, RelayError, TransientRelayError
from support.envelopes import make_envelope
from support.faultserver import FaultServer, Script
from support.util import GUARD_SECONDS

__all__ = [
    "fast_fault_server",
    "GUARD_SECONDS",
    "SLACK_SECONDS",
    "Outcome",
    "Resources",
    "assert_no_leaks",
    "assert_relay_error",
    "make_envelope",
    "resources",
    "settle",
    "timed_attempt",
]

#: Scheduling allowance on top of a configured timeout (a loaded 2-core CI box).
SLACK_SECONDS = 1.5
#: How long resources may take to return to their baseline once everything is done.
SETTLE_SECONDS = 5.0


@dataclass(frozen=True)
class Resources:
    """Open file descriptors and live (started, not finished) greenlets."""

    fds: frozenset[str]
    greenlets: int

    def leaks_since(self, before: Resources) -> str | None:
        extra_fds = self.fds - before.fds
        # listdir's own directory fd may show up in one listing and not the other.
        extra_fds = frozenset(fd for fd in extra_fds if os.path.exists(f"/proc/self/fd/{fd}"))
        problems = []
        if extra_fds:
            targets = {}
            for fd in sorted(extra_fds):
                try:
                    targets[fd] = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    targets[fd] = "?"
            problems.append(f"file descriptors {targets}")
        if self.greenlets > before.greenlets:
            problems.append(f"{self.greenlets - before.greenlets} greenlet(s)")
        return ", ".join(problems) or None


def _is_work_greenlet(obj: object) -> bool:
    """A started, unfinished greenlet that is not process infrastructure.

    Left out: each thread's main greenlet (no parent), the hub, and the worker
    greenlets of gevent's thread pool (the DNS resolver starts them on first use
    and keeps them for the life of the process).
    """
    if not isinstance(obj, greenlet.greenlet) or not obj:
        return False
    if obj.parent is None or isinstance(obj, Hub):
        return False
    return not isinstance(obj, _ThreadPoolWorker)


def resources(collect: bool = False) -> Resources:
    """Snapshot the process's open fds and live greenlets.

    A finished greenlet is falsy whether or not it was collected, so a full
    collection is only needed when garbage may still hold a descriptor open.
    """
    if collect:
        gc.collect()
    live = sum(1 for obj in gc.get_objects() if _is_work_greenlet(obj))
    return Resources(frozenset(os.listdir("/proc/self/fd")), live)


def settle(predicate: Callable[[], bool], what: str, guard: float = SETTLE_SECONDS) -> None:
    """Let the hub run until ``predicate()`` holds; fail after ``guard`` seconds."""
    deadline = time.monotonic() + guard
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {guard}s waiting for {what}")
        gevent.sleep(0.005)


def assert_no_leaks(before: Resources, guard: float = SETTLE_SECONDS) -> None:
    """Wait (bounded) until fds and greenlets are back to ``before``, else fail."""
    state: dict[str, str | None] = {"leaks": None}

    tries = iter(range(1 << 30))

    def clean() -> bool:
        state["leaks"] = resources(collect=next(tries) > 0).leaks_since(before)
        return state["leaks"] is None

    try:
        settle(clean, "resources to return to their baseline", guard)
    except AssertionError:
        raise AssertionError(f"leaked: {state['leaks']}") from None


@dataclass
class Outcome:
    """What one attempt gave, and how long it took."""

    elapsed: float
    result: Any = None
    error: BaseException | None = None

    @property
    def delivered(self) -> bool:
        return self.error is None


def timed_attempt(relay: Any, envelope: Envelope, attempts: int = 0) -> Outcome:
    """Run ``relay.attempt`` under the guard, timing it with :func:`time.monotonic`."""
    start = time.monotonic()
    with gevent.Timeout(GUARD_SECONDS, AssertionError("attempt() hung")):
        try:
            result = relay.attempt(envelope, attempts)
        except RelayError as exc:
            return Outcome(time.monotonic() - start, error=exc)
    return Outcome(time.monotonic() - start, result=result)


def assert_relay_error(
    error: BaseException | None,
    permanent: bool,
    code: str | tuple[str, ...] | None = None,
    esc: str | None = None,
    command: bytes | None = None,
) -> RelayError:
    """Check that ``error`` carries a code and a matching enhanced status code, and its class."""
    assert isinstance(error, RelayError), f"expected a RelayError, got {error!r}"
    cls = PermanentRelayError if permanent else TransientRelayError
    assert isinstance(error, cls), f"{error!r} is not {cls.__name__}: {error.reply}"
    reply = error.reply
    assert reply.code is not None and reply.enhanced_status_code is not None, reply
    assert reply.enhanced_status_code[0] == reply.code[0], reply
    assert reply.code[0] == ("5" if permanent else "4"), reply
    if code is not None:
        codes = (code,) if isinstance(code, str) else code
        assert reply.code in codes, reply
    if esc is not None:
        assert reply.enhanced_status_code == esc, reply
    if command is not None:
        assert reply.command == command, (reply, reply.command)
    return error


@pytest.fixture
def fast_fault_server() -> Iterator[Callable[..., FaultServer]]:
    """Like ``fault_server``, but the servers turn Nagle's algorithm off (``nodelay=True``).

    Import it into a test module to use it.
    """
    started: list[FaultServer] = []

    def start(script: Script | None = None, **options: Any) -> FaultServer:
        server = FaultServer(script, nodelay=True, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
