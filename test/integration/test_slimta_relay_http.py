"""HttpRelay against a real gevent WSGI server (and a few scripted raw HTTP peers)."""

from __future__ import annotations

import base64
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import gevent
import pytest
from gevent.event import Event
from support import envelopes
from support.http_peer import OK_RESPONSE, Handler, ScriptedHttpServer
from support.tls import TlsCert, make_self_signed
from support.util import GUARD_SECONDS, free_port
from support.wsgi_server import WsgiServer

from slimta.envelope import Envelope
from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.relay.http import MAX_RESPONSE_BODY_BYTES, HttpRelay, HttpRelayClient
from slimta.relay.smtp import SmtpPermanentRelayError, SmtpTransientRelayError
from slimta.smtp.reply import Reply

MESSAGE = b"From: a@example.com\r\nSubject: hello\r\n\r\nbody line\r\n.dot line\r\n"


make_envelope = partial(
    envelopes.make_envelope,
    sender="sender@example.com",
    rcpts=("rcpt1@example.com", "rcpt2@example.com"),
    data=MESSAGE,
)


def b64(value: str) -> str:
    return base64.b64encode(value.encode("utf-8")).decode("ascii")


@pytest.fixture
def relays() -> Iterator[list[HttpRelay]]:
    """Relays created in a test; all are killed at teardown (no live greenlets)."""
    made: list[HttpRelay] = []
    yield made
    for relay in made:
        relay.kill()
        assert not relay.pool


@pytest.fixture
def new_relay(relays: list[HttpRelay]) -> Callable[..., HttpRelay]:
    def make(url: str, **kwargs: Any) -> HttpRelay:
        kwargs.setdefault("ehlo_as", "relay.example.com")
        kwargs.setdefault("timeout", 5.0)
        relay = HttpRelay(url, **kwargs)
        relays.append(relay)
        return relay

    return make


def attempt(relay: HttpRelay, envelope: Envelope) -> Any:
    with gevent.Timeout(GUARD_SECONDS, AssertionError("attempt() did not return")):
        return relay.attempt(envelope, 0)


def attempt_error(relay: HttpRelay, envelope: Envelope) -> BaseException:
    with gevent.Timeout(GUARD_SECONDS, AssertionError("attempt() did not return")):
        try:
            relay.attempt(envelope, 0)
        except Exception as exc:
            return exc
    raise AssertionError("attempt() did not raise")


def answer(status: str, headers: list[tuple[str, str]], body: bytes = b"") -> Any:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response(status, headers)
        return [body]

    return app


# -- the request ----------------------------------------------------------------------


def test_request_headers_and_exact_body(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay]
) -> None:
    server = wsgi_server()
    relay = new_relay(server.url + "deliver?queue=fast&x=1")
    env = make_envelope(sender="séndér@example.com", rcpts=["one@example.com", "twö@example.com"])
    header_data, body = env.flatten()

    reply = attempt(relay, env)

    assert isinstance(reply, Reply)
    assert (reply.code, reply.message) == ("250", "2.0.0 Ok")
    [request] = server.requests
    assert request.method == "POST"
    assert request.path == "/deliver"
    assert request.query == "queue=fast&x=1"
    assert request.body == header_data + body
    assert request.header("Content-Length") == str(len(header_data) + len(body))
    assert request.header("Content-Type") == "message/rfc822"
    assert request.header("X-Ehlo") == "relay.example.com"
    assert request.header("X-Envelope-Sender") == b64("séndér@example.com")
    assert request.header_all("X-Envelope-Recipient") == [
        b64("one@example.com"),
        b64("twö@example.com"),
    ]
    assert request.header("Accept-Encoding") == "identity"
    # Our headers, in the documented order.
    names = [name.lower() for name, _ in request.headers]
    ours = ["content-length", "content-type", "x-ehlo", "x-envelope-sender"]
    assert [n for n in names if n in ours] == ours
    assert names.index("x-envelope-sender") < names.index("x-envelope-recipient")


