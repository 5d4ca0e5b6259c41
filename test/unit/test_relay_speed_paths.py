"""The relay's fast paths give the same bytes and values as the general ones.

Each shortcut taken for the common case (a one-line reply, a plain address, a
small clean message, a reused stage timer, a reused connection) is checked
against the general code it skips, and, for the connection, against the bytes
a peer receives and the number of system calls per message.
"""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from support.envelopes import make_envelope
from support.util import GUARD_SECONDS

from slimta.relay.smtp._session import Session
from slimta.relay.smtp.static import StaticSmtpRelay
from slimta.smtp import BadReply
from slimta.smtp._wire import (
    AddressError,
    ReplyParser,
    check_address,
    encode_address,
    is_plain_address,
)
from slimta.smtp.client import Client
from slimta.smtp.datasender import DataSender
from slimta.smtp.reply import Reply
from slimta.util.timer import Bound

# -- one-line replies -----------------------------------------------------------


def parse_bytewise(data: bytes) -> list[tuple[str, str]]:
    """Feed one byte at a time: every line is completed by the last byte fed."""
    parser = ReplyParser()
    out = []
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
        while (reply := parser.next_reply()) is not None:
            out.append(reply)
    return out


def parse_at_once(data: bytes) -> list[tuple[str, str]]:
    parser = ReplyParser()
    parser.feed(data)
    out = []
    while (reply := parser.next_reply()) is not None:
        out.append(reply)
    assert parser.pending == 0
    return out


MIXED = (
    b"250 2.1.0 Ok\r\n"
    b"250-first\r\n250-second\r\n250 last\r\n"
    b"354 End data with <CR><LF>.<CR><LF>\r\n"
    b"250\r\n"
    b"250\tafter a tab\r\n"
    b"451 4.3.0 lone LF\n"
    b"250 \r\n"
    b"220 caf\xc3\xa9\r\n"
)
EXPECTED = [
    ("250", "2.1.0 Ok"),
    ("250", "first\r\nsecond\r\nlast"),
    ("354", "End data with <CR><LF>.<CR><LF>"),
    ("250", ""),
    ("250", "after a tab"),
    ("451", "4.3.0 lone LF"),
    ("250", ""),
    ("220", "café"),
]


def test_one_line_replies_parse_as_the_general_loop_does() -> None:
    assert parse_at_once(MIXED) == EXPECTED
    assert parse_bytewise(MIXED) == EXPECTED


def test_a_reply_after_a_batch_stays_buffered() -> None:
    parser = ReplyParser()
    parser.feed(b"250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n354 go")
    assert parser.next_reply() == ("250", "2.0.0 Ok")
    assert parser.next_reply() == ("250", "2.1.0 Ok")
    assert parser.next_reply() is None
    assert parser.pending == len(b"354 go")
    parser.feed(b" ahead\r\n")
    assert parser.next_reply() == ("354", "go ahead")


@pytest.mark.parametrize(
    "data",
    [b"650 bad class\r\n", b"25x oops\r\n", b"250 \xff\xfe\r\n", b"250-a\r\n251 b\r\n"],
)
def test_bad_one_line_replies_are_still_refused(data: bytes) -> None:
    parser = ReplyParser()
    parser.feed(data)
    with pytest.raises(BadReply):
        while parser.next_reply() is not None:
            pass


def test_an_overlong_line_is_refused_without_a_line_end() -> None:
    parser = ReplyParser()
    parser.feed(b"250 " + b"x" * 9000)
    with pytest.raises(BadReply):
        parser.next_reply()


# -- splitting reply texts ---------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["2.1.5 Ok", "Ok", "", "5.7.1  two spaces", "2.0.0", "4.x.y not a code", "x" * 300],
)
def test_a_remembered_split_is_the_split(text: str) -> None:
    from slimta.smtp import reply as reply_module

    match = reply_module._ESC_PREFIX_RE.match(text)
    expected = (None, text) if match is None else (match.group(1), text[match.end() :])
    for _ in range(2):  # the second time from the cache, when the text is short
        reply = Reply("250", text)
        assert (reply._esc, reply.raw_message) == expected


