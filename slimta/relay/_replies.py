"""Replies the relays build themselves, each in one place.

Pure functions, no I/O. Every reply carries a code and an enhanced status code,
and any text copied into one from an exception or a peer is scrubbed of control
characters first (a reply text is a single line, and it ends up in logs and
bounces).
"""

from __future__ import annotations

import re

from slimta.relay import TransientRelayError
from slimta.smtp.reply import Reply
from slimta.smtp.syntax import AddressError, check_address, is_plain_address

__all__ = [
    "MAX_DETAIL_CHARS",
    "scrub",
    "internal_failure",
    "misconfigured",
    "no_valid_recipients",
    "address_refusal",
]

#: Longest detail text copied from an exception or a peer into a reply we build.
MAX_DETAIL_CHARS = 200

_CONTROL_RUN_RE = re.compile(r"[\x00-\x1f\x7f]+")


def scrub(text: str, max_chars: int | None = MAX_DETAIL_CHARS) -> str:
    """``text`` with each run of control characters replaced by one space.

    :param max_chars: cut the result to this length; ``None`` keeps it whole.
    """
    text = _CONTROL_RUN_RE.sub(" ", text)
    return text if max_chars is None else text[:max_chars]


def internal_failure(message: str, command: bytes | None = None) -> TransientRelayError:
    """``451 4.3.0 <message>``: a failure of ours, not the peer's; worth retrying.

    :param message: the error's text, also the reply's text after the status code.
    """
    return TransientRelayError(message, Reply("451", "4.3.0 " + message, command))


def misconfigured(detail: str, command: bytes | None = None) -> Reply:
    """``451 4.3.5 <detail>``: RFC 3463 "system incorrectly configured".

    Transient, so that nothing is lost while the configuration is fixed.
    """
    return Reply("451", "4.3.5 " + detail, command)


def no_valid_recipients() -> Reply:
    """``554 5.5.1 No valid recipients``, for an envelope with nobody to deliver to."""
    return Reply("554", "5.5.1 No valid recipients", b"RCPT")


def address_refusal(
    address: str, esc: str, command: bytes, utf8_ok: bool = True
) -> Reply | None:
    """The reply refusing ``address`` before anything is sent, or ``None`` when it may go.

    An address that the SMTP client would never put on the wire (CR, LF or other
    controls, unquoted brackets or spaces, RFC 5321 length limits) gets
    ``501 <esc>``; a non-ASCII one, when the server lacks SMTPUTF8, gets
    ``553 5.6.7``.

    :param esc: the enhanced status for a malformed address, ``'5.1.7'`` for
        the sender and ``'5.1.3'`` for a recipient (RFC 3463).
    :param command: ``b'MAIL'`` or ``b'RCPT'``, named by the reply.
    :param utf8_ok: whether the server takes non-ASCII addresses (SMTPUTF8).
    """
    if type(address) is str and is_plain_address(address):
        return None  # plain ASCII local@domain: passes every check below
    try:
        check_address(address)
    except AddressError as exc:
        return Reply("501", f"{esc} {exc.args[0]}", command)
    if not utf8_ok and not address.isascii():
        return Reply("553", "5.6.7 Non-ASCII address but the server lacks SMTPUTF8", command)
    return None
