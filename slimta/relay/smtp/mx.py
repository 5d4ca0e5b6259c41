"""Delivery to each recipient domain's MX hosts (RFC 5321 §5.1).

:class:`MxSmtpRelay` groups an envelope's recipients by domain, finds each
domain's mail exchangers through :class:`~slimta.util.dns.DNSResolver`, and hands
each group to a :class:`~slimta.relay.smtp.static.StaticSmtpRelay` for one of
those hosts. Routing data (:class:`MxRecord`) and the per-host relays live in
bounded LRU caches, so a long-running process that mails many domains keeps
bounded memory.
"""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import gevent
import pycares
from gevent.event import AsyncResult

from slimta.envelope import Envelope
from slimta.relay import (
    PermanentRelayError,
    Relay,
    RelayError,
    RelayResult,
    TransientRelayError,
)
from slimta.relay._replies import internal_failure, no_valid_recipients
from slimta.relay._timeouts import Timeouts
from slimta.relay.options import MxRelayKeywords, MxRelayOptions
from slimta.relay.pool import closing_error
from slimta.relay.smtp._domains import address_refusal as _address_refusal
from slimta.relay.smtp._domains import domain_of as _domain_of
from slimta.relay.smtp._domains import literal_host as _literal_host
from slimta.relay.smtp._lru import LRU
from slimta.relay.smtp.static import StaticSmtpRelay
from slimta.smtp.reply import Reply
from slimta.util.dns import DNSError, DNSResolver

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["MxSmtpRelay"]

#: A TTL the resolver could not tell us (pycares 4 reports -1 for MX) counts as this.
UNKNOWN_TTL_SECONDS = 300
#: No routing answer is kept longer than a day, whatever its TTL says.
MAX_TTL_SECONDS = 86400
#: Resolver failures (SERVFAIL, timeouts) are remembered at most this long.
TRANSIENT_ERROR_TTL_SECONDS = 5.0
#: A guard on one lookup, on top of the resolver's own timeout and tries.
LOOKUP_TIMEOUT_SECONDS = 60.0

# Failures before the transaction starts: another MX host may do better.
_PRE_TRANSACTION_COMMANDS = frozenset(
    [b"[CONNECT]", b"[BANNER]", b"EHLO", b"HELO", b"LHLO", b"STARTTLS", b"AUTH"]
)


class NoDomainError(PermanentRelayError):
    """A recipient address without an ``@domain`` part.

    :param recipient: the address (kept as :attr:`recipient`).
    """

    def __init__(self, recipient: str) -> None:
        msg = "Recipient address has no domain: " + recipient
        super().__init__(msg, Reply("550", "5.1.5 " + msg, command=b"RCPT"))
        self.recipient = recipient


class NullMxError(ValueError):
    """The domain publishes a null MX (RFC 7505): it accepts no mail."""


def _ttl_of(answers: list[Any]) -> float:
    ttls = [a.ttl for a in answers if getattr(a, "ttl", -1) is not None and a.ttl >= 0]
    ttl = min(ttls) if ttls and len(ttls) == len(answers) else UNKNOWN_TTL_SECONDS
    return float(min(ttl, MAX_TTL_SECONDS))


def _wait(result: AsyncResult) -> list[Any]:
    try:
        answers: list[Any] = result.get(timeout=LOOKUP_TIMEOUT_SECONDS)
    except gevent.Timeout:
        raise DNSError(pycares.errno.ARES_ETIMEOUT)
    return answers


def _no_records(domain: str) -> ValueError:
    return ValueError("No usable DNS records found: " + domain)