def test_the_split_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from slimta.smtp import reply as reply_module

    cache: dict[str, Any] = {}
    monkeypatch.setattr(reply_module, "_split_cache", cache)
    for i in range(reply_module._SPLIT_CACHE_ENTRIES * 3):
        Reply("250", f"2.0.0 Ok: queued as {i}")
        assert len(cache) <= reply_module._SPLIT_CACHE_ENTRIES
    Reply("250", "2.0.0 " + "x" * 500)
    assert not any(len(text) > reply_module._SPLIT_CACHE_TEXT_CHARS for text in cache)


# -- plain addresses --------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["a@example.com", "first.last+tag@sub.example.org", "x" * 64 + "@example.com",
     "o'brien@example.com"],
)
def test_a_plain_address_passes_the_full_check(address: str) -> None:
    assert is_plain_address(address)
    check_address(address)
    assert encode_address(address, False) == address.encode("ascii")


@pytest.mark.parametrize(
    "address",
    ["", "no-at-sign", "a b@example.com", "a@example.com\r\nRSET", "x" * 65 + "@example.com",
     "\"quoted\"@example.com", "jörg@example.com", "a@[127.0.0.1]"],
)
def test_anything_else_takes_the_full_check(address: str) -> None:
    assert not is_plain_address(address)
    try:
        expected: Any = check_address(address)
    except AddressError as exc:
        expected = type(exc)
    if isinstance(expected, type):
        with pytest.raises(expected):
            encode_address(address, True)
    else:
        assert encode_address(address, True) == address.encode("utf-8")


# -- small messages ----------------------------------------------------------------


@pytest.mark.parametrize(
    "parts",
    [
        (b"Subject: a\r\n\r\n", b"body\r\n"),
        (b"Subject: a\r\n\r\n", b"no final line end"),
        (b"", b""),
        (),
        (b"Subject: a\r\n", b"", b"\r\nbody\r\n"),
        (b"Subject: a\r\n\r\n", b".leading dot\r\n"),
        (b".first\r\n",),
        (b"a\r\n.b\r\n",),
        (b"bare LF\n",),
        (b"bare CR\r", b"\nsplit pair\r\n"),
        (bytearray(b"not bytes\r\n"),),
        (b"x" * 20000 + b"\r\n",),
    ],
)
def test_whole_matches_the_general_stuffing(parts: tuple[Any, ...]) -> None:
    general = b"".join(DataSender(*parts))
    whole = DataSender(*parts).whole(16384)
    assert whole is None or whole == general

    class Sink:
        def __init__(self) -> None:
            self.data = bytearray()

        def buffered_send(self, data: Any) -> None:
            self.data += data

    sink = Sink()
    DataSender(*parts).send(sink)
    assert bytes(sink.data) == general


def test_whole_is_taken_only_when_nothing_changes() -> None:
    assert DataSender(b"Subject: a\r\n\r\n", b"body\r\n").whole(100) is not None
    assert DataSender(b"Subject: a\r\n\r\n", b".body\r\n").whole(100) is None
    assert DataSender(b"bare LF\n").whole(100) is None
    assert DataSender(b"x" * 101).whole(100) is None


# -- stage timers -------------------------------------------------------------------


class _Owner:
    current_command: bytes | None = None
    address = ("mx.example.test", 25)


def test_a_stage_timer_is_reused_and_still_fires() -> None:
    session = Session(_Owner(), Client)  # type: ignore[arg-type]
    first = session.stage(b"MAIL", 0.01)
    assert isinstance(first, Bound)
    with first:
        pass
    assert session.stage(b"RCPT", 0.01) is first
    with gevent.Timeout(GUARD_SECONDS, AssertionError("the stage did not time out")):
        with pytest.raises(gevent.Timeout) as raised:
            with session.stage(b"DATA", 0.01):
                gevent.sleep(1)
    assert raised.value is first.timeout
    assert session.owner.current_command == b"DATA"
    with session.stage(b"RSET", 0.01):  # a timer that fired starts again
        pass


