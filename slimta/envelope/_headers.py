"""The raw header block of a message, kept byte for byte.

:func:`read_block` splits a message into its header block and its body, and
builds the :class:`email.message.Message` that :attr:`Envelope.headers` exposes
*from* the raw lines, one field at a time, without running the email package's
parser or generator over the bytes. The :class:`RawBlock` it returns remembers,
for every field, the exact bytes it came from.

:func:`render` turns a (possibly changed) ``Message`` back into bytes: a field
whose name and value are still the very objects the block was read into is
written as its original bytes; a field that code added or replaced is serialised alone,
through the message's policy. Nothing else is ever re-serialised, so folding,
spacing, long tokens and the order of untouched fields survive (DKIM signatures
and ``List-Unsubscribe`` URLs included).

Line ends inside the header block are made CRLF (a bare CR or LF becomes CRLF,
as the SMTP data path does for the whole message); nothing else changes.
"""

from __future__ import annotations

import copy as _copy
import re
from email.message import Message
from email.policy import SMTP, Policy
from typing import Any

__all__ = [
    "RawBlock",
    "read_block",
    "split_block",
    "all_fields",
    "read_fields",
    "render",
    "fold_field",
    "copy_message",
]

# The end of the header block: an empty line (blanks allowed on it), at the
# very start of the data or after a line break.
# Searched for from a literal LF, which the regex engine scans for quickly.
_EMPTY_LINE_RE = re.compile(rb"\n[ \t]*\r?\n")
_FIRST_LINE_EMPTY_RE = re.compile(rb"[ \t]*\r?\n")

# What the email package accepts as a header line (a field, a continuation, or a
# Unix "From " line); anything else ends the header block and starts the body.
_HEADER_LINE_RE = re.compile(rb"(?:From |[\x21-\x39\x3b-\x7e]*:|[\t ])")

# One line with its terminator (CRLF, bare CR or bare LF), or a last line without one.
_LINE_RE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")

_CRLF = b"\r\n"


class RawBlock:
    """The header block as received, and the fields read from it.

    :ivar message: the ``Message`` the fields were read into.
    :ivar items: the message's ``(name, value)`` items at parse time; holding
        them keeps their identities valid for :func:`render`.
    :ivar raws: for each item, its bytes (first line, continuation lines, and any
        unreadable lines that followed it), CRLF line ends.
    :ivar lead: unreadable lines before the first field (a Unix ``From `` line,
        a stray continuation line).
    :ivar separator: the empty line that ended the block, always ``b'\\r\\n'``
        (``b''`` when the data had none).
    :ivar data: the whole block plus the separator: what an untouched message
        flattens to.
    """

    __slots__ = ("message", "items", "raws", "lead", "separator", "data")

    def __init__(
        self,
        message: Message,
        items: list[Any],
        raws: list[bytes],
        lead: bytes,
        separator: bytes,
    ) -> None:
        self.message = message
        self.items = items
        self.raws = raws
        self.lead = lead
        self.separator = separator
        self.data = lead + b"".join(raws) + separator

    def for_copy(self, message: Message) -> RawBlock:
        """The same block, read into ``message`` (a copy of :attr:`message`)."""
        new = RawBlock.__new__(RawBlock)
        new.message = message
        new.items = self.items  # never changed after reading: share it
        new.raws = self.raws
        new.lead = self.lead
        new.separator = self.separator
        new.data = self.data
        return new

    def untouched(self, message: Message | None) -> bool:
        """Whether ``message`` is still exactly the block that was read."""
        return message is self.message and message._headers == self.items  # type: ignore[attr-defined]


def _split_lines(head: bytes) -> list[bytes]:
    """``head``'s lines, each with its own line end, as received."""
    if b"\r" not in head or head.count(b"\r") == head.count(b"\r\n") == head.count(b"\n"):
        lines = head.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
            return [line + b"\n" for line in lines]
        last = lines.pop()
        return [line + b"\n" for line in lines] + [last]
    return _LINE_RE.findall(head)


def _content(line: bytes) -> bytes:
    """A line without its line end."""
    if line.endswith(b"\n"):
        return line[:-2] if line.endswith(b"\r\n") else line[:-1]
    if line.endswith(b"\r"):
        return line[:-1]
    return line


def _crlf(line: bytes) -> bytes:
    """A line with its line end made CRLF (a last line without one stays so)."""
    if line.endswith(b"\r\n"):
        return line
    if line.endswith((b"\n", b"\r")):
        return line[:-1] + _CRLF
    return line


def _field_item(policy: Policy, lines: list[bytes]) -> tuple[str, Any]:
    text = [line.decode("ascii", "surrogateescape") for line in lines]
    return policy.header_source_parse(text)


# One field of a CRLF-only block: its first line and any continuation lines.
_FIELD_RE = re.compile(rb"[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")
# A field of a CRLF-only block, as text at a line start: its name, and its value
# without the blanks after the colon and without the final CRLF.
_NAMED_FIELD_RE = re.compile(
    r"^([\x21-\x39\x3b-\x7e]+):[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)\r\n", re.M
)


