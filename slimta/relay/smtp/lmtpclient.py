"""One outbound LMTP connection (RFC 2033), e.g. to dovecot.

LMTP differs from SMTP in two places: the greeting is ``LHLO`` (no HELO
fallback), and after the data the server sends one reply per accepted
recipient, so each recipient gets its own outcome.
"""

from __future__ import annotations

from collections.abc import Mapping

import gevent

from slimta.relay.smtp import SmtpRelayError
from slimta.relay.smtp._failures import server_error
from slimta.relay.smtp._plan import Plan, RcptOutcome
from slimta.relay.smtp.client import SmtpRelayClient
from slimta.smtp.client import LmtpClient
from slimta.smtp.reply import Reply

__all__ = ["LmtpRelayClient"]


class LmtpRelayClient(SmtpRelayClient):
    """An :class:`~slimta.relay.smtp.client.SmtpRelayClient` that speaks LMTP.

    It takes the same arguments. The result of each delivery is a dict with
    one entry per recipient: the recipient's own reply after the data when it
    was delivered, or an :class:`~slimta.relay.smtp.SmtpRelayError`.
    """

    _client_class = LmtpClient

    def _greet(self) -> None:
        assert self.client is not None
        self.current_command = b"LHLO"
        name = self._ehlo_name()
        with gevent.Timeout(self.command_timeout):
            reply = self.client.lhlo(name)
        if reply.is_error():
            raise server_error(reply)

    def _send_message(self, plan: Plan, accepted: list[str]) -> Mapping[str, RcptOutcome]:
        """Send the data, then read one reply per accepted recipient, in RCPT order.

        If the connection fails partway, the recipients that already have a
        reply keep it and only the others get the transient error (API D-x15).
        """
        client = self.client
        assert isinstance(client, LmtpClient)
        outcomes: dict[str, RcptOutcome] = {}
        try:
            replies = client.send_data(plan.header, plan.body)
        except (Exception, gevent.Timeout) as exc:
            # LmtpClient keeps what arrived before the failure; a falsy Reply did not.
            received = [(rcpt, reply) for rcpt, reply in client.data_replies if reply]
            if not received:
                raise
            self._usable = False
            lost = SmtpRelayError.factory(
                self._reply_for(exc, self.current_command, client.last_error)
            )
            replies = received
            for rcpt in accepted[len(received) :]:
                outcomes[rcpt] = lost
        for rcpt, reply in replies:
            outcomes[rcpt] = reply if (reply.code or "")[:1] == "2" else server_error(reply)
        # Compat: RSET after a message that some recipient did not get.
        self._needs_rset = any(not isinstance(o, Reply) for o in outcomes.values())
        return outcomes
