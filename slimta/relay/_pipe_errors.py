"""The relay errors :mod:`slimta.relay.pipe` raises, with replies made from program output.

Pure functions, no I/O: each builds a :class:`~slimta.relay.PermanentRelayError`
or :class:`~slimta.relay.TransientRelayError` whose reply text is bounded and
free of control characters.
"""

from __future__ import annotations

import re
from typing import NoReturn

from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.smtp.reply import Reply

__all__ = [
    "MAX_REPLY_TEXT_CHARS",
    "as_text",
    "reply_text",
    "permanent",
    "transient",
    "timeout_error",
    "internal_error",
    "config_error",
    "refused_macro",
    "lda_failure",
]

#: The most characters of program output put into a reply's text.
MAX_REPLY_TEXT_CHARS = 512

#: sysexits.h ``EX_NOUSER`` and ``EX_NOHOST``, given their RFC 3463 status.
_SYSEXIT_ESC = {67: "5.1.1", 68: "5.1.2"}

_CONTROL_RUN_RE = re.compile(r"[\x00-\x20\x7f]+")
_ESC_TEXT_RE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}\s")


def as_text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def reply_text(text: str) -> str:
    """Program output made fit for one reply line: no controls, bounded length."""
    return _CONTROL_RUN_RE.sub(" ", text).strip()[:MAX_REPLY_TEXT_CHARS]


def permanent(text: str, esc: str | None = None) -> PermanentRelayError:
    message = reply_text(text)
    if esc and not _ESC_TEXT_RE.match(message + " "):
        message = f"{esc} {message}"
    return PermanentRelayError(text, Reply("550", message))


def transient(text: str, esc: str | None = None) -> TransientRelayError:
    message = reply_text(text)
    if esc:
        message = f"{esc} {message}"
    return TransientRelayError(text, Reply("450", message))


def timeout_error() -> TransientRelayError:
    return TransientRelayError("Delivery timed out", Reply("450", "4.4.2 Delivery timed out"))


def internal_error(detail: str) -> TransientRelayError:
    return TransientRelayError(detail, Reply("450", "4.3.0 " + reply_text(detail)))


def config_error(detail: str) -> TransientRelayError:
    # RFC 3463 X.3.5 "System incorrectly configured": retried once fixed.
    return TransientRelayError(detail, Reply("451", "4.3.5 " + reply_text(detail)))


def refused_macro(name: str, why: str) -> PermanentRelayError:
    if name == "sender":
        code, esc, what = "501", "5.1.7", "Sender address"
    elif name == "recipient":
        code, esc, what = "501", "5.1.3", "Recipient address"
    else:
        code, esc, what = "501", "5.5.4", f"The {name} value"
    detail = f"{what} refused by the delivery program's policy: {why}"
    return PermanentRelayError(detail, Reply(code, f"{esc} {detail}"))


def lda_failure(status: int, text: str, temp_fail: int) -> NoReturn:
    if status < 0:
        raise transient(text, "4.3.0")
    if status == temp_fail:
        raise transient(text)
    raise permanent(text, _SYSEXIT_ESC.get(status))
