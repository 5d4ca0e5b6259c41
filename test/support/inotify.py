"""The order in which files in one directory were closed after writing (Linux inotify).

smtp-sink closes a transaction's dump file when it reads the final ``.``, so the
close order is the order in which transactions completed. File times cannot give that
order: ext4 stamps them with a clock that ticks only every few milliseconds, and two
messages sent back to back often share a stamp.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

__all__ = ["CloseWatcher"]

_IN_CLOSE_WRITE = 0x00000008
_IN_Q_OVERFLOW = 0x00004000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
#: struct inotify_event without its trailing name: wd, mask, cookie, len.
_EVENT_HEADER = struct.Struct("iIII")
#: Bytes read per call; many events fit, and leftovers are read on the next call.
_READ_SIZE = 64 * 1024


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class CloseWatcher:
    """Names of files in ``directory`` closed after writing, in the order it happened."""

    def __init__(self, directory: str) -> None:
        libc = _libc()
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._fd: int | None = fd
        if libc.inotify_add_watch(fd, os.fsencode(directory), _IN_CLOSE_WRITE) < 0:
            errno = ctypes.get_errno()
            self.close()
            raise OSError(errno, f"inotify_add_watch({directory}) failed")
        self._closed_names: list[str] = []

    def closed_names(self) -> list[str]:
        """Every file name closed after writing so far, oldest first."""
        if self._fd is None:
            raise ValueError("watcher is closed")
        while True:
            try:
                buffer = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                break
            self._parse(buffer)
        return list(self._closed_names)

    def _parse(self, buffer: bytes) -> None:
        offset = 0
        while offset < len(buffer):
            _, mask, _, name_len = _EVENT_HEADER.unpack_from(buffer, offset)
            offset += _EVENT_HEADER.size
            name = buffer[offset : offset + name_len].rstrip(b"\0")
            offset += name_len
            if mask & _IN_Q_OVERFLOW:
                raise RuntimeError("inotify queue overflowed; close order was lost")
            if mask & _IN_CLOSE_WRITE and name:
                self._closed_names.append(os.fsdecode(name))

    def close(self) -> None:
        """Release the inotify descriptor."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
