"""slimta.smtp.datareader.DataReader and the server side of slimta.smtp.io, over a socket pair."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gevent import socket as gsocket

from slimta.smtp import ConnectionLost, MessageTooBig
from slimta.smtp._server_core import BadDataError
from slimta.smtp.datareader import DataReader
from slimta.smtp.io import IO


@pytest.fixture
def pair() -> Iterator[tuple[IO, gsocket.socket]]:
    ours, theirs = gsocket.socketpair()
    io = IO(ours, ("192.0.2.1", 25))
    yield io, theirs
    io.close()
    theirs.close()


def test_recv_buffer_is_assignable(pair: tuple[IO, gsocket.socket]) -> None:
    io, _ = pair
    assert io.recv_buffer == b""
    io.recv_buffer = b"NOOP\r\nQUIT\r\n"
    assert io.recv_buffer == b"NOOP\r\nQUIT\r\n"
    assert io.recv_command() == (b"NOOP", None)
    io.recv_buffer = b""
    assert io.recv_buffer == b"" and io.buffered_bytes == 0


def test_reads_buffered_then_socket_and_gives_back_the_rest(
    pair: tuple[IO, gsocket.socket],
) -> None:
    io, peer = pair
    io.recv_buffer = b"Subject: x\r\n\r\n..one\r\n"
    peer.sendall(b"two\r\n.\r\nQUIT\r\n")
    reader = DataReader(io)
    assert reader.recv() == b"Subject: x\r\n\r\n.one\r\ntwo\r\n"
    assert io.recv_buffer == b"QUIT\r\n"
    assert reader.size == len(b"Subject: x\r\n\r\n.one\r\ntwo\r\n")


def test_smuggled_end_is_content(pair: tuple[IO, gsocket.socket]) -> None:
    io, peer = pair
    peer.sendall(b"a\n.\nMAIL FROM:<x@y>\r\n.\r\n")
    assert DataReader(io).recv() == b"a\r\n.\r\nMAIL FROM:<x@y>\r\n"


def test_reject_policy(pair: tuple[IO, gsocket.socket]) -> None:
    io, peer = pair
    peer.sendall(b"a\rb\r\n.\r\nNOOP\r\n")
    with pytest.raises(BadDataError):
        DataReader(io, bare_newline="reject").recv()
    assert io.recv_buffer == b"NOOP\r\n"


def test_too_big_after_reading_to_the_end(pair: tuple[IO, gsocket.socket]) -> None:
    io, peer = pair
    peer.sendall(b"x" * 5000 + b"\r\n.\r\nRSET\r\n")
    reader = DataReader(io, 100)
    with pytest.raises(MessageTooBig):
        reader.recv()
    assert io.recv_buffer == b"RSET\r\n"
    reader.handle_finished_line()  # kept for compatibility, does nothing


def test_connection_lost(pair: tuple[IO, gsocket.socket]) -> None:
    io, peer = pair
    peer.sendall(b"half a message")
    peer.close()
    with pytest.raises(ConnectionLost):
        DataReader(io).recv()


def test_recv_masked_logs_no_auth_secret(
    pair: tuple[IO, gsocket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    io, peer = pair
    peer.sendall(b"EHLO x\r\nAUTH PLAIN AHVzZXIAc2VjcmV0\r\n")
    assert io.recv_masked() == b"EHLO x\r\nAUTH PLAIN AHVzZXIAc2VjcmV0\r\n"
    peer.sendall(b"c2VjcmV0\r\n")
    assert io.recv_masked(secret=True) == b"c2VjcmV0\r\n"
    assert "AHVzZXIAc2VjcmV0" not in caplog.text
    assert "c2VjcmV0" not in caplog.text
    assert "AUTH PLAIN" in caplog.text
