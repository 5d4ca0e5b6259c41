"""slimta.edge.wsgi: HttpRelay -> WsgiEdge over a real gevent WSGI server.

What HttpRelay writes (base64 envelope headers, X-Ehlo, the message as the body) is
what WsgiEdge reads, and the X-Smtp-Reply WsgiEdge answers is what HttpRelay turns
into a result or an error. Raw requests cover what HttpRelay never sends.
"""

from __future__ import annotations

import base64
from typing import Any

import gevent
import gevent.socket
import pytest
from support.corpus import corpus_names, expected_flatten, load
from support.util import GUARD_SECONDS
from support.wsgi_edge import WsgiEdgeUnderTest

from slimta.edge.wsgi import WsgiEdge, WsgiResponse, WsgiValidators, smtp_reply_header
from slimta.envelope import Envelope
from slimta.http import HTTPConnection
from slimta.http.wsgi import LINGER_SECONDS
from slimta.queue import QueueError
from slimta.queue.dict import DictStorage
from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.relay.http import HttpRelay
from slimta.smtp.reply import Reply


def relay_to(edge: WsgiEdgeUnderTest) -> HttpRelay:
    return HttpRelay(edge.url, pool_size=1, ehlo_as="relay.example.test", timeout=10.0)


def attempt(relay: HttpRelay, env: Envelope) -> Any:
    try:
        with gevent.Timeout(GUARD_SECONDS, AssertionError("attempt() did not return")):
            return relay.attempt(env, 0)
    finally:
        relay.kill()


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def post(edge: WsgiEdgeUnderTest, body: bytes, headers: dict[str, str], method: str = "POST",
         path: str = "/", chunked: bool = False) -> tuple[int, dict[str, str], bytes]:
    host, port = edge.address
    conn = HTTPConnection(host, port, timeout=10.0)
    try:
        with gevent.Timeout(GUARD_SECONDS, AssertionError("request did not finish")):
            if chunked:
                conn.putrequest(method, path)
                for name, value in headers.items():
                    conn.putheader(name, value)
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                for start in range(0, len(body), 4096):
                    piece = body[start:start + 4096]
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                conn.send(b"0\r\n\r\n")
            else:
                conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def envelope_headers(sender: str = "s@example.test", rcpts: tuple[str, ...] = ("r@example.test",)
                     ) -> dict[str, str]:
    return {
        "Content-Type": "message/rfc822",
        "X-Envelope-Sender": b64(sender),
        "X-Envelope-Recipient": ", ".join(b64(r) for r in rcpts),
        "X-Ehlo": "client.example.test",
    }


# -- the round trip ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", corpus_names())
def test_corpus_round_trip_byte_for_byte(name: str, wsgi_edge: Any) -> None:
    data = load(name)
    edge = wsgi_edge()
    sender = "" if name == "03-postfix-dsn.eml" else "sender@example.test"
    env = Envelope(sender, ["alice@example.test"])
    env.parse(data)
    reply = attempt(relay_to(edge), env)
    assert isinstance(reply, Reply)
    assert (reply.code, reply.message) == ("250", "2.6.0 Message accepted for delivery")
    [stored] = edge.stored()
    assert stored.sender == sender
    assert stored.recipients == ["alice@example.test"]
    assert b"".join(stored.flatten()) == expected_flatten(data)
    assert stored.receiver == "edge.example.test"
    assert stored.client["ip"] == "127.0.0.1"
    assert stored.client["name"] == "relay.example.test"
    assert stored.client["protocol"] == "HTTP"


def test_recipients_in_order_with_utf8_addresses(wsgi_edge: Any) -> None:
    edge = wsgi_edge()
    rcpts = ["a@example.test", "jörg@bücher.example", "c;d@example.test", "e,f@example.test"]
    env = Envelope("sénder@example.test", list(rcpts))
    env.parse(b"Subject: hi\r\n\r\nbody\r\n")
    reply = attempt(relay_to(edge), env)
    assert reply.code == "250"
    [stored] = edge.stored()
    assert stored.sender == "sénder@example.test"
    assert stored.recipients == rcpts


def test_queue_store_failure_is_transient_451(wsgi_edge: Any) -> None:
    class FailingStorage(DictStorage):
        def write(self, envelope: Envelope, timestamp: float) -> str:
            raise OSError("disk full")

    edge = wsgi_edge(storage=FailingStorage())
    env = Envelope("s@example.test", ["r@example.test"])
    env.parse(b"Subject: x\r\n\r\ny\r\n")
    with pytest.raises(TransientRelayError) as info:
        attempt(relay_to(edge), env)
    assert info.value.reply.code == "451"
    assert info.value.reply.message.startswith("4.")


