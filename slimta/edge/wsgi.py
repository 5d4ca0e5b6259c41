"""An :class:`~slimta.edge.Edge` that receives messages over HTTP (WSGI).

It is the other end of :class:`slimta.relay.http.HttpRelay`. A client sends
one message per ``POST`` request (``Content-Type: message/rfc822``), the body
being the message itself, with the envelope in request headers:

* ``X-Envelope-Sender``: the base64 of the UTF-8 sender address (empty for
  the null sender);
* ``X-Envelope-Recipient``: the base64 of one recipient address, the header
  repeated per recipient (or several values joined by ``,`` or ``;``);
* ``X-Ehlo``: the name the client gives for itself, as in SMTP ``EHLO``.

The answer carries the SMTP reply in an ``X-Smtp-Reply`` header, for example
``X-Smtp-Reply: 250; message="2.6.0 Message accepted for delivery"``, with a
matching status: ``204`` once the queue's store holds the message, ``503`` for
a 4xx reply (try again later), ``401`` for ``535``, ``500`` for other 5xx
replies. A malformed request gets ``400`` (bad base64, control characters, no
recipient), ``413`` (message larger than ``max_size``, reply
``552 5.3.4``), ``404``, ``405`` or ``415``, each with an ``X-Smtp-Reply``
that says what was wrong. The body reaches the queue byte for byte.

A body over ``max_size`` is never read: with a ``Content-Length`` above the
limit the ``413`` goes out before any of the body is read, and a chunked body
is read only until it passes the limit. The connection is then closed (see
:data:`slimta.http.wsgi.SKIP_BODY_KEY`) instead of being drained for the next
request.
"""

from __future__ import annotations

import binascii
import re
from base64 import b64decode
from collections.abc import Callable, Iterable
from typing import Any

from slimta import logging
from slimta.edge import EdgeServer
from slimta.envelope import Envelope
from slimta.http.wsgi import SKIP_BODY_KEY, WsgiServer
from slimta.queue import QueueError
from slimta.relay import RelayError
from slimta.smtp.reply import Reply
from slimta.util.ptrlookup import PtrLookup

__all__ = ["WsgiResponse", "WsgiEdge", "WsgiValidators"]

_http_log = logging.getHttpLogger(__name__)

#: The largest message body accepted when ``max_size`` is not given, in bytes.
DEFAULT_MAX_SIZE_BYTES = 64 * 1024 * 1024
#: The most recipients one request may name.
MAX_RECIPIENTS = 1000
#: The longest address (sender or recipient) accepted, in bytes of UTF-8.
MAX_ADDRESS_BYTES = 1000
#: The longest ``X-Ehlo`` value accepted, in characters.
MAX_EHLO_CHARS = 255
#: Read size while receiving the body, in bytes.
_READ_CHUNK_BYTES = 65536

# C0 controls and DEL: never part of an address or an EHLO name.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_QUOTED_SPECIALS_RE = re.compile(r'(["\\])')


