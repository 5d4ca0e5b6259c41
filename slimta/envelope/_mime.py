"""Convert the 8-bit parts of a message to 7-bit, leaving every other byte alone.

:meth:`Envelope.encode_7bit` needs to re-encode the MIME leaves whose content is
not ASCII, for a server without ``8BITMIME``. Running the whole message through
the email package would rewrite every header and every part; here the MIME tree
is walked over the raw bytes instead. Multipart bodies are split at their
boundary lines, ``message/*`` parts are descended into, and only a leaf with
8-bit content is handed to the encoder. Everything else (preambles, epilogues,
boundary lines, ASCII parts, untouched header fields) is copied as received.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from email.message import Message

from ._headers import read_block, render

__all__ = ["encode_8bit_parts"]

Encoder = Callable[[Message], None]


def encode_8bit_parts(headers: Message, body: bytes, encoder: Encoder) -> bytes:
    """Encode the 8-bit leaves of the entity ``headers`` + ``body``.

    ``headers`` is changed in place when the entity itself is such a leaf (the
    encoder sets its ``Content-Transfer-Encoding``).

    :returns: the new body.
    """
    if body.isascii():
        return body
    maintype = headers.get_content_maintype()
    if maintype == "multipart":
        boundary = headers.get_boundary()
        if boundary:
            encoded = _encode_multipart(headers, body, boundary, encoder)
            if encoded is not None:
                return encoded
        # No usable boundary: like the email package, treat it as one leaf.
    elif maintype == "message" and headers.get_content_subtype() != "delivery-status":
        block, inner_body = read_block(body)
        new_inner = encode_8bit_parts(block.message, inner_body, encoder)
        return render(block.message, block, bool(new_inner)) + new_inner
    return _encode_leaf(headers, body, encoder)


def _encode_leaf(headers: Message, body: bytes, encoder: Encoder) -> bytes:
    del headers["Content-Transfer-Encoding"]
    headers.set_payload(body)
    try:
        encoder(headers)
        payload = headers.get_payload()
    finally:
        headers._payload = None  # type: ignore[attr-defined]
    if isinstance(payload, str):
        data = payload.encode("ascii", "surrogateescape")
    elif isinstance(payload, bytes):
        data = payload
    else:  # pragma: no cover - an encoder that made a multipart out of a leaf
        raise TypeError("the encoder left a payload that is not text")
    # The encoders write LF line ends; the message uses CRLF.
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _line_end(body: bytes, pos: int) -> int:
    """The length of the line end at ``pos`` (0 at the end of the data)."""
    if body.startswith(b"\r\n", pos):
        return 2
    if body.startswith((b"\n", b"\r"), pos):
        return 1
    return 0


def _break_before(body: bytes, pos: int, floor: int) -> int:
    """The length of the line break just before ``pos`` (it belongs to the boundary)."""
    if pos - 2 >= floor and body[pos - 2 : pos] == b"\r\n":
        return 2
    if pos - 1 >= floor and body[pos - 1 : pos] in (b"\n", b"\r"):
        return 1
    return 0


def _encode_multipart(
    headers: Message, body: bytes, boundary: str, encoder: Encoder
) -> bytes | None:
    marker = re.escape(b"--" + boundary.encode("ascii", "surrogateescape"))
    delimiters = list(re.finditer(rb"^" + marker + rb"(--)?[ \t]*\r?$", body, re.M))
    if not delimiters:
        return None
    child_default = "message/rfc822" if headers.get_content_subtype() == "digest" else None
    out: list[bytes] = []
    copied = 0  # body[:copied] is already in out
    for index, delimiter in enumerate(delimiters):
        if delimiter.group(1):  # the close delimiter: the rest is epilogue
            break
        start = delimiter.end() + _line_end(body, delimiter.end())
        if index + 1 < len(delimiters):
            following = delimiters[index + 1].start()
            end = max(start, following - _break_before(body, following, start))
        else:
            end = len(body)  # no close delimiter: the part runs to the end
        part = body[start:end]
        if part.isascii():
            continue
        block, part_body = read_block(part)
        if child_default is not None:
            block.message.set_default_type(child_default)
        new_body = encode_8bit_parts(block.message, part_body, encoder)
        out.append(body[copied:start])
        out.append(render(block.message, block, bool(new_body)) + new_body)
        copied = end
    out.append(body[copied:])
    return b"".join(out)
