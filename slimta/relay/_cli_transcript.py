"""``slimta-relay --transcript``: print the protocol dialogue as it happens.

Lines the client writes are printed as ``C: ...`` and lines the server sends
as ``S: ...``; remarks of our own (connected, TLS started, closed) start with
``*``. Everything goes to one text stream, normally standard error.

The hooks sit where the library already offers them:

* SMTP and LMTP: the relay clients build their protocol object from the
  ``_client_class`` class attribute, so a subclass of
  :class:`~slimta.smtp.client.Client` swaps in an :class:`~slimta.smtp.io.IO`
  that echoes every ``raw_send``/``raw_recv``. Hooking there rather than on the
  socket keeps the dialogue readable after STARTTLS or implicit TLS, and the
  library's own ``secret`` flag marks the AUTH lines to mask.
* HTTP: the connection's socket is wrapped once it is connected.
* Local programs: the subprocess log lines of :mod:`slimta.relay.pipe`.

Only the first :data:`MAX_BODY_LINES` lines of each message are shown.
"""

from __future__ import annotations

import logging
import re
import shlex
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from slimta.logging import parseline
from slimta.relay.http import HttpRelay, HttpRelayClient
from slimta.relay.smtp.client import SmtpRelayClient
from slimta.relay.smtp.lmtpclient import LmtpRelayClient
from slimta.smtp import ConnectionLost
from slimta.smtp.client import Client, LmtpClient
from slimta.smtp.io import IO

if TYPE_CHECKING:
    import ssl

__all__ = ["Transcript", "relay_client_class", "TranscriptHttpRelay"]

#: Lines of message data shown per message; the rest are counted.
MAX_BODY_LINES = 12
#: What a masked secret looks like in the transcript.
MASK = "********"

_AUTH_LINE_RE = re.compile(r"^(AUTH\s+\S+)\s+\S", re.I)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_PIPE_LOGGER = "slimta.relay.pipe"
_C = TypeVar("_C", bound=Client)


def _text(line: bytes) -> str:
    text = line.decode("utf-8", "replace")
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def mask_secret(line: str) -> str:
    """Hide a secret line: ``AUTH PLAIN <b64>`` keeps the mechanism, others go whole."""
    match = _AUTH_LINE_RE.match(line)
    if match:
        return f"{match.group(1)} {MASK}"
    return MASK if line.strip() else line


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

    def sent(self, data: bytes, secret: bool = False) -> None:
        """The client wrote ``data``."""
        if secret:
            self._flush("C")
            for line in data.splitlines():
                self._emit("C", mask_secret(_text(line)))
            return
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


# -- SMTP and LMTP ---------------------------------------------------------------
class _EchoIO(IO):
    """An :class:`IO` that reports every read and write to a :class:`Channel`."""

    def __init__(self, socket: Any, address: Any, channel: Channel) -> None:
        super().__init__(socket, address)
        self.channel = channel

    def raw_send(self, data: bytes | bytearray | memoryview, secret: bool = False) -> None:
        self.channel.sent(bytes(data), secret)
        super().raw_send(data, secret)

    def raw_recv(self) -> bytes:
        try:
            data = super().raw_recv()
        except ConnectionLost:
            self.channel.note("the server closed the connection")
            raise
        self.channel.received(data)
        return data

    def encrypt_client(self, context: ssl.SSLContext | None = None) -> None:
        self.channel.note("starting TLS")
        super().encrypt_client(context)
        sock: Any = self.socket
        cipher = sock.cipher()
        self.channel.note(f"TLS established: {sock.version()}, {cipher[0] if cipher else '?'}")

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.channel.closed()


