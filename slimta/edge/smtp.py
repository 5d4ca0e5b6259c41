"""An :class:`~slimta.edge.Edge` that receives messages over SMTP.

:class:`SmtpEdge` runs one :class:`~slimta.smtp.server.Server` per connection,
with an :class:`SmtpSession` as its handlers; the session calls the
``handle_*`` hooks of your :class:`SmtpValidators` subclass and hands each
complete message to the queue. The client gets ``250`` after the data only once
:meth:`~slimta.queue.Queue.enqueue` has returned an id, that is once the store
holds the message; a store failure answers ``451 4.3.0`` (or the error's own
reply). A client that goes away before the final ``.`` leaves nothing queued.

Reverse DNS: each session starts a PTR lookup of the client's IP
(:class:`~slimta.util.ptrlookup.PtrLookup`) when it sends the banner, and lets it
run beside the conversation. Nothing waits for it but the first message's final
reply, which takes the answer as ``envelope.client['host']``, and it waits only
until :attr:`SmtpSession.ptr_lookup_runtime` (:data:`PTR_LOOKUP_RUNTIME_SECONDS`)
have passed since the banner. So a slow or silent DNS server never delays the
banner, any command, or a client slower than that bound; it costs a fast client
at most that much once per session (``client['host']`` is then ``None``). A
lookup still running when the session ends is stopped. Answers are cached for
their TTL (see :mod:`slimta.util.ptrlookup`).
"""

from __future__ import annotations

from typing import Any

from slimta.edge import EdgeServer
from slimta.envelope import Envelope
from slimta.queue import QueueError
from slimta.relay import RelayError
from slimta.smtp import ConnectionLost
from slimta.smtp.reply import Reply
from slimta.smtp.server import Server
from slimta.util.ptrlookup import PtrLookup, cached_ptr

__all__ = ["SmtpEdge", "SmtpValidators", "SmtpSession"]

#: How long after the banner the first message waits, at most, for the PTR answer.
PTR_LOOKUP_RUNTIME_SECONDS = 0.5


class _HookNames(dict[str, str]):
    """``'mail'`` -> ``'handle_mail'``, made once per name."""

    def __missing__(self, command: str) -> str:
        name = self[command] = "handle_" + command
        return name


_HOOK_NAMES = _HookNames()


class SmtpValidators:
    """Base class for the command validators of an :class:`SmtpEdge`.

    Subclasses implement any of these; each may change ``reply`` (leaving it
    alone keeps the default success). A ``421`` or ``221`` code closes the
    connection.

    - ``handle_banner(reply, address)``: before the banner.
    - ``handle_ehlo(reply, ehlo_as)`` / ``handle_helo(reply, helo_as)``.
    - ``handle_tls()`` and ``handle_tls2(ssl_socket)``: after a TLS handshake.
    - ``handle_auth(reply, creds)``: an AUTH attempt; ``creds`` has ``authcid``,
      ``authzid``, ``verify(identity)`` and ``check_secret(secret)``. Without
      this hook every AUTH attempt fails.
    - ``handle_mail(reply, sender, params)`` / ``handle_rcpt(reply, recipient, params)``.
    - ``handle_data(reply)``: before ``354``.
    - ``handle_have_data(reply, data)``: the received message bytes.
    - ``handle_queued(reply, results)``: after :meth:`~slimta.queue.Queue.enqueue`.
    - ``handle_rset(reply)``, ``handle_noop(reply)``, ``handle_quit(reply)``.
    - ``handle_close()``: the session ended.

    :param session: the :class:`SmtpSession`, kept as :attr:`session`: it has
        ``address``, ``extended_smtp``, ``security`` (``None`` or ``'TLS'``),
        ``ehlo_as``, ``auth`` (``(authcid, authzid)`` once authenticated) and
        ``envelope``.
    """

    def __init__(self, session: Any) -> None:
        self.session = session


