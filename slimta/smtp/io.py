"""Buffered socket I/O for SMTP: the only module here that touches a socket.

:class:`IO` reads into a :class:`~slimta.smtp._wire.ReplyParser` and writes what
the protocol layer queued. It never sleeps or polls: the caller bounds each
operation with a :class:`gevent.Timeout`.

TLS stays cooperative whatever context the caller supplies. With gevent 26 a
plain :class:`ssl.SSLContext` (what :func:`ssl.create_default_context` returns
when gevent is not monkey-patched) would build a stdlib ``SSLSocket`` that blocks
the whole hub during the handshake and every read. So the socket is always built
by :class:`gevent.ssl.SSLSocket`, given the caller's context, exactly as gevent's
own ``SSLContext.wrap_socket`` does it.
"""

from __future__ import annotations

import errno
import logging
import re
import ssl
from typing import TYPE_CHECKING, Any

import gevent.socket
import gevent.ssl
from gevent import Timeout, get_hub, monkey

from slimta.logging import getSocketLogger
from slimta.smtp import BadReply, ConnectionLost
from slimta.smtp._wire import MAX_REPLY_BYTES, MAX_REPLY_LINE_BYTES, ReplyParser, encode_command

if TYPE_CHECKING:
    from slimta.smtp.reply import Reply

__all__ = ["IO", "MAX_REPLY_LINE_BYTES", "MAX_REPLY_BYTES"]

#: The most bytes asked of one ``recv``.
RECV_BYTES = 65536
#: Writes at least this large skip the send buffer (no copy of message data).
DIRECT_SEND_BYTES = 16384
#: How long :meth:`IO.close` waits for the peer's TLS close_notify.
TLS_SHUTDOWN_TIMEOUT = 1.0

_log = getSocketLogger(__name__)

# The stdlib functions, even if the application monkey-patched ``select``:
# a zero-timeout check must not go through the hub.
_select = monkey.get_original("select", "select")
try:
    _poll = monkey.get_original("select", "poll")
except AttributeError:  # pragma: no cover - platforms without poll()
    _poll = None
_POLLIN = 0x001
#: gevent's SSLSocket does not derive from the stdlib one.
_SSL_SOCKETS = (ssl.SSLSocket, gevent.ssl.SSLSocket)


