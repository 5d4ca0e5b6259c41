"""IO: buffered socket layer, bounded reply reading, cooperative TLS."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator

import gevent
import gevent.socket
import pytest
from support.smtp_peer import PEER_ADDRESS, Peer
from support.tls import TlsCert
from support.util import GUARD_SECONDS

from slimta.smtp import BadReply, ConnectionLost
from slimta.smtp.io import IO, MAX_REPLY_BYTES
from slimta.smtp.reply import Reply


@pytest.fixture
def pair() -> Iterator[tuple[IO, Peer]]:
    a, b = gevent.socket.socketpair()
    io = IO(a, PEER_ADDRESS)
    peer = Peer(b)
    yield io, peer
    io.socket.close()
    peer.close()
    a.close()


def send_log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if ":send " in r.getMessage()]


def test_recv_reply_across_reads(pair: tuple[IO, Peer]) -> None:
    io, peer = pair
    result = gevent.spawn(io.recv_reply)
    for piece in (b"250-first\r", b"\n250-sec", b"ond\r\n250 third\r\n"):
        peer.send(piece)
        gevent.sleep(0)  # let the reader take each piece separately
    assert result.get(timeout=GUARD_SECONDS) == ("250", "first\r\nsecond\r\nthird")


def test_replies_left_in_buffer(pair: tuple[IO, Peer]) -> None:
    io, peer = pair
    peer.send(b"250 a\r\n354 b\r\n")
    assert io.recv_reply() == ("250", "a")
    assert io.buffered_bytes == 7
    assert io.recv_buffer == b"354 b\r\n"
    assert io.recv_reply() == ("354", "b")
    assert io.buffered_bytes == 0


def test_reply_recv(pair: tuple[IO, Peer]) -> None:
    io, peer = pair
    peer.send(b"550 5.1.1 No such user\r\n")
    reply = Reply(command=b"RCPT")
    reply.recv(io)
    assert (reply.code, reply.message) == ("550", "5.1.1 No such user")
    assert reply.address == PEER_ADDRESS


def test_eof_is_connection_lost(pair: tuple[IO, Peer]) -> None:
    io, peer = pair
    peer.send(b"250-partial\r\n")
    peer.sock.shutdown(2)
    with pytest.raises(ConnectionLost):
        io.recv_reply()
    with pytest.raises(ConnectionLost):  # and stays lost
        io.raw_recv()


def test_oversized_reply(pair: tuple[IO, Peer]) -> None:
    io, peer = pair
    line = b"250-" + b"z" * 1000 + b"\r\n"
    sender = gevent.spawn(peer.send, line * (MAX_REPLY_BYTES // len(line) + 2))
    with pytest.raises(BadReply):
        io.recv_reply()
    sender.kill()


def test_buffered_send_is_one_write(
    pair: tuple[IO, Peer], caplog: pytest.LogCaptureFixture
) -> None:
    io, peer = pair
    caplog.set_level(logging.DEBUG, logger="slimta.smtp.io")
    io.send_command(b"MAIL FROM:<a@example.com>")
    io.send_command(b"RCPT TO:<b@example.com>")
    io.buffered_send(b"DATA\r\n")
    assert peer.nothing_written()
    io.flush_send()
    peer.expect(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    assert len(send_log_lines(caplog)) == 1
    io.flush_send()  # nothing queued: nothing written
    assert len(send_log_lines(caplog)) == 1


def test_large_buffered_send_is_not_copied_into_buffer(pair: tuple[IO, Peer]) -> None:
    io, peer = pair
    big = b"x" * 100000
    io.send_command(b"NOOP")
    reader = gevent.spawn(peer.read_exactly, 6 + len(big))
    io.buffered_send(memoryview(big))
    assert reader.get(timeout=GUARD_SECONDS) == b"NOOP\r\n" + big
    assert not io.send_buffer


# -- a peer that stops reading ---------------------------------------------------

STALL_BYTES = 16 * 2**20  # more than any socket pair's buffers hold


def test_send_to_a_peer_that_stops_reading_ends_at_send_timeout(pair: tuple[IO, Peer]) -> None:
    io, peer = pair
    io.send_timeout = 0.05
    with gevent.Timeout(GUARD_SECONDS):
        with pytest.raises(ConnectionLost):
            io.raw_send(b"x" * STALL_BYTES)


def test_a_timed_out_send_is_not_retried_on_a_later_read(pair: tuple[IO, Peer]) -> None:
    io, peer = pair
    io.send_timeout = 0.05
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(ConnectionLost):
        io.raw_send(b"x" * STALL_BYTES)
    peer.send(b"250 late\r\n")
    with pytest.raises(ConnectionLost):  # the connection is given up, not resumed
        io.recv_reply()


def test_send_that_fits_never_waits_under_a_send_timeout(pair: tuple[IO, Peer]) -> None:
    io, peer = pair
    io.send_timeout = 0.05
    io.raw_send(b"250 ok\r\n")
    peer.expect(b"250 ok\r\n")


def test_slow_reader_within_send_timeout_gets_everything(pair: tuple[IO, Peer]) -> None:
    io, peer = pair
    io.send_timeout = GUARD_SECONDS
    big = bytes(range(256)) * 8192  # 2 MiB: more than the buffers, less than the bound
    reader = gevent.spawn(peer.read_exactly, len(big))
    io.raw_send(big)
    assert reader.get(timeout=GUARD_SECONDS) == big


def test_without_send_timeout_a_send_waits_for_the_peer(pair: tuple[IO, Peer]) -> None:
    io, peer = pair
    assert io.send_timeout is None  # the client side's default: its stages bound it
    writer = gevent.spawn(io.raw_send, b"x" * STALL_BYTES)
    with pytest.raises(gevent.Timeout):
        writer.get(timeout=0.05)
    writer.kill()


def test_send_timeout_on_tls_ends_a_stalled_write(pair: tuple[IO, Peer], tls_cert: TlsCert) -> None:
    io, peer = pair
    server = gevent.spawn(serve_tls_and_stall, peer, tls_cert.server_context())
    with gevent.Timeout(GUARD_SECONDS):
        io.encrypt_client(plain_client_context(tls_cert))
    io.send_timeout = 0.05
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(ConnectionLost):
        io.raw_send(b"x" * STALL_BYTES)
    server.kill()


def test_send_command_refuses_line_breaks(pair: tuple[IO, Peer]) -> None:
    io, _ = pair
    with pytest.raises(ValueError):
        io.send_command(b"NOOP\r\nRSET")
    assert not io.send_buffer


def test_secret_command_is_masked_in_log(
    pair: tuple[IO, Peer], caplog: pytest.LogCaptureFixture
) -> None:
    io, peer = pair
    caplog.set_level(logging.DEBUG, logger="slimta.smtp.io")
    io.send_command(b"AUTH PLAIN AHVzZXIAc2VjcmV0", secret=True)
    io.send_command(b"dXNlcg==", secret=True)
    peer.expect(b"AUTH PLAIN AHVzZXIAc2VjcmV0\r\ndXNlcg==\r\n")
    text = "\n".join(send_log_lines(caplog))
    assert "AHVzZXIAc2VjcmV0" not in text and "dXNlcg" not in text
    assert "AUTH PLAIN" in text


def test_address_from_getpeername() -> None:
    server = gevent.socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    sock = gevent.socket.create_connection(server.getsockname())
    try:
        assert IO(sock).address == server.getsockname()
        assert IO(sock, ("given", 1)).address == ("given", 1)
    finally:
        sock.close()
        server.close()


def test_poll_readable(pair: tuple[IO, Peer]) -> None:
    io, peer = pair
    assert not io.poll_readable()
    peer.send(b"421 4.3.2 going away\r\n")
    assert io.poll_readable()
    assert io.recv_reply() == ("421", "4.3.2 going away")
    assert not io.poll_readable()
    peer.sock.shutdown(2)
    assert io.poll_readable()  # EOF: the next read tells
    io.close()
    assert not io.poll_readable()


def test_poll_readable_never_yields(pair: tuple[IO, Peer]) -> None:
    io, _ = pair
    ran: list[bool] = []
    gevent.spawn(ran.append, True)
    for _ in range(100):
        assert not io.poll_readable()
    assert not ran  # the hub never ran the other greenlet
    gevent.sleep(0)
    assert ran


def test_server_side_helpers(pair: tuple[IO, Peer]) -> None:
    io, peer = pair
    peer.send(b"ehlo client.example\r\nQUIT\r\n")
    assert io.recv_command() == (b"EHLO", b"client.example")
    assert io.recv_command() == (b"QUIT", None)
    Reply("250", "2.0.0 line one\nline two").send(io, flush=True)
    peer.expect(b"250-2.0.0 line one\r\n250 2.0.0 line two\r\n")


# -- TLS ------------------------------------------------------------------------


def plain_client_context(tls_cert: TlsCert) -> ssl.SSLContext:
    """What ``ssl.create_default_context(cafile=...)`` returns: a stdlib context."""
    context = ssl.create_default_context(cafile=tls_cert.ca_path)
    assert type(context) is ssl.SSLContext
    return context


def serve_tls(peer: Peer, context: ssl.SSLContext) -> bytes:
    peer.start_tls(context)
    line = peer.read_line()
    peer.send(b"250 over tls\r\n")
    return line


def serve_tls_and_stall(peer: Peer, context: ssl.SSLContext) -> None:
    peer.start_tls(context)
    gevent.sleep(GUARD_SECONDS)  # a peer that stops reading (killed by the test)


def test_encrypt_with_plain_context(pair: tuple[IO, Peer], tls_cert: TlsCert) -> None:
    io, peer = pair
    server = gevent.spawn(serve_tls, peer, tls_cert.server_context())
    with gevent.Timeout(GUARD_SECONDS):
        io.encrypt_client(plain_client_context(tls_cert))
    assert io.encrypted
    io.send_command(b"NOOP")
    io.flush_send()
    assert io.recv_reply() == ("250", "over tls")
    assert server.get(timeout=GUARD_SECONDS) == b"NOOP\r\n"
    io.close()


def test_handshake_does_not_block_the_hub(pair: tuple[IO, Peer], tls_cert: TlsCert) -> None:
    """A server that stalls mid-handshake must not freeze other greenlets.

    The socket timeout is only a safety net: were the handshake blocking, the test
    would fail after it (no ticks, no gevent.Timeout) instead of hanging.
    """
    io, peer = pair
    io.socket.settimeout(GUARD_SECONDS)
    ticks = []

    def ticker() -> None:
        while True:
            ticks.append(1)
            gevent.sleep(0.005)

    ticking = gevent.spawn(ticker)
    try:
        with pytest.raises(gevent.Timeout), gevent.Timeout(0.3):
            io.encrypt_client(plain_client_context(tls_cert))  # the peer never answers
    finally:
        ticking.kill()
    assert len(ticks) >= 10
    assert peer.read_exactly(1) == b"\x16"  # the ClientHello did go out


def test_handshake_failure(pair: tuple[IO, Peer], tls_cert: TlsCert) -> None:
    io, peer = pair
    peer.send(b"220 this is not a ServerHello at all\r\n")
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(ssl.SSLError):
        io.encrypt_client(plain_client_context(tls_cert))
    io.close()


def test_encrypt_socket_client_returns_false(pair: tuple[IO, Peer], tls_cert: TlsCert) -> None:
    io, peer = pair
    peer.send(b"garbage garbage garbage garbage garbage\r\n")
    with gevent.Timeout(GUARD_SECONDS):
        assert io.encrypt_socket_client(plain_client_context(tls_cert)) is False


def test_certificate_mismatch(tls_cert: TlsCert) -> None:
    a, b = gevent.socket.socketpair()
    io = IO(a, ("wrong-name.example", 25))
    peer = Peer(b)
    server = gevent.spawn(peer.start_tls, tls_cert.server_context())
    try:
        with gevent.Timeout(GUARD_SECONDS), pytest.raises(ssl.SSLCertVerificationError):
            io.encrypt_client(plain_client_context(tls_cert))
    finally:
        io.close()
        server.join(GUARD_SECONDS)
        peer.close()


def test_no_host_name_for_checking(tls_cert: TlsCert) -> None:
    a, b = gevent.socket.socketpair()
    io = IO(a)  # AF_UNIX: no host name
    try:
        with pytest.raises(ssl.SSLError):
            io.encrypt_client(plain_client_context(tls_cert))
        assert not io.encrypted
    finally:
        a.close()
        b.close()


def test_leftover_bytes_refuse_tls(pair: tuple[IO, Peer], tls_cert: TlsCert) -> None:
    io, peer = pair
    peer.send(b"220 go ahead\r\n250 injected\r\n")
    assert io.recv_reply() == ("220", "go ahead")
    with pytest.raises(BadReply) as info:
        io.encrypt_client(plain_client_context(tls_cert))
    assert info.value.data == b"250 injected\r\n"
    assert not io.encrypted


def test_poll_readable_ignores_session_tickets(pair: tuple[IO, Peer], tls_cert: TlsCert) -> None:
    """TLS 1.3 tickets make the fd readable without any reply waiting."""
    io, peer = pair
    server = gevent.spawn(peer.start_tls, tls_cert.server_context())
    with gevent.Timeout(GUARD_SECONDS):
        io.encrypt_client(plain_client_context(tls_cert))
    server.get(timeout=GUARD_SECONDS)
    assert not io.poll_readable()
    peer.send(b"421 4.3.2 bye\r\n")
    with gevent.Timeout(GUARD_SECONDS):
        while not io.poll_readable():
            gevent.sleep(0)
    assert io.recv_reply() == ("421", "4.3.2 bye")
    io.close()


def test_close_after_tls_with_vanished_peer(pair: tuple[IO, Peer], tls_cert: TlsCert) -> None:
    io, peer = pair
    server = gevent.spawn(peer.start_tls, tls_cert.server_context())
    with gevent.Timeout(GUARD_SECONDS):
        io.encrypt_client(plain_client_context(tls_cert))
    server.get(timeout=GUARD_SECONDS)
    peer.close()
    with gevent.Timeout(GUARD_SECONDS):
        io.close()
    assert io.socket.fileno() == -1


# -- server side: waiting for the client before reading ----------------------------


class _RecvCounter:
    """Counts the raw recv() calls on a gevent socket's underlying socket."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, sock: gevent.socket.socket) -> None:
        self.calls = 0
        raw = sock._sock  # the stdlib socket gevent wraps
        real = raw.recv

        def counting(*args: object) -> bytes:
            self.calls += 1
            return real(*args)  # type: ignore[no-any-return]

        proxy = _RawProxy(raw, counting)
        monkeypatch.setattr(sock, "_sock", proxy)


