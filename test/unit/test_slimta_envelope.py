import copy as _copy
import pickle
from email.encoders import encode_base64
from email.message import Message

import pytest
from support.corpus import corpus_names, load
from support.envelopes import record_splits

import slimta.envelope as envelope_module
from slimta.envelope import Envelope
from slimta.envelope._headers import read_block

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
    # Relayed as given: no empty line is invented in front of it.
    assert env.flatten() == (b"", b"no header boundary")
    env.prepend_header("Received", "by x")
    # A field added to a message that had none gets the empty line it needs.
    assert env.flatten() == (b"Received: by x\r\n\r\n", b"no header boundary")


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


# --- byte-faithful header block --------------------------------------------

import re  # noqa: E402
from email.parser import BytesParser  # noqa: E402
from email.policy import SMTP  # noqa: E402

from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

MULTIPART = (
    b"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.com>\r\n"
    b"To:bob@example.net\r\n"
    b"Subject:   spaced   \r\n"
    b"List-Unsubscribe: <https://example.com/unsubscribe/" + b"x" * 140 + b">\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s1;\r\n"
    b"\th=from:to:subject; b=" + b"A" * 300 + b"\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"preamble text\r\n"
    b"--outer\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"caf\xc3\xa9 cr\xc3\xa8me\r\n"
    b"--outer\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"plain ascii part\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"Subject: inner\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"inn\xc3\xa9r body\r\n"
    b"--outer--\r\n"
    b"epilogue \xff bytes\r\n"
)


def test_multipart_and_forward_flatten_byte_for_byte():
    env = Envelope("a@example.com", ["b@example.net"])
    env.parse(MULTIPART)
    header, body = env.flatten()
    assert header + body == MULTIPART
    assert body is env.message  # the body is never copied
    assert env.headers["To"] == "bob@example.net"
    assert env.headers["Subject"] == "spaced   "
    assert env.headers["From"] == "Jörg <jorg@example.com>"
    assert env.headers.get_content_type() == "multipart/mixed"


def test_changed_fields_only_are_serialised():
    env = Envelope()
    env.parse(MULTIPART)
    header = env.flatten()[0]
    lines = header.split(b"\r\n")
    env.headers.replace_header("Subject", "new")
    del env.headers["To"]
    env.headers["X-Added"] = "yes"
    env.prepend_header("Received", "from a by b; Mon, 1 Jan 2024 00:00:00 +0000")
    changed = env.flatten()[0].split(b"\r\n")
    assert changed[0] == b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000"
    expected = [line for line in lines if not line.startswith((b"To:", b"Subject:"))]
    # Subject was replaced in place; To removed; X-Added appended at the end.
    assert changed[1] == lines[0]
    assert b"Subject: new" in changed
    assert changed.index(b"Subject: new") == 2
    assert [line for line in changed[1:] if line not in (b"Subject: new", b"X-Added: yes")] == (
        expected
    )
    assert changed[-3] == b"X-Added: yes"
    assert env.flatten()[1] == MULTIPART[len(header) :]


def test_flatten_never_runs_the_generator(monkeypatch):
    import email.generator

    def boom(*args, **kwargs):
        raise AssertionError("the email generator was used")

    monkeypatch.setattr(email.generator.BytesGenerator, "flatten", boom)
    env = Envelope()
    env.parse(MULTIPART)
    env.prepend_header("Received", "by x")
    env.flatten()
    env.copy().flatten()


def test_message_without_parse_is_serialised_field_by_field():
    msg = Message()
    msg["Content-Type"] = 'multipart/alternative; boundary="b"'
    msg["Subject"] = "s"
    env = Envelope("a@x", ["b@x"], msg, b"--b\r\n\r\nx\r\n--b--\r\n")
    header, body = env.flatten()
    assert header == b'Content-Type: multipart/alternative; boundary="b"\r\nSubject: s\r\n\r\n'


def test_copy_keeps_raw_bytes_and_program_attributes():
    class MyEnvelope(Envelope):
        pass

    env = MyEnvelope("a@x", ["b@x", "c@x"])
    env.parse(MULTIPART)
    env.program_data = {"tenant": ["t1"]}  # type: ignore[attr-defined]
    env.prepend_header("X-Tenant", "t1")
    flat = env.flatten()
    other = env.copy(["c@x"])
    assert type(other) is MyEnvelope
    assert other.recipients == ["c@x"] and env.recipients == ["b@x", "c@x"]
    assert other.flatten() == flat
    assert other.message is env.message
    assert other.program_data == {"tenant": ["t1"]}  # type: ignore[attr-defined]
    other.program_data["tenant"].append("t2")  # type: ignore[attr-defined]
    assert env.program_data == {"tenant": ["t1"]}  # type: ignore[attr-defined]
    other.headers.replace_header("Subject", "changed")
    assert env.flatten() == flat
    assert b"Subject: changed\r\n" in other.flatten()[0]