def test_empty_path_is_slash_and_null_sender(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay]
) -> None:
    server = wsgi_server()
    relay = new_relay(f"http://{server.host}:{server.port}")
    attempt(relay, make_envelope(sender=None))
    attempt(relay, make_envelope(sender=""))
    assert [r.path for r in server.requests] == ["/", "/"]
    assert [r.header("X-Envelope-Sender") for r in server.requests] == ["", ""]


def test_custom_class_attributes(
    wsgi_server: Callable[..., WsgiServer], relays: list[HttpRelay]
) -> None:
    class PutRelay(HttpRelay):
        http_verb = "PUT"
        sender_header = "X-From"
        recipient_header = "X-To"
        ehlo_header = "X-Helo"

    server = wsgi_server()
    relay = PutRelay(server.url, ehlo_as=lambda: "callable.example.com", timeout=5)
    relays.append(relay)
    attempt(relay, make_envelope(rcpts=["r@example.com"]))
    [request] = server.requests
    assert request.method == "PUT"
    assert request.header("X-Helo") == "callable.example.com"
    assert request.header("X-From") == b64("sender@example.com")
    assert request.header_all("X-To") == [b64("r@example.com")]


def test_large_message_exact_bytes(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay]
) -> None:
    server = wsgi_server()
    relay = new_relay(server.url)
    data = b"Subject: big\r\n\r\n" + bytes(range(256)) * (8 * 1024 * 4)  # 8 MiB, 8-bit
    env = make_envelope(data=data)
    header_data, body = env.flatten()
    attempt(relay, env)
    assert server.requests[0].body == header_data + body


# -- header injection -------------------------------------------------------------------


@pytest.mark.parametrize(
    "ehlo_as",
    ["evil\r\nX-Injected: 1", "evil\nX-Injected: 1", "evil\r\n X-Folded: 1", "nul\x00", "ü€"],
)
def test_bad_ehlo_never_reaches_the_wire(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay], ehlo_as: str
) -> None:
    server = wsgi_server()
    relay = new_relay(server.url, ehlo_as=ehlo_as)
    exc = attempt_error(relay, make_envelope())
    assert isinstance(exc, TransientRelayError)
    assert exc.reply.code == "451"
    assert exc.reply.enhanced_status_code == "4.3.5"
    assert server.requests == []
    assert server.connection_count == 0


def test_addresses_cannot_inject_headers(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay]
) -> None:
    server = wsgi_server()
    relay = new_relay(server.url)
    sender = "s@example.com\r\nX-Injected: sender"
    rcpt = "r@example.com\r\nX-Injected: rcpt\r\n\r\nbody"
    attempt(relay, make_envelope(sender=sender, rcpts=[rcpt]))
    [request] = server.requests
    assert request.header("X-Injected") is None
    assert base64.b64decode(request.header("X-Envelope-Sender") or "").decode() == sender
    assert [base64.b64decode(v).decode() for v in request.header_all("X-Envelope-Recipient")] == [
        rcpt
    ]


# -- the answer ----------------------------------------------------------------------------


def test_success_without_reply_header_is_none(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay]
) -> None:
    server = wsgi_server(answer("204 No Content", []))
    assert attempt(new_relay(server.url), make_envelope()) is None


@pytest.mark.parametrize("header", ["garbage", '25; message="x"', '600; message="x"'])
def test_success_with_unparseable_reply_is_none(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay], header: str
) -> None:
    server = wsgi_server(answer("200 OK", [("X-Smtp-Reply", header)]))
    assert attempt(new_relay(server.url), make_envelope()) is None


def test_reply_header_escapes_and_command(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay]
) -> None:
    header = r' 550 ;  message="5.1.1 Say \"hi\" to C:\\dir"; COMMAND="RCPT"; other="x"'
    server = wsgi_server(answer("500 Internal Server Error", [("X-Smtp-Reply", header)]))
    exc = attempt_error(new_relay(server.url), make_envelope())
    assert isinstance(exc, SmtpPermanentRelayError)
    assert exc.reply.code == "550"
    assert exc.reply.message == '5.1.1 Say "hi" to C:\\dir'
    assert exc.reply.command == b"RCPT"