class WsgiResponse(Exception):
    """Raise it (from a validator, for example) to end the request with this response.

    :param status: the HTTP status line, e.g. ``'403 Forbidden'``.
    :param headers: ``[(name, value), ...]`` response headers.
    :param data: the response body, as an iterable of bytes.
    """

    def __init__(
        self,
        status: str,
        headers: list[tuple[str, str]] | None = None,
        data: Iterable[bytes] | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers or []
        self.data = data or []


def _header_name_to_cgi(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


def _quote(value: str) -> str:
    # A header value is Latin-1 text on the wire; HttpRelay reads it back as UTF-8.
    value = _CONTROL_RE.sub(" ", value)
    value = _QUOTED_SPECIALS_RE.sub(r"\\\1", value)
    return value.encode("utf-8", "replace").decode("latin-1")


def smtp_reply_header(reply: Reply) -> tuple[str, str]:
    """The ``X-Smtp-Reply`` header that carries ``reply``.

    :param reply: the SMTP reply.
    :returns: ``('X-Smtp-Reply', '250; message="2.0.0 Ok"')`` and the like, with
        a ``command="..."`` parameter when the reply names its command.
    """
    value = f'{reply.code}; message="{_quote(reply.message or "")}"'
    command: Any = reply.command
    if command:
        if isinstance(command, bytes):
            command = command.decode("ascii", "replace")
        value += f'; command="{_quote(str(command))}"'
    return ("X-Smtp-Reply", value)


def _response_for_reply(reply: Reply, status: str | None = None) -> WsgiResponse:
    code = reply.code or ""
    if status is None:
        if code.startswith("2"):
            status = "204 No Content"
        elif code.startswith("4"):
            status = "503 Service Unavailable"
        elif code == "535":
            status = "401 Unauthorized"
        else:
            status = "500 Internal Server Error"
    return WsgiResponse(status, [smtp_reply_header(reply)])


def _bad_request(code: str, message: str) -> WsgiResponse:
    return _response_for_reply(Reply(code, message), "400 Bad Request")


class WsgiValidators:
    """Base class for the request validators of a :class:`WsgiEdge`.

    One instance is made per request. Each method may raise
    :class:`WsgiResponse` to refuse the request with that response.

    :param environ: the WSGI environment of the request, kept as :attr:`environ`.
    """

    #: Names of request headers passed to :meth:`validate_custom`, once each.
    custom_headers: list[str] = []

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ

    def validate_ehlo(self, ehlo: str) -> None:
        """Check the ``X-Ehlo`` value (``[ip]`` when the client gave none)."""

    def validate_sender(self, sender: str) -> None:
        """Check the decoded sender address (``''`` for the null sender)."""

    def validate_recipient(self, recipient: str) -> None:
        """Check one decoded recipient address; called for each recipient."""

    def validate_custom(self, name: str, value: str | None) -> None:
        """Check a header named in :attr:`custom_headers`.

        :param name: the header name as listed.
        :param value: its value, or ``None`` when the request has none.
        """


class WsgiEdge(EdgeServer, WsgiServer):  # type: ignore[misc]
    """Receives messages over HTTP and hands them to a queue.

    The object is a WSGI application. With ``listener`` it also builds its own
    :class:`gevent.pywsgi.WSGIServer` (start it with ``start()``, as any
    :class:`~slimta.edge.EdgeServer`); without, serve it with
    :meth:`~slimta.http.wsgi.WsgiServer.build_server` or any WSGI engine.

    :param queue: the :class:`~slimta.queue.Queue` messages go to.
    :param hostname: this machine's name, see :class:`~slimta.edge.Edge`.
    :param validator_class: a :class:`WsgiValidators` subclass.
    :param uri_pattern: only request paths matching this regular expression
        (a string or compiled pattern) are served; others get ``404``.
    :param listener: ``(ip, port)`` to listen on, or ``None``.
    :param pool: a :class:`gevent.pool.Pool` for the request greenlets.
    :param context: an :class:`ssl.SSLContext` to serve HTTPS.
    :param max_size: the largest message body accepted, in bytes (default
        :data:`DEFAULT_MAX_SIZE_BYTES`); a larger one gets ``413`` and
        ``552 5.3.4``.
    """

    #: Splits a header holding several base64 recipients.
    split_pattern = re.compile(r"\s*[,;]\s*")

    #: The HTTP method clients use.
    http_verb = "POST"

    #: The header carrying the base64 of the envelope sender.
    sender_header = "X-Envelope-Sender"

    #: The header carrying the base64 of a recipient, repeated per recipient.
    rcpt_header = "X-Envelope-Recipient"

    #: The header carrying the client's EHLO name.
    ehlo_header = "X-Ehlo"

    def __init__(
        self,
        queue: Any,
        hostname: str | None = None,
        validator_class: Any = None,
        uri_pattern: Any = None,
        listener: Any = None,
        pool: Any = None,
        context: Any = None,
        max_size: int | None = None,
    ) -> None:
        super().__init__(None, queue, hostname=hostname)
        self.validator_class = validator_class
        if isinstance(uri_pattern, str):
            uri_pattern = re.compile(uri_pattern)
        self.uri_pattern = uri_pattern
        self.max_size = max_size if max_size is not None else DEFAULT_MAX_SIZE_BYTES
        if listener:
            ssl_args = {"ssl_context": context} if context is not None else {}
            self.server = self.build_server(listener, pool, ssl_args)
        else:
            self.server = None

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        _http_log.wsgi_request(environ)
        ptr_lookup = PtrLookup(environ.get("REMOTE_ADDR", "0.0.0.0"))
        ptr_lookup.start()
        try:
            self._validate_request(environ)
            env = self._get_envelope(environ)
            self._add_envelope_extras(environ, env, ptr_lookup)
            self._enqueue_envelope(env)
            raise AssertionError("unreachable")  # _enqueue_envelope always raises
        except WsgiResponse as res:
            _http_log.wsgi_response(environ, res.status, res.headers)
            start_response(res.status, res.headers)
            return res.data
        except Exception:
            logging.log_exception(__name__)
            reply = Reply("451", "4.3.0 Internal error handling the message")
            headers = [smtp_reply_header(reply), ("Content-Type", "text/plain")]
            status = "500 Internal Server Error"
            _http_log.wsgi_response(environ, status, headers)
            start_response(status, headers)
            return [b"Internal error handling the message\n"]
        finally:
            ptr_lookup.kill(block=False)

    # -- the request -------------------------------------------------------------
    def _validate_request(self, environ: dict[str, Any]) -> None:
        if self.uri_pattern:
            path = environ.get("PATH_INFO", "")
            if not re.match(self.uri_pattern, path):
                raise WsgiResponse("404 Not Found")
        method = str(environ.get("REQUEST_METHOD", "")).upper()
        if method != self.http_verb:
            raise WsgiResponse("405 Method Not Allowed", [("Allow", self.http_verb)])
        ctype = environ.get("CONTENT_TYPE") or "message/rfc822"
        if ctype.split(";", 1)[0].strip().lower() != "message/rfc822":
            raise WsgiResponse("415 Unsupported Media Type")
        if self.validator_class:
            self._run_validators(environ)

    def _run_validators(self, environ: dict[str, Any]) -> None:
        validators = self.validator_class(environ)
        validators.validate_ehlo(self._get_ehlo(environ))
        validators.validate_sender(self._get_sender(environ))
        for rcpt in self._get_recipients(environ):
            validators.validate_recipient(rcpt)
        for name in validators.custom_headers:
            validators.validate_custom(name, environ.get(_header_name_to_cgi(name)))

    def _b64decode(self, b64str: str, code: str, what: str) -> str:
        try:
            raw = b64decode(b64str.encode("ascii"), validate=True)
            value = raw.decode("utf-8")
        except (UnicodeError, binascii.Error, ValueError):
            raise _bad_request(code, f"{what} is not valid base64 of UTF-8 text") from None
        if len(raw) > MAX_ADDRESS_BYTES:
            raise _bad_request(code, f"{what} is too long")
        if _CONTROL_RE.search(value):
            raise _bad_request(code, f"{what} contains control characters")
        return value

    def _get_sender(self, environ: dict[str, Any]) -> str:
        raw = environ.get(_header_name_to_cgi(self.sender_header), "")
        return self._b64decode(raw.strip(), "501", "5.1.7 Envelope sender")

    def _get_recipients(self, environ: dict[str, Any]) -> list[str]:
        raw = environ.get(_header_name_to_cgi(self.rcpt_header), None)
        if not raw or not raw.strip():
            raise _bad_request("554", "5.5.1 No envelope recipients given")
        parts = self.split_pattern.split(raw.strip())
        if len(parts) > MAX_RECIPIENTS:
            raise _bad_request("452", "4.5.3 Too many recipients")
        recipients = [self._b64decode(part, "501", "5.1.3 Envelope recipient") for part in parts]
        if not all(recipients):
            raise _bad_request("501", "5.1.3 Envelope recipient is empty")
        return recipients

    def _get_ehlo(self, environ: dict[str, Any]) -> str:
        default = "[{}]".format(environ.get("REMOTE_ADDR", "unknown"))
        ehlo = environ.get(_header_name_to_cgi(self.ehlo_header)) or default
        if len(ehlo) > MAX_EHLO_CHARS or _CONTROL_RE.search(ehlo):
            raise _bad_request("501", "5.5.4 Invalid X-Ehlo value")
        return str(ehlo)

    def _read_body(self, environ: dict[str, Any]) -> bytes:
        try:
            return self._read_body_bounded(environ)
        except OSError:  # a timeout or a reset while the body was coming
            response = _response_for_reply(
                Reply("451", "4.4.2 Timed out or lost reading the message"), "408 Request Timeout"
            )
            response.headers.append(("Connection", "close"))
            environ[SKIP_BODY_KEY] = True  # the stream is broken: do not drain it
            raise response from None

    def _read_body_bounded(self, environ: dict[str, Any]) -> bytes:
        too_big = _response_for_reply(
            Reply("552", "5.3.4 Message size exceeds fixed limit"), "413 Payload Too Large"
        )
        too_big.headers.append(("Connection", "close"))
        length_text = environ.get("CONTENT_LENGTH") or ""
        stream = environ["wsgi.input"]
        if length_text:
            try:
                length = int(length_text)
            except ValueError:
                raise _bad_request("501", "5.5.4 Invalid Content-Length") from None
            if length < 0:
                raise _bad_request("501", "5.5.4 Invalid Content-Length")
            if length > self.max_size:
                environ[SKIP_BODY_KEY] = True  # answer now, never read the body
                raise too_big
            data = stream.read(length)
            if len(data) != length:
                raise _bad_request("501", "5.5.4 Message body shorter than Content-Length")
            return bytes(data)
        # No length (chunked): read in bounded pieces, never past max_size + 1.
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = stream.read(min(_READ_CHUNK_BYTES, self.max_size + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > self.max_size:
                environ[SKIP_BODY_KEY] = True  # nor the rest of a chunked one
                raise too_big
        return b"".join(chunks)

    def _get_envelope(self, environ: dict[str, Any]) -> Envelope:
        sender = self._get_sender(environ)
        recipients = self._get_recipients(environ)
        self._get_ehlo(environ)
        env = Envelope(sender, recipients)
        env.parse(self._read_body(environ))
        return env

    def _add_envelope_extras(
        self, environ: dict[str, Any], env: Envelope, ptr_lookup: PtrLookup
    ) -> None:
        env.client["ip"] = environ.get("REMOTE_ADDR", "unknown")
        env.client["host"] = ptr_lookup.finish()
        env.client["name"] = self._get_ehlo(environ)
        env.client["protocol"] = str(environ.get("wsgi.url_scheme", "http")).upper()

    def _enqueue_envelope(self, env: Envelope) -> None:
        results = self.handoff(env)
        # As on the SMTP edge: one failed envelope (of a split) fails the request.
        outcomes = [result for _, result in results] or [QueueError("Nothing was queued")]
        failed = [r for r in outcomes if isinstance(r, (QueueError, RelayError))]
        first = failed[0] if failed else None
        if isinstance(first, QueueError):
            reply = getattr(first, "reply", None) or Reply("451", "4.3.0 Error queuing message")
            raise _response_for_reply(reply)
        if isinstance(first, RelayError):
            raise _response_for_reply(first.reply)
        raise _response_for_reply(Reply("250", "2.6.0 Message accepted for delivery"))
