"""slimta.policy.headers: Date, Message-Id and Received added as new first lines."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime
from functools import partial

import pytest
from support import envelopes

from slimta.core import __version__
from slimta.envelope import Envelope
from slimta.policy.headers import AddDateHeader, AddMessageIdHeader, AddReceivedHeader

RAW_HEADERS = (
    b"From: =?utf-8?q?J=C3=B6rg?= <jorg@src.test>\r\n"
    b"X-Foo:bar\r\n"
    b"Subject: folded\r\n"
    b"\tsubject line \r\n"
    b"\r\n"
)
BODY = b"body\r\n"
STAMP = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 UTC


make_envelope = partial(
    envelopes.make_envelope,
    sender="jorg@src.test",
    rcpts=("rcpt@dst.test",),
    data=RAW_HEADERS + BODY,
    timestamp=STAMP,
)


def added_line(env: Envelope) -> bytes:
    """The new first header (unfolded), after checking nothing else changed."""
    header, body = env.flatten()
    assert body == BODY
    assert header.endswith(RAW_HEADERS)
    added = header[: -len(RAW_HEADERS)]
    return re.sub(rb"\r\n[ \t]+", b" ", added).rstrip(b"\r\n")


def test_add_date_header_when_missing() -> None:
    env = make_envelope()
    AddDateHeader().apply(env)
    line = added_line(env)
    assert line.startswith(b"Date: ")
    assert parsedate_to_datetime(line[6:].decode()).timestamp() == STAMP
    assert re.fullmatch(rb"Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}", line)


def test_add_date_header_keeps_an_existing_one() -> None:
    raw = b"date: Mon, 1 Jan 2024 00:00:00 +0000\r\n" + RAW_HEADERS
    env = make_envelope(data=raw + BODY)
    AddDateHeader().apply(env)
    assert b"".join(env.flatten()) == raw + BODY


def test_build_date_can_be_overridden() -> None:
    class Fixed(AddDateHeader):
        def build_date(self, timestamp: float) -> str:
            return f"at {timestamp:.0f}"

    env = make_envelope()
    Fixed().apply(env)
    assert added_line(env) == b"Date: at 1700000000"


def test_add_message_id_header() -> None:
    env = make_envelope()
    AddMessageIdHeader("relay.test").apply(env)
    assert re.fullmatch(rb"Message-Id: <[0-9a-f]{32}\.1700000000@relay\.test>", added_line(env))
    env2 = make_envelope(data=b"Message-ID: <x@y>\r\n" + RAW_HEADERS + BODY)
    AddMessageIdHeader("relay.test").apply(env2)
    assert b"".join(env2.flatten()) == b"Message-ID: <x@y>\r\n" + RAW_HEADERS + BODY
    assert AddMessageIdHeader().hostname


def test_add_received_header_is_an_rfc5321_trace_line() -> None:
    env = make_envelope()
    env.client = {"name": "client.src.test", "host": "rdns.src.test", "ip": "192.0.2.7",
                  "protocol": "ESMTPS"}  # fmt: skip
    env.receiver = "mx.relay.test"
    AddReceivedHeader().apply(env)
    assert added_line(env) == (
        b"Received: from client.src.test (rdns.src.test [192.0.2.7]) by mx.relay.test"
        b" (slimta-relay " + __version__.encode() + b") with ESMTPS for <rcpt@dst.test>;"
        b" Tue, 14 Nov 2023 22:13:20 +0000"
    )


def test_received_header_with_unknown_client_ipv6_and_several_recipients() -> None:
    env = make_envelope(rcpts=("a@dst.test", "b@dst.test"))
    env.receiver = "mx.relay.test"
    AddReceivedHeader(date_format="%d %b %Y").apply(env)
    assert added_line(env) == (
        b"Received: from unknown (unknown [unknown]) by mx.relay.test (slimta-relay "
        + __version__.encode()
        + b"); 14 Nov 2023"
    )
    env = make_envelope()
    env.client = {"name": "c", "host": "h", "ip": "2001:db8::1"}
    AddReceivedHeader().apply(env)
    assert b"(h [IPv6:2001:db8::1])" in added_line(env)


def test_received_header_values_cannot_inject_lines() -> None:
    env = make_envelope(rcpts=("a@dst.test\r\nBcc: x@y",))
    env.client = {"name": "evil\r\nX-Injected: 1", "ip": "192.0.2.1"}
    AddReceivedHeader().apply(env)
    header = env.flatten()[0]
    assert b"\r\nX-Injected" not in header and b"\r\nBcc" not in header


def test_version_is_the_installed_distribution() -> None:
    from importlib.metadata import version

    assert __version__ == version("slimta-relay")


@pytest.mark.parametrize(
    "policy", [AddDateHeader(), AddMessageIdHeader("h.test"), AddReceivedHeader()]
)
def test_envelopes_without_headers_are_left_alone(policy) -> None:
    env = Envelope("a@x.test", ["b@y.test"])
    policy.apply(env)
    assert env.headers is None


def test_all_three_stack_on_top_in_order() -> None:
    env = make_envelope()
    for policy in (AddDateHeader(), AddMessageIdHeader("h.test"), AddReceivedHeader()):
        policy.apply(env)
    header = env.flatten()[0]
    names = [line.split(b":", 1)[0] for line in header.split(b"\r\n")[:-2]
             if line and line[:1] not in b" \t"]  # fmt: skip
    assert names[:3] == [b"Received", b"Message-Id", b"Date"]
    assert header.endswith(RAW_HEADERS)
