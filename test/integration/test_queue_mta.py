"""An MTA built the way real programs build one, against real SMTP servers.

``Queue(DictStorage(), StaticSmtpRelay(...))`` with ``AddDateHeader``,
``AddMessageIdHeader``, ``AddReceivedHeader`` and ``RecipientDomainSplit``,
relaying to postfix's smtp-sink (failure injection per command), to aiosmtpd
(answers per recipient) and, with ``StaticLmtpRelay``, to dovecot LMTP. Bounces
must reach the sender as RFC 3464 reports.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import gevent
import pytest
from support import envelopes
from support.util import GUARD_SECONDS

from slimta.envelope import Envelope
from slimta.policy.headers import AddDateHeader, AddMessageIdHeader, AddReceivedHeader
from slimta.policy.split import RecipientDomainSplit
from slimta.queue import Queue
from slimta.queue.dict import DictStorage
from slimta.relay import Relay
from slimta.relay.smtp.static import StaticLmtpRelay, StaticSmtpRelay

pytestmark = pytest.mark.usefixtures("no_relay_leaks")

#: A retry interval short enough for tests.
TINY_BACKOFF_SECONDS = 0.05

ORIGINAL = (
    b"From: Alice <alice@src.test>\r\n"
    b"To: friends:;\r\n"
    b"Subject: queued through a real MTA\r\n"
    b"X-Foo:bar\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".leading dot\r\n"
)


make_envelope = partial(
    envelopes.make_envelope,
    sender="alice@src.test",
    data=ORIGINAL,
    client={
        "name": "client.src.test",
        "host": "client.src.test",
        "ip": "192.0.2.7",
        "protocol": "ESMTP",
    },
    receiver="mx.relay.test",
)


def tiny_backoff(max_attempts: int) -> Callable[[Envelope, int], float | None]:
    def backoff(envelope: Envelope, attempts: int) -> float | None:
        return TINY_BACKOFF_SECONDS if attempts < max_attempts else None

    return backoff


@pytest.fixture
def mta() -> Iterator[Callable[..., Queue]]:
    """Factory: an MTA queue relaying to ``address``; everything is stopped at teardown."""
    made: list[tuple[Queue, Relay]] = []

    def build(address: tuple[str, int], lmtp: bool = False, **queue_kwargs: Any) -> Queue:
        relay_class = StaticLmtpRelay if lmtp else StaticSmtpRelay
        relay = relay_class(address[0], address[1], pool_size=2, idle_timeout=1.0)
        queue = Queue(DictStorage(), relay, **queue_kwargs)
        queue.add_policy(AddDateHeader())
        queue.add_policy(AddMessageIdHeader("mx.relay.test"))
        queue.add_policy(AddReceivedHeader())
        queue.add_policy(RecipientDomainSplit())
        queue.start()
        made.append((queue, relay))
        return queue

    yield build
    for queue, relay in made:
        queue.kill()
        relay.kill()


def wait_idle(*queues: Queue) -> None:
    """Wait until every queue's store is empty and nothing is in flight."""
    with gevent.Timeout(GUARD_SECONDS, AssertionError("queue did not drain")):
        while any(q.store.get_info()["size"] or q.active_ids or len(q._attempts) for q in queues):
            gevent.sleep(0.01)


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    with gevent.Timeout(GUARD_SECONDS, AssertionError(f"timed out waiting for {what}")):
        while not predicate():
            gevent.sleep(0.01)


def dsn_fields(data: bytes) -> list[dict[str, str]]:
    """The blocks of the report's message/delivery-status part."""
    start = data.index(b"Content-Type: message/delivery-status")
    body = data[data.index(b"\r\n\r\n", start) + 4 : data.index(b"\r\n--", start)]
    blocks = []
    for chunk in body.split(b"\r\n\r\n"):
        blocks.append(
            dict(line.decode().split(": ", 1) for line in chunk.split(b"\r\n") if b": " in line)
        )
    return blocks


