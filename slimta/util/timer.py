"""Reusable time limits for the waits of one session.

A :class:`gevent.Timeout` holds a native timer; a session that waits for the
peer several times per message (each command, the data) should not build and
free one per wait. :class:`SessionTimers` keeps one :class:`Bound` per number of
seconds and restarts it for each wait. Used by the SMTP server for its command
and data waits and by the relay client for its stages.

:class:`SessionDeadline` goes further for a session that waits in one greenlet
at a time: each wait only records its deadline, and one native timer, armed once,
fires when a deadline may have passed, re-arming itself when the wait in progress
was started later. The SMTP server bounds every command and data wait with it.
"""

from __future__ import annotations

from time import monotonic
from types import TracebackType
from typing import Any

from gevent import Timeout, get_hub, getcurrent

__all__ = ["Bound", "SessionTimers", "SessionDeadline"]


class Bound:
    """One :class:`gevent.Timeout`, started on ``with`` entry and cancelled (not closed) on exit.

    What ``with`` binds is the :class:`gevent.Timeout` itself, which is also what
    is raised on expiry when no ``exception`` was given.

    :param seconds: the limit; ``None`` never expires.
    :param exception: raised on expiry instead of the timeout (a class or an instance).
    """

    __slots__ = ("timeout",)

    def __init__(
        self, seconds: float | None, exception: type[BaseException] | BaseException | None = None
    ) -> None:
        self.timeout = Timeout(seconds, exception)

    def __enter__(self) -> Timeout:
        timeout = self.timeout
        timeout.start()
        return timeout

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.timeout.cancel()


class SessionTimers:
    """One reusable :class:`Bound` per number of seconds, for one session.

    :param exception: what every bound raises on expiry (see :class:`Bound`).
    """

    __slots__ = ("_exception", "_bounds")

    def __init__(self, exception: type[BaseException] | BaseException | None = None) -> None:
        self._exception = exception
        self._bounds: dict[float | None, Bound] = {}

    def bound(self, seconds: float | None) -> Bound | Timeout:
        """A context manager limiting the wait inside it to ``seconds``.

        The session's reusable :class:`Bound` for that value, or a fresh
        :class:`gevent.Timeout` when that one is already running (a wait nested
        inside another with the same limit).
        """
        bound = self._bounds.get(seconds)
        if bound is None:
            bound = self._bounds[seconds] = Bound(seconds, self._exception)
        elif bound.timeout.pending:
            return Timeout(seconds, self._exception)
        return bound

    def close(self) -> None:
        """Free every native timer; later :meth:`bound` calls make new ones."""
        bounds, self._bounds = self._bounds, {}
        for bound in bounds.values():
            bound.timeout.close()


class SessionDeadline:
    """Time limits for the waits of one session, with at most one native timer.

    ``with deadline.bound(seconds):`` limits what happens inside to ``seconds``,
    like a :class:`gevent.Timeout`, but entering and leaving only record the
    deadline and the waiting greenlet. The native timer is armed when no timer
    is armed yet, or when the new deadline comes before the armed one. When it
    fires it throws ``exception`` into the greenlet if that greenlet is still
    inside a ``with`` whose deadline has passed; if the wait now in progress
    started later, it re-arms for what is left; outside any wait it does
    nothing, and the next wait arms it again. So a session that waits many
    times in a row usually starts one timer per expiry period instead of one per
    wait.

    A wait nested inside another gets a fresh :class:`gevent.Timeout` instead.

    :param exception: what is raised on expiry (a class or an instance); it
        should be one the session code catches as its own timeout.
    """

    __slots__ = ("_exception", "_loop", "_timer", "_fires_at", "_deadline", "_greenlet",
                 "_seconds")

    def __init__(self, exception: type[BaseException] | BaseException) -> None:
        self._exception = exception
        self._loop: Any = get_hub().loop
        self._timer: Any = None
        self._fires_at = 0.0
        self._deadline: float | None = None
        self._greenlet: Any = None
        self._seconds = 0.0

    @property
    def waiting(self) -> bool:
        """Whether a wait bounded by this deadline is in progress."""
        return self._deadline is not None

    def bound(self, seconds: float) -> SessionDeadline | Timeout:
        """A context manager limiting the wait inside it to ``seconds``."""
        if self._deadline is not None:
            return Timeout(seconds, self._exception)
        self._seconds = seconds
        return self

    def __enter__(self) -> SessionDeadline:
        seconds = self._seconds
        deadline = monotonic() + seconds
        self._deadline = deadline
        self._greenlet = getcurrent()
        if self._timer is None or deadline < self._fires_at:
            self._arm(seconds, deadline)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._deadline = None
        self._greenlet = None

    def _arm(self, delay: float, fires_at: float) -> None:
        self._disarm()
        timer = self._loop.timer(max(delay, 0.0))
        self._timer = timer
        self._fires_at = fires_at
        timer.start(self._expired)

    def _disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.stop()
            timer.close()

    def _expired(self) -> None:
        # Runs in the hub, so the session's greenlet is switched out: it is
        # either inside a bounded wait (deadline set) or somewhere else.
        self._disarm()
        deadline = self._deadline
        if deadline is None:
            return
        remaining = deadline - monotonic()
        if remaining > 0.0:
            self._arm(remaining, deadline)
            return
        greenlet = self._greenlet
        self._deadline = None
        self._greenlet = None
        greenlet.throw(self._exception)

    def close(self) -> None:
        """Free the native timer; a later wait arms a new one."""
        self._disarm()
        self._deadline = None
        self._greenlet = None
