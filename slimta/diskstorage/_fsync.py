"""Directory flushes shared by concurrent writers (a group commit).

After a rename, the directory holding the new name must be flushed with
``fsync`` before the write counts as durable. When several threads rename into
the same directory at once, one ``fsync`` started after all their renames
covers them all. :class:`DirectorySync` hands out that sharing: a caller waits
for a flush that *started* after its own call, and starts one itself if none
is running.
"""

from __future__ import annotations

import os
import threading

__all__ = ["DirectorySync", "fsync_dir"]


def fsync_dir(path: str) -> None:
    """Flush the directory entry changes of ``path`` to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectorySync:
    """Group commit of ``fsync`` on one directory, for threads.

    :param path: the directory.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._requested = 0  # tickets handed out
        self._flushed = 0  # every ticket up to this one is on disk
        self._running = False
        #: How many flushes actually ran (for tests and benchmarks).
        self.flushes = 0

    def sync(self) -> None:
        """Return once a flush that started after this call has finished.

        :raises OSError: the flush this caller ran failed (the others retry).
        """
        with self._cond:
            self._requested += 1
            ticket = self._requested
            self._cond.notify_all()  # for wait_for_requests()
            while self._flushed < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                covers = self._requested
                self._cond.release()
                try:
                    fsync_dir(self.path)
                    ok = True
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                if ok:
                    self.flushes += 1
                    self._flushed = max(self._flushed, covers)

    def wait_for_requests(self, count: int, timeout: float | None = None) -> bool:
        """Block until :meth:`sync` has been called ``count`` times in all.

        For tests and benchmarks that line writers up behind a running flush.

        :returns: ``False`` if ``timeout`` ran out first.
        """
        with self._cond:
            return self._cond.wait_for(lambda: self._requested >= count, timeout)
