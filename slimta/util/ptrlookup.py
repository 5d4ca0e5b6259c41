"""Reverse DNS (PTR) lookups that run beside a session.

An edge starts a :class:`PtrLookup` as soon as a client connects and asks for
the answer only when it needs it (to stamp ``envelope.client['host']``), so the
lookup never delays the conversation. The query goes through
:class:`slimta.util.dns.DNSResolver`, the same hub-driven resolver the relays
use.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import gevent

from slimta import logging
from slimta.util.dns import DNSError, DNSResolver

__all__ = ["PtrLookup"]


def _reverse_name(ip: str) -> str | None:
    """``in-addr.arpa``/``ip6.arpa`` name of ``ip``, or ``None`` if it is no IP."""
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
                if runtime is None:
                    result = self.get(block=False)
                else:
                    remaining = max(0.0, self.start_time + runtime - time.time())
                    result = self.get(block=True, timeout=remaining)
            except gevent.Timeout:
                result = None
        self.kill(block=False)
        return result
