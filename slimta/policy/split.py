"""Queue policies that split a multi-recipient envelope into several.

Useful in front of relays that deliver one recipient, or one domain, at a time.
Each new envelope is an :meth:`~slimta.envelope.Envelope.copy` of the original
with a share of its recipients, in their original order.
"""

from __future__ import annotations

from slimta.envelope import Envelope

from . import QueuePolicy

__all__ = ["RecipientSplit", "RecipientDomainSplit"]


class RecipientSplit(QueuePolicy):
    """One envelope per recipient, when there is more than one."""

    def apply(self, envelope: Envelope) -> list[Envelope] | None:
        if len(envelope.recipients) <= 1:
            return None
        return [envelope.copy([rcpt]) for rcpt in envelope.recipients]


class RecipientDomainSplit(QueuePolicy):
    """One envelope per recipient domain (compared without case), when there is more than one.

    A recipient without a domain (no ``@``, or nothing after it) gets an
    envelope of its own.
    """

    @staticmethod
    def _domain(rcpt: str) -> str | None:
        _, at, domain = rcpt.rpartition("@")
        return domain.lower() if at and domain else None

    def apply(self, envelope: Envelope) -> list[Envelope] | None:
        groups: dict[str, list[str]] = {}
        loners: list[str] = []
        for rcpt in envelope.recipients:
            domain = self._domain(rcpt)
            if domain is None:
                loners.append(rcpt)
            else:
                groups.setdefault(domain, []).append(rcpt)
        if len(groups) + len(loners) <= 1:
            return None
        return [envelope.copy(rcpts) for rcpts in groups.values()] + [
            envelope.copy([rcpt]) for rcpt in loners
        ]
