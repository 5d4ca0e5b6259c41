"""The sans-I/O core: reply parsing, command encoding, address checks, xtext."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimta.smtp import BadReply
from slimta.smtp._wire import (
    MAX_REPLY_BYTES,
    MAX_REPLY_LINE_BYTES,
    AddressEncodingError,
    AddressError,
    ReplyParser,
    check_address,
    check_ehlo_name,
    encode_address,
    encode_command,
    xtext_decode,
    xtext_encode,
)


def parse_all(*chunks: bytes) -> list[tuple[str, str]]:
    parser = ReplyParser()
    replies = []
    for chunk in chunks:
        parser.feed(chunk)
        while (reply := parser.next_reply()) is not None:
            replies.append(reply)
    assert parser.pending == 0
    return replies


EHLO = b"250-mail.example.com Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n"
EHLO_PARSED = ("250", "mail.example.com Hello\r\nPIPELINING\r\nSIZE 1000\r\n8BITMIME")


# -- reply parser ---------------------------------------------------------------


def test_single_line() -> None:
    assert parse_all(b"250 2.0.0 Ok\r\n") == [("250", "2.0.0 Ok")]


def test_multi_line() -> None:
    assert parse_all(EHLO) == [EHLO_PARSED]


@pytest.mark.parametrize("cut", range(1, len(EHLO)))
def test_split_at_every_byte(cut: int) -> None:
    assert parse_all(EHLO[:cut], EHLO[cut:]) == [EHLO_PARSED]


def test_one_byte_at_a_time() -> None:
    data = EHLO + b"354 go\r\n"
    assert parse_all(*(data[i : i + 1] for i in range(len(data)))) == [
        EHLO_PARSED,
        ("354", "go"),
    ]


def test_several_replies_in_one_read() -> None:
    data = b"250 a\r\n250 b\r\n354 c\r\n"
    assert parse_all(data) == [("250", "a"), ("250", "b"), ("354", "c")]


def test_incomplete_reply_leaves_rest_pending() -> None:
    parser = ReplyParser()
    parser.feed(b"250 a\r\n221-b")
    assert parser.next_reply() == ("250", "a")
    assert parser.next_reply() is None
    assert parser.pending == 5
    parser.feed(b"ye\r\n221 now\r\n")
    assert parser.next_reply() == ("221", "bye\r\nnow")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"250\r\n", ("250", "")),  # code only, no text
        (b"250-\r\n250\r\n", ("250", "\r\n")),
        (b"250\ttab\r\n", ("250", "tab")),
        (b"250 lf only\n", ("250", "lf only")),
        (b"250 caf\xc3\xa9\r\n", ("250", "caf\u00e9")),
        (b"554 5.7.1 no  spaces   kept\r\n", ("554", "5.7.1 no  spaces   kept")),
    ],
)
def test_line_forms(data: bytes, expected: tuple[str, str]) -> None:
    assert parse_all(data) == [expected]


@pytest.mark.parametrize(
    "data",
    [
        b"\r\n",
        b"25\r\n",
        b"hello\r\n",
        b"2500 x\r\n",
        b"250x\r\n",
        b"650 x\r\n",
        b"050 x\r\n",
        b"25a x\r\n",
        b"250-a\r\n251 b\r\n",  # codes must not change
        b"250 \xff\xfe\r\n",  # not UTF-8
    ],
)
def test_malformed(data: bytes) -> None:
    parser = ReplyParser()
    parser.feed(data)
    with pytest.raises(BadReply):
        parser.next_reply()


def test_line_limit() -> None:
    ok = b"250 " + b"x" * (MAX_REPLY_LINE_BYTES - 6) + b"\r\n"
    assert len(ok) == MAX_REPLY_LINE_BYTES
    assert parse_all(ok)[0][0] == "250"
    parser = ReplyParser()
    parser.feed(b"250 " + b"x" * (MAX_REPLY_LINE_BYTES - 4))
    with pytest.raises(BadReply) as info:
        parser.next_reply()
    assert len(info.value.data) <= 512


def test_long_line_fails_without_waiting_for_lf() -> None:
    parser = ReplyParser()
    for _ in range(MAX_REPLY_LINE_BYTES // 100 - 1):
        parser.feed(b"x" * 100)
        assert parser.next_reply() is None
    parser.feed(b"x" * 200)
    with pytest.raises(BadReply):
        parser.next_reply()


def test_reply_limit() -> None:
    line = b"250-" + b"y" * 996 + b"\r\n"
    lines = MAX_REPLY_BYTES // len(line)
    assert parse_all(line * (lines - 1) + b"250 end\r\n")[0][0] == "250"
    parser = ReplyParser()
    parser.feed(line * (lines + 1))
    with pytest.raises(BadReply):
        parser.next_reply()


def test_no_rescan_of_searched_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``find`` starts where the previous one stopped: linear time."""
    parser = ReplyParser()
    starts: list[int] = []
    real = bytearray.find

    class Spy(bytearray):
        def find(self, sub, start=None, end=None):  # type: ignore[no-untyped-def]
            starts.append(start)
            return real(self, sub, start, end)

    parser.buffer = Spy()
    for _ in range(50):
        parser.feed(b"x" * 100)
        assert parser.next_reply() is None
    assert starts == [i * 100 for i in range(50)]


def test_take_pending() -> None:
    parser = ReplyParser()
    parser.feed(b"220 go\r\nINJECTED")
    assert parser.next_reply() == ("220", "go")
    assert parser.take_pending() == b"INJECTED"
    assert parser.pending == 0


