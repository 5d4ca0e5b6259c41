"""One outbound LMTP connection (RFC 2033), e.g. to dovecot.

LMTP differs from SMTP in two places: the greeting is ``LHLO`` (no HELO
fallback), and after the data the server sends one reply per accepted
recipient, so each recipient gets its own outcome. Both follow from the
protocol class: the session greets an :class:`~slimta.smtp.client.LmtpClient`
with LHLO, and the transaction reads its per-recipient replies.
"""

from __future__ import annotations

from slimta.relay.smtp.client import SmtpRelayClient
from slimta.smtp.client import Client, LmtpClient

__all__ = ["LmtpRelayClient"]


class LmtpRelayClient(SmtpRelayClient):
    """An :class:`~slimta.relay.smtp.client.SmtpRelayClient` that speaks LMTP.

    It takes the same arguments. The result of each delivery is a dict with
    one entry per recipient: the recipient's own reply after the data when it
    was delivered, or an :class:`~slimta.relay.smtp.SmtpRelayError`. If the
    connection drops partway through those replies, the recipients that
    already have one keep it; only the others get the transient error.
    """

    _client_class: type[Client] = LmtpClient
