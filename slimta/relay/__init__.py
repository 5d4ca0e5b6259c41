"""The relay interface: deliver an :class:`~slimta.envelope.Envelope` to its next hop.

A relay reports one of three outcomes:

* success, as ``None`` or a :class:`~slimta.smtp.reply.Reply`;
* per-recipient outcomes, as a mapping from each recipient to ``None``/``Reply``
  (delivered), a :class:`PermanentRelayError` (bounced) or a
  :class:`TransientRelayError` (to be retried);
* whole-envelope failure, by raising :class:`PermanentRelayError` or
  :class:`TransientRelayError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Union

from slimta.core import SlimtaError
from slimta.smtp.reply import Reply

if TYPE_CHECKING:
    from slimta.envelope import Envelope
    from slimta.policy import RelayPolicy

__all__ = ["PermanentRelayError", "TransientRelayError", "Relay"]

#: What :meth:`Relay.attempt` returns: ``None``/:class:`Reply` when every recipient
#: was delivered, or a mapping with one outcome per recipient.
RelayResult = Union[Reply, None, Mapping[str, Union[Reply, None, "RelayError"]]]


class RelayError(SlimtaError):
    """Base class for delivery failures.

    :param msg: the error text, also ``str(exc)``.
    :param reply: the :class:`~slimta.smtp.reply.Reply` that explains the failure.
        When not given, one is built from the class's default code and enhanced
        status code, e.g. ``550 5.0.0 <msg>``.
    """

    _default_code: str | None = None
    _default_esc: str | None = None

    def __init__(self, msg: str, reply: Reply | None = None) -> None:
        super().__init__(msg)
        if reply:
            self.reply = reply
        else:
            code, esc = type(self)._default_code, type(self)._default_esc
            if code is None or esc is None:
                raise TypeError(f"{type(self).__name__} needs an explicit reply")
            self.reply = Reply(code, f"{esc} {msg}")


class PermanentRelayError(RelayError):
    """Delivery failed and will not succeed on a retry (the message bounces)."""

    _default_code = "550"
    _default_esc = "5.0.0"


class TransientRelayError(RelayError):
    """Delivery failed for now; the queue should retry later."""

    _default_code = "450"
    _default_esc = "4.0.0"


class Relay:
    """Base class of every relay.

    Subclasses override :meth:`attempt`. The queue calls :meth:`_attempt`,
    which applies the relay policies first.
    """

    def __init__(self) -> None:
        self.relay_policies: list[RelayPolicy] = []

    def add_policy(self, policy: RelayPolicy) -> None:
        """Run ``policy`` before each delivery attempt.

        :raises TypeError: when ``policy`` is not a :class:`~slimta.policy.RelayPolicy`.
        """
        from slimta.policy import RelayPolicy

        if not isinstance(policy, RelayPolicy):
            raise TypeError("Argument not a RelayPolicy implementation.")
        self.relay_policies.append(policy)

    def _run_policies(self, envelope: Envelope) -> None:
        for policy in self.relay_policies:
            policy.apply(envelope)

    def _attempt(self, envelope: Envelope, attempts: int) -> RelayResult:
        """Apply the relay policies in order, then :meth:`attempt`."""
        self._run_policies(envelope)
        return self.attempt(envelope, attempts)

    def attempt(self, envelope: Envelope, attempts: int) -> RelayResult:
        """Deliver ``envelope``. Subclasses must override this.

        :param envelope: the message to deliver.
        :param attempts: how many earlier attempts were made (0 on the first).
        :returns: ``None``/:class:`~slimta.smtp.reply.Reply` when every recipient
            was delivered, or a mapping from each recipient to ``None``/``Reply``,
            :class:`PermanentRelayError` or :class:`TransientRelayError`.
        :raises PermanentRelayError: the whole envelope failed for good.
        :raises TransientRelayError: the whole envelope should be retried.
        """
        raise NotImplementedError()

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting work, let attempts in flight finish, then release everything.

        The base class has nothing in flight of its own and calls :meth:`kill`;
        :class:`~slimta.relay.pool.RelayPool` and
        :class:`~slimta.relay.smtp.mx.MxSmtpRelay` wait for their deliveries.

        :param timeout: the most seconds to wait before killing what is left;
            ``None`` waits for as long as the deliveries take.
        """
        self.kill()

    def kill(self) -> None:
        """Release greenlets and connections held by the relay."""