def test_queue_error_reply_is_passed_on(wsgi_edge: Any) -> None:
    edge = wsgi_edge()

    def refuse(envelope: Envelope) -> list[tuple[Envelope, Any]]:
        return [(envelope, QueueError(reply=Reply("554", "5.7.1 Refused by policy")))]

    edge.edge.queue = type("Q", (), {"enqueue": staticmethod(refuse)})()
    env = Envelope("s@example.test", ["r@example.test"])
    env.parse(b"Subject: x\r\n\r\ny\r\n")
    with pytest.raises(PermanentRelayError) as info:
        attempt(relay_to(edge), env)
    assert (info.value.reply.code, info.value.reply.message) == ("554", "5.7.1 Refused by policy")


class Picky(WsgiValidators):
    custom_headers = ["X-Token"]
    seen: list[tuple[str, Any]] = []

    def validate_ehlo(self, ehlo: str) -> None:
        Picky.seen.append(("ehlo", ehlo))

    def validate_sender(self, sender: str) -> None:
        if sender.endswith("@blocked.test"):
            raise WsgiResponse("403 Forbidden",
                               [smtp_reply_header(Reply("550", "5.7.1 Sender blocked"))])

    def validate_recipient(self, recipient: str) -> None:
        if recipient.endswith("@later.test"):
            raise WsgiResponse("503 Service Unavailable",
                               [smtp_reply_header(Reply("450", "4.2.1 Try later"))])

    def validate_custom(self, name: str, value: Any) -> None:
        Picky.seen.append((name, value))


def test_validators_refuse_permanently_and_transiently(wsgi_edge: Any) -> None:
    Picky.seen = []
    edge = wsgi_edge(validator_class=Picky)
    env = Envelope("x@blocked.test", ["r@example.test"])
    env.parse(b"Subject: x\r\n\r\ny\r\n")
    with pytest.raises(PermanentRelayError) as perm:
        attempt(relay_to(edge), env)
    assert (perm.value.reply.code, perm.value.reply.message) == ("550", "5.7.1 Sender blocked")
    env = Envelope("x@ok.test", ["r@later.test"])
    env.parse(b"Subject: x\r\n\r\ny\r\n")
    with pytest.raises(TransientRelayError) as temp:
        attempt(relay_to(edge), env)
    assert temp.value.reply.code == "450"
    assert edge.stored() == []
    env = Envelope("x@ok.test", ["r@ok.test"])
    env.parse(b"Subject: x\r\n\r\ny\r\n")
    assert attempt(relay_to(edge), env).code == "250"
    assert ("ehlo", "relay.example.test") in Picky.seen
    assert ("X-Token", None) in Picky.seen
    assert len(edge.stored()) == 1


# -- raw requests ------------------------------------------------------------------------------


def test_raw_request_success_status_and_header(wsgi_edge: Any) -> None:
    edge = wsgi_edge()
    status, headers, _ = post(edge, b"Subject: a\r\n\r\nb\r\n", envelope_headers())
    assert status == 204
    assert headers["x-smtp-reply"] == '250; message="2.6.0 Message accepted for delivery"'
    [stored] = edge.stored()
    assert stored.client["name"] == "client.example.test"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"X-Envelope-Sender": "!!not base64!!"}, "501"),
        ({"X-Envelope-Sender": b64("a\r\nRCPT TO:<x@evil.test>")}, "501"),
        ({"X-Envelope-Recipient": "%%%"}, "501"),
        ({"X-Envelope-Recipient": b64("r@example.test") + ", "}, "501"),
        ({"X-Envelope-Recipient": base64.b64encode(b"\xff\xfe@x").decode()}, "501"),
        ({"X-Envelope-Recipient": ""}, "554"),
        ({"X-Ehlo": "a" * 300}, "501"),
    ],
)
def test_bad_envelope_headers_answer_400(wsgi_edge: Any, headers: dict[str, str],
                                         code: str) -> None:
    edge = wsgi_edge()
    request_headers = envelope_headers()
    request_headers.update(headers)
    status, response_headers, _ = post(edge, b"Subject: a\r\n\r\nb\r\n", request_headers)
    assert status == 400
    assert response_headers["x-smtp-reply"].startswith(code + '; message="5.')
    assert edge.stored() == []


