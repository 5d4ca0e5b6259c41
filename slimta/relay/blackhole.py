"""A relay that accepts and discards every message (for testing and benchmarks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimta.relay import Relay, RelayResult
from slimta.smtp.reply import Reply
from slimta.util.randomid import random_uuid

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["BlackholeRelay"]


class BlackholeRelay(Relay):
    """Reports every message delivered without sending it anywhere.

    Relay policies do not run for this relay.
    """

    def __init__(self) -> None:
        super().__init__()

    def _attempt(self, envelope: Envelope, attempts: int) -> RelayResult:
        return self.attempt(envelope, attempts)

    def attempt(self, envelope: Envelope, attempts: int) -> Reply:
        """Drop the message.

        :returns: ``250 2.0.0 Message Delivered; <uuid>`` (a random UUID, version 4).
        """
        return Reply.from_parts("250", "2.0.0", f"Message Delivered; {random_uuid()}")
