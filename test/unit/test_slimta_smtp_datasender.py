"""DataSender: CRLF normalisation, dot-stuffing, the end marker, streaming."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimta.smtp.datasender import CHUNK_BYTES, DataSender


def stuffed(*parts: bytes | bytearray | memoryview) -> bytes:
    return b"".join(DataSender(*parts))


def unstuff(data: bytes) -> bytes:
    """The receiving side (RFC 5321 §4.5.2): strip the end marker and one leading dot."""
    assert data.endswith(b".\r\n")
    body = data[:-3]
    if body == b"":
        return b""
    assert body.endswith(b"\r\n")
    lines = body[:-2].split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines) + b"\r\n"


def normalise(data: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


class RecordingIO:
    def __init__(self) -> None:
        self.chunks: list[bytes | bytearray | memoryview] = []

    def buffered_send(self, data: bytes | bytearray | memoryview) -> None:
        self.chunks.append(data)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ((), b".\r\n"),
        ((b"",), b".\r\n"),
        ((b"", b""), b".\r\n"),
        ((b"abc",), b"abc\r\n.\r\n"),
        ((b"abc\r\n",), b"abc\r\n.\r\n"),
        ((b".",), b"..\r\n.\r\n"),
        ((b".abc\r\n",), b"..abc\r\n.\r\n"),
        ((b"a\r\n.b\r\n..c\r\n",), b"a\r\n..b\r\n...c\r\n.\r\n"),
        ((b"a\r\n.\r\n",), b"a\r\n..\r\n.\r\n"),
        # Bare LF and bare CR become CRLF.
        ((b"a\nb\n",), b"a\r\nb\r\n.\r\n"),
        ((b"a\rb\r",), b"a\r\nb\r\n.\r\n"),
        ((b"a\n.b",), b"a\r\n..b\r\n.\r\n"),
        ((b"a\r.b",), b"a\r\n..b\r\n.\r\n"),
        ((b"a\n\rb",), b"a\r\n\r\nb\r\n.\r\n"),
        ((b"a\r\r\nb",), b"a\r\n\r\nb\r\n.\r\n"),
        ((b"x\r\n\n.\r\n",), b"x\r\n\r\n..\r\n.\r\n"),
        # Across parts (headers, body).
        ((b"H: v\r\n\r\n", b".body"), b"H: v\r\n\r\n..body\r\n.\r\n"),
        ((b"H: v\r", b"\n.body"), b"H: v\r\n..body\r\n.\r\n"),
        ((b"H: v\r", b"", b"\nx"), b"H: v\r\nx\r\n.\r\n"),
        ((b"H: v\r", b"\r\nx"), b"H: v\r\n\r\nx\r\n.\r\n"),
        ((b"a\n", b"."), b"a\r\n..\r\n.\r\n"),
        ((b"a", b".b"), b"a.b\r\n.\r\n"),
        ((b"a", b"\n"), b"a\r\n.\r\n"),
    ],
)
def test_examples(parts: tuple[bytes, ...], expected: bytes) -> None:
    assert stuffed(*parts) == expected


def test_send_uses_buffered_send() -> None:
    io = RecordingIO()
    DataSender(b"Subject: x\r\n\r\n", b"body\r\n").send(io)
    assert b"".join(bytes(c) for c in io.chunks) == b"Subject: x\r\n\r\nbody\r\n.\r\n"


def test_bytearray_and_memoryview_parts() -> None:
    assert stuffed(bytearray(b"a\n.b"), memoryview(b"\nc")) == b"a\r\n..b\r\nc\r\n.\r\n"


def test_clean_large_body_is_not_copied() -> None:
    """A clean body goes out as views of the caller's buffer, in bounded windows."""
    body = (b"x" * 78 + b"\r\n") * (3 * CHUNK_BYTES // 80 + 5)
    io = RecordingIO()
    DataSender(b"H: v\r\n\r\n", body).send(io)
    views = [c for c in io.chunks if isinstance(c, memoryview)]
    assert views and all(v.obj is body for v in views if len(v) > 100)
    assert max(len(c) for c in io.chunks) <= CHUNK_BYTES + 1
    assert b"".join(bytes(c) for c in io.chunks) == b"H: v\r\n\r\n" + body + b".\r\n"


@pytest.mark.parametrize("offset", [-2, -1, 0, 1, 2])
def test_window_boundaries(offset: int) -> None:
    """CRLF and CRLF-dot straddling the window edge are handled once, correctly."""
    size = CHUNK_BYTES + offset
    for tail in (b"\r\n.x\r\n", b"\r\n\r\n", b"\n.\n", b"\r.\r"):
        body = b"a" * (size - 1) + tail + b"b" * 10
        assert stuffed(body) == normalise(body).replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n"


def test_many_crs_at_window_edge() -> None:
    body = b"a" * (CHUNK_BYTES - 3) + b"\r" * 10 + b"\n.z"
    expected = normalise(body).replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n"
    assert stuffed(body) == expected


_lines = st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_crlf_text = st.lists(_lines, max_size=20).map(lambda ls: b"".join(line + b"\r\n" for line in ls))


@settings(max_examples=300)
@given(_crlf_text, st.integers(min_value=0, max_value=400))
def test_stuff_unstuff_is_identity(data: bytes, split: int) -> None:
    out = stuffed(data[:split], data[split:])
    assert unstuff(out) == data


@settings(max_examples=300)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=4))
def test_arbitrary_data(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    parts = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    out = stuffed(*parts)
    # Only CRLF line ends, no unstuffed dot line, and the right end marker.
    assert out.count(b"\r") == out.count(b"\n") == out.count(b"\r\n")
    body = out[:-3]
    assert not body.startswith(b".") or body.startswith(b"..")
    assert b"\r\n.\r\n" not in body
    for line in body.split(b"\r\n"):
        assert not line.startswith(b".") or line.startswith(b"..")
    expected = normalise(data)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert unstuff(out) == expected
