"""slimta.bounce.Bounce: a real RFC 3464 report that carries the original bytes."""

from __future__ import annotations

import email
import email.policy
from email.message import Message
from functools import partial

import pytest
from support import envelopes

from slimta.bounce import Bounce
from slimta.envelope import Envelope
from slimta.smtp.reply import Reply

#: Header lines the email package would refold or rewrite if it serialised them.
ORIGINAL = (
    b"From: =?utf-8?q?J=C3=B6rg?= <jorg@src.test>\r\n"
    b"To: rcpt@dst.test\r\n"
    b"X-Foo:bar\r\n"
    b"X-Trailing: value \t\r\n"
    b"Subject: a subject that is folded\r\n"
    b"\tover two lines\r\n"
    b"List-Unsubscribe: <https://example.test/unsubscribe/" + b"x" * 120 + b">\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe\r\n"
    b"--not-a-boundary\r\n"
    b"last line\r\n"
)


make_envelope = partial(
    envelopes.make_envelope,
    sender="jorg@src.test",
    rcpts=("rcpt@dst.test",),
    data=ORIGINAL,
    timestamp=1_700_000_000.0,
    client={"name": "client.src.test", "ip": "192.0.2.7", "protocol": "ESMTPS"},
    receiver="mx.relay.test",
)


def reply_550() -> Reply:
    reply = Reply("550", "5.1.1 <rcpt@dst.test> User unknown")
    reply.address = ("mx.dst.test", 25)
    return reply


def bounce_bytes(bounce: Bounce) -> bytes:
    header, body = bounce.flatten()
    return header + body


