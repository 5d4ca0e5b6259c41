"""Session and Transaction (the relay client's two halves) against a scripted peer.

No server: the session's ``socket_creator`` hands it one end of a socketpair, the
test writes the server's bytes up front and checks the exact bytes written back.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import gevent
import gevent.socket
import pytest
from gevent.event import AsyncResult
from support import envelopes
from support.smtp_peer import PEER_ADDRESS, Peer
from support.util import GUARD_SECONDS

from slimta.relay.smtp import SmtpPermanentRelayError
from slimta.relay.smtp._session import Session
from slimta.relay.smtp._transaction import Transaction
from slimta.relay.smtp.client import SmtpRelayClient
from slimta.smtp.client import Client, LmtpClient
from slimta.smtp.reply import Reply
from slimta.util.deque import BlockingDeque

EHLO = b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


@pytest.fixture
def wire() -> Iterator[tuple[SmtpRelayClient, Peer]]:
    """A relay client (not started) whose connections are the socketpair's first end."""
    a, b = gevent.socket.socketpair()
    owner = SmtpRelayClient(PEER_ADDRESS, BlockingDeque(), socket_creator=lambda _: a,
                            ehlo_as="relay.test", idle_timeout=30.0)
    peer = Peer(b)
    try:
        yield owner, peer
    finally:
        peer.close()
        a.close()
        # Never started: killing it marks it dead, so the suite's leak checks
        # (which look for live relay clients) do not count it.
        owner.kill()
        owner.socket = None


make_envelope = partial(
    envelopes.make_envelope,
    sender="s@x.test",
    rcpts=("r@x.test",),
    data=b"Subject: t\r\n\r\nbody\r\n",
)


def opened(owner: SmtpRelayClient, peer: Peer, protocol: type[Client] = Client) -> Session:
    peer.send(b"220 mx.test ESMTP\r\n" + EHLO)
    session = Session(owner, protocol)
    with gevent.Timeout(GUARD_SECONDS):
        session.open()
    return session


def test_stage_names_the_step_and_bounds_it(wire: tuple[SmtpRelayClient, Peer]) -> None:
    owner, _ = wire
    session = Session(owner, Client)
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(GUARD_SECONDS, AssertionError("the stage did not time out")):
            with session.stage(b"MAIL", 0.01):
                gevent.sleep(GUARD_SECONDS)
    assert owner.current_command == b"MAIL"
    with session.stage(b"RCPT", None):
        pass
    assert owner.current_command == b"RCPT"


def test_open_greets_and_close_quits(wire: tuple[SmtpRelayClient, Peer]) -> None:
    owner, peer = wire
    session = opened(owner, peer)
    peer.expect(b"EHLO relay.test\r\n")
    assert owner.client is session.client and owner.socket is session.socket
    assert owner.current_command == b"EHLO" and session.usable
    peer.send(b"221 bye\r\n")
    with gevent.Timeout(GUARD_SECONDS):
        session.close()
    peer.expect(b"QUIT\r\n")
    assert owner.client is None and owner.socket is None and not session.usable


def test_lmtp_protocol_greets_with_lhlo(wire: tuple[SmtpRelayClient, Peer]) -> None:
    owner, peer = wire
    session = opened(owner, peer, LmtpClient)
    peer.expect(b"LHLO relay.test\r\n")
    assert owner.current_command == b"LHLO"
    session.usable = False  # no QUIT
    session.close()
    assert peer.nothing_written() or peer.read_exactly(1) == b""


def test_transaction_chains_the_next_envelope_in_one_write(
    wire: tuple[SmtpRelayClient, Peer],
) -> None:
    owner, peer = wire
    session = opened(owner, peer)
    peer.expect(b"EHLO relay.test\r\n")
    assert owner.queue is not None
    waiting: AsyncResult = AsyncResult()
    owner.queue.append((waiting, make_envelope(rcpts=("b@x.test",))))
    peer.send(b"250 ok\r\n250 ok\r\n354 go\r\n"  # first MAIL, RCPT, DATA
              b"250 2.0.0 first\r\n250 ok\r\n250 ok\r\n354 go\r\n")  # final + next
    transaction = Transaction(session, owner, chain=True)
    with gevent.Timeout(GUARD_SECONDS):
        result = transaction.run(make_envelope(rcpts=("a@x.test",)), reused=False)
    assert isinstance(result, dict) and str(result["a@x.test"]) == "250 2.0.0 first"
    peer.expect(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n")
    # The end of the first message and the next MAIL/RCPT/DATA: one write.
    peer.expect(b"Subject: t\r\n\r\nbody\r\n.\r\n"
                b"MAIL FROM:<s@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
    chained = transaction.next
    assert chained is not None and chained.result is waiting
    assert owner.pending == (waiting,) and not owner.queue
    assert chained.sent.data is not None and chained.sent.data.code == "354"
    # The next transaction starts from the replies already read.
    peer.send(b"554 5.6.0 no thanks\r\n")
    with gevent.Timeout(GUARD_SECONDS):
        with pytest.raises(SmtpPermanentRelayError) as info:
            Transaction(session, owner).run(chained.envelope, reused=True, chained=chained)
    assert str(info.value.reply) == "554 5.6.0 no thanks"
    peer.expect(b"Subject: t\r\n\r\nbody\r\n.\r\n")
    assert session.needs_rset


def test_transaction_gives_the_next_envelope_back_when_the_flush_fails(
    wire: tuple[SmtpRelayClient, Peer],
) -> None:
    owner, peer = wire
    session = opened(owner, peer)
    peer.expect(b"EHLO relay.test\r\n")
    assert owner.queue is not None
    item: Any = (AsyncResult(), make_envelope(rcpts=("b@x.test",)))
    owner.queue.append(item)
    peer.send(b"250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 first\r\n")
    peer.sock.shutdown(gevent.socket.SHUT_WR)  # no replies for the next transaction
    transaction = Transaction(session, owner, chain=True)
    with gevent.Timeout(GUARD_SECONDS):
        result: Any = transaction.run(make_envelope(rcpts=("a@x.test",)), reused=False)
    assert isinstance(result["a@x.test"], Reply) and result["a@x.test"].code == "250"
    assert transaction.next is None and not session.usable
    assert list(owner.queue) == [item] and owner.pending == ()


def test_transaction_without_chain_leaves_the_queue_alone(
    wire: tuple[SmtpRelayClient, Peer],
) -> None:
    owner, peer = wire
    session = opened(owner, peer)
    peer.expect(b"EHLO relay.test\r\n")
    assert owner.queue is not None
    item: Any = (AsyncResult(), make_envelope(rcpts=("b@x.test",)))
    owner.queue.append(item)
    peer.send(b"250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 only\r\n")
    transaction = Transaction(session, owner)  # a connection not kept: no chaining
    with gevent.Timeout(GUARD_SECONDS):
        result: Any = transaction.run(make_envelope(rcpts=("a@x.test",)), reused=False)
    assert str(result["a@x.test"]) == "250 2.0.0 only"
    peer.expect(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n"
                b"Subject: t\r\n\r\nbody\r\n.\r\n")
    assert peer.nothing_written()
    assert transaction.next is None and list(owner.queue) == [item] and not session.needs_rset
