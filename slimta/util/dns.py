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
   Works on pycares 4 and 5; the ``select.poll`` loop is gone (the channel's
   sockets are watched by the gevent hub instead).
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, Union

import dns.exception
import dns.name
import pycares
import pycares.errno
from gevent.event import AsyncResult

# The hub integration and the records live in private modules; the names below
# stay importable from here, where they have always been.
from slimta.util._dns_driver import MAX_TIMER_INTERVAL_SECONDS as MAX_TIMER_INTERVAL_SECONDS
from slimta.util._dns_driver import MIN_TIMER_INTERVAL_SECONDS as MIN_TIMER_INTERVAL_SECONDS
from slimta.util._dns_driver import Driver
from slimta.util._dns_records import AddressAnswer as AddressAnswer
from slimta.util._dns_records import Answer as Answer
from slimta.util._dns_records import MxAnswer as MxAnswer
from slimta.util._dns_records import NameAnswer as NameAnswer
from slimta.util._dns_records import SoaAnswer as SoaAnswer
from slimta.util._dns_records import SrvAnswer as SrvAnswer
from slimta.util._dns_records import TxtAnswer as TxtAnswer
from slimta.util._dns_records import query_type_number

__all__ = ["DNSError", "DNSResolver"]


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

    _driver: ClassVar[Driver | None] = None

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
        qtype = query_type_number(query_type)
        result = AsyncResult()
        try:
            qname = _a_label(name)
        except (UnicodeError, dns.exception.DNSException, AttributeError):
            result.set_exception(DNSError(pycares.errno.ARES_EBADNAME))
            return result
        cls._current_driver().submit(qname, qtype, result)
        return result

    @classmethod
    def _current_driver(cls) -> Driver:
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
            driver = Driver(cls.channel_options, error=DNSError)
            cls.channel = driver.channel
        else:
            driver = Driver(None, cls.channel, error=DNSError)
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
