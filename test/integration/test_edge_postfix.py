"""Postfix's own SMTP client delivering into SmtpEdge → Queue(DictStorage), over STARTTLS.

A private Postfix instance (``support.postfix``) with ``relayhost`` pointing at
the edge and ``smtp_tls_security_level = encrypt`` takes messages from its own
``sendmail``. What the edge stores must be exactly what was submitted, with line
ends made CRLF, below the one ``Received:`` field Postfix's cleanup adds on top
(the messages carry their own ``From``, ``Date`` and ``Message-ID``, so Postfix
has nothing else to add).
"""

from __future__ import annotations

import re
from typing import Any

import support.postfix
import support.smtp_edge
from support.corpus import normalize_eol
from support.postfix import POSTFIX_HOSTNAME, strip_postfix_received
from support.smtp_edge import EdgeUnderTest, UserPassValidators, cooperative_wait
from support.util import GUARD_SECONDS

#: The fixtures (not registered suite-wide by support.servers).
smtp_edge = support.smtp_edge.smtp_edge
postfix_client = support.postfix.postfix_client

#: A burst of messages crosses Postfix's pickup, queue manager and SMTP client, each a
#: separate daemon step, so the wait for all of them gets two guard times.
DELIVERY_TIMEOUT = 2 * GUARD_SECONDS
BURST = 10


class RecordingValidators(UserPassValidators):
    """Keeps the MAIL FROM parameters of every transaction."""

    mail_params: list[dict[bytes, Any]] = []

    def handle_mail(self, reply: Any, sender: str, params: Any) -> None:
        self.mail_params.append(dict(params))


def message(subject: str, body: bytes, msgid: str) -> bytes:
    return (
        b"From: Alice <a@src.test>\n"
        b"To: b@dst.test\n"
        b"Subject: " + subject.encode() + b"\n"
        b"Date: Wed, 02 Dec 2026 07:00:00 +0000\n"
        b"Message-ID: <" + msgid.encode() + b"@src.test>\n"
        b"MIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: 8bit\n"
        b"\n" + body
    )


PLAIN = message("plain", b"Hello from Postfix.\n.a line that starts with a dot\n..two dots\n", "1")
UTF8 = message("utf-8 body", "Grüße, ünïcödé, 日本語\n".encode(), "2")
BIG = message("big", b"".join(b"%06d " % i + b"x" * 70 + b"\n" for i in range(3000)), "3")


def stored_by_message_id(edge: EdgeUnderTest) -> dict[bytes, Any]:
    found = {}
    for env in edge.stored():
        header, body = env.flatten()
        match = re.search(rb"(?im)^Message-ID: (<[^>]*>)", header)
        assert match is not None, header
        found[match.group(1)] = env
    return found


