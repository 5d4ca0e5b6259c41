"""slimta.policy.spamassassin: the spamc protocol as bytes, then against a real spamd."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent.server import StreamServer
from support.corpus import expected_flatten, load
from support.spamd import GTUBE
from support.util import GUARD_SECONDS as SUITE_GUARD_SECONDS

from slimta.envelope import Envelope
from slimta.policy import PolicyError
from slimta.policy.spamassassin import (
    SpamAssassin,
    SpamAssassinError,
    build_request,
    parse_response,
)
from slimta.queue import Queue
from slimta.queue.dict import DictStorage

#: spamd loads and compiles its whole rule set on the first scan, which takes
#: several times longer than any other single step in the suite on a loaded box.
GUARD_SECONDS = 3 * SUITE_GUARD_SECONDS

HAM = (b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: lunch\r\n"
       b"Message-ID: <1@example.test>\r\nDate: Mon, 1 Dec 2025 10:00:00 +0000\r\n\r\n"
       b"Shall we meet at noon?\r\n")
SPAM = (b"From: spammer@example.test\r\nTo: bob@example.test\r\nSubject: offer\r\n"
        b"X-Spam-Status: NO\r\nX-Spam-Symbols: FORGED\r\n"
        b"X-Long: " + b"a" * 100 + b"\r\n\t continued\r\n\r\n" + GTUBE + b"\r\n")


# -- the protocol, as bytes ----------------------------------------------------------------------


def test_build_request() -> None:
    assert build_request(b"Subject: x\r\n\r\n", b"body\r\n", b"slimta", b"1.1") == (
        b"SYMBOLS SPAMC/1.1\r\nContent-length: 20\r\nUser: slimta\r\n\r\n"
        b"Subject: x\r\n\r\nbody\r\n"
    )


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 14\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n"
         b"GTUBE,NO_RECEIVED", (True, ["GTUBE", "NO_RECEIVED"])),
        (b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 0.1 / 5.0\r\nContent-length: 0\r\n\r\n",
         (False, [])),
        (b"SPAMD/1.5 0 EX_OK\nSpam: Yes ; 6 / 5\n\nA, B\n", (True, ["A", "B"])),
    ],
)
def test_parse_response(response: bytes, expected: Any) -> None:
    assert parse_response(response) == expected


@pytest.mark.parametrize(
    "response",
    [
        b"",
        b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5\r\n",            # no blank line
        b"SPAMD/1.0 76 Bad header line: (EOF)\r\n\r\n",
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n",          # no Spam header
        b"HTTP/1.1 200 OK\r\nSpam: True\r\n\r\n",
    ],
)
def test_parse_response_errors(response: bytes) -> None:
    with pytest.raises(SpamAssassinError):
        parse_response(response)
    assert issubclass(SpamAssassinError, PolicyError)


@pytest.fixture
def scripted() -> Iterator[Any]:
    """A loopback server whose answer each test sets; it records the request."""
    state: dict[str, Any] = {"answer": b"", "request": b"", "stall": False}

    def handle(sock: Any, address: Any) -> None:
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        state["request"] = data
        if state["stall"]:
            gevent.sleep(GUARD_SECONDS)
        sock.sendall(state["answer"])
        sock.close()

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    state["address"] = ("127.0.0.1", server.server_port)
    yield state
    server.stop(timeout=1)


def test_scan_sends_headers_and_body_as_flattened(scripted: Any) -> None:
    scripted["answer"] = b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 0 / 5\r\n\r\n"
    env = Envelope("a@x.test", ["b@y.test"])
    env.parse(HAM)
    with gevent.Timeout(GUARD_SECONDS):
        assert SpamAssassin(scripted["address"]).scan(env) == (False, [])
    head, _, body = scripted["request"].partition(b"\r\n\r\n")
    assert head == b"SYMBOLS SPAMC/1.1\r\nContent-length: %d\r\nUser: slimta" % len(HAM)
    assert body == HAM


def test_scan_times_out(scripted: Any) -> None:
    scripted["stall"] = True
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(SpamAssassinError, match="timed out"):
        SpamAssassin(scripted["address"], timeout=0.1).scan(HAM)


def test_scan_refuses_a_huge_answer(scripted: Any) -> None:
    scripted["answer"] = b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 9 / 5\r\n\r\n" + b"X," * 100000
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(SpamAssassinError, match="too large"):
        SpamAssassin(scripted["address"]).scan(HAM)


def test_scan_connection_refused() -> None:
    sock = gevent.socket.socket()
    sock.bind(("127.0.0.1", 0))
    address = sock.getsockname()
    sock.close()
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(SpamAssassinError):
        SpamAssassin(address, timeout=5).scan(HAM)


# -- against spamd -------------------------------------------------------------------------------


def test_gtube_is_spam_headers_on_top_rest_kept(spamd: Any) -> None:
    env = Envelope("spammer@example.test", ["bob@example.test"])
    env.parse(SPAM)
    with gevent.Timeout(GUARD_SECONDS):
        SpamAssassin(spamd.address, timeout=GUARD_SECONDS).apply(env)
    data = b"".join(env.flatten())
    first, rest = data.split(b"\r\n", 1)
    assert first == b"X-Spam-Status: YES"
    # X-Spam-Symbols comes next, folded at its blanks when long.
    symbols, rest = re.match(rb"(X-Spam-Symbols: .*?\r\n)(?![ \t])(.*)", rest, re.S).groups()
    names = re.sub(rb"\r\n[ \t]", b" ", symbols).decode().split(": ", 1)[1].strip().split(", ")
    assert "GTUBE" in names
    # The forged verdict is gone; every other byte is as received.
    assert rest == SPAM.replace(b"X-Spam-Status: NO\r\nX-Spam-Symbols: FORGED\r\n", b"")


def test_ham_gets_status_no(spamd: Any) -> None:
    env = Envelope("alice@example.test", ["bob@example.test"])
    env.parse(HAM)
    with gevent.Timeout(GUARD_SECONDS):
        SpamAssassin(spamd.address, timeout=GUARD_SECONDS).apply(env)
    assert b"".join(env.flatten()) == b"X-Spam-Status: NO\r\n" + HAM


@pytest.mark.parametrize(
    "name", ["01-thunderbird-alternative-attachment.eml", "08-folding-and-spacing.eml"]
)
def test_corpus_message_through_a_queue_policy(spamd: Any, name: str) -> None:
    data = load(name)
    storage = DictStorage()
    queue = Queue(storage)
    queue.add_policy(SpamAssassin(spamd.address, timeout=GUARD_SECONDS))
    env = Envelope("alice@example.test", ["bob@example.test"])
    env.parse(data)
    with gevent.Timeout(GUARD_SECONDS):
        [(stored_env, id)] = queue.enqueue(env)
    assert isinstance(id, str)
    stored, _ = storage.get(id)
    flat = b"".join(stored.flatten())
    assert flat.startswith(b"X-Spam-Status: ")
    status_line, rest = flat.split(b"\r\n", 1)
    if status_line == b"X-Spam-Status: YES":
        rest = re.sub(rb"^X-Spam-Symbols: .*?\r\n(?![ \t])", b"", rest, flags=re.S)
    assert rest == expected_flatten(data)


def test_spamd_down_fails_the_enqueue() -> None:
    storage = DictStorage()
    queue = Queue(storage)
    queue.add_policy(SpamAssassin(("127.0.0.1", 9), timeout=5))
    env = Envelope("alice@example.test", ["bob@example.test"])
    env.parse(HAM)
    with gevent.Timeout(GUARD_SECONDS):
        results = queue.enqueue(env)
    assert not [r for _, r in results if isinstance(r, str)]
    assert list(storage.load()) == []
