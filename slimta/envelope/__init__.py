"""The :class:`Envelope`: a message plus the SMTP envelope that routes it.

A relay passes on what it was given. :meth:`Envelope.parse` keeps the raw header
block, and :meth:`Envelope.flatten` returns it byte for byte; only the header
fields that code adds, replaces or removes through :attr:`Envelope.headers` or
:meth:`Envelope.prepend_header` are serialised, each on its own. The body is
never re-encoded (see :doc:`/semantics`).
"""

from __future__ import annotations

import copy as _copy
import re
from collections.abc import Callable
from email.generator import BytesGenerator
from email.message import Message
from io import BytesIO
from typing import Any

from ._headers import (
    RawBlock,
    all_fields,
    copy_message,
    read_block,
    read_fields,
    render,
    split_block,
)
from ._mime import encode_8bit_parts

__all__ = ["Envelope"]

# Field names are printable ASCII other than the colon (RFC 5322 §2.2).
_BAD_NAME_RE = re.compile(r"[^\x21-\x39\x3b-\x7e]")


class Envelope:
    """A message and its envelope.

    :param sender: the reverse-path; ``''`` (or ``None``) is the null sender ``<>``.
    :param recipients: the forward-paths.
    :param headers: the parsed header block.
    :param message: the bytes after the header block.
    """

    # Defaults for instances made without __init__ (copies, subclasses).
    _headers: Message | None = None
    # parse() of a block of well-formed fields keeps its bytes here, as flatten()
    # writes them (the closing empty line as CRLF, when there was one), and
    # reads the fields only when headers is first asked for.
    _lazy_head: bytes | None = None
    _lazy_separator = False
    _raw_block: RawBlock | None = None
    _rendered: tuple[Message, list[Any], bytes] | None = None
    _message: bytes | None = None
    # parse() only keeps the bytes here; they are split into the header block
    # and the body when headers, message or flatten() is first asked for.
    _pending: bytes | None = None

    def __init__(
        self,
        sender: str | None = None,
        recipients: list[str] | None = None,
        headers: Message | None = None,
        message: bytes | None = None,
    ) -> None:
        self.sender = sender
        self.recipients: list[str] = recipients or []
        self._lazy_head = None
        self._headers = headers
        self._message = message
        #: Facts about the client that handed us the message: ``ip``, ``host``,
        #: ``name`` (its EHLO), ``protocol``, ``auth``.
        self.client: dict[str, Any] = {}
        #: The host name of the server that received the message.
        self.receiver: str | None = None
        #: When the message was received (seconds since the epoch).
        self.timestamp: float | None = None
        # The header block as parse() received it, and the last rendering of
        # changed headers (with the item list it was made from).
        self._raw_block = None
        self._rendered = None

    @property
    def headers(self) -> Message | None:
        """The header fields, as a :class:`email.message.Message` (``None`` if none).

        Changing them changes what :meth:`flatten` writes for the fields
        changed, and only for those.
        """
        if self._pending is not None:
            self._split()
        head = self._lazy_head
        if head is not None:
            if self._lazy_separator:
                block = read_fields(head[:-2], b"\r\n")
            else:
                block = read_fields(head, b"")
            self._lazy_head = None
            self._raw_block = block
            self._headers = block.message
        return self._headers

    @headers.setter
    def headers(self, value: Message | None) -> None:
        if self._pending is not None:
            self._split()  # the message keeps the body of what parse() got
        self._lazy_head = None
        self._headers = value

    @property
    def message(self) -> bytes | None:
        """The bytes after the header block (``None`` if there is no message)."""
        if self._pending is not None:
            self._split()
        return self._message

    @message.setter
    def message(self, value: bytes | None) -> None:
        if self._pending is not None:
            self._split()  # the headers stay those of what parse() got
        self._message = value

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "headers" in state or "message" in state:
            # Pickled when headers and message were plain attributes.
            state = dict(state)
            if "headers" in state:
                state["_headers"] = state.pop("headers")
            if "message" in state:
                state["_message"] = state.pop("message")
        self.__dict__.update(state)

    def prepend_header(self, name: str, value: str) -> None:
        """Insert a header before all the existing ones.

        Only the new field is serialised (folded at its blanks when longer than
        78 characters); every other line keeps its bytes.

        :raises ValueError: when the envelope has no headers, or when the name
            or the value holds a line break (a header injection).
        """
        headers = self.headers
        if headers is None:
            raise ValueError("envelope has no headers to prepend to")
        if _BAD_NAME_RE.search(name) or not name:
            raise ValueError(f"invalid header field name: {name!r}")
        if "\r" in value or "\n" in value:
            raise ValueError("header values may not contain CR or LF characters")
        # Stored as given, like a field read from the message: the policy
        # parses it only if it is read back.
        headers._headers.insert(0, (name, value))  # type: ignore[attr-defined]

    def copy(self, new_rcpts: list[str] | None = None) -> Envelope:
        """Return a deep, independent copy of the whole envelope.

        Every attribute is copied, including those a program set on the
        envelope itself, and the raw header block; the message bytes are
        immutable and shared, never duplicated.

        :param new_rcpts: when truthy, the copy's recipients.
        """
        memo: dict[int, Any] = {}
        # Fields not read yet are bytes, copied as they are.
        headers = self._headers if self._lazy_head is None else None
        if headers is not None:
            # The header objects are copied by hand, keeping the raw block valid
            # for the copy; deepcopy does the rest (including attributes set by
            # programs), and shares what it finds in the memo.
            new_headers = copy_message(headers)
            memo[id(headers)] = new_headers
            block = self._raw_block
            if block is not None and block.message is headers:
                memo[id(block)] = block.for_copy(new_headers)
            rendered = self._rendered
            if rendered is not None and rendered[0] is headers:
                memo[id(rendered)] = (new_headers, rendered[1], rendered[2])
        new = _copy.deepcopy(self, memo)
        if new_rcpts:
            new.recipients = new_rcpts
        return new

    def flatten(self) -> tuple[bytes, bytes]:
        """Serialise the message for delivery.

        :returns: ``(header_bytes, body_bytes)``. The header bytes are the block
            :meth:`parse` received (CRLF line ends, closing empty line
            included), with only the fields changed through the API serialised
            anew; the body is returned as stored.
        :raises ValueError: when the envelope has no message.
        """
        if self.message is None:
            raise ValueError("envelope has no message to flatten")
        return self._header_bytes(), self.message

    def _header_bytes(self) -> bytes:
        if self._pending is not None:
            self._split()
        head = self._lazy_head
        if head is not None:  # never read, so never changed
            return head
        headers = self._headers
        if headers is None:
            return b"\r\n"
        block = self._raw_block
        if block is not None and block.untouched(headers):
            return block.data
        items = headers._headers  # type: ignore[attr-defined]
        rendered = self._rendered
        if rendered is not None and rendered[0] is headers and rendered[1] == items:
            return rendered[2]
        data = render(headers, block, bool(self.message))
        self._rendered = (headers, list(items), data)
        return data

    def parse(self, data: bytes, *, deferred: bool = False) -> None:
        """Split raw message bytes into :attr:`headers` and :attr:`message`.

        The header block ends at the first empty line (CRLF or LF, blanks
        allowed on it) and is kept as received. A line that cannot be a header
        field ends the fields early; it and the rest are the body. Never
        raises: bytes that make no sense as headers are kept and relayed as
        given.

        :param deferred: keep the bytes and split them only when
            :attr:`headers`, :attr:`message` or :meth:`flatten` is first asked
            for. The result is the same; the work moves to whoever needs it
            first (an edge that only stores the message leaves it to the relay,
            after the client has its reply).
        """
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        self._pending = bytes(data)
        self._rendered = None
        self._headers = None
        self._raw_block = None
        self._lazy_head = None
        self._message = None
        if not deferred:
            self._split()

    def _split(self) -> None:
        data = self._pending
        assert data is not None
        self._pending = None
        head, separator, body_start = split_block(data)
        if all_fields(head):
            # The fields are read when headers is first asked for.
            self._lazy_head = head + b"\r\n" if separator else head
            self._lazy_separator = bool(separator)
            self._message = data[body_start:]
            return
        block, body = read_block(data)
        self._headers = block.message
        self._message = body
        self._raw_block = block

    def parse_msg(self, msg: Message) -> None:
        """Serialise ``msg`` with its own policy (CRLF line ends) and :meth:`parse` the result."""
        out = BytesIO()
        policy = msg.policy.clone(linesep="\r\n")
        BytesGenerator(out, mangle_from_=False, policy=policy).flatten(msg)
        self.parse(out.getvalue())

    def encode_7bit(self, encoder: Callable[[Message], None] | None = None) -> None:
        """Make the body 7-bit clean, in place.

        An ASCII body is left alone. For an 8-bit body, every non-multipart MIME
        part that is not ASCII loses its ``Content-Transfer-Encoding`` and is
        passed to ``encoder`` (e.g. :func:`email.encoders.encode_base64`). Only
        those parts change: every other part, boundary, preamble and epilogue
        keeps its bytes, and so do the header fields the encoder leaves alone.

        :raises UnicodeDecodeError: when the body is 8-bit and no encoder is given.
        """
        body = self.message or b""
        if body.isascii():
            return
        if encoder is None:
            body.decode("ascii")  # raises UnicodeDecodeError
            return
        if self.headers is None:
            self.parse(b"\r\n" + body)
        headers = self.headers
        assert headers is not None
        self.message = encode_8bit_parts(headers, body, encoder)

    def __repr__(self) -> str:
        return f"<Envelope at {hex(id(self))}, sender={self.sender!r}>"
