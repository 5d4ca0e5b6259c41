"""Bounces: RFC 3464 delivery status notifications sent back to a message's sender.

A :class:`Bounce` is an :class:`~slimta.envelope.Envelope` with the null sender,
addressed to the original sender. Its message is a ``multipart/report`` with
three parts: a short text for people, a ``message/delivery-status`` part with
one block of fields per failed recipient, and the original message (or its
header block) exactly as it was queued.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

from slimta.envelope import Envelope
from slimta.smtp.reply import Reply

__all__ = ["Bounce"]

_KEY_RE = re.compile(rb"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LINE_END_RE = re.compile(rb"\r?\n")
_UNSAFE_RE = re.compile(r"[\x00-\x1f\x7f]+")


class _Template:
    """``{key}`` substitution over bytes; unknown keys are replaced by nothing.

    Values may be ``bytes`` or anything else (``str()``-ed, then UTF-8 encoded).
    """

    def __init__(self, template: bytes | str) -> None:
        data = template.encode("utf-8") if isinstance(template, str) else bytes(template)
        self.template = _LINE_END_RE.sub(b"\r\n", data)

    def format(self, **values: Any) -> bytes:
        def fill(match: re.Match[bytes]) -> bytes:
            value = values.get(match.group(1).decode("ascii"))
            if value is None:
                return b""
            if isinstance(value, (bytes, bytearray)):
                return bytes(value)
            return str(value).encode("utf-8")

        return _KEY_RE.sub(fill, self.template)


_DEFAULT_HEADER = _Template(
    b"""\
From: MAILER-DAEMON
To: <{sender}>
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"

This is a MIME-encapsulated delivery status notification.

--{boundary}
Content-Type: text/plain; charset=utf-8
Content-Description: Notification

Your message could not be delivered to:
- {recipients}

The destination host responded:
{code} {message}

--{boundary}
Content-Type: message/delivery-status
Content-Description: Delivery report

{delivery_info}
--{boundary}
Content-Type: {content_type}
Content-Description: Undelivered message

"""
)

_DEFAULT_FOOTER = _Template(b"\n--{boundary}--\n")

_templates: dict[Any, _Template] = {}


def _as_template(template: Any) -> Any:
    """A str/bytes template becomes a :class:`_Template`; anything else must have ``format``."""
    if not isinstance(template, (str, bytes)):
        return template
    cached = _templates.get(template)
    if cached is None:
        cached = _templates[template] = _Template(template)
    return cached


def _clean(text: Any) -> str:
    """One line of text: control characters (CR/LF above all) become spaces."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    return _UNSAFE_RE.sub(" ", str(text)).strip()


def _address_field(kind: str, address: str) -> str:
    # RFC 6533: an address that is not ASCII is given with the utf-8 type.
    address = _clean(address)
    return f"{kind}: {'rfc822' if address.isascii() else 'utf-8'}; {address}"


def _rfc5322_date(timestamp: float | None) -> str:
    moment = datetime.fromtimestamp(time.time() if timestamp is None else timestamp, timezone.utc)
    return format_datetime(moment)


def _remote_host(reply: Reply) -> str | None:
    address = reply.address
    if not address:
        return None
    if isinstance(address, (tuple, list)):
        address = address[0]
    if isinstance(address, bytes):
        address = address.decode("ascii", "replace")
    host = _clean(address)
    return host or None


