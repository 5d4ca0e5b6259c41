"""Reverse DNS (PTR) lookups that run beside a session.

An edge starts a :class:`PtrLookup` as soon as a client connects and asks for
the answer only when it needs it (to stamp ``envelope.client['host']``), so the
lookup never delays the conversation. The query goes through
:class:`slimta.util.dns.DNSResolver`, the same hub-driven resolver the relays
use.

Answers are kept, per IP, for their DNS TTL (at most :data:`PTR_CACHE_MAX_SECONDS`,
for at most :data:`PTR_CACHE_SIZE` addresses): a client that connects again
within the TTL costs no query. A failed lookup, or an answer with a TTL of 0, is
not kept. The cache belongs to the :attr:`DNSResolver.channel
<slimta.util.dns.DNSResolver.channel>` that answered: assigning another channel
or :meth:`~slimta.util.dns.DNSResolver.reset` empties it.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from typing import Any

import gevent

from slimta import logging
from slimta.util.dns import DNSError, DNSResolver

__all__ = ["PtrLookup", "cached_ptr", "PTR_CACHE_SIZE", "PTR_CACHE_MAX_SECONDS"]

#: The most IP addresses whose PTR answer is kept.
PTR_CACHE_SIZE = 4096
#: The longest a PTR answer is kept, whatever its TTL, in seconds.
PTR_CACHE_MAX_SECONDS = 3600.0


class _PtrCache:
    """IP -> (host name, expiry on the monotonic clock), least recently used first."""

    def __init__(self) -> None:
        self.entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.channel: Any = None

    def _check_channel(self) -> None:
        channel = DNSResolver.channel
        if channel is not self.channel:
            self.entries.clear()
            self.channel = channel

    def get(self, ip: str) -> str | None:
        self._check_channel()
        entry = self.entries.get(ip)
        if entry is None:
            return None
        if entry[1] <= _clock():
            del self.entries[ip]
            return None
        self.entries.move_to_end(ip)
        return entry[0]

    def put(self, ip: str, host: str, ttl: float) -> None:
        self._check_channel()
        if ttl <= 0:
            return
        entries = self.entries
        entries[ip] = (host, _clock() + min(ttl, PTR_CACHE_MAX_SECONDS))
        entries.move_to_end(ip)
        while len(entries) > PTR_CACHE_SIZE:
            entries.popitem(last=False)


_cache = _PtrCache()
#: The cache's clock (tests replace it).
_clock = time.monotonic


def cached_ptr(ip: str | None) -> str | None:
    """The host name a recent lookup found for ``ip``, while its TTL lasts.

    No query is sent: a caller that gets ``None`` starts a :class:`PtrLookup`.
    """
    if not ip:
        return None
    return _cache.get(ip)


def _reverse_ipv4(ip: str) -> str | None:
    """``in-addr.arpa`` name of a dotted-quad IPv4 address, or ``None``.

    The common case, without building an :mod:`ipaddress` object: four decimal
    octets, no leading zeros (which :mod:`ipaddress` refuses too), each <= 255.
    """
    parts = ip.split(".")
    if len(parts) != 4:
        return None
    for part in parts:
        if not (part.isdigit() and part.isascii()) or len(part) > 3:
            return None
        if (len(part) > 1 and part[0] == "0") or int(part) > 255:
            return None
    return f"{parts[3]}.{parts[2]}.{parts[1]}.{parts[0]}.in-addr.arpa"


def _reverse_name(ip: str) -> str | None:
    """``in-addr.arpa``/``ip6.arpa`` name of ``ip``, or ``None`` if it is no IP."""
    name = _reverse_ipv4(ip)
    if name is not None:
        return name
    try:
        address = ipaddress.ip_address(ip.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:  # ::ffff:192.0.2.1 from a dual-stack listener
        address = mapped
    return address.reverse_pointer


class PtrLookup(gevent.Greenlet):
    """Looks up the PTR record of ``ip`` in a greenlet of its own.

    An answer still in the cache (see above) is returned without a query.

    :param ip: the IP address (IPv4 or IPv6) whose name is wanted.
    """

    def __init__(self, ip: str | None) -> None:
        super().__init__()
        self.ip = ip or ""
        #: ``time.time()`` when :meth:`start` was called, else ``None``.
        self.start_time: float | None = None

    @classmethod
    def from_getpeername(cls, sock: Any) -> tuple[PtrLookup, int]:
        """A lookup of the socket's remote address.

        :param sock: a connected socket.
        :returns: ``(PtrLookup, remote port)``.
        """
        ip, port = sock.getpeername()[0:2]
        return cls(ip), port

    @classmethod
    def from_getsockname(cls, sock: Any) -> tuple[PtrLookup, int]:
        """A lookup of the socket's local address.

        :param sock: a bound socket.
        :returns: ``(PtrLookup, local port)``.
        """
        ip, port = sock.getsockname()[0:2]
        return cls(ip), port

    def start(self) -> None:
        """Start the lookup (see :meth:`gevent.Greenlet.start`)."""
        self.start_time = time.time()
        super().start()

    def _run(self) -> str | None:
        cached = _cache.get(self.ip)
        if cached is not None:
            return cached
        name = _reverse_name(self.ip)
        if name is None:
            return None
        try:
            answers = DNSResolver.query(name, "PTR").get()
        except DNSError:
            return None
        except Exception:
            logging.log_exception(__name__, query=self.ip)
            return None
        for answer in answers:
            host = str(answer.name).rstrip(".")
            if host:
                _cache.put(self.ip, host, getattr(answer, "ttl", 0) or 0)
                return host
        return None

    def finish(self, runtime: float | None = None) -> str | None:
        """The host name found, or ``None``; the lookup is stopped either way.

        :param runtime: wait until this many seconds have passed since
            :meth:`start` for the answer (a lookup that started 3.5 s ago and
            ``runtime=5.0`` waits at most 1.5 s more). ``None`` does not wait.
        :returns: the host name (without the final dot), or ``None`` when the
            lookup failed or has not finished yet.
        """
        result: str | None = None
        if self.start_time is not None:
            try:
                if runtime is None or self.ready():
                    result = self.get(block=False)
                else:
                    remaining = max(0.0, self.start_time + runtime - time.time())
                    result = self.get(block=True, timeout=remaining)
            except gevent.Timeout:
                result = None
        self.kill(block=False)
        return result
