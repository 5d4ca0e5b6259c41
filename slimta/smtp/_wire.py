"""The sans-I/O half of the SMTP client: bytes in, values or bytes out.

Nothing here touches a socket, a greenlet or the clock. :mod:`slimta.smtp.io`
feeds received bytes to :class:`ReplyParser` and writes what
:func:`encode_command` returns; :mod:`slimta.smtp.client` checks every address
and name with the functions below *before* anything reaches the wire.

The parser's goals, in order:

* correctness: a reply is ``ddd`` + (``-``, space or tab) + text, or a bare
  ``ddd``; continuation lines keep the code; CRLF (or a lone LF) ends a line;
* bounded memory: a line may not exceed :data:`MAX_REPLY_LINE_BYTES` and a
  whole reply :data:`MAX_REPLY_BYTES`, so a hostile server cannot grow the buffer;
* linear time: received bytes go into one ``bytearray``; the search for the
  end of a line resumes where the previous search stopped, so no byte is scanned
  twice however the reply is split across reads.
"""

from __future__ import annotations

import re

from slimta.smtp import BadReply

__all__ = [
    "MAX_REPLY_LINE_BYTES",
    "MAX_REPLY_BYTES",
    "MAX_LOCAL_PART_BYTES",
    "MAX_DOMAIN_BYTES",
    "MAX_PATH_BYTES",
    "ReplyParser",
    "AddressError",
    "AddressEncodingError",
    "encode_command",
    "check_address",
    "is_plain_address",
    "encode_address",
    "check_ehlo_name",
    "xtext_encode",
    "xtext_decode",
]

#: The longest reply line accepted, terminator included (RFC 5321 allows 512).
MAX_REPLY_LINE_BYTES = 8192
#: The most bytes one (multi-line) reply may take.
MAX_REPLY_BYTES = 65536
#: RFC 5321 §4.5.3.1.1: the longest local part, in octets.
MAX_LOCAL_PART_BYTES = 64
#: RFC 5321 §4.5.3.1.2: the longest domain, in octets.
MAX_DOMAIN_BYTES = 255
#: RFC 5321 §4.5.3.1.3: the longest path, angle brackets included, in octets.
MAX_PATH_BYTES = 256

#: Consumed bytes are dropped from the front of the buffer once there are this many.
_COMPACT_BYTES = 65536
#: How much of an offending reply a :class:`~slimta.smtp.BadReply` keeps.
_BAD_REPLY_EXCERPT_BYTES = 512

_FORBIDDEN_IN_COMMAND = (b"\r", b"\n", b"\0")
_DIGITS = frozenset(b"0123456789")
_SEPARATORS = frozenset(b"- \t")


