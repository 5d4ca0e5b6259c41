"""DNS blocklist (DNSBL, RFC 5782) checks through :class:`slimta.util.dns.DNSResolver`.

An IP address is listed on ``bl.example`` when ``A`` records exist for its
reversed form under that zone: ``2.0.0.127.bl.example`` for ``127.0.0.2``, the
32 reversed nibbles for an IPv6 address. The ``TXT`` record of the same name
usually says why. Only answers inside ``127.0.0.0/8`` count as a listing (RFC
5782 section 2.1): a resolver that answers NXDOMAIN with an advertising page's
address does not list everyone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any, TypeVar

import gevent
import pycares
from gevent.pool import Group, Pool

from slimta import logging
from slimta.util.dns import DNSError, DNSResolver

__all__ = ["DnsBlocklist", "DnsBlocklistGroup", "check_dnsbl"]

#: Seconds ``ip in dnsbl`` and ``dnsbl[ip]`` wait for an answer.
CONTAINS_TIMEOUT_SECONDS = 10.0
#: The range RFC 5782 answers come from; other answers are not listings.
_LISTING_NETWORK = ipaddress.IPv4Network("127.0.0.0/8")
_NOT_FOUND = (pycares.errno.ARES_ENOTFOUND, pycares.errno.ARES_ENODATA)

_F = TypeVar("_F", bound=Callable[..., Any])


def _reversed_name(ip: str, zone: str) -> str:
    address = ipaddress.ip_address(ip.strip().strip("[]"))
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    # reverse_pointer is '4.3.2.1.in-addr.arpa' or nibbles + '.ip6.arpa'.
    labels = address.reverse_pointer.rsplit(".", 2)[0]
    return f"{labels}.{zone.rstrip('.')}"


class DnsBlocklist:
    """Checks addresses against one DNSBL.

    ``ip in dnsbl`` is :meth:`get` and ``dnsbl[ip]`` is :meth:`get_reason`,
    both with a 10 s timeout (``dnsbl[ip]`` never raises :class:`KeyError`).

    :param address: the DNSBL's zone, e.g. ``'zen.spamhaus.org'``.
    :param ignore: answers (addresses or networks such as ``'127.0.0.4/32'``)
        that do not count as a listing.
    """

    def __init__(self, address: str, ignore: Iterable[str] | None = None) -> None:
        self.address = address
        self.ignore = [ipaddress.IPv4Network(ip) for ip in (ignore or [])]

    def _build_query(self, ip: str) -> str:
        return _reversed_name(ip, self.address)

    def __contains__(self, ip: str) -> bool:
        return self.get(ip, timeout=CONTAINS_TIMEOUT_SECONDS)

    def __getitem__(self, ip: str) -> str | None:
        return self.get_reason(ip, timeout=CONTAINS_TIMEOUT_SECONDS)

    def _is_listing(self, answer: Any) -> bool:
        try:
            value = ipaddress.IPv4Address(answer.host)
        except (AttributeError, ValueError):
            return False
        return value in _LISTING_NETWORK and not any(value in net for net in self.ignore)

    def get(self, ip: str, timeout: float | None = None, strict: bool = False) -> bool:
        """Whether this DNSBL lists ``ip``.

        :param ip: an IPv4 or IPv6 address.
        :param timeout: seconds to wait for the answer.
        :param strict: the result when the lookup fails (timeout, SERVFAIL...)
            rather than answering; ``False`` fails open.
        :returns: ``True`` when listed.
        :raises ValueError: ``ip`` is not an IP address.
        """
        query = self._build_query(ip)
        with gevent.Timeout(timeout, False):
            try:
                answers = DNSResolver.query(query, "A").get()
            except DNSError as exc:
                if exc.errno in _NOT_FOUND:
                    return False
                logging.log_exception(__name__, query=query)
            else:
                return any(self._is_listing(answer) for answer in answers)
        return strict

    def get_reason(self, ip: str, timeout: float | None = None) -> str | None:
        """The DNSBL's ``TXT`` record for ``ip``: usually why it is listed.

        :param ip: an IPv4 or IPv6 address.
        :param timeout: seconds to wait for the answer.
        :returns: the text (strings of one record joined), or ``None``.
        """
        query = self._build_query(ip)
        with gevent.Timeout(timeout, False):
            try:
                answers = DNSResolver.query(query, "TXT").get()
            except DNSError:
                return None
            for answer in answers:
                text = answer.text
                return text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        return None


class DnsBlocklistGroup:
    """Queries several DNSBLs at once.

    ``ip in group`` is ``bool(group.get(ip, timeout=10.0))``.

    :param pool: a :class:`gevent.pool.Pool`, a pool size, or ``None`` to
        spawn unbounded greenlets.
    """

    def __init__(self, pool: Any = None) -> None:
        self.dnsbls: list[DnsBlocklist] = []
        self.pool: Any
        if isinstance(pool, Pool):
            self.pool = pool
        elif pool is None:
            self.pool = gevent
        else:
            self.pool = Pool(pool)

    def add_dnsbl(self, address: str) -> None:
        """Add one DNSBL zone to the group."""
        self.dnsbls.append(DnsBlocklist(address))

    def _run_all(self, work: Callable[[DnsBlocklist], None], which: Iterable[DnsBlocklist],
                 timeout: float | None) -> None:
        group = Group()
        try:
            with gevent.Timeout(timeout, False):
                for dnsbl in which:
                    group.add(self.pool.spawn(work, dnsbl))
                group.join()
        finally:
            group.kill()

    def __contains__(self, ip: str) -> bool:
        return bool(self.get(ip, timeout=CONTAINS_TIMEOUT_SECONDS))

    def get(self, ip: str, timeout: float | None = None) -> set[str]:
        """The zones of the group that list ``ip``.

        :param ip: an IPv4 or IPv6 address.
        :param timeout: seconds for all the queries; unanswered ones count as
            not listed.
        :returns: the set of matching DNSBL zone names.
        """
        matches: set[str] = set()

        def check(dnsbl: DnsBlocklist) -> None:
            if dnsbl.get(ip):
                matches.add(dnsbl.address)

        self._run_all(check, list(self.dnsbls), timeout)
        return matches

    def get_reasons(
        self, matches: Iterable[str], ip: str, timeout: float | None = None
    ) -> dict[str, str | None]:
        """The ``TXT`` reasons of the DNSBLs in ``matches`` (from :meth:`get`).

        :returns: ``{zone: reason or None}`` for each zone in ``matches``.
        """
        reasons: dict[str, str | None] = dict.fromkeys(matches)

        def fetch(dnsbl: DnsBlocklist) -> None:
            reasons[dnsbl.address] = dnsbl.get_reason(ip)

        self._run_all(fetch, [d for d in self.dnsbls if d.address in reasons], timeout)
        return reasons


def check_dnsbl(
    address: Any,
    match_code: str = "550",
    match_message: str = "5.7.1 Access denied",
    timeout: float = 10.0,
) -> Callable[[_F], _F]:
    """Decorate an :class:`~slimta.edge.smtp.SmtpValidators` ``handle_*`` method
    (one taking the reply first) with a DNSBL check of the client's IP.

    When the session's client address is listed, the reply becomes
    ``match_code match_message`` and the method is not called.

    :param address: a :class:`DnsBlocklist`, a :class:`DnsBlocklistGroup` or
        a DNSBL zone name.
    :param match_code: the reply code for a listed client.
    :param match_message: the reply message for a listed client.
    :param timeout: seconds for the check; no answer means not listed.
    """
    if not isinstance(address, (DnsBlocklist, DnsBlocklistGroup)):
        address = DnsBlocklist(address)
    blocklist = address

    def decorator(func: _F) -> _F:
        @wraps(func)
        def wrapper(self: Any, reply: Any, *args: Any, **kwargs: Any) -> Any:
            ip = (self.session.address or (None,))[0] or ""
            try:
                listed = blocklist.get(ip, timeout=timeout)
            except ValueError:  # not an IP address (e.g. a unix socket peer)
                listed = False
            if listed:
                reply.code = match_code
                reply.message = match_message
                return None
            return func(self, reply, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