def test_missing_recipient_header_answers_400(wsgi_edge: Any) -> None:
    edge = wsgi_edge()
    headers = envelope_headers()
    del headers["X-Envelope-Recipient"]
    status, response_headers, _ = post(edge, b"x\r\n", headers)
    assert status == 400
    assert "No envelope recipients" in response_headers["x-smtp-reply"]


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_answers_413_552_and_queues_nothing(wsgi_edge: Any, chunked: bool) -> None:
    edge = wsgi_edge(max_size=10000)
    body = b"Subject: big\r\n\r\n" + b"x" * 20000 + b"\r\n"
    status, headers, _ = post(edge, body, envelope_headers(), chunked=chunked)
    assert status == 413
    assert headers["x-smtp-reply"].startswith('552; message="5.3.4 ')
    assert edge.stored() == []


def test_chunked_body_within_limit_is_queued(wsgi_edge: Any) -> None:
    edge = wsgi_edge(max_size=100000)
    body = b"Subject: chunked\r\n\r\n" + b"line\r\n" * 3000
    status, _, _ = post(edge, body, envelope_headers(), chunked=True)
    assert status == 204
    [stored] = edge.stored()
    assert b"".join(stored.flatten()) == body


def test_oversized_relay_attempt_is_permanent(wsgi_edge: Any) -> None:
    edge = wsgi_edge(max_size=100)
    env = Envelope("s@example.test", ["r@example.test"])
    env.parse(b"Subject: x\r\n\r\n" + b"y" * 500)
    with pytest.raises(PermanentRelayError) as info:
        attempt(relay_to(edge), env)
    assert info.value.reply.code == "552"


def test_method_type_and_path_checks(wsgi_edge: Any) -> None:
    edge = wsgi_edge(uri_pattern=r"/mail$")
    assert post(edge, b"", {}, method="GET", path="/mail")[0] == 405
    assert post(edge, b"x", {"Content-Type": "text/plain"}, path="/mail")[0] == 415
    assert post(edge, b"x", envelope_headers(), path="/other")[0] == 404
    assert post(edge, b"x\r\n", envelope_headers(), path="/mail")[0] == 204


def test_reply_header_quotes_and_keeps_utf8() -> None:
    name, value = smtp_reply_header(Reply("550", '5.1.1 "bad" \\ näme', b"RCPT"))
    assert name == "X-Smtp-Reply"
    assert value.encode("latin-1").decode("utf-8") == (
        '550; message="5.1.1 \\"bad\\" \\\\ näme"; command="RCPT"'
    )


def test_edge_without_listener_has_no_server() -> None:
    edge = WsgiEdge(None)
    assert edge.server is None
    assert edge.http_verb == "POST"
    assert edge.sender_header == "X-Envelope-Sender"


def test_https_round_trip(wsgi_edge: Any, tls_cert: Any) -> None:
    edge = wsgi_edge(context=tls_cert.gevent_server_context())
    assert edge.url.startswith("https://")
    relay = HttpRelay(edge.url.replace("127.0.0.1", "localhost"), pool_size=1,
                      ehlo_as="relay.example.test", timeout=10.0,
                      context=tls_cert.client_context())
    data = load("06-utf8-8bit-body.eml")
    env = Envelope("s@example.test", ["r@example.test"])
    env.parse(data)
    assert attempt(relay, env).code == "250"
    [stored] = edge.stored()
    assert b"".join(stored.flatten()) == expected_flatten(data)
    assert stored.client["protocol"] == "HTTPS"


def test_a_silent_client_is_disconnected(wsgi_edge: Any) -> None:
    edge = wsgi_edge()
    assert edge.edge.socket_timeout == 60.0
    edge.edge.server.slimta_socket_timeout = 0.2
    sock = gevent.socket.create_connection(edge.address)
    try:
        # Headers promise a body that never comes.
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: message/rfc822\r\n"
                     b"X-Envelope-Recipient: " + b64("r@example.test").encode() +
                     b"\r\nContent-Length: 100\r\n\r\npartial")
        with gevent.Timeout(GUARD_SECONDS, AssertionError("the edge kept the connection")):
            while sock.recv(4096):
                pass
    finally:
        sock.close()
    assert edge.stored() == []