class ReplyParser:
    """Incremental parser of SMTP replies, fed with whatever the socket returns.

    Call :meth:`feed` with received bytes, then :meth:`next_reply` until it returns
    ``None`` (more bytes needed). Bytes that follow a complete reply stay buffered
    for the next call; :attr:`pending` tells how many there are.
    """

    __slots__ = ("buffer", "offset", "_scan", "_code", "_lines", "_reply_bytes")

    def __init__(self) -> None:
        #: Received bytes; everything before :attr:`offset` is consumed.
        self.buffer = bytearray()
        #: Start of the first unconsumed byte (the start of the current line).
        self.offset = 0
        # Where the search for the current line's LF resumes.
        self._scan = 0
        # The reply being assembled: its code, its lines so far, their size.
        self._code: bytes | None = None
        self._lines: list[bytes] = []
        self._reply_bytes = 0

    @property
    def pending(self) -> int:
        """The number of received bytes not yet consumed."""
        return len(self.buffer) - self.offset

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        buf = self.buffer
        offset = self.offset
        if offset and (offset == len(buf) or offset >= _COMPACT_BYTES):
            # Drop what is consumed; bytearray makes a front delete cheap.
            del buf[:offset]
            self._scan -= offset
            self.offset = 0
        buf += data

    def take_pending(self) -> bytes:
        """Remove and return every unconsumed byte (and any partial reply state)."""
        data = bytes(self.buffer[self.offset :])
        self.buffer.clear()
        self.offset = self._scan = 0
        self._reset_reply()
        return data

    def next_line(self, max_bytes: int = MAX_REPLY_LINE_BYTES) -> bytes | None:
        """Consume one line, returned without its CRLF (or LF); ``None`` if incomplete.

        :raises ~slimta.smtp.BadReply: when the line exceeds ``max_bytes``.
        """
        buf = self.buffer
        start = self.offset
        limit = start + max_bytes
        end = buf.find(b"\n", max(self._scan, start), limit)
        if end < 0:
            if len(buf) >= limit:
                raise BadReply(bytes(buf[start : start + _BAD_REPLY_EXCERPT_BYTES]))
            self._scan = len(buf)
            return None
        self.offset = self._scan = end + 1
        if end > start and buf[end - 1] == 13:  # CR
            end -= 1
        return bytes(buf[start:end])

    def next_reply(self) -> tuple[str, str] | None:
        """Consume one complete reply.

        :returns: ``(code, text)``, the lines' texts joined with CRLF; ``None``
            when more bytes are needed.
        :raises ~slimta.smtp.BadReply: on a malformed, mixed-code, non-UTF-8 or
            oversized reply. The parser is then unusable, like the connection.
        """
        if self._code is None:
            # The common case first: a complete one-line reply ("250 text").
            buf = self.buffer
            start = self.offset
            limit = start + MAX_REPLY_LINE_BYTES
            end = buf.find(b"\n", max(self._scan, start), limit)
            if end < 0:
                if len(buf) < limit:  # incomplete, and within every limit
                    self._scan = len(buf)
                    return None
            elif (
                end >= start + 4
                and buf[start + 3] == 32  # "ddd text": one line, the last
                and 49 <= buf[start] <= 53
                and buf[start + 1] in _DIGITS
                and buf[start + 2] in _DIGITS
            ):
                try:
                    whole = buf[start : end - 1 if buf[end - 1] == 13 else end].decode("utf-8")
                except UnicodeDecodeError:
                    pass  # the general loop reports it
                else:
                    self.offset = self._scan = end + 1
                    return whole[:3], whole[4:]
            # Anything else (the first of several lines, a bare code, a tab
            # separator, bad bytes) goes through the general loop, which
            # reports errors; it finds this LF at once.
            self._scan = max(end, self._scan)
        while True:
            line_start = self.offset
            line = self.next_line()
            if line is None:
                if self._reply_bytes + (len(self.buffer) - line_start) > MAX_REPLY_BYTES:
                    raise BadReply(self._excerpt(line_start))
                return None
            self._reply_bytes += self.offset - line_start
            if self._reply_bytes > MAX_REPLY_BYTES:
                raise BadReply(self._excerpt(line_start))
            code = line[:3]
            if (
                len(code) != 3
                or not _is_code(code)
                or (len(line) > 3 and line[3] not in _SEPARATORS)
            ):
                raise BadReply(line[:_BAD_REPLY_EXCERPT_BYTES])
            if self._code is None:
                self._code = code
            elif code != self._code:
                raise BadReply(line[:_BAD_REPLY_EXCERPT_BYTES])
            self._lines.append(line[4:])
            if len(line) > 3 and line[3] == 45:  # '-': more lines follow
                continue
            raw = b"\r\n".join(self._lines)
            self._reset_reply()
            try:
                return code.decode("ascii"), raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BadReply(raw[:_BAD_REPLY_EXCERPT_BYTES])

    def _reset_reply(self) -> None:
        self._code = None
        self._lines = []
        self._reply_bytes = 0

    def _excerpt(self, start: int) -> bytes:
        done = b"\r\n".join(self._lines)
        return (done + bytes(self.buffer[start : start + _BAD_REPLY_EXCERPT_BYTES]))[
            :_BAD_REPLY_EXCERPT_BYTES
        ]


def _is_code(code: bytes) -> bool:
    return 49 <= code[0] <= 53 and code[1] in _DIGITS and code[2] in _DIGITS


def encode_command(command: bytes | str, arg: bytes | str | None = None) -> bytes:
    """Build one command line, CRLF included.

    :param command: the verb, e.g. ``b'MAIL'``.
    :param arg: appended after a space when given.
    :raises ValueError: when either part contains CR, LF or NUL, which would
        let the data smuggle in extra commands.
    """
    if isinstance(command, str):
        command = command.encode("ascii")
    if arg is not None:
        if isinstance(arg, str):
            arg = arg.encode("utf-8")
        line = command + b" " + arg
    else:
        line = bytes(command)
    for bad in _FORBIDDEN_IN_COMMAND:
        if bad in line:
            raise ValueError("CR, LF and NUL are not allowed in an SMTP command", line)
    return line + b"\r\n"


class AddressError(ValueError):
    """An address that must not be sent: control characters, unquoted ``<``,
    ``>`` or whitespace, or over the RFC 5321 length limits."""


class AddressEncodingError(AddressError):
    """A non-ASCII address for a server without SMTPUTF8."""


def _find_quoted_end(address: str) -> int:
    """Index just past the closing quote of a quoted local part starting at 0."""
    i = 1
    length = len(address)
    while i < length:
        char = address[i]
        if char == "\\":
            i += 2
            continue
        if char == '"':
            return i + 1
        i += 1
    raise AddressError("Unterminated quoted local part", address)


