"""Running one delivery program for :mod:`slimta.relay.pipe`.

Spawn it, stream the message to its standard input, read its output (keeping
at most :data:`MAX_CAPTURE_BYTES` of each stream), and kill it with its process
group when the time is up or the attempt is interrupted. Log lines go to the
``slimta.relay.pipe`` logger, as they always have.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from typing import Any

import gevent
import gevent.subprocess
from gevent.subprocess import PIPE

from slimta.logging import getSubprocessLogger
from slimta.relay._pipe_errors import internal_error, timeout_error

__all__ = [
    "MAX_CAPTURE_BYTES",
    "IO_CHUNK_BYTES",
    "KILL_REAP_TIMEOUT_SECONDS",
    "Deadline",
    "run_process",
]

#: The logger name the pipe relay's process log lines have always used.
_LOGGER_NAME = "slimta.relay.pipe"
log = logging.getLogger(_LOGGER_NAME)
subprocess_log = getSubprocessLogger(_LOGGER_NAME)

#: The most bytes of standard output, and of standard error, kept per process.
#: Output beyond this is read and discarded, so the program never blocks on it.
MAX_CAPTURE_BYTES = 64 * 1024
#: The size of each write to the program's standard input and each read from it.
IO_CHUNK_BYTES = 64 * 1024
#: How long to wait for a killed process to be reaped.
KILL_REAP_TIMEOUT_SECONDS = 5.0


# -- the deadline ---------------------------------------------------------------------
class Deadline:
    """The time left for the whole attempt (``None``: unlimited)."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._end = None if timeout is None else _now() + timeout

    def remaining(self) -> float | None:
        if self._end is None:
            return None
        return self._end - _now()


def _now() -> float:
    return time.monotonic()


# -- the process -----------------------------------------------------------------------
def _feed(stdin: Any, chunks: Sequence[bytes]) -> None:
    """Write ``chunks`` to the child's stdin, then close it.

    A child that exits without reading all of its input is not an error here:
    its exit status says what happened.
    """
    try:
        for data in chunks:
            view = memoryview(data)
            for start in range(0, len(view), IO_CHUNK_BYTES):
                stdin.write(view[start : start + IO_CHUNK_BYTES])
        stdin.flush()
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
            log.debug("error writing to the delivery program: %r", exc)
    finally:
        try:
            stdin.close()
        except OSError:
            pass


def _collect(stream: Any) -> bytes:
    """Read ``stream`` to its end, keeping the first :data:`MAX_CAPTURE_BYTES`."""
    kept = bytearray()
    try:
        while True:
            data = stream.read(IO_CHUNK_BYTES)
            if not data:
                break
            room = MAX_CAPTURE_BYTES - len(kept)
            if room > 0:
                kept += data[:room]
    except (OSError, ValueError) as exc:
        log.debug("error reading from the delivery program: %r", exc)
    return bytes(kept)


def _kill(proc: Any, own_group: bool) -> None:
    """SIGKILL the child (and its process group when it leads one), then reap it."""
    if own_group and proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=KILL_REAP_TIMEOUT_SECONDS)
    except gevent.subprocess.TimeoutExpired:
        log.error("delivery program %d did not die after SIGKILL", proc.pid)


def _close_pipes(proc: Any) -> None:
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


def run_process(
    argv: list[str],
    message: tuple[bytes, bytes],
    timeout: float | None,
    popen_kwargs: Mapping[str, Any],
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` with ``message`` on its standard input, within ``timeout`` seconds.

    The child runs in a new session unless ``popen_kwargs`` says otherwise, so
    that a timeout can kill its whole process group.

    :returns: ``(exit status, captured stdout, captured stderr)``.
    :raises TransientRelayError: the program could not be started, or timed out.
    """
    kwargs = dict(popen_kwargs)
    kwargs.setdefault("start_new_session", True)
    kwargs.setdefault("close_fds", True)
    own_group = bool(kwargs.get("start_new_session")) or kwargs.get("process_group") == 0
    try:
        proc = gevent.subprocess.Popen(argv, stdin=PIPE, stdout=PIPE, stderr=PIPE, **kwargs)
    except (OSError, ValueError, gevent.subprocess.SubprocessError) as exc:
        raise internal_error(f"Could not start {argv[0]!r}: {exc}")
    subprocess_log.popen(proc, argv)
    timer = gevent.Timeout(timeout)
    workers: list[gevent.Greenlet] = []
    try:
        timer.start()
        workers = [
            gevent.spawn(_feed, proc.stdin, message),
            gevent.spawn(_collect, proc.stdout),
            gevent.spawn(_collect, proc.stderr),
        ]
        status = proc.wait()
        # A program that left children holding its output open is still
        # running as far as we are concerned; the timer bounds this too.
        for worker in workers:
            worker.join()
        stdout, stderr = workers[1].value or b"", workers[2].value or b""
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        log.warning("delivery program %d timed out, killing it", proc.pid)
        _kill(proc, own_group)
        raise timeout_error()
    finally:
        timer.close()
        if proc.returncode is None:  # interrupted (relay killed): leave nothing
            _kill(proc, own_group)
        gevent.killall(workers)
        _close_pipes(proc)
    subprocess_log.stdio(proc, None, stdout, stderr)
    subprocess_log.exit(proc)
    return int(status), stdout, stderr