def test_encode_7bit_changes_only_the_8bit_parts():
    env = Envelope()
    env.parse(MULTIPART)
    header = env.flatten()[0]
    env.encode_7bit(encode_base64)
    new_header, body = env.flatten()
    assert new_header == header  # the top-level fields are untouched
    assert body.startswith(b"preamble text\r\n--outer\r\n")
    assert b"--outer\r\nContent-Type: text/plain\r\n\r\nplain ascii part\r\n--outer\r\n" in body
    assert b"--outer--\r\nepilogue \xff bytes\r\n" in body  # epilogues are not touched
    assert b"Content-Transfer-Encoding: 8bit" not in body
    import base64

    first = body.split(b"--outer\r\n")[1]
    part_header, encoded = first.split(b"\r\n\r\n", 1)
    assert part_header == (
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64"
    )
    assert base64.b64decode(encoded) == b"caf\xc3\xa9 cr\xc3\xa8me"
    inner = body.split(b"--outer\r\n")[3]
    assert inner.startswith(b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n")
    assert b"Content-Transfer-Encoding: base64\r\n\r\n" in inner
    assert body[: body.index(b"--outer--")].isascii()


def test_encode_7bit_single_part_keeps_other_fields():
    raw = b"Subject:  keep  me\r\nContent-Transfer-Encoding: 8bit\r\nX-Z:z\r\n\r\n\xc3\xa9\r\n"
    env = Envelope()
    env.parse(raw)
    env.encode_7bit(encode_base64)
    header, body = env.flatten()
    assert header == (b"Subject:  keep  me\r\nX-Z:z\r\nContent-Transfer-Encoding: base64\r\n\r\n")
    assert body == b"w6kNCg==\r\n"


def _lines_crlf(data: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


header_lines = st.one_of(
    st.from_regex(rb"\A[A-Za-z-]{1,12}:[ \t]{0,3}[\x20-\x7e\x80-\xff]{0,40}\Z"),
    st.from_regex(rb"\A[ \t][\x20-\x7e]{0,30}\Z"),
    st.binary(max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(header_lines, max_size=8),
    st.sampled_from([b"\r\n", b"\n", b"\r"]),
    st.booleans(),
    st.binary(max_size=60),
)
def test_parse_flatten_is_faithful_and_matches_the_email_parser(lines, eol, blank, body):
    data = eol.join(lines) + (eol + eol if blank else b"") + body
    env = Envelope()
    env.parse(data)  # never raises
    header, message = env.flatten()
    assume(not re.search(rb"(^|\n)[ \t]+\r?\n", data))  # blanks on the empty line
    assert _lines_crlf(header + message) == _lines_crlf(data)
    # The fields read match what the email package reads from the same block.
    end = len(data) - len(message)
    reference = BytesParser(policy=SMTP).parsebytes(data[:end], headersonly=True)
    assert [k for k, _ in env.headers.raw_items()] == list(reference.keys())
    assert [v.replace("\r\n", "\n") for _, v in env.headers.raw_items()] == [
        v.replace("\r\n", "\n").replace("\r", "\n") for _, v in reference.raw_items()
    ]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_parse_and_flatten_never_raise(data):
    env = Envelope()
    env.parse(data)
    env.flatten()
    env.prepend_header("Received", "by x")
    env.copy().flatten()


def test_prepend_header_folds_long_values_and_refuses_injection():
    env = Envelope()
    env.parse(RAW)
    value = (
        "from mail.example.com (mail.example.com [192.0.2.1]) by relay.example.net"
        " with ESMTPS id 123abc for <bob@example.net>; Tue, 01 Dec 2026 10:00:00 +0000"
    )
    env.prepend_header("Received", value)
    header = env.flatten()[0]
    first = header[: header.index(b"From: a@example.com")]
    assert all(len(line) <= 78 for line in first.split(b"\r\n"))
    # Unfolding gives back the value exactly.
    assert first.replace(b"\r\n ", b" ") == b"Received: " + value.encode() + b"\r\n"
    assert env.headers["Received"] == value
    for name, bad in (("X", "a\r\nBcc: x@y"), ("X", "a\nb"), ("Bad Name", "v"), ("A:B", "v")):
        with pytest.raises(ValueError):
            env.prepend_header(name, bad)
    assert env.flatten()[0] == header


def test_header_objects_set_by_code_use_the_policy():
    env = Envelope()
    env.parse(RAW)
    env.headers["To"] = "Jörg <j@example.com>"
    assert env.flatten()[0].endswith(b"To: =?utf-8?q?J=C3=B6rg?= <j@example.com>\r\n\r\n")


# -- fields read only when asked for ---------------------------------------------

@pytest.fixture
def field_reads(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every block Envelope reads into fields after parse() deferred it."""
    reads: list[bytes] = []
    real = envelope_module.read_fields

    def counting(head: bytes, separator: bytes, *args: object) -> object:
        reads.append(head)
        return real(head, separator, *args)

    monkeypatch.setattr(envelope_module, "read_fields", counting)
    return reads


def test_flatten_of_a_parsed_message_reads_no_field(field_reads: list[bytes]) -> None:
    env = Envelope()
    env.parse(RAW)
    assert env.message == b"line one\r\n.dot line\r\n"
    assert b"".join(env.flatten()) == RAW
    assert env.flatten()[0] is env.flatten()[0]
    assert field_reads == []
    assert env.headers["Subject"] == "hello"
    assert env.headers["From"] == "a@example.com"
    assert field_reads == [b"From: a@example.com\r\nSubject: hello\r\n"]  # once


@pytest.mark.parametrize("name", corpus_names())
def test_deferred_fields_match_an_eager_read(name: str) -> None:
    data = load(name)
    eager_block, eager_body = read_block(data)
    env = Envelope()
    env.parse(data)
    assert env.message == eager_body
    assert env.flatten()[0] == eager_block.data  # before the fields are read
    assert env.headers is not None
    assert list(env.headers.items()) == list(eager_block.message.items())
    assert env.flatten()[0] == eager_block.data  # after
    env.headers["X-Added"] = "yes"
    assert env.flatten()[0].startswith(eager_block.data[: -2])


@pytest.mark.parametrize(
    ("data", "header", "body"),
    [
        (b"Subject: a\r\n", b"Subject: a\r\n", b""),  # no empty line at all
        (b"Subject: a\r\n \t\r\nbody", b"Subject: a\r\n\r\n", b"body"),  # blanks on it
        (b"Subject: a\r\n\tfolded\r\n\r\n", b"Subject: a\r\n\tfolded\r\n\r\n", b""),
        (b"\r\nbody only\r\n", b"\r\n", b"body only\r\n"),  # no fields
        (b"Subject: a\nTo: b\n\nbody\n", b"Subject: a\r\nTo: b\r\n\r\n", b"body\n"),  # LF
        (b"Subject: a\r\nnot a field\r\n\r\nbody", b"Subject: a\r\n", b"not a field\r\n\r\nbody"),
    ],
)
def test_blocks_read_now_and_later_agree(data: bytes, header: bytes, body: bytes) -> None:
    env = Envelope()
    env.parse(data)
    assert env.flatten() == (header, body)
    later = Envelope()
    later.parse(data)
    assert later.headers is not None
    assert later.flatten() == (header, body)
    assert list(later.headers.items()) == list(read_block(data)[0].message.items())


def test_headers_set_before_they_are_read_replace_the_block(field_reads: list[bytes]) -> None:
    env = Envelope()
    env.parse(RAW)
    replacement = Message()
    replacement["Subject"] = "new"
    env.headers = replacement
    assert env.headers is replacement
    assert env.flatten() == (b"Subject: new\r\n\r\n", b"line one\r\n.dot line\r\n")
    assert field_reads == []


def test_a_copy_of_an_unread_block_is_independent(field_reads: list[bytes]) -> None:
    env = Envelope("a@example.com", ["b@example.com"])
    env.parse(RAW)
    twin = env.copy(["c@example.com"])
    assert field_reads == []
    assert twin.flatten() == env.flatten() and twin.recipients == ["c@example.com"]
    twin.prepend_header("X-Twin", "1")
    assert twin.flatten()[0] == b"X-Twin: 1\r\n" + env.flatten()[0]
    assert env.flatten()[0] == RAW.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert "X-Twin" not in env.headers


def test_pickles_with_and_without_unread_fields_load() -> None:
    env = Envelope("a@example.com", ["b@example.com"])
    env.parse(RAW)
    unread = pickle.loads(pickle.dumps(env))
    assert unread.flatten() == env.flatten() and unread.headers["Subject"] == "hello"
    read = pickle.loads(pickle.dumps(unread))
    assert read.headers["Subject"] == "hello" and read.flatten() == env.flatten()
    # What older releases pickled: headers and message as plain attributes.
    legacy = Envelope.__new__(Envelope)
    state = {key: value for key, value in vars(read).items() if not key.startswith("_")}
    state["headers"] = read.headers
    state["message"] = read.message
    legacy.__setstate__(_copy.deepcopy(state))
    assert legacy.headers is not None and legacy.headers["Subject"] == "hello"
    assert legacy.flatten()[0] == b"From: a@example.com\r\nSubject: hello\r\n\r\n"
    assert legacy.message == read.message


@pytest.fixture
def splits(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every split of raw bytes into header block and body, in order."""
    return record_splits(monkeypatch)


@pytest.mark.parametrize("first", ["message", "headers", "flatten"])
def test_deferred_parse_splits_only_when_the_message_is_first_used(
    splits: list[bytes], first: str
) -> None:
    env = Envelope()
    env.parse(RAW, deferred=True)
    assert splits == []
    if first == "message":
        assert env.message == b"line one\r\n.dot line\r\n"
    elif first == "headers":
        assert env.headers is not None and env.headers["Subject"] == "hello"
    else:
        assert env.flatten() == (b"From: a@example.com\r\nSubject: hello\r\n\r\n",
                                 b"line one\r\n.dot line\r\n")
    assert env.message == b"line one\r\n.dot line\r\n"
    assert env.flatten()[0] == b"From: a@example.com\r\nSubject: hello\r\n\r\n"
    assert splits == [RAW]  # once


def test_message_set_before_the_split_keeps_the_parsed_headers(splits: list[bytes]) -> None:
    env = Envelope()
    env.parse(RAW, deferred=True)
    env.message = b"new body\r\n"
    assert env.flatten() == (b"From: a@example.com\r\nSubject: hello\r\n\r\n", b"new body\r\n")


def test_headers_set_before_the_split_keep_the_parsed_body(splits: list[bytes]) -> None:
    env = Envelope()
    env.parse(RAW, deferred=True)
    env.headers = None
    assert env.message == b"line one\r\n.dot line\r\n"


def test_a_second_parse_replaces_an_unsplit_first(splits: list[bytes]) -> None:
    env = Envelope()
    env.parse(RAW, deferred=True)
    env.parse(b"Subject: two\r\n\r\nsecond\r\n", deferred=True)
    assert env.flatten() == (b"Subject: two\r\n\r\n", b"second\r\n")
    assert splits == [b"Subject: two\r\n\r\nsecond\r\n"]


def test_an_unsplit_envelope_copies_and_pickles(splits: list[bytes]) -> None:
    env = Envelope("a@example.com", ["b@example.com"])
    env.parse(RAW, deferred=True)
    twin = env.copy(["c@example.com"])
    loaded = pickle.loads(pickle.dumps(env))
    assert splits == []
    for other in (twin, loaded):
        assert other.flatten() == env.flatten()
        assert other.headers["Subject"] == "hello"
    twin.message = b"changed\r\n"
    assert env.message == b"line one\r\n.dot line\r\n"


def test_message_is_not_an_instance_attribute_programs_see() -> None:
    # The queue codec stores the attributes a program set on the envelope
    # (vars() without the private ones); message must not be one of them.
    env = Envelope("a@example.com", ["b@example.com"])
    env.parse(RAW, deferred=True)
    assert "message" not in vars(env) and "headers" not in vars(env)
    assert Envelope(message=b"x").message == b"x"


def test_parse_splits_at_once_unless_deferred(splits: list[bytes]) -> None:
    Envelope().parse(RAW)
    assert splits == [RAW]
    Envelope().parse(RAW, deferred=True)
    assert splits == [RAW]


@pytest.mark.parametrize("name", corpus_names())
def test_deferred_and_immediate_parse_agree(name: str) -> None:
    data = load(name)
    now, later = Envelope(), Envelope()
    now.parse(data)
    later.parse(data, deferred=True)
    assert later.flatten() == now.flatten()
    assert later.message == now.message
    assert list(later.headers.items()) == list(now.headers.items())  # type: ignore[union-attr]


# all_fields() against the whole-block pattern it replaced (one regex pass over
# every byte): both must accept exactly the same blocks.
_WHOLE_BLOCK_RE = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)+")
_BLOCK_PIECES = st.sampled_from(
    [b"Subject: x", b"To:", b"X-A:b", b"\r\n", b"\r", b"\n", b" ", b"\t", b":", b"a", b"\x7f",
     b"\xe9", b"\r\n ", b"\r\n\t", b"\r\n\r\n", b"Bad line", b"\x00"]
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(_BLOCK_PIECES, max_size=10).map(b"".join))
def test_all_fields_accepts_what_the_whole_block_pattern_accepts(head: bytes) -> None:
    from slimta.envelope._headers import all_fields

    assert all_fields(head) == (_WHOLE_BLOCK_RE.fullmatch(head) is not None)


@pytest.mark.parametrize("name", corpus_names())
def test_all_fields_agrees_on_the_corpus(name: str) -> None:
    from slimta.envelope._headers import all_fields, split_block

    head = split_block(load(name))[0]
    assert all_fields(head) == (_WHOLE_BLOCK_RE.fullmatch(head) is not None)
