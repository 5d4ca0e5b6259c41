"""The sans-I/O half of the SMTP server: bytes in, commands and message data out.

Nothing here touches a socket, a greenlet or the clock. :class:`ServerInput`
holds what the client sent and hands out, in order, command lines and (after a
``354``) the message data. :mod:`slimta.smtp.server` reads the socket, feeds
this class and writes the replies.

Goals, in order:

* one reading of the stream: ``<CRLF>.<CRLF>`` (or ``.<CRLF>`` as the very first
  data line) is the **only** end of the data. ``<LF>.<LF>``, ``<CR>.<CR>``,
  ``<LF>.<CRLF>``, ``<CRLF>.<LF>`` and the other published SMTP smuggling shapes
  are content, so this server and whatever reads the message next can never
  disagree about where a message ends (CVE-2023-51764 family). A bare CR or LF
  inside the data is normalised to CRLF, or the message is refused; it is never
  passed on as is;
* bounded memory: a command line may not exceed :data:`MAX_COMMAND_LINE_BYTES`,
  and once a message exceeds its size limit the rest of it is scanned for the
  end marker and dropped, never kept;
* linear time: whole received chunks are searched with ``bytes.find`` and
  transformed with ``bytes.replace``; no per-byte or per-line Python loop.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

from slimta.smtp import MessageTooBig, SmtpError
from slimta.smtp.reply import Reply

__all__ = [
    "MAX_COMMAND_LINE_BYTES",
    "MAX_AUTH_LINE_BYTES",
    "BadDataError",
    "Command",
    "LineError",
    "DataDecoder",
    "ServerInput",
    "parse_path_argument",
    "PLAIN_PATH_PATTERNS",
    "gather_params",
    "render_extensions",
    "auth_failure_delay",
    "too_big_reply",
]

#: The longest command line accepted, CRLF included. RFC 5321 §4.5.3.1.4 asks for
#: 512; extensions (SIZE, BODY, SMTPUTF8 addresses, DSN) make real lines longer.
MAX_COMMAND_LINE_BYTES = 2048
#: The longest line of an AUTH exchange (a base64 response), CRLF included.
MAX_AUTH_LINE_BYTES = 12288

#: What a bare CR or LF inside message data may lead to.
BARE_NEWLINE_POLICIES = ("normalize", "reject")

_END = b"\r\n.\r\n"
_EOL_RE = re.compile(rb"\r\n|\r|\n")


class BadDataError(SmtpError):
    """The message data held a bare CR or LF and the policy is to refuse it.

    Its :attr:`reply` is ``550 5.6.11``.
    """

    def __init__(self) -> None:
        super().__init__("Message data contains a bare CR or LF")
        self.reply = Reply("550", "5.6.11 Bare CR or LF in message data not allowed")


def too_big_reply(max_size: int | None) -> Reply:
    """``552 5.3.4``, for a message over the size limit."""
    if max_size:
        return Reply("552", f"5.3.4 Message size exceeds {max_size} limit")
    return Reply("552", "5.3.4 Message exceeded size limit")


class DataDecoder:
    """Turns the bytes after a ``354`` into the message, until ``<CRLF>.<CRLF>``.

    Call :meth:`feed` with each received chunk until :attr:`done`; then
    :meth:`result` gives the message (dot-stuffing undone, CRLF line ends) or
    raises, and :attr:`leftover` holds the bytes the client sent after the end
    marker (pipelined commands).

    :param max_size: the most message bytes kept; beyond it the rest is read and
        dropped and :meth:`result` raises :class:`~slimta.smtp.MessageTooBig`.
    :param bare_newline: ``'normalize'`` (each bare CR or LF becomes CRLF) or
        ``'reject'`` (:meth:`result` raises :class:`BadDataError`).
    """

    __slots__ = (
        "max_size",
        "bare_newline",
        "size",
        "done",
        "leftover",
        "too_big",
        "bad_newline",
        "_chunks",
        "_carry",
        "_line_start",
    )

    def __init__(self, max_size: int | None = None, bare_newline: str = "normalize") -> None:
        if bare_newline not in BARE_NEWLINE_POLICIES:
            raise ValueError("bare_newline must be 'normalize' or 'reject'", bare_newline)
        self.max_size = max_size
        self.bare_newline = bare_newline
        #: Message bytes seen so far (after unstuffing and normalising).
        self.size = 0
        #: True once the end marker was read.
        self.done = False
        #: Bytes received after the end marker.
        self.leftover = b""
        #: True once the message went over :attr:`max_size`.
        self.too_big = False
        #: True when a bare CR or LF was seen.
        self.bad_newline = False
        self._chunks: list[bytes] = []
        # Unprocessed tail: at most a partial end marker (".", ".\r") at a line
        # start, or a CR whose LF may come next.
        self._carry = b""
        # Whether the next byte starts a line (the previous ones ended in CRLF).
        self._line_start = True

    @property
    def discarding(self) -> bool:
        """True when nothing more is kept (too big, or refused bare newline)."""
        return self.too_big or (self.bad_newline and self.bare_newline == "reject")

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Consume one received chunk.

        :returns: :attr:`done`.
        """
        if self.done:
            self.leftover += bytes(data)
            return True
        if self._line_start and not self._carry and data[:1] != b".":
            # At a line start, not on a dot: the end marker cannot straddle the
            # start, so when the rest of the message is all here it is cut
            # straight out of data (the usual case: a message in one read).
            data = bytes(data)
            # The first "<CRLF>." is the end marker's when no line before it
            # starts with a dot: then there is no dot-stuffing to undo either.
            end = data.find(b"\r\n.")
            stuffed = end >= 0 and not data.startswith(_END, end)
            if stuffed:
                end = data.find(_END, end)
            if end >= 0:
                self._emit(data[: end + 2], 0, stuffed)
                self.leftover = data[end + 5 :]
                self.done = True
                return True
        prefix = b"\r\n" if self._line_start else b""
        stream = prefix + self._carry + bytes(data)
        plen = len(prefix)
        end = stream.find(_END)
        if end >= 0:
            self._emit(stream[: end + 2], plen)
            self.leftover = stream[end + 5 :]
            self._carry = b""
            self.done = True
            return True
        last_crlf = stream.rfind(b"\r\n")
        if last_crlf >= 0 and len(stream) - (last_crlf + 2) < 3:
            # The tail may be the start of ".\r\n": keep it.
            cut = last_crlf + 2
            self._line_start = True
        else:
            cut = len(stream) - 1 if stream.endswith(b"\r") else len(stream)
            self._line_start = False
        self._carry = stream[cut:]
        if cut > plen:
            self._emit(stream[:cut], plen)
        return False

    def _emit(self, segment: bytes, plen: int, stuffed: bool = True) -> None:
        if self.discarding:
            return
        if stuffed:
            # Undo dot-stuffing: the first dot of every line (real CRLF lines only).
            segment = segment.replace(b"\r\n.", b"\r\n")
        segment = segment[plen:]
        crlf = segment.count(b"\r\n")
        if segment.count(b"\r") != crlf or segment.count(b"\n") != crlf:
            self.bad_newline = True
            if self.bare_newline == "reject":
                self._chunks = []
                return
            segment = _EOL_RE.sub(b"\r\n", segment)
        self.size += len(segment)
        if self.max_size and self.size > self.max_size:
            self.too_big = True
            self._chunks = []
            return
        self._chunks.append(segment)

    def result(self) -> bytes:
        """The message, once :attr:`done`.

        :raises ~slimta.smtp.MessageTooBig: over ``max_size`` (its ``reply`` is
            ``552 5.3.4``).
        :raises BadDataError: a bare CR or LF under the ``'reject'`` policy.
        """
        if not self.done:
            raise ValueError("The end of the message data was not received")
        if self.too_big:
            raise MessageTooBig()
        if self.bad_newline and self.bare_newline == "reject":
            raise BadDataError()
        return b"".join(self._chunks)


