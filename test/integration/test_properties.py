"""Property tests (hypothesis) at the levels the unit tests do not reach.

``test_slimta_smtp_wire.py`` and ``test_slimta_smtp_datasender.py`` already check the
sans-I/O pieces on their own (the parser on arbitrary bytes, ``encode_command``, the
stuffing of one ``DataSender``). Here the same promises are checked where they matter:

* the reply parser behind a real socket (``Client.get_reply``) raises nothing but
  ``BadReply`` (or ``ConnectionLost`` at EOF) whatever the server sends, however it is
  split, and never invents a reply: valid replies in front of junk come out intact;
* whatever addresses, names and credentials the client is given, every byte it
  writes outside the message data is a sequence of CRLF-terminated lines without
  CR, LF or NUL inside, and a refused value writes nothing;
* through the whole relay to a real server, dot-stuffing then the server's
  un-stuffing gives back the message, modulo the documented CRLF normalisation
  (bare CR and bare LF become CRLF; a final CRLF is added when missing).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.socket
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support.faultserver import FaultServer
from support.util import GUARD_SECONDS

from slimta.envelope import Envelope
from slimta.relay.smtp.static import StaticSmtpRelay
from slimta.smtp import BadReply, ConnectionLost
from slimta.smtp.client import Client
from slimta.smtp.reply import Reply

_FIXTURE_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

# -- the reply parser behind a socket -------------------------------------------------------


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _read_all_replies(chunks: list[bytes]) -> tuple[list[tuple[str, str]], BaseException]:
    """Feed ``chunks`` through a socketpair to a Client until it fails; return what it read."""
    a, b = gevent.socket.socketpair()
    client = Client(a, ("peer.test", 25))
    got: list[tuple[str, str]] = []

    def feed() -> None:
        for chunk in chunks:
            b.sendall(chunk)
            gevent.sleep(0)  # one chunk per read where the hub allows
        b.close()

    writer = gevent.spawn(feed)
    try:
        with gevent.Timeout(GUARD_SECONDS):
            while True:
                try:
                    reply = client.get_reply()
                except (BadReply, ConnectionLost) as exc:
                    return got, exc
                assert reply.code is not None
                got.append((reply.code, reply.raw_message or ""))
    finally:
        writer.kill()
        a.close()
        b.close()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
def test_client_reads_arbitrary_bytes_with_only_documented_errors(
    data: bytes, cuts: list[int]
) -> None:
    replies, failure = _read_all_replies(_chunks(data, cuts))
    assert isinstance(failure, (BadReply, ConnectionLost))
    for code, _text in replies:
        assert len(code) == 3 and code[0] in "12345" and code.isdigit()


_reply_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), max_size=30
)
_replies = st.lists(
    st.tuples(st.from_regex(r"\A[2-5][0-9][0-9]\Z"), st.lists(_reply_text, min_size=1,
                                                              max_size=3)),
    min_size=1, max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(_replies, st.binary(max_size=200), st.lists(st.integers(0, 600), max_size=6))
def test_valid_replies_before_junk_come_out_intact(
    replies: list[tuple[str, list[str]]], junk: bytes, cuts: list[int]
) -> None:
    wire = b"".join(
        "".join(f"{code}{'-' if i < len(texts) - 1 else ' '}{t}\r\n"
                for i, t in enumerate(texts)).encode("utf-8")
        for code, texts in replies
    )
    got, _failure = _read_all_replies(_chunks(wire + junk, cuts))
    expected = [(code, "\r\n".join(texts)) for code, texts in replies]
    assert got[: len(expected)] == expected
    for code, _text in got[len(expected):]:  # junk may parse as replies, never break these
        assert code.isdigit()


# -- nothing but whole command lines on the wire ------------------------------------------


class RecordingSocket:
    """A socket that records writes and answers every read with a 250 (or 334)."""

    def __init__(self, answer: bytes = b"250 2.0.0 Ok\r\n") -> None:
        self.written = bytearray()
        self.answer = answer

    def sendall(self, data: Any) -> None:
        self.written += bytes(data)

    def send(self, data: Any) -> int:
        self.written += bytes(data)
        return len(data)

    def recv(self, _size: int) -> bytes:
        return self.answer

    def getpeername(self) -> tuple[str, int]:
        return ("peer.test", 25)

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def _assert_only_command_lines(data: bytes) -> None:
    if not data:
        return
    assert data.endswith(b"\r\n"), data
    for line in data[:-2].split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line and b"\0" not in line, data


_anything = st.text(max_size=40) | st.sampled_from(
    ["a@b\r\nRCPT TO:<x@y>", "x\n", "\r", "a\0b", "<>", "-oQ", "ü@ü.de", "\u2028", " ", ""]
)


@settings(max_examples=300, deadline=None)
@given(
    sender=_anything,
    rcpts=st.lists(_anything, max_size=3),
    ehlo=_anything,
    arg=_anything,
    user=_anything,
    secret=_anything,
    smtputf8=st.booleans(),
)
def test_every_written_command_is_one_clean_line(
    sender: str, rcpts: list[str], ehlo: str, arg: str, user: str, secret: str, smtputf8: bool
) -> None:
    sock = RecordingSocket()
    client = Client(sock, ("peer.test", 25))
    for ext in ["PIPELINING", "SIZE 100", "8BITMIME", "AUTH PLAIN LOGIN"] + (
        ["SMTPUTF8"] if smtputf8 else []
    ):
        name, _, param = ext.partition(" ")
        client.extensions.add(name, param or None)
    calls = [
        lambda: client.ehlo(ehlo),
        lambda: client.helo(ehlo),
        lambda: client.mailfrom(sender, data_size=10, auth=user or False, body="8BITMIME",
                                smtputf8=smtputf8),
        *[lambda r=r: client.rcptto(r) for r in rcpts],
        lambda: client.custom_command(b"VRFY", arg.encode("utf-8", "surrogatepass")),
        lambda: client.auth(user, secret, mechanism="PLAIN", allow_insecure=True),
    ]
    for call in calls:
        written = len(sock.written) + len(client.io.send_buffer)
        try:
            call()
        except ValueError:
            # Refused before anything was queued or written.
            assert len(sock.written) + len(client.io.send_buffer) == written
        client.io.flush_send()
    client.reply_queue.clear()
    _assert_only_command_lines(bytes(sock.written))


# -- through the relay: what a real server receives ----------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    srv = FaultServer(extensions=["PIPELINING", "8BITMIME", "SMTPUTF8"], nodelay=True).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def relay(server: FaultServer) -> Iterator[StaticSmtpRelay]:
    r = StaticSmtpRelay(*server.address, pool_size=1, ehlo_as="relay.test", idle_timeout=30.0,
                        command_timeout=5.0)
    yield r
    r.kill()


def _normalised(data: bytes) -> bytes:
    out = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    return out if out == b"" or out.endswith(b"\r\n") else out + b"\r\n"


_body = st.lists(
    st.sampled_from([b".", b"..", b"\r\n", b"\n", b"\r", b"x", b".x", b"\r\n.\r\n", b"\xff"])
    | st.binary(max_size=20),
    max_size=30,
).map(b"".join)


@settings(max_examples=120, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(body=_body)
def test_relay_delivers_any_body_intact_modulo_crlf(
    server: FaultServer, relay: StaticSmtpRelay, body: bytes
) -> None:
    env = Envelope("s@example.test", ["r@example.test"])
    env.parse(b"Subject: p\r\n\r\n" + body)
    header, payload = env.flatten()
    before = sum(len(s.messages) for s in server.sessions)
    with gevent.Timeout(GUARD_SECONDS):
        result = relay.attempt(env, 0)
    assert isinstance(result["r@example.test"], Reply)
    messages = [m for s in server.sessions for m in s.messages]
    assert len(messages) == before + 1
    assert messages[-1] == _normalised(header + payload)


_address_part = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=12
)


@settings(max_examples=80, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(sender=_address_part, rcpts=st.lists(_address_part, min_size=1, max_size=3))
def test_server_sees_one_line_per_command_whatever_the_addresses(
    server: FaultServer, relay: StaticSmtpRelay, sender: str, rcpts: list[str]
) -> None:
    addresses = [f"{r}@example.test" for r in rcpts]
    assume(len(set(addresses)) == len(addresses))
    env = Envelope(f"{sender}@example.test", addresses)
    env.parse(b"Subject: p\r\n\r\nbody\r\n")
    if not server.sessions:  # open the connection every example then reuses
        warm = Envelope("w@example.test", ["w@example.test"])
        warm.parse(b"Subject: w\r\n\r\nw\r\n")
        with gevent.Timeout(GUARD_SECONDS):
            relay.attempt(warm, 0)
    count = len(server.sessions)
    seen = sum(len(s.commands) for s in server.sessions)
    with gevent.Timeout(GUARD_SECONDS):
        try:
            result: Any = relay.attempt(env, 0)
        except Exception as exc:  # only a RelayError, for a refused sender or all rcpts
            from slimta.relay import RelayError

            assert isinstance(exc, RelayError)
            result = None
    new = [c for s in server.sessions for c in s.commands][seen:]
    assert len(server.sessions) == count  # the connection is reused: nothing broke it
    for line in new:
        assert b"\r" not in line and b"\0" not in line
        verb = line.split(b" ", 1)[0].upper()
        assert verb in (b"MAIL", b"RCPT", b"DATA", b"RSET"), line
    mails = [line for line in new if line.upper().startswith(b"MAIL")]
    rcpt_lines = [line for line in new if line.upper().startswith(b"RCPT")]
    assert len(mails) <= 1
    if result is not None:
        # One RCPT line per recipient the client did not refuse itself.
        sent = [r for r, v in result.items() if not (hasattr(v, "reply") and
                                                      v.reply.code == "501")]
        assert len(rcpt_lines) == len([r for r in sent if r in addresses])
