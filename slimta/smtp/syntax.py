"""What a client may put on the wire: mailbox paths and the EHLO name.

The RFC 5321 rules the SMTP client applies before it sends ``MAIL FROM``,
``RCPT TO`` and ``EHLO``/``HELO``/``LHLO``, for code that must decide the same
way without a connection: a relay that refuses a bad recipient before it
connects, or a policy that checks an address on arrival. Pure functions, no I/O.

A path is refused for C0 controls or DEL anywhere; for ``<``, ``>`` or
whitespace outside a quoted local part; or when the local part exceeds
:data:`MAX_LOCAL_PART_BYTES`, the domain :data:`MAX_DOMAIN_BYTES` or the whole
path (brackets included) :data:`MAX_PATH_BYTES`, counted in UTF-8 octets. A
non-ASCII path also needs a server that advertised SMTPUTF8 (RFC 6531).

These are the same objects :mod:`slimta.smtp.client` uses, so an
:class:`AddressError` caught around a client call and one raised by
:func:`check_address` are the same class.
"""

from __future__ import annotations

from slimta.smtp import _wire
from slimta.smtp._wire import (
    AddressEncodingError,
    AddressError,
    check_address,
    check_ehlo_name,
    encode_address,
    is_plain_address,
)

__all__ = [
    "MAX_LOCAL_PART_BYTES",
    "MAX_DOMAIN_BYTES",
    "MAX_PATH_BYTES",
    "AddressError",
    "AddressEncodingError",
    "check_address",
    "encode_address",
    "check_ehlo_name",
    "is_plain_address",
]

#: The longest local part, in octets (RFC 5321 section 4.5.3.1.1).
MAX_LOCAL_PART_BYTES: int = _wire.MAX_LOCAL_PART_BYTES
#: The longest domain, in octets (RFC 5321 section 4.5.3.1.2).
MAX_DOMAIN_BYTES: int = _wire.MAX_DOMAIN_BYTES
#: The longest path, angle brackets included, in octets (RFC 5321 section 4.5.3.1.3).
MAX_PATH_BYTES: int = _wire.MAX_PATH_BYTES