class Command(NamedTuple):
    """One command line: the verb upper-cased, and the argument or ``None``."""

    verb: bytes
    arg: bytes | None


class LineError(NamedTuple):
    """A command line that cannot be taken as a command, and the reply it gets."""

    reply: Reply


def _line_too_long() -> Reply:
    return Reply("500", "5.5.2 Line too long")


def _bad_line() -> Reply:
    return Reply("500", "5.5.2 Syntax error, invalid characters in command")


class ServerInput:
    """The server's receive buffer: command lines, AUTH lines and message data.

    A line ends with CRLF (a bare LF is accepted as well); a line longer than
    ``max_line`` is answered with ``500`` and skipped up to its end, without
    keeping it. A bare CR or a NUL in a command line makes it invalid.
    """

    __slots__ = ("buffer", "_scan", "_skipping")

    def __init__(self) -> None:
        #: Bytes received and not consumed.
        self.buffer = bytearray()
        self._scan = 0
        self._skipping = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        self.buffer += data

    @property
    def pending(self) -> int:
        """How many received bytes wait unconsumed."""
        return len(self.buffer)

    def take(self) -> bytes:
        """Remove and return every unconsumed byte."""
        data = bytes(self.buffer)
        self.buffer.clear()
        self._scan = 0
        return data

    def discard(self) -> int:
        """Drop every unconsumed byte (after STARTTLS). :returns: how many."""
        count = len(self.buffer)
        self.buffer.clear()
        self._scan = 0
        self._skipping = False
        return count

    def partial_line_may_be_auth(self) -> bool:
        """True when the unfinished last line is, or may become, an ``AUTH`` command.

        The rest of such a line is a secret: the next read must not be logged.
        """
        buf = self.buffer
        start = buf.rfind(b"\n") + 1
        partial = bytes(buf[start : start + 16]).lstrip(b" \t").upper()
        if not partial:
            return False
        return partial.startswith(b"AUTH") or b"AUTH".startswith(partial)

    def next_line(self, max_line: int = MAX_COMMAND_LINE_BYTES) -> bytes | LineError | None:
        """The next line without its line end; ``None`` when more bytes are needed.

        :returns: a :class:`LineError` for an over-long line (once, when its end
            arrives or the limit is passed) or one holding a bare CR or NUL.
        """
        buf = self.buffer
        while True:
            end = buf.find(b"\n", self._scan)
            if self._skipping:
                if end < 0:
                    buf.clear()
                    self._scan = 0
                    return None
                del buf[: end + 1]
                self._scan = 0
                self._skipping = False
                continue
            if end < 0:
                if len(buf) > max_line:
                    self._skipping = True
                    buf.clear()
                    self._scan = 0
                    return LineError(_line_too_long())
                self._scan = len(buf)
                return None
            if end + 1 > max_line:
                del buf[: end + 1]
                self._scan = 0
                return LineError(_line_too_long())
            stop = end - 1 if end > 0 and buf[end - 1] == 13 else end
            line = bytes(buf[:stop])
            del buf[: end + 1]
            self._scan = 0
            if b"\r" in line or b"\0" in line:
                return LineError(_bad_line())
            return line

    def next_command(self) -> Command | LineError | None:
        """The next command line, split; ``None`` when more bytes are needed."""
        if not self.buffer:
            return None
        line = self.next_line()
        if line is None or isinstance(line, LineError):
            return line
        return _command(line)

    def feed_command(self, data: bytes) -> Command | LineError | None:
        """:meth:`feed` ``data``, then return :meth:`next_command`.

        The usual case, one whole command line arriving while nothing else
        waits, is split straight from ``data`` without going through the buffer.
        """
        if not self.buffer and len(data) <= MAX_COMMAND_LINE_BYTES and not self._skipping:
            match = _WHOLE_COMMAND_RE.fullmatch(data)
            if match is not None:
                verb, arg = match.groups()
                if arg:
                    arg = arg.strip(b" \t") or None
                return _new_tuple(Command, (verb.upper(), arg or None))
        self.buffer += data
        return self.next_command()


