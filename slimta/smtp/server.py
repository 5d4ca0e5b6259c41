"""An SMTP server session on a connected socket, with python-slimta's handler hooks.

:class:`Server` reads the socket, lets :class:`~slimta.smtp._server_core.ServerInput`
and :class:`~slimta.smtp._server_core.DataDecoder` split what arrived into
commands and message data, and writes the replies. For each command it builds
the default :class:`~slimta.smtp.reply.Reply` and, when the ``handlers`` object
has a method of the command's name (``EHLO``, ``MAIL``, ``RCPT``, ``DATA``,
``HAVE_DATA``, ...), calls it so it can change the reply. A ``221`` or ``421``
reply ends the session.

Replies are written when the server would otherwise wait for the client, so a
pipelining client gets the replies to a whole batch of commands in one write.

Safer than python-slimta's server, for a server that faces the Internet:

* command lines are bounded (:data:`~slimta.smtp._server_core.MAX_COMMAND_LINE_BYTES`);
* only ``<CRLF>.<CRLF>`` ends the message data (see :mod:`slimta.smtp.datareader`);
  ``SIZE`` is enforced at ``MAIL`` and while the data is read, and the rest of an
  oversized message is dropped, not kept;
* whatever the client sent in clear after ``STARTTLS`` is discarded before the
  handshake;
* AUTH is offered only under TLS unless ``allow_insecure_auth``; failed attempts
  are answered more and more slowly, and the session ends after
  ``max_auth_failures``; an AUTH exchange never reaches a log line;
* a command timeout (default :data:`DEFAULT_COMMAND_TIMEOUT`) and a cumulative
  data timeout (default :data:`DEFAULT_DATA_TIMEOUT`) always apply.
"""

from __future__ import annotations

from typing import Any

import gevent
from gevent import Timeout

from slimta.logging import getSocketLogger
from slimta.smtp import ConnectionLost, MessageTooBig
from slimta.smtp._server_core import (
    MAX_AUTH_LINE_BYTES,
    PLAIN_PATH_PATTERNS,
    BadDataError,
    DataDecoder,
    LineError,
    ServerInput,
    auth_failure_delay,
    gather_params,
    parse_path_argument,
    render_extensions,
    too_big_reply,
)
from slimta.smtp.auth import AuthSession, ServerAuth, ServerAuthError
from slimta.smtp.extensions import Extensions
from slimta.smtp.io import IO
from slimta.smtp.reply import (
    Reply,
    bad_arguments,
    bad_sequence,
    timed_out,
    tls_failure,
    unhandled_error,
    unknown_command,
    unknown_parameter,
)
from slimta.util.timer import SessionDeadline

__all__ = ["Server", "DEFAULT_COMMAND_TIMEOUT", "DEFAULT_DATA_TIMEOUT"]

#: Seconds to wait for a command when ``command_timeout`` is not given (RFC 5321
#: §4.5.3.2.7 asks for at least five minutes).
DEFAULT_COMMAND_TIMEOUT = 300.0
#: Seconds, in all, to receive one message's data when no timeout is given.
DEFAULT_DATA_TIMEOUT = 600.0
#: Protocol errors in one session before it is ended (Postfix's hard error limit).
MAX_ERRORS = 20
#: The most accepted recipients in one transaction (RFC 5321 §4.5.3.1.8 asks for 100).
MAX_RECIPIENTS = 1000

_log = getSocketLogger(__name__)

