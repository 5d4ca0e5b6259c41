"""Reusable time limits for the waits of one session.

A :class:`gevent.Timeout` holds a native timer; a session that waits for the
peer several times per message (each command, the data) should not build and
free one per wait. :class:`SessionTimers` keeps one :class:`Bound` per number of
seconds and restarts it for each wait. Used by the SMTP server for its command
and data waits and by the relay client for its stages.
"""

from __future__ import annotations

from types import TracebackType

from gevent import Timeout

__all__ = ["Bound", "SessionTimers"]


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
