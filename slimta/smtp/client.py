"""The SMTP and LMTP client protocol: commands in order, replies in order.

Every command method returns a :class:`~slimta.smtp.reply.Reply` at once. The
reply object goes into :attr:`Client.reply_queue`; it is filled in when the
pipeline is flushed (:meth:`Client.flush`). Commands that need their answer
before anything else can happen (EHLO, DATA, STARTTLS, AUTH, RSET, QUIT, custom
commands) flush at once. With PIPELINING, ``MAIL``, ``RCPT`` and the message
data only queue bytes, so a transaction's ``MAIL``/``RCPT``…/``DATA`` leave in a
single ``sendall`` and the replies are then read in order (RFC 2920).
:meth:`Client.queue_command` queues any command that way, for a caller that
starts the next transaction behind the current message.

Nothing hostile reaches the wire: addresses, EHLO names and custom commands are
checked first (CR/LF/NUL, controls, unquoted ``<``/``>``/spaces, RFC 5321
lengths), and the check raises ``ValueError`` (:class:`AddressError` for
addresses) before any byte is queued.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from typing import Any

from slimta.smtp import BadReply, ConnectionLost
from slimta.smtp._wire import AddressEncodingError as AddressEncodingError
from slimta.smtp._wire import AddressError as AddressError
from slimta.smtp._wire import (
    check_ehlo_name,
    encode_address,
    encode_command,
    xtext_encode,
)
from slimta.smtp.auth import authenticate
from slimta.smtp.datasender import DataSender
from slimta.smtp.extensions import Extensions
from slimta.smtp.io import IO
from slimta.smtp.reply import Reply

__all__ = ["Client", "LmtpClient", "WireTrace", "mask_secret"]
# AddressError and AddressEncodingError (both ValueError) are importable from
# here too, for the relay layer to tell a bad address from other errors.

# Commands that take no argument, spelled as they are sent: nothing to check.
_BARE_VERBS = frozenset([b"DATA", b"RSET", b"NOOP", b"QUIT"])

_BODY_VALUE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")


#: A wire-trace callback, ``trace(event, data)``, called synchronously for one
#: connection. The events are:
#:
#: * ``'connect'``: the connection is open; ``data`` is the peer, e.g. ``b'host:25'``;
#: * ``'send'``: bytes the client wrote (secret lines masked, see :func:`mask_secret`);
#: * ``'recv'``: bytes read from the server;
#: * ``'lost'``: the server closed the connection (``data`` is empty);
#: * ``'starttls'``: a TLS handshake starts (``data`` is empty);
#: * ``'tls'``: it finished; ``data`` is the protocol and the cipher, e.g.
#:   ``b'TLSv1.3 TLS_AES_256_GCM_SHA384'``;
#: * ``'close'``: the client closed the connection (``data`` is empty); sent by
#:   :meth:`IO.close() <slimta.smtp.io.IO.close>`, the orderly close after
#:   ``QUIT``. A connection dropped after a broken stream or a kill has no
#:   ``'close'`` event.
#:
#: An exception it raises ends the session like a socket error would.
WireTrace = Callable[[str, bytes], None]

#: What a masked secret looks like in a trace.
MASK = b"********"
_AUTH_LINE_RE = re.compile(rb"^(AUTH[ \t]+\S+)[ \t]+\S", re.I)


def mask_secret(line: bytes) -> bytes:
    """Hide one secret line for a trace.

    ``AUTH PLAIN <base64>`` keeps the command and mechanism
    (``AUTH PLAIN ********``); any other non-blank line is hidden whole.
    """
    match = _AUTH_LINE_RE.match(line)
    if match:
        return match.group(1) + b" " + MASK
    return MASK if line.strip() else line


def describe_address(address: Any) -> str:
    """``host:port`` (``[v6]:port``) or a unix-socket path, for a trace."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        if host.startswith("/"):
            return host
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