def test_success_reply_with_command(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay]
) -> None:
    header = '250; message="2.6.0 Queued as \\"A1\\""; command="DATA"'
    server = wsgi_server(answer("200 OK", [("X-Smtp-Reply", header)]))
    reply = attempt(new_relay(server.url), make_envelope())
    assert isinstance(reply, Reply)
    assert reply.message == '2.6.0 Queued as "A1"'
    assert reply.command == b"DATA"


@pytest.mark.parametrize(
    ("header", "kind"),
    [
        ('550; message="5.7.1 Go away"', SmtpPermanentRelayError),
        ('452; message="4.2.2 Mailbox full"', SmtpTransientRelayError),
    ],
)
def test_error_reply_on_2xx_status_is_not_delivered(
    wsgi_server: Callable[..., WsgiServer],
    new_relay: Callable[..., HttpRelay],
    header: str,
    kind: type,
) -> None:
    server = wsgi_server(answer("200 OK", [("X-Smtp-Reply", header)]))
    exc = attempt_error(new_relay(server.url), make_envelope())
    assert isinstance(exc, kind)
    assert exc.reply.code == header[:3]


def test_transient_reply_header(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay]
) -> None:
    header = '451; message="4.3.0 Try later"'
    server = wsgi_server(answer("503 Service Unavailable", [("X-Smtp-Reply", header)]))
    exc = attempt_error(new_relay(server.url), make_envelope())
    assert isinstance(exc, SmtpTransientRelayError)
    assert str(exc.reply) == "451 4.3.0 Try later"


@pytest.mark.parametrize(
    ("status", "kind", "reply"),
    [
        ("404 Not Found", PermanentRelayError, "550 5.0.0 Not Found"),
        ("400 Bad Request", PermanentRelayError, "550 5.0.0 Bad Request"),
        ("500 Internal Server Error", TransientRelayError, "450 4.0.0 Internal Server Error"),
        ("503 Service Unavailable", TransientRelayError, "450 4.0.0 Service Unavailable"),
        ("302 Found", TransientRelayError, "450 4.0.0 Found"),
    ],
)
def test_status_without_reply_header(
    wsgi_server: Callable[..., WsgiServer],
    new_relay: Callable[..., HttpRelay],
    status: str,
    kind: type,
    reply: str,
) -> None:
    server = wsgi_server(answer(status, []))
    exc = attempt_error(new_relay(server.url), make_envelope())
    assert type(exc) is kind
    assert isinstance(exc, PermanentRelayError | TransientRelayError)
    assert str(exc.reply) == reply


def test_success_header_on_error_status_uses_status(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay]
) -> None:
    server = wsgi_server(answer("500 Oops", [("X-Smtp-Reply", '250; message="2.0.0 Ok"')]))
    exc = attempt_error(new_relay(server.url), make_envelope())
    assert isinstance(exc, TransientRelayError)
    assert str(exc.reply) == "450 4.0.0 Oops"


def test_overridable_reply_patterns(
    wsgi_server: Callable[..., WsgiServer], relays: list[HttpRelay]
) -> None:
    import re

    class Client(HttpRelayClient):
        reply_code_pattern = re.compile(r"^code=(\d{3})\|")
        reply_param_pattern = re.compile(r"(\w+):'([^']*)'")

    class Relay(HttpRelay):
        def add_client(self) -> HttpRelayClient:
            return Client(self)

    server = wsgi_server(answer("200 OK", [("X-Smtp-Reply", "code=250|message:'2.1.0 Fine'")]))
    relay = Relay(server.url, timeout=5, ehlo_as="x")
    relays.append(relay)
    reply = attempt(relay, make_envelope())
    assert isinstance(reply, Reply)
    assert str(reply) == "250 2.1.0 Fine"


# -- keep-alive and the client lifecycle --------------------------------------------------


def test_keep_alive_serves_sequential_messages(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay]
) -> None:
    server = wsgi_server()
    relay = new_relay(server.url, idle_timeout=GUARD_SECONDS)
    for _ in range(5):
        attempt(relay, make_envelope())
    assert len(server.requests) == 5
    assert server.connection_count == 1


