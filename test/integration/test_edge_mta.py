"""A whole MTA: StaticSmtpRelay → SmtpEdge → Queue(DictStorage) → StaticSmtpRelay → smtp-sink.

Every corpus message must reach the sink byte for byte (what the byte-faithful
contract says the wire carries: :func:`support.corpus.expected_wire`), and
Python's :mod:`smtplib` must be able to hand mail to the edge, in clear and over
STARTTLS with AUTH.
"""

from __future__ import annotations

import smtplib
import ssl
from typing import Any

import gevent
import pytest
import support.smtp_edge
from support.corpus import corpus_names, expected_wire, load
from support.smtp_edge import PASSWORD, USER, cooperative_wait
from support.util import GUARD_SECONDS

from slimta.envelope import Envelope
from slimta.relay.smtp.static import StaticSmtpRelay
from slimta.smtp.reply import Reply

#: The fixture (not registered suite-wide by support.servers).
smtp_edge = support.smtp_edge.smtp_edge

ALL = corpus_names()
RECIPIENT = "alice@example.test"
SENDERS = {"03-postfix-dsn.eml": ""}


def sender_for(name: str) -> str:
    return SENDERS.get(name, "sender@example.test")


def relay_to(address: tuple[str, int]) -> StaticSmtpRelay:
    return StaticSmtpRelay(
        address[0],
        address[1],
        pool_size=1,
        ehlo_as="relay.example.test",
        command_timeout=10.0,
        data_timeout=10.0,
    )


def assert_bytes(got: bytes, want: bytes) -> None:
    if got != want:
        index = next(
            (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
            min(len(got), len(want)),
        )
        raise AssertionError(
            f"differ at byte {index}: got {got[index - 40 : index + 40]!r}, "
            f"want {want[index - 40 : index + 40]!r}"
        )


def delivered(result: Any, rcpt: str) -> bool:
    reply = result[rcpt] if isinstance(result, dict) else result
    return isinstance(reply, Reply) and reply.code == "250"


@pytest.mark.parametrize("name", ALL)
def test_corpus_crosses_the_mta_byte_for_byte(name: str, smtp_sink: Any, smtp_edge: Any) -> None:
    sink = smtp_sink()
    edge = smtp_edge(relay=relay_to(sink.address))
    client = relay_to(edge.address)
    env = Envelope(sender_for(name), [RECIPIENT])
    env.parse(load(name))
    try:
        with gevent.Timeout(GUARD_SECONDS, AssertionError("attempt() did not return")):
            result = client.attempt(env, 0)
    finally:
        client.kill()
    assert delivered(result, RECIPIENT), result
    # Delivered: the sink has it and the queue removed it from the store.
    cooperative_wait(lambda: len(sink.messages()) >= 1 and not edge.stored(), "delivery")
    [got] = sink.messages()
    assert got.mail_from == sender_for(name)
    assert got.rcpt_to == [RECIPIENT]
    assert_bytes(got.data, expected_wire(load(name)))


def test_whole_corpus_on_one_pipelined_connection(smtp_sink: Any, smtp_edge: Any) -> None:
    sink = smtp_sink()
    edge = smtp_edge(relay=relay_to(sink.address))
    client = StaticSmtpRelay(
        *edge.address, pool_size=1, ehlo_as="relay.example.test", idle_timeout=10.0
    )
    try:
        with gevent.Timeout(GUARD_SECONDS * 3, AssertionError("attempts did not return")):
            for index, name in enumerate(ALL):
                env = Envelope(sender_for(name), [f"r{index}@x.test"])
                env.parse(load(name))
                assert delivered(client.attempt(env, 0), f"r{index}@x.test")
    finally:
        client.kill()
    cooperative_wait(lambda: len(sink.messages()) >= len(ALL), "the sink to get the corpus")
    got = {m.rcpt_to[0]: m.data for m in sink.messages()}
    for index, name in enumerate(ALL):
        assert_bytes(got[f"r{index}@x.test"], expected_wire(load(name)))


MESSAGE = b"From: a@src.test\r\nTo: b@dst.test\r\nSubject: smtplib\r\n\r\nHi.\r\n.dot\r\n"


def in_thread(func: Any, *args: Any) -> Any:
    """Run blocking stdlib code in a real thread while the hub serves the edge."""
    return gevent.get_hub().threadpool.apply(func, args)


def test_smtplib_plain(smtp_edge: Any) -> None:
    edge = smtp_edge()

    def send() -> Any:
        with smtplib.SMTP(*edge.address, timeout=GUARD_SECONDS) as client:
            client.ehlo("client.src.test")
            assert client.has_extn("pipelining") and client.has_extn("smtputf8")
            return client.sendmail("a@src.test", ["b@dst.test", "c@reject.test"], MESSAGE)

    refused = in_thread(send)
    assert refused == {"c@reject.test": (550, b"5.1.1 Unknown recipient")}
    (env,) = edge.stored()
    assert env.recipients == ["b@dst.test"]
    assert b"".join(env.flatten()) == MESSAGE


def test_smtplib_starttls_auth(smtp_edge: Any, tls_cert: Any) -> None:
    edge = smtp_edge(auth=True, context=tls_cert.gevent_server_context())

    def send() -> Any:
        context = ssl.create_default_context(cafile=tls_cert.ca_path)
        with smtplib.SMTP(*edge.address, timeout=GUARD_SECONDS) as client:
            client.ehlo("client.src.test")
            assert not client.has_extn("auth")
            client.starttls(context=context)
            client.ehlo("client.src.test")
            assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
            client.login(USER, PASSWORD)
            return client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)

    assert in_thread(send) == {}
    (env,) = edge.stored()
    assert env.client["protocol"] == "ESMTPSA"
    assert env.client["auth"] == (USER, USER)


def test_smtplib_wrong_password(smtp_edge: Any, tls_cert: Any) -> None:
    edge = smtp_edge(auth=True, context=tls_cert.gevent_server_context())

    def login() -> None:
        context = ssl.create_default_context(cafile=tls_cert.ca_path)
        with smtplib.SMTP(*edge.address, timeout=GUARD_SECONDS) as client:
            client.starttls(context=context)
            client.login(USER, "not it")

    with pytest.raises(smtplib.SMTPAuthenticationError):
        in_thread(login)
    assert edge.stored() == []