class _RawProxy:
    def __init__(self, raw: object, recv: object) -> None:
        self._raw = raw
        self.recv = recv

    def __getattr__(self, name: str) -> object:
        return getattr(self._raw, name)


def test_recv_masked_waits_for_the_client_before_reading(
    pair: tuple[IO, Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    io, peer = pair
    counter = _RecvCounter(monkeypatch, io.socket)
    for expected, line in enumerate((b"EHLO client.test\r\n", b"QUIT\r\n"), start=1):
        reader = gevent.spawn(io.recv_masked)
        gevent.idle()  # the reader now waits, with nothing sent yet
        peer.send(line)
        with gevent.Timeout(GUARD_SECONDS):
            assert reader.get() == line
        assert counter.calls == expected  # no read that could only fail with EAGAIN first


def test_recv_masked_reads_at_once_after_a_full_read(pair: tuple[IO, Peer]) -> None:
    io, peer = pair
    big = b"x" * 100_000
    gevent.spawn(peer.send, big)
    got = b""
    with gevent.Timeout(GUARD_SECONDS):
        while len(got) < len(big):
            got += io.recv_masked()
    assert got == big


def test_closing_the_io_wakes_a_reader_waiting_for_the_client(pair: tuple[IO, Peer]) -> None:
    io, _ = pair
    reader = gevent.spawn(io.recv_masked)
    gevent.idle()  # the reader now waits for the client
    io.close()
    with gevent.Timeout(GUARD_SECONDS, AssertionError("the reader was not woken")):
        reader.join()
    assert isinstance(reader.exception, ConnectionLost)


def test_a_socket_with_its_own_timeout_is_read_the_usual_way(pair: tuple[IO, Peer]) -> None:
    io, _ = pair
    io.socket.settimeout(0.01)
    with gevent.Timeout(GUARD_SECONDS), pytest.raises(TimeoutError):
        io.recv_masked()  # the socket's timeout applies: no wait without it
