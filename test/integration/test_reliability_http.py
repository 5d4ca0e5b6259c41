"""HTTP relay faults: reset, slow response, no response, garbage.

A scripted HTTP peer (one handler per connection) misbehaves on the first
connection; later connections answer properly. For every fault: the attempt is
resolved, transiently, within the relay's ``timeout`` (plus slack); the next attempt
through the same relay is delivered; no descriptor or greenlet leaks.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event
from support.http_peer import OK_RESPONSE, ScriptedHttpServer, answer_ok
from support.reliability import (
    SLACK_SECONDS,
    assert_no_leaks,
    assert_relay_error,
    make_envelope,
    resources,
    timed_attempt,
)

from slimta.relay.http import HttpRelay
from slimta.smtp.reply import Reply

TIMEOUT = 0.6


def _reset(sock: Any, _release: Event) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _close(sock: Any, _release: Event) -> None:
    pass


def _reset_mid_response(sock: Any, release: Event) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    _reset(sock, release)


def _close_mid_body(sock: Any, release: Event) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n"
                 b'X-Smtp-Reply: 250; message="2.0.0 Ok"\r\n\r\npartial')


def _no_response(sock: Any, release: Event) -> None:
    release.wait()


def _slow_headers(sock: Any, release: Event) -> None:
    # One byte at a time, for longer than the whole timeout.
    for byte in OK_RESPONSE:
        sock.sendall(bytes([byte]))
        if release.wait(TIMEOUT / 10):
            return


def _slow_but_in_time(sock: Any, release: Event) -> None:
    # Split across many segments, well within the timeout: delivered.
    for byte in OK_RESPONSE:
        sock.sendall(bytes([byte]))
        gevent.sleep(0)


def _raw(data: bytes) -> Callable[[Any, Event], None]:
    def send(sock: Any, release: Event) -> None:
        sock.sendall(data)
        release.wait()  # keep the connection open: the client must still give up

    return send


FAULTS: dict[str, tuple[Callable[[Any, Event], None], str, str]] = {
    # name: (handler, expected code, expected ESC)
    "reset": (_reset, "451", "4.3.0"),
    "close": (_close, "451", "4.3.0"),
    "no_response": (_no_response, "421", "4.4.2"),
    "slow_response": (_slow_headers, "421", "4.4.2"),
    "garbage_status": (_raw(b"SMTP/9 what is this\r\n\r\n"), "451", "4.3.0"),
    "binary_junk": (_raw(bytes(range(256)) * 4 + b"\r\n\r\n"), "451", "4.3.0"),
    "oversized_header": (_raw(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n"),
                         "451", "4.3.0"),
    "header_flood": (_raw(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 1000 + b"\r\n"),
                     "451", "4.3.0"),
    "bad_content_length": (_raw(b"HTTP/1.1 500 Oops\r\nContent-Length: banana\r\n\r\n"),
                           "450", "4.0.0"),
}

#: Faults after a complete 2xx status line and headers: the server has given its
#: verdict, so the message is delivered, and the broken connection is not reused.
AFTER_VERDICT: dict[str, Callable[[Any, Event], None]] = {
    "reset_mid_body": _reset_mid_response,
    "close_mid_body": _close_mid_body,
    "bad_content_length": _raw(b"HTTP/1.1 200 OK\r\nContent-Length: banana\r\n\r\n"),
    "bad_chunked": _raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
}


@pytest.fixture
def http_server() -> Iterator[Callable[..., ScriptedHttpServer]]:
    made: list[ScriptedHttpServer] = []

    def start(fault: Callable[[Any, Event], None]) -> ScriptedHttpServer:
        """The first connection reads one request, then runs ``fault``; the rest behave."""
        release = Event()

        def first(sock: Any, read_request: Callable[[], bytes]) -> None:
            read_request()
            fault(sock, release)

        server = ScriptedHttpServer([first], default=answer_ok, path="/deliver",
                                    release=release)
        made.append(server)
        return server

    yield start
    for server in made:
        server.stop()


@pytest.mark.parametrize("idle_timeout", [None, 5.0], ids=["close-each", "keep-alive"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_http_fault(
    http_server: Callable[..., ScriptedHttpServer], fault: str, idle_timeout: float | None
) -> None:
    handler, code, esc = FAULTS[fault]
    server = http_server(handler)
    before = resources()
    relay = HttpRelay(server.url, ehlo_as="relay.test", timeout=TIMEOUT,
                      idle_timeout=idle_timeout, pool_size=1)
    try:
        first = timed_attempt(relay, make_envelope())
        # The code and enhanced status code the HTTP relay gives this transport failure
        # (doc/semantics.rst, "Reply codes the relays produce"); either way transient.
        error = assert_relay_error(first.error, False)
        assert (error.reply.code, error.reply.enhanced_status_code) == (code, esc), error.reply
        assert first.elapsed < TIMEOUT + SLACK_SECONDS, f"{first.elapsed:.2f}s"
        server.release.set()
        second = timed_attempt(relay, make_envelope())
        assert second.error is None, second.error
        assert isinstance(second.result, Reply) and second.result.code == "250"
        assert len(server.requests) == 2  # the faulty request was never sent twice
    finally:
        relay.kill()
    assert_no_leaks(before)


def test_slow_response_within_timeout_is_delivered(
    http_server: Callable[..., ScriptedHttpServer],
) -> None:
    server = http_server(_slow_but_in_time)
    before = resources()
    relay = HttpRelay(server.url, ehlo_as="relay.test", timeout=5.0, pool_size=1)
    try:
        outcome = timed_attempt(relay, make_envelope())
        assert outcome.error is None, outcome.error
        assert isinstance(outcome.result, Reply) and outcome.result.code == "250"
    finally:
        relay.kill()
    assert_no_leaks(before)


@pytest.mark.parametrize("fault", list(AFTER_VERDICT))
def test_fault_after_the_verdict(
    http_server: Callable[..., ScriptedHttpServer], fault: str
) -> None:
    server = http_server(AFTER_VERDICT[fault])
    before = resources()
    relay = HttpRelay(server.url, ehlo_as="relay.test", timeout=TIMEOUT,
                      idle_timeout=5.0, pool_size=1)
    try:
        first = timed_attempt(relay, make_envelope())
        assert first.error is None, first.error
        assert first.elapsed < TIMEOUT + SLACK_SECONDS
        server.release.set()
        second = timed_attempt(relay, make_envelope())
        assert second.error is None, second.error
        assert server.connections == 2  # a half-read response never reuses its connection
        assert len(server.requests) == 2
    finally:
        relay.kill()
    assert_no_leaks(before)
