"""A queue policy that rewrites recipients with regular expressions."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Union

from slimta.envelope import Envelope

from . import QueuePolicy

__all__ = ["Forward"]

Replacement = Union[str, Callable[..., str]]


class Forward(QueuePolicy):
    """Rewrites each recipient with the first mapping rule that changes it.

    Rules are tried in the order they were added, each with ``re.subn()``; a
    rule that matches but would leave an empty address is skipped.
    """

    def __init__(self) -> None:
        #: ``(compiled pattern, replacement, count)`` rules, in order.
        self.mapping: list[tuple[re.Pattern[str], Replacement, int]] = []

    def add_mapping(
        self, pattern: str | re.Pattern[str], repl: Replacement, count: int = 0
    ) -> None:
        """Add a rule.

        :param pattern: a regular expression (string or compiled).
        :param repl: the replacement, as for ``re.sub()`` (string or function).
        :param count: the most replacements per recipient; 0 for all.
        """
        self.mapping.append((re.compile(pattern), repl, count))

    def apply(self, envelope: Envelope) -> None:
        recipients = envelope.recipients
        for index, rcpt in enumerate(recipients):
            for pattern, repl, count in self.mapping:
                new_rcpt, changes = pattern.subn(repl, rcpt, count)
                if changes and new_rcpt:
                    recipients[index] = new_rcpt
                    break
