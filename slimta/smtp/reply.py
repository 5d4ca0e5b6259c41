"""SMTP replies: a code, an optional enhanced status code (RFC 3463) and text.

:class:`Reply` is a small value object with no I/O of its own; :meth:`Reply.recv`
and :meth:`Reply.send` delegate to an ``IO``.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

__all__ = [
    "Reply",
    "unknown_command",
    "unknown_parameter",
    "bad_sequence",
    "bad_arguments",
    "timed_out",
    "unhandled_error",
    "connection_failed",
    "tls_failure",
    "invalid_credentials",
]

_CODE_RE = re.compile(r"[1-5][0-9][0-9]\Z")
_ESC_RE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z")
_ESC_PREFIX_RE = re.compile(r"^([245]\.[0-9]{1,3}\.[0-9]{1,3})\s+")
#: Reply texts whose enhanced status code split is remembered (servers repeat a
#: few texts), at most; longer texts are split each time.
_SPLIT_CACHE_ENTRIES = 256
_SPLIT_CACHE_TEXT_CHARS = 128
_split_cache: dict[str, tuple[str | None, str]] = {}
#: Enhanced status codes already checked by :meth:`Reply.from_parts` (bounded).
_VALID_ESCS: set[str | bool] = {False}
#: Every valid reply code, so that the common check is one set lookup.
_CODES = frozenset(f"{a}{b}{c}" for a in "12345" for b in "0123456789" for c in "0123456789")


class _ReplyIO(Protocol):  # what recv/send need from an IO object
    @property
    def address(self) -> Any: ...

    def recv_reply(self) -> tuple[str, str]: ...

    def send_reply(self, reply: Reply) -> None: ...

    def buffered_send(self, data: bytes) -> None: ...

    def flush_send(self) -> None: ...


def _split_esc(text: str) -> tuple[str | None, str]:
    """``(enhanced status code or None, the rest)`` of a reply text."""
    split = _split_cache.get(text)
    if split is None:
        # Only text starting "<2|4|5>." can carry an enhanced status code.
        match = _ESC_PREFIX_RE.match(text) if text[1:2] == "." else None
        split = (None, text) if match is None else (match.group(1), text[match.end() :])
        if len(text) <= _SPLIT_CACHE_TEXT_CHARS:
            if len(_split_cache) >= _SPLIT_CACHE_ENTRIES:
                _split_cache.clear()
            _split_cache[text] = split
    return split


class Reply:
    """One SMTP reply.

    :param code: the three-digit reply code, e.g. ``'250'``.
    :param message: the reply text; a leading enhanced status code such as
        ``'2.1.5 '`` is split off into :attr:`enhanced_status_code`.
    :param command: the command this reply answers, as bytes (``b'RCPT'``); a
        ``str`` is accepted and encoded.
    :param address: the peer's ``(host, port)``, when known.
    """

    __slots__ = ("_code", "_message", "_esc", "command", "address", "newline_first")

    def __init__(
        self,
        code: str | None = None,
        message: str | None = None,
        command: bytes | str | None = None,
        address: Any = None,
    ) -> None:
        self._code: str | None = None
        self._message: str | None = None
        self._esc: str | None | bool = None
        self.command: bytes | None = (
            command if command is None or type(command) is bytes else _as_command(command)
        )
        self.address = address
        #: Server side only: write a CRLF before the reply (see :data:`timed_out`).
        self.newline_first = False
        if code is not None:
            if type(code) is str and code in _CODES:
                self._code = code  # the common case, without the setter's checks
            else:
                self.code = code
        if message is not None:
            self.message = message

    @classmethod
    def from_parts(cls, code: str, enhanced_status_code: str | bool | None, text: str) -> Reply:
        """A reply from its parts, without looking for a status code in ``text``.

        What servers use for the replies they build: the text may start with
        anything (an address, for instance) and is kept whole.

        :param code: the three-digit reply code.
        :param enhanced_status_code: e.g. ``'2.1.0'``; ``None`` for the default
            (``'<class>.0.0'``) or ``False`` for none.
        :param text: the text after the enhanced status code.
        :raises ValueError: on a malformed code or enhanced status code.
        """
        reply = cls.__new__(cls)
        reply.command = None
        reply.address = None
        reply.newline_first = False
        reply._code = None
        if code in _CODES:
            reply._code = code
        elif not code:
            raise ValueError("Invalid SMTP reply code", code)
        else:
            reply.code = code
        if enhanced_status_code in _VALID_ESCS or enhanced_status_code is None:
            reply._esc = enhanced_status_code
        else:
            reply.enhanced_status_code = enhanced_status_code
            if len(_VALID_ESCS) < _SPLIT_CACHE_ENTRIES:
                _VALID_ESCS.add(enhanced_status_code)
        reply._message = text
        return reply

    # -- code ---------------------------------------------------------------
    @property
    def code(self) -> str | None:
        """The three-digit code as a string, or ``None``.

        :raises ValueError: when set to a non-empty value that is not a reply code.
        """
        return self._code

    @code.setter
    def code(self, value: str | None) -> None:
        if not value:
            self._code = None
            return
        if not isinstance(value, str) or (value not in _CODES and not _CODE_RE.match(value)):
            raise ValueError("Invalid SMTP reply code", value)
        self._code = value

    # -- enhanced status code -----------------------------------------------
    @property
    def enhanced_status_code(self) -> str | None:
        """The enhanced status code, with its class digit taken from :attr:`code`.

        ``None`` for 1xx/3xx replies, replies without a code, or when suppressed
        by setting it to ``False``. ``'<class>.0.0'`` when the reply carries none.

        :raises ValueError: when set to a malformed string.
        """
        code = self._code
        if self._esc is False or not code or code[0] not in "245":
            return None
        if not self._esc:
            return code[0] + ".0.0"
        assert isinstance(self._esc, str)
        return code[0] + self._esc[1:]

    @enhanced_status_code.setter
    def enhanced_status_code(self, value: str | bool | None) -> None:
        if value is None or value is False:
            self._esc = value
            return
        if value is True or not isinstance(value, str) or not _ESC_RE.match(value):
            raise ValueError("Invalid ENHANCEDSTATUSCODES string", value)
        self._esc = value

    # -- message ------------------------------------------------------------
    @property
    def message(self) -> str | None:
        """The text, prefixed with the enhanced status code when there is one."""
        esc = self.enhanced_status_code
        if esc and self._message is not None:
            return esc + " " + self._message
        return self._message

    @message.setter
    def message(self, value: str | None) -> None:
        if value is None:
            self._message = None
            if self._esc is not False:
                self._esc = None
            return
        self._set_text(value)

    @property
    def raw_message(self) -> str | None:
        """The text without its enhanced status code."""
        return self._message

    @raw_message.setter
    def raw_message(self, value: str | None) -> None:
        self._message = value

    # -- helpers ------------------------------------------------------------
    def copy(self, reply: Reply) -> Reply:
        """Copy the code, text and enhanced status code of ``reply`` into this one.

        ``command`` and ``address`` are left alone.

        :returns: ``self``, so that ``Reply(command=b'RCPT').copy(timed_out)`` works.
        """
        self._code = reply._code
        self._message = reply._message
        self._esc = reply._esc
        self.newline_first = reply.newline_first
        return self

    def to_wire(self) -> bytes:
        """The reply as a server writes it: ``code[-| ][esc ]text`` and CRLF per text line.

        The enhanced status code is the one :attr:`enhanced_status_code` gives,
        repeated on every line of a multi-line reply.
        """
        code = self._code or ""
        esc = self._esc
        if esc is False or not code or code[0] not in "245":
            esc = None
        elif esc:
            esc = code[0] + esc[1:]  # type: ignore[index]
        else:
            esc = code[0] + ".0.0"
        text = self._message or ""
        if text.isprintable():  # the common case: one line (no line break is printable)
            if esc:
                return f"{code} {esc} {text}\r\n".encode()
            return f"{code} {text}\r\n".encode()
        lines = text.splitlines() or [""]
        if len(lines) == 1:
            if esc:
                return f"{code} {esc} {lines[0]}\r\n".encode()
            return f"{code} {lines[0]}\r\n".encode()
        prefix = f"{esc} " if esc else ""
        last = len(lines) - 1
        return "".join(
            f"{code}{' ' if i == last else '-'}{prefix}{line}\r\n" for i, line in enumerate(lines)
        ).encode()

    def is_error(self) -> bool:
        """True for 4xx and 5xx replies."""
        return bool(self._code) and self._code[0] in "45"  # type: ignore[index]

    def recv(self, io: _ReplyIO) -> None:
        """Read one reply from ``io`` into this object."""
        code, message = io.recv_reply()
        if code in _CODES:
            self._code = code  # what the parser returns: no further checks
        else:
            self.code = code
        self._set_text(message)
        self.address = io.address

    def _set_text(self, text: str) -> None:
        # The text, split from its enhanced status code (kept unless suppressed).
        esc, self._message = _split_esc(text)
        if esc is not None:
            self._esc = esc
        elif self._esc is not False:
            self._esc = None

    def send(self, io: _ReplyIO, flush: bool = False) -> None:
        """Server side: write this reply to ``io``.

        :param flush: also flush ``io``'s send buffer.
        """
        if self.newline_first:
            io.buffered_send(b"\r\n")
        io.send_reply(self)
        if flush:
            io.flush_send()

    # -- dunders ------------------------------------------------------------
    def __str__(self) -> str:
        message = self.message
        code = self._code or ""
        return code if message is None else f"{code} {message}"

    def __bytes__(self) -> bytes:
        message = self.message
        code = (self._code or "").encode("ascii")
        if message is None:
            return code
        return code + b" " + message.encode("utf-8")

    def __bool__(self) -> bool:
        return self._code is not None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reply):
            return NotImplemented
        return self._code == other._code and self.message == other.message

    __hash__ = None  # type: ignore[assignment]

    def __contains__(self, item: str | bytes) -> bool:
        if isinstance(item, bytes):
            return item in bytes(self)
        return item in str(self)

    def __repr__(self) -> str:
        return f"<Reply code={self._code!r} message={self.message!r}>"


def _as_command(command: bytes | str | None) -> bytes | None:
    if command is None or isinstance(command, bytes):
        return command
    if isinstance(command, (bytearray, memoryview)):
        return bytes(command)
    return str(command).encode("ascii", "replace")


def _predefined(code: str, message: str) -> Reply:
    return Reply(code, message)


#: 500 5.5.2, for an unrecognised command.
unknown_command = _predefined("500", "5.5.2 Syntax error, command unrecognized")
#: 504 5.5.4, for an unsupported command parameter.
unknown_parameter = _predefined("504", "5.5.4 Command parameter not implemented")
#: 503 5.5.1, for a command out of sequence.
bad_sequence = _predefined("503", "5.5.1 Bad sequence of commands")
#: 501 5.5.4, for malformed arguments.
bad_arguments = _predefined("501", "5.5.4 Syntax error in parameters or arguments")
#: 421 4.4.2, for any timeout. Servers write a CRLF before it.
timed_out = _predefined("421", "4.4.2 Connection timed out")
timed_out.newline_first = True
#: 421 4.3.0, for an unexpected internal error.
unhandled_error = _predefined("421", "4.3.0 Unhandled system error")
#: 451 4.3.0, for a socket error while connecting or talking.
connection_failed = _predefined("451", "4.3.0 Connection failed")
#: 421 4.7.0, when TLS is required and could not be negotiated.
tls_failure = _predefined("421", "4.7.0 TLS negotiation failed")
#: 535 5.7.8, for rejected credentials.
invalid_credentials = _predefined("535", "5.7.8 Authentication credentials invalid")
