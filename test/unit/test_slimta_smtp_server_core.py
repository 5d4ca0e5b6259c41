"""The sans-I/O server core, driven with bytes: data framing, smuggling, limits, commands."""

from __future__ import annotations

import pytest
from support.smuggling import SMUGGLED, SMUGGLING_VARIANTS

from slimta.smtp import MessageTooBig
from slimta.smtp._server_core import (
    MAX_COMMAND_LINE_BYTES,
    PLAIN_PATH_PATTERNS,
    BadDataError,
    Command,
    DataDecoder,
    LineError,
    ServerInput,
    auth_failure_delay,
    gather_params,
    parse_path_argument,
    render_extensions,
)

HEAD = b"From: a@example.test\r\nSubject: one\r\n\r\nfirst body"
END = b"\r\n.\r\n"


def decode_all(pieces: list[bytes], **kwargs: object) -> DataDecoder:
    decoder = DataDecoder(**kwargs)  # type: ignore[arg-type]
    for piece in pieces:
        decoder.feed(piece)
    return decoder


def splits(data: bytes) -> list[list[bytes]]:
    """The data whole, byte by byte, and cut in two at every position."""
    out = [[data], [bytes([b]) for b in data]]
    out.extend([data[:i], data[i:]] for i in range(1, len(data)))
    return out


# -- the end marker ------------------------------------------------------------------


