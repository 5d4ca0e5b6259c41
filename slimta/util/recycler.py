"""Greenlets that are reused for one call after another.

Starting a greenlet costs more than the call it runs when the call is short: a
new stack, a new frame stack from the operating system, and the link
bookkeeping when it dies. :class:`GreenletRecycler` keeps the greenlets that
finished a call parked, up to :attr:`GreenletRecycler.max_idle` of them, and
hands the next call to one of them. The queue runs its delivery attempts with
one, and the edges their connections (when no ``pool`` is given).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import gevent
from gevent import Greenlet, GreenletExit, get_hub, getcurrent
from gevent.event import Event
from gevent.hub import Waiter

__all__ = ["GreenletRecycler", "DEFAULT_MAX_IDLE"]

#: Parked greenlets kept for reuse when no ``max_idle`` is given.
DEFAULT_MAX_IDLE = 64


class GreenletRecycler:
    """Runs each :meth:`spawn`-ed call in a greenlet, reusing idle ones.

    Calls start in the order they were spawned, each in a greenlet of its own
    that runs beside the caller, as with :func:`gevent.spawn`. An exception a
    call raises is reported to the hub (printed, as for a plain greenlet) and the
    greenlet goes on with later calls.

    :param max_idle: the most parked greenlets kept; a greenlet that finishes a
        call while this many are parked ends instead.
    """

    def __init__(self, max_idle: int = DEFAULT_MAX_IDLE) -> None:
        self.max_idle = max_idle
        self._hub: Any = get_hub()
        self._idle: list[Waiter] = []
        self._greenlets: set[Greenlet] = set()
        self._running = 0
        self._none_running: Event | None = None

    def __len__(self) -> int:
        """How many calls are running now (parked greenlets do not count)."""
        return self._running

    @property
    def greenlets(self) -> frozenset[Greenlet]:
        """Every greenlet the recycler holds, running a call or parked."""
        return frozenset(self._greenlets)

    def spawn(self, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(*args)`` in a parked greenlet, or a new one if none is parked."""
        self._running += 1
        if self._none_running is not None:
            self._none_running.clear()
        if self._idle:
            self._hub.loop.run_callback(self._hand_over, self._idle.pop(), (func, args))
        else:
            self._start(func, args)

    def _start(self, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        greenlet = Greenlet(self._work, func, args)
        self._greenlets.add(greenlet)
        greenlet.start()

    def _hand_over(self, waiter: Waiter, call: tuple[Callable[..., Any], tuple[Any, ...]]) -> None:
        if waiter.greenlet is None:
            # The parked greenlet was killed after spawn() chose it: the call
            # still runs, in a new greenlet.
            self._start(*call)
        else:
            waiter.switch(call)

    def _work(self, func: Callable[..., Any] | None, args: tuple[Any, ...] | None) -> None:
        waiter = Waiter(self._hub)
        running = True
        try:
            while True:
                try:
                    func(*args)  # type: ignore[misc]
                except Exception:
                    self._hub.handle_error(getcurrent(), *sys.exc_info())
                func = args = None
                running = False
                self._finished_one()
                if len(self._idle) >= self.max_idle:
                    return
                self._idle.append(waiter)
                func, args = waiter.get()
                running = True
        finally:
            if running:
                self._finished_one()
            elif waiter in self._idle:
                self._idle.remove(waiter)
            self._greenlets.discard(getcurrent())

    def _finished_one(self) -> None:
        self._running -= 1
        if self._running == 0 and self._none_running is not None:
            self._none_running.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until no call is running.

        :returns: ``True`` if none is running, ``False`` when ``timeout`` ran out.
        """
        if self._running == 0:
            return True
        if self._none_running is None:
            self._none_running = Event()
        return bool(self._none_running.wait(timeout))

    def kill(
        self,
        exception: Any = GreenletExit,
        block: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Kill every greenlet, parked or running a call."""
        greenlets = list(self._greenlets)
        if greenlets:
            gevent.killall(greenlets, exception, block=block, timeout=timeout)
