"""The whole MTA: SmtpEdge → Queue(DiskStorage) → MxSmtpRelay / StaticLmtpRelay → real servers.

What a program built on slimta runs: an :class:`~slimta.edge.smtp.SmtpEdge`
handing messages to a :class:`~slimta.queue.Queue` that keeps them on disk
(:class:`~slimta.diskstorage.DiskStorage`), stamps them (``AddDateHeader``,
``AddMessageIdHeader``, ``AddReceivedHeader``) and relays them with
:class:`~slimta.relay.smtp.mx.MxSmtpRelay` (``force_mx`` to a loopback smtp-sink)
or, in a second setup, with ``StaticLmtpRelay`` to Dovecot's LMTP.

* Every corpus message goes in at the edge (sent by our own ``StaticSmtpRelay``)
  and comes out at the receiver byte for byte, below the trace fields this hop
  added: one ``Received`` on top, then ``Message-Id``/``Date`` only where the
  message had none.
* The edge's PTR lookup (against the test DNS server) names the client in the
  ``Received`` field.
* A DKIM-signed message still verifies at the receiver.
* A recipient the next hop refuses with 550 comes back to the sender as a bounce
  (null reverse-path, ``multipart/report``), through the same MTA.
"""

from __future__ import annotations

import re
from typing import Any

import gevent
import pytest
import support.smtp_edge
from support.corpus import (
    HeaderModel,
    corpus_names,
    expected_wire,
    load,
    normalize_eol,
    split_header_block,
    well_formed_names,
)
from support.dkim_keys import Keys, signed, verify_all
from support.dovecot import DovecotLmtp
from support.smtp_edge import EdgeUnderTest, cooperative_wait
from support.util import GUARD_SECONDS

from slimta.diskstorage import DiskStorage
from slimta.envelope import Envelope
from slimta.policy.headers import AddDateHeader, AddMessageIdHeader, AddReceivedHeader
from slimta.relay.smtp.mx import MxSmtpRelay
from slimta.relay.smtp.static import StaticLmtpRelay, StaticSmtpRelay
from slimta.smtp.reply import Reply

#: The fixture (not registered suite-wide by support.servers).
smtp_edge = support.smtp_edge.smtp_edge

ALL = corpus_names()
WELL_FORMED = set(well_formed_names())
MX_NAME = "mx.example.test"
CLIENT_EHLO = "relay.example.test"
CLIENT_PTR = "client.ptr.test"
LOOPBACK_PTR = "1.0.0.127.in-addr.arpa"
RECIPIENT = "alice@example.test"
SENDERS = {"03-postfix-dsn.eml": ""}


def sender_for(name: str) -> str:
    return SENDERS.get(name, "sender@src.test")


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture
def mta(smtp_edge: Any, tmp_path: Any, dns_server: Any, dns_resolver: Any, tls_cert: Any) -> Any:
    """Factory: ``mta(relay)`` is an edge whose queue keeps messages in a DiskStorage."""
    dns_server.add_ptr(LOOPBACK_PTR, CLIENT_PTR)

    def build(relay: Any) -> EdgeUnderTest:
        storage = DiskStorage(str(tmp_path / "env"), str(tmp_path / "meta"))
        edge = smtp_edge(relay=relay, storage=storage, hostname=MX_NAME, validator_class=None)
        edge.queue.add_policy(AddDateHeader())
        edge.queue.add_policy(AddMessageIdHeader(MX_NAME))
        edge.queue.add_policy(AddReceivedHeader())
        return edge

    return build


def mx_relay(tls_cert: Any, **force: tuple[str, int]) -> MxSmtpRelay:
    relay = MxSmtpRelay(
        tls_cert.client_context(),
        pool_size=2,
        ehlo_as=MX_NAME,
        command_timeout=10.0,
        data_timeout=10.0,
        idle_timeout=2.0,
    )
    for domain, (host, port) in force.items():
        relay.force_mx(domain.replace("_", "."), host, port)
    return relay


def send(edge: EdgeUnderTest, sender: str, rcpts: list[str], data: bytes) -> Any:
    """Hand ``data`` to the edge with our own SMTP client; returns the attempt's result."""
    client = StaticSmtpRelay(
        *edge.address, pool_size=1, ehlo_as=CLIENT_EHLO, command_timeout=10.0, data_timeout=10.0
    )
    env = Envelope(sender, rcpts)
    env.parse(data)
    try:
        with gevent.Timeout(GUARD_SECONDS, AssertionError("attempt() did not return")):
            return client.attempt(env, 0)
    finally:
        client.kill()


def accepted(result: Any, rcpt: str) -> bool:
    reply = result[rcpt] if isinstance(result, dict) else result
    return isinstance(reply, Reply) and reply.code == "250"