@pytest.mark.parametrize(
    "wire, message",
    [
        (b".\r\n", b""),
        (b"a\r\n.\r\n", b"a\r\n"),
        (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n"),
        (b"..a\r\n.b\r\n.\r\n", b".a\r\nb\r\n"),
        (b"line\r\n\r\n.\r\n", b"line\r\n\r\n"),
        (b"a\r\n...\r\n.\r\n", b"a\r\n..\r\n"),
    ],
)
def test_end_marker_and_dot_unstuffing_at_every_split(wire: bytes, message: bytes) -> None:
    for pieces in splits(wire + b"QUIT\r\n"):
        decoder = decode_all(pieces)
        assert decoder.done
        assert decoder.result() == message
        assert decoder.leftover == b"QUIT\r\n"


def test_not_done_without_end_marker() -> None:
    decoder = decode_all([b"a\r\n.", b"\r"])
    assert not decoder.done
    with pytest.raises(ValueError):
        decoder.result()


@pytest.mark.parametrize("variant", SMUGGLING_VARIANTS, ids=repr)
def test_smuggling_variant_never_ends_the_data(variant: bytes) -> None:
    wire = HEAD + variant + SMUGGLED + b".\r\nQUIT\r\n"
    for pieces in splits(wire):
        decoder = decode_all(pieces)
        assert decoder.done
        assert decoder.leftover == b"QUIT\r\n"
        message = decoder.result()
        # One message: the smuggled commands are content, and nothing bare is left.
        assert message.startswith(HEAD)
        assert b"MAIL FROM:<evil@attacker.test>\r\n" in message
        assert message.endswith(b"smuggled\r\n")
        assert message.count(b"\r") == message.count(b"\r\n") == message.count(b"\n")


@pytest.mark.parametrize("variant", SMUGGLING_VARIANTS, ids=repr)
def test_smuggling_variant_under_reject_policy(variant: bytes) -> None:
    wire = HEAD + variant + SMUGGLED + b".\r\n"
    decoder = decode_all([wire], bare_newline="reject")
    assert decoder.done and decoder.leftover == b""
    bare = variant.replace(b"\r\n", b"").strip(b". \t\x00") != b""
    if bare:
        with pytest.raises(BadDataError) as info:
            decoder.result()
        assert info.value.reply.code == "550"
    else:
        assert b"MAIL FROM:<evil" in decoder.result()


def test_bare_newlines_are_normalised() -> None:
    decoder = decode_all([b"a\nb\rc\r\n.d\r\n.\r\n"])
    assert decoder.result() == b"a\r\nb\r\nc\r\nd\r\n"
    assert decoder.bad_newline


def test_normalised_dot_line_is_content_not_stuffing() -> None:
    # After a bare LF the line is not a real line start: its dot stays.
    assert decode_all([b"a\n.b\r\n.\r\n"]).result() == b"a\r\n.b\r\n"


def test_crlf_split_across_chunks_is_not_bare() -> None:
    decoder = decode_all([b"abc\r", b"\ndef\r", b"\n.", b"\r", b"\n"])
    assert decoder.result() == b"abc\r\ndef\r\n"
    assert not decoder.bad_newline


# -- size ----------------------------------------------------------------------------


def test_max_size_exact_fits() -> None:
    decoder = decode_all([b"12345678\r\n.\r\n"], max_size=10)
    assert decoder.result() == b"12345678\r\n"


def test_oversized_is_read_to_the_end_and_dropped() -> None:
    decoder = DataDecoder(max_size=1000)
    chunk = b"x" * 998 + b"\r\n"
    for _ in range(200):
        decoder.feed(chunk)
        # Nothing is kept once over the limit.
        assert sum(len(c) for c in decoder._chunks) <= 1000
        assert len(decoder._carry) <= 3
    decoder.feed(b".\r\nQUIT\r\n")
    assert decoder.done and decoder.too_big
    assert decoder.leftover == b"QUIT\r\n"
    with pytest.raises(MessageTooBig):
        decoder.result()


def test_oversized_long_line_without_newline_is_not_buffered() -> None:
    decoder = DataDecoder(max_size=10)
    for _ in range(100):
        decoder.feed(b"y" * 4096)
        assert len(decoder._carry) <= 3
    decoder.feed(b"\r\n.\r\n")
    assert decoder.done and decoder.too_big


def test_unbounded_line_carry_is_small_without_limit() -> None:
    decoder = DataDecoder()
    for _ in range(50):
        decoder.feed(b"z" * 1000)
        assert len(decoder._carry) <= 3
    decoder.feed(b"\r\n.\r\n")
    assert decoder.result() == b"z" * 50000 + b"\r\n"


def test_invalid_policy() -> None:
    with pytest.raises(ValueError):
        DataDecoder(bare_newline="keep")  # type: ignore[arg-type]


# -- command lines ---------------------------------------------------------------------


def commands(data: bytes) -> list[object]:
    buf = ServerInput()
    buf.feed(data)
    out: list[object] = []
    while True:
        item = buf.next_command()
        if item is None:
            return out
        out.append(item)


def test_pipelined_commands_in_order() -> None:
    wire = b"EHLO c.test\r\nMAIL FROM:<a@b> SIZE=10\r\nRCPT TO:<c@d>\r\nDATA\r\n"
    for pieces in splits(wire):
        buf = ServerInput()
        got = []
        for piece in pieces:
            buf.feed(piece)
            while (item := buf.next_command()) is not None:
                got.append(item)
        assert got == [
            Command(b"EHLO", b"c.test"),
            Command(b"MAIL", b"FROM:<a@b> SIZE=10"),
            Command(b"RCPT", b"TO:<c@d>"),
            Command(b"DATA", None),
        ]


def test_lowercase_verb_bare_lf_and_blank_line() -> None:
    got = commands(b"noop\nquit  \r\n\r\n")
    assert got == [Command(b"NOOP", None), Command(b"QUIT", None), Command(b"", b"")]


def test_too_long_line_is_refused_once_and_skipped() -> None:
    buf = ServerInput()
    buf.feed(b"NOOP " + b"a" * (MAX_COMMAND_LINE_BYTES * 3))
    first = buf.next_command()
    assert isinstance(first, LineError) and first.reply.code == "500"
    assert buf.pending == 0
    buf.feed(b"b" * 5000)
    assert buf.next_command() is None and buf.pending == 0
    buf.feed(b"tail\r\nQUIT\r\n")
    assert buf.next_command() == Command(b"QUIT", None)


def test_too_long_complete_line() -> None:
    got = commands(b"NOOP " + b"a" * MAX_COMMAND_LINE_BYTES + b"\r\nQUIT\r\n")
    assert isinstance(got[0], LineError)
    assert got[1] == Command(b"QUIT", None)


@pytest.mark.parametrize("line", [b"NOOP a\rb\r\n", b"NOOP \x00\r\n"])
def test_bare_cr_or_nul_in_command(line: bytes) -> None:
    (item,) = commands(line)
    assert isinstance(item, LineError) and item.reply.code == "500"


def test_discard_drops_pipelined_bytes() -> None:
    buf = ServerInput()
    buf.feed(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n")
    assert buf.next_command() == Command(b"STARTTLS", None)
    assert buf.discard() == len(b"MAIL FROM:<evil@x>\r\n")
    assert buf.next_command() is None


# -- MAIL / RCPT arguments --------------------------------------------------------------


def test_parse_path_and_params() -> None:
    address, rest = parse_path_argument(b"FROM:<a@b.test> SIZE=100 BODY=8BITMIME SMTPUTF8", "FROM")
    assert address == "a@b.test"
    assert gather_params(rest) == {b"SIZE": b"100", b"BODY": b"8BITMIME", b"SMTPUTF8": True}
    assert parse_path_argument(b'to: <"x>y"@b>', "TO") == ('"x>y"@b', b"")
    assert parse_path_argument(b"FROM:<>", "FROM") == ("", b"")
    assert parse_path_argument("TO:<ü@é.test>".encode(), "TO")[0] == "ü@é.test"


@pytest.mark.parametrize(
    "arg",
    [
        None,
        b"",
        b"FROM:a@b",
        b"FROM:<a@b",
        b"TO:<a@b>",
        b"FROM:<a@b>x",
        b"FROM:<a\x01@b>",
        b"FROM:<\xff@b>",
    ],
)
def test_parse_path_errors(arg: bytes | None) -> None:
    with pytest.raises(ValueError):
        parse_path_argument(arg, "FROM")


def test_gather_params_errors() -> None:
    with pytest.raises(ValueError):
        gather_params(b" =x")
    with pytest.raises(ValueError):
        gather_params(b" SIZE=a=b\x7f")


def test_render_extensions_skips_unrenderable() -> None:
    class NoMechanisms:
        def __str__(self) -> str:
            raise ValueError("none")

    text = render_extensions("Hello c", {"PIPELINING": None, "SIZE": "10", "AUTH": NoMechanisms()})
    assert text == "Hello c\r\nPIPELINING\r\nSIZE 10"


def test_auth_failure_delay_doubles_and_caps() -> None:
    assert [auth_failure_delay(n) for n in range(6)] == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert auth_failure_delay(3, base=0) == 0.0


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"", False),
        (b"NOOP\r\n", False),
        (b"NOOP\r\nAU", True),
        (b"auth plain AHV", True),
        (b"  AUTH", True),
        (b"MAIL FROM:<a@b>", False),
        (b"A", True),
        (b"AUTH PLAIN x\r\n", False),
    ],
)
def test_partial_auth_line_is_detected(data: bytes, expected: bool) -> None:
    buf = ServerInput()
    buf.feed(data)
    assert buf.partial_line_may_be_auth() is expected