def test_without_idle_timeout_each_message_has_its_connection(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay]
) -> None:
    server = wsgi_server()
    relay = new_relay(server.url)
    for _ in range(3):
        attempt(relay, make_envelope())
    assert server.connection_count == 3
    with gevent.Timeout(GUARD_SECONDS):
        gevent.joinall(list(relay.pool))
    assert not relay.pool


def test_client_exits_after_idle_timeout(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay]
) -> None:
    server = wsgi_server()
    relay = new_relay(server.url, idle_timeout=0.2)
    attempt(relay, make_envelope())
    clients = list(relay.pool)
    assert len(clients) == 1
    with gevent.Timeout(GUARD_SECONDS, AssertionError("client never exited")):
        gevent.joinall(clients)
    assert not relay.pool
    assert clients[0].conn is None
    # A later message starts a new client and connection.
    attempt(relay, make_envelope())
    assert server.connection_count == 2


def test_large_response_body_closes_connection(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay]
) -> None:
    body = b"x" * (MAX_RESPONSE_BODY_BYTES + 1)
    server = wsgi_server(answer("200 OK", [("X-Smtp-Reply", '250; message="2.0.0 Ok"')], body))
    relay = new_relay(server.url, idle_timeout=GUARD_SECONDS)
    assert attempt(relay, make_envelope()) is not None
    assert attempt(relay, make_envelope()) is not None
    assert server.connection_count == 2


def test_small_response_body_is_read_and_connection_reused(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay]
) -> None:
    body = b"y" * MAX_RESPONSE_BODY_BYTES
    server = wsgi_server(answer("200 OK", [("X-Smtp-Reply", '250; message="2.0.0 Ok"')], body))
    relay = new_relay(server.url, idle_timeout=GUARD_SECONDS)
    for _ in range(3):
        attempt(relay, make_envelope())
    assert server.connection_count == 1


def test_concurrent_messages_bounded_pool(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay]
) -> None:
    server = wsgi_server()
    relay = new_relay(server.url, pool_size=3, idle_timeout=GUARD_SECONDS)
    jobs = [gevent.spawn(relay.attempt, make_envelope(), 0) for _ in range(20)]
    with gevent.Timeout(GUARD_SECONDS):
        gevent.joinall(jobs, raise_error=True)
    assert all(isinstance(job.value, Reply) for job in jobs)
    assert len(server.requests) == 20
    assert server.connection_count <= 3


# -- failures -------------------------------------------------------------------------------


def test_connection_refused(new_relay: Callable[..., HttpRelay]) -> None:
    relay = new_relay(f"http://127.0.0.1:{free_port()}/")
    exc = attempt_error(relay, make_envelope())
    assert isinstance(exc, TransientRelayError)
    assert str(exc.reply) == "451 4.3.0 Connection failed"


def test_timeout_while_server_stalls(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay]
) -> None:
    release = Event()

    def stall(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        release.wait(GUARD_SECONDS)
        start_response("200 OK", [])
        return [b""]

    server = wsgi_server(stall)
    relay = new_relay(server.url, timeout=0.3, idle_timeout=GUARD_SECONDS)
    try:
        exc = attempt_error(relay, make_envelope())
    finally:
        release.set()
    assert isinstance(exc, TransientRelayError)
    assert str(exc.reply) == "421 4.4.2 Connection timed out"
    # The timed-out connection is not reused.
    assert all(client.conn is None for client in relay.pool)


def reset(sock: Any) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[..., ScriptedHttpServer]]:
    servers: list[ScriptedHttpServer] = []

    def start(*handlers: Handler) -> ScriptedHttpServer:
        server = ScriptedHttpServer(handlers)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_connection_reset_is_transient(
    raw_server: Callable[..., ScriptedHttpServer], new_relay: Callable[..., HttpRelay]
) -> None:
    def handler(sock: Any, read: Callable[[], bytes]) -> None:
        read()
        reset(sock)

    server = raw_server(handler, handler)
    exc = attempt_error(new_relay(server.url), make_envelope())
    assert isinstance(exc, TransientRelayError)
    assert str(exc.reply) == "451 4.3.0 Connection failed"
    # A fresh connection is never retried.
    assert server.connections == 1


