"""slimta.util.bytesformat.BytesFormat."""

from __future__ import annotations

import pytest

from slimta.util.bytesformat import BytesFormat


def test_positional_and_keyword_fields() -> None:
    fmt = BytesFormat(b"To: {0}\r\nFrom: {sender}\r\n{1}{1}")
    assert fmt.format(b"a@b.test", "x", sender="s@é.test") == (
        b"To: a@b.test\r\nFrom: s@\xc3\xa9.test\r\nxx"
    )


def test_numbers_are_written_as_text() -> None:
    # python-slimta wrote bytes(5), five NUL bytes.
    assert BytesFormat(b"{0} attempts, code {code}").format(5, code=550) == b"5 attempts, code 550"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("ignore", b"a {missing} b {3} c"), ("remove", b"a  b  c")],
)
def test_unmatched_fields(mode: str, expected: bytes) -> None:
    assert BytesFormat(b"a {missing} b {3} c", mode=mode).format() == expected


def test_strict_mode_raises() -> None:
    fmt = BytesFormat(b"{0} {name}", mode="strict")
    with pytest.raises(IndexError):
        fmt.format(name="x")
    with pytest.raises(KeyError):
        fmt.format("x")


def test_only_simple_fields_are_fields() -> None:
    template = b"{a.b} {0!r} {x:>3} {} {{0}} \xff{0}\xfe"
    assert BytesFormat(template).format(b"Z") == b"{a.b} {0!r} {x:>3} {} {Z} \xffZ\xfe"


def test_repr_and_bad_mode() -> None:
    assert repr(BytesFormat(b"x{0}y")) == repr(b"x{0}y")
    with pytest.raises(ValueError):
        BytesFormat(b"", mode="loose")