def _read_crlf_fields(
    head: bytes, policy: Policy
) -> tuple[Message, list[tuple[str, str]], list[bytes]] | None:
    """The common case, done quickly: CRLF line ends and nothing but fields.

    Returns ``None`` for anything else, which :func:`read_block` then reads
    line by line. The items are what ``policy.header_source_parse`` makes of
    each field's lines. Two passes of the regex engine and no Python loop per
    field: one splits the raw bytes into fields, the other reads each field's
    name and value from the decoded text (ASCII with surrogate escapes maps
    each byte to one character, so both see the same lines).
    """
    if not head.endswith(b"\r\n"):
        return None
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        return None
    raws = _FIELD_RE.findall(head)
    # Every match of _NAMED_FIELD_RE starts a field of ``raws`` (a line start
    # that is not one begins with a blank, which no name does) and ends where
    # that field ends; so equal counts mean every field has a name.
    items: list[tuple[str, str]] = _NAMED_FIELD_RE.findall(
        head.decode("ascii", "surrogateescape")
    )
    if len(items) != len(raws):
        return None
    message: Message = policy.message_factory(policy=policy)  # type: ignore[misc]
    message._headers = items  # type: ignore[attr-defined]
    return message, list(items), raws


# A block of nothing but named fields and their continuation lines, CRLF line
# ends only, is exactly what _read_crlf_fields() reads (it needs at least one
# field). all_fields() checks it without walking every byte through the regex
# engine: the line ends are counted, and only the line starts are matched.
_FIELD_START_RE = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")
#: A line start inside the block that is neither a field nor a continuation.
_BAD_LINE_START_RE = re.compile(rb"\r\n(?![ \t]|[\x21-\x39\x3b-\x7e]+:|\Z)")


def split_block(data: bytes) -> tuple[bytes, bytes, int]:
    """Where the header block of ``data`` ends.

    :returns: ``(head, separator, body_start)``: the block with the line end of
        its last line, the empty line that ended it (``b''`` if none), and the
        index of the body in ``data``.
    """
    first = _FIRST_LINE_EMPTY_RE.match(data)
    if first is not None:
        return b"", first.group(0), first.end()
    match = _EMPTY_LINE_RE.search(data)
    if match is None:
        return data, b"", len(data)
    # The block keeps the line end of its last line; the empty line after it
    # is the separator.
    end = match.start() + 1
    return data[:end], data[end : match.end()], match.end()


def all_fields(head: bytes) -> bool:
    """Whether ``head`` is one or more well-formed fields with CRLF line ends.

    For such a block :func:`read_block` keeps every line as a field and the
    body starts right after the block, so reading the fields can wait until
    they are asked for (:func:`read_fields`).
    """
    if not head.endswith(b"\r\n"):
        return False
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        return False  # a bare CR or LF
    return _FIELD_START_RE.match(head) is not None and _BAD_LINE_START_RE.search(head) is None


def read_fields(head: bytes, separator: bytes, policy: Policy = SMTP) -> RawBlock:
    """The :class:`RawBlock` of a block for which :func:`all_fields` is true.

    :param separator: the empty line that ended the block, or ``b''``.
    """
    fast = _read_crlf_fields(head, policy)
    if fast is None:  # not all fields after all: read it line by line
        block, _ = read_block(head + (_CRLF if separator else b""), policy)
        return block
    return RawBlock(fast[0], fast[1], fast[2], b"", _CRLF if separator else b"")


def read_block(data: bytes, policy: Policy = SMTP) -> tuple[RawBlock, bytes]:
    """Split ``data`` into its header block and its body.

    The block ends at the first empty line. As with the email package, a line
    that is neither a field, a continuation nor a Unix ``From`` line ends the
    fields early; it and everything after it belong to the body.

    :returns: the :class:`RawBlock` and the body bytes.
    """
    head, separator, body_start = split_block(data)
    fast = _read_crlf_fields(head, policy)
    if fast is not None:
        return RawBlock(fast[0], fast[1], fast[2], b"", _CRLF if separator else b""), data[
            body_start:
        ]
    lines = _split_lines(head) if head else []

    cut = len(lines)
    for index, line in enumerate(lines):
        if not _HEADER_LINE_RE.match(line):
            cut = index
            break
    # A "From " line as the last header line is the body's first line.
    if cut > 1 and lines[cut - 1].startswith(b"From "):
        cut -= 1

    message: Message = policy.message_factory(policy=policy)  # type: ignore[misc]
    headers = message._headers  # type: ignore[attr-defined]
    raws: list[bytes] = []
    lead: list[bytes] = []
    field: list[bytes] = []  # the current field's lines, without line ends
    field_raw: list[bytes] = []  # the current field's lines, CRLF line ends

    def finish() -> None:
        if field:
            headers.append(_field_item(policy, [line + b"\r\n" for line in field]))
            raws.append(b"".join(field_raw))
            field.clear()
            field_raw.clear()

    def junk(raw: bytes) -> None:
        # Kept in place, but not a field: it travels with the field before it.
        if raws:
            raws[-1] += raw
        else:
            lead.append(raw)

    for index in range(cut):
        line = lines[index]
        raw = _crlf(line)
        if line[:1] in (b" ", b"\t"):
            if field:
                field.append(_content(line))
                field_raw.append(raw)
            else:
                junk(raw)
            continue
        finish()
        if line.startswith(b"From "):
            if index == 0:
                message.set_unixfrom(_content(line).decode("ascii", "surrogateescape"))
            junk(raw)
            continue
        if line.startswith(b":"):
            junk(raw)
            continue
        field.append(_content(line))
        field_raw.append(raw)
    finish()

    if cut < len(lines):
        # The fields stopped early: the rest of the block, its empty line and
        # the body are all body, exactly as received.
        body = b"".join(lines[cut:]) + data[len(head) :]
        separator = b""
    else:
        body = data[body_start:]
    # The empty line is written as a plain CRLF even when it held blanks, so the
    # next hop splits headers from body exactly where we did (a line of blanks
    # could otherwise be read as a continuation line).
    block = RawBlock(message, list(headers), raws, b"".join(lead), _CRLF if separator else b"")
    return block, body


