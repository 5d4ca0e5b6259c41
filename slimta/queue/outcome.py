"""What one delivery attempt means for each recipient, and when to try again.

Pure functions with no I/O: a queue hands over the recipients it attempted and
whatever the relay returned or raised, and gets back which recipients are done
(delivered or bounced) and which are to be retried, each with its reply.

:class:`~slimta.queue.Queue` and :class:`~slimta.queue.proxy.ProxyQueue` decide
with these functions, and so can any other queue (:mod:`slimta.celeryqueue`
does), so that one relay result means the same everywhere: a recipient the
result says nothing about is retried, never dropped; an error reply handed back
as a result is never counted as delivered; an unexpected exception is a
transient failure (:func:`unhandled_reply`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.smtp.reply import Reply

__all__ = [
    "FIRST_RETRY_SECONDS",
    "MAX_RETRY_INTERVAL_SECONDS",
    "GIVE_UP_AFTER_SECONDS",
    "MAX_ATTEMPTS_WITHOUT_TIMESTAMP",
    "MAX_PATH_LENGTH",
    "Outcome",
    "all_delivered",
    "bounce_address",
    "classify",
    "default_backoff",
    "group_by_reply",
    "group_indexes",
    "is_null_sender",
    "bounce_permanent",
    "too_many_retries",
    "unhandled_reply",
]

#: First retry after this many seconds; each further retry waits twice as long.
FIRST_RETRY_SECONDS = 300.0
#: Retries are never further apart than this (RFC 5321 §4.5.4.1 asks for at least 30 min).
MAX_RETRY_INTERVAL_SECONDS = 2 * 3600.0
#: Give up this long after the message arrived (RFC 5321 §4.5.4.1: 4-5 days).
GIVE_UP_AFTER_SECONDS = 5 * 24 * 3600.0
#: When the arrival time is unknown, give up after this many attempts (about 5 days).
MAX_ATTEMPTS_WITHOUT_TIMESTAMP = 64


def default_backoff(envelope: Any, attempts: int, now: float | None = None) -> float | None:
    """Seconds until the next attempt, or ``None`` to give up and bounce.

    Exponential from :data:`FIRST_RETRY_SECONDS` up to
    :data:`MAX_RETRY_INTERVAL_SECONDS`, until :data:`GIVE_UP_AFTER_SECONDS` after
    the envelope's :attr:`~slimta.envelope.Envelope.timestamp`.
    """
    attempts = max(1, int(attempts))
    delay = min(FIRST_RETRY_SECONDS * 2.0 ** min(attempts - 1, 32), MAX_RETRY_INTERVAL_SECONDS)
    timestamp = getattr(envelope, "timestamp", None)
    if timestamp is None:
        return None if attempts > MAX_ATTEMPTS_WITHOUT_TIMESTAMP else delay
    current = time.time() if now is None else now
    if current + delay - float(timestamp) > GIVE_UP_AFTER_SECONDS:
        return None
    return delay


def unhandled_reply(exc: BaseException) -> Reply:
    """The transient reply that stands for an unexpected exception."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return Reply("450", f"4.0.0 Unhandled delivery error: {text}")


@dataclass
class Outcome:
    """Per-recipient result of one attempt; indexes refer to the attempted list."""

    #: Indexes of the recipients the relay delivered to.
    delivered: list[int] = field(default_factory=list)
    #: ``(index, reply)`` for each recipient that failed for good (to bounce).
    permanent: list[tuple[int, Reply]] = field(default_factory=list)
    #: ``(index, reply)`` for each recipient to try again later.
    transient: list[tuple[int, Reply]] = field(default_factory=list)

    @property
    def done(self) -> list[int]:
        """Indexes no attempt will ever be made for again (delivered or bounced)."""
        return sorted(self.delivered + [index for index, _ in self.permanent])


#: The longest reverse-path RFC 5321 §4.5.3.1.3 allows, without its brackets.
MAX_PATH_LENGTH = 254
# local@domain; the local part may be a quoted string. No controls, spaces or
# brackets outside quotes. Non-ASCII is allowed (SMTPUTF8).
_MAILBOX_RE = re.compile(
    r"""
    (?: "(?: [^"\\\x00-\x1f\x7f] | \\[^\x00-\x1f\x7f] )*"    # quoted local part
      | [^\s"<>@()\[\]\\,;:\x00-\x1f\x7f]+ )                # or a plain one
    @
    (?: \[ [^\s\[\]\\\x00-\x1f\x7f]+ \]                     # an address literal
      | [^\s"<>@()\[\]\\,;:\x00-\x1f\x7f]+ )                # or a domain
    """,
    re.VERBOSE,
)


def is_null_sender(sender: Any) -> bool:
    """True for the null reverse-path (``None``, ``""`` or ``"<>"``)."""
    return sender is None or (isinstance(sender, str) and sender.strip() in ("", "<>"))


def bounce_address(sender: Any) -> str | None:
    """The address a bounce for ``sender``'s message goes to, or ``None`` if there is none.

    One pair of angle brackets is taken off; what is left must be one mailbox
    (``local@domain``), with no control character, space or bracket outside a
    quoted local part, and at most :data:`MAX_PATH_LENGTH` characters.
    """
    if not isinstance(sender, str) or is_null_sender(sender):
        return None
    address = sender
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if len(address) > MAX_PATH_LENGTH or not _MAILBOX_RE.fullmatch(address):
        return None
    return address


