"""Queue policies that add the standard trace and identification headers.

Each header is added as a new first line of the header block
(:meth:`~slimta.envelope.Envelope.prepend_header`); every other header keeps its
bytes, order and folding. An envelope with no header block is left alone.
"""

from __future__ import annotations

import socket
import time
import uuid
from datetime import datetime, timezone
from email.utils import format_datetime

from gevent import socket as gsocket

from slimta.core import __version__ as VERSION
from slimta.envelope import Envelope

from . import QueuePolicy

__all__ = ["AddDateHeader", "AddMessageIdHeader", "AddReceivedHeader"]

#: How this library names itself in ``Received`` headers.
PRODUCT = "slimta-relay"

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip


def _timestamp(envelope: Envelope) -> float:
    return time.time() if envelope.timestamp is None else float(envelope.timestamp)


def _strftime_c(date_format: str, moment: time.struct_time) -> str:
    """:func:`time.strftime` with English day and month names whatever the locale."""
    pieces = date_format.split("%%")
    pieces = [
        piece.replace("%a", _DAY_NAMES[moment.tm_wday]).replace(
            "%b", _MONTH_NAMES[moment.tm_mon - 1]
        )
        for piece in pieces
    ]
    return time.strftime("%%".join(pieces), moment)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class AddDateHeader(QueuePolicy):
    """Adds a ``Date`` header (RFC 5322 §3.6.1) when the message has none.

    The date is when the message was received
    (:attr:`~slimta.envelope.Envelope.timestamp`), in local time with a numeric
    zone offset.
    """

    def __init__(self) -> None:
        pass

    def build_date(self, timestamp: float) -> str:
        """The header's value for ``timestamp``; override to change the format."""
        return format_datetime(datetime.fromtimestamp(timestamp, timezone.utc).astimezone())

    def apply(self, envelope: Envelope) -> None:
        headers = envelope.headers
        if headers is None or "date" in headers:
            return
        envelope.prepend_header("Date", self.build_date(_timestamp(envelope)))


class AddMessageIdHeader(QueuePolicy):
    """Adds a ``Message-Id`` header (RFC 5322 §3.6.4) when the message has none.

    :param hostname: the right-hand side of generated IDs; the host's fully
        qualified name by default.
    """

    def __init__(self, hostname: str | None = None) -> None:
        self.hostname = hostname or gsocket.getfqdn()

    def apply(self, envelope: Envelope) -> None:
        headers = envelope.headers
        if headers is None or "message-id" in headers:
            return
        stamp = int(_timestamp(envelope))
        envelope.prepend_header("Message-Id", f"<{uuid.uuid4().hex}.{stamp}@{self.hostname}>")


class AddReceivedHeader(QueuePolicy):
    """Adds a ``Received`` trace header (RFC 5321 §4.4) for this hop.

    The header reads ``from EHLO (HOST [IP]) by RECEIVER (slimta-relay VERSION)
    with PROTOCOL for <RCPT>; DATE``. ``with`` appears when the client's protocol
    is known and ``for`` when there is exactly one recipient (RFC 5321 allows one
    path there, and naming every recipient would disclose the others).

    :param date_format: ``time.strftime()`` format of the date, in UTC.
    """

    def __init__(self, date_format: str = "%a, %d %b %Y %H:%M:%S +0000") -> None:
        self.date_format = date_format

    @staticmethod
    def _address_literal(ip: str) -> str:
        if ip.startswith("["):
            return ip
        return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"

    def _from_clause(self, envelope: Envelope) -> str:
        client = envelope.client or {}
        ehlo = _one_line(client.get("name") or "unknown") or "unknown"
        host = _one_line(client.get("host") or "unknown") or "unknown"
        ip = _one_line(client.get("ip") or "")
        literal = self._address_literal(ip) if ip else "[unknown]"
        return f"from {ehlo} ({host} {literal})"

    def _by_clause(self, envelope: Envelope) -> str:
        receiver = _one_line(envelope.receiver or socket.gethostname() or "localhost")
        return f"by {receiver} ({PRODUCT} {VERSION})"

    def apply(self, envelope: Envelope) -> None:
        if envelope.headers is None:
            return
        parts = [self._from_clause(envelope), self._by_clause(envelope)]
        protocol = _one_line((envelope.client or {}).get("protocol") or "")
        if protocol:
            parts.append(f"with {protocol}")
        if len(envelope.recipients) == 1:
            parts.append(f"for <{_one_line(envelope.recipients[0])}>")
        date = _strftime_c(self.date_format, time.gmtime(_timestamp(envelope)))
        envelope.prepend_header("Received", " ".join(parts) + "; " + date)