class Bounce(Envelope):
    """A delivery status notification for an envelope that failed.

    :param envelope: the original envelope; its recipients are the ones that failed.
    :param reply: the :class:`~slimta.smtp.reply.Reply` they failed with.
    :param headers_only: attach only the original header block
        (``text/rfc822-headers``) instead of the whole message
        (``message/rfc822``).

    The class attributes below may be overridden in a subclass.
    """

    #: The bounce's sender: the null reverse-path, as RFC 5321 §4.5.5 requires.
    sender: str | None = ""

    #: The bounce's header block and the parts before the original message. A
    #: :class:`str` or :class:`bytes` template (line ends become CRLF) or an
    #: object with a ``format(**values) -> bytes`` method. ``{key}`` is replaced
    #: by the value of:
    #:
    #: * ``boundary``: the MIME boundary;
    #: * ``sender``: the original sender;
    #: * ``recipients``: the failed recipients, joined by :attr:`recipient_join`;
    #: * ``code`` and ``message``: the failing reply's code and text;
    #: * ``delivery_info``: the body of the ``message/delivery-status`` part;
    #: * ``content_type``: ``message/rfc822`` or ``text/rfc822-headers``;
    #: * ``client_name``, ``client_ip``, ``protocol``: facts about the client that
    #:   sent the original message;
    #: * ``reporting_mta`` and ``arrival_date``.
    #:
    #: An unknown key is replaced by nothing.
    header_template: Any = _DEFAULT_HEADER

    #: Joins the failed recipients for the ``{recipients}`` key.
    recipient_join = "\r\n- "

    #: What follows the original message; same keys as :attr:`header_template`.
    footer_template: Any = _DEFAULT_FOOTER

    #: The bounce's :attr:`~slimta.envelope.Envelope.client` (a copy is used).
    client: dict[str, Any] = {"name": "postmaster", "ip": "127.0.0.1", "host": "localhost"}

    #: The bounce's :attr:`~slimta.envelope.Envelope.receiver`; when ``None``,
    #: the original envelope's.
    receiver: str | None = None

    def __init__(self, envelope: Envelope, reply: Reply, headers_only: bool = False) -> None:
        cls = type(self)
        super().__init__(sender=cls.sender, recipients=[envelope.sender or ""])
        self.client = dict(cls.client)
        self.receiver = cls.receiver or envelope.receiver
        self.timestamp = time.time()
        values = self._substitutions(envelope, reply, headers_only)
        header = _as_template(cls.header_template).format(**values)
        footer = _as_template(cls.footer_template).format(**values)
        try:
            original_header, original_body = envelope.flatten()
        except ValueError:  # an envelope with no message
            original_header, original_body = b"\r\n", b""
        if headers_only:
            original_body = b""
        # The original bytes go in untouched: no parser or generator sees them.
        self.parse(b"".join((header, original_header, original_body, footer)))

    def _reporting_mta(self) -> str:
        return _clean(self.receiver or socket.gethostname() or "localhost")

    def _delivery_status(self, envelope: Envelope, reply: Reply) -> bytes:
        """The ``message/delivery-status`` body (RFC 3464 §2): per-message, then per-recipient."""
        lines = [f"Reporting-MTA: dns; {self._reporting_mta()}"]
        client = envelope.client or {}
        if client.get("name") or client.get("ip"):
            name = _clean(client.get("name") or "unknown")
            ip = _clean(client.get("ip") or "unknown")
            lines.append(f"Received-From-MTA: dns; {name} ({ip})")
        if envelope.timestamp is not None:
            lines.append(f"Arrival-Date: {_rfc5322_date(envelope.timestamp)}")
        status = reply.enhanced_status_code or ("4.0.0" if _is_transient(reply) else "5.0.0")
        remote = _remote_host(reply)
        diagnostic = _clean(str(reply)) if reply.code else ""
        now = _rfc5322_date(None)
        for rcpt in envelope.recipients:
            lines.append("")
            lines.append(_address_field("Final-Recipient", rcpt))
            lines.append("Action: failed")
            lines.append(f"Status: {status}")
            if remote:
                lines.append(f"Remote-MTA: dns; {remote}")
            if diagnostic:
                lines.append(f"Diagnostic-Code: smtp; {diagnostic}")
            lines.append(f"Last-Attempt-Date: {now}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    def _substitutions(
        self, envelope: Envelope, reply: Reply, headers_only: bool
    ) -> Mapping[str, Any]:
        client = envelope.client or {}
        recipients = [_clean(rcpt) for rcpt in envelope.recipients]
        return {
            "boundary": f"slimta-bounce-{uuid.uuid4().hex}",
            "sender": _clean(envelope.sender or ""),
            "recipients": self.recipient_join.join(recipients),
            "code": reply.code or "",
            "message": _clean(reply.message or ""),
            "delivery_info": self._delivery_status(envelope, reply),
            "content_type": "text/rfc822-headers" if headers_only else "message/rfc822",
            "client_name": _clean(client.get("name") or "unknown"),
            "client_ip": _clean(client.get("ip") or "unknown"),
            "protocol": _clean(client.get("protocol") or "unknown"),
            "reporting_mta": self._reporting_mta(),
            "arrival_date": _rfc5322_date(envelope.timestamp),
        }


def _is_transient(reply: Reply) -> bool:
    return bool(reply.code) and str(reply.code).startswith("4")