def _one(value: Any) -> tuple[str, Reply | None]:
    if value is None:
        return "delivered", None
    if isinstance(value, Reply):
        # Relays report failures by raising, but an error reply handed back as
        # a result is still an error: never count it as delivered.
        code = str(value.code or "")
        if code.startswith("5"):
            return "permanent", value
        if code.startswith("4"):
            return "transient", value
        return "delivered", None
    if isinstance(value, PermanentRelayError):
        return "permanent", value.reply
    if isinstance(value, TransientRelayError):
        return "transient", value.reply
    if isinstance(value, BaseException):
        return "transient", unhandled_reply(value)
    return "transient", Reply("450", f"4.0.0 Unexpected relay result: {type(value).__name__}")


def _is_success(value: Any) -> bool:
    # What _one() calls "delivered": None, or a Reply that is not a 4xx/5xx error.
    if value is None:
        return True
    return isinstance(value, Reply) and not str(value.code or "").startswith(("4", "5"))


def all_delivered(recipients: Sequence[str], current: Sequence[str], result: Any) -> bool:
    """True when :func:`classify` would call every recipient delivered (the common case).

    A cheap check that builds nothing; ``False`` means "ask :func:`classify`",
    never "failed".
    """
    if not isinstance(result, Mapping):
        return _is_success(result)
    same_count = len(current) == len(recipients)
    missing = _MISSING
    for index, rcpt in enumerate(recipients):
        value = result.get(rcpt, missing)
        if value is missing and same_count:
            value = result.get(current[index], missing)
        if value is missing or not _is_success(value):
            return False
    return True


_MISSING: Any = object()


def classify(recipients: Sequence[str], current: Sequence[str], result: Any) -> Outcome:
    """Sort the attempted recipients by what ``result`` says about each.

    :param recipients: the recipients as they were before the attempt.
    :param current: the envelope's recipients after it (a relay policy may have
        rewritten them; they are matched by position when the count is unchanged).
    :param result: what ``relay._attempt()`` returned: ``None``/``Reply`` (all
        delivered, unless the reply is a ``4xx``/``5xx`` error), a mapping keyed
        by recipient, or a sequence in recipient order. A recipient the result
        says nothing about, or says something unintelligible about, is retried,
        never dropped.
    """
    outcome = Outcome()
    if result is None:
        outcome.delivered = list(range(len(recipients)))
        return outcome
    same_count = len(current) == len(recipients)
    values: list[Any] = []
    if isinstance(result, Mapping):
        missing = object()
        for index, rcpt in enumerate(recipients):
            value = result.get(rcpt, missing)
            if value is missing and same_count:
                value = result.get(current[index], missing)
            values.append(
                TransientRelayError("No result for this recipient") if value is missing else value
            )
    elif isinstance(result, Sequence) and not isinstance(result, (str, bytes)):
        values = list(result[: len(recipients)])
        values += [TransientRelayError("No result for this recipient")] * (
            len(recipients) - len(values)
        )
    else:
        values = [result] * len(recipients)
    for index, value in enumerate(values):
        kind, reply = _one(value)
        if kind == "delivered":
            outcome.delivered.append(index)
        elif kind == "permanent":
            outcome.permanent.append((index, reply or Reply("550", "5.0.0 Delivery failed")))
        else:
            outcome.transient.append((index, reply or Reply("450", "4.0.0 Delivery failed")))
    return outcome


def group_by_reply(pairs: Sequence[tuple[str, Reply]]) -> list[tuple[Reply, list[str]]]:
    """Group recipients that failed with equal replies, in first-seen order."""
    groups: list[tuple[Reply, list[str]]] = []
    for rcpt, reply in pairs:
        for seen, rcpts in groups:
            if seen == reply:
                rcpts.append(rcpt)
                break
        else:
            groups.append((reply, [rcpt]))
    return groups


def group_indexes(pairs: Sequence[tuple[int, Reply]]) -> list[tuple[Reply, list[int]]]:
    """Group recipient indexes that failed with equal replies, in first-seen order.

    The index form of :func:`group_by_reply`: one bounce per distinct reply.
    """
    groups: list[tuple[Reply, list[int]]] = []
    for index, reply in pairs:
        for seen, indexes in groups:
            if seen == reply:
                indexes.append(index)
                break
        else:
            groups.append((reply, [index]))
    return groups


def too_many_retries(reply: Reply) -> Reply:
    """The reply a bounce gives for a recipient whose retries ran out.

    The last transient reply, with ``(Too many retries)`` added to its text;
    the code (``450`` when the reply had none), command and address are kept.
    """
    text = reply.message or ""
    new = Reply(reply.code or "450", f"{text} (Too many retries)".strip(), reply.command)
    new.address = reply.address
    return new


def bounce_permanent(
    outcome: Outcome,
    recipients: Sequence[str],
    envelope: Any,
    bounce: Callable[[Any, Reply], bool],
) -> tuple[list[int], list[tuple[int, Reply]]]:
    """Bounce the permanent failures of ``outcome``, one bounce per distinct reply.

    ``bounce(copy, reply)`` queues the bounce for ``copy`` (``envelope`` for
    that group's recipients) and says whether it was queued. Returns the
    indexes bounced, and the transient failures together with the permanent
    ones whose bounce could not be queued: those are retried, and bounced again
    later, so a bounce is never lost.
    """
    transient = list(outcome.transient)
    bounced: list[int] = []
    for reply, indexes in group_indexes(outcome.permanent):
        if bounce(envelope.copy([recipients[i] for i in indexes]), reply):
            bounced.extend(indexes)
        else:
            transient.extend((i, reply) for i in indexes)
    return bounced, transient
