"""A relay that accepts and discards every message (for testing and benchmarks)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from slimta.relay import Relay, RelayResult
from slimta.smtp.reply import Reply

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
        return Reply.from_parts("250", "2.0.0", f"Message Delivered; {_random_uuid()}")


def _random_uuid() -> str:
    # What str(uuid.uuid4()) gives, without building a UUID object.
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


#: The variant bits of RFC 9562 (10xx) on the 17th hex digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