def check_bounce(data: bytes, rcpts: list[str], status: str, diagnostic: str) -> None:
    header = data.split(b"\r\n\r\n", 1)[0]
    assert re.search(
        rb"Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=", header
    )
    assert b"\r\nTo: <alice@src.test>\r\n" in header
    per_message, *per_rcpt = dsn_fields(data)
    assert per_message["Reporting-MTA"] == "dns; mx.relay.test"
    assert per_message["Received-From-MTA"] == "dns; client.src.test (192.0.2.7)"
    assert "Arrival-Date" in per_message
    assert [block["Final-Recipient"] for block in per_rcpt] == [f"rfc822; {r}" for r in rcpts]
    for block in per_rcpt:
        assert block["Action"] == "failed"
        assert block["Status"] == status
        assert block["Remote-MTA"] == "dns; 127.0.0.1"
        assert block["Diagnostic-Code"].startswith("smtp; " + diagnostic)
    assert b"Content-Type: message/rfc822\r\n" in data
    # The original message is in the report as it was queued (policies' headers on top).
    assert b"\r\n" + ORIGINAL + b"\r\n--" in data


def check_delivered(data: bytes) -> None:
    """Trace and identification headers are new lines on top; the rest is untouched."""
    assert data.endswith(ORIGINAL)
    added = data[: -len(ORIGINAL)].decode()
    lines = [line for line in added.split("\r\n") if line and line[0] not in " \t"]
    names = [line.split(":", 1)[0] for line in lines]
    assert names == ["Received", "Message-Id", "Date"]
    assert "by mx.relay.test (slimta-relay " in re.sub(r"\r\n[ \t]+", " ", added)
    assert re.search(r"Message-Id: <[0-9a-f]{32}\.\d+@mx\.relay\.test>", added)


def test_550_recipient_is_bounced_to_the_sender(smtp_sink, mta) -> None:
    rejecting = smtp_sink("-f", "RCPT")
    accepting = smtp_sink()
    bounce_queue = mta(accepting.address)
    queue = mta(rejecting.address, bounce_queue=bounce_queue, backoff=tiny_backoff(3))
    [(_, id)] = queue.enqueue(make_envelope(rcpts=["gone@dst.test"]))
    assert isinstance(id, str)
    wait_idle(queue, bounce_queue)
    assert rejecting.messages() == []
    [bounce] = accepting.wait_for_messages(1)
    assert bounce.mail_from == "" and bounce.rcpt_to == ["alice@src.test"]
    check_bounce(bounce.data, ["gone@dst.test"], "5.3.0", "500 5.3.0")


def test_always_450_ends_in_a_too_many_retries_bounce(smtp_sink, mta) -> None:
    deferring = smtp_sink("-r", "RCPT")
    accepting = smtp_sink()
    bounce_queue = mta(accepting.address)
    queue = mta(deferring.address, bounce_queue=bounce_queue, backoff=tiny_backoff(3))
    queue.enqueue(make_envelope(rcpts=["busy@dst.test"]))
    wait_idle(queue, bounce_queue)
    [bounce] = accepting.wait_for_messages(1)
    assert bounce.mail_from == "" and bounce.rcpt_to == ["alice@src.test"]
    check_bounce(bounce.data, ["busy@dst.test"], "4.3.0", "450 4.3.0")
    assert b"(Too many retries)" in bounce.data


def test_split_by_domain_and_delivered_with_headers_on_top(smtp_sink, mta) -> None:
    sink = smtp_sink()
    queue = mta(sink.address)
    results = queue.enqueue(make_envelope(rcpts=["a@one.test", "b@two.test", "c@ONE.test"]))
    assert [env.recipients for env, _ in results] == [["a@one.test", "c@ONE.test"], ["b@two.test"]]
    wait_idle(queue)
    messages = sink.wait_for_messages(2)
    assert sorted(m.rcpt_to for m in messages) == [["a@one.test", "c@ONE.test"], ["b@two.test"]]
    for message in messages:
        assert message.mail_from == "alice@src.test"
        check_delivered(message.data)