_new_tuple = tuple.__new__
# One whole, well-formed command line: a verb of 1 to 16 letters, then optionally a
# space and an argument without CR, LF or NUL, then CRLF. Anything else (a bad
# line, more than one line, a verb that is not all letters) takes the long way.
_WHOLE_COMMAND_RE = re.compile(rb"([A-Za-z]{1,16})(?: ([^\r\n\0]*))?\r\n")


def _command(line: bytes) -> Command:
    verb, _, arg = line.partition(b" ")
    # 1 to 16 ASCII letters (bytes.isalpha() is ASCII only).
    if not verb.isalpha() or len(verb) > 16:
        return _new_tuple(Command, (b"", line))
    return _new_tuple(Command, (verb.upper(), arg.strip(b" \t") or None))


# -- MAIL / RCPT arguments -------------------------------------------------------

_FROM_RE = re.compile(rb"FROM:[ \t]*<", re.I)
_TO_RE = re.compile(rb"TO:[ \t]*<", re.I)
_CONTROL_RE = re.compile(rb"[\x00-\x1f\x7f]")
_PARAM_RE = re.compile(rb"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]*))?\Z")


#: ``FROM:<addr>`` and ``TO:<addr>`` with nothing else: no space before the path,
#: no parameters, no quoted string, no control character. A line that matches one
#: of these whole gives what :func:`parse_path_argument` gives (the address, no
#: parameters) without the general parse; any other line takes the general parse.
PLAIN_PATH_PATTERNS = {
    "FROM": re.compile(rb'FROM:<([^\x00-\x1f\x7f"<>]*)>', re.I),
    "TO": re.compile(rb'TO:<([^\x00-\x1f\x7f"<>]*)>', re.I),
}


