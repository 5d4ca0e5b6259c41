"""Prepare message data for the SMTP ``DATA`` phase.

Three things happen to the bytes, in one streaming pass:

1. line ends are normalised: a bare LF or a bare CR becomes CRLF (RFC 5321
   §2.3.8; a bare LF is what SMTP smuggling exploits);
2. a ``.`` at the start of the data or of a line is doubled (dot-stuffing,
   RFC 5321 §4.5.2);
3. the end marker follows: ``.\\r\\n`` when the data is empty or ends in CRLF,
   ``\\r\\n.\\r\\n`` otherwise.

For speed the work is done by ``bytes.count``/``find``/``replace`` in C, over
windows of about :data:`CHUNK_BYTES`. A window that needs no change is passed on
as a ``memoryview`` of the caller's buffer, so a clean 20 MB body is never copied;
headers and body are never joined. A window never ends inside a CRLF pair, and the
state that crosses windows and parts (was the last byte a CR, are we at the start
of a line) is carried explicitly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, Union

__all__ = ["DataSender", "CHUNK_BYTES", "SMALL_BYTES"]

#: The size of the windows the data is processed and written in.
CHUNK_BYTES = 65536
#: Clean data up to this size is stuffed and written as one piece (see :meth:`DataSender.whole`).
SMALL_BYTES = 16384

Buffer = Union[bytes, bytearray, memoryview]


class _SendIO(Protocol):
    def buffered_send(self, data: Buffer) -> None: ...


class DataSender:
    """Dot-stuffs and terminates message data.

    :param parts: the message as byte chunks (typically the flattened headers
        and the body), sent in order as if concatenated. A ``str`` part is
        encoded as UTF-8.
    """

    def __init__(self, *parts: Buffer | str) -> None:
        self.parts = parts

    def __iter__(self) -> Iterator[bytes]:
        """Yield the bytes to send, end marker included."""
        for chunk in self._chunks():
            yield chunk if isinstance(chunk, bytes) else bytes(chunk)

    def send(self, io: _SendIO) -> None:
        """Write the stuffed data and the end marker through ``io.buffered_send``."""
        whole = self.whole(SMALL_BYTES)
        if whole is not None:
            io.buffered_send(whole)
            return
        buffered_send = io.buffered_send
        for chunk in self._chunks():
            buffered_send(chunk)

    def whole(self, max_bytes: int) -> bytes | None:
        """The data with its end marker as one ``bytes``, when nothing needs changing.

        The fast path for a small message: ``None`` unless the parts are
        ``bytes``, total at most ``max_bytes``, and already need no change (every
        CR and LF in a CRLF pair, no line starting with ``.``). Otherwise use
        :meth:`send` or iterate.
        """
        parts: list[bytes] = []
        total = 0
        at_line_start = True
        for part in self.parts:
            if type(part) is not bytes:
                return None
            parts.append(part)
            if not part:
                continue
            total += len(part)
            if total > max_bytes:
                return None
            lfs = part.count(b"\n")
            if part.count(b"\r") != lfs or (lfs and part.count(b"\r\n") != lfs):
                return None
            if (at_line_start and part[0] == 46) or (lfs and b"\r\n." in part):
                return None
            at_line_start = part[-1] == 10
        marker = b".\r\n" if at_line_start else b"\r\n.\r\n"
        parts.append(marker)
        return b"".join(parts)

    def _chunks(self) -> Iterator[Buffer]:
        at_line_start = True  # nothing sent yet counts as the start of a line
        after_cr = False  # the last input byte was a CR (already sent as CRLF)
        sent_any = False
        for part in self.parts:
            if isinstance(part, str):
                part = part.encode("utf-8")
            elif isinstance(part, memoryview):
                part = part.tobytes()
            view = memoryview(part)
            length = len(part)
            start = 0
            while start < length:
                if after_cr and part[start] == 10:
                    # The LF completing a CRLF whose CR ended the previous window.
                    start += 1
                    after_cr = False
                    continue
                end = min(start + CHUNK_BYTES, length)
                if end < length and part[end - 1] == 13:
                    end += 1  # keep CRLF pairs inside one window
                # Clean: every CR and every LF belongs to a CRLF pair. The
                # single-byte counts are the cheapest passes, so they go first.
                lfs = part.count(b"\n", start, end)
                clean = part.count(b"\r", start, end) == lfs and (
                    lfs == 0 or part.count(b"\r\n", start, end) == lfs
                )
                if clean and (lfs == 0 or part.find(b"\r\n.", start, end) < 0):
                    chunk: Buffer = view[start:end]
                else:
                    data = part[start:end]
                    if not clean:
                        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
                        data = data.replace(b"\n", b"\r\n")
                    chunk = data.replace(b"\r\n.", b"\r\n..")
                if at_line_start and part[start] == 46:  # '.'
                    yield b"."
                yield chunk
                sent_any = True
                last = part[end - 1]
                after_cr = last == 13
                at_line_start = last in (10, 13)
                start = end
        if not sent_any or at_line_start:
            yield b".\r\n"
        else:
            yield b"\r\n.\r\n"