# -- feed_command: the shortcut for one whole line agrees with feed + next_command --

from itertools import pairwise  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_LINE_BYTES = st.sampled_from(
    [b"MAIL", b"FROM:<a@b>", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\0", b"x", b"HELO", b"Q",
     b"quit", b"1", b"\xff", b"A" * 700]
)
_CHUNKS = st.lists(st.lists(_LINE_BYTES, max_size=6).map(b"".join), min_size=1, max_size=5)


def _drain(inp: ServerInput, first: object) -> list[object]:
    out = [first]
    while out[-1] is not None:
        out.append(inp.next_command())
    return out


@settings(max_examples=400, deadline=None)
@given(chunks=_CHUNKS)
def test_feed_command_agrees_with_feed_then_next_command(chunks: list[bytes]) -> None:
    slow, fast = ServerInput(), ServerInput()
    for chunk in chunks:
        slow.feed(chunk)
        expected = _drain(slow, slow.next_command())
        got = _drain(fast, fast.feed_command(chunk))
        assert got == expected
        assert bytes(fast.buffer) == bytes(slow.buffer)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"HELO there\r\n", Command(b"HELO", b"there")),
        (b"quit\n", Command(b"QUIT", None)),
        (b"\r\n", Command(b"", b"")),
        (b"MAIL FROM:<a@b>  \r\n", Command(b"MAIL", b"FROM:<a@b>")),
        (b"9x y\r\n", Command(b"", b"9x y")),
        (b"ABCDEFGHIJKLMNOP x\r\n", Command(b"ABCDEFGHIJKLMNOP", b"x")),  # 16 letters
        (b"ABCDEFGHIJKLMNOPQ x\r\n", Command(b"", b"ABCDEFGHIJKLMNOPQ x")),  # 17
        (b"H\xc9LO x\r\n", Command(b"", b"H\xc9LO x")),  # letters are ASCII letters
        (b"HELO\tx\r\n", Command(b"", b"HELO\tx")),
    ],
)
def test_feed_command_splits_one_whole_line(data: bytes, expected: Command) -> None:
    inp = ServerInput()
    assert inp.feed_command(data) == expected
    assert inp.buffer == b""


@pytest.mark.parametrize("data", [b"HE\rLO\r\n", b"HELO \0x\r\n", b"HELO x\r\r\n"])
def test_feed_command_refuses_a_bare_cr_or_nul_in_one_whole_line(data: bytes) -> None:
    result = ServerInput().feed_command(data)
    assert isinstance(result, LineError)
    assert result.reply.code == "500"