def test_garbage_response_is_transient(
    raw_server: Callable[..., ScriptedHttpServer], new_relay: Callable[..., HttpRelay]
) -> None:
    def handler(sock: Any, read: Callable[[], bytes]) -> None:
        read()
        sock.sendall(b"SMTP/9 what is this\r\n\r\n")

    server = raw_server(handler)
    exc = attempt_error(new_relay(server.url), make_envelope())
    assert isinstance(exc, TransientRelayError)
    assert exc.reply.code == "451"
    assert exc.reply.enhanced_status_code == "4.3.0"
    assert "Malformed HTTP response" in (exc.reply.message or "")


def test_stale_reused_connection_is_retried_once(
    raw_server: Callable[..., ScriptedHttpServer], new_relay: Callable[..., HttpRelay]
) -> None:
    def first(sock: Any, read: Callable[[], bytes]) -> None:
        read()
        sock.sendall(OK_RESPONSE)
        read()  # the second request arrives; the server hangs up without a byte

    def second(sock: Any, read: Callable[[], bytes]) -> None:
        read()
        sock.sendall(OK_RESPONSE)
        read()

    server = raw_server(first, second)
    relay = new_relay(server.url, idle_timeout=GUARD_SECONDS)
    assert attempt(relay, make_envelope()) is not None
    reply = attempt(relay, make_envelope())
    assert isinstance(reply, Reply) and reply.code == "250"
    assert server.connections == 2
    assert len(server.requests) == 3


def test_reused_connection_reset_before_answer_is_retried(
    raw_server: Callable[..., ScriptedHttpServer], new_relay: Callable[..., HttpRelay]
) -> None:
    def first(sock: Any, read: Callable[[], bytes]) -> None:
        read()
        sock.sendall(OK_RESPONSE)
        read()
        reset(sock)

    def second(sock: Any, read: Callable[[], bytes]) -> None:
        read()
        sock.sendall(OK_RESPONSE)

    server = raw_server(first, second)
    relay = new_relay(server.url, idle_timeout=GUARD_SECONDS)
    attempt(relay, make_envelope())
    assert isinstance(attempt(relay, make_envelope()), Reply)
    assert server.connections == 2


def test_retry_happens_only_once(
    raw_server: Callable[..., ScriptedHttpServer], new_relay: Callable[..., HttpRelay]
) -> None:
    def first(sock: Any, read: Callable[[], bytes]) -> None:
        read()
        sock.sendall(OK_RESPONSE)
        read()

    def hang_up(sock: Any, read: Callable[[], bytes]) -> None:
        read()

    server = raw_server(first, hang_up, hang_up)
    relay = new_relay(server.url, idle_timeout=GUARD_SECONDS)
    attempt(relay, make_envelope())
    exc = attempt_error(relay, make_envelope())
    assert isinstance(exc, TransientRelayError)
    assert str(exc.reply) == "451 4.3.0 Connection failed"
    assert server.connections == 2


def test_no_retry_once_the_response_started(
    raw_server: Callable[..., ScriptedHttpServer], new_relay: Callable[..., HttpRelay]
) -> None:
    def first(sock: Any, read: Callable[[], bytes]) -> None:
        read()
        sock.sendall(OK_RESPONSE)
        read()
        sock.sendall(b"HTTP/1.1 2")  # a response has started...
        reset(sock)  # ...and dies

    def second(sock: Any, read: Callable[[], bytes]) -> None:
        read()
        sock.sendall(OK_RESPONSE)

    server = raw_server(first, second)
    relay = new_relay(server.url, idle_timeout=GUARD_SECONDS)
    attempt(relay, make_envelope())
    exc = attempt_error(relay, make_envelope())
    assert isinstance(exc, TransientRelayError)
    assert server.connections == 1
    assert len(server.requests) == 2