def copy_message(message: Message) -> Message:
    """An independent copy of a header ``Message``.

    The field list is copied; its items (a name and a value string or header
    object) are immutable and shared, which is what lets :func:`render` still
    recognise untouched fields in the copy. A message carrying a parsed
    payload is deep-copied.
    """
    policy = message.policy
    if message._payload is not None and not isinstance(message._payload, str):  # type: ignore[attr-defined]
        return _copy.deepcopy(message, {id(policy): policy})
    new = _copy.copy(message)
    new._headers = list(message._headers)  # type: ignore[attr-defined]
    new.defects = list(message.defects)
    return new


_FOLD_AT_RE = re.compile(r"(?=[ \t])")
_MAX_LINE = 78


def _fold_plain(name: str, value: str) -> bytes:
    """``name: value`` folded before blanks to lines of at most 78 characters
    where the words allow (RFC 5322 §2.2.3); nothing else changes."""
    line = f"{name}: {value}"
    if len(line) <= _MAX_LINE:
        return line.encode("ascii") + _CRLF
    lines: list[str] = []
    current = ""
    for segment in _FOLD_AT_RE.split(line):
        if (
            current
            and len(current) + len(segment) > _MAX_LINE
            and segment.strip(" \t")
            and len(current) > len(name) + 1
        ):
            lines.append(current)
            current = segment
        else:
            current += segment
    lines.append(current)
    return "\r\n".join(lines).encode("ascii") + _CRLF


def _plain(value: Any) -> bool:
    return type(value) is str and value.isascii() and value.replace("\t", " ").isprintable()


def fold_field(policy: Policy, name: str, value: Any) -> bytes:
    """Serialise one field that code set, CRLF line ends. Never raises.

    A plain ASCII string value (what :meth:`Envelope.prepend_header` stores) is
    folded at its blanks and otherwise written as given; anything else goes
    through ``policy.fold_binary``.
    """
    if _plain(value) and _plain(name):
        return _fold_plain(name, value)
    try:
        data = policy.fold_binary(name, value)
    except Exception:
        text = "".join(str(value).splitlines())
        data = f"{name}: {text}\n".encode("utf-8", "surrogateescape")
    if b"\r" in data or not data.endswith(b"\n"):
        data = b"".join(_crlf(line) for line in _LINE_RE.findall(data))
        if not data.endswith(_CRLF):
            data += _CRLF
    elif _CRLF not in data:
        data = data.replace(b"\n", _CRLF)
    return data


def render(message: Message, block: RawBlock | None, has_body: bool) -> bytes:
    """The header block for ``message``, closing empty line included.

    Fields that are still those of ``block`` are written as received; the
    others are serialised one by one with :func:`fold_field`.
    """
    policy = message.policy
    items = message._headers  # type: ignore[attr-defined]
    # An item is recognised by the identity of its name and value objects, not
    # of the tuple: ``del message[name]`` rebuilds the tuples of every field it
    # keeps, from the same objects.
    known: dict[tuple[int, int], list[bytes]] = {}
    if block is not None and block.message is message:
        for (name, value), raw in zip(block.items, block.raws, strict=True):
            known.setdefault((id(name), id(value)), []).append(raw)
        out = [block.lead] if block.lead else []
        separator = block.separator
        if not separator and not block.items and has_body and items:
            # Fields added to a message that had none: they need the empty line.
            separator = _CRLF
    else:
        out = []
        separator = _CRLF
    for name, value in items:
        raws = known.get((id(name), id(value)))
        raw = raws.pop(0) if raws else fold_field(policy, name, value)
        if out and not out[-1].endswith(b"\n"):
            out[-1] += _CRLF
        out.append(raw)
    if separator and out and not out[-1].endswith(b"\n"):
        out[-1] += _CRLF
    out.append(separator)
    return b"".join(out)
