"""The :class:`Envelope`: a message plus the SMTP envelope that routes it."""

from __future__ import annotations

import copy as _copy
import re
from collections.abc import Callable
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser
from email.policy import SMTP
from io import BytesIO
from typing import Any

__all__ = ["Envelope"]

# The end of the header block: an empty line (optionally holding blanks), at the
# very start of the data or after a line break.
_HEADER_END_RE = re.compile(rb"^[ \t]*\r?\n|\r?\n[ \t]*\r?\n")


class Envelope:
    """A message and its envelope.

    :param sender: the reverse-path; ``''`` (or ``None``) is the null sender ``<>``.
    :param recipients: the forward-paths.
    :param headers: the parsed header block.
    :param message: the bytes after the header block.
    """

    def __init__(
        self,
        sender: str | None = None,
        recipients: list[str] | None = None,
        headers: Message | None = None,
        message: bytes | None = None,
    ) -> None:
        self.sender = sender
        self.recipients: list[str] = recipients or []
        self.headers = headers
        self.message = message
        #: Facts about the client that handed us the message: ``ip``, ``host``,
        #: ``name`` (its EHLO), ``protocol``, ``auth``.
        self.client: dict[str, Any] = {}
        #: The host name of the server that received the message.
        self.receiver: str | None = None
        #: When the message was received (seconds since the epoch).
        self.timestamp: float | None = None
        # flatten() caches the generated header bytes along with a snapshot of
        # the header list they came from, so untouched headers are not
        # serialised again on every attempt.
        self._flat_headers: tuple[Message, list[Any], bytes] | None = None

    def prepend_header(self, name: str, value: str) -> None:
        """Insert a header before all the existing ones.

        :raises ValueError: when the envelope has no headers.
        """
        if self.headers is None:
            raise ValueError("envelope has no headers to prepend to")
        policy = self.headers.policy
        stored = policy.header_store_parse(name, value)
        self.headers._headers.insert(0, stored)  # type: ignore[attr-defined]

    def copy(self, new_rcpts: list[str] | None = None) -> Envelope:
        """Return a deep, independent copy.

        :param new_rcpts: when truthy, the copy's recipients.
        """
        new = Envelope(self.sender, list(new_rcpts or self.recipients))
        new.headers = _copy.deepcopy(self.headers)
        new.message = self.message
        new.client = _copy.deepcopy(self.client)
        new.receiver = self.receiver
        new.timestamp = self.timestamp
        if self._flat_headers is not None and new.headers is not None:
            data = self._flat_headers[2]
            new._flat_headers = (new.headers, list(new.headers._headers), data)  # type: ignore[attr-defined]
        return new

    def flatten(self) -> tuple[bytes, bytes]:
        """Serialise the message for delivery.

        :returns: ``(header_bytes, body_bytes)``. The headers use CRLF line ends
            and end with the blank line; the body is returned as stored.
        :raises ValueError: when the envelope has no message.
        """
        if self.message is None:
            raise ValueError("envelope has no message to flatten")
        return self._header_bytes(), self.message

    def _header_bytes(self) -> bytes:
        headers = self.headers
        if headers is None:
            return b"\r\n"
        current = headers._headers  # type: ignore[attr-defined]
        cached = self._flat_headers
        if cached is not None and cached[0] is headers and cached[1] == current:
            return cached[2]
        out = BytesIO()
        BytesGenerator(out, policy=SMTP).flatten(headers)  # type: ignore[arg-type]
        data = out.getvalue()
        # A header-only Message serialises as the headers and the blank line.
        if not current:
            data = b"\r\n"
        elif not data.endswith(b"\r\n\r\n"):
            data += b"\r\n" if data.endswith(b"\r\n") else b"\r\n\r\n"
        self._flat_headers = (headers, list(current), data)
        return data

    def parse(self, data: bytes) -> None:
        """Split raw message bytes into :attr:`headers` and :attr:`message`.

        The header block ends at the first empty line. Text that does not parse
        as headers is kept, at the start of the body.
        """
        match = _HEADER_END_RE.search(data)
        if match is None:
            header_data, body, end = data, b"", len(data)
        else:
            # Keep the line break that ends the last header, but not the blank
            # line: the parser would take a line of blanks for a continuation.
            found = match.group(0)
            newline = 2 if found.startswith(b"\r\n") else 1 if found.startswith(b"\n") else 0
            end = match.start() + newline
            header_data, body = data[:end], data[match.end() :]
        headers = BytesParser(policy=SMTP).parsebytes(header_data, headersonly=True)
        leftover = headers.get_payload()
        headers.set_payload(None)  # type: ignore[call-overload]
        if isinstance(leftover, str) and leftover:
            # The parser stopped early: that text and the blank line are body.
            body = leftover.encode("ascii", "surrogateescape") + data[end:]
        self.headers = headers
        self.message = body
        self._flat_headers = None

    def parse_msg(self, msg: Message) -> None:
        """Serialise ``msg`` and :meth:`parse` the result."""
        out = BytesIO()
        policy = msg.policy.clone(linesep="\r\n")
        BytesGenerator(out, mangle_from_=False, policy=policy).flatten(msg)
        self.parse(out.getvalue())

    def encode_7bit(self, encoder: Callable[[Message], None] | None = None) -> None:
        """Make the body 7-bit clean, in place.

        An ASCII body is left alone. For an 8-bit body, every non-multipart MIME
        part that is not ASCII loses its ``Content-Transfer-Encoding`` and is
        passed to ``encoder`` (e.g. :func:`email.encoders.encode_base64`).

        :raises UnicodeDecodeError: when the body is 8-bit and no encoder is given.
        """
        body = self.message or b""
        if body.isascii():
            return
        if encoder is None:
            body.decode("ascii")  # raises UnicodeDecodeError
            return
        header_data, body = self.flatten()
        msg = BytesParser().parsebytes(header_data + body)
        for part in msg.walk():
            if part.is_multipart():
                continue
            # BytesParser keeps 8-bit bytes as surrogate escapes in the raw payload.
            payload = part._payload  # type: ignore[attr-defined]
            if not isinstance(payload, str) or payload.isascii():
                continue
            raw = payload.encode("utf-8", "surrogateescape")
            del part["Content-Transfer-Encoding"]
            part.set_payload(raw)
            encoder(part)
        self.parse_msg(msg)

    def __repr__(self) -> str:
        return f"<Envelope at {hex(id(self))}, sender={self.sender!r}>"
