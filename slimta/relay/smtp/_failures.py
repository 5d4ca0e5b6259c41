"""How SMTP/LMTP relay failures become replies: the one mapping.

Every failure is reported as a :class:`~slimta.smtp.reply.Reply` with a code and
an enhanced status code, and only this module decides which (see the delivery
semantics page, ``doc/semantics.rst``).

Pure functions and marker exceptions, no I/O. :mod:`slimta.relay.smtp.client`
raises the markers where it decides to fail, and hands every exception that ends
a stage to :func:`reply_for_exception`.
"""

from __future__ import annotations

import ssl

import gevent

from slimta.relay._replies import MAX_DETAIL_CHARS, scrub
from slimta.relay.smtp import SmtpRelayError
from slimta.smtp import SmtpError
from slimta.smtp.reply import Reply, connection_failed, timed_out

__all__ = ["Abort", "TlsFailure", "reply_for_exception", "server_error", "MAX_DETAIL_CHARS"]


class Abort(Exception):
    """Ends the current stage with a reply chosen where the problem was found."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class TlsFailure(Exception):
    """TLS was required or attempted and could not be set up."""


def _detail(exc: BaseException) -> str:
    return (scrub(str(exc), None).strip() or type(exc).__name__)[:MAX_DETAIL_CHARS]


def reply_for_exception(
    exc: BaseException, command: bytes | None, last_reply: Reply | None = None
) -> Reply:
    """Map anything that ended an SMTP stage to the reply that reports it.

    This is the only place where exceptions become replies:

    ============================================  ==============================
    exception                                     reply
    ============================================  ==============================
    prepared failure (address, SIZE, 8-bit...)    the prepared reply
    any timeout                                   ``421 4.4.2`` (``timed_out``)
    TLS refused, not offered or failed; bytes      ``421 4.7.0 TLS negotiation
    after the STARTTLS 220                        failed: <detail>``
    connection closed, bad or oversized reply,    the server's last 421, else
    other protocol signals                        ``421 4.3.0 <text>``
    socket error                                  ``451 4.3.0`` (``connection_failed``)
    anything else                                 ``451 4.3.0 <text>``
    ============================================  ==============================

    :param exc: what was raised.
    :param command: the stage that was running (``current_command``).
    :param last_reply: the last error reply the server sent, if any.
    :returns: a new :class:`~slimta.smtp.reply.Reply` with ``command`` set.
    """
    if isinstance(exc, Abort):
        return exc.reply
    if isinstance(exc, (gevent.Timeout, TimeoutError)):
        return Reply(command=command).copy(timed_out)
    if isinstance(exc, (TlsFailure, ssl.SSLError, ssl.CertificateError)) or (
        isinstance(exc, SmtpError) and command == b"STARTTLS"
    ):
        return Reply("421", "4.7.0 TLS negotiation failed: " + _detail(exc), command)
    if isinstance(exc, SmtpError):
        if last_reply is not None and last_reply.code == "421":
            return Reply(last_reply.code, last_reply.message, command)
        return Reply("421", "4.3.0 " + _detail(exc), command)
    if isinstance(exc, OSError):
        return Reply(command=command).copy(connection_failed)
    return Reply("451", "4.3.0 " + _detail(exc), command)


def server_error(reply: Reply) -> SmtpRelayError:
    """The error for a server's 4xx/5xx reply, by its first digit.

    Replies whose ESC is suppressed (banner, EHLO) get the default
    ``X.0.0``, so that every error carries one. A reply that is not an
    error where one was expected (e.g. 250 to DATA) becomes ``451 4.5.0``.
    """
    if not reply.is_error():
        text = "4.5.0 Unexpected reply: " + scrub(str(reply))
        reply = Reply("451", text, reply.command, reply.address)
    elif reply.enhanced_status_code is None:
        reply = Reply(reply.code, reply.raw_message, reply.command, reply.address)
    return SmtpRelayError.factory(reply)
