"""The one envelope builder the tests share.

Every test that needs a message to relay, queue or bounce builds it here, so
the defaults (sender, recipient, headers, body) live in one place. A module that
needs other defaults binds them once with :func:`functools.partial`, for example
``make_envelope = partial(envelopes.make_envelope, data=MESSAGE)``; it does not
write its own builder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from slimta.envelope import Envelope

__all__ = [
    "DEFAULT_BODY",
    "DEFAULT_HEADERS",
    "DEFAULT_RCPT",
    "DEFAULT_SENDER",
    "make_envelope",
    "record_splits",
]

#: Envelope sender used when a test does not name one.
DEFAULT_SENDER = "sender@example.test"
#: The single recipient used when a test names none.
DEFAULT_RCPT = "rcpt@example.test"
#: Header block (CRLF-terminated lines, without the blank separator line).
DEFAULT_HEADERS = b"Subject: test\r\n"
#: Message body (CRLF line endings).
DEFAULT_BODY = b"Hello there.\r\n"


def make_envelope(
    *,
    sender: str | None = DEFAULT_SENDER,
    rcpts: Sequence[str] = (DEFAULT_RCPT,),
    headers: bytes = DEFAULT_HEADERS,
    body: bytes = DEFAULT_BODY,
    data: bytes | None = None,
    timestamp: float | None = None,
    client: dict[str, Any] | None = None,
    receiver: str | None = None,
) -> Envelope:
    """Build a parsed :class:`~slimta.envelope.Envelope`.

    :param sender: The envelope sender; ``None`` and ``""`` are kept as given
        (both mean the null reverse-path).
    :param rcpts: The recipients, in order (an empty sequence is kept: an
        envelope with no recipients).
    :param headers: The header block, used when ``data`` is not given.
    :param body: The body, used when ``data`` is not given.
    :param data: The whole raw message (headers, blank line, body); it overrides
        ``headers`` and ``body``.
    :param timestamp: Sets :attr:`Envelope.timestamp` when given.
    :param client: Sets :attr:`Envelope.client` to a copy of it when given.
    :param receiver: Sets :attr:`Envelope.receiver` when given.
    :returns: The envelope, with its headers and body parsed from the raw message.
    """
    env = Envelope(sender, list(rcpts))
    env.parse(data if data is not None else headers + b"\r\n" + body)
    if timestamp is not None:
        env.timestamp = timestamp
    if client is not None:
        env.client = dict(client)  # a copy: partial() shares one default dict
    if receiver is not None:
        env.receiver = receiver
    return env


def record_splits(monkeypatch: Any) -> list[bytes]:
    """Record every split of raw bytes into header block and body, in order.

    ``monkeypatch`` is pytest's fixture; the list fills as envelopes split.
    """
    import slimta.envelope as envelope_module

    seen: list[bytes] = []
    real = envelope_module.split_block

    def recording(data: bytes) -> tuple[bytes, bytes, int]:
        seen.append(data)
        return real(data)

    monkeypatch.setattr(envelope_module, "split_block", recording)
    return seen