def _readable_now(fileno: int) -> bool:
    """A zero-timeout readability check that never yields to the hub."""
    if _poll is not None:
        poller = _poll()
        poller.register(fileno, _POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = _select([fileno], [], [], 0)
    return bool(readable)


class _SendStalled(Exception):
    """A write waited longer than :attr:`IO.send_timeout` (only this IO's own timer raises it)."""


class IO:
    """The buffered socket layer used by :class:`~slimta.smtp.client.Client`.

    :param socket: a connected (gevent) socket.
    :param address: the peer's ``(host, port)``; looked up on first use if not given.
    """

    def __init__(self, socket: Any, address: Any = None) -> None:
        self.socket = socket
        #: Queued bytes, written in one ``sendall`` by :meth:`flush_send`.
        self.send_buffer = bytearray()
        #: Seconds a write may wait for the peer to take data before
        #: :class:`~slimta.smtp.ConnectionLost` is raised; ``None`` waits as
        #: long as the socket does. The server sets its command timeout here, so
        #: that a client that stops reading cannot hold a session open.
        self.send_timeout: float | None = None
        #: The reply parser; its ``buffer`` is the bytearray receive buffer.
        self.parser = ReplyParser()
        self._address = address
        self._tls_ready = False
        self._eof = False
        # Server side: whether the last read took everything the socket held,
        # and the read watcher used to wait before reading (see recv_masked).
        self._drained = True
        self._watched: Any = None
        self._read_watcher: Any = None
        self._hub: Any = None

    # -- properties ----------------------------------------------------------
    @property
    def address(self) -> Any:
        """The peer's address, as given or from ``getpeername()``."""
        if self._address is None:
            try:
                self._address = self.socket.getpeername()
            except OSError:
                return None
        return self._address

    @property
    def encrypted(self) -> bool:
        """Whether the socket is a TLS socket."""
        return isinstance(self.socket, _SSL_SOCKETS)

    @property
    def recv_buffer(self) -> bytes:
        """A copy of the received bytes not yet consumed (normally empty)."""
        parser = self.parser
        return bytes(parser.buffer[parser.offset :])

    @recv_buffer.setter
    def recv_buffer(self, value: bytes | bytearray) -> None:
        # python-slimta's code (its DataReader, programs) assigns the buffer.
        parser = self.parser
        parser.take_pending()
        if value:
            parser.feed(value)

    @property
    def logs_data(self) -> bool:
        """Whether the bytes sent and received are logged (``DEBUG`` is on for this module).

        Work done only for the log (masking AUTH data) can be skipped when it is not.
        """
        return _log.logger.isEnabledFor(logging.DEBUG)

    @property
    def buffered_bytes(self) -> int:
        """How many received bytes wait unconsumed, without copying them."""
        return self.parser.pending

    # -- lifecycle -------------------------------------------------------------
    def close(self) -> None:
        """Close the socket, trying a TLS shutdown first when encrypted.

        Errors from a peer that has already gone are ignored.
        """
        self._drop_read_watcher()
        sock = self.socket
        if self._tls_ready and isinstance(sock, _SSL_SOCKETS):
            self._tls_ready = False
            try:
                sock.settimeout(TLS_SHUTDOWN_TIMEOUT)
                sock.unwrap()
            except (OSError, ValueError):
                pass
        _log.close(sock)
        sock.close()

    # -- sending ---------------------------------------------------------------
    def raw_send(self, data: bytes | bytearray | memoryview, secret: bool = False) -> None:
        """Write all of ``data``, with one ``send`` when the socket takes it whole.

        :param secret: mask the data in the debug log (AUTH exchanges).
        """
        sock = self.socket
        if _log.logger.isEnabledFor(logging.DEBUG):
            _log.send(sock, data, secret)  # type: ignore[arg-type]
        try:
            # One send() is one syscall; gevent's sendall() asks the kernel for the
            # send buffer size (getsockopt) before every write. Only what the first
            # send() left over goes through sendall().
            if self.send_timeout is None:
                sent = sock.send(data)
            elif type(sock) is gevent.socket.socket:
                try:
                    sent = sock.send(data, 0, 0.0)  # gevent's timeout argument: never wait
                except BlockingIOError:
                    sent = 0
            else:
                sent = 0  # all of it under the time bound
            if sent < len(data):
                self._send_rest(memoryview(data)[sent:])
        except ConnectionError:
            raise ConnectionLost()

    def _send_rest(self, rest: memoryview) -> None:
        # What the first send() left: the peer is slow to read, so this may wait.
        timeout = self.send_timeout
        if timeout is None:
            self.socket.sendall(rest)
            return
        try:
            with Timeout(timeout, _SendStalled):
                self.socket.sendall(rest)
        except _SendStalled:
            self._eof = True
            raise ConnectionLost() from None

    def buffered_send(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``. Large writes go out at once, after what was queued."""
        if len(data) >= DIRECT_SEND_BYTES:
            self.flush_send()
            self.raw_send(data)
        else:
            self.send_buffer += data

    def flush_send(self) -> None:
        """Write everything queued, in one ``sendall``."""
        if self.send_buffer:
            data = self.send_buffer
            self.send_buffer = bytearray()
            self.raw_send(data)

    def send_command(self, command: bytes | str, secret: bool = False) -> None:
        """Queue ``command`` plus CRLF.

        :param secret: write it now, with its own masked log line (AUTH).
        :raises ValueError: when ``command`` contains CR, LF or NUL.
        """
        line = encode_command(command)
        if secret:
            self.flush_send()
            self.raw_send(line, secret=True)
        else:
            self.send_buffer += line

    # -- receiving -------------------------------------------------------------
    def raw_recv(self) -> bytes:
        """One ``recv``.

        :raises ~slimta.smtp.ConnectionLost: on EOF or a reset.
        """
        data = self._recv_once()
        _log.recv(self.socket, data)
        return data

    def _recv_once(self, wait_first: bool = False) -> bytes:
        # One recv; EOF, resets (TLS ones included) and a socket closed under
        # the wait (EBADF) become ConnectionLost.
        if self._eof:
            raise ConnectionLost()
        sock = self.socket
        try:
            if wait_first and self._drained:
                watcher = self._read_watcher if self._watched is sock else self._watch(sock)
                if watcher is not None:
                    self._hub.wait(watcher)
            data = sock.recv(RECV_BYTES)
        except (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            self._eof = True
            raise ConnectionLost()
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            self._eof = True
            raise ConnectionLost() from exc
        if not data:
            self._eof = True
            raise ConnectionLost()
        self._drained = len(data) < RECV_BYTES
        return data

    def _watch(self, sock: Any) -> Any:
        """A read watcher for ``sock`` if it is a plain gevent socket with no timeout of its own.

        After the server sent a reply, the client's next bytes cannot have
        arrived yet: waiting for readability first saves the ``recv`` that would
        fail with ``EAGAIN`` (a system call and an exception) on every command.
        A TLS socket may hold decrypted bytes the watcher cannot see, and a
        socket timeout must keep applying, so both are read the usual way.
        """
        self._drop_read_watcher()
        self._watched = sock
        if type(sock) is gevent.socket.socket and sock.timeout is None:
            self._hub = get_hub()
            self._read_watcher = self._hub.loop.io(sock.fileno(), 1)
        return self._read_watcher

    def _drop_read_watcher(self) -> None:
        watcher, self._read_watcher = self._read_watcher, None
        self._watched = None
        if watcher is None:
            return
        if watcher.callback is not None:
            # Another greenlet waits on it: it gets ConnectionLost, as it would
            # from a read on the closed socket.
            get_hub().cancel_wait(watcher, ConnectionLost(), True)
        else:
            watcher.close()

    def buffered_recv(self) -> None:
        """Read once and append to the receive buffer."""
        self.parser.feed(self.raw_recv())

    def recv_reply(self) -> tuple[str, str]:
        """Read one complete reply.

        :returns: ``(code, text)``; multi-line texts are joined with CRLF.
        :raises ~slimta.smtp.BadReply: malformed, mixed codes, not UTF-8, or
            over :data:`MAX_REPLY_LINE_BYTES`/:data:`MAX_REPLY_BYTES`.
        :raises ~slimta.smtp.ConnectionLost: when the peer goes away first.
        """
        parser = self.parser
        while True:
            reply = parser.next_reply()
            if reply is not None:
                return reply
            parser.feed(self.raw_recv())

    def recv_line(self) -> bytes:
        """Read one line, without its line end."""
        parser = self.parser
        while True:
            line = parser.next_line()
            if line is not None:
                return line
            parser.feed(self.raw_recv())

    def poll_readable(self) -> bool:
        """True if received bytes are buffered or the socket can be read **now**.

        Never waits and never yields to the hub. An EOF counts as readable (the
        next read raises :class:`~slimta.smtp.ConnectionLost`). On a TLS socket a
        ready fd may carry only TLS records (a TLS 1.3 session ticket), so a
        non-blocking read tells them from data. False when the socket is closed.
        """
        if self.parser.pending or self._eof:
            return True
        sock = self.socket
        try:
            fileno = sock.fileno()
        except OSError:
            return False
        if fileno < 0:
            return False
        if isinstance(sock, _SSL_SOCKETS):
            if sock.pending():
                return True
            if not _readable_now(fileno):
                return False
            return self._recv_nowait()
        return _readable_now(fileno)

    def _recv_nowait(self) -> bool:
        sock = self.socket
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            data = sock.recv(RECV_BYTES)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        except OSError:
            self._eof = True
            return True
        finally:
            sock.settimeout(timeout)
        if not data:
            self._eof = True
        else:
            _log.recv(sock, data)
            self.parser.feed(data)
        return True

    # -- TLS -------------------------------------------------------------------
    def _wrap(self, context: ssl.SSLContext, server_side: bool) -> None:
        host = None
        if not server_side:
            address = self.address
            if isinstance(address, tuple) and address and address[0]:
                host = str(address[0])
        if context.check_hostname and not server_side and not host:
            raise ssl.SSLError("No peer host name to check the certificate against")
        # Build gevent's SSLSocket around the caller's context, as gevent's own
        # SSLContext.wrap_socket does: cooperative even for a plain stdlib context.
        sock = gevent.ssl.SSLSocket(
            sock=self.socket,
            server_side=server_side,
            server_hostname=host,
            do_handshake_on_connect=False,
            _context=context,
        )
        # From here the IO owns the TLS socket, so a failed or interrupted
        # handshake still closes the right file descriptor.
        self.socket = sock
        sock.do_handshake()
        self._tls_ready = True
        _log.encrypt(sock, {"server_side": server_side, "server_hostname": host})

    def encrypt_client(self, context: ssl.SSLContext | None = None) -> None:
        """Client-side TLS handshake, with SNI and verification for the peer host.

        :param context: defaults to :func:`ssl.create_default_context`.
        :raises ssl.SSLError: when the handshake fails.
        :raises ~slimta.smtp.BadReply: when unread bytes wait in the receive
            buffer (they arrived in clear and must not pass for TLS data).
        """
        if self.parser.pending:
            raise BadReply(self.parser.take_pending())
        if context is None:
            context = ssl.create_default_context()
        self._wrap(context, server_side=False)

    def encrypt_socket_client(self, context: ssl.SSLContext | None = None) -> bool:
        """Like :meth:`encrypt_client`, but return ``False`` on ``SSLError`` (Compat)."""
        try:
            self.encrypt_client(context)
        except ssl.SSLError as exc:
            _log.error(self.socket, exc, self._address)
            return False
        return True

    def encrypt_socket_server(self, context: ssl.SSLContext) -> bool:
        """Server side (tests): TLS handshake as the server.

        :returns: ``False`` on ``SSLError``.
        """
        try:
            self._wrap(context, server_side=True)
        except ssl.SSLError as exc:
            _log.error(self.socket, exc, self._address)
            return False
        return True

    # -- server side (tests, Reply.send) -------------------------------------
    def recv_command(self) -> tuple[bytes, bytes | None]:
        """Read one command line.

        :returns: ``(VERB, argument or None)``, the verb upper-cased.
        """
        line = self.recv_line()
        verb, _, arg = line.partition(b" ")
        return verb.upper(), (arg if arg else None)

    def send_reply(self, reply: Reply) -> None:
        """Queue ``reply``, one ``code-text`` line per text line.

        The bytes are :meth:`~slimta.smtp.reply.Reply.to_wire`'s.
        """
        self.send_buffer += reply.to_wire()

    # -- server side: reads whose log lines never show AUTH secrets ----------
    def recv_masked(self, secret: bool = False) -> bytes:
        """Server side: one ``recv``, logged with AUTH data masked.

        :param secret: the whole chunk is an AUTH response: log only its size.
            Otherwise an ``AUTH`` command line and everything after it in the
            chunk is masked.
        :raises ~slimta.smtp.ConnectionLost: on EOF or a reset.
        """
        data = self._recv_once(wait_first=True)
        if not _log.logger.isEnabledFor(logging.DEBUG):
            return data
        if secret:
            _log.recv(self.socket, b"******** (%d bytes)" % len(data))
        else:
            match = _AUTH_LINE_RE.search(data)
            _log.recv(self.socket, data if match is None else data[: match.end()] + b" ********")
        return data


#: An AUTH command line in received data: its mechanism name stays visible.
_AUTH_LINE_RE = re.compile(rb"(?:^|\n)[ \t]*AUTH[ \t]+[A-Za-z0-9_-]+", re.I)