class SmtpSession:
    """The handlers object of one SMTP connection (python-slimta's hooks).

    :param address: the client's address.
    :param validator_class: an :class:`SmtpValidators` subclass, or ``None``.
    :param handoff: called with each complete envelope, returns the queue results.

    A reverse DNS lookup of the client's IP starts with the banner and runs beside
    the session. The first message takes its answer as ``client['host']``
    (:attr:`reverse_address`), waiting for it only until
    :attr:`ptr_lookup_runtime` seconds have passed since the banner; a slower or
    failed lookup leaves ``None``. The banner and the commands never wait for it.
    """

    #: Seconds after the banner until which the first message waits for the PTR
    #: answer (set it on a subclass, passed as ``session_class``; ``0`` never waits).
    ptr_lookup_runtime: float = PTR_LOOKUP_RUNTIME_SECONDS

    def __init__(self, address: Any, validator_class: Any, handoff: Any) -> None:
        self.extended_smtp = False
        self.security: str | None = None
        self.address = address
        self.reverse_address: str | None = None
        self.handoff = handoff
        self.validators = validator_class(self) if validator_class else None
        self.envelope: Envelope | None = None
        self.ehlo_as: str | None = None
        self.auth: tuple[str, str] | None = None
        self._ptr_lookup: PtrLookup | None = None

    def _call_validator(self, command: str, *args: Any) -> None:
        validators = self.validators
        if validators is None:
            return
        method = getattr(validators, _HOOK_NAMES[command], None)
        if method is not None:
            method(*args)

    @property
    def protocol(self) -> str:
        """``SMTP``, ``ESMTP``, ``ESMTPS``, ``ESMTPSA``... for trace headers."""
        proto = "ESMTP" if self.extended_smtp else "SMTP"
        if self.security == "TLS":
            proto += "S"
        if self.auth:
            proto += "A"
        return proto

    def _finish_ptr_lookup(self) -> None:
        lookup, self._ptr_lookup = self._ptr_lookup, None
        if lookup is not None:
            self.reverse_address = lookup.finish(runtime=self.ptr_lookup_runtime)

    def BANNER_(self, reply: Reply) -> None:  # noqa: N802
        if isinstance(self.address, tuple) and self.address:
            ip = self.address[0]
            host = cached_ptr(ip)
            if host is not None:
                self.reverse_address = host  # still within the TTL: no lookup
            else:
                self._ptr_lookup = PtrLookup(ip)
                self._ptr_lookup.start()
        self._call_validator("banner", reply, self.address)

    def EHLO(self, reply: Reply, ehlo_as: str) -> None:  # noqa: N802
        self._call_validator("ehlo", reply, ehlo_as)
        self.extended_smtp = True
        if reply.code == "250":
            self.ehlo_as = ehlo_as
            self.envelope = None

    def HELO(self, reply: Reply, helo_as: str) -> None:  # noqa: N802
        self._call_validator("helo", reply, helo_as)
        if reply.code == "250":
            self.ehlo_as = helo_as
            self.envelope = None

    def TLSHANDSHAKE2(self, ssl_socket: Any) -> None:  # noqa: N802
        self._call_validator("tls")
        self._call_validator("tls2", ssl_socket)
        self.security = "TLS"

    def AUTH(self, reply: Reply, creds: Any) -> None:  # noqa: N802
        if getattr(self.validators, "handle_auth", None) is None:
            # Nothing can check the credentials: never accept them.
            reply.code = "535"
            reply.message = "5.7.8 Authentication credentials invalid"
            return
        self._call_validator("auth", reply, creds)
        if reply.code == "235":
            self.auth = (creds.authcid, creds.authzid)

    def RSET(self, reply: Reply) -> None:  # noqa: N802
        self._call_validator("rset", reply)
        if reply.code == "250":
            self.envelope = None

    def NOOP(self, reply: Reply) -> None:  # noqa: N802
        self._call_validator("noop", reply)

    def QUIT(self, reply: Reply) -> None:  # noqa: N802
        self._call_validator("quit", reply)

    def CLOSE(self) -> None:  # noqa: N802
        self._stop_ptr_lookup()
        self._call_validator("close")

    def _stop_ptr_lookup(self) -> None:
        lookup, self._ptr_lookup = self._ptr_lookup, None
        if lookup is not None:
            lookup.kill(block=False)

    def MAIL(self, reply: Reply, address: str, params: dict[bytes, Any]) -> None:  # noqa: N802
        self._call_validator("mail", reply, address, params)
        if reply.code == "250":
            self.envelope = Envelope(sender=address)

    def RCPT(self, reply: Reply, address: str, params: dict[bytes, Any]) -> None:  # noqa: N802
        self._call_validator("rcpt", reply, address, params)
        if reply.code == "250" and self.envelope is not None:
            self.envelope.recipients.append(address)

    def DATA(self, reply: Reply) -> None:  # noqa: N802
        self._call_validator("data", reply)

    def HAVE_DATA(self, reply: Reply, data: bytes | None, err: Exception | None) -> None:  # noqa: N802
        if err is not None:
            # The server has set the reply (552 too big, 550 bare newline).
            self.envelope = None
            return
        self._call_validator("have_data", reply, data)
        if reply.code != "250" or self.envelope is None or data is None:
            self.envelope = None
            return
        envelope, self.envelope = self.envelope, None
        self._finish_ptr_lookup()
        envelope.client["ip"] = self.address[0] if self.address else None
        envelope.client["host"] = self.reverse_address
        envelope.client["name"] = self.ehlo_as
        envelope.client["protocol"] = self.protocol
        envelope.client["auth"] = self.auth
        # Split only when first needed: here that is in the relay, after the
        # client has its reply.
        envelope.parse(data, deferred=True)
        results = self.handoff(envelope)
        # One failed envelope (of a split) fails the whole message: a retry may
        # duplicate what was stored, a 250 would lose what was not.
        first: Any = None
        for _, result in results:
            if isinstance(result, (QueueError, RelayError)):
                first = result
                break
        if first is None:
            first = results[0][1] if results else QueueError("Nothing was queued")
        if isinstance(first, QueueError):
            reply.copy(getattr(first, "reply", None) or Reply("451", "4.3.0 Error queuing message"))
        elif isinstance(first, RelayError):
            reply.copy(first.reply)
        else:
            reply.message = "2.6.0 Message accepted for delivery"
        self._call_validator("queued", reply, results)


