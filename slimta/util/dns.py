"""DNS queries through pycares, driven by the gevent hub.

:class:`DNSResolver` sends queries on a :class:`pycares.Channel` and returns a
:class:`gevent.event.AsyncResult` for each. The default channel is built with a
``sock_state_cb``: c-ares reports every socket it opens, and each one gets a
``hub.loop.io`` watcher; one ``hub.loop.timer``, re-armed from
``channel.timeout()``, drives retries and timeouts. Nothing polls.

A channel assigned to :attr:`DNSResolver.channel` by the user works too. With
pycares 4 its sockets are read from ``getsock()`` after every query and every
``process_fd()``. With pycares 5 c-ares runs its own event thread and calls back
from it, so each callback is handed to the hub before any result is set.

Answers come back as small immutable records (:class:`MxAnswer`,
:class:`AddressAnswer`, :class:`TxtAnswer`, :class:`NameAnswer`,
:class:`SoaAnswer`, :class:`SrvAnswer`) that look the same on pycares 4 and 5.

.. versionchanged:: 0.1
   Works on pycares 4 and 5; the ``select.poll`` loop is gone (defect D2).
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, Union

import dns.exception
import dns.name
import gevent
import pycares
import pycares.errno
from gevent.event import AsyncResult

__all__ = ["DNSError", "DNSResolver"]

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


class DNSError(Exception):
    """A query failed; :attr:`errno` is the ``pycares.errno`` code.

    The message reads ``'<strerror> [<ERRNAME>]'``, for example
    ``Domain name not found [ARES_ENOTFOUND]``. NXDOMAIN is ``ARES_ENOTFOUND``
    and an empty answer (NODATA) is ``ARES_ENODATA``.

    :param errno: the c-ares status code
    """

    def __init__(self, errno: int) -> None:
        text = pycares.errno.strerror(errno)
        if isinstance(text, bytes):
            text = text.decode("ascii", "replace")
        name = pycares.errno.errorcode.get(errno, f"ARES_{errno}")
        super().__init__(f"{text} [{name}]")
        #: The c-ares status code.
        self.errno = errno

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.errno,))


class MxAnswer(NamedTuple):
    """One MX record. ``host`` has no trailing dot; a null MX (``.``) gives ``''``."""

    host: str
    priority: int
    ttl: int = -1


class AddressAnswer(NamedTuple):
    """One A or AAAA record; ``host`` is the textual address."""

    host: str
    ttl: int = -1


class TxtAnswer(NamedTuple):
    """One TXT record: its strings joined, as ``str``, or ``bytes`` if not UTF-8."""

    text: Union[str, bytes]
    ttl: int = -1


class NameAnswer(NamedTuple):
    """One PTR, CNAME or NS record.

    The target is :attr:`name`; :attr:`cname` and :attr:`host` are the same
    value under the names pycares 4 used for CNAME and NS answers.
    """

    name: str
    ttl: int = -1

    @property
    def cname(self) -> str:
        """The target of a CNAME answer (same as :attr:`name`)."""
        return self.name

    @property
    def host(self) -> str:
        """The name server of an NS answer (same as :attr:`name`)."""
        return self.name


class SoaAnswer(NamedTuple):
    """The SOA record, with pycares 4's field names."""

    nsname: str
    hostmaster: str
    serial: int
    refresh: int
    retry: int
    expires: int
    minttl: int
    ttl: int = -1


class SrvAnswer(NamedTuple):
    """One SRV record, with pycares 4's field names."""

    host: str
    port: int
    priority: int
    weight: int
    ttl: int = -1


Answer = Union[MxAnswer, AddressAnswer, TxtAnswer, NameAnswer, SoaAnswer, SrvAnswer]
_Callback = Callable[[Any, Any], None]

_QUERY_TYPES: dict[str, int] = {
    name: getattr(pycares, f"QUERY_TYPE_{name}")
    for name in ("A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT")
}
_NAMED_TYPES: dict[int, str] = {number: name for name, number in _QUERY_TYPES.items()}
_CNAME = _QUERY_TYPES["CNAME"]