def _find_path_end(arg: bytes, start: int) -> int:
    """Index of the ``>`` closing the path, skipping quoted strings; -1 if none."""
    end = arg.find(b">", start)
    quote = arg.find(b'"', start)
    if quote < 0 or 0 <= end < quote:
        return end  # no quoted string before the first ">"
    i = start
    quoted = False
    length = len(arg)
    while i < length:
        char = arg[i]
        if quoted:
            if char == 92:  # backslash escapes the next character
                i += 2
                continue
            if char == 34:
                quoted = False
        elif char == 34:
            quoted = True
        elif char == 62:
            return i
        i += 1
    return -1


def parse_path_argument(arg: bytes | None, keyword: Literal["FROM", "TO"]) -> tuple[str, bytes]:
    """Split ``FROM:<addr> PARAMS`` (or ``TO:``) into the address and the rest.

    :returns: ``(address, parameter bytes)``; the address is decoded as UTF-8.
    :raises ValueError: malformed, control characters in the address, or not UTF-8.
    """
    if not arg:
        raise ValueError("Missing argument")
    match = (_FROM_RE if keyword == "FROM" else _TO_RE).match(arg)
    if match is None:
        raise ValueError("Malformed path")
    start = match.end()
    end = _find_path_end(arg, start)
    if end < 0:
        raise ValueError("Unterminated path")
    raw = arg[start:end]
    if _CONTROL_RE.search(raw) is not None:
        raise ValueError("Control character in address")
    rest = arg[end + 1 :]
    if rest and rest[:1] not in (b" ", b"\t"):
        raise ValueError("Text after path")
    return raw.decode("utf-8"), rest


def gather_params(rest: bytes) -> dict[bytes, bytes | bool]:
    """``KEY=value`` parameters after a path, keys upper-cased (python-slimta's form).

    A keyword without ``=`` maps to ``True``.

    :raises ValueError: a malformed parameter.
    """
    params: dict[bytes, bytes | bool] = {}
    for word in rest.split():
        match = _PARAM_RE.match(word)
        if match is None:
            raise ValueError("Malformed parameter", word)
        value = match.group(2)
        params[match.group(1).upper()] = True if value is None else value
    return params


def render_extensions(header: str, extensions: dict[str, object]) -> str:
    """The EHLO reply text: ``header`` and one line per extension.

    An extension whose parameter cannot be rendered (its ``str()`` raises
    ``ValueError``, as an AUTH session with no usable mechanism does) is left out.
    """
    lines = [header]
    for name, param in extensions.items():
        if param is None or param is True:
            lines.append(name)
            continue
        try:
            text = str(param)
        except ValueError:
            continue
        lines.append(f"{name} {text}" if text else name)
    return "\r\n".join(lines)


#: Seconds added per failed AUTH attempt on one connection, and the cap.
AUTH_FAILURE_BASE_DELAY = 1.0
AUTH_FAILURE_MAX_DELAY = 8.0


def auth_failure_delay(
    failures: int, base: float = AUTH_FAILURE_BASE_DELAY, cap: float = AUTH_FAILURE_MAX_DELAY
) -> float:
    """Seconds to wait before answering the ``failures``-th failed AUTH (doubling)."""
    if failures <= 0 or base <= 0:
        return 0.0
    return min(cap, base * (2 ** (failures - 1)))