def parts(bounce: Bounce) -> list[Message]:
    msg = email.message_from_bytes(bounce_bytes(bounce), policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return payload


def status_blocks(bounce: Bounce) -> list[dict[str, str]]:
    """The delivery-status part, as one dict per block (per-message first)."""
    raw = bounce_bytes(bounce)
    start = raw.index(b"Content-Type: message/delivery-status")
    body = raw[raw.index(b"\r\n\r\n", start) + 4 : raw.index(b"\r\n--", start)]
    blocks = []
    for chunk in body.split(b"\r\n\r\n"):
        fields = {}
        for line in chunk.split(b"\r\n"):
            name, _, value = line.decode("utf-8").partition(": ")
            fields[name] = value
        blocks.append(fields)
    return blocks


def test_envelope_of_the_bounce() -> None:
    env = make_envelope()
    bounce = Bounce(env, reply_550())
    assert isinstance(bounce, Envelope)
    assert bounce.sender == "" and bounce.recipients == ["jorg@src.test"]
    assert bounce.client == {"name": "postmaster", "ip": "127.0.0.1", "host": "localhost"}
    assert bounce.client is not Bounce.client
    assert bounce.receiver == "mx.relay.test" and bounce.timestamp is not None
    assert bounce.headers is not None
    assert b"\r\nTo: <jorg@src.test>\r\n" in bounce.flatten()[0]
    assert bounce.headers["Auto-Submitted"] == "auto-replied"


def test_report_structure_and_per_recipient_fields() -> None:
    bounce = Bounce(make_envelope(rcpts=("rcpt@dst.test", "other@dst.test")), reply_550())
    text, status, original = parts(bounce)
    assert text.get_content_type() == "text/plain"
    notice = text.get_payload(decode=True)
    assert isinstance(notice, bytes)
    assert b"- rcpt@dst.test\r\n- other@dst.test" in notice
    assert b"550 5.1.1 <rcpt@dst.test> User unknown" in notice
    assert status.get_content_type() == "message/delivery-status"
    assert original.get_content_type() == "message/rfc822"
    per_message, *per_rcpt = status_blocks(bounce)
    assert per_message["Reporting-MTA"] == "dns; mx.relay.test"
    assert per_message["Received-From-MTA"] == "dns; client.src.test (192.0.2.7)"
    assert per_message["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert [block["Final-Recipient"] for block in per_rcpt] == [
        "rfc822; rcpt@dst.test",
        "rfc822; other@dst.test",
    ]
    for block in per_rcpt:
        assert block["Action"] == "failed"
        assert block["Status"] == "5.1.1"
        assert block["Remote-MTA"] == "dns; mx.dst.test"
        assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 <rcpt@dst.test> User unknown"
        assert "Last-Attempt-Date" in block


def test_the_original_message_is_embedded_byte_for_byte() -> None:
    env = make_envelope()
    header, body = env.flatten()
    raw = bounce_bytes(Bounce(env, reply_550()))
    start = raw.index(b"Content-Type: message/rfc822")
    start = raw.index(b"\r\n\r\n", start) + 4
    assert raw[start : start + len(header) + len(body)] == header + body
    assert header + body == ORIGINAL
    assert raw.endswith(ORIGINAL + b"\r\n--" + raw.rsplit(b"\r\n--", 1)[1])
    assert raw.endswith(b"--\r\n")


def test_headers_only() -> None:
    env = make_envelope()
    raw = bounce_bytes(Bounce(env, reply_550(), headers_only=True))
    assert b"Content-Type: text/rfc822-headers" in raw
    assert env.flatten()[0] in raw
    assert b"last line" not in raw


def test_status_without_enhanced_code_and_without_address() -> None:
    reply = Reply("450", "Mailbox busy")
    reply.enhanced_status_code = False
    bounce = Bounce(make_envelope(), reply)
    block = status_blocks(bounce)[1]
    assert block["Status"] == "4.0.0"
    assert "Remote-MTA" not in block
    assert block["Diagnostic-Code"] == "smtp; 450 Mailbox busy"


def test_no_header_injection_through_reply_or_addresses() -> None:
    env = make_envelope(rcpts=("evil@dst.test\r\nBcc: victim@x.test",))
    reply = Reply("550", "5.0.0 bad\r\nX-Injected: yes")
    raw = bounce_bytes(Bounce(env, reply))
    assert b"\r\nX-Injected" not in raw and b"\r\nBcc:" not in raw
    assert b"\nBcc" not in raw.replace(ORIGINAL, b"")


def test_utf8_recipient_uses_the_utf8_address_type() -> None:
    bounce = Bounce(make_envelope(rcpts=("jürgen@dst.test",)), reply_550())
    assert status_blocks(bounce)[1]["Final-Recipient"] == "utf-8; jürgen@dst.test"


def test_envelope_without_message() -> None:
    env = Envelope("s@x.test", ["r@y.test"])
    bounce = Bounce(env, reply_550())
    assert parts(bounce)[2].get_content_type() == "message/rfc822"


class CustomBounce(Bounce):
    sender = "postmaster@relay.test"
    client = {"name": "custom", "ip": "::1", "host": "relay.test"}
    receiver = "bounces.relay.test"
    recipient_join = ", "
    header_template = (
        "From: postmaster@relay.test\n"
        "To: {sender}\n"
        "Subject: failed: {code}\n"
        "X-Unknown: [{no_such_key}]\n"
        "\n"
        "Failed for {recipients}: {message}\n"
        "---\n"
    )
    footer_template = b"\n-- end {code}\n"


def test_subclass_attributes_and_templates() -> None:
    bounce = CustomBounce(make_envelope(rcpts=("a@dst.test", "b@dst.test")), reply_550())
    raw = bounce_bytes(bounce)
    assert bounce.sender == "postmaster@relay.test"
    assert bounce.client["name"] == "custom" and bounce.receiver == "bounces.relay.test"
    assert raw.startswith(b"From: postmaster@relay.test\r\nTo: jorg@src.test\r\n")
    assert b"Subject: failed: 550\r\nX-Unknown: []\r\n\r\n" in raw
    assert b"Failed for a@dst.test, b@dst.test: 5.1.1 <rcpt@dst.test> User unknown\r\n" in raw
    assert raw.endswith(ORIGINAL + b"\r\n-- end 550\r\n")


class FormatObject:
    def format(self, **values: object) -> bytes:
        return b"Subject: object " + str(values["code"]).encode() + b"\r\n\r\n"


def test_template_objects_with_a_format_method() -> None:
    class ObjectBounce(Bounce):
        header_template = FormatObject()
        footer_template = b""

    raw = bounce_bytes(ObjectBounce(make_envelope(), reply_550()))
    assert raw.startswith(b"Subject: object 550\r\n\r\n")


@pytest.mark.parametrize("headers_only", [False, True])
def test_bounce_of_a_bounce_shape(headers_only: bool) -> None:
    first = Bounce(make_envelope(), reply_550())
    first.sender = "someone@src.test"  # pretend it had a sender, to bounce it
    second = Bounce(first, reply_550(), headers_only)
    assert bounce_bytes(first).split(b"\r\n\r\n", 1)[0] in bounce_bytes(second)