class _TracedIO(IO):
    """An :class:`IO` that reports the connection's bytes to a :data:`WireTrace`."""

    def __init__(self, socket: Any, address: Any, trace: WireTrace) -> None:
        super().__init__(socket, address)
        self.trace = trace

    def raw_send(self, data: bytes | bytearray | memoryview, secret: bool = False) -> None:
        if secret:
            lines = bytes(data).split(b"\r\n")
            self.trace("send", b"\r\n".join(mask_secret(line) for line in lines))
        else:
            self.trace("send", bytes(data))
        super().raw_send(data, secret)

    def raw_recv(self) -> bytes:
        try:
            data = super().raw_recv()
        except ConnectionLost:
            self.trace("lost", b"")
            raise
        self.trace("recv", data)
        return data

    def encrypt_client(self, context: ssl.SSLContext | None = None) -> None:
        self.trace("starttls", b"")
        super().encrypt_client(context)
        sock: Any = self.socket
        cipher = sock.cipher()
        name = cipher[0] if cipher else "?"
        self.trace("tls", f"{sock.version()} {name}".encode("ascii", "replace"))

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.trace("close", b"")


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class Client:
    """One SMTP client session over a connected socket.

    :param socket: the connected (gevent) socket.
    :param address: the peer's ``(host, port)``; also the TLS server name.
    :param trace: a :data:`WireTrace` told about every byte of this connection
        (``None``, the default, costs nothing).
    """

    def __init__(self, socket: Any, address: Any = None, *, trace: WireTrace | None = None) -> None:
        #: The buffered socket layer.
        self.io = IO(socket, address) if trace is None else _TracedIO(socket, address, trace)
        if trace is not None:
            trace("connect", describe_address(address).encode("utf-8", "replace"))
        #: Replies waiting to be filled, in the order their commands were sent.
        self.reply_queue: list[Reply] = []
        #: The last 4xx/5xx reply received, or ``None``.
        self.last_error: Reply | None = None
        #: What the server's last EHLO (or LHLO) advertised.
        self.extensions = Extensions()

    # -- pipeline ------------------------------------------------------------
    def _queue(self, reply: Reply, line: bytes) -> None:
        self.io.send_buffer += line
        self.reply_queue.append(reply)

    def queue_command(self, command: bytes | str, arg: bytes | str | None = None) -> Reply:
        """Queue ``command`` (plus ``' ' + arg``) without sending or waiting.

        The bytes leave with the next :meth:`flush` (or the next command that
        flushes), and the returned reply is filled then, in order. This is how a
        caller pipelines a command the method for it would flush at once, such
        as ``DATA`` (RFC 2920 lets it end a command group).

        :returns: the reply, empty (falsy) until the flush; its ``command`` is
            ``command`` upper-cased.
        :raises ValueError: CR, LF or NUL in either part (nothing is queued).
        """
        if arg is None and command in _BARE_VERBS:  # the common case, already safe
            reply = Reply(command=command)
            self._queue(reply, command + b"\r\n")
            return reply
        verb = _as_bytes(command)
        line = encode_command(verb, arg)
        reply = Reply(command=verb.upper())
        self._queue(reply, line)
        return reply

    def flush(self) -> None:
        """Write everything queued, then fill every waiting reply, in order.

        :raises ~slimta.smtp.ConnectionLost: the connection closed first.
        :raises ~slimta.smtp.BadReply: a reply was malformed or too long.
        """
        io = self.io
        io.flush_send()
        queue = self.reply_queue
        while queue:
            reply = queue.pop(0)
            reply.recv(io)
            if reply.is_error():
                self.last_error = reply

    #: python-slimta's name for :meth:`flush`, kept for code that calls it.
    _flush_pipeline = flush

    def _pipelined(self) -> bool:
        # Extension names are stored upper-case: a plain dict lookup says the
        # same as ``"PIPELINING" in self.extensions``, without the method call.
        return "PIPELINING" in self.extensions.extensions

    def _command(self, command: bytes, line: bytes, suppress_esc: bool = False) -> Reply:
        reply = Reply(command=command)
        if suppress_esc:
            reply.enhanced_status_code = False
        self._queue(reply, line)
        self.flush()
        return reply

    # -- unsolicited replies -------------------------------------------------
    def has_reply_waiting(self) -> bool:
        """True if reply bytes are buffered or the socket is readable right now.

        Never waits (a zero-timeout check), so it costs nothing per message on a
        reused connection. False when the socket is closed.
        """
        return self.io.poll_readable()

    def has_buffered_data(self) -> bool:
        """True if received bytes wait unread in the buffer (no socket check)."""
        return self.io.buffered_bytes > 0

    def get_reply(self, command: bytes = b"[TIMEOUT]") -> Reply:
        """Read one reply that no command asked for (e.g. a 421 before closing)."""
        reply = Reply(command=command)
        self.reply_queue.append(reply)
        self.flush()
        return reply

    def get_banner(self) -> Reply:
        """Read the server's greeting (command ``[BANNER]``, no ESC)."""
        reply = Reply(command=b"[BANNER]")
        reply.enhanced_status_code = False
        self.reply_queue.append(reply)
        self.flush()
        return reply

    # -- greetings -----------------------------------------------------------
    def custom_command(self, command: bytes | str, arg: bytes | str | None = None) -> Reply:
        """Send ``command`` (plus ``' ' + arg``), flush and wait.

        :raises ValueError: CR, LF or NUL in either part.
        """
        verb = _as_bytes(command)
        return self._command(verb.upper(), encode_command(verb, arg))

    def _greet(self, verb: bytes, name: str, parse: bool) -> Reply:
        line = encode_command(verb, check_ehlo_name(name))
        reply = self._command(verb, line, suppress_esc=True)
        if reply.code == "250":
            self.extensions.reset()
            if parse:
                reply.message = self.extensions.parse_string(reply.message or "")
        return reply

    def ehlo(self, ehlo_as: str) -> Reply:
        """``EHLO``; on 250 the extensions are re-parsed and the message is the greeting.

        :raises ValueError: an empty name, or one with whitespace, controls or non-ASCII.
        """
        return self._greet(b"EHLO", ehlo_as, parse=True)

    def helo(self, helo_as: str) -> Reply:
        """``HELO``; on 250 the extensions are cleared.

        :raises ValueError: see :meth:`ehlo`.
        """
        return self._greet(b"HELO", helo_as, parse=False)

    def lhlo(self, lhlo_as: str) -> Reply:
        """LMTP only.

        :raises NotImplementedError: always, on :class:`Client`.
        """
        raise NotImplementedError()

    # -- TLS -----------------------------------------------------------------
    def encrypt(self, context: ssl.SSLContext | None = None) -> None:
        """Client TLS handshake on the current socket, SNI = the peer host.

        :raises ssl.SSLError: when the handshake fails; the session must not
            carry on in clear on this connection. Catch it before ``OSError``,
            its base class.
        """
        self.io.encrypt_client(context)

    def starttls(self, context: ssl.SSLContext | None = None) -> Reply:
        """``STARTTLS``, then the handshake on a 220.

        The extensions are forgotten after the handshake; EHLO again.

        :returns: the STARTTLS reply (not 220: TLS was not started).
        :raises ~slimta.smtp.BadReply: bytes followed the 220; they arrived in
            clear and would pass for the first TLS-protected reply (STARTTLS
            response injection).
        :raises ssl.SSLError: the handshake failed.
        """
        reply = self._command(b"STARTTLS", b"STARTTLS\r\n")
        if reply.code == "220":
            if self.io.buffered_bytes:
                raise BadReply(self.io.parser.take_pending())
            self.encrypt(context)
            self.extensions.reset()
        return reply

    # -- AUTH ----------------------------------------------------------------
    def auth(
        self,
        authcid: str | bytes,
        secret: str | bytes,
        authzid: str | bytes | None = None,
        mechanism: str | bytes | None = None,
        allow_insecure: bool = False,
    ) -> Reply:
        """Authenticate (RFC 4954) with PLAIN, LOGIN, CRAM-MD5 or XOAUTH2.

        :param mechanism: force this mechanism (it must be advertised).
        :param allow_insecure: allow PLAIN/LOGIN/XOAUTH2 without TLS.
        :returns: the final reply; a fresh ``500 5.5.2`` when AUTH is not
            advertised; ``454 4.7.0`` (nothing written) when only cleartext
            mechanisms are possible on a clear connection.
        :raises ~slimta.smtp.auth.InvalidMechanismError: unusable ``mechanism``.
        :raises ~slimta.smtp.auth.ServerAuthError: a nonsensical challenge.
        """
        self.flush()
        if "AUTH" not in self.extensions:
            reply = Reply("500", "5.5.2 Syntax error, command unrecognized", b"AUTH")
        else:
            advertised = self.extensions.getparam("AUTH") or ""
            reply = authenticate(
                self.io, advertised, authcid, secret, authzid, mechanism, allow_insecure
            )
        if reply.is_error():
            self.last_error = reply
        return reply

    # -- transaction ---------------------------------------------------------
    def _maybe_flush(self) -> None:
        if not self._pipelined():
            self.flush()

    def mailfrom(
        self,
        address: str | None,
        data_size: int | None = None,
        auth: str | bool | None = None,
        body: str | None = None,
        smtputf8: bool = False,
    ) -> Reply:
        """``MAIL FROM:<address>`` with the parameters the server supports.

        Parameters, in order: ``SIZE=n`` (``data_size`` given, SIZE advertised);
        ``BODY=<body>`` (8BITMIME advertised); ``SMTPUTF8`` (requested and
        advertised); ``AUTH=<>`` for ``auth=False`` or ``AUTH=<xtext>`` for a str
        (AUTH advertised).

        :param address: the sender; ``''`` or ``None`` is the null path.
        :raises AddressError: a hostile or over-long address (nothing is sent).
        :raises AddressEncodingError: non-ASCII without SMTPUTF8 (a ValueError).
        """
        ext = self.extensions.extensions  # upper-case names, as Extensions keeps them
        line = b"MAIL FROM:<" + encode_address(address, "SMTPUTF8" in ext) + b">"
        if data_size is not None and "SIZE" in ext:
            line += b" SIZE=" + str(int(data_size)).encode("ascii")
        if body and "8BITMIME" in ext:
            if not set(body) <= _BODY_VALUE_CHARS:
                raise ValueError("Invalid BODY value", body)
            line += b" BODY=" + body.upper().encode("ascii")
        if smtputf8 and "SMTPUTF8" in ext:
            line += b" SMTPUTF8"
        if auth is not None and auth is not True and "AUTH" in ext:
            line += b" AUTH=" + (xtext_encode(auth) if auth else b"<>")
        reply = Reply(command=b"MAIL")
        self._queue(reply, line + b"\r\n")
        self._maybe_flush()
        return reply

    def rcptto(self, address: str) -> Reply:
        """``RCPT TO:<address>``, pipelined like MAIL.

        :raises AddressError: see :meth:`mailfrom`.
        """
        ext = self.extensions.extensions
        encoded = encode_address(address, "SMTPUTF8" in ext)
        if not encoded:
            raise AddressError("Empty recipient", address)
        reply = Reply(command=b"RCPT")
        self._queue(reply, b"RCPT TO:<" + encoded + b">\r\n")
        self._maybe_flush()
        return reply

    def data(self) -> Reply:
        """``DATA``; flushes the pipeline and waits for the 354."""
        return self._command(b"DATA", b"DATA\r\n")

    def send_data(self, *data: bytes | bytearray | memoryview) -> Reply:
        """Send the dot-stuffed message and its end marker; pipelined.

        :param data: the message in parts (e.g. headers and body), not joined.
        """
        DataSender(*data).send(self.io)
        reply = Reply(command=b"[SEND_DATA]")
        self.reply_queue.append(reply)
        self._maybe_flush()
        return reply

    def send_empty_data(self) -> Reply:
        """Send a lone ``.`` to end a DATA phase with no message; pipelined."""
        reply = Reply(command=b"[SEND_DATA]")
        self._queue(reply, b".\r\n")
        self._maybe_flush()
        return reply

    def rset(self) -> Reply:
        """``RSET``; flush and wait."""
        return self._command(b"RSET", b"RSET\r\n")

    def quit(self) -> Reply:
        """``QUIT``; flush and wait."""
        return self._command(b"QUIT", b"QUIT\r\n")


