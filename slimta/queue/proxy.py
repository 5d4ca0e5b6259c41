"""A queue that stores nothing: :meth:`ProxyQueue.enqueue` relays the message itself.

The edge's reply then waits for the relay's answer, so the client learns at
once whether the next hop took the message; there is no retry and no bounce.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from slimta.envelope import Envelope
from slimta.logging import log_exception
from slimta.relay import PermanentRelayError, Relay, RelayError, TransientRelayError

from .outcome import classify, unhandled_reply

__all__ = ["ProxyQueue"]

_log = logging.getLogger(__name__)


class ProxyQueue:
    """Has :class:`~slimta.queue.Queue`'s interface, but relays inside :meth:`enqueue`.

    :param relay: the :class:`~slimta.relay.Relay` that delivers.
    """

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def add_policy(self, *args: Any) -> None:
        """Not supported: a proxy queue runs no queue policies.

        :raises NotImplementedError: always.
        """
        raise NotImplementedError("ProxyQueue objects do not support add_policy()")

    def start(self) -> None:
        """Nothing to start; kept for :class:`~slimta.queue.Queue` compatibility."""

    def kill(self) -> None:
        """Nothing to stop; kept for :class:`~slimta.queue.Queue` compatibility."""

    def flush(self) -> None:
        """Nothing waits here; kept for :class:`~slimta.queue.Queue` compatibility."""

    def enqueue(self, envelope: Envelope) -> list[tuple[Envelope, str | RelayError]]:
        """Relay ``envelope`` now.

        :returns: ``[(envelope, id)]`` when the relay delivered it (to at least
            one recipient), or ``[(envelope, error)]`` with the
            :class:`~slimta.relay.RelayError` to report to the client. When no
            recipient was delivered, the error is transient if any recipient
            failed transiently. An unexpected exception from the relay is logged
            and reported as a transient error. Recipients that failed while
            others were delivered are logged at WARNING: without a store there
            is nothing to bounce or retry them from.
        """
        recipients = list(envelope.recipients)
        try:
            result = self.relay._attempt(envelope, 0)
        except RelayError as exc:
            return [(envelope, exc)]
        except Exception as exc:
            log_exception(__name__)
            reply = unhandled_reply(exc)
            return [(envelope, TransientRelayError(str(reply.message), reply))]
        outcome = classify(recipients, envelope.recipients, result)
        if not outcome.delivered and recipients:
            if outcome.transient:
                reply = outcome.transient[0][1]
                return [(envelope, TransientRelayError(str(reply.message), reply))]
            reply = outcome.permanent[0][1]
            return [(envelope, PermanentRelayError(str(reply.message), reply))]
        for index, reply in outcome.permanent + outcome.transient:
            _log.warning("proxy: %r not delivered: %s", recipients[index], reply)
        return [(envelope, uuid.uuid4().hex)]