def test_buffer_is_compacted() -> None:
    parser = ReplyParser()
    for _ in range(2000):
        parser.feed(b"250 ok\r\n")
        assert parser.next_reply() == ("250", "ok")
    assert len(parser.buffer) < 100


@settings(max_examples=500)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_arbitrary_bytes_raise_only_bad_reply(data: bytes, step: int) -> None:
    parser = ReplyParser()
    try:
        for i in range(0, len(data), step):
            parser.feed(data[i : i + step])
            while (reply := parser.next_reply()) is not None:
                code, text = reply
                assert len(code) == 3 and code[0] in "12345"
                assert isinstance(text, str)
    except BadReply:
        pass


_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=40
)


@given(
    st.from_regex(r"\A[1-5][0-9][0-9]\Z"),
    st.lists(_text, min_size=1, max_size=5),
    st.integers(min_value=1, max_value=7),
)
def test_round_trip(code: str, texts: list[str], step: int) -> None:
    lines = [f"{code}-{t}" for t in texts[:-1]] + [f"{code} {texts[-1]}"]
    data = "".join(line + "\r\n" for line in lines).encode("utf-8")
    chunks = [data[i : i + step] for i in range(0, len(data), step)]
    assert parse_all(*chunks) == [(code, "\r\n".join(texts))]


def test_next_line() -> None:
    parser = ReplyParser()
    parser.feed(b"EHLO there\r\nQUIT\n")
    assert parser.next_line() == b"EHLO there"
    assert parser.next_line() == b"QUIT"
    assert parser.next_line() is None


# -- commands -------------------------------------------------------------------


def test_encode_command() -> None:
    assert encode_command(b"RSET") == b"RSET\r\n"
    assert encode_command(b"VRFY", b"user") == b"VRFY user\r\n"
    assert encode_command("NOOP", "x") == b"NOOP x\r\n"


@pytest.mark.parametrize("bad", [b"a\rb", b"a\nb", b"a\0b", b"x\r\nRSET"])
def test_encode_command_refuses_line_breaks(bad: bytes) -> None:
    with pytest.raises(ValueError):
        encode_command(b"VRFY", bad)
    with pytest.raises(ValueError):
        encode_command(bad)


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_encoded_commands_have_one_terminator(verb: bytes, arg: bytes) -> None:
    try:
        line = encode_command(verb, arg)
    except ValueError:
        assert any(c in verb + arg for c in b"\r\n\0")
        return
    body = line[:-2]
    assert line.endswith(b"\r\n")
    assert b"\r" not in body and b"\n" not in body and b"\0" not in body


# -- addresses ------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "",
        "user@example.com",
        "postmaster",
        '"john doe"@example.com',
        '"a<b>c"@example.com',
        '"quoted\\"quote"@example.com',
        "user+tag=x@example.com",
        "user@[192.0.2.1]",
        "j\u00f6rg@b\u00fccher.example",
        "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57,
    ],
)
def test_good_addresses(address: str) -> None:
    check_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "a@x>\r\nRCPT TO:<evil@example.com",
        "user@example.com\r\n",
        "user\n@example.com",
        "us\0er@example.com",
        "us\ter@example.com",
        "us\x7fer@example.com",
        "user@exa mple.com",
        "us er@example.com",
        "user@example.com>",
        "<user@example.com",
        '"unterminated@example.com',
        '"quoted"junk@example.com',
        '"with\rcr"@example.com',
        "user@example.com\u2028",
        "a" * 65 + "@example.com",
        "a@" + "b" * 256,
        "a" * 64 + "@" + "b" * 190,  # path over 256 octets
    ],
)
def test_bad_addresses(address: str) -> None:
    with pytest.raises(AddressError):
        check_address(address)


def test_length_limits_count_utf8_octets() -> None:
    check_address("\u00e9" * 32 + "@example.com")
    with pytest.raises(AddressError):
        check_address("\u00e9" * 33 + "@example.com")


def test_encode_address() -> None:
    assert encode_address(None, False) == b""
    assert encode_address("a@b.example", False) == b"a@b.example"
    assert encode_address("\u00e9@b.example", True) == "\u00e9@b.example".encode()
    with pytest.raises(AddressEncodingError):
        encode_address("\u00e9@b.example", False)
    assert issubclass(AddressEncodingError, ValueError)


@given(st.text(max_size=80))
def test_accepted_addresses_are_safe(address: str) -> None:
    try:
        check_address(address)
    except AddressError:
        return
    raw = address.encode("utf-8", "surrogatepass")
    assert not any(b < 32 or b == 127 for b in raw)


def test_ehlo_name() -> None:
    assert check_ehlo_name("mail.example.com") == b"mail.example.com"
    assert check_ehlo_name("[192.0.2.1]") == b"[192.0.2.1]"
    for bad in ["", "a b", "a\r\nMAIL", "h\u00f6st", "a\tb"]:
        with pytest.raises(ValueError):
            check_ehlo_name(bad)


# -- xtext ----------------------------------------------------------------------


def test_xtext() -> None:
    assert xtext_encode("user@example.com") == b"user@example.com"
    assert xtext_encode("e=mc2+x y") == b"e+3Dmc2+2Bx+20y"
    assert xtext_encode("\u00e9") == b"+C3+A9"
    assert xtext_encode("a\r\n") == b"a+0D+0A"


@given(st.binary(max_size=60))
def test_xtext_round_trip(data: bytes) -> None:
    encoded = xtext_encode(data)
    assert all(0x21 <= b <= 0x7E for b in encoded)
    assert xtext_decode(encoded) == data
