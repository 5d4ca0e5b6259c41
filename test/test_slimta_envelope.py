from email.encoders import encode_base64
from email.message import Message

import pytest

from slimta.envelope import Envelope

RAW = b"From: a@example.com\r\nSubject: hello\r\n\r\nline one\r\n.dot line\r\n"


def test_defaults():
    env = Envelope()
    assert env.sender is None and env.recipients == [] and env.headers is None
    assert env.message is None and env.client == {}
    assert env.receiver is None and env.timestamp is None
    assert Envelope(recipients=[]).recipients is not Envelope(recipients=[]).recipients


def test_parse_flatten_round_trip():
    env = Envelope("a@example.com", ["b@example.com"])
    env.parse(RAW)
    assert env.headers["Subject"] == "hello"
    assert env.message == b"line one\r\n.dot line\r\n"
    header, body = env.flatten()
    assert header + body == RAW


def test_parse_lf_and_blank_with_whitespace():
    env = Envelope()
    env.parse(b"Subject: x\n \nbody\n")
    assert env.headers["Subject"] == "x"
    assert env.message == b"body\n"
    assert env.flatten()[0] == b"Subject: x\r\n\r\n"


def test_parse_without_boundary_keeps_text():
    env = Envelope()
    env.parse(b"no header boundary")
    assert list(env.headers.items()) == []
    assert env.message == b"no header boundary"
    assert env.flatten() == (b"\r\n", b"no header boundary")


def test_parse_puts_back_non_header_text():
    env = Envelope()
    env.parse(b"Subject: x\nnot a header\n\nrest")
    assert env.headers["Subject"] == "x"
    assert env.message == b"not a header\n\nrest"


def test_flatten_without_message_raises():
    with pytest.raises(ValueError):
        Envelope().flatten()


def test_prepend_header_goes_first_and_invalidates_cache():
    env = Envelope()
    env.parse(RAW)
    before = env.flatten()[0]
    assert env.flatten()[0] is before  # cached: not serialised again
    env.prepend_header("Received", "from x by y")
    header = env.flatten()[0]
    assert header.startswith(b"Received: from x by y\r\nFrom: a@example.com\r\n")
    env.headers["X-New"] = "1"
    assert env.flatten()[0].endswith(b"X-New: 1\r\n\r\n")


def test_copy_is_deep():
    env = Envelope("s@x", ["r1@x", "r2@x"])
    env.parse(RAW)
    env.client["ip"] = "192.0.2.1"
    env.timestamp = 12.5
    other = env.copy()
    assert other.recipients == ["r1@x", "r2@x"]
    other.recipients.append("r3@x")
    other.headers["X"] = "y"
    other.client["ip"] = "x"
    assert env.recipients == ["r1@x", "r2@x"]
    assert "X" not in env.headers and env.client["ip"] == "192.0.2.1"
    assert other.timestamp == 12.5 and other.flatten()[1] == env.message
    assert env.copy(["only@x"]).recipients == ["only@x"]
    assert env.copy([]).recipients == ["r1@x", "r2@x"]


def test_encode_7bit():
    env = Envelope()
    env.parse(b"Subject: t\r\n\r\nascii only\r\n")
    env.encode_7bit()
    assert env.message == b"ascii only\r\n"
    env.parse(b"Subject: t\r\n\r\ncaf\xc3\xa9\r\n")
    with pytest.raises(UnicodeDecodeError):
        env.encode_7bit()
    env.encode_7bit(encode_base64)
    header, body = env.flatten()
    assert b"Content-Transfer-Encoding: base64" in header
    assert body.isascii()
    import base64

    assert base64.b64decode(body) == b"caf\xc3\xa9\r\n"


def test_parse_msg_and_repr():
    msg = Message()
    msg["Subject"] = "s"
    msg.set_payload("hello\n")
    env = Envelope("x@y")
    env.parse_msg(msg)
    assert env.headers["Subject"] == "s"
    assert env.message == b"hello\r\n"
    assert repr(env).startswith("<Envelope at 0x") and "sender='x@y'" in repr(env)
