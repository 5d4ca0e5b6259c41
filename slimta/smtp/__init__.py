"""Protocol-level SMTP signals.

These exceptions say what went wrong on the wire. They never leave a relay's
``attempt()``: the relay client turns each of them into a
:class:`~slimta.relay.RelayError` carrying a :class:`~slimta.smtp.reply.Reply`.
"""

from __future__ import annotations

from slimta.core import SlimtaError

__all__ = ["SmtpError", "ConnectionLost", "MessageTooBig", "BadReply"]


class SmtpError(SlimtaError):
    """Base class for the SMTP protocol signals."""


class ConnectionLost(SmtpError):
    """The peer closed or reset the connection, or the stream hit EOF."""

    def __init__(self) -> None:
        super().__init__("Connection was closed prematurely")


class MessageTooBig(SmtpError):
    """The message is larger than the size limit the server advertised."""

    def __init__(self) -> None:
        super().__init__("Message exceeded maximum allowed size")


class BadReply(SmtpError):
    """A reply that does not parse, or that exceeds the size bounds.

    :param data: the offending bytes (kept as :attr:`data`).
    """

    def __init__(self, data: bytes = b"") -> None:
        self.data = data
        if data:
            text = "Bad SMTP reply from server:\r\n" + data.decode("utf-8", "replace")
        else:
            text = "Bad SMTP reply from server."
        super().__init__(text)
