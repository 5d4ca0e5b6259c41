"""Where a recipient goes: its routing domain, or why it is refused before any DNS.

Pure functions, no I/O, used by :class:`~slimta.relay.smtp.mx.MxSmtpRelay` to
group an envelope's recipients by domain.
"""

from __future__ import annotations

import functools
import ipaddress
import re

import dns.exception
import dns.name

from slimta.relay import _replies
from slimta.relay.smtp import SmtpRelayError

__all__ = ["address_refusal", "domain_of", "literal_host"]


def address_refusal(recipient: str) -> SmtpRelayError | None:
    """Refuse a recipient the SMTP client would never send, before any DNS.

    The client refuses addresses that could inject commands or break the
    envelope (CR, LF, controls, unquoted brackets, RFC 5321 lengths). Such a
    recipient's domain is not a routing question: ``user@host>`` or an address
    with CR/LF in the local part would otherwise reach DNS, fail there as a
    malformed name and be retried as a transient DNS failure.
    """
    reply = _replies.address_refusal(recipient, "5.1.3", b"RCPT")
    return None if reply is None else SmtpRelayError.factory(reply)


def domain_of(recipient: str) -> str | None:
    """The routing domain of ``recipient``: a lower-case A-label, or an address literal."""
    _, at, domain = recipient.rpartition("@")
    if not at:
        return None
    return _routing_domain(domain)


# A plain ASCII host name needs no IDNA work: most domains take this path.
_LDH_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?\Z")


@functools.lru_cache(maxsize=4096)
def _routing_domain(domain: str) -> str | None:
    domain = domain.strip()
    if not domain or any(c.isspace() or c < " " or c in '\\"' for c in domain):
        return None
    if domain.startswith("[") and domain.endswith("]"):
        return domain.lower()
    if len(domain) <= 254 and _LDH_RE.match(domain):
        return domain.rstrip(".").lower()
    try:
        name = dns.name.from_text(domain.rstrip("."), origin=dns.name.root)
        text = name.to_text(omit_final_dot=True)
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return None
    return text.lower() or None


def literal_host(domain: str) -> str | None:
    """The IP address inside an address literal such as ``[192.0.2.1]``."""
    inner = domain[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None
