"""Hooks that inspect or change envelopes before they are queued or relayed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from slimta.core import SlimtaError

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["PolicyError", "QueuePolicy", "RelayPolicy", "apply_queue_policies"]


class PolicyError(SlimtaError):
    """Raised by a policy that cannot be applied."""


class QueuePolicy:
    """Runs once on each envelope before it is queued."""

    def apply(self, envelope: Envelope) -> Iterable[Envelope] | None:
        """Inspect or change ``envelope``.

        :returns: replacement envelopes, or ``None``/empty to keep the original.
        """
        raise NotImplementedError()


def apply_queue_policies(
    policies: Iterable[QueuePolicy], envelope: Envelope
) -> list[Envelope]:
    """Run ``policies`` in order, each on every envelope the previous ones produced.

    A policy that returns envelopes (a split) replaces the one it was given
    with them; one that returns ``None`` or nothing keeps it. This is what
    :class:`~slimta.queue.Queue` and :class:`~slimta.celeryqueue.CeleryQueue`
    do before storing a message.

    :returns: the envelopes to store, in order.
    """
    current = [envelope]
    for policy in policies:
        following: list[Envelope] = []
        for env in current:
            replaced = policy.apply(env)
            following.extend(replaced if replaced else [env])
        current = following
    return current


class RelayPolicy:
    """Runs before each delivery attempt of an envelope."""

    def apply(self, envelope: Envelope) -> None:
        """Inspect or change ``envelope``.

        The return value is ignored. Raising
        :class:`~slimta.relay.PermanentRelayError` or
        :class:`~slimta.relay.TransientRelayError` fails the attempt.
        """
        raise NotImplementedError()
