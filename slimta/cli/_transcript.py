"""``slimta-relay --transcript``: print the protocol dialogue as it happens.

Lines the client writes are printed as ``C: ...`` and lines the server sends
as ``S: ...``; remarks of our own (connected, TLS started, closed) start with
``*``. Everything goes to one text stream, normally standard error.

Everything comes from the relays' public ``trace`` hooks:

* SMTP and LMTP: :data:`slimta.smtp.client.WireTrace` events, from the
  ``trace`` keyword of the relay clients (the bytes inside TLS, AUTH secrets
  already masked by the client);
* HTTP: the same events, from :class:`~slimta.relay.http.HttpRelay`'s ``trace``;
* local programs: :data:`slimta.relay.pipe.ProcessTrace` events.

Only the first :data:`MAX_BODY_LINES` lines of each message are shown.
"""

from __future__ import annotations

import re
from typing import TextIO

from slimta.smtp.client import WireTrace
from slimta.smtp.client import mask_secret as _mask_secret

__all__ = ["Transcript", "mask_secret"]

#: Lines of message data shown per message; the rest are counted.
MAX_BODY_LINES = 12

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _text(line: bytes) -> str:
    text = line.decode("utf-8", "replace")
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def mask_secret(line: str) -> str:
    """Hide a secret line: ``AUTH PLAIN <b64>`` keeps the mechanism, others go whole.

    The rule is :func:`slimta.smtp.client.mask_secret`'s, which masks the
    lines before the transcript sees them.
    """
    return _mask_secret(line.encode("utf-8", "surrogateescape")).decode("utf-8", "replace")


class Transcript:
    """Where the dialogue is written.

    :param out: the text stream to write to.
    :param numbered: prefix every line with ``[n]``, the connection number
        (useful when several connections talk at once).
    """

    def __init__(self, out: TextIO, numbered: bool = False) -> None:
        self.out = out
        self.numbered = numbered
        self._connections = 0

    def channel(self, http: bool = False) -> Channel:
        """A new connection's view of the transcript."""
        self._connections += 1
        prefix = f"[{self._connections}] " if self.numbered else ""
        return Channel(self, prefix, http)

    def write(self, line: str) -> None:
        """Write one finished line."""
        self.out.write(line + "\n")
        self.out.flush()

    def smtp_trace(self) -> WireTrace:
        """A new SMTP or LMTP connection's trace callback (the relays' ``trace`` hook)."""
        return _WireEcho(self.channel())

    def http_trace(self) -> WireTrace:
        """A new HTTP connection's trace callback."""
        return _WireEcho(self.channel(http=True))

    def process_trace(self, pid: int, event: str, data: bytes) -> None:
        """The pipe relays' ``trace``: one remark per program event."""
        if event == "run":
            self.write(f"* [pid {pid}] run: {_text(data)}")
        elif event in ("stdout", "stderr"):
            for line in data.decode("utf-8", "replace").rstrip().splitlines():
                self.write(f"* [pid {pid}] {event}: {line}")
        elif event == "exit":
            self.write(f"* [pid {pid}] exit status {_text(data)}")


class Channel:
    """Turns one connection's bytes into ``C:``/``S:`` lines.

    :param transcript: where the lines go.
    :param prefix: put before every line.
    :param http: the client side speaks HTTP (request head, then a body of
        ``Content-Length`` bytes) rather than SMTP (a body between ``DATA`` and ``.``).
    """

    def __init__(self, transcript: Transcript, prefix: str, http: bool = False) -> None:
        self.transcript = transcript
        self.prefix = prefix
        self.http = http
        self._partial = {"C": b"", "S": b""}
        self._in_body = False
        self._body_lines = 0
        self._body_left = 0  # HTTP: bytes of request body still to come

    # -- input -----------------------------------------------------------------
    def note(self, text: str) -> None:
        """Write a remark of our own."""
        self.transcript.write(f"{self.prefix}* {text}")

    def sent(self, data: bytes) -> None:
        """The client wrote ``data`` (secret lines arrive masked)."""
        if self.http and self._in_body:
            data = self._http_body(data)
        for line in self._lines("C", data):
            self._client_line(line)

    def received(self, data: bytes) -> None:
        """The server sent ``data``."""
        for line in self._lines("S", data):
            self._emit("S", _text(line))

    def closed(self, why: str = "connection closed") -> None:
        """The connection ended: print any unfinished lines, then ``why``."""
        self._flush("C")
        self._flush("S")
        self.note(why)

    # -- lines -----------------------------------------------------------------
    def _lines(self, side: str, data: bytes) -> list[bytes]:
        buffered = self._partial[side] + data
        *lines, rest = buffered.split(b"\n")
        self._partial[side] = rest
        return [line[:-1] if line.endswith(b"\r") else line for line in lines]

    def _flush(self, side: str) -> None:
        rest, self._partial[side] = self._partial[side], b""
        if rest:
            self._emit(side, _text(rest))

    def _emit(self, side: str, text: str) -> None:
        self.transcript.write(f"{self.prefix}{side}: {text}")

    def _client_line(self, line: bytes) -> None:
        if self.http:
            self._http_head_line(line)
        elif self._in_body:
            if line == b".":
                self._end_body()
                self._emit("C", ".")
            else:
                self._body_line(line)
        else:
            self._emit("C", _text(line))
            if line.strip().upper() == b"DATA":
                self._start_body()

    def _start_body(self) -> None:
        self._in_body = True
        self._body_lines = 0

    def _body_line(self, line: bytes) -> None:
        self._body_lines += 1
        if self._body_lines <= MAX_BODY_LINES:
            self._emit("C", _text(line))

    def _end_body(self) -> None:
        hidden = self._body_lines - MAX_BODY_LINES
        if hidden > 0:
            self._emit("C", f"[... {hidden} more lines of message data ...]")
        self._in_body = False

    # -- HTTP ------------------------------------------------------------------
    def _http_head_line(self, line: bytes) -> None:
        if self._in_body:
            self._body_line(line)
            return
        self._emit("C", _text(line))
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"content-length":
            try:
                self._body_left = int(value.strip())
            except ValueError:
                self._body_left = 0
        if line == b"":
            self._start_body()

    def _http_body(self, data: bytes) -> bytes:
        """Account for request-body bytes; close the body when it is complete."""
        self._body_left -= len(data)
        if self._body_left > 0:
            return data
        # The whole body is here: show what is left of it, then go back to heads.
        for line in self._lines("C", data):
            self._body_line(line)
        rest, self._partial["C"] = self._partial["C"], b""
        if rest:
            self._body_line(rest)
        self._end_body()
        return b""


class _WireEcho:
    """A :data:`~slimta.smtp.client.WireTrace` that writes to one :class:`Channel`."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def __call__(self, event: str, data: bytes) -> None:
        channel = self.channel
        if event == "send":
            channel.sent(data)
        elif event == "recv":
            channel.received(data)
        elif event == "connect":
            channel.note(f"connected to {_text(data)}")
        elif event == "lost":
            channel.note("the server closed the connection")
        elif event == "starttls":
            channel.note("starting TLS")
        elif event == "tls":
            version, _, cipher = _text(data).partition(" ")
            channel.note(f"TLS established: {version}, {cipher or '?'}")
        elif event == "close":
            channel.closed()

