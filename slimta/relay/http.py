"""Deliver messages as HTTP requests, the counterpart of the slimta HTTP edge.

Each message becomes one request (``POST`` by default) whose body is the
flattened message (``Content-Type: message/rfc822``). The envelope travels in
headers: the EHLO string, the sender and one header per recipient, the
addresses base64-encoded so that no envelope value can add or change a header.

The server's answer becomes the delivery result:

* an ``X-Smtp-Reply`` header, such as ``250; message="2.0.0 Ok"`` or
  ``550; message="5.1.1 No such user"; command="RCPT"``, gives the
  :class:`~slimta.smtp.reply.Reply` on a 2xx status, while a 4xx or 5xx reply
  is raised as the matching error whatever the status (so an error is never
  reported as delivered);
* without that header, any 2xx status is success, a 4xx status a
  :class:`~slimta.relay.PermanentRelayError` and anything else a
  :class:`~slimta.relay.TransientRelayError`;
* connection failures, timeouts, TLS failures and malformed responses are
  transient.

With ``idle_timeout`` set, a client keeps its connection open between messages
(HTTP keep-alive). A request that fails on such a reused connection *before any
byte of the response arrived* (the server closed the idle connection under us)
is sent once more on a fresh connection; once a response has started it is never
sent again, so a message cannot be delivered twice by this relay.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
import ssl
from collections.abc import Callable
from http import client as _client
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import gevent
from gevent.event import AsyncResult

from slimta.http import HTTPConnection, HTTPSConnection, get_connection
from slimta.logging import getHttpLogger
from slimta.relay import PermanentRelayError, RelayError, TransientRelayError
from slimta.relay._http_client import (
    Answer,
    TracedSocket,
    TrackedResponse,
    Tracker,
    config_error,
    failure_error,
    is_disconnect,
    is_stale,
    transient,
)
from slimta.relay._timeouts import TimeoutField, Timeouts
from slimta.relay.pool import RelayPool, RelayPoolClient
from slimta.relay.smtp import SmtpRelayError
from slimta.relay.smtp._connect import local_fqdn
from slimta.smtp.client import WireTrace
from slimta.smtp.reply import Reply, timed_out

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["HttpRelay"]

log = logging.getLogger(__name__)
http_log = getHttpLogger(__name__)

#: The most response-body bytes read to keep a connection reusable; a larger
#: body is not read and the connection is closed instead.
MAX_RESPONSE_BODY_BYTES = 64 * 1024

#: The header carrying the SMTP reply of the server.
SMTP_REPLY_HEADER = "X-Smtp-Reply"

# C0 controls and DEL: never allowed in a header value we build.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPE_RE = re.compile(r"\\(.)", re.S)

EhloAs = str | Callable[[], str] | None


class HttpRelay(RelayPool):
    """Deliver each message as an HTTP request to one URL.

    :param url: where to send the requests, e.g. ``'https://mda.example/msg?v=1'``;
        the scheme defaults to ``http`` and the path to ``/``. The query string
        is sent too.
    :param pool_size: the most connections open at once; ``None`` is unlimited.
    :param context: the :class:`ssl.SSLContext` for ``https`` URLs. Without one
        the server certificate is verified against the system's trusted CAs.
        Any context works cooperatively (see :mod:`slimta.http`).
    :param ehlo_as: the ``X-Ehlo`` value: a string, or a callable with no
        arguments run for each new connection. Default: this host's FQDN,
        which the ``ehlo_as`` attribute then holds.
    :param timeout: seconds allowed for connecting, sending the request and
        reading the response, all together; ``None`` waits forever.
    :param idle_timeout: seconds a client keeps an idle connection open waiting
        for the next message; ``None`` closes the connection after each request.
    :param trace: called once per new connection, it returns a
        :data:`~slimta.smtp.client.WireTrace` that sees the connection's bytes
        (``'connect'`` with ``b'host:port'``, then ``'send'``, ``'recv'``,
        ``'close'``); with TLS, the bytes are those inside it. ``None``, the
        default, costs nothing.

    Both are kept in :attr:`timeouts` (one HTTP exchange counts as one
    ``command``); the ``timeout`` and ``idle_timeout`` attributes read and
    change it.
    """

    #: The request method.
    http_verb = "POST"
    #: The header carrying the base64 of the UTF-8 envelope sender.
    sender_header = "X-Envelope-Sender"
    #: The header, repeated per recipient, carrying the base64 of its UTF-8 address.
    recipient_header = "X-Envelope-Recipient"
    #: The header carrying :attr:`ehlo_as`.
    ehlo_header = "X-Ehlo"

    def __init__(
        self,
        url: str,
        pool_size: int | None = None,
        context: ssl.SSLContext | None = None,
        ehlo_as: EhloAs = None,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        *,
        trace: Callable[[], WireTrace] | None = None,
    ) -> None:
        super().__init__(pool_size)
        self.url = urlsplit(url, "http")
        #: Called per new connection for its wire trace, or ``None``.
        self.trace = trace
        self.context = context
        # The resolved default is stored, as python-slimta does.
        self.ehlo_as: str | Callable[[], str] = ehlo_as or local_fqdn()
        #: The relay's timeouts, as one value.
        self.timeouts = Timeouts(command=timeout, idle=idle_timeout)

    timeout = TimeoutField(
        "command", "Seconds for one request: connect, send, and read the response."
    )
    idle_timeout = TimeoutField(
        "idle", "Seconds a client keeps an idle connection for the next message."
    )

    def add_client(self) -> HttpRelayClient:
        """Return a new :class:`HttpRelayClient` for this relay."""
        return HttpRelayClient(self)

    def _get_ehlo_as(self) -> str:
        """The EHLO string for a new connection."""
        ehlo_as = self.ehlo_as
        if callable(ehlo_as):
            return ehlo_as()
        # A program may have set the attribute to None or '' after construction.
        return ehlo_as or local_fqdn()


def _b64(value: str) -> str:
    return base64.b64encode(value.encode("utf-8", "surrogatepass")).decode("ascii")


def _decode_header(value: str) -> str:
    # http.client decodes header bytes as Latin-1; the edge writes UTF-8.
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


class HttpRelayClient(RelayPoolClient):
    """One worker of an :class:`HttpRelay`, holding at most one connection.

    :param relay: the relay whose queue, URL and settings are used.
    """

    #: Matches the start of ``X-Smtp-Reply``; group 1 is the reply code.
    reply_code_pattern = re.compile(r"^\s*(\d{3})\s*;")
    #: Matches one ``name="value"`` parameter; groups 1 and 2 are the name and
    #: the quoted value, whose backslash escapes are decoded afterwards.
    reply_param_pattern = re.compile(r'\s*([a-zA-Z0-9_-]+)\s*=\s*"((?:[^"\\]|\\.)*)"', re.S)

    def __init__(self, relay: HttpRelay) -> None:
        super().__init__(relay.queue, relay.idle_timeout)
        self.relay = relay
        self.url = relay.url
        self.conn: HTTPConnection | HTTPSConnection | None = None
        self.ehlo_as: str | None = None
        # Complete exchanges on the current connection; > 0 means "reused".
        self._served = 0
        # The status and headers of the response being read, once they arrived.
        self._answer: Answer | None = None

    # -- greenlet body ---------------------------------------------------------
    def _run(self) -> None:
        """Deliver queued messages until idle for :attr:`idle_timeout` seconds.

        Without an ``idle_timeout`` the client handles one message and exits.
        Every request taken from the queue is resolved.
        """
        try:
            while True:
                result, envelope = self.poll()
                if result is None or envelope is None:
                    return
                self._handle(result, envelope)
                if self.idle_timeout is None:
                    return
        finally:
            self._close()

    def _handle(self, result: AsyncResult, envelope: Envelope) -> None:
        try:
            outcome = self._deliver(envelope)
        except RelayError as exc:
            result.set_exception(exc)
        except Exception as exc:  # the invariant: the request is always resolved
            log.exception("unexpected error relaying %r", envelope)
            self._close()
            result.set_exception(failure_error(exc))
        else:
            result.set(outcome)

    # -- one message -----------------------------------------------------------
    def _deliver(self, envelope: Envelope) -> Reply | None:
        header_data, body = envelope.flatten()
        timer = gevent.Timeout(self.relay.timeouts.seconds("command"))
        timer.start()
        self._answer = None
        try:
            answer = self._exchange(envelope, header_data, body)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            self._close()
            if self._answer is None:
                raise transient(timed_out, "Timed out relaying the message")
            answer = self._answer  # only the body was late: the answer stands
        except (OSError, _client.HTTPException) as exc:
            self._close()
            if self._answer is None:
                raise failure_error(exc)
            answer = self._answer
        finally:
            timer.close()
            self._answer = None
        return self._process_answer(answer)

    def _exchange(self, envelope: Envelope, header_data: bytes, body: bytes) -> Answer:
        reused = self._ensure_connection()
        tracker = Tracker()
        try:
            return self._send_and_receive(envelope, header_data, body, tracker)
        except (OSError, _client.HTTPException) as exc:
            if not (reused and tracker.received == 0 and is_disconnect(exc)):
                raise
            # The server dropped the kept-alive connection before answering:
            # the request went nowhere, so one more try on a fresh connection
            # cannot deliver the message twice.
            log.debug("retrying on a fresh connection after %r", exc)
            self._close()
        self._ensure_connection()
        return self._send_and_receive(envelope, header_data, body, Tracker())

    def _ensure_connection(self) -> bool:
        """Open a connection unless a usable one is kept; True when reusing."""
        if self.conn is not None:
            if not is_stale(self.conn.sock):
                return True
            log.debug("kept-alive connection closed by the server, reconnecting")
            self._close()
        ehlo_as = self.relay._get_ehlo_as()
        if not isinstance(ehlo_as, str) or _CONTROL_RE.search(ehlo_as):
            raise config_error(f"Invalid ehlo_as value: {ehlo_as!r}")
        try:
            ehlo_as.encode("latin-1")
        except UnicodeEncodeError:
            raise config_error(f"ehlo_as is not Latin-1: {ehlo_as!r}")
        self.ehlo_as = ehlo_as
        conn = get_connection(self.url, self.relay.context)
        self.conn = conn
        self._served = 0
        conn.connect()
        trace = self.relay.trace
        if trace is not None and conn.sock is not None:
            callback = trace()
            callback("connect", f"{conn.host}:{conn.port}".encode("utf-8", "replace"))
            conn.sock = TracedSocket(conn.sock, callback)
        return False

    def _request_target(self) -> str:
        path = self.url.path or "/"
        if self.url.query:
            path += "?" + self.url.query
        return path

    def _build_headers(self, envelope: Envelope, length: int) -> list[tuple[str, str]]:
        relay = self.relay
        headers = [
            ("Content-Length", str(length)),
            ("Content-Type", "message/rfc822"),
            (relay.ehlo_header, self.ehlo_as or ""),
            (relay.sender_header, _b64(envelope.sender or "")),
        ]
        headers.extend((relay.recipient_header, _b64(rcpt)) for rcpt in envelope.recipients)
        return headers

    def _send_and_receive(
        self, envelope: Envelope, header_data: bytes, body: bytes, tracker: Tracker
    ) -> Answer:
        conn = self.conn
        assert conn is not None
        conn.response_class = functools.partial(  # type: ignore[assignment]
            TrackedResponse, tracker=tracker
        )
        target = self._request_target()
        headers = self._build_headers(envelope, len(header_data) + len(body))
        http_log.request(conn, self.relay.http_verb, target, headers)
        conn.putrequest(self.relay.http_verb, target)
        for name, value in headers:
            conn.putheader(name, value)
        # The message headers go out with the request headers; the body follows
        # as its own buffer, never concatenated with them.
        conn.endheaders(header_data)
        if body:
            conn.send(body)
        response = conn.getresponse()
        http_log.response(conn, f"{response.status} {response.reason}", response.getheaders())
        answer = Answer(response.status, response.reason, response.getheader(SMTP_REPLY_HEADER))
        # From here the outcome is known; failing to read the rest of the body
        # only costs the connection, never the answer.
        self._answer = answer
        complete = self._drain(response)
        response.close()
        if complete and not response.will_close and self.idle_timeout is not None:
            self._served += 1
        else:
            self._close()
        return answer

    @staticmethod
    def _drain(response: _client.HTTPResponse) -> bool:
        """Read and discard the body; False when it is too large to bother."""
        if response.length is not None and response.length > MAX_RESPONSE_BODY_BYTES:
            return False
        total = 0
        while total <= MAX_RESPONSE_BODY_BYTES:
            data = response.read(MAX_RESPONSE_BODY_BYTES + 1 - total)
            if not data:
                break
            total += len(data)
        # A body cut short by the server leaves ``length`` above zero: the
        # answer itself arrived whole, but the connection cannot be reused.
        return total <= MAX_RESPONSE_BODY_BYTES and response.isclosed() and not response.length

    def _close(self) -> None:
        conn, self.conn = self.conn, None
        self._served = 0
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing is best effort
                log.debug("error closing HTTP connection", exc_info=True)

    # -- the answer --------------------------------------------------------------
    def _parse_smtp_reply_header(self, value: str) -> Reply | None:
        """Turn an ``X-Smtp-Reply`` value into a :class:`Reply`, or ``None``."""
        value = _decode_header(value)
        match = self.reply_code_pattern.match(value)
        if not match:
            return None
        params: dict[str, str] = {}
        for param in self.reply_param_pattern.finditer(value, match.end(0)):
            name = param.group(1).lower()
            if name in ("message", "command") and name not in params:
                params[name] = _ESCAPE_RE.sub(r"\1", param.group(2))
        command = params.get("command")
        try:
            return Reply(
                match.group(1),
                params.get("message", ""),
                command.encode("utf-8") if command is not None else None,
            )
        except ValueError:  # not a valid SMTP code, e.g. 600
            return None

    def _process_answer(self, answer: Answer) -> Reply | None:
        reply = None
        if answer.reply_header is not None:
            reply = self._parse_smtp_reply_header(answer.reply_header)
        # An error reply is an error whatever the HTTP status says: a 2xx status
        # carrying "550 ..." must not be reported (and dequeued) as delivered.
        if reply is not None and reply.is_error():
            raise SmtpRelayError.factory(reply)
        if 200 <= answer.status < 300:
            return reply
        reason = answer.reason or str(answer.status)
        if 400 <= answer.status < 500:
            raise PermanentRelayError(reason)
        raise TransientRelayError(reason)