def fields_of(block: bytes, eol: bytes) -> list[bytes]:
    """Header fields (first line plus continuation lines, without line ends)."""
    fields: list[bytes] = []
    for line in block.split(eol)[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b" " + line.strip()
        else:
            fields.append(line)
    return fields


def has_field(data: bytes, name: bytes) -> bool:
    block = normalize_eol(split_header_block(data)[0])
    return re.search(rb"(?im)^" + re.escape(name) + rb"[ \t]*:", block) is not None


def check_trace(added: list[bytes], name: str, original: bytes, rcpt: str) -> None:
    """``added`` is exactly what this hop puts on top of ``original``."""
    received, *rest = added
    assert re.fullmatch(
        rb"Received: from "
        + re.escape(CLIENT_EHLO.encode())
        + rb" \("
        + re.escape(CLIENT_PTR.encode())
        + rb" \[127\.0\.0\.1\]\) by "
        + re.escape(MX_NAME.encode())
        + rb" \(slimta-relay [^)]*\) with ESMTP for <"
        + re.escape(rcpt.encode())
        + rb">; .+",
        received,
    ), received
    names = [field.split(b":", 1)[0].lower() for field in rest]
    assert names in ([], [b"message-id"], [b"date"], [b"message-id", b"date"]), names
    if name in WELL_FORMED:
        # Added exactly when missing. (In the malformed ones, the header fields the
        # email package does not reach count as missing, as in python-slimta.)
        for field_name in (b"message-id", b"date"):
            assert (field_name in names) is not has_field(original, field_name), name
    if b"message-id" in names:
        assert re.fullmatch(rb"Message-Id: <[0-9a-f]{32}\.\d+@mx\.example\.test>", rest[0])


def drained(edge: EdgeUnderTest) -> bool:
    """Nothing left in the edge's DiskStorage."""
    return bool(edge.storage.get_info()["size"] == 0)


def split_added(got: bytes, data: bytes, eol: bytes) -> list[bytes]:
    """The fields added on top of corpus message ``data`` in ``got`` (line ends ``eol``).

    ``got`` must end with what the wire carries for ``data``. Continuation lines
    that open a message (a header cut off above them) stay at the very top, with
    the prepended fields below them (see :class:`support.corpus.HeaderModel`);
    a receiver's own trace goes above even those.
    """
    want = expected_wire(data).replace(b"\r\n", eol)
    lead = HeaderModel.from_message(data).lead.replace(b"\r\n", eol)
    tail = want[len(lead) :]
    assert_bytes(got, tail)
    prefix = got[: len(got) - len(tail)]
    if lead:
        before, found, ours = prefix.partition(lead)
        assert found and ours.startswith(b"Received: "), prefix
        return fields_of(before, eol) + fields_of(ours, eol)
    return fields_of(prefix, eol)


def assert_bytes(got: bytes, want: bytes) -> None:
    if not got.endswith(want):
        index = next(
            (i for i, (a, b) in enumerate(zip(got[::-1], want[::-1], strict=False)) if a != b),
            min(len(got), len(want)),
        )
        got_part = got[-index - 60 : len(got) - index + 40]
        want_part = want[-index - 60 : len(want) - index + 40]
        raise AssertionError(
            f"differ {index} bytes from the end: got ...{got_part!r}, want ...{want_part!r}"
        )


@pytest.mark.parametrize("name", ALL)
def test_corpus_through_mx_relay_to_smtp_sink(
    name: str, mta: Any, smtp_sink: Any, tls_cert: Any
) -> None:
    sink = smtp_sink()
    edge = mta(mx_relay(tls_cert, example_test=sink.address))
    data = load(name)
    assert accepted(send(edge, sender_for(name), [RECIPIENT], data), RECIPIENT)
    cooperative_wait(lambda: len(sink.messages()) >= 1 and drained(edge), "delivery")
    [got] = sink.messages()
    assert (got.mail_from, got.rcpt_to) == (sender_for(name), [RECIPIENT])
    check_trace(split_added(got.data, data, b"\r\n"), name, data, RECIPIENT)


@pytest.mark.parametrize("name", ALL)
def test_corpus_through_lmtp_relay_to_dovecot(
    name: str, mta: Any, dovecot_lmtp: DovecotLmtp
) -> None:
    relay = StaticLmtpRelay(*dovecot_lmtp.address, pool_size=1, ehlo_as=MX_NAME)
    edge = mta(relay)
    data = load(name)
    assert accepted(send(edge, sender_for(name), [RECIPIENT], data), RECIPIENT)
    cooperative_wait(lambda: len(dovecot_lmtp.messages("alice")) >= 1 and drained(edge), "delivery")
    [stored] = dovecot_lmtp.messages("alice")
    # Dovecot keeps LF line ends; every CR we send belongs to a CRLF.
    dovecot_added, ours = split_dovecot_trace(split_added(stored, data, b"\n"))
    assert dovecot_added[0] == f"Return-Path: <{sender_for(name)}>".encode()
    assert dovecot_added[1] == f"Delivered-To: {RECIPIENT}".encode()
    assert b"with LMTP" in dovecot_added[2]
    check_trace(ours, name, data, RECIPIENT)


def split_dovecot_trace(fields: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Dovecot writes Return-Path, Delivered-To and one Received above ours."""
    return fields[:3], fields[3:]


@pytest.mark.parametrize("long_b", [False, True], ids=["folded-b", "long-b"])
def test_dkim_signature_still_verifies(
    mta: Any, smtp_sink: Any, dovecot_lmtp: DovecotLmtp, tls_cert: Any, keys: Keys, long_b: bool
) -> None:
    message = signed("01-thunderbird-alternative-attachment.eml", keys, long_b)
    assert verify_all(message, keys) == [True, True]
    sink = smtp_sink()
    mx_edge = mta(mx_relay(tls_cert, example_test=sink.address))
    assert accepted(send(mx_edge, "sender@example.org", [RECIPIENT], message), RECIPIENT)
    cooperative_wait(lambda: len(sink.messages()) >= 1, "delivery to the sink")
    [got] = sink.messages()
    assert got.data.startswith(b"Received: from ")
    assert verify_all(got.data, keys) == [True, True]


def test_dkim_signature_verifies_in_dovecot(
    mta: Any, dovecot_lmtp: DovecotLmtp, keys: Keys
) -> None:
    message = signed("09-esp-bulk-long-tokens.eml", keys, False)
    edge = mta(StaticLmtpRelay(*dovecot_lmtp.address, pool_size=1, ehlo_as=MX_NAME))
    assert accepted(send(edge, "sender@example.org", [RECIPIENT], message), RECIPIENT)
    cooperative_wait(lambda: len(dovecot_lmtp.messages("alice")) >= 1, "delivery to dovecot")
    [stored] = dovecot_lmtp.messages("alice")
    assert verify_all(stored.replace(b"\n", b"\r\n"), keys) == [True, True]


def dsn_blocks(data: bytes) -> list[dict[str, str]]:
    """The blocks of the report's message/delivery-status part."""
    start = data.index(b"Content-Type: message/delivery-status")
    body = data[data.index(b"\r\n\r\n", start) + 4 : data.index(b"\r\n--", start)]
    return [
        dict(line.decode().split(": ", 1) for line in chunk.split(b"\r\n") if b": " in line)
        for chunk in body.split(b"\r\n\r\n")
    ]


ORIGINAL = (
    b"From: Sender <sender@src.test>\r\n"
    b"To: alice@example.test, gone@reject.test\r\n"
    b"Subject: half of it bounces\r\n"
    b"Date: Wed, 02 Dec 2026 07:00:00 +0000\r\n"
    b"Message-ID: <bounce-me@src.test>\r\n"
    b"\r\n"
    b"Hello.\r\n"
)


def test_550_recipient_bounces_back_to_the_sender(
    mta: Any, smtp_sink: Any, smtp_edge: Any, tls_cert: Any
) -> None:
    """The next hop (another SmtpEdge) refuses ``gone@reject.test`` with 550; the MTA's
    bounce goes to the sender's domain through the same MxSmtpRelay."""
    sink = smtp_sink()
    next_hop = smtp_edge()  # UserPassValidators: 550 5.1.1 for anything @reject.test
    edge = mta(
        mx_relay(
            tls_cert,
            example_test=sink.address,
            reject_test=next_hop.address,
            src_test=sink.address,
        )
    )
    result = send(edge, "sender@src.test", [RECIPIENT, "gone@reject.test"], ORIGINAL)
    assert accepted(result, RECIPIENT) and accepted(result, "gone@reject.test")
    cooperative_wait(lambda: len(sink.messages()) >= 2 and drained(edge), "delivery and bounce")
    assert next_hop.stored() == []
    by_rcpt = {tuple(m.rcpt_to): m for m in sink.messages()}
    delivered = by_rcpt[(RECIPIENT,)]
    assert delivered.mail_from == "sender@src.test"
    assert delivered.data.endswith(ORIGINAL)
    bounce = by_rcpt[("sender@src.test",)]
    assert bounce.mail_from == ""
    header = bounce.data.split(b"\r\n\r\n", 1)[0]
    assert re.search(rb"(?m)^Content-Type: multipart/report; report-type=delivery-status;", header)
    per_message, *per_rcpt = dsn_blocks(bounce.data)
    assert per_message["Reporting-MTA"] == f"dns; {MX_NAME}"
    assert [block["Final-Recipient"] for block in per_rcpt] == ["rfc822; gone@reject.test"]
    assert per_rcpt[0]["Action"] == "failed"
    assert per_rcpt[0]["Status"] == "5.1.1"
    assert per_rcpt[0]["Diagnostic-Code"].startswith("smtp; 550 5.1.1 Unknown recipient")
    # The returned message is the one that was queued, trace fields and all.
    assert b"Content-Type: message/rfc822\r\n" in bounce.data
    assert ORIGINAL + b"\r\n--" in bounce.data
