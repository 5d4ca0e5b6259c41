"""Reads the message data of a ``DATA`` command from an :class:`~slimta.smtp.io.IO`.

python-slimta's class and method names, over our own decoder
(:class:`~slimta.smtp._server_core.DataDecoder`):

* only ``<CRLF>.<CRLF>`` ends the data; ``<LF>.<LF>``, ``<CR>.<CR>`` and the
  other SMTP smuggling shapes are message content;
* a bare CR or LF inside the data becomes CRLF (or, with
  ``bare_newline='reject'``, the message is refused);
* past ``max_size`` the rest of the message is read and dropped, never kept,
  and :class:`~slimta.smtp.MessageTooBig` is raised only once the end marker
  was read, so the session can go on with the next command.

.. versionchanged:: slimta-relay
   python-slimta ended the data at ``.`` followed by any line end and raised
   :class:`~slimta.smtp.MessageTooBig` in the middle of the data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimta.smtp._server_core import DataDecoder

if TYPE_CHECKING:
    from slimta.smtp.io import IO

__all__ = ["DataReader"]


class DataReader:
    """Reads message data until the end-of-data marker.

    :param io: the :class:`~slimta.smtp.io.IO` to read from.
    :param max_size: the most message bytes accepted, or ``None``.
    :param bare_newline: ``'normalize'`` or ``'reject'``, see above.
    """

    def __init__(
        self, io: IO, max_size: int | None = None, bare_newline: str = "normalize"
    ) -> None:
        self.io = io
        self.max_size = max_size
        self.decoder = DataDecoder(max_size, bare_newline)

    @property
    def size(self) -> int:
        """Message bytes read so far."""
        return self.decoder.size

    def from_recv_buffer(self) -> None:
        """Take the bytes already buffered in the IO (sent before the data started)."""
        pending = self.io.recv_buffer
        self.io.recv_buffer = b""
        if pending:
            self.add_lines(pending)

    def add_lines(self, piece: bytes) -> None:
        """Consume received bytes."""
        self.decoder.feed(piece)

    def handle_finished_line(self) -> None:
        """Kept for python-slimta compatibility; lines are handled in :meth:`add_lines`."""

    def recv_piece(self) -> bool:
        """Read one chunk from the socket.

        :returns: True while more data is expected.
        :raises ~slimta.smtp.ConnectionLost: when the client goes away first.
        """
        if self.decoder.done:
            return False
        return not self.decoder.feed(self.io.raw_recv())

    def return_all(self) -> bytes:
        """The message; bytes read past the end marker go back to the IO.

        :raises ~slimta.smtp.MessageTooBig: over ``max_size``.
        :raises ~slimta.smtp._server_core.BadDataError: a bare CR/LF under ``'reject'``.
        """
        self.io.recv_buffer = self.decoder.leftover
        self.decoder.leftover = b""
        return self.decoder.result()

    def recv(self) -> bytes:
        """Read the whole message data.

        :returns: the message, dot-stuffing undone, without the end marker.
        """
        self.from_recv_buffer()
        while self.recv_piece():
            pass
        return self.return_all()
