"""One connection of an SMTP or LMTP relay client, apart from its transactions.

:class:`Session` opens the connection (connect, banner, EHLO or HELO, or LHLO,
STARTTLS, AUTH), notices a server that spoke while the connection was idle,
sends RSET between transactions and ends with QUIT. It talks to the server only
through :class:`~slimta.smtp.client.Client`. Its settings are the public
attributes of the relay client that owns it (see :class:`Owner`), read when
they are needed, so a subclass or a program that changes them is obeyed.

Each step runs inside :meth:`Session.stage`, which names the step (the owner's
``current_command``, what an error reply names) and bounds it with its timeout,
together.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, Union

import gevent

from slimta.relay import RelayError
from slimta.relay._replies import misconfigured
from slimta.relay.smtp import SmtpRelayError
from slimta.relay.smtp._connect import Address, SocketCreator, local_fqdn
from slimta.relay.smtp._failures import Abort, TlsFailure, reply_for_exception, server_error
from slimta.smtp.client import Client, LmtpClient, WireTrace
from slimta.smtp.reply import Reply
from slimta.smtp.syntax import check_ehlo_name
from slimta.util.timer import Bound, SessionTimers

if TYPE_CHECKING:
    from gevent import socket

    from slimta.relay._timeouts import Timeouts

__all__ = ["Credentials", "Owner", "Session"]

Credentials = Union[Iterable[str], Callable[[], Iterable[str]]]


class Owner(Protocol):
    """What a :class:`Session` reads from, and shows on, the relay client that owns it.

    The attributes are :class:`~slimta.relay.smtp.client.SmtpRelayClient`'s
    public ones, documented there.
    """

    address: Address
    socket_creator: SocketCreator
    ehlo_as: str | Callable[[Address], str]
    context: ssl.SSLContext | None
    auth_mechanism: str | bytes | None
    tls_immediately: bool
    tls_required: bool
    credentials: Credentials | None
    allow_insecure_auth: bool
    #: Called per connection for its wire trace, or ``None``.
    trace: Callable[[], WireTrace] | None
    timeouts: Timeouts
    #: Written by the session: the stage in progress.
    current_command: bytes | None
    #: Written by the session: the open socket and protocol client, or ``None``.
    socket: socket.socket | None
    client: Client | None


class _ClearTextRetry(Exception):
    """An opportunistic STARTTLS handshake failed: connect again, in clear."""


class Session:
    """One connection to ``owner.address``, from connect to QUIT.

    :param owner: the relay client whose settings apply.
    :param protocol: the :class:`~slimta.smtp.client.Client` class to speak
        with; an :class:`~slimta.smtp.client.LmtpClient` greets with LHLO.
    """

    def __init__(self, owner: Owner, protocol: type[Client]) -> None:
        self.owner = owner
        self.protocol = protocol
        self.socket: socket.socket | None = None
        self.client: Client | None = None
        #: False once the connection can no longer carry a command (QUIT is skipped).
        self.usable = False
        #: True while a MAIL transaction is open on the server and needs an RSET.
        self.needs_rset = False
        #: Whether MAIL carries ``AUTH=<>`` when AUTH is advertised (RFC 4954
        #: allows it; python-slimta sends it). Cleared for the rest of the
        #: connection when a server refuses it.
        self.auth_param = True
        #: Set once an opportunistic STARTTLS handshake failed: no more STARTTLS.
        self.clear_text_only = False
        self._timers = SessionTimers()

    # -- stages --------------------------------------------------------------------
    def stage(self, name: bytes, timeout: float | None) -> Bound | gevent.Timeout:
        """Enter the stage ``name``, bounded by ``timeout`` seconds.

        Use it as ``with session.stage(b'MAIL', timeouts.command):``. The name
        becomes the owner's ``current_command``, which a failure's reply names
        (and by which the MX relay tells a failure before the transaction from
        one inside it); the timeout starts on entry and is cancelled on exit.
        The session keeps one reusable timer per distinct ``timeout``; a stage
        entered inside another with the same value gets a fresh one.
        """
        self.owner.current_command = name
        return self._timers.bound(timeout)

    @property
    def command_timeout(self) -> float | None:
        """Seconds for one command and its reply."""
        return self.owner.timeouts.seconds("command")

    def protocol_client(self) -> Client:
        """The open protocol client; only valid while connected."""
        client = self.client
        assert client is not None, "the session is not connected"
        return client

    # -- failures --------------------------------------------------------------------
    def reply_for(
        self, exc: BaseException, command: bytes | None, last: Reply | None
    ) -> Reply:
        """The reply reporting ``exc``, naming this connection's peer as its ``address``.

        As in python-slimta, a reply made up here (a timeout, a lost connection)
        carries the server's address, as one the server sent does; a bounce
        names it as the remote MTA.
        """
        reply = reply_for_exception(exc, command, last)
        if reply.address is None:
            reply.address = self.owner.address
        return reply

    def error_for(self, exc: BaseException) -> RelayError:
        """The relay error for ``exc``, which ended the current stage.

        Anything but a decision made here (:class:`Abort`, :class:`TlsFailure`)
        leaves the stream broken or out of sync, so QUIT is skipped.
        """
        if isinstance(exc, RelayError):
            return exc
        if not isinstance(exc, (Abort, TlsFailure)):
            self.usable = False
        last = self.client.last_error if self.client is not None else None
        return SmtpRelayError.factory(self.reply_for(exc, self.owner.current_command, last))

    # -- opening -------------------------------------------------------------------
    def open(self) -> None:
        """Connect, read the banner, greet, start TLS and authenticate.

        When TLS is only opportunistic and its handshake fails (often a
        self-signed or expired certificate), RFC 3207 lets delivery go on
        without TLS: once, on a fresh connection, since this one is broken.

        :raises: whatever ended a stage; :meth:`error_for` maps it.
        """
        try:
            self._connect()
            self._handshake()
        except _ClearTextRetry:
            self.usable = False
            self.close()
            self.clear_text_only = True
            self._connect()
            self._handshake()

    def _connect(self) -> None:
        owner = self.owner
        with self.stage(b"[CONNECT]", owner.timeouts.seconds("connect")):
            sock = owner.socket_creator(owner.address)
        trace = owner.trace
        if trace is None:
            client = self.protocol(sock, owner.address)
        else:
            client = self.protocol(sock, owner.address, trace=trace())
        self.socket, self.client = owner.socket, owner.client = sock, client
        self.usable = True
        if owner.tls_immediately:
            with gevent.Timeout(self.command_timeout):
                client.encrypt(self._tls_context())
        with self.stage(b"[BANNER]", self.command_timeout):
            banner = client.get_banner()
        if banner.is_error():
            raise server_error(banner)

    def _handshake(self) -> None:
        self.greet()
        if not self.owner.tls_immediately:
            self._starttls()
        if self.owner.credentials is not None:
            self._authenticate()

    def _ehlo_name(self) -> str:
        name: Any = self.owner.ehlo_as
        if callable(name):
            name = name(self.owner.address)
        if name is None:
            name = local_fqdn()
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        try:
            check_ehlo_name(name)
        except ValueError:
            raise Abort(misconfigured("Invalid EHLO name configured", self.owner.current_command))
        return str(name)

    def greet(self) -> None:
        """LHLO for LMTP; otherwise EHLO, falling back to HELO on 500 or 502."""
        client = self.protocol_client()
        timeout = self.command_timeout
        if isinstance(client, LmtpClient):
            self.owner.current_command = b"LHLO"
            name = self._ehlo_name()
            with self.stage(b"LHLO", timeout):
                reply = client.lhlo(name)
        else:
            self.owner.current_command = b"EHLO"
            name = self._ehlo_name()
            with self.stage(b"EHLO", timeout):
                reply = client.ehlo(name)
            if reply.code in ("500", "502"):
                with self.stage(b"HELO", timeout):
                    reply = client.helo(name)
        if reply.is_error():
            raise server_error(reply)

    def _tls_context(self) -> ssl.SSLContext:
        owner = self.owner
        if owner.context is None:
            owner.context = ssl.create_default_context()
        return owner.context

    def _starttls(self) -> None:
        client = self.protocol_client()
        tls_required = self.owner.tls_required
        if "STARTTLS" not in client.extensions:
            if tls_required:
                self.owner.current_command = b"STARTTLS"
                raise TlsFailure("STARTTLS not offered by the server")
            return
        if self.clear_text_only:
            return
        try:
            with self.stage(b"STARTTLS", self.command_timeout):
                reply = client.starttls(self._tls_context())
        except ssl.SSLError:
            if tls_required:
                raise
            raise _ClearTextRetry()
        if reply.code != "220":
            if tls_required:
                raise TlsFailure(f"STARTTLS refused: {reply}")
            return  # opportunistic: carry on in clear
        client.extensions.reset()
        self.greet()

    def _authenticate(self) -> None:
        client = self.protocol_client()
        owner = self.owner
        owner.current_command = b"AUTH"
        credentials = owner.credentials
        if callable(credentials):
            credentials = credentials()
        assert credentials is not None
        authcid, secret, *rest = tuple(credentials)
        authzid = rest[0] if rest else None
        with self.stage(b"AUTH", self.command_timeout):
            reply = client.auth(
                authcid,
                secret,
                authzid,
                mechanism=owner.auth_mechanism,
                allow_insecure=owner.allow_insecure_auth,
            )
        if reply.is_error():
            raise server_error(reply)

    # -- between transactions ----------------------------------------------------------
    def server_has_spoken(self) -> bool:
        """On a reused connection: did the server send something (say a 421)?

        Never waits. When it did, read what is there and give the connection up.
        """
        client = self.protocol_client()
        if not client.has_reply_waiting():
            return False
        self.usable = False
        try:
            with gevent.Timeout(self.command_timeout):
                client.get_reply(b"[TIMEOUT]")
        except (Exception, gevent.Timeout):
            pass  # the connection is given up either way
        return True

    def end_transaction(self, next_open: bool) -> bool:
        """RSET when a transaction was left open. False when the session should end.

        :param next_open: the next transaction's commands already went out
            behind the last message, so there is nothing to reset.
        """
        if not self.usable:
            return False
        if next_open or not self.needs_rset:
            return True
        self.needs_rset = False
        client = self.protocol_client()
        try:
            with self.stage(b"RSET", self.command_timeout):
                rset = client.rset()
        except (Exception, gevent.Timeout):
            self.usable = False
            return False
        return not rset.is_error()

    # -- closing -------------------------------------------------------------------
    def close(self) -> None:
        """QUIT when the connection can still carry it (best effort), then close.

        Each socket object is closed exactly once: the TLS wrapper, if any, and
        the socket it wraps.
        """
        client, sock = self.client, self.socket
        self.client = self.socket = self.owner.client = self.owner.socket = None
        self._timers.close()  # frees the native timers
        closed = False
        try:
            if client is not None and self.usable:
                try:
                    with gevent.Timeout(self.command_timeout):
                        client.quit()
                        client.io.close()
                        closed = True
                except (Exception, gevent.Timeout):
                    pass  # best effort: the server may already be gone
        finally:
            self.usable = False
            raw = getattr(client.io, "socket", None) if client is not None else None
            if raw is not None and raw is not sock and not closed:
                raw.close()  # the TLS wrapper
            if sock is not None and not (closed and raw is sock):
                sock.close()
