"""Envelope.parse()/flatten() on real-world messages: byte for byte (issue 12).

Every file in ``test/data/corpus`` is parsed and flattened without any server. The
contract: ``b''.join(flatten())`` is the input with only bare CR/LF made CRLF in the
header block (the body is returned as stored; the SMTP data sender normalises it on
the wire). Header edits through the public API serialise only the fields they touch;
every other line keeps its bytes, order and folding. ``Envelope.headers`` still reads
decoded values, and no input makes parse or flatten raise.
"""

from __future__ import annotations

import importlib.util
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.corpus import (
    CORPUS_DIR,
    REJECTED,
    HeaderModel,
    corpus_names,
    expected_flatten,
    load,
    normalize_eol,
    reference_headers,
    split_header_block,
    well_formed_names,
)

from slimta.envelope import Envelope

ALL = corpus_names()
WELL_FORMED = well_formed_names()
#: Short enough that the policy writes ``Received: <value>`` on one line.
RECEIVED = "from relay.example.test ([192.0.2.1]) by mx.example.test; x"


def parsed(name: str) -> Envelope:
    env = Envelope("sender@example.test", ["alice@example.test"])
    env.parse(load(name))
    return env


def flat(env: Envelope) -> bytes:
    return b"".join(env.flatten())


def first_difference(got: bytes, want: bytes) -> str:
    """A short report of where two byte strings part, for assertion messages."""
    index = next(
        (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
        min(len(got), len(want)),
    )
    start = max(0, index - 60)
    return (
        f"first difference at byte {index} (got {len(got)} bytes, want {len(want)}):\n"
        f"  got:  {got[start:index + 60]!r}\n  want: {want[start:index + 60]!r}"
    )


def assert_bytes(got: bytes, want: bytes) -> None:
    assert got == want, first_difference(got, want)


# -- the corpus itself --------------------------------------------------------------------


def test_corpus_covers_the_issue_cases() -> None:
    assert len(ALL) >= 21
    data = {name: load(name) for name in ALL}
    joined = b"".join(data.values())
    for needle in (
        b"multipart/alternative",
        b"multipart/digest",
        b"message/rfc822",
        b"multipart/report; report-type=delivery-status",
        b"message/delivery-status",
        b"text/rfc822-headers",
        b"Content-Transfer-Encoding: 8bit",
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        b"ARC-Seal:",
        b"Authentication-Results:",
        b"=?UTF-8?B?",
        b"X-Foo:bar\r\n",
        b"X-Trailing: value with trailing blanks   \r\n",
        b"From:   Frank",
        b"\r\n\tby ",
        b"\r\n        by ",
    ):
        assert needle in joined, needle
    long_lines = [line for line in joined.split(b"\r\n") if len(line) == 998]
    assert long_lines, "no 998-octet line"
    assert b"\r" not in data["14-bare-lf-cron.eml"]
    assert b"\r\n\r\n" not in data["13-header-only.eml"]
    assert data["12-no-body.eml"].endswith(b"\r\n\r\n")
    assert not data["19-no-final-newline.eml"].endswith(b"\n")
    assert b"\xc3\xb6" in split_header_block(data["07-smtputf8-headers.eml"])[0]
    assert data["17-bad-leading-continuation.eml"].startswith(b" ")


def test_corpus_files_match_their_generator() -> None:
    path = os.path.join(CORPUS_DIR, "make_corpus.py")
    spec = importlib.util.spec_from_file_location("make_corpus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build_all()
    assert sorted(built) == ALL
    for name, data in built.items():
        assert data == load(name), f"{name} differs from make_corpus.py"


# -- untouched headers: flatten returns what parse got ---------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_flatten_returns_the_input(name: str) -> None:
    data = load(name)
    env = parsed(name)
    header_data, body = env.flatten()
    assert isinstance(header_data, bytes) and isinstance(body, bytes)
    assert_bytes(header_data + body, expected_flatten(data))
    # Flattening again (a retry) gives the same bytes.
    assert_bytes(flat(env), expected_flatten(data))


@pytest.mark.parametrize("name", WELL_FORMED)
def test_body_is_kept_as_given(name: str) -> None:
    data = load(name)
    fields, blank, body = split_header_block(data)
    env = parsed(name)
    assert env.message == body
    header_data, flat_body = env.flatten()
    assert flat_body == body
    assert header_data == normalize_eol(fields + blank)


@pytest.mark.parametrize("name", ALL)
def test_copy_round_trips(name: str) -> None:
    data = load(name)
    env = parsed(name)
    env.receiver = "mx.example.test"
    env.timestamp = 1678781563.5
    env.client = {"ip": "192.0.2.1", "name": "client.example.test"}
    env.program_data = {"queue_id": "abc", "tags": ["corpus"]}  # type: ignore[attr-defined]
    copy = env.copy()
    assert_bytes(flat(copy), expected_flatten(data))
    assert copy.program_data == {"queue_id": "abc", "tags": ["corpus"]}  # type: ignore[attr-defined]
    assert copy.program_data is not env.program_data  # type: ignore[attr-defined]
    assert (copy.receiver, copy.timestamp, copy.client) == (
        env.receiver,
        env.timestamp,
        env.client,
    )
    other = env.copy(["bob@example.test"])
    assert other.recipients == ["bob@example.test"]
    assert_bytes(flat(other), expected_flatten(data))
    # The copy is independent: a header added to it leaves the original alone.
    copy.prepend_header("X-Copy", "yes")
    assert_bytes(flat(env), expected_flatten(data))
    model = HeaderModel.from_message(data)
    model.prepend("X-Copy", "yes")
    assert_bytes(flat(copy), model.flat())


@pytest.mark.parametrize("name", WELL_FORMED)
def test_headers_read_decoded_values(name: str) -> None:
    env = parsed(name)
    reference = reference_headers(load(name))
    assert env.headers is not None
    assert [key.lower() for key in env.headers.keys()] == [
        key.lower() for key in reference.keys()
    ]
    for key in set(reference.keys()):
        assert [str(v) for v in env.headers.get_all(key, [])] == [
            str(v) for v in reference.get_all(key, [])
        ], key


def test_decoded_values_examples() -> None:
    words = parsed("10-encoded-words.eml").headers
    assert words is not None
    assert words["Subject"] == "🎉 Sommerschlussverkauf: bis zu 50% Rabatt auf alles"
    assert str(words["From"]) == "André Pirard <pirard@example.be>"
    utf8 = parsed("07-smtputf8-headers.eml").headers
    assert utf8 is not None
    assert utf8["Subject"] == "Größenordnung — 東京 meeting 🚀"
    folded = parsed("08-folding-and-spacing.eml").headers
    assert folded is not None
    assert folded["X-Foo"] == "bar"
    assert folded["From"].addresses[0].addr_spec == "frank@example.com"  # type: ignore[union-attr]
    esp = parsed("09-esp-bulk-long-tokens.eml").headers
    assert esp is not None
    unsubscribe = esp["List-Unsubscribe"]
    assert unsubscribe.startswith("<https://u1234567.ct.example-esp.test/lu/unsubscribe?oc=")
    assert "=?" not in unsubscribe
    assert len(esp.get_all("DKIM-Signature", [])) == 2


# -- header edits through the API --------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_prepend_header_changes_only_the_first_line(name: str) -> None:
    data = load(name)
    env = parsed(name)
    env.prepend_header("Received", RECEIVED)
    model = HeaderModel.from_message(data)
    model.prepend("Received", RECEIVED)
    # The new line is the first line, except below stray continuation lines that
    # open a broken block (17-bad-leading-continuation): those stay first.
    assert model.lead or model.flat() == f"Received: {RECEIVED}\r\n".encode() + expected_flatten(
        data
    )
    assert_bytes(flat(env), model.flat())
    assert env.headers is not None
    assert env.headers.get_all("Received", [])[0] == RECEIVED


@pytest.mark.parametrize("name", WELL_FORMED)
def test_replace_header(name: str) -> None:
    env = parsed(name)
    model = HeaderModel.from_message(load(name))
    assert env.headers is not None
    env.headers.replace_header("Subject", "Replaced by a policy")
    model.replace("Subject", "Replaced by a policy")
    assert_bytes(flat(env), model.flat())
    assert env.headers["Subject"] == "Replaced by a policy"


def _middle_name(model: HeaderModel) -> str:
    return model.names()[len(model.fields) // 2]


@pytest.mark.parametrize("name", WELL_FORMED)
def test_delete_header(name: str) -> None:
    env = parsed(name)
    model = HeaderModel.from_message(load(name))
    target = _middle_name(model)
    assert env.headers is not None
    del env.headers[target]
    model.delete(target)
    assert_bytes(flat(env), model.flat())
    assert env.headers[target] is None


@pytest.mark.parametrize("name", WELL_FORMED)
def test_set_and_add_header(name: str) -> None:
    env = parsed(name)
    model = HeaderModel.from_message(load(name))
    assert env.headers is not None
    env.headers["X-Relay-Tag"] = "tagged"
    model.append("X-Relay-Tag", "tagged")
    assert_bytes(flat(env), model.flat())
    env.headers.add_header("X-Relay-Class", "bulk", priority="low")
    model.append("X-Relay-Class", 'bulk; priority="low"')
    assert_bytes(flat(env), model.flat())


@pytest.mark.parametrize("name", WELL_FORMED)
def test_every_edit_together(name: str) -> None:
    """What a queue's policies do in a row: trace, rewrite, strip, stamp."""
    env = parsed(name)
    model = HeaderModel.from_message(load(name))
    target = _middle_name(model)
    if target.lower() == "subject":
        target = model.names()[0]
    assert env.headers is not None
    env.prepend_header("Received", RECEIVED)
    model.prepend("Received", RECEIVED)
    env.headers.replace_header("Subject", "[EXTERNAL] edited")
    model.replace("Subject", "[EXTERNAL] edited")
    del env.headers[target]
    model.delete(target)
    env.headers["X-Spam-Status"] = "No, score=-0.1"
    model.append("X-Spam-Status", "No, score=-0.1")
    assert_bytes(flat(env), model.flat())
    # A copy made after the edits carries them.
    assert_bytes(flat(env.copy()), model.flat())


@pytest.mark.parametrize("name", WELL_FORMED)
def test_delete_then_set_keeps_other_lines(name: str) -> None:
    """The usual way to overwrite a header: ``del h[n]; h[n] = v``."""
    env = parsed(name)
    model = HeaderModel.from_message(load(name))
    assert env.headers is not None
    del env.headers["Message-ID"]
    env.headers["Message-ID"] = "<rewritten@relay.example.test>"
    model.delete("Message-ID")
    model.append("Message-ID", "<rewritten@relay.example.test>")
    assert_bytes(flat(env), model.flat())


# -- never raise --------------------------------------------------------------------------------

_LINE_PIECES = st.sampled_from(
    [
        b"From: a@example.test",
        b"Subject: =?utf-8?q?x?=",
        b"X-Foo:bar",
        b"Content-Type: multipart/mixed; boundary=b",
        b"Content-Type: message/rfc822",
        b"--b",
        b"--b--",
        b" continued",
        b"\tcontinued",
        b"no colon here",
        b"X Bad: v",
        b"X-\xe9: v",
        b"\xff\xfe",
        b"",
        b" ",
        b".",
        b"From nobody Thu Jan  1 00:00:00 1970",
        b"To: =?bogus?x?y?=",
        b"Date: not a date",
        b"Message-ID: <<>>",
    ]
)
_EOLS = st.sampled_from([b"\r\n", b"\n", b"\r", b""])
_STRUCTURED = st.lists(st.tuples(_LINE_PIECES, _EOLS), max_size=20).map(
    lambda parts: b"".join(line + eol for line, eol in parts)
)


_FIELD_LINE_RE = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")
_BLANKS_RE = re.compile(rb"(?m)^[ \t]+(?=\r\n)")


def _blank_lines_emptied(data: bytes) -> bytes:
    return _BLANKS_RE.sub(b"", data)


def _check_never_raises(data: bytes) -> None:
    env = Envelope("s@example.test", ["r@example.test"])
    env.parse(data)
    header_data, body = env.flatten()
    joined = header_data + body
    # Whatever the split, only line ends may change, and only to CRLF; and the
    # empty line that ends the block may lose the blanks it held (it is written as
    # a plain CRLF, so that the next hop cannot take it for a continuation line).
    assert _blank_lines_emptied(normalize_eol(joined)) == _blank_lines_emptied(
        normalize_eol(data)
    )
    assert b"".join(env.copy().flatten()) == joined
    env.prepend_header("X-Seen", "yes")
    after = b"".join(env.flatten())
    # First, unless stray lines open the block (a continuation or a Unix "From "
    # line): those stay above it.
    position = after.find(b"X-Seen: yes\r\n")
    assert position >= 0, after
    assert not any(_FIELD_LINE_RE.match(line) for line in after[:position].splitlines()), after


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data: bytes) -> None:
    _check_never_raises(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_STRUCTURED, st.binary(max_size=200))
def test_header_like_bytes_never_raise(headers: bytes, tail: bytes) -> None:
    _check_never_raises(headers + tail)


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_header_blocks_are_kept(name: str) -> None:
    """The email package gives up on these; the envelope keeps them anyway."""
    data = load(name)
    env = parsed(name)
    assert env.headers is not None
    assert_bytes(flat(env), expected_flatten(data))
    # What the email package did understand still reads as before.
    assert env.headers["Subject"] == reference_headers(data)["Subject"]


def test_truncated_corpus_prefixes_never_raise() -> None:
    """Every corpus message cut at every line end (a dropped connection, a full disk)."""
    for name in ALL:
        data = load(name)[:20000]
        cuts = [index + 1 for index, byte in enumerate(data) if byte == 10]
        for cut in cuts[:200]:
            _check_never_raises(data[:cut])