class LmtpClient(Client):
    """An LMTP (RFC 2033) client: LHLO, and one reply per accepted recipient.

    :param socket: the connected socket (TCP or ``AF_UNIX``).
    :param address: the peer's address.
    :param trace: as for :class:`Client`.
    """

    def __init__(self, socket: Any, address: Any = None, *, trace: WireTrace | None = None) -> None:
        super().__init__(socket, address, trace=trace)
        #: ``(address, Reply)`` for each RCPT of the current transaction.
        self.rcpttos: list[tuple[str, Reply]] = []
        #: ``(address, Reply)`` for the last :meth:`send_data`; kept even when it
        #: raises, so replies already received are not lost (a falsy Reply has
        #: not arrived).
        self.data_replies: list[tuple[str, Reply]] = []

    def ehlo(self, ehlo_as: str) -> Reply:
        """Not in LMTP.

        :raises NotImplementedError: always.
        """
        raise NotImplementedError()

    def helo(self, helo_as: str) -> Reply:
        """Not in LMTP.

        :raises NotImplementedError: always.
        """
        raise NotImplementedError()

    def lhlo(self, lhlo_as: str) -> Reply:
        """``LHLO``, like :meth:`Client.ehlo`; clears :attr:`rcpttos` on 250.

        :raises ValueError: see :meth:`Client.ehlo`.
        """
        reply = self._greet(b"LHLO", lhlo_as, parse=True)
        if reply.code == "250":
            self.rcpttos = []
        return reply

    def rcptto(self, address: str) -> Reply:
        """``RCPT TO:<address>``, recorded in :attr:`rcpttos`."""
        reply = super().rcptto(address)
        self.rcpttos.append((address, reply))
        return reply

    def _collect(self) -> list[tuple[str, Reply]]:
        # Replies to RCPT may still be queued (pipelining): read them first.
        self.flush()
        results = [
            (rcpt, Reply(command=b"[SEND_DATA]"))
            for rcpt, rcpt_reply in self.rcpttos
            if (rcpt_reply.code or "").startswith("2")
        ]
        self.data_replies = results
        self.reply_queue.extend(reply for _, reply in results)
        self.flush()
        self.rcpttos = []
        return results

    def send_data(self, *data: bytes | bytearray | memoryview) -> list[tuple[str, Reply]]:  # type: ignore[override]
        """Send the message and read one reply per accepted recipient.

        :returns: ``(address, Reply)`` per recipient whose RCPT got a 2xx, in order.
        """
        DataSender(*data).send(self.io)
        return self._collect()

    def send_empty_data(self) -> list[tuple[str, Reply]]:  # type: ignore[override]
        """Send only ``.``, then read the per-recipient replies."""
        self.io.send_buffer += b".\r\n"
        return self._collect()

    def rset(self) -> Reply:
        """``RSET``; also clears :attr:`rcpttos`."""
        self.rcpttos = []
        return super().rset()