def test_feed_command_keeps_a_line_that_is_too_long_out() -> None:
    inp = ServerInput()
    result = inp.feed_command(b"X" * MAX_COMMAND_LINE_BYTES + b"\r\n")
    assert isinstance(result, LineError) and result.reply.code == "500"
    assert inp.buffer == b""
    assert inp.feed_command(b"NOOP\r\n") == Command(b"NOOP", None)


@pytest.mark.parametrize("size", [MAX_COMMAND_LINE_BYTES, MAX_COMMAND_LINE_BYTES + 1])
def test_feed_command_takes_lines_up_to_the_limit_exactly(size: int) -> None:
    data = b"NOOP " + b"x" * (size - 7) + b"\r\n"
    assert len(data) == size
    result = ServerInput().feed_command(data)
    if size <= MAX_COMMAND_LINE_BYTES:
        assert result == Command(b"NOOP", b"x" * (size - 7))
    else:
        assert isinstance(result, LineError) and result.reply.code == "500"


_DATA_BYTES = st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"\r\n.\r\n", b".\r\n",
                               b" ", b"\0"])


@settings(max_examples=400, deadline=None)
@given(
    pieces=st.lists(_DATA_BYTES, max_size=14).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=4),
    policy=st.sampled_from(["normalize", "reject"]),
)
def test_data_read_whole_or_in_any_pieces_is_the_same(
    pieces: bytes, cuts: list[int], policy: str
) -> None:
    wire = pieces + b"\r\n.\r\nNOOP\r\n"
    bytewise = decode_all([bytes([b]) for b in wire], bare_newline=policy)
    bounds = sorted({0, len(wire), *(c for c in cuts if c < len(wire))})
    chunked = decode_all([wire[a:b] for a, b in pairwise(bounds)], bare_newline=policy)
    for decoder in (chunked, decode_all([wire], bare_newline=policy)):
        assert decoder.done == bytewise.done
        assert decoder.leftover == bytewise.leftover
        assert decoder.bad_newline == bytewise.bad_newline
        try:
            expected: object = bytewise.result()
        except BadDataError:
            expected = BadDataError
        try:
            got: object = decoder.result()
        except BadDataError:
            got = BadDataError
        assert got == expected


# -- the plain-path shortcut agrees with parse_path_argument -------------------------

_PATH_BYTES = st.sampled_from(
    [b"FROM:", b"from:", b"TO:", b"<", b">", b"a", b"@", b".", b" ", b"\t", b'"', b"\\",
     b"\x01", b"\x7f", b"\xc3\xa9", b"\xff", b"SIZE=1", b"="]
)


# Mostly "KEYWORD:<...>" shapes, so that many examples match a pattern.
_PATH_ARGS = st.tuples(
    st.sampled_from([b"FROM:<", b"from:<", b"TO:<", b"FROM: <", b"", b"FROM:"]),
    st.lists(_PATH_BYTES, max_size=6).map(b"".join),
    st.sampled_from([b">", b"", b"> ", b">x", b"> SIZE=1"]),
).map(b"".join)


@settings(max_examples=600, deadline=None)
@given(arg=_PATH_ARGS, keyword=st.sampled_from(["FROM", "TO"]))
def test_plain_path_patterns_agree_with_parse_path_argument(arg: bytes, keyword: str) -> None:
    match = PLAIN_PATH_PATTERNS[keyword].fullmatch(arg)
    if match is None:
        return
    try:
        expected: object = parse_path_argument(arg, keyword)  # type: ignore[arg-type]
    except ValueError as exc:
        expected = type(exc)
    try:
        got: object = (match.group(1).decode("utf-8"), b"")
    except ValueError as exc:
        got = type(exc)
    assert got == expected


@pytest.mark.parametrize(
    ("keyword", "arg", "plain"),
    [
        ("FROM", b"FROM:<a@b.test>", True),
        ("FROM", b"from:<>", True),
        ("TO", b"TO:<\xc3\xa9@b.test>", True),
        ("FROM", b"FROM: <a@b.test>", False),  # a space before the path
        ("FROM", b"FROM:<a@b.test> SIZE=1", False),  # parameters
        ("TO", b'TO:<"a b"@c>', False),  # a quoted string
        ("TO", b"TO:<a\x01@c>", False),  # a control character
        ("TO", b"FROM:<a@c>", False),
    ],
)
def test_plain_path_patterns_take_only_the_plain_line(
    keyword: str, arg: bytes, plain: bool
) -> None:
    assert (PLAIN_PATH_PATTERNS[keyword].fullmatch(arg) is not None) is plain
