"""The pycares channel ↔ gevent hub integration behind :class:`~slimta.util.dns.DNSResolver`.

A :class:`Driver` runs one channel's queries on the hub of the thread that
created it. The default channel is built with a ``sock_state_cb``: c-ares reports
every socket it opens, and each one gets a ``hub.loop.io`` watcher; one
``hub.loop.timer``, re-armed from ``channel.timeout()``, drives retries and
timeouts. A user's pycares 4 channel is read through ``getsock()``; a channel
that runs c-ares' own event thread hands each callback to the hub.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import gevent
import pycares
import pycares.errno
from gevent.event import AsyncResult

from slimta.util._dns_records import convert

__all__ = ["Driver", "MAX_TIMER_INTERVAL_SECONDS", "MIN_TIMER_INTERVAL_SECONDS"]

#: gevent's io watcher event bits (the same values on the libev and libuv loops).
_READ = 1
_WRITE = 2

#: The longest the timer sleeps before asking c-ares again, in seconds. It only
#: matters when c-ares has nothing scheduled while queries are outstanding.
MAX_TIMER_INTERVAL_SECONDS = 1.0
#: The shortest timer, in seconds: c-ares counts in milliseconds, and so does libuv.
MIN_TIMER_INTERVAL_SECONDS = 0.001

#: How many closed pycares 4 channels stay referenced. pycares 4 destroys a
#: channel later, on its own thread, without keeping the ``sock_state_cb``
#: handle alive; c-ares then calls it while closing the sockets, so the Python
#: object must outlive that moment.
_CLOSED_CHANNELS_KEPT = 32


# ---------------------------------------------------------------------------
# The pycares 4/5 channel differences: every version-specific detail of a
# channel lives below.


def _new_channel(options: dict[str, Any], sock_state_cb: Callable[[int, bool, bool], None]) -> Any:
    # Keyword arguments only (pycares 5 requires it). With a sock_state_cb,
    # neither version starts c-ares' event thread.
    if "sock_state_cb" in options or "event_thread" in options:
        raise ValueError("channel_options may not set sock_state_cb or event_thread")
    return pycares.Channel(sock_state_cb=sock_state_cb, **options)


def _uses_own_thread(channel: Any) -> bool:
    """Whether c-ares drives ``channel`` from its own event thread."""
    # pycares 5 has no getsock(): a channel without sock_state_cb runs a thread.
    # pycares 4 only does so when built with event_thread=True.
    return not hasattr(channel, "getsock") or bool(getattr(channel, "_event_thread", False))


def _getsock(channel: Any) -> dict[int, int]:
    read_fds, write_fds = channel.getsock()
    wanted: dict[int, int] = collections.defaultdict(int)
    for fd in read_fds:
        wanted[int(fd)] |= _READ
    for fd in write_fds:
        wanted[int(fd)] |= _WRITE
    return wanted


# ---------------------------------------------------------------------------


class Driver:
    """Runs one channel's queries on the hub of the thread that created it.

    ``mode`` is ``'sockstate'`` for our own channel (c-ares reports sockets
    through :meth:`_on_sock_state`), ``'getsock'`` for a user's pycares 4
    channel, and ``'thread'`` when c-ares runs its own event thread. ``error``
    builds the exception a failed query's result is set to, from its
    ``pycares.errno`` code.
    """

    _closed_channels: ClassVar[collections.deque[Any]] = collections.deque(
        maxlen=_CLOSED_CHANNELS_KEPT
    )

    def __init__(
        self,
        channel_options: dict[str, Any] | None,
        channel: Any = None,
        *,
        error: Callable[[int], Exception],
    ) -> None:
        self.hub = gevent.get_hub()
        self.loop = self.hub.loop
        self.thread_id = threading.get_ident()
        self.error = error
        self.closed = False
        self.retiring = False
        self.owns_channel = channel is None
        self.pending: dict[int, tuple[int, AsyncResult]] = {}
        self.ids = itertools.count()
        self.io: dict[int, Any] = {}
        self.timer: Any = None
        self.deadline = 0.0
        if channel is None:
            self.mode = "sockstate"
            self.channel = _new_channel(dict(channel_options or {}), self._on_sock_state)
        else:
            self.mode = "thread" if _uses_own_thread(channel) else "getsock"
            self.channel = channel
        # Callbacks from c-ares' own thread queue up in ``inbox`` and wake the
        # hub through this async watcher; ``send()`` is the one thread-safe
        # loop operation (gevent's run_callback_threadsafe is not, on libuv).
        # It is referenced only while queries are outstanding, so it keeps the
        # hub running while a greenlet waits, even with no socket open yet.
        self.lock = threading.Lock()
        self.inbox: collections.deque[tuple[int, Any, Any]] = collections.deque()
        self.wakeup = self.loop.async_(ref=False)
        self.wakeup.start(self._drain_inbox)

    def watchers(self) -> list[Any]:
        """Every watcher this driver currently holds (for tests)."""
        found = list(self.io.values()) + [self.wakeup]
        return found + ([self.timer] if self.timer is not None else [])

    def submit(self, name: str, qtype: int, result: AsyncResult) -> None:
        """Send one query; ``result`` is resolved in this hub's thread."""
        token = next(self.ids)
        self.pending[token] = (qtype, result)
        self.wakeup.ref = True

        def callback(answer: Any, errno: Any) -> None:
            self._on_answer(token, answer, errno)

        try:
            self.channel.query(name, qtype, callback=callback)
        except (UnicodeError, TypeError, ValueError):
            self._complete(token, None, pycares.errno.ARES_EBADNAME)
        except Exception:
            # Typically a channel closed behind our back.
            self._complete(token, None, pycares.errno.ARES_EDESTRUCTION)
        self._after_activity()

    def _on_answer(self, token: int, answer: Any, errno: Any) -> None:
        # Runs inside pycares, on whatever thread c-ares used: never raise here.
        if threading.get_ident() == self.thread_id:
            self._complete(token, answer, errno)
            return
        with self.lock:
            if not self.closed:
                self.inbox.append((token, answer, errno))
                self.wakeup.send()

    def _drain_inbox(self) -> None:
        while self.inbox:
            self._complete(*self.inbox.popleft())

    def _complete(self, token: int, answer: Any, errno: Any) -> None:
        entry = self.pending.pop(token, None)
        if entry is None:
            return  # already failed by close()
        qtype, result = entry
        if errno:
            result.set_exception(self.error(int(errno)))
        else:
            try:
                records = convert(qtype, answer)
            except Exception:
                result.set_exception(self.error(pycares.errno.ARES_EBADRESP))
            else:
                if records:
                    result.set(records)
                else:
                    result.set_exception(self.error(pycares.errno.ARES_ENODATA))
        if not self.pending and not self.closed:
            self.wakeup.ref = False
            if self.retiring:
                # Not from inside a pycares callback: close after it returns.
                self.loop.run_callback(self.close, False)

    # -- hub integration ---------------------------------------------------

    def _on_sock_state(self, fd: int, readable: bool, writable: bool) -> None:
        # pycares may destroy a closed channel on its own thread, which reports
        # the sockets closing; by then close() has stopped everything already.
        if self.closed or threading.get_ident() != self.thread_id:
            return
        self._watch(fd, (_READ if readable else 0) | (_WRITE if writable else 0))

    def _watch(self, fd: int, events: int) -> None:
        current = self.io.get(fd)
        if current is not None:
            if current.events == events:
                return
            self._discard(current)
            del self.io[fd]
        if events:
            # Unreferenced: an idle socket c-ares keeps open must not pin the
            # hub; the wakeup watcher does that while queries are pending.
            watcher = self.loop.io(fd, events, ref=False)
            watcher.start(self._on_io, fd, pass_events=True)
            self.io[fd] = watcher

    def _discard(self, watcher: Any) -> None:
        """Stop ``watcher`` now and close it from a loop callback.

        Closing explicitly, in this thread, matters on libuv: a watcher left to
        the garbage collector may be finalised on any thread (the DNS server's,
        c-ares' own), and libuv handles must only be closed on their loop's.
        The close waits for a callback because this may run inside the
        watcher's own callback.
        """
        watcher.stop()
        self.loop.run_callback(watcher.close)

    def _on_io(self, events: int, fd: int) -> None:
        watcher = self.io.get(fd)
        if self.closed or watcher is None:
            return  # a callback queued before c-ares dropped the socket
        # libuv reports errors as readable and writable; pass on only what
        # c-ares asked for.
        events &= watcher.events
        read_fd = fd if events & _READ else pycares.ARES_SOCKET_BAD
        write_fd = fd if events & _WRITE else pycares.ARES_SOCKET_BAD
        self.channel.process_fd(read_fd, write_fd)
        self._after_activity()

    def _on_timer(self) -> None:
        if self.timer is not None:
            self._discard(self.timer)
            self.timer = None
        if self.closed:
            return
        self.channel.process_fd(pycares.ARES_SOCKET_BAD, pycares.ARES_SOCKET_BAD)
        self._after_activity()

    def _after_activity(self) -> None:
        if self.closed or self.mode == "thread":
            return
        if self.mode == "getsock":
            wanted = _getsock(self.channel)
            for fd in [fd for fd in self.io if fd not in wanted]:
                self._watch(fd, 0)
            for fd, events in wanted.items():
                self._watch(fd, events)
        self._arm_timer()

    def _arm_timer(self) -> None:
        if not self.pending:
            if self.timer is not None:
                self._discard(self.timer)
                self.timer = None
            return
        delay = float(self.channel.timeout(MAX_TIMER_INTERVAL_SECONDS))
        delay = max(MIN_TIMER_INTERVAL_SECONDS, delay)
        deadline = self.loop.now() + delay
        if self.timer is not None:
            if self.timer.active and self.deadline <= deadline:
                return  # it fires early enough; _on_timer asks again
            self._discard(self.timer)
        self.timer = self.loop.timer(delay, ref=False)
        self.timer.start(self._on_timer)
        self.deadline = deadline

    # -- shutdown ----------------------------------------------------------

    def retire(self) -> None:
        """Stop using this driver: close it once its queries are done."""
        self.retiring = True
        if not self.pending or not self.usable_here():
            self.close(cancel=False)

    def usable_here(self) -> bool:
        """Whether this thread's current hub is the one this driver runs on."""
        return threading.get_ident() == self.thread_id and gevent.get_hub() is self.hub

    def close(self, cancel: bool = True) -> None:
        """Stop every watcher, fail what is still pending, close our channel.

        Called from another thread, or after this thread's hub was replaced,
        the watchers are left alone: their loop is not ours to touch.

        :param cancel: cancel the channel's queries first; their callbacks run
            right here with ``ARES_ECANCELLED``
        """
        if self.closed:
            return
        here = self.usable_here()
        # Elsewhere, the callbacks cancel() triggers must not touch our loop.
        with self.lock:
            self.closed = not here
        if cancel:
            try:
                self.channel.cancel()
            except Exception:
                pass  # the channel was closed elsewhere; pending queries fail below
        with self.lock:
            self.closed = True  # from now on no thread sends to the wakeup watcher
        self.inbox.clear()
        if here:
            # Never called from inside one of these watchers' callbacks. stop()
            # first: it is what rebalances the loop's count for ref=False.
            for watcher in self.watchers():
                watcher.stop()
                watcher.close()
        self.io.clear()
        self.timer = None
        pending, self.pending = self.pending, {}
        for _qtype, result in pending.values():
            result.set_exception(self.error(pycares.errno.ARES_ECANCELLED))
        if self.owns_channel:
            if hasattr(self.channel, "getsock"):
                self._closed_channels.append(self.channel)
            self.channel.close()