# Handler names the server calls itself; a client's verb never reaches them.
_RESERVED_HANDLERS = frozenset({"BANNER_", "TLSHANDSHAKE", "TLSHANDSHAKE2", "HAVE_DATA", "CLOSE"})
_MAIL_PARAMS = frozenset({b"SIZE", b"BODY", b"SMTPUTF8", b"AUTH"})
_BODY_VALUES = frozenset({b"7BIT", b"8BITMIME"})
#: Reply codes after which the server ends the session.
_CLOSE_CODES = frozenset({"221", "421"})
#: What every session advertises.
_DEFAULT_EXTENSIONS: dict[str, str | None] = dict.fromkeys(
    ("8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "SMTPUTF8")
)


class _Close(Exception):
    """The session ends after the reply just queued."""


class _SessionTimeout(Exception):
    """A command, AUTH line, TLS handshake or the message data took too long.

    Only this session's own timeouts raise it, so a :class:`gevent.Timeout` of the
    caller passes through untouched.
    """


class Server:
    """One SMTP server session. Its :attr:`extensions` are what EHLO advertises.

    :param socket: the connected (gevent) socket.
    :param handlers: the object whose methods are called per command.
    :param address: the client's address.
    :param auth: ``True`` for AUTH with PLAIN and LOGIN; a list of mechanism names
        (``'PLAIN'``, ``'LOGIN'``, ``'CRAM-MD5'``); or a
        :class:`~slimta.smtp.auth.ServerAuth`.
    :param context: an :class:`ssl.SSLContext` for STARTTLS (or implicit TLS).
    :param tls_immediately: handshake before the banner instead of offering STARTTLS.
    :param command_timeout: seconds to wait for each command.
    :param data_timeout: seconds to receive a whole message's data.
    :param bare_newline: ``'normalize'`` or ``'reject'`` a bare CR/LF in data.
    :param allow_insecure_auth: offer cleartext AUTH mechanisms without TLS.
    :param auth_failure_base_delay: seconds before the first failed AUTH reply,
        doubling with each further failure (capped at 8 s).
    :param max_auth_failures: failed AUTH attempts before ``421`` and disconnect.
    :param max_errors: protocol errors (unknown commands, bad syntax or sequence)
        before ``421`` and disconnect.

    .. versionchanged:: slimta-relay
       Timeouts default to :data:`DEFAULT_COMMAND_TIMEOUT` and
       :data:`DEFAULT_DATA_TIMEOUT` instead of waiting forever; AUTH is hidden
       until TLS; AUTH fails unless the handlers implement ``AUTH``.
    """

    def __init__(
        self,
        socket: Any,
        handlers: Any,
        address: Any = None,
        auth: Any = False,
        context: Any = None,
        tls_immediately: bool = False,
        command_timeout: float | None = None,
        data_timeout: float | None = None,
        bare_newline: str = "normalize",
        allow_insecure_auth: bool = False,
        auth_failure_base_delay: float = 1.0,
        max_auth_failures: int = 5,
        max_errors: int = MAX_ERRORS,
    ) -> None:
        self.handlers = handlers
        self.extensions = Extensions()
        self.io = IO(socket, address)
        #: What the client sent and the server has not consumed yet.
        self.input = ServerInput()

        self.bannered = False
        self.have_mailfrom: bool | None = None
        self.have_rcptto: bool | None = None
        self.ehlo_as: str | None = None
        self.authed = False
        self.auth_failures = 0
        self.recipients = 0
        #: Protocol errors answered so far (syntax, sequence, unknown commands).
        self.errors = 0
        #: Whether the client greeted with EHLO (not HELO).
        self.extended_smtp = False
        self._timers = SessionDeadline(_SessionTimeout)

        self.context = context
        self.tls_immediately = tls_immediately
        self.bare_newline = bare_newline
        self.auth_failure_base_delay = auth_failure_base_delay
        self.max_auth_failures = max_auth_failures
        self.max_errors = max_errors

        self.extensions.extensions.update(_DEFAULT_EXTENSIONS)
        if context is not None and not tls_immediately:
            self.extensions.add("STARTTLS")
        if auth:
            if isinstance(auth, ServerAuth):
                auth_obj = auth
                if allow_insecure_auth:
                    auth_obj.allow_insecure = True
            elif isinstance(auth, (list, tuple)):
                auth_obj = ServerAuth(auth, allow_insecure_auth)
            else:
                auth_obj = ServerAuth(None, allow_insecure_auth)
            session = AuthSession(auth_obj, self.io)
            session.recv_line = self._recv_auth_line
            self.extensions.add("AUTH", session)  # type: ignore[arg-type]

        self.command_timeout = command_timeout or DEFAULT_COMMAND_TIMEOUT
        # A client that stops reading our replies gets as long as one that stops
        # sending commands.
        self.io.send_timeout = self.command_timeout
        self.data_timeout = data_timeout or command_timeout or DEFAULT_DATA_TIMEOUT

    @property
    def encrypted(self) -> bool:
        """True if the session transport is encrypted."""
        return self.io.encrypted

    # -- input -----------------------------------------------------------------
    def _read(self, secret: bool = False) -> bytes:
        """Send what waits, then read once from the client.

        :param secret: the whole read is an AUTH response (logged by size only).
            Otherwise an AUTH line split across reads is masked too: its second
            half must not be logged either (only a partial line can be one).
        """
        io = self.io
        if io.send_buffer:
            io.flush_send()
        pending = self.input
        if not secret and pending.buffer and io.logs_data:
            secret = pending.partial_line_may_be_auth()
        return io.recv_masked(secret)

    def _recv_auth_line(self) -> bytes:
        with Timeout(self.command_timeout, _SessionTimeout):
            while True:
                line = self.input.next_line(MAX_AUTH_LINE_BYTES)
                if line is None:
                    self.input.feed(self._read(secret=True))
                elif isinstance(line, LineError):
                    raise ServerAuthError(
                        "Invalid AUTH response", Reply("501", "5.5.2 Invalid authentication string")
                    )
                else:
                    return line

    # -- handlers ----------------------------------------------------------------
    def _call_custom_handler(self, which: str, *args: Any) -> Any:
        method = getattr(self.handlers, which, None)
        if method is not None:
            return method(*args)
        return None

    def _check_close_code(self, reply: Reply) -> None:
        if reply.code in _CLOSE_CODES:
            raise _Close()

    def _send(self, reply: Reply) -> None:
        io = self.io
        code = reply.code
        if code in _CLOSE_CODES:
            reply.send(io)  # flushed, and then CLOSE run, by _handle
            raise _Close()
        if self.input.buffer or reply.newline_first:
            # Replies to pipelined commands go out together, once the last is read.
            reply.send(io)
        elif io.send_buffer:
            reply.send(io, flush=True)
        else:
            # No pipelined command waits, so the client waits for this reply:
            # it goes now, in one write, before the bookkeeping that follows it.
            io.raw_send(reply.to_wire())

    def _error(self, reply: Reply) -> None:
        """Answer a protocol error; too many of them end the session."""
        self.errors += 1
        if self.errors >= self.max_errors:
            reply = Reply("421", "4.7.0 Too many errors, closing connection")
        self._send(reply)

    # -- the session -------------------------------------------------------------
    def handle(self) -> None:
        """Run the session until QUIT, a ``221``/``421`` reply or the client leaves.

        :raises ~slimta.smtp.ConnectionLost: the client went away or timed out.
        """
        try:
            self._handle()
        finally:
            self._timers.close()

    def _handle(self) -> None:
        if self.context is not None and self.tls_immediately:
            if not self._encrypt_session():
                tls_failure.send(self.io, flush=True)
                return
        pending = self.input
        io = self.io
        verb = b"BANNER_"
        arg: bytes | None = None
        error: Reply | None = None
        while True:
            try:
                try:
                    if error is not None:
                        self._error(error)
                    elif verb:
                        # Looked up on the object each time, so that a subclass's
                        # method, or one patched on later, is the one called.
                        name = _COMMAND_NAMES.get(verb)
                        if name is None:  # not one of ours: never cached (clients choose it)
                            name = "_command_" + verb.decode("ascii")
                        method = getattr(self, name, None)
                        if method is not None:
                            method(arg)
                        else:
                            self._command_custom(verb.decode("ascii"), arg)
                    else:
                        self._error(unknown_command)
                except _Close:
                    try:
                        io.flush_send()  # the client has its last reply first
                    finally:
                        self._call_custom_handler("CLOSE")
                    break
                except (ConnectionLost, _SessionTimeout):
                    raise
                except Exception:
                    unhandled_error.send(io)
                    self._flush_quietly()
                    raise
                # The next command. The timeout runs only while the server waits
                # for the client: a pipelined command already buffered costs no
                # timer at all.
                command = pending.next_command() if pending.buffer else None
                if command is None:
                    with self._timers.bound(self.command_timeout):
                        while command is None:
                            command = pending.feed_command(self._read())
                if isinstance(command, LineError):
                    error = command.reply
                else:
                    assert command is not None
                    error = None
                    verb, arg = command
            except _SessionTimeout:
                timed_out.send(io)
                self._flush_quietly()
                raise ConnectionLost()

    def _flush_quietly(self) -> None:
        try:
            self.io.flush_send()
        except (ConnectionLost, OSError):
            pass

    def _encrypt_session(self) -> bool:
        try:
            with Timeout(self.command_timeout, _SessionTimeout):
                if not self.io.encrypt_socket_server(self.context):
                    return False
        except _SessionTimeout:
            return False
        except OSError:
            raise ConnectionLost()
        self._call_custom_handler("TLSHANDSHAKE")
        self._call_custom_handler("TLSHANDSHAKE2", self.io.socket)
        return True

    def _reset_transaction(self) -> None:
        self.have_mailfrom = None
        self.have_rcptto = None
        self.recipients = 0

    # -- commands ----------------------------------------------------------------
    def _command_BANNER_(self, arg: bytes | None) -> None:  # noqa: N802
        reply = Reply.from_parts("220", False, "ESMTP server")
        self._call_custom_handler("BANNER_", reply)
        self._send(reply)
        if reply.code == "220":
            self.bannered = True

    def _hello_name(self, arg: bytes | None) -> str | None:
        if not self.bannered:
            self._error(bad_sequence)
            return None
        try:
            name = arg.decode("utf-8") if arg else ""
        except UnicodeDecodeError:
            name = ""
        if not name:
            self._error(bad_arguments)
            return None
        return name

    def _command_EHLO(self, arg: bytes | None) -> None:  # noqa: N802
        ehlo_as = self._hello_name(arg)
        if ehlo_as is None:
            return
        reply = Reply.from_parts("250", False, "Hello " + ehlo_as)
        self._call_custom_handler("EHLO", reply, ehlo_as)
        if reply.code == "250":
            reply.message = render_extensions(
                reply.message or "",
                self.extensions.extensions,  # type: ignore[arg-type]
            )
            self._reset_transaction()
            self.ehlo_as = ehlo_as
            self.extended_smtp = True
        self._send(reply)

    def _command_HELO(self, arg: bytes | None) -> None:  # noqa: N802
        ehlo_as = self._hello_name(arg)
        if ehlo_as is None:
            return
        reply = Reply.from_parts("250", False, "Hello " + ehlo_as)
        self._call_custom_handler("HELO", reply, ehlo_as)
        self._send(reply)
        if reply.code == "250":
            self._reset_transaction()
            self.ehlo_as = ehlo_as
            # python-slimta emptied the extensions here, which also dropped the SIZE
            # limit: keep them, and refuse ESMTP commands and parameters instead.
            self.extended_smtp = False

    def _command_STARTTLS(self, arg: bytes | None) -> None:  # noqa: N802
        if "STARTTLS" not in self.extensions:
            self._error(unknown_command)
            return
        if arg:
            self._error(bad_arguments)
            return
        if not self.ehlo_as or not self.extended_smtp:
            self._error(bad_sequence)
            return
        reply = Reply("220", "2.7.0 Go ahead")
        self._call_custom_handler("STARTTLS", reply, self.extensions)
        reply.send(self.io, flush=True)
        self._check_close_code(reply)
        if reply.code == "220":
            # Nothing sent in clear may count as sent under TLS (CVE-2011-0411).
            self.input.discard()
            self.io.recv_buffer = b""
            if not self._encrypt_session():
                tls_failure.send(self.io)
                raise _Close()
            self.ehlo_as = None
            self.authed = False
            self._reset_transaction()
            self.extensions.drop("STARTTLS")

    def _command_AUTH(self, arg: bytes | None) -> None:  # noqa: N802
        if "AUTH" not in self.extensions:
            self._error(unknown_command)
            return
        session = self.extensions.getparam("AUTH")
        try:
            str(session)
        except ValueError:
            self._error(Reply("538", "5.7.11 Encryption required for authentication"))
            return
        if not self.ehlo_as or not self.extended_smtp or self.authed or self.have_mailfrom:
            self._error(bad_sequence)
            return
        try:
            creds = session.server_attempt(arg)
        except ServerAuthError as exc:
            self._auth_failed(exc.reply)
            return
        if not hasattr(self.handlers, "AUTH"):
            self._auth_failed(Reply("535", "5.7.8 Authentication credentials invalid"))
            return
        reply = Reply("235", "2.7.0 Authentication successful")
        self._call_custom_handler("AUTH", reply, creds)
        if reply.code == "235":
            self.authed = True
            self._send(reply)
        else:
            self._auth_failed(reply)

    def _auth_failed(self, reply: Reply) -> None:
        self.auth_failures += 1
        delay = auth_failure_delay(self.auth_failures, self.auth_failure_base_delay)
        if delay:
            self.io.flush_send()
            gevent.sleep(delay)
        if self.auth_failures >= self.max_auth_failures:
            reply = Reply("421", "4.7.0 Too many failed authentication attempts")
        self._send(reply)

    def _path_and_params(
        self, arg: bytes | None, keyword: str
    ) -> tuple[str, dict[bytes, bytes | bool]] | None:
        try:
            plain = PLAIN_PATH_PATTERNS[keyword].fullmatch(arg) if arg else None
            if plain is not None:  # the usual line: no parameters, no quoting
                return plain.group(1).decode("utf-8"), {}
            address, rest = parse_path_argument(arg, keyword)  # type: ignore[arg-type]
            params = gather_params(rest) if rest else {}
        except (ValueError, UnicodeDecodeError):
            self._error(bad_arguments)
            return None
        return address, params

    def _unsupported_param(
        self, params: dict[bytes, bytes | bool], known: frozenset[bytes]
    ) -> bool:
        for key in params:
            if key not in known and key.decode("ascii") not in self.extensions:
                self._error(Reply("555", "5.5.4 Unsupported parameter"))
                return True
        return False

    def _command_MAIL(self, arg: bytes | None) -> None:  # noqa: N802
        parsed = self._path_and_params(arg, "FROM")
        if parsed is None:
            return
        address, params = parsed
        if not self.ehlo_as or self.have_mailfrom:
            self._error(bad_sequence)
            return
        if params and not self.extended_smtp:
            self._error(Reply("555", "5.5.4 Parameters need EHLO"))
            return
        if params and self._unsupported_param(params, _MAIL_PARAMS):
            return
        if b"SIZE" in params:
            value = params[b"SIZE"]
            if not isinstance(value, bytes) or not value.isdigit() or len(value) > 20:
                self._error(bad_arguments)
                return
            max_size = self.extensions.getparam("SIZE", filter=int)
            if "SIZE" not in self.extensions:
                self._error(unknown_parameter)
                return
            if max_size and int(value) > max_size:
                Reply("552", f"5.3.4 Message size exceeds {max_size} limit").send(self.io)
                return
        body = params.get(b"BODY")
        if body is not None and (not isinstance(body, bytes) or body.upper() not in _BODY_VALUES):
            self._error(bad_arguments)
            return
        if params.get(b"SMTPUTF8", True) is not True:
            self._error(bad_arguments)
            return
        reply = Reply.from_parts("250", "2.1.0", f"Sender <{address}> Ok")
        self._call_custom_handler("MAIL", reply, address, params)
        self._send(reply)
        self.have_mailfrom = self.have_mailfrom or (reply.code == "250")

    def _command_RCPT(self, arg: bytes | None) -> None:  # noqa: N802
        parsed = self._path_and_params(arg, "TO")
        if parsed is None:
            return
        address, params = parsed
        if not self.have_mailfrom:
            self._error(bad_sequence)
            return
        if params and self._unsupported_param(params, frozenset()):
            return
        if self.recipients >= MAX_RECIPIENTS:
            Reply("452", "4.5.3 Too many recipients").send(self.io)
            return
        reply = Reply.from_parts("250", "2.1.5", f"Recipient <{address}> Ok")
        self._call_custom_handler("RCPT", reply, address, params)
        self._send(reply)
        if reply.code == "250":
            self.recipients += 1
            self.have_rcptto = True

    def _command_DATA(self, arg: bytes | None) -> None:  # noqa: N802
        if arg:
            self._error(bad_arguments)
            return
        if not self.have_mailfrom:
            self._error(bad_sequence)
            return
        if not self.have_rcptto:
            Reply("554", "5.5.1 No valid recipients").send(self.io)
            return
        reply = Reply.from_parts("354", None, "Start mail input; end with <CRLF>.<CRLF>")
        self._call_custom_handler("DATA", reply)
        reply.send(self.io, flush=True)
        self._check_close_code(reply)
        if reply.code == "354":
            self._get_message_data()

    def _get_message_data(self) -> None:
        max_size = self.extensions.getparam("SIZE", filter=int)
        decoder = DataDecoder(max_size, self.bare_newline)
        pending = self.input.take()
        if pending:
            decoder.feed(pending)
        if not decoder.done:
            with self._timers.bound(self.data_timeout):
                while not decoder.done:
                    decoder.feed(self.io.recv_masked())
        self.input.feed(decoder.leftover)
        data: bytes | None = None
        err: Exception | None = None
        reply = Reply.from_parts("250", "2.6.0", "Message accepted for delivery")
        try:
            data = decoder.result()
        except (MessageTooBig, BadDataError) as exc:
            err = exc
            reply.copy(exc.reply if isinstance(exc, BadDataError) else too_big_reply(max_size))
        self._call_custom_handler("HAVE_DATA", reply, data, err)
        self._reset_transaction()
        self._send(reply)

    def _command_RSET(self, arg: bytes | None) -> None:  # noqa: N802
        if arg:
            self._error(bad_arguments)
            return
        reply = Reply.from_parts("250", "2.0.0", "Ok")
        self._call_custom_handler("RSET", reply)
        self._send(reply)
        if reply.code == "250":
            self._reset_transaction()

    def _command_NOOP(self, arg: bytes | None) -> None:  # noqa: N802
        reply = Reply.from_parts("250", "2.0.0", "Ok")
        self._call_custom_handler("NOOP", reply)
        self._send(reply)

    def _command_QUIT(self, arg: bytes | None) -> None:  # noqa: N802
        if arg:
            self._error(bad_arguments)
            return
        reply = Reply.from_parts("221", "2.0.0", "Bye")
        self._call_custom_handler("QUIT", reply)
        self._send(reply)

    def _command_custom(self, command: str, arg: bytes | None) -> None:
        reply = Reply().copy(unknown_command)
        if command not in _RESERVED_HANDLERS:
            self._call_custom_handler(command, reply, arg, self)
        if reply == unknown_command:
            self._error(reply)
        else:
            self._send(reply)


#: ``_command_<VERB>`` method names by verb, for the verbs :class:`Server` has.
_COMMAND_NAMES: dict[bytes, str] = {
    name[len("_command_"):].encode("ascii"): name
    for name in dir(Server)
    if name.startswith("_command_") and name[len("_command_"):].isupper()
}
