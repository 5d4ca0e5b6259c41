"""aiosmtpd in a background thread: the SMTP peer for TLS, AUTH, SMTPUTF8 and LMTP tests.

smtp-sink cannot do STARTTLS, real AUTH or per-recipient answers; aiosmtpd can, and
its handler hooks let a test record exactly what arrived. The server runs its own
asyncio loop in a real OS thread, so it keeps answering while the test's gevent hub
is busy with the client under test.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from support.tls import TlsCert
from support.util import GUARD_SECONDS, free_port

__all__ = [
    "AiosmtpdServer",
    "AuthAttempt",
    "RecordedEnvelope",
    "RecordingHandler",
    "aiosmtpd_server",
]

HOST = "127.0.0.1"
#: Name the server announces in its greeting and EHLO reply.
SERVER_HOSTNAME = "aiosmtpd.test"


@dataclass(frozen=True)
class RecordedEnvelope:
    """One accepted transaction, as the server saw it.

    ``rcpt_options`` holds one list per accepted recipient; with aiosmtpd 1.4 they are
    always empty, because it answers any RCPT parameter (``NOTIFY=``, ``ORCPT=``)
    with 555 before the handler runs; use smtp-sink to test DSN parameters.
    ``tls`` tells whether the session was encrypted (STARTTLS or implicit) and
    ``auth_login`` which user had authenticated, if any.
    """

    mail_from: str
    mail_options: list[str]
    rcpt_tos: list[str]
    rcpt_options: list[list[str]]
    content: bytes
    helo: str | None
    tls: bool
    auth_login: str | None
    smtp_utf8: bool


@dataclass(frozen=True)
class AuthAttempt:
    """One AUTH exchange: mechanism, login name and whether it was accepted."""

    mechanism: str
    login: str | None
    success: bool


@dataclass
class RecordingHandler:
    """aiosmtpd handler that records envelopes and answers as configured.

    Recipients in ``reject_rcpt`` get a 550 at RCPT and those in ``tempfail_rcpt``
    a 450; neither reaches the envelope. ``data_reply`` replaces the final 250 for
    every message (SMTP). In LMTP mode there is one reply per accepted recipient:
    ``lmtp_data_replies`` maps a recipient to its own reply line, others get 250.
    """

    reject_rcpt: Collection[str] = ()
    tempfail_rcpt: Collection[str] = ()
    data_reply: str | None = None
    lmtp: bool = False
    lmtp_data_replies: Mapping[str, str] = field(default_factory=dict)
    credentials: tuple[str, str] | None = None
    envelopes: list[RecordedEnvelope] = field(default_factory=list)
    auth_attempts: list[AuthAttempt] = field(default_factory=list)
    _rcpt_options: dict[int, list[list[str]]] = field(default_factory=dict)

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Reject configured recipients, accept and remember the rest."""
        if address in self.reject_rcpt:
            return f"550 5.1.1 <{address}> rejected by test server"
        if address in self.tempfail_rcpt:
            return f"450 4.2.1 <{address}> try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        self._rcpt_options.setdefault(id(envelope), []).append(list(rcpt_options))
        return "250 2.1.5 Ok"

    async def handle_DATA(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        """Record the envelope, then answer once (SMTP) or per recipient (LMTP)."""
        # The authenticator below stores the LoginPassword as the session's auth_data.
        auth_data = session.auth_data if session.authenticated else None
        login = auth_data.login if isinstance(auth_data, LoginPassword) else None
        self.envelopes.append(
            RecordedEnvelope(
                mail_from=envelope.mail_from or "",
                mail_options=list(envelope.mail_options),
                rcpt_tos=list(envelope.rcpt_tos),
                rcpt_options=self._rcpt_options.pop(id(envelope), []),
                content=bytes(envelope.original_content or b""),
                helo=session.host_name,
                # session.ssl is only set by STARTTLS; the transport knows either way.
                tls=server.transport is not None
                and server.transport.get_extra_info("ssl_object") is not None,
                auth_login=login.decode("utf-8", "replace") if login is not None else None,
                smtp_utf8=envelope.smtp_utf8,
            )
        )
        if self.lmtp:
            # aiosmtpd's LMTP class sends whatever DATA returns as is, so one reply
            # line per recipient (RFC 2033) has to be built here.
            return "\r\n".join(
                self.lmtp_data_replies.get(rcpt, f"250 2.0.0 <{rcpt}> Ok")
                for rcpt in envelope.rcpt_tos
            )
        return self.data_reply or "250 2.0.0 Ok: queued"

    def authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        """aiosmtpd ``authenticator``: accept only :attr:`credentials`, log every try."""
        login = password = None
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
        success = self.credentials is not None and (login, password) == self.credentials
        self.auth_attempts.append(AuthAttempt(mechanism, login, success))
        # handled=False makes aiosmtpd send the 535 itself; its default (True) means
        # "the reply was already sent" and would leave the client waiting forever.
        return AuthResult(success=success, handled=False, auth_data=auth_data if success else None)


class _LmtpController(Controller):
    """A controller whose sessions speak LMTP (LHLO instead of EHLO)."""

    def factory(self) -> SMTP:
        return LMTP(self.handler, **self.SMTP_kwargs)


@dataclass
class AiosmtpdServer:
    """A running aiosmtpd: where to connect and what it recorded."""

    host: str
    port: int
    handler: RecordingHandler
    controller: Controller

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, as socket and relay APIs want it."""
        return (self.host, self.port)

    @property
    def envelopes(self) -> list[RecordedEnvelope]:
        """Accepted transactions so far, in order (appended before the final reply)."""
        return self.handler.envelopes

    @property
    def auth_attempts(self) -> list[AuthAttempt]:
        """AUTH exchanges so far, in order."""
        return self.handler.auth_attempts


AiosmtpdFactory = Callable[..., AiosmtpdServer]


@pytest.fixture
def aiosmtpd_server(tls_cert: TlsCert) -> Iterator[AiosmtpdFactory]:
    """Factory: each call starts an aiosmtpd server on loopback; all stop at teardown.

    Keyword arguments (all optional):

    * ``starttls``: offer STARTTLS with the session certificate; ``require_starttls``
      refuses MAIL and friends before it.
    * ``implicit_tls``: TLS from the first byte (SMTPS), on the listening socket.
    * ``auth=(user, password)``: offer AUTH PLAIN/LOGIN and accept only this pair;
      ``auth_require_tls`` (default True, aiosmtpd's own default) hides AUTH until
      TLS is up; ``auth_required`` refuses MAIL without AUTH.
    * ``smtputf8``: announce SMTPUTF8 (default False, unlike aiosmtpd's default).
    * ``lmtp``: speak LMTP; ``lmtp_data_replies`` gives some recipients their own
      reply after DATA.
    * ``reject_rcpt`` / ``tempfail_rcpt``: addresses answered 550 / 450 at RCPT.
    * ``data_reply``: the reply after DATA instead of 250 (SMTP mode).
    """
    with contextlib.ExitStack() as stack:

        def start(
            *,
            starttls: bool = False,
            require_starttls: bool = False,
            implicit_tls: bool = False,
            auth: tuple[str, str] | None = None,
            auth_require_tls: bool = True,
            auth_required: bool = False,
            smtputf8: bool = False,
            lmtp: bool = False,
            lmtp_data_replies: Mapping[str, str] | None = None,
            reject_rcpt: Collection[str] = (),
            tempfail_rcpt: Collection[str] = (),
            data_reply: str | None = None,
        ) -> AiosmtpdServer:
            handler = RecordingHandler(
                reject_rcpt=set(reject_rcpt),
                tempfail_rcpt=set(tempfail_rcpt),
                data_reply=data_reply,
                lmtp=lmtp,
                lmtp_data_replies=dict(lmtp_data_replies or {}),
                credentials=auth,
            )
            smtp_kwargs: dict[str, Any] = {
                "enable_SMTPUTF8": smtputf8,
                "auth_require_tls": auth_require_tls,
                "auth_required": auth_required,
                # Keep bytes exactly as sent; decoding would hide encoding bugs.
                "decode_data": False,
            }
            if auth is not None:
                smtp_kwargs["authenticator"] = handler.authenticate
            if starttls:
                smtp_kwargs["tls_context"] = tls_cert.server_context()
                smtp_kwargs["require_starttls"] = require_starttls
            tls_context: ssl.SSLContext | None = None
            if implicit_tls:
                tls_context = tls_cert.server_context()
            controller_class = _LmtpController if lmtp else Controller
            port = free_port(HOST)
            controller = controller_class(
                handler,
                hostname=HOST,
                port=port,
                ssl_context=tls_context,
                server_hostname=SERVER_HOSTNAME,
                ready_timeout=GUARD_SECONDS,
                **smtp_kwargs,
            )
            controller.start()
            stack.callback(controller.stop)
            return AiosmtpdServer(host=HOST, port=port, handler=handler, controller=controller)

        yield start