def _query_type_number(query_type: Union[int, str]) -> int:
    if isinstance(query_type, str):
        number = _QUERY_TYPES.get(query_type.upper())
    else:
        number = query_type if query_type in _NAMED_TYPES else None
    if number is None:
        raise ValueError(f"unsupported DNS query type: {query_type!r}")
    return number


def _a_label(name: Union[str, bytes]) -> str:
    """Return ``name`` with every IDN label as its A-label (via dnspython).

    dnspython uses IDNA 2008 (UTS 46 mapping) when the ``idna`` package is
    installed and IDNA 2003 otherwise.
    """
    if isinstance(name, bytes):
        name = name.decode("ascii")
    if name.isascii():
        return name
    return str(dns.name.from_unicode(name, origin=None).to_text())


# ---------------------------------------------------------------------------
# The pycares 4/5 adapter: every version-specific detail lives below.


def _strip_dot(name: Any) -> str:
    text = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
    return text[:-1] if text.endswith(".") else text


def _text(data: Union[str, bytes]) -> Union[str, bytes]:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return bytes(data)


def _convert_v5(qtype: int, data: Any, ttl: int) -> Answer:
    name = _NAMED_TYPES[qtype]
    if name == "MX":
        return MxAnswer(_strip_dot(data.exchange), data.priority, ttl)
    if name in ("A", "AAAA"):
        return AddressAnswer(data.addr, ttl)
    if name == "TXT":
        return TxtAnswer(_text(data.data), ttl)
    if name in ("CNAME", "NS", "PTR"):
        target = {"CNAME": "cname", "NS": "nsdname", "PTR": "dname"}[name]
        return NameAnswer(_strip_dot(getattr(data, target)), ttl)
    if name == "SOA":
        return SoaAnswer(
            _strip_dot(data.mname),
            _strip_dot(data.rname),
            data.serial,
            data.refresh,
            data.retry,
            data.expire,
            data.minimum,
            ttl,
        )
    return SrvAnswer(_strip_dot(data.target), data.port, data.priority, data.weight, ttl)


def _convert_v4(qtype: int, item: Any) -> Answer:
    name = _NAMED_TYPES[qtype]
    ttl = getattr(item, "ttl", -1)
    if name == "MX":
        return MxAnswer(_strip_dot(item.host), item.priority, ttl)
    if name in ("A", "AAAA"):
        return AddressAnswer(item.host, ttl)
    if name == "TXT":
        return TxtAnswer(_text(item.text), ttl)
    if name in ("CNAME", "NS", "PTR"):
        target = {"CNAME": "cname", "NS": "host", "PTR": "name"}[name]
        return NameAnswer(_strip_dot(getattr(item, target)), ttl)
    if name == "SOA":
        return SoaAnswer(
            _strip_dot(item.nsname),
            _strip_dot(item.hostmaster),
            item.serial,
            item.refresh,
            item.retry,
            item.expires,
            item.minttl,
            ttl,
        )
    return SrvAnswer(_strip_dot(item.host), item.port, item.priority, item.weight, ttl)


def _convert(qtype: int, result: Any) -> list[Answer]:
    """Turn a pycares 4 or 5 query result into our records.

    pycares 5 gives a ``DNSResult`` whose ``answer`` may hold other types too
    (the CNAME chain); only records of the queried type are kept.
    """
    if hasattr(result, "answer"):
        # An answer reached through aliases lives no longer than the shortest
        # CNAME on the way, as pycares 4 (through c-ares) reports for A/AAAA.
        cap = min((rr.ttl for rr in result.answer if rr.type == _CNAME != qtype), default=None)
        return [
            _convert_v5(qtype, rr.data, rr.ttl if cap is None else min(rr.ttl, cap))
            for rr in result.answer
            if rr.type == qtype
        ]
    items = result if isinstance(result, list) else [result]
    return [_convert_v4(qtype, item) for item in items]


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