def wait_for(edge: EdgeUnderTest, postfix: Any, count: int) -> dict[bytes, Any]:
    try:
        cooperative_wait(
            lambda: len(edge.stored()) >= count and postfix.queue_is_empty(),
            f"{count} messages from postfix",
            timeout=DELIVERY_TIMEOUT,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{postfix.log()}") from None
    return stored_by_message_id(edge)


def check_relayed(env: Any, submitted: bytes) -> bytes:
    """``env`` holds ``submitted`` under one Postfix Received field; returns that field."""
    received, rest = strip_postfix_received(b"".join(env.flatten()))
    assert rest == normalize_eol(submitted)
    assert b"(Postfix, from userid 0)" in received
    assert env.client["protocol"] == "ESMTPS"  # Postfix used STARTTLS
    assert env.client["name"] == POSTFIX_HOSTNAME
    assert env.client["ip"] == "127.0.0.1"
    return received


def test_postfix_relays_over_starttls(smtp_edge: Any, postfix_client: Any, tls_cert: Any) -> None:
    edge = smtp_edge(context=tls_cert.gevent_server_context())
    postfix = postfix_client(edge.address[1], tls_cert.ca_path)
    postfix.submit("a@src.test", ["b@dst.test", "c@dst.test"], PLAIN)
    [env] = wait_for(edge, postfix, 1).values()
    assert env.sender == "a@src.test"
    assert sorted(env.recipients) == ["b@dst.test", "c@dst.test"]
    check_relayed(env, PLAIN)
    log = postfix.log()
    assert "TLS connection established to 127.0.0.1" in log, log
    assert "status=sent" in log and "250 2.6.0 Message accepted for delivery" in log, log


def test_several_messages_keep_their_bytes(
    smtp_edge: Any, postfix_client: Any, tls_cert: Any
) -> None:
    edge = smtp_edge(context=tls_cert.gevent_server_context())
    postfix = postfix_client(edge.address[1], tls_cert.ca_path)
    sent = {b"<1@src.test>": PLAIN, b"<2@src.test>": UTF8, b"<3@src.test>": BIG}
    for index, data in enumerate(sent.values()):
        postfix.submit(f"s{index}@src.test", [f"r{index}@dst.test"], data)
    got = wait_for(edge, postfix, len(sent))
    assert sorted(got) == sorted(sent)
    for index, (msgid, data) in enumerate(sent.items()):
        env = got[msgid]
        assert (env.sender, env.recipients) == (f"s{index}@src.test", [f"r{index}@dst.test"])
        check_relayed(env, data)


def test_crlf_input_and_smtputf8_addresses(
    smtp_edge: Any, postfix_client: Any, tls_cert: Any
) -> None:
    RecordingValidators.mail_params = []
    edge = smtp_edge(context=tls_cert.gevent_server_context(), validator_class=RecordingValidators)
    postfix = postfix_client(edge.address[1], tls_cert.ca_path)
    data = normalize_eol(UTF8.replace(b"<2@", b"<4@"))  # sendmail makes CRLF input LF
    # smtputf8_autodetect_classes (sendmail by default) makes Postfix ask for SMTPUTF8.
    postfix.submit("jösé@src.test", ["ümlaut@dst.test"], data)
    [env] = wait_for(edge, postfix, 1).values()
    assert (env.sender, env.recipients) == ("jösé@src.test", ["ümlaut@dst.test"])
    check_relayed(env, data)
    [params] = RecordingValidators.mail_params
    assert set(params) >= {b"SMTPUTF8", b"BODY"}, params


def test_refused_recipient_bounces_back_through_the_edge(
    smtp_edge: Any, postfix_client: Any, tls_cert: Any
) -> None:
    """The edge's 550 makes Postfix bounce; the bounce (null sender) comes back to the edge."""
    edge = smtp_edge(context=tls_cert.gevent_server_context())
    postfix = postfix_client(edge.address[1], tls_cert.ca_path)
    postfix.submit("a@src.test", ["b@dst.test", "nobody@reject.test"], PLAIN)
    got = wait_for(edge, postfix, 2)
    original = got.pop(b"<1@src.test>")
    assert original.recipients == ["b@dst.test"]
    check_relayed(original, PLAIN)
    [bounce] = got.values()
    assert bounce.sender == ""
    assert bounce.recipients == ["a@src.test"]
    header, body = bounce.flatten()
    assert re.search(rb"(?im)^Content-Type: multipart/report; report-type=delivery-status", header)
    assert b"nobody@reject.test" in body
    assert b"550 5.1.1 Unknown recipient" in body


def test_no_starttls_no_delivery(smtp_edge: Any, postfix_client: Any, tls_cert: Any) -> None:
    """``encrypt``: an edge that offers no STARTTLS gets nothing, Postfix defers."""
    edge = smtp_edge()
    postfix = postfix_client(edge.address[1], tls_cert.ca_path)
    postfix.submit("a@src.test", ["b@dst.test"], PLAIN)
    cooperative_wait(
        lambda: "status=deferred" in postfix.log(), "postfix to defer", timeout=DELIVERY_TIMEOUT
    )
    log = postfix.log()
    assert "TLS is required, but was not offered" in log, log
    assert edge.stored() == []


class CountingValidators(UserPassValidators):
    """Counts the SMTP sessions (banners) the edge served."""

    banners = 0

    def handle_banner(self, reply: Any, address: Any) -> None:
        type(self).banners += 1


def test_burst_of_messages(smtp_edge: Any, postfix_client: Any, tls_cert: Any) -> None:
    """Ten messages at once: all arrive intact, and Postfix needs no more than one
    session per message (it may reuse cached connections, never retries)."""
    CountingValidators.banners = 0
    edge = smtp_edge(context=tls_cert.gevent_server_context(), validator_class=CountingValidators)
    postfix = postfix_client(edge.address[1], tls_cert.ca_path)
    sent = {}
    for index in range(BURST):
        data = message(f"burst {index}", b"message %d\n" % index, f"b{index}")
        sent[f"<b{index}@src.test>".encode()] = data
        postfix.submit("a@src.test", [f"r{index}@dst.test"], data)
    got = wait_for(edge, postfix, BURST)
    assert sorted(got) == sorted(sent)
    for msgid, data in sent.items():
        check_relayed(got[msgid], data)
    assert 1 <= CountingValidators.banners <= BURST
    assert "status=deferred" not in postfix.log()
