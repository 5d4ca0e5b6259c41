"""Errors raised by the SMTP and LMTP relays.

Each one carries the :class:`~slimta.smtp.reply.Reply` that explains it: either
the server's own reply, or a synthetic one naming the stage that failed (its
``command``, e.g. ``b'[CONNECT]'``).
"""

from __future__ import annotations

from slimta.relay import PermanentRelayError, RelayError, TransientRelayError
from slimta.smtp.reply import Reply

__all__ = ["SmtpRelayError"]


class SmtpRelayError(RelayError):
    """A delivery failure described by an SMTP reply.

    :param type: ``'Transient'`` or ``'Permanent'``, used in the message.
    :param reply: the reply that explains the failure, kept as :attr:`reply`.
    """

    def __init__(self, type: str, reply: Reply) -> None:
        command = reply.command.decode("ascii", "replace") if reply.command else "[unknown command]"
        super().__init__(f"{type} failure on {command}: {reply}", reply)
        # RelayError keeps only a truthy reply; this one is kept even when empty.
        self.reply = reply

    @staticmethod
    def factory(reply: Reply) -> SmtpRelayError:
        """Build the error class that matches ``reply``.

        :returns: :class:`SmtpPermanentRelayError` when the code starts with
            ``'5'``, :class:`SmtpTransientRelayError` for anything else.
        """
        if (reply.code or "").startswith("5"):
            return SmtpPermanentRelayError(reply)
        return SmtpTransientRelayError(reply)


class SmtpTransientRelayError(SmtpRelayError, TransientRelayError):
    """A failure worth retrying (4xx, or a connection problem)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__("Transient", reply)


class SmtpPermanentRelayError(SmtpRelayError, PermanentRelayError):
    """A failure that will not go away on a retry (5xx)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__("Permanent", reply)