class Refusing:
    """A relay for ProxyQueue: the next hop's own reply becomes the edge's answer."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def _attempt(self, env: Envelope, attempts: int) -> Any:
        raise self.error

    def kill(self) -> None:
        pass


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (PermanentRelayError("no", Reply("550", "5.1.1 <r@example.test> unknown", b"RCPT")),
         PermanentRelayError),
        (TransientRelayError("later", Reply("421", "4.3.2 Busy")), TransientRelayError),
    ],
)
def test_relay_error_from_a_proxy_queue_reaches_the_client(error: Exception,
                                                           expected: type) -> None:
    from slimta.queue.proxy import ProxyQueue

    edge = WsgiEdge(ProxyQueue(Refusing(error)), hostname="edge.example.test",
                    listener=("127.0.0.1", 0))
    assert edge.server is not None
    edge.server.start()
    try:
        env = Envelope("s@example.test", ["r@example.test"])
        env.parse(b"Subject: x\r\n\r\ny\r\n")
        relay = HttpRelay(f"http://127.0.0.1:{edge.server.server_port}/", pool_size=1,
                          timeout=10.0)
        with pytest.raises(expected) as info:
            attempt(relay, env)
    finally:
        edge.server.stop(timeout=1)
    reply = info.value.reply  # type: ignore[attr-defined]
    original = error.reply  # type: ignore[attr-defined]
    assert (reply.code, reply.message) == (original.code, original.message)
    assert reply.command == original.command


# -- oversized bodies are answered without being read ----------------------------

#: Far less than gevent's drain would wait for the body (the 60 s socket timeout).
CLOSE_WITHIN_SECONDS = LINGER_SECONDS + 4.0


def raw_request_head(edge: WsgiEdgeUnderTest, extra: dict[str, str]) -> bytes:
    host, port = edge.address
    headers = {"Host": f"{host}:{port}", **envelope_headers(), **extra}
    lines = ["POST / HTTP/1.1"] + [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_until_closed(sock: Any, seconds: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes, or until ``seconds`` pass.

    :returns: ``(bytes, closed)``.
    """
    data = b""
    try:
        with gevent.Timeout(seconds):
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    return data, True
                if not chunk:
                    return data, True
                data += chunk
    except gevent.Timeout:
        return data, False


def test_content_length_over_the_limit_is_answered_before_the_body(wsgi_edge: Any) -> None:
    """413 right after the headers, then the connection closes: the server never
    waits for (or reads) the 50 MB the client announced and never sends."""
    edge = wsgi_edge(max_size=10000)
    sock = gevent.socket.create_connection(edge.address, timeout=GUARD_SECONDS)
    try:
        sock.sendall(raw_request_head(edge, {"Content-Length": str(50 * 1024 * 1024)}))
        sock.sendall(b"Subject: big\r\n\r\n" + b"x" * 1000)
        response, closed = read_until_closed(sock, CLOSE_WITHIN_SECONDS)
    finally:
        sock.close()
    head = response.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 413 "), response[:200]
    assert b'x-smtp-reply: 552; message="5.3.4 ' in head
    assert b"connection: close" in head
    assert closed, "the server kept the connection open to drain the body"
    assert edge.stored() == []


def test_chunked_body_over_the_limit_is_not_drained(wsgi_edge: Any) -> None:
    """A chunked body is read only until it passes the limit; the rest (here: a
    client that never sends the last chunk) is not waited for."""
    edge = wsgi_edge(max_size=10000)
    sock = gevent.socket.create_connection(edge.address, timeout=GUARD_SECONDS)
    try:
        sock.sendall(raw_request_head(edge, {"Transfer-Encoding": "chunked"}))
        piece = b"y" * 4096
        for _ in range(4):  # 16 KiB > max_size, and no terminating 0-chunk
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        response, closed = read_until_closed(sock, CLOSE_WITHIN_SECONDS)
    finally:
        sock.close()
    assert response.lower().startswith(b"http/1.1 413 "), response[:200]
    assert closed, "the server kept reading the chunked body"
    assert edge.stored() == []


def test_accepted_requests_keep_the_connection(wsgi_edge: Any) -> None:
    """Only a skipped body closes the connection: two requests on one connection."""
    edge = wsgi_edge(max_size=10000)
    host, port = edge.address
    conn = HTTPConnection(host, port, timeout=10.0)
    try:
        with gevent.Timeout(GUARD_SECONDS, AssertionError("requests did not finish")):
            for index in range(2):
                conn.request("POST", "/", body=b"Subject: %d\r\n\r\nx\r\n" % index,
                             headers=envelope_headers())
                response = conn.getresponse()
                response.read()
                assert response.status == 204
                assert response.getheader("Connection", "").lower() != "close"
            sock = conn.sock
            assert sock is not None
    finally:
        conn.close()
    assert len(edge.stored()) == 2