class Flaky:
    """A ``tempfail_rcpt`` collection: each address is "in" it for its first ``n`` RCPTs."""

    def __init__(self, failures: dict[str, int]) -> None:
        self.left = dict(failures)
        self.asked: dict[str, int] = {}

    def __contains__(self, address: object) -> bool:
        key = str(address)
        self.asked[key] = self.asked.get(key, 0) + 1
        if self.left.get(key, 0) > 0:
            self.left[key] -= 1
            return True
        return False


def test_450_450_250_is_delivered_on_the_third_attempt(aiosmtpd_server, mta) -> None:
    server = aiosmtpd_server()
    flaky = Flaky({"flaky@dst.test": 2})
    server.handler.tempfail_rcpt = flaky
    queue = mta(server.address, backoff=tiny_backoff(10))
    queue.enqueue(make_envelope(rcpts=["flaky@dst.test"]))
    wait_idle(queue)
    assert flaky.asked == {"flaky@dst.test": 3}
    [delivered] = server.envelopes
    assert delivered.rcpt_tos == ["flaky@dst.test"] and delivered.mail_from == "alice@src.test"
    check_delivered(delivered.content)


def test_250_550_450_delivered_once_bounced_once_retried(aiosmtpd_server, mta) -> None:
    server = aiosmtpd_server(reject_rcpt={"bad@dst.test"})
    flaky = Flaky({"later@dst.test": 1})
    server.handler.tempfail_rcpt = flaky
    queue = mta(server.address, backoff=tiny_backoff(10))
    queue.enqueue(make_envelope(rcpts=["ok@dst.test", "bad@dst.test", "later@dst.test"]))
    wait_for(lambda: len(server.envelopes) >= 3, "three transactions")
    wait_idle(queue)
    by_rcpts = {tuple(env.rcpt_tos): env for env in server.envelopes}
    assert sorted(by_rcpts) == [("alice@src.test",), ("later@dst.test",), ("ok@dst.test",)]
    assert len(server.envelopes) == 3
    check_delivered(by_rcpts[("ok@dst.test",)].content)
    check_delivered(by_rcpts[("later@dst.test",)].content)
    bounce = by_rcpts[("alice@src.test",)]
    assert bounce.mail_from == "<>"  # aiosmtpd records the null reverse-path as given
    check_bounce(bounce.content, ["bad@dst.test"], "5.1.1", "550 5.1.1 <bad@dst.test>")
    assert flaky.asked["later@dst.test"] == 2 and flaky.asked["ok@dst.test"] == 1


def test_dovecot_lmtp_delivered_bounced_and_retried_per_recipient(
    dovecot_lmtp, smtp_sink, mta
) -> None:
    accepting = smtp_sink()
    bounce_queue = mta(accepting.address)
    queue = mta(dovecot_lmtp.address, lmtp=True, bounce_queue=bounce_queue, backoff=tiny_backoff(2))
    rcpts = ["alice@example.test", "nobody@example.test", "broken@example.test"]
    queue.enqueue(make_envelope(rcpts=rcpts))
    wait_for(lambda: len(accepting.messages()) >= 2, "two bounces")
    wait_idle(queue, bounce_queue)
    [delivered] = dovecot_lmtp.messages("alice")
    mail = _crlf(delivered)
    # Dovecot puts its own trace headers above ours.
    check_delivered(mail[mail.index(b"Received: from client.src.test (") :])
    bounces = sorted(accepting.messages(), key=lambda m: b"Too many retries" in m.data)
    assert [(b.mail_from, b.rcpt_to) for b in bounces] == [("", ["alice@src.test"])] * 2
    check_bounce(bounces[0].data, ["nobody@example.test"], "5.1.1", "550 5.1.1")
    check_bounce(bounces[1].data, ["broken@example.test"], "4.2.0", "451 4.2.0")
    assert b"(Too many retries)" in bounces[1].data


def _crlf(data: bytes) -> bytes:
    """Maildir files use bare LF; the wire used CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
