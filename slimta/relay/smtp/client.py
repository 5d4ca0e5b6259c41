"""One outbound SMTP connection that delivers queued envelopes in turn.

:class:`SmtpRelayClient` owns the life of a single connection: connect,
greet, TLS, AUTH, then one transaction per envelope it takes from its pool's
queue, then ``QUIT``. It speaks SMTP only through :class:`~slimta.smtp.client.Client`
and turns every failure into a :class:`~slimta.smtp.reply.Reply` in exactly one
place, :func:`slimta.relay.smtp._failures.reply_for_exception`. What a transaction
will send is decided first, without I/O, by :mod:`slimta.relay.smtp._plan`.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Union

import gevent
from gevent import socket

from slimta.relay import RelayError, RelayResult
from slimta.relay.pool import RelayPoolClient
from slimta.relay.smtp import SmtpRelayError

# How a connection is opened lives in a private module; these names stay
# importable from here, where they have always been.
from slimta.relay.smtp._connect import Address as Address
from slimta.relay.smtp._connect import SocketCreator as SocketCreator
from slimta.relay.smtp._connect import default_socket_creator as default_socket_creator
from slimta.relay.smtp._connect import local_fqdn
from slimta.relay.smtp._failures import Abort, TlsFailure, reply_for_exception, server_error
from slimta.relay.smtp._plan import (
    Plan,
    RcptOutcome,
    in_envelope_order,
    plan_transaction,
    raise_if_uniform,
)
from slimta.smtp import ConnectionLost
from slimta.smtp._wire import check_ehlo_name
from slimta.smtp.client import Client
from slimta.smtp.reply import Reply

if TYPE_CHECKING:
    from email.message import Message

    from gevent.event import AsyncResult

    from slimta.envelope import Envelope
    from slimta.util.deque import BlockingDeque

__all__ = ["SmtpRelayClient"]

Credentials = Union[Iterable[str], Callable[[], Iterable[str]]]


class _Requeue(Exception):
    """The reused connection went away before the server saw the message."""


class _ClearTextRetry(Exception):
    """An opportunistic STARTTLS handshake failed: retry once, in clear."""


class _Chained(NamedTuple):
    """The next envelope, whose MAIL/RCPT/DATA went out behind the previous message.

    RFC 2920 lets message content start a command group: with PIPELINING and
    more work queued, the next transaction's commands follow the end-of-data
    marker in the same write, so a reused connection costs one round trip per
    message. ``sent`` holds the replies, filled by the same read.
    """

    result: AsyncResult
    envelope: Envelope
    plan: Plan
    sent: tuple[Reply, list[tuple[str, Reply]], Reply]


class SmtpRelayClient(RelayPoolClient):
    """One outbound SMTP connection, used for as many envelopes as it is given.

    :param address: ``(host, port)`` of the server; a host that is an absolute
        path names a unix socket.
    :param queue: the pool's request queue.
    :param socket_creator: ``f(address) -> socket``, called with one argument
        inside ``connect_timeout``. Defaults to
        :func:`gevent.socket.create_connection` (a direct connect for an
        address literal, a unix-socket connect for a path); the
        ``socket_creator`` attribute holds the one in use, so a subclass can
        call it.
    :param ehlo_as: the name to greet with, or ``f(address) -> str`` called on
        each connection. Defaults to the host's FQDN, which the
        ``ehlo_as`` attribute then holds.
    :param context: :class:`ssl.SSLContext` for STARTTLS and implicit TLS;
        ``None`` builds :func:`ssl.create_default_context` when TLS is first used.
    :param auth_mechanism: forces a SASL mechanism, e.g. ``'CRAM-MD5'``.
    :param tls_immediately: start TLS on connect (port 465 style).
    :param tls_required: deliver only over TLS; otherwise fail ``421 4.7.0``.
        Without it, STARTTLS is used when offered, and when its handshake fails
        (say, an untrusted certificate) the message goes in clear on a fresh
        connection, once (RFC 3207 opportunistic TLS).
    :param connect_timeout: seconds to connect.
    :param command_timeout: seconds for each command and its reply.
    :param data_timeout: seconds to send the message and read the final
        reply or replies; ``None`` uses ``command_timeout`` (the
        ``data_timeout`` attribute then holds that value).
    :param idle_timeout: seconds to keep an idle connection open for the next
        envelope; ``None`` sends ``QUIT`` after one envelope.
    :param credentials: ``(authcid, secret[, authzid])``, or a callable
        returning it, to authenticate with.
    :param binary_encoder: e.g. :func:`email.encoders.encode_base64`, used to
        convert 8-bit messages for servers without 8BITMIME.
    :param allow_insecure_auth: allow PLAIN, LOGIN and XOAUTH2 without TLS.
    """

    #: The protocol class; :class:`~slimta.smtp.client.LmtpClient` for LMTP.
    _client_class: type[Client] = Client

    def __init__(
        self,
        address: Address,
        queue: BlockingDeque | None,
        socket_creator: SocketCreator | None = None,
        ehlo_as: str | Callable[[Address], str] | None = None,
        context: ssl.SSLContext | None = None,
        auth_mechanism: str | bytes | None = None,
        tls_immediately: bool = False,
        tls_required: bool = False,
        connect_timeout: float | None = 10.0,
        command_timeout: float | None = 10.0,
        data_timeout: float | None = None,
        idle_timeout: float | None = None,
        credentials: Credentials | None = None,
        binary_encoder: Callable[[Message], None] | None = None,
        allow_insecure_auth: bool = False,
    ) -> None:
        super().__init__(queue, idle_timeout)
        self.address = address
        # Resolved defaults are stored, as python-slimta does: a subclass that
        # overrides _run() may call self.socket_creator(address) itself.
        self.socket_creator: SocketCreator = socket_creator or default_socket_creator
        self.ehlo_as: str | Callable[[Address], str] = ehlo_as or local_fqdn()
        self.context = context
        self.auth_mechanism = auth_mechanism
        self.tls_immediately = tls_immediately
        self.tls_required = tls_required
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.data_timeout = command_timeout if data_timeout is None else data_timeout
        self.credentials = credentials
        self.binary_encoder = binary_encoder
        self.allow_insecure_auth = allow_insecure_auth
        self.socket: socket.socket | None = None
        self.client: Client | None = None
        #: The stage in progress, named in error replies (``b'MAIL'``, ``b'[CONNECT]'``...).
        self.current_command: bytes | None = None
        # False once the connection can no longer carry a command (QUIT is skipped).
        self._usable = False
        # True while a MAIL transaction is open on the server and needs an RSET.
        self._needs_rset = False
        # Whether MAIL carries AUTH=<> when AUTH is advertised (Compat).
        self._auth_param = True
        # Set after an opportunistic STARTTLS handshake failed: skip STARTTLS.
        self._clear_text_only = False
        # The next request, already started on the wire behind the current one.
        self._next: _Chained | None = None

    # -- session ---------------------------------------------------------------
    def _run(self) -> None:
        result, envelope = self.poll()
        if result is None or envelope is None:
            return
        try:
            try:
                self._connect()
                self._handshake()
            except _ClearTextRetry:
                # TLS was only opportunistic and its handshake failed (often a
                # self-signed or expired certificate): RFC 3207 lets delivery go
                # on without TLS, on a fresh connection since this one is broken.
                self._usable = False
                self._disconnect()
                self._clear_text_only = True
                self._connect()
                self._handshake()
            reused = False
            chained: _Chained | None = None
            while True:
                if reused and chained is None and self._server_has_spoken():
                    self._requeue(result, envelope)
                    return
                try:
                    result.set(self._deliver(envelope, reused, chained))
                except _Requeue:
                    self._usable = False
                    self._requeue(result, envelope)
                    return
                except RelayError as error:
                    result.set_exception(error)
                    if error.reply.code == "421":  # the server is closing
                        self._usable = False
                if not self._end_transaction():
                    return
                if self.idle_timeout is None:
                    return
                chained, self._next = self._next, None
                if chained is not None:
                    result, envelope = chained.result, chained.envelope
                    self._pending = result
                else:
                    result, envelope = self.poll()
                    if result is None or envelope is None:
                        return
                reused = True
        except gevent.GreenletExit:
            self._usable = False  # killed: close at once, no QUIT round trip
            raise
        except (Exception, gevent.Timeout) as exc:
            failure = self._error_for(exc)
            if result is not None and not result.ready():
                result.set_exception(failure)
        finally:
            nxt, self._next = self._next, None
            if nxt is not None and not nxt.result.ready():
                self._requeue(nxt.result, nxt.envelope)  # its data was never sent
            self._disconnect()

    def _error_for(self, exc: BaseException) -> RelayError:
        if isinstance(exc, RelayError):
            return exc
        if not isinstance(exc, (Abort, TlsFailure)):
            self._usable = False  # the stream is broken or out of sync: no QUIT
        last = self.client.last_error if self.client is not None else None
        return SmtpRelayError.factory(self._reply_for(exc, self.current_command, last))

    def _reply_for(self, exc: BaseException, command: bytes | None, last: Reply | None) -> Reply:
        """The reply reporting ``exc``, naming this connection's peer as its ``address``.

        As in python-slimta, a reply made up here (a timeout, a lost connection)
        carries the server's address, as one the server sent does; a bounce
        names it as the remote MTA.
        """
        reply = reply_for_exception(exc, command, last)
        if reply.address is None:
            reply.address = self.address
        return reply

    def _connect(self) -> None:
        self.current_command = b"[CONNECT]"
        with gevent.Timeout(self.connect_timeout):
            self.socket = self.socket_creator(self.address)
        self.client = self._client_class(self.socket, self.address)
        self._usable = True
        if self.tls_immediately:
            with gevent.Timeout(self.command_timeout):
                self._encrypt()
        self.current_command = b"[BANNER]"
        with gevent.Timeout(self.command_timeout):
            banner = self.client.get_banner()
        if banner.is_error():
            raise server_error(banner)

    def _handshake(self) -> None:
        self._greet()
        if not self.tls_immediately:
            self._starttls()
        if self.credentials is not None:
            self._authenticate()

    def _ehlo_name(self) -> str:
        name: Any = self.ehlo_as
        if callable(name):
            name = name(self.address)
        if name is None:
            name = local_fqdn()
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        try:
            check_ehlo_name(name)
        except ValueError:
            raise Abort(
                Reply("451", "4.3.5 Invalid EHLO name configured", self.current_command)
            )
        return str(name)

    def _greet(self) -> None:
        """EHLO, falling back to HELO on 500 or 502."""
        assert self.client is not None
        self.current_command = b"EHLO"
        name = self._ehlo_name()
        with gevent.Timeout(self.command_timeout):
            reply = self.client.ehlo(name)
        if reply.code in ("500", "502"):
            self.current_command = b"HELO"
            with gevent.Timeout(self.command_timeout):
                reply = self.client.helo(name)
        if reply.is_error():
            raise server_error(reply)

    def _tls_context(self) -> ssl.SSLContext:
        if self.context is None:
            self.context = ssl.create_default_context()
        return self.context

    def _encrypt(self) -> None:
        assert self.client is not None
        self.client.encrypt(self._tls_context())

    def _starttls(self) -> None:
        assert self.client is not None
        offered = "STARTTLS" in self.client.extensions
        if not offered:
            if self.tls_required:
                self.current_command = b"STARTTLS"
                raise TlsFailure("STARTTLS not offered by the server")
            return
        if self._clear_text_only:
            return
        self.current_command = b"STARTTLS"
        try:
            with gevent.Timeout(self.command_timeout):
                reply = self.client.starttls(self._tls_context())
        except ssl.SSLError:
            if self.tls_required:
                raise
            raise _ClearTextRetry()
        if reply.code != "220":
            if self.tls_required:
                raise TlsFailure(f"STARTTLS refused: {reply}")
            return  # opportunistic: carry on in clear
        self.client.extensions.reset()
        self._greet()

    def _authenticate(self) -> None:
        assert self.client is not None
        self.current_command = b"AUTH"
        credentials = self.credentials
        if callable(credentials):
            credentials = credentials()
        assert credentials is not None
        authcid, secret, *rest = tuple(credentials)
        authzid = rest[0] if rest else None
        with gevent.Timeout(self.command_timeout):
            reply = self.client.auth(
                authcid,
                secret,
                authzid,
                mechanism=self.auth_mechanism,
                allow_insecure=self.allow_insecure_auth,
            )
        if reply.is_error():
            raise server_error(reply)

    def _server_has_spoken(self) -> bool:
        """On a reused connection: did the server send something (say a 421)?

        Never waits. When it did, read what is there and give the connection up.
        """
        assert self.client is not None
        if not self.client.has_reply_waiting():
            return False
        self._usable = False
        try:
            with gevent.Timeout(self.command_timeout):
                self.client.get_reply(b"[TIMEOUT]")
        except (Exception, gevent.Timeout):
            pass  # the connection is given up either way
        return True

    def _end_transaction(self) -> bool:
        """RSET when a transaction was left open. False when the session should end."""
        if not self._usable:
            return False
        if self._next is not None:
            return True  # the next transaction is already open on the server
        if not self._needs_rset:
            return True
        self._needs_rset = False
        self.current_command = b"RSET"
        assert self.client is not None
        try:
            with gevent.Timeout(self.command_timeout):
                rset = self.client.rset()
        except (Exception, gevent.Timeout):
            self._usable = False
            return False
        return not rset.is_error()

    def _disconnect(self) -> None:
        client, sock = self.client, self.socket
        self.client = self.socket = None
        closed = False  # each socket object is closed once
        try:
            if client is not None and self._usable:
                try:
                    with gevent.Timeout(self.command_timeout):
                        client.quit()
                        client.io.close()
                        closed = True
                except (Exception, gevent.Timeout):
                    pass  # best effort: the server may already be gone
        finally:
            self._usable = False
            raw = getattr(client.io, "socket", None) if client is not None else None
            if raw is not None and raw is not sock and not closed:
                raw.close()  # the TLS wrapper
            if sock is not None and not (closed and raw is sock):
                sock.close()

    # -- one envelope ------------------------------------------------------------
    def _deliver(
        self, envelope: Envelope, reused: bool, chained: _Chained | None = None
    ) -> RelayResult:
        """Run one transaction. Raises a RelayError when the message failed."""
        if chained is not None:
            return self._transaction(chained.plan, reused, chained.sent)
        try:
            assert self.client is not None
            plan = plan_transaction(envelope, self.client.extensions, self.binary_encoder)
        except RelayError:
            raise
        except Exception as exc:  # nothing was sent: the session goes on
            raise SmtpRelayError.factory(self._reply_for(exc, b"MAIL", None))
        return self._transaction(plan, reused)

    def _transaction(
        self,
        plan: Plan,
        reused: bool,
        sent: tuple[Reply, list[tuple[str, Reply]], Reply | None] | None = None,
    ) -> RelayResult:
        client = self.client
        assert client is not None
        self._needs_rset = True
        replies: list[Reply] = []  # MAIL's reply first, once it is known
        try:
            mail, rcpt_replies, data = sent or self._send_envelope(plan, replies)
        except (ConnectionLost, OSError) as exc:
            # On a reused connection the server may have closed it while idle: the
            # message was never seen, so another connection can carry it.
            nothing_yet = not replies or not replies[0] or replies[0].code == "421"
            if reused and nothing_yet and not isinstance(exc, TimeoutError):
                raise _Requeue()
            raise
        if reused and mail.code == "421":
            raise _Requeue()  # the server was closing the idle connection
        if mail.code == "555" and self._auth_param and "AUTH" in client.extensions:
            # Some servers (aiosmtpd) refuse the AUTH=<> parameter that RFC 4954
            # allows: retry this transaction, and the connection's next ones, without.
            self._auth_param = False
            self._resync(data)
            self.current_command = b"RSET"
            with gevent.Timeout(self.command_timeout):
                client.rset()
            return self._transaction(plan, reused)
        if mail.is_error():
            self._resync(data)
            raise server_error(mail)

        outcomes: dict[str, RcptOutcome] = dict(plan.refused)
        accepted: list[str] = []
        for rcpt, reply in rcpt_replies:
            if reply.is_error():
                outcomes.setdefault(rcpt, server_error(reply))
            else:
                accepted.append(rcpt)
        if not accepted:
            self._resync(data)
            raise_if_uniform(plan.order, outcomes)
            # Mixed classes: each recipient keeps its own.
            return in_envelope_order(plan.order, outcomes)
        assert data is not None
        if data.code != "354":
            raise server_error(data)
        self.current_command = b"[SEND_DATA]"
        timeout = self.data_timeout if self.data_timeout is not None else self.command_timeout
        with gevent.Timeout(timeout):
            outcomes.update(self._send_message(plan, accepted))
        return in_envelope_order(plan.order, outcomes)

    def _send_envelope(
        self, plan: Plan, replies: list[Reply]
    ) -> tuple[Reply, list[tuple[str, Reply]], Reply | None]:
        """MAIL, RCPTs and DATA: one write with PIPELINING, else one at a time.

        Without PIPELINING, stops after a failed MAIL, and skips DATA when every
        RCPT failed. ``replies`` receives MAIL's reply as soon as it exists.
        """
        client = self.client
        assert client is not None
        pipelining = "PIPELINING" in client.extensions
        self.current_command = b"MAIL"
        with gevent.Timeout(self.command_timeout):
            mail = client.mailfrom(
                plan.sender,
                data_size=plan.size,
                auth=False if self._auth_param else None,
                body=plan.body_type,
                smtputf8=plan.smtputf8,
            )
        replies.append(mail)
        if not pipelining and mail.is_error():
            return mail, [], None
        self.current_command = b"RCPT"
        rcpt_replies: list[tuple[str, Reply]] = []
        for rcpt in plan.recipients:
            with gevent.Timeout(self.command_timeout):
                rcpt_replies.append((rcpt, client.rcptto(rcpt)))
        data: Reply | None = None
        if pipelining or any(not reply.is_error() for _, reply in rcpt_replies):
            self.current_command = b"DATA"
            with gevent.Timeout(self.command_timeout):
                data = client.data()
        return mail, rcpt_replies, data

    def _resync(self, data: Reply | None) -> None:
        """After a failure that the server answered with 354, end the empty message."""
        if data is None or data.code != "354":
            return
        assert self.client is not None
        self.current_command = b"[SEND_DATA]"
        with gevent.Timeout(self.command_timeout):
            self.client.send_empty_data()

    def _send_message(self, plan: Plan, accepted: list[str]) -> Mapping[str, RcptOutcome]:
        """Send the data and read the final reply: one outcome per accepted recipient.

        Runs inside ``data_timeout``. Raises a RelayError when the whole
        message was refused.
        """
        client = self.client
        assert client is not None
        reply = client.send_data(plan.header, plan.body)
        if not reply:
            chained = self._start_next(client)
            flushed = False
            try:
                client._flush_pipeline()
                flushed = True
            except (Exception, gevent.Timeout):
                if not reply:
                    raise  # this message's own reply never came
                # Only the next transaction's replies were lost: this message's
                # reply stands, and the broken connection ends after it.
                self._usable = False
            finally:
                if chained is not None:
                    if flushed:
                        self._next = chained
                    else:
                        self._requeue(chained.result, chained.envelope)
        if reply.is_error():
            raise server_error(reply)  # RSET follows, unless the next one is open
        self._needs_rset = False
        return dict.fromkeys(accepted, reply)

    def _start_next(self, client: Client) -> _Chained | None:
        """Queue the next envelope's MAIL/RCPT/DATA behind this message, if one waits.

        Only with PIPELINING and a reusable connection; nothing is written here.
        """
        queue = self.queue
        if (
            self.idle_timeout is None
            or queue is None
            or not self._usable
            or "PIPELINING" not in client.extensions
        ):
            return None
        item = queue._popleft_nowait()
        if item is None:
            return None
        result, envelope = item
        try:
            plan = plan_transaction(envelope, client.extensions, self.binary_encoder)
        except Exception:
            queue.appendleft(item)  # it fails on its own turn, the ordinary way
            return None
        try:
            mail = client.mailfrom(
                plan.sender,
                data_size=plan.size,
                auth=False if self._auth_param else None,
                body=plan.body_type,
                smtputf8=plan.smtputf8,
            )
            rcpt_replies = [(rcpt, client.rcptto(rcpt)) for rcpt in plan.recipients]
        except Exception:
            # The plan checked every address, so this should not happen; if it
            # does, the wire holds part of a transaction: end the connection.
            self._usable = False
            queue.appendleft(item)
            return None
        data = Reply(command=b"DATA")
        client._queue(data, b"DATA\r\n")
        return _Chained(result, envelope, plan, (mail, rcpt_replies, data))


