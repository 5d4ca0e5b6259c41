"""One outbound SMTP connection that delivers queued envelopes in turn.

:class:`SmtpRelayClient` is the loop: it takes a request from its pool, opens a
:class:`~slimta.relay.smtp._session.Session` (connect, banner, EHLO, STARTTLS,
AUTH), runs one :class:`~slimta.relay.smtp._transaction.Transaction` per
envelope while the connection is kept, and ends with ``QUIT``. Every failure
becomes a :class:`~slimta.smtp.reply.Reply` in one place,
:func:`slimta.relay.smtp._failures.reply_for_exception`.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
from gevent import socket

from slimta.relay import RelayError
from slimta.relay._timeouts import TimeoutField, Timeouts
from slimta.relay.pool import RelayPoolClient

# How a connection is opened lives in a private module; these names stay
# importable from here, where they have always been.
from slimta.relay.smtp._connect import Address as Address
from slimta.relay.smtp._connect import SocketCreator as SocketCreator
from slimta.relay.smtp._connect import default_socket_creator as default_socket_creator
from slimta.relay.smtp._connect import local_fqdn
from slimta.relay.smtp._session import Credentials, Session
from slimta.relay.smtp._transaction import Chained, Requeue, Transaction
from slimta.smtp.client import Client, WireTrace

if TYPE_CHECKING:
    from email.message import Message

    from slimta.util.deque import BlockingDeque

__all__ = ["SmtpRelayClient", "TraceFactory"]

#: Called once per connection, as it opens; returns the
#: :data:`~slimta.smtp.client.WireTrace` told about that connection's bytes.
TraceFactory = Callable[[], WireTrace]


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
    :param trace: a :data:`TraceFactory`, called for each new connection; the
        callback it returns sees every byte of that connection (see
        :data:`~slimta.smtp.client.WireTrace`). ``None``, the default, costs nothing.

    The four timeouts are kept together in :attr:`timeouts`; the
    ``*_timeout`` attributes read and change it.
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
        *,
        trace: TraceFactory | None = None,
    ) -> None:
        #: Every timeout of this client, as one value.
        data = command_timeout if data_timeout is None else data_timeout
        self.timeouts = Timeouts(connect_timeout, command_timeout, data)
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
        self.credentials = credentials
        self.binary_encoder = binary_encoder
        self.allow_insecure_auth = allow_insecure_auth
        #: The :data:`TraceFactory` for new connections, or ``None``.
        self.trace = trace
        self.socket: socket.socket | None = None
        self.client: Client | None = None
        #: The stage in progress, named in error replies (``b'MAIL'``, ``b'[CONNECT]'``...).
        self.current_command: bytes | None = None
        self._session: Session | None = None

    # -- the timeouts, under python-slimta's attribute names ----------------------------
    connect_timeout = TimeoutField("connect", "Seconds to connect.")
    command_timeout = TimeoutField("command", "Seconds for each command and its reply.")
    data_timeout = TimeoutField(
        "data", "Seconds for the message data and its final reply or replies."
    )
    idle_timeout = TimeoutField(
        "idle", "Seconds an idle connection waits for the next envelope; ``None``: one envelope."
    )

    # -- the loop ------------------------------------------------------------------
    def _run(self) -> None:
        result, envelope = self.poll()
        if result is None or envelope is None:
            return  # nothing to do: no connection
        session = self._session = Session(self, self._client_class)
        chained: Chained | None = None  # the current envelope's commands already went out
        waiting: Chained | None = None  # the next one's went out behind the last message
        try:
            session.open()
            reused = False
            while result is not None and envelope is not None:
                keep = self.idle_timeout is not None  # the connection is kept for more
                transaction = Transaction(session, self, chain=keep)
                try:
                    if reused and chained is None and self._server_has_spoken():
                        raise Requeue()
                    result.set(transaction.run(envelope, reused, chained))
                except Requeue:
                    session.usable = False
                    self.requeue(result, envelope)
                    break
                except RelayError as error:
                    result.set_exception(error)
                    if error.reply.code == "421":  # the server is closing
                        session.usable = False
                finally:
                    waiting = transaction.next
                # RSET a failed transaction even when the session ends (python-slimta does).
                if not session.end_transaction(next_open=waiting is not None) or not keep:
                    break
                chained, waiting = waiting, None
                if chained is None:
                    result, envelope = self.poll()
                else:
                    result, envelope = chained.result, chained.envelope
                reused = True
        except gevent.GreenletExit:
            session.usable = False  # killed: close at once, no QUIT round trip
            raise
        except (Exception, gevent.Timeout) as exc:
            failure = session.error_for(exc)
            if result is not None and not result.ready():
                result.set_exception(failure)
        finally:
            if waiting is not None and not waiting.result.ready():
                self.requeue(waiting.result, waiting.envelope)  # its data was never sent
            session.close()
            self._session = None

    def _server_has_spoken(self) -> bool:
        """On a reused connection: did the server send something (say a 421)?

        Never waits; when it did, the connection is given up and the envelope
        goes back to the queue. A subclass may override this check.
        """
        assert self._session is not None
        return self._session.server_has_spoken()