class MxRecord:
    """Cached routing data for one domain.

    :param domain: the domain, as its A-label.
    :param negative_ttl: how long "no such domain" and "no records" answers are
        remembered (keyword-only; new).
    """

    def __init__(self, domain: str, *, negative_ttl: float = 60.0) -> None:
        self.domain = domain
        self.negative_ttl = negative_ttl
        self._records: list[tuple[int, str]] = []
        self._error: Exception | None = None
        self._expiration = 0.0
        self._inflight: AsyncResult | None = None

    @property
    def expired(self) -> bool:
        """True when nothing is cached or the cached answer's TTL has passed."""
        return self._expiration <= time.monotonic()

    def get(self) -> list[tuple[int, str]]:
        """The ``(preference, host)`` pairs, most preferred first.

        Hosts of equal preference come in a fresh random order on each call
        (RFC 5321 §5.1). Concurrent callers share one lookup.

        :raises NullMxError: the domain has a null MX (RFC 7505).
        :raises ValueError: the domain does not exist or has no MX, AAAA or A records.
        :raises ~slimta.util.dns.DNSError: the lookup failed (SERVFAIL, timeout, ...).
        """
        if self.expired:
            self._refresh()
        if self._error is not None:
            raise self._error
        return self._shuffled()

    def _shuffled(self) -> list[tuple[int, str]]:
        if len(self._records) < 2:
            return list(self._records)
        keyed = [(pref, random.random(), host) for pref, host in self._records]
        keyed.sort()
        return [(pref, host) for pref, _, host in keyed]

    def _refresh(self) -> None:
        inflight = self._inflight
        if inflight is not None:
            inflight.get()  # another greenlet's lookup: wait for it, then read the cache
            return
        done = self._inflight = AsyncResult()
        try:
            try:
                self._records, self._error, ttl = self._lookup()
            except Exception as exc:  # never leave waiters without an answer
                self._records, self._error = [], DNSError(pycares.errno.ARES_ESERVFAIL)
                self._error.__cause__ = exc
                ttl = min(TRANSIENT_ERROR_TTL_SECONDS, self.negative_ttl)
            self._expiration = time.monotonic() + ttl
        finally:
            self._inflight = None
            done.set(None)

    def _lookup(self) -> tuple[list[tuple[int, str]], Exception | None, float]:
        """One resolution: ``(records, error, seconds to keep the outcome)``."""
        negative = min(self.negative_ttl, MAX_TTL_SECONDS)
        transient = min(TRANSIENT_ERROR_TTL_SECONDS, negative)
        try:
            answers = _wait(DNSResolver.query(self.domain, "MX"))
        except DNSError as exc:
            if exc.errno in (pycares.errno.ARES_ENOTFOUND, pycares.errno.ARES_EBADNAME):
                # No such domain, or a name DNS cannot even carry: both are final.
                return [], _no_records(self.domain), negative
            if exc.errno != pycares.errno.ARES_ENODATA:
                return [], exc, transient
            return self._implicit_mx(negative, transient)
        ttl = _ttl_of(answers)
        records = [(int(a.priority), a.host) for a in answers if a.host]
        if not records:
            if answers:  # only root exchanges: RFC 7505 null MX
                return [], NullMxError(self.domain), ttl
            return self._implicit_mx(negative, transient)
        return records, None, ttl

    def _implicit_mx(
        self, negative: float, transient: float
    ) -> tuple[list[tuple[int, str]], Exception | None, float]:
        """No MX records: the domain itself, if it has AAAA or A records."""
        pending = [DNSResolver.query(self.domain, t) for t in ("AAAA", "A")]
        found: list[Any] = []
        failure: DNSError | None = None
        for result in pending:
            try:
                found.extend(_wait(result))
            except DNSError as exc:
                if exc.errno not in (pycares.errno.ARES_ENODATA, pycares.errno.ARES_ENOTFOUND):
                    failure = failure or exc
        if found:
            return [(0, self.domain)], None, _ttl_of(found)
        if failure is not None:
            return [], failure, transient
        return [], _no_records(self.domain), negative


