"""Hooks that inspect or change envelopes before they are queued or relayed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from slimta.core import SlimtaError

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["PolicyError", "QueuePolicy", "RelayPolicy"]


class PolicyError(SlimtaError):
    """Raised by a policy that cannot be applied."""


class QueuePolicy:
    """Runs once on each envelope before it is queued."""

    def apply(self, envelope: Envelope) -> Iterable[Envelope] | None:
        """Inspect or change ``envelope``.

        :returns: replacement envelopes, or ``None``/empty to keep the original.
        """
        raise NotImplementedError()


class RelayPolicy:
    """Runs before each delivery attempt of an envelope."""

    def apply(self, envelope: Envelope) -> None:
        """Inspect or change ``envelope``.

        The return value is ignored. Raising
        :class:`~slimta.relay.PermanentRelayError` or
        :class:`~slimta.relay.TransientRelayError` fails the attempt.
        """
        raise NotImplementedError()
