"""Ask a SpamAssassin ``spamd`` for its verdict on each queued message.

:class:`SpamAssassin` is a :class:`~slimta.policy.QueuePolicy`. It sends the
message to ``spamd`` with the ``SYMBOLS`` command of the spamc protocol and adds
the verdict as new header lines at the top of the message:

* ``X-Spam-Status: YES`` or ``X-Spam-Status: NO``;
* ``X-Spam-Symbols: RULE_A, RULE_B`` (the rules that hit), for spam only.

``X-Spam-Status`` and ``X-Spam-Symbols`` fields already in the message are
removed first, so a sender cannot pass a forged verdict on. Every other byte
of the message is kept. A ``spamd`` that cannot be reached or answers
garbage raises :class:`SpamAssassinError` (the message is then not queued,
and the edge answers with a temporary failure).
"""

from __future__ import annotations

import re
from typing import Any

import gevent
from gevent.socket import SHUT_WR, create_connection

from slimta import logging
from slimta.envelope import Envelope
from slimta.policy import PolicyError, QueuePolicy

__all__ = ["SpamAssassinError", "SpamAssassin"]

log = logging.getSocketLogger(__name__)

#: The largest ``spamd`` response read, in bytes (a SYMBOLS answer is small).
MAX_RESPONSE_BYTES = 65536
#: Seconds for the whole exchange when no ``timeout`` is given.
DEFAULT_TIMEOUT_SECONDS = 60.0

_STATUS_LINE_RE = re.compile(rb"^SPAMD/[0-9.]+ +0 +EX_OK$")
_SPAM_HEADER_RE = re.compile(rb"^Spam: *(\w+)", re.MULTILINE | re.IGNORECASE)
_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")
_SYMBOL_RE = re.compile(rb"[^\s,]+")
_VERDICT_HEADERS = ("X-Spam-Status", "X-Spam-Symbols")


class SpamAssassinError(PolicyError):
    """``spamd`` could not be asked, or answered with an error or garbage.

    It says nothing about the message being spam or not.
    """

    def __init__(self, detail: str | None = None) -> None:
        message = "Error scanning message"
        super().__init__(f"{message}: {detail}" if detail else message)


def build_request(header_data: bytes, body_data: bytes, user: bytes,
                  version: bytes) -> bytes:
    """The spamc ``SYMBOLS`` request for a message (headers and body, sent as they are)."""
    length = len(header_data) + len(body_data)
    return b"".join((
        b"SYMBOLS SPAMC/", version, b"\r\n",
        b"Content-length: ", str(length).encode("ascii"), b"\r\n",
        b"User: ", user, b"\r\n\r\n",
        header_data, body_data,
    ))


def parse_response(response: bytes) -> tuple[bool, list[str]]:
    """Read a ``spamd`` answer to ``SYMBOLS``.

    :returns: ``(is spam, [symbol, ...])``.
    :raises SpamAssassinError: an error status or a malformed answer.
    """
    end = _HEAD_END_RE.search(response)
    if end is None:
        raise SpamAssassinError("incomplete response from spamd")
    head, body = response[:end.start()], response[end.end():]
    status, _, headers = head.partition(b"\n")
    status = status.rstrip(b"\r")
    if not _STATUS_LINE_RE.match(status):
        raise SpamAssassinError(f"spamd answered {status[:100]!r}")
    match = _SPAM_HEADER_RE.search(headers)
    if match is None:
        raise SpamAssassinError("no Spam header in the spamd response")
    spammy = match.group(1).lower() in (b"true", b"yes")
    symbols = [s.decode("ascii", "replace") for s in _SYMBOL_RE.findall(body)]
    return spammy, symbols


class SpamAssassin(QueuePolicy):
    """Scans messages with ``spamd`` and records its verdict in their headers.

    :param address: ``(host, port)`` of ``spamd``; default ``('127.0.0.1', 783)``.
    :param timeout: seconds for one whole scan (connect, send, answer);
        default :data:`DEFAULT_TIMEOUT_SECONDS`.
    :param socket_creator: called with ``address`` to connect, like
        :func:`gevent.socket.create_connection` (the default).
    """

    #: The ``User`` sent to ``spamd`` (whose per-user settings apply).
    SPAMC_USER = b"slimta"
    #: The spamc protocol version sent.
    SPAMC_PROTOCOL_VER = b"1.1"

    def __init__(self, address: Any = None, timeout: float | None = None,
                 socket_creator: Any = None) -> None:
        self.address = address or ("127.0.0.1", 783)
        self.timeout = timeout
        self._socket_creator = socket_creator or create_connection

    def _exchange(self, sock: Any, request: bytes) -> bytes:
        sock.sendall(request)
        log.send(sock, request)
        sock.shutdown(SHUT_WR)
        log.shutdown(sock, SHUT_WR)
        chunks: list[bytes] = []
        total = 0
        while True:
            data = sock.recv(16384)
            log.recv(sock, data)
            if not data:
                return b"".join(chunks)
            chunks.append(data)
            total += len(data)
            if total > MAX_RESPONSE_BYTES:
                raise SpamAssassinError("spamd response too large")

    def scan(self, message: bytes | Envelope) -> tuple[bool, list[str]]:
        """Ask ``spamd`` about ``message`` without changing it.

        :param message: the message bytes, or an :class:`~slimta.envelope.Envelope`.
        :returns: ``(is spam, [symbol, ...])``.
        :raises SpamAssassinError: ``spamd`` could not be asked or answered badly.
        """
        if isinstance(message, Envelope):
            header_data, body_data = message.flatten()
        else:
            header_data, body_data = b"", bytes(message)
        request = build_request(header_data, body_data, self.SPAMC_USER, self.SPAMC_PROTOCOL_VER)
        timeout = self.timeout if self.timeout is not None else DEFAULT_TIMEOUT_SECONDS
        sock = None
        try:
            with gevent.Timeout(timeout, SpamAssassinError("timed out waiting for spamd")):
                sock = self._socket_creator(self.address)
                log.connect(sock, self.address)
                response = self._exchange(sock, request)
        except OSError as exc:
            raise SpamAssassinError(str(exc)) from exc
        finally:
            if sock is not None:
                log.close(sock)
                sock.close()
        return parse_response(response)

    def apply(self, envelope: Envelope) -> None:
        """Scan ``envelope`` and add the verdict headers at its top.

        :raises SpamAssassinError: see :meth:`scan`.
        """
        spammy, symbols = self.scan(envelope)
        headers = envelope.headers
        if headers is not None:
            for name in _VERDICT_HEADERS:
                if name in headers:
                    del headers[name]
        if spammy:
            envelope.prepend_header("X-Spam-Symbols", ", ".join(symbols))
        envelope.prepend_header("X-Spam-Status", "YES" if spammy else "NO")
