"""The real-world message corpus (``test/data/corpus``) and what a relay must make of it.

Issue 12's contract, as functions a test can compare against:

* :func:`expected_flatten`: what ``b''.join(env.flatten())`` must be after
  ``env.parse(data)``: the header block with bare CR and bare LF made CRLF, the body
  exactly as given.
* :func:`expected_wire`: what the next hop must hold once the wire's dot-stuffing is
  undone: every bare CR/LF made CRLF (the SMTP data sender does that to the body too),
  plus the CRLF the end-of-data marker adds when the data does not end in one.
* :class:`HeaderModel`: the header block as a list of raw fields (first line plus its
  continuation lines), so a test can apply ``prepend_header``/``replace_header``/
  ``del``/``[]=``/``add_header`` to the model and get the exact bytes the envelope
  must produce: changed fields serialised, every other field byte for byte.
* :func:`strip_dovecot_trace`: the fields Dovecot's LMTP server puts in front of a
  stored message, checked and removed.

Nothing here goes through the ``email`` package except :func:`reference_headers`,
which is the python-slimta way of reading header values that ``Envelope.headers``
must keep.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import SMTP

__all__ = [
    "CORPUS_DIR",
    "REJECTED",
    "HeaderModel",
    "corpus_names",
    "expected_flatten",
    "expected_wire",
    "load",
    "normalize_eol",
    "reference_headers",
    "split_header_block",
    "strip_dovecot_trace",
    "well_formed_names",
]

CORPUS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                          "corpus")

#: Corpus files whose header block CPython's email package rejects (it stops at the bad
#: line, or flags the first line); relays must still carry them as given.
REJECTED = frozenset(
    {
        "15-bad-no-colon.eml",
        "16-bad-header-names.eml",
        "17-bad-leading-continuation.eml",
    }
)

# The first empty line: CRLF or LF, blanks allowed on it, at the very start of the data
# or right after a line feed. A bare CR does not end a line for this purpose.
_HEADER_END_RE = re.compile(rb"(?:^|(?<=\n))[ \t]*\r?\n")
_EOL_RE = re.compile(rb"\r\n|\r|\n")


def corpus_names() -> list[str]:
    """Every ``*.eml`` file in the corpus, sorted."""
    return sorted(name for name in os.listdir(CORPUS_DIR) if name.endswith(".eml"))


def well_formed_names() -> list[str]:
    """The corpus files whose header block the email package parses completely."""
    return [name for name in corpus_names() if name not in REJECTED]


def load(name: str) -> bytes:
    """The bytes of corpus file ``name``."""
    with open(os.path.join(CORPUS_DIR, name), "rb") as handle:
        return handle.read()


def normalize_eol(data: bytes) -> bytes:
    """Every CRLF, bare CR and bare LF made CRLF."""
    return _EOL_RE.sub(b"\r\n", data)


def split_header_block(data: bytes) -> tuple[bytes, bytes, bytes]:
    """``(fields, blank_line, body)``: the header fields, the empty line that ends
    them (``b''`` when there is none), and everything after it."""
    match = _HEADER_END_RE.search(data)
    if match is None:
        return data, b"", b""
    return data[: match.start()], match.group(0), data[match.end() :]


def expected_flatten(data: bytes) -> bytes:
    """What ``b''.join(flatten())`` must return after ``parse(data)``, untouched."""
    fields, blank, body = split_header_block(data)
    return normalize_eol(fields + blank) + body


def expected_wire(data: bytes) -> bytes:
    """What an SMTP/LMTP receiver must hold for ``data`` (dot-stuffing undone)."""
    wire = normalize_eol(data)
    if wire and not wire.endswith(b"\r\n"):
        wire += b"\r\n"  # the end-of-data marker is CRLF . CRLF after a partial line
    return wire


def reference_headers(data: bytes) -> Message:
    """The header block parsed the way python-slimta parsed it (SMTP policy)."""
    fields, blank, _ = split_header_block(data)
    return BytesParser(policy=SMTP).parsebytes(normalize_eol(fields + blank), headersonly=True)


@dataclass
class HeaderModel:
    """The header block of a corpus message as raw fields, for predicting API edits.

    Every field keeps its exact bytes (after line-end normalisation, which the
    contract allows in the header block); a field the test changes is replaced by
    ``Name: value\\r\\n``, which is how the SMTP policy serialises a short value.
    """

    fields: list[bytes]
    blank: bytes
    body: bytes
    #: Continuation lines before the first field (a header cut off above them).
    #: They stay first: a field prepended above them would swallow them as its
    #: own continuation, changing its value.
    lead: bytes = b""

    @classmethod
    def from_message(cls, data: bytes) -> HeaderModel:
        raw_fields, blank, body = split_header_block(data)
        fields: list[bytes] = []
        lead = b""
        for line in normalize_eol(raw_fields).splitlines(keepends=True):
            if line[:1] in (b" ", b"\t"):
                if fields:
                    fields[-1] += line
                else:
                    lead += line
            else:
                fields.append(line)
        return cls(fields=fields, blank=normalize_eol(blank), body=body, lead=lead)

    @staticmethod
    def name_of(raw: bytes) -> str:
        return raw.split(b":", 1)[0].decode("utf-8", "surrogateescape")

    @staticmethod
    def line(name: str, value: str) -> bytes:
        return f"{name}: {value}\r\n".encode()

    def names(self) -> list[str]:
        return [self.name_of(raw) for raw in self.fields]

    def prepend(self, name: str, value: str) -> None:
        self.fields.insert(0, self.line(name, value))

    def replace(self, name: str, value: str) -> None:
        """``Message.replace_header``: the first match, in place, keeping its name."""
        for index, raw in enumerate(self.fields):
            current = self.name_of(raw)
            if current.lower() == name.lower():
                self.fields[index] = self.line(current, value)
                return
        raise KeyError(name)

    def delete(self, name: str) -> None:
        """``del Message[name]``: every field of that name."""
        self.fields = [raw for raw in self.fields if self.name_of(raw).lower() != name.lower()]

    def append(self, name: str, value: str) -> None:
        """``Message[name] = value`` and ``add_header``: a new last field."""
        self.fields.append(self.line(name, value))

    def flat(self) -> bytes:
        return self.lead + b"".join(self.fields) + self.blank + self.body


def strip_dovecot_trace(stored: bytes, expected: bytes, sender: str, recipient: str) -> bytes:
    """Check and remove the fields Dovecot's LMTP server adds in front of a message.

    ``stored`` is the Maildir file (LF line ends), ``expected`` what the relay sent,
    also with LF line ends. Dovecot writes ``Return-Path: <sender>``, ``Delivered-To:
    recipient`` and one ``Received: from ... by ... with LMTP ... for <recipient>;
    date`` field, and nothing else, at the very top. Returns the rest of ``stored``
    (which the caller compares with ``expected``); raises ``AssertionError`` if the
    prefix is not exactly those three fields.
    """
    if not stored.endswith(expected):
        # Let the caller's comparison show the difference.
        return stored
    prefix = stored[: len(stored) - len(expected)]
    lines = prefix.split(b"\n")
    assert lines[-1] == b"", f"dovecot prefix does not end a line: {prefix!r}"
    lines = lines[:-1]
    assert lines[0] == f"Return-Path: <{sender}>".encode(), prefix
    assert lines[1] == f"Delivered-To: {recipient}".encode(), prefix
    assert lines[2].startswith(b"Received: from "), prefix
    assert all(line[:1] in (b" ", b"\t") for line in lines[3:]), prefix
    received = b" ".join(line.strip() for line in lines[2:])
    assert b"with LMTP" in received, prefix
    assert f"for <{recipient}>;".encode() in received, prefix
    return stored[len(prefix) :]