class _Driver:
    """Runs one channel's queries on the hub of the thread that created it.

    ``mode`` is ``'sockstate'`` for our own channel (c-ares reports sockets
    through :meth:`_on_sock_state`), ``'getsock'`` for a user's pycares 4
    channel, and ``'thread'`` when c-ares runs its own event thread.
    """

    _closed_channels: ClassVar[collections.deque[Any]] = collections.deque(
        maxlen=_CLOSED_CHANNELS_KEPT
    )

    def __init__(self, channel_options: dict[str, Any] | None, channel: Any = None) -> None:
        self.hub = gevent.get_hub()
        self.loop = self.hub.loop
        self.thread_id = threading.get_ident()
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
            result.set_exception(DNSError(int(errno)))
        else:
            try:
                records = _convert(qtype, answer)
            except Exception:
                result.set_exception(DNSError(pycares.errno.ARES_EBADRESP))
            else:
                if records:
                    result.set(records)
                else:
                    result.set_exception(DNSError(pycares.errno.ARES_ENODATA))
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
            result.set_exception(DNSError(pycares.errno.ARES_ECANCELLED))
        if self.owns_channel:
            if hasattr(self.channel, "getsock"):
                self._closed_channels.append(self.channel)
            self.channel.close()


class DNSResolver:
    """Class-level access to DNS queries; all state lives on the class.

    Assign a :class:`pycares.Channel` to :attr:`channel` to send every query
    through it. Otherwise a hub-integrated channel is built on first use from
    :attr:`channel_options` and stored in :attr:`channel`. The resolver belongs
    to the hub of the thread that first queries; query from that thread.
    """

    #: The channel queries go through; ``None`` until the first query unless
    #: the user assigns one.
    channel: ClassVar[Any] = None

    #: Keyword arguments for the default :class:`pycares.Channel`, e.g.
    #: ``servers``, ``udp_port``, ``tcp_port``, ``timeout`` (seconds), ``tries``.
    channel_options: ClassVar[dict[str, Any]] = {}

    _driver: ClassVar[_Driver | None] = None

    @classmethod
    def query(cls, name: Union[str, bytes], query_type: Union[int, str]) -> AsyncResult:
        """Start a DNS query and return at once.

        :param name: the name to look up; IDN labels are sent as A-labels
        :param query_type: a ``pycares.QUERY_TYPE_*`` value or a case-insensitive
            name: ``'MX'``, ``'A'``, ``'AAAA'``, ``'TXT'``, ``'PTR'``, ``'CNAME'``,
            ``'NS'``, ``'SOA'`` or ``'SRV'``
        :returns: an :class:`~gevent.event.AsyncResult` holding the list of
            records, or failing with :class:`DNSError`; it is always set in the
            hub's thread
        :raises ValueError: for an unsupported ``query_type``
        :raises RuntimeError: when another thread's hub runs the resolver (call
            :meth:`reset` there first)
        """
        qtype = _query_type_number(query_type)
        result = AsyncResult()
        try:
            qname = _a_label(name)
        except (UnicodeError, dns.exception.DNSException, AttributeError):
            result.set_exception(DNSError(pycares.errno.ARES_EBADNAME))
            return result
        cls._current_driver().submit(qname, qtype, result)
        return result

    @classmethod
    def _current_driver(cls) -> _Driver:
        driver = cls._driver
        if driver is not None and not driver.usable_here():
            if threading.get_ident() == driver.thread_id:
                driver.close()  # this thread's hub was destroyed and replaced
                if driver.owns_channel:
                    cls.channel = None
            elif not driver.closed:
                raise RuntimeError("DNSResolver is bound to the gevent hub of another thread")
        if driver is not None and not driver.closed and driver.channel is cls.channel:
            return driver
        if driver is not None:
            driver.retire()  # the user swapped channels
        if cls.channel is None:
            driver = _Driver(cls.channel_options)
            cls.channel = driver.channel
        else:
            driver = _Driver(None, cls.channel)
        cls._driver = driver
        return driver

    @classmethod
    def reset(cls) -> None:
        """Cancel pending queries, stop the watchers and close our channel.

        Outstanding results fail with ``ARES_ECANCELLED``. A channel the user
        assigned is not closed, but :attr:`channel` returns to ``None``. Meant
        for tests; call it from the hub's thread.
        """
        driver, cls._driver = cls._driver, None
        if driver is not None:
            driver.close()
        cls.channel = None