class SmtpEdge(EdgeServer):
    """Receives messages over SMTP and hands them to a queue.

    :param listener: ``(ip, port)`` to listen on.
    :param queue: the :class:`~slimta.queue.Queue` messages go to.
    :param pool: a :class:`gevent.pool.Pool` for the connection greenlets.
    :param max_size: the largest message accepted (advertised as ``SIZE``).
    :param validator_class: an :class:`SmtpValidators` subclass.
    :param auth: ``True`` (PLAIN, LOGIN) or a list of mechanism names.
    :param context: an :class:`ssl.SSLContext`: offers STARTTLS.
    :param tls_immediately: TLS before the banner (port 465) instead of STARTTLS.
    :param command_timeout: seconds to wait for each command (default 300).
    :param data_timeout: seconds, in all, for one message's data (default 600).
    :param hostname: this machine's name, see :class:`~slimta.edge.Edge`.
    :param session_class: an :class:`SmtpSession` subclass.
    :param max_sessions: the most connections served at once; one more gets
        ``421 4.3.2`` and is closed.
    :param bare_newline: ``'normalize'`` or ``'reject'`` a bare CR/LF in data.
    :param allow_insecure_auth: offer AUTH without TLS.
    :param auth_failure_base_delay: seconds before the first failed AUTH reply.

    The reverse DNS lookup of each client never holds up the banner or a
    command; see the module documentation and
    :attr:`SmtpSession.ptr_lookup_runtime` for the one bounded wait.
    """

    _default_session_class = SmtpSession

    def __init__(
        self,
        listener: Any,
        queue: Any,
        pool: Any = None,
        max_size: int | None = None,
        validator_class: Any = None,
        auth: Any = False,
        context: Any = None,
        tls_immediately: bool = False,
        command_timeout: float | None = None,
        data_timeout: float | None = None,
        hostname: str | None = None,
        session_class: Any = None,
        max_sessions: int | None = None,
        bare_newline: str = "normalize",
        allow_insecure_auth: bool = False,
        auth_failure_base_delay: float = 1.0,
    ) -> None:
        super().__init__(listener, queue, pool, hostname, max_sessions=max_sessions)
        self.max_size = max_size
        self.command_timeout = command_timeout
        self.data_timeout = data_timeout
        self.validator_class = validator_class
        self.auth = auth
        self.context = context
        self.tls_immediately = tls_immediately
        self.session_class = session_class or self._default_session_class
        self.bare_newline = bare_newline
        self.allow_insecure_auth = allow_insecure_auth
        self.auth_failure_base_delay = auth_failure_base_delay

    def handle(self, socket: Any, address: Any) -> None:
        """Serve one SMTP connection to its end."""
        smtp_server = None
        handlers = None
        try:
            handlers = self.session_class(address, self.validator_class, self.handoff)
            smtp_server = Server(
                socket,
                handlers,
                address,
                self.auth,
                self.context,
                self.tls_immediately,
                command_timeout=self.command_timeout,
                data_timeout=self.data_timeout,
                bare_newline=self.bare_newline,
                allow_insecure_auth=self.allow_insecure_auth,
                auth_failure_base_delay=self.auth_failure_base_delay,
            )
            auth_session = smtp_server.extensions.getparam("AUTH")
            if auth_session is not None:
                auth_session.hostname = self.hostname
            if self.max_size:
                smtp_server.extensions.add("SIZE", str(self.max_size))
            smtp_server.handle()
        except ConnectionLost:
            pass
        finally:
            stop_ptr_lookup = getattr(handlers, "_stop_ptr_lookup", None)
            if stop_ptr_lookup is not None:
                stop_ptr_lookup()
            if smtp_server is not None:
                try:
                    smtp_server.io.close()
                except OSError:
                    pass
            else:
                socket.close()