def _where(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        if host.startswith("/"):
            return host
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def _protocol_class(base: type[_C], transcript: Transcript) -> type[_C]:
    class EchoClient(base):  # type: ignore[valid-type, misc]
        def __init__(self, socket: Any, address: Any = None) -> None:
            super().__init__(socket, address)
            channel = transcript.channel()
            channel.note(f"connected to {_where(address)}")
            self.io = _EchoIO(socket, address, channel)

    return EchoClient


def relay_client_class(transcript: Transcript, lmtp: bool = False) -> type[SmtpRelayClient]:
    """A relay client class (for ``client_class=``) whose connections echo to ``transcript``.

    :param lmtp: build on :class:`~slimta.relay.smtp.lmtpclient.LmtpRelayClient`.
    """
    if lmtp:
        lmtp_protocol = _protocol_class(LmtpClient, transcript)

        class EchoLmtpRelayClient(LmtpRelayClient):
            _client_class = lmtp_protocol

        return EchoLmtpRelayClient
    smtp_protocol = _protocol_class(Client, transcript)

    class EchoSmtpRelayClient(SmtpRelayClient):
        _client_class = smtp_protocol

    return EchoSmtpRelayClient


# -- HTTP ------------------------------------------------------------------------
class _EchoSocket:
    """Wraps a connected socket: writes and reads are reported to a :class:`Channel`."""

    def __init__(self, sock: Any, channel: Channel) -> None:
        self._sock = sock
        self._channel = channel

    def sendall(self, data: Any, *args: Any) -> None:
        self._channel.sent(bytes(data))
        self._sock.sendall(data, *args)

    def send(self, data: Any, *args: Any) -> int:
        sent: int = self._sock.send(data, *args)
        self._channel.sent(bytes(data[:sent]))
        return sent

    def recv_into(self, buffer: Any, *args: Any) -> int:
        count: int = self._sock.recv_into(buffer, *args)
        self._channel.received(bytes(memoryview(buffer)[:count]))
        return count

    def recv(self, size: int, *args: Any) -> bytes:
        data: bytes = self._sock.recv(size, *args)
        self._channel.received(data)
        return data

    def close(self) -> None:
        self._sock.close()
        self._channel.closed()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class TranscriptHttpRelay(HttpRelay):
    """An :class:`~slimta.relay.http.HttpRelay` whose connections echo to a transcript.

    :param transcript: where the dialogue goes.
    :param args: as for :class:`~slimta.relay.http.HttpRelay`.
    :param kwargs: as for :class:`~slimta.relay.http.HttpRelay`.
    """

    def __init__(self, transcript: Transcript, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transcript = transcript

    def add_client(self) -> HttpRelayClient:
        transcript = self.transcript

        class EchoHttpRelayClient(HttpRelayClient):
            # _ensure_connection is where the client opens its connection; the
            # socket is wrapped right after, before any request goes out.
            def _ensure_connection(self) -> bool:
                reused = super()._ensure_connection()
                conn: Any = self.conn
                if not reused and conn is not None and conn.sock is not None:
                    channel = transcript.channel(http=True)
                    channel.note(f"connected to {conn.host}:{conn.port}")
                    conn.sock = _EchoSocket(conn.sock, channel)
                return reused

        return EchoHttpRelayClient(self)


# -- local programs ----------------------------------------------------------------
class _SubprocessEcho(logging.Handler):
    """Turns :mod:`slimta.relay.pipe`'s debug lines into transcript remarks."""

    def __init__(self, transcript: Transcript) -> None:
        super().__init__(logging.DEBUG)
        self.transcript = transcript

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _, pid, op, data = parseline(record.getMessage())
        except ValueError:
            return
        if op == "popen":
            argv = data.get("args")
            shown = shlex.join(argv) if isinstance(argv, list) else str(argv)
            self.transcript.write(f"* [pid {pid}] run: {shown}")
        elif op == "stdio":
            for name in ("stdout", "stderr"):
                value = data.get(name)
                if value:
                    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                    for line in str(text).rstrip().splitlines():
                        self.transcript.write(f"* [pid {pid}] {name}: {line}")
        elif op == "exit":
            self.transcript.write(f"* [pid {pid}] exit status {data.get('returncode')}")


class SubprocessEcho:
    """Context manager: while active, local delivery programs are shown in ``transcript``."""

    def __init__(self, transcript: Transcript) -> None:
        self._handler = _SubprocessEcho(transcript)
        self._logger = logging.getLogger(_PIPE_LOGGER)
        self._level = self._logger.level

    def __enter__(self) -> SubprocessEcho:
        self._logger.addHandler(self._handler)
        self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._level)