# C0 controls and DEL, plus the Unicode line and paragraph separators.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
# A plain ASCII mailbox that passes every check below: atext and dots in a local
# part of at most 64 octets, letters, digits, dots and hyphens in a domain, and a
# path (address plus brackets) of at most 256 octets.
_SIMPLE_ADDRESS_RE = re.compile(
    r"(?=.{1,254}\Z)([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64})@([A-Za-z0-9.-]{1,255})\Z"
)
# What may not appear outside a quoted local part.
_UNQUOTED_BAD_RE = re.compile(r"[<>\s]")


def _has_control(text: str) -> bool:
    return _CONTROL_RE.search(text) is not None


def check_address(address: str) -> tuple[str, str]:
    """Check a mailbox before it goes between ``<`` and ``>``.

    Refused: C0 controls and DEL anywhere; ``<``, ``>`` and whitespace outside a
    quoted local part; a local part over 64 octets, a domain over 255 or a path
    over 256 (UTF-8 octets). The empty string (the null path) passes.

    :returns: ``(local_part, domain)``; the domain is ``''`` when there is no ``@``.
    :raises AddressError: when the address is refused.
    """
    if not isinstance(address, str):
        raise AddressError("Address must be a str", address)
    simple = _SIMPLE_ADDRESS_RE.match(address)
    if simple is not None:  # the common case, decided by one C-level match
        return simple.group(1), simple.group(2)
    try:
        path_bytes = len(address.encode("utf-8")) + 2
    except UnicodeEncodeError:  # lone surrogates
        raise AddressError("Address is not valid Unicode", address)
    if _has_control(address):
        raise AddressError("Control character in address", address)
    if address.startswith('"'):
        end = _find_quoted_end(address)
        local, rest = address[:end], address[end:]
        if rest and not rest.startswith("@"):
            raise AddressError("Text after quoted local part", address)
        domain = rest[1:]
        unquoted = domain
    else:
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, ""
        unquoted = address
    if _UNQUOTED_BAD_RE.search(unquoted) is not None:
        raise AddressError("Unquoted <, > or whitespace in address", address)
    if len(local.encode("utf-8")) > MAX_LOCAL_PART_BYTES:
        raise AddressError("Local part longer than 64 octets", address)
    if len(domain.encode("utf-8")) > MAX_DOMAIN_BYTES:
        raise AddressError("Domain longer than 255 octets", address)
    if path_bytes > MAX_PATH_BYTES:
        raise AddressError("Path longer than 256 octets", address)
    return local, domain


def is_plain_address(address: str) -> bool:
    """True for a plain ASCII ``local@domain`` that :func:`check_address` accepts.

    One C-level match, for the common case; ``False`` says only that the full
    check is needed, not that the address is bad.
    """
    return _SIMPLE_ADDRESS_RE.match(address) is not None


def encode_address(address: str | None, utf8: bool) -> bytes:
    """Check ``address`` and encode it for ``MAIL FROM:<…>``/``RCPT TO:<…>``.

    :param address: the mailbox; ``None`` is the null path, like ``''``.
    :param utf8: whether the server advertised SMTPUTF8 (UTF-8 allowed) or
        not (ASCII only).
    :raises AddressError: see :func:`check_address`.
    :raises AddressEncodingError: a non-ASCII address without ``utf8``.
    """
    if address is None:
        return b""
    if type(address) is str and _SIMPLE_ADDRESS_RE.match(address) is not None:
        return address.encode("ascii")  # plain ASCII that passes every check
    check_address(address)
    if address.isascii():
        return address.encode("ascii")
    if not utf8:
        raise AddressEncodingError("Non-ASCII address needs SMTPUTF8", address)
    return address.encode("utf-8")


_EHLO_NAME_RE = re.compile(r"^[\x21-\x7e]+\Z")


def check_ehlo_name(name: str) -> bytes:
    """Check and encode the name sent with EHLO, HELO or LHLO.

    :raises ValueError: when ``name`` is empty, not ASCII, or holds whitespace
        or control characters.
    """
    if not isinstance(name, str) or not _EHLO_NAME_RE.match(name):
        raise ValueError("Invalid EHLO name", name)
    return name.encode("ascii")


_XTEXT_SAFE = bytes(b for b in range(0x21, 0x7F) if b not in (0x2B, 0x3D))
_XTEXT_TABLE = [chr(b) if b in _XTEXT_SAFE else f"+{b:02X}" for b in range(256)]
_XTEXT_HEX_RE = re.compile(rb"\+([0-9A-Fa-f]{2})")


def xtext_encode(value: str | bytes) -> bytes:
    """RFC 3461 xtext: bytes outside ``!``..``~``, and ``+`` and ``=``, become ``+XX``."""
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if data.translate(None, _XTEXT_SAFE) == b"":
        return data
    return "".join([_XTEXT_TABLE[b] for b in data]).encode("ascii")


def xtext_decode(value: bytes) -> bytes:
    """Undo :func:`xtext_encode`."""
    return _XTEXT_HEX_RE.sub(lambda m: bytes([int(m.group(1), 16)]), value)