class MxSmtpRelay(Relay):
    """Delivers each recipient to the MX hosts of its domain, over SMTP on port 25.

    :param context: the :class:`ssl.SSLContext` every connection uses for TLS;
        ``None`` builds one default context, shared by all destinations.
    :param mx_cache_size: the most domains whose routing data is cached.
    :param relay_cache_size: the most per-host relays kept; an evicted relay is
        shut down once its in-flight deliveries finish.
    :param negative_ttl: seconds to remember that a domain does not exist or has
        no usable records.
    :param max_mx_hosts: within one attempt, how many distinct hosts may be
        tried when the earlier ones fail before the transaction starts.
    :param client_kwargs: passed to every
        :class:`~slimta.relay.smtp.static.StaticSmtpRelay`, so they can carry
        ``pool_size``, ``client_class``, ``socket_creator``, ``idle_timeout`` and
        every other client keyword (see :class:`~slimta.relay.options.MxRelayOptions`).
    """

    def __init__(
        self,
        context: ssl.SSLContext | None = None,
        *,
        mx_cache_size: int = 10000,
        relay_cache_size: int = 1000,
        negative_ttl: float = 60.0,
        max_mx_hosts: int = 5,
        **client_kwargs: Unpack[MxRelayOptions],
    ) -> None:
        super().__init__()
        self._client_kwargs: MxRelayKeywords = {
            **client_kwargs,
            "context": context or ssl.create_default_context(),
        }
        self.negative_ttl = negative_ttl
        self.max_mx_hosts = max(1, max_mx_hosts)
        self._force_mx: dict[str, tuple[str, int]] = {}
        self._mx_records: LRU[str, MxRecord] = LRU(mx_cache_size)
        self._relayers: LRU[tuple[str, int], Relay] = LRU(relay_cache_size, self._evicted)
        self._in_use: dict[int, int] = {}
        self._retired: dict[int, Relay] = {}
        #: True once :meth:`close` was called: new deliveries fail at once.
        self.closing = False

    # -- configuration and override points ----------------------------------
    @property
    def timeouts(self) -> Timeouts:
        """The timeouts given for every connection, as one value; the rest are defaults."""
        return Timeouts.from_keywords(self._client_kwargs)

    def force_mx(self, domain: str, destination: str, port: int = 25) -> None:
        """Always deliver mail for ``domain`` to ``destination:port``, without DNS.

        :param domain: matched case-insensitively.
        """
        self._force_mx[domain.lower()] = (destination, port)

    def new_static_relay(self, destination: str, port: int) -> Relay:
        """Build the relay for one destination host (override point).

        Called once per ``(destination, port)`` while it stays cached.
        """
        return StaticSmtpRelay(destination, port=port, **self._client_kwargs)

    def choose_mx(self, records: list[tuple[int, str]], attempts: int) -> str:
        """Pick the host to try first (override point).

        :param records: the ``(preference, host)`` pairs, most preferred first.
        :param attempts: how many earlier attempts the message had.
        :returns: ``records[attempts % len(records)][1]`` by default.
        """
        return records[attempts % len(records)][1]

    # -- caches --------------------------------------------------------------
    def _mx_record(self, domain: str) -> MxRecord:
        record = self._mx_records.get(domain)
        if record is None:
            record = MxRecord(domain, negative_ttl=self.negative_ttl)
            self._mx_records.put(domain, record)
        return record

    def _relay_for(self, host: str, port: int) -> Relay:
        if self.closing:
            raise closing_error()
        key = (host, port)
        relay = self._relayers.get(key)
        if relay is None:
            relay = self.new_static_relay(host, port)
            self._relayers.put(key, relay)
        return relay

    def _evicted(self, key: tuple[str, int], relay: Relay) -> None:
        if self._in_use.get(id(relay)):
            self._retired[id(relay)] = relay  # killed when its last delivery ends
        else:
            relay.kill()

    @contextmanager
    def _using(self, relay: Relay) -> Iterator[Relay]:
        ident = id(relay)
        self._in_use[ident] = self._in_use.get(ident, 0) + 1
        try:
            yield relay
        finally:
            left = self._in_use[ident] - 1
            if left:
                self._in_use[ident] = left
            else:
                del self._in_use[ident]
                retired = self._retired.pop(ident, None)
                if retired is not None:
                    retired.kill()

    # -- delivery ------------------------------------------------------------
    def attempt(self, envelope: Envelope, attempts: int) -> RelayResult:
        """Deliver ``envelope``, each recipient domain to its own MX hosts.

        With a single domain the result (or error) of that delivery is returned
        (or raised) unchanged. With several, one dict over all recipients merges
        the groups' outcomes, keyed in the order the envelope lists them.

        :raises TransientRelayError: ``451 4.3.0`` once :meth:`close` was called.
        """
        if self.closing:
            raise closing_error()
        groups: dict[str, list[str]] = {}
        failed: dict[str, RelayError] = {}
        for rcpt in envelope.recipients:
            refusal = _address_refusal(rcpt)
            if refusal is not None:
                failed.setdefault(rcpt, refusal)
                continue
            domain = _domain_of(rcpt)
            if domain is None:
                failed.setdefault(rcpt, NoDomainError(rcpt))
            else:
                groups.setdefault(domain, []).append(rcpt)
        if not groups:
            if not failed:
                raise PermanentRelayError("Envelope has no recipients", no_valid_recipients())
            raise next(iter(failed.values()))
        if len(groups) == 1 and not failed:
            ((domain, _),) = groups.items()
            return self._deliver_group(domain, envelope, attempts)
        jobs = {
            domain: gevent.spawn(
                self._deliver_group, domain, envelope.copy(rcpts), attempts
            )
            for domain, rcpts in groups.items()
        }
        gevent.joinall(list(jobs.values()))
        merged: dict[str, Reply | None | RelayError] = dict(failed)
        for domain, job in jobs.items():
            outcome = self._outcome(job)
            for rcpt in groups[domain]:
                if isinstance(outcome, dict):
                    merged[rcpt] = outcome.get(rcpt, _missing_result(rcpt))
                else:
                    merged[rcpt] = outcome
        # As python-slimta does: one entry per recipient, in the envelope's order
        # (a recipient listed twice keeps its first position).
        return {rcpt: merged[rcpt] for rcpt in envelope.recipients if rcpt in merged}

    @staticmethod
    def _outcome(job: gevent.Greenlet) -> Any:
        if job.successful():
            return job.value
        exc = job.exception
        if isinstance(exc, RelayError):
            return exc
        return internal_failure(f"Unhandled error: {exc}")

    def _deliver_group(self, domain: str, envelope: Envelope, attempts: int) -> RelayResult:
        forced = self._force_mx.get(domain)
        if forced is not None:
            with self._using(self._relay_for(*forced)) as relay:
                return relay.attempt(envelope, attempts)
        if domain.startswith("["):
            host = _literal_host(domain)
            if host is None:
                msg = "Invalid address literal: " + domain
                raise PermanentRelayError(msg, Reply("550", "5.1.2 " + msg, command=b"RCPT"))
            hosts = [host]
        else:
            hosts = self._hosts_for(domain, attempts)
        last: TransientRelayError | None = None
        for host in hosts:
            with self._using(self._relay_for(host, 25)) as relay:
                try:
                    return relay.attempt(envelope, attempts)
                except TransientRelayError as exc:
                    if exc.reply.command not in _PRE_TRANSACTION_COMMANDS:
                        raise
                    last = exc
        assert last is not None
        raise last

    def _hosts_for(self, domain: str, attempts: int) -> list[str]:
        """The hosts to try in this attempt, in order, at most ``max_mx_hosts``."""
        try:
            records = self._mx_record(domain).get()
        except NullMxError:
            msg = "Recipient address has null MX"
            raise PermanentRelayError(msg, Reply("556", "5.1.10 " + msg, command=b"RCPT"))
        except DNSError as exc:
            raise TransientRelayError(
                f"DNS lookup failed: {domain}: {exc}",
                Reply("451", "4.4.3 DNS lookup failed", command=b"RCPT"),
            )
        except ValueError as exc:
            raise PermanentRelayError(str(exc), Reply("550", "5.1.2 " + str(exc), command=b"RCPT"))
        first = self.choose_mx(records, attempts)
        names = [host for _, host in records]
        start = names.index(first) if first in names else 0
        ordered = [first] + names[start + 1 :] + names[:start]
        hosts: list[str] = []
        for host in ordered:
            if host not in hosts:
                hosts.append(host)
        return hosts[: self.max_mx_hosts]

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting work and close every per-host relay, all at once.

        New attempts fail with ``451 4.3.0``; deliveries in flight finish and
        their connections end with ``QUIT``, as
        :meth:`RelayPool.close() <slimta.relay.pool.RelayPool.close>` does,
        within ``timeout`` seconds in all (``None``: no limit). Then whatever is
        left is killed.
        """
        self.closing = True
        relays = self._relayers.pop_all() + list(self._retired.values())
        self._retired.clear()
        closers = [gevent.spawn(relay.close, timeout) for relay in relays]
        try:
            gevent.joinall(closers)
        finally:
            gevent.killall(closers)
            self.kill()

    def kill(self) -> None:
        """Shut down every cached per-host relay."""
        for relay in self._relayers.pop_all() + list(self._retired.values()):
            relay.kill()
        self._retired.clear()


def _missing_result(rcpt: str) -> TransientRelayError:
    return internal_failure("No result for recipient " + rcpt)