def test_truncated_body_is_not_reused(
    raw_server: Callable[..., ScriptedHttpServer], new_relay: Callable[..., HttpRelay]
) -> None:
    def first(sock: Any, read: Callable[[], bytes]) -> None:
        read()
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n"
            b'X-Smtp-Reply: 250; message="2.0.0 Ok"\r\n\r\nabc'
        )
        read()  # the server keeps the socket open: only the length says it is cut

    def second(sock: Any, read: Callable[[], bytes]) -> None:
        read()
        sock.sendall(OK_RESPONSE)

    server = raw_server(first, second)
    relay = new_relay(server.url, idle_timeout=GUARD_SECONDS, timeout=0.3)
    # The status line and headers arrived whole: that answer stands, even though
    # the rest of the body never comes and the timeout fires.
    assert isinstance(attempt(relay, make_envelope()), Reply)
    assert isinstance(attempt(relay, make_envelope()), Reply)
    assert server.connections == 2
    assert len(server.requests) == 2


def test_server_closing_idle_connection_is_noticed(
    raw_server: Callable[..., ScriptedHttpServer], new_relay: Callable[..., HttpRelay]
) -> None:
    closed = Event()

    def first(sock: Any, read: Callable[[], bytes]) -> None:
        read()
        sock.sendall(OK_RESPONSE)
        sock.close()
        closed.set()

    def second(sock: Any, read: Callable[[], bytes]) -> None:
        read()
        sock.sendall(OK_RESPONSE)

    server = raw_server(first, second)
    relay = new_relay(server.url, idle_timeout=GUARD_SECONDS)
    attempt(relay, make_envelope())
    assert closed.wait(GUARD_SECONDS)
    assert isinstance(attempt(relay, make_envelope()), Reply)
    # The stale socket was dropped before use: the second request was sent once.
    assert len(server.requests) == 2
    assert server.connections == 2


def test_message_without_content_is_transient(new_relay: Callable[..., HttpRelay]) -> None:
    relay = new_relay("http://127.0.0.1:1/")
    exc = attempt_error(relay, Envelope("s@example.com", ["r@example.com"]))
    assert isinstance(exc, TransientRelayError)
    assert exc.reply.code == "451"


# -- HTTPS --------------------------------------------------------------------------------


def test_https_with_given_context(
    wsgi_server: Callable[..., WsgiServer],
    new_relay: Callable[..., HttpRelay],
    tls_cert: TlsCert,
) -> None:
    server = wsgi_server(tls=True)
    relay = new_relay(server.url, context=tls_cert.client_context(), idle_timeout=GUARD_SECONDS)
    for _ in range(3):
        assert isinstance(attempt(relay, make_envelope()), Reply)
    assert server.connection_count == 1
    header_data, body = make_envelope().flatten()
    assert server.requests[0].body == header_data + body


def test_https_with_stdlib_context_stays_cooperative(
    wsgi_server: Callable[..., WsgiServer],
    new_relay: Callable[..., HttpRelay],
    tls_cert: TlsCert,
) -> None:
    # The server runs in this same hub: a blocking handshake would deadlock here.
    server = wsgi_server(tls=True)
    relay = new_relay(server.url, context=tls_cert.stdlib_client_context())
    assert isinstance(attempt(relay, make_envelope()), Reply)


def test_https_default_context_verifies(
    wsgi_server: Callable[..., WsgiServer], new_relay: Callable[..., HttpRelay]
) -> None:
    server = wsgi_server(tls=True)
    relay = new_relay(server.url)
    exc = attempt_error(relay, make_envelope())
    assert isinstance(exc, TransientRelayError)
    assert str(exc.reply) == "421 4.7.0 TLS negotiation failed"
    assert server.requests == []


def test_https_untrusted_certificate_fails(
    wsgi_server: Callable[..., WsgiServer],
    new_relay: Callable[..., HttpRelay],
    tmp_path: Any,
) -> None:
    server = wsgi_server(tls=True)
    other = make_self_signed(str(tmp_path))  # trusts a different certificate
    relay = new_relay(server.url, context=other.client_context())
    exc = attempt_error(relay, make_envelope())
    assert isinstance(exc, TransientRelayError)
    assert str(exc.reply) == "421 4.7.0 TLS negotiation failed"
    assert server.requests == []
