"""What one transaction will send, decided before a byte is written.

Pure checks of an envelope against the server's advertised extensions: address
safety (nothing that could inject a command or break the envelope reaches the
wire), SMTPUTF8 and SIZE (refused before MAIL, not after the data was sent), and
8-bit content (8BITMIME or conversion). Failures are raised as relay errors
carrying a reply with an enhanced status code; a recipient that may not be sent
gets its own error while the others go ahead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple, Union

from slimta.relay import RelayError
from slimta.relay._replies import address_refusal, no_valid_recipients
from slimta.relay.smtp import SmtpPermanentRelayError, SmtpRelayError, SmtpTransientRelayError
from slimta.smtp.extensions import Extensions
from slimta.smtp.reply import Reply

if TYPE_CHECKING:
    from email.message import Message

    from slimta.envelope import Envelope

__all__ = ["Plan", "RcptOutcome", "in_envelope_order", "plan_transaction", "raise_if_uniform"]

#: One recipient's outcome in a per-recipient result.
RcptOutcome = Union[Reply, None, RelayError]


class Plan(NamedTuple):
    """What one transaction will send, worked out before anything is written."""

    sender: str
    order: list[str]  # the envelope's recipients, as given
    recipients: list[str]  # the ones that may be sent
    refused: dict[str, RelayError]  # refused locally, never sent
    header: bytes
    body: bytes
    size: int
    body_type: str | None
    smtputf8: bool


def plan_transaction(
    envelope: Envelope,
    extensions: Extensions,
    binary_encoder: Callable[[Message], None] | None,
) -> Plan:
    """Check ``envelope`` against the server's ``extensions``; nothing is sent.

    :param binary_encoder: converts 8-bit MIME parts when the server lacks
        8BITMIME (the envelope is changed in place).
    :raises SmtpRelayError: the whole message cannot be sent: a refused sender
        (501 5.1.7, 553 5.6.7), no sendable recipient, over SIZE (552 5.3.4), or
        8-bit content that cannot be converted (554 5.6.3).
    """
    utf8_ok = "SMTPUTF8" in extensions
    sender = envelope.sender or ""
    problem = address_refusal(sender, "5.1.7", b"MAIL", utf8_ok)
    if problem is not None:
        raise SmtpRelayError.factory(problem)
    recipients: list[str] = []
    refused: dict[str, RelayError] = {}
    for rcpt in envelope.recipients:
        problem = address_refusal(rcpt, "5.1.3", b"RCPT", utf8_ok)
        if problem is None:
            recipients.append(rcpt)
        else:
            refused.setdefault(rcpt, SmtpRelayError.factory(problem))
    if not recipients:
        if not refused:  # an envelope without recipients: nothing can be sent
            raise SmtpPermanentRelayError(no_valid_recipients())
        raise next(iter(refused.values()))  # all refused here, all permanent
    smtputf8 = utf8_ok and not (sender.isascii() and all(r.isascii() for r in recipients))

    header, body = envelope.flatten()
    body_type = None
    if not (header.isascii() and body.isascii()):
        if "8BITMIME" in extensions:
            body_type = "8BITMIME"
        else:
            header, body = _convert_to_7bit(envelope, binary_encoder)
    size = len(header) + len(body)
    limit = extensions.getparam("SIZE", int)
    if limit and size > limit:
        reply = Reply("552", f"5.3.4 Message size exceeds the server limit of {limit}")
        reply.command = b"MAIL"
        raise SmtpPermanentRelayError(reply)
    return Plan(
        sender, list(envelope.recipients), recipients, refused,
        header, body, size, body_type, smtputf8,
    )


def _convert_to_7bit(
    envelope: Envelope, binary_encoder: Callable[[Message], None] | None
) -> tuple[bytes, bytes]:
    failure = Reply("554", "5.6.3 Conversion not allowed", b"[data conversion]")
    if binary_encoder is None:
        raise SmtpPermanentRelayError(failure)
    try:
        envelope.encode_7bit(binary_encoder)
    except UnicodeError:
        raise SmtpPermanentRelayError(failure)
    header, body = envelope.flatten()
    if not (header.isascii() and body.isascii()):
        raise SmtpPermanentRelayError(failure)
    return header, body


def in_envelope_order(
    order: Iterable[str], outcomes: Mapping[str, RcptOutcome]
) -> dict[str, RcptOutcome]:
    """``outcomes`` keyed in the order the envelope lists its recipients.

    python-slimta builds its per-recipient result from the envelope's
    recipients, so programs may read it by position; a recipient listed twice
    keeps its first position. Recipients without an outcome are left out.
    """
    return {rcpt: outcomes[rcpt] for rcpt in order if rcpt in outcomes}


def raise_if_uniform(order: Iterable[str], outcomes: Mapping[str, RcptOutcome]) -> None:
    """Every recipient failed: raise the first error when all share a class.

    That is what python-slimta does. When permanent and transient rejections are
    mixed, return instead, so that the caller reports each recipient by its own
    reply: a single error would either bounce the transient ones or retry the
    permanent ones.
    """
    errors = [outcomes[rcpt] for rcpt in order if isinstance(outcomes.get(rcpt), RelayError)]
    if not errors:
        return
    kinds = {isinstance(error, SmtpTransientRelayError) for error in errors}
    if len(kinds) == 1:
        first = errors[0]
        assert isinstance(first, RelayError)
        raise first