def test_a_nested_stage_gets_its_own_timer() -> None:
    session = Session(_Owner(), Client)  # type: ignore[arg-type]
    outer = session.stage(b"[SEND_DATA]", 5.0)
    with outer:
        inner = session.stage(b"RSET", 5.0)
        assert inner is not outer
        with gevent.Timeout(GUARD_SECONDS, AssertionError("the inner stage did not time out")):
            with pytest.raises(gevent.Timeout):
                with session.stage(b"RSET", 0.01), session.stage(b"QUIT", 0.01):
                    gevent.sleep(1)
    assert isinstance(outer, Bound) and not outer.timeout.pending


def test_closing_the_session_frees_its_timers() -> None:
    session = Session(_Owner(), Client)  # type: ignore[arg-type]
    timer = session.stage(b"MAIL", 5.0)
    assert isinstance(timer, Bound)
    session.close()
    assert session.stage(b"MAIL", 5.0) is not timer


# -- a reused connection, end to end ----------------------------------------------

EHLO = b"250-peer\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
REPLIES = {b"MAIL": b"250 2.1.0 Ok\r\n", b"RCPT": b"250 2.1.5 Ok\r\n",
           b"DATA": b"354 go ahead\r\n", b"RSET": b"250 2.0.0 Ok\r\n",
           b"QUIT": b"221 2.0.0 Bye\r\n", b"EHLO": EHLO}


class CountingPeer:
    """An in-memory SMTP peer that answers at once and counts system calls.

    It never blocks: every ``recv`` finds the replies to what was sent before.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.sends = self.recvs = 0
        self._out = bytearray(b"220 peer ESMTP\r\n")
        self._pending = b""
        self._in_data = False

    def send(self, data: Any) -> int:
        self.sends += 1
        self.received += data
        buf = self._pending + bytes(data)
        while True:
            if self._in_data:
                end = buf.find(b"\r\n.\r\n")
                if end < 0:
                    break
                buf = buf[end + 5 :]
                self._in_data = False
                self._out += b"250 2.0.0 Ok: queued\r\n"
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                break
            verb = buf[:4].upper()
            self._out += REPLIES.get(verb, b"500 5.5.2 what\r\n")
            buf = buf[end + 2 :]
            if verb == b"DATA":
                self._in_data = True
                buf = b"\r\n" + buf  # the end marker's CRLF may open the data
        self._pending = buf
        return len(data)

    def sendall(self, data: Any) -> None:
        self.send(data)

    def recv(self, size: int) -> bytes:
        self.recvs += 1
        data = bytes(self._out[:size])
        del self._out[:size]
        return data

    def fileno(self) -> int:
        return -1  # the "did the server speak" check treats it as closed

    def getpeername(self) -> tuple[str, int]:
        return ("mx.example.test", 25)

    def close(self) -> None:
        pass


def test_a_reused_connection_costs_one_send_and_one_recv_per_message() -> None:
    peers: list[CountingPeer] = []

    def creator(address: Any) -> CountingPeer:
        peers.append(CountingPeer())
        return peers[-1]

    relay = StaticSmtpRelay("mx.example.test", 25, pool_size=1, idle_timeout=5.0,
                            ehlo_as="relay.test", socket_creator=creator)
    count = 20
    envelopes = [make_envelope(rcpts=(f"r{i}@example.test",), body=b"msg %d\r\n" % i)
                 for i in range(count)]
    try:
        with gevent.Timeout(GUARD_SECONDS):
            jobs = [gevent.spawn(relay.attempt, env, 0) for env in envelopes]
            gevent.joinall(jobs, raise_error=True)
    finally:
        relay.kill()
    assert len(peers) == 1
    peer = peers[0]
    for i, job in enumerate(jobs):
        reply = job.value[f"r{i}@example.test"]
        assert (reply.code, reply.enhanced_status_code) == ("250", "2.0.0")
        assert reply.address == ("mx.example.test", 25)
    # Every message went out whole, in order, once.
    for i in range(count):
        assert peer.received.count(b"RCPT TO:<r%d@example.test>\r\n" % i) == 1
        assert peer.received.count(b"msg %d\r\n.\r\n" % i) == 1
    assert peer.received.count(b"MAIL FROM:<sender@example.test>\r\n") == count
    # Connect + EHLO, the first MAIL/RCPT/DATA, then one write per message, and QUIT
    # at most: the replies to each write come back in one read.
    assert peer.sends <= count + 3
    assert peer.recvs <= count + 3
