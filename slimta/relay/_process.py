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
from collections.abc import Callable, Mapping, Sequence
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
    "OUTPUT_GRACE_SECONDS",
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
#: After the program exits, how long its output may stay open (held by a child
#: it left behind) before that process group is killed and the output closed.
OUTPUT_GRACE_SECONDS = 2.0


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


def _collect(stream: Any, kept: bytearray) -> None:
    """Read ``stream`` to its end into ``kept``, up to :data:`MAX_CAPTURE_BYTES`."""
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


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(proc: Any, own_group: bool) -> None:
    """SIGKILL the child (and its process group when it leads one), then reap it."""
    if own_group and proc.returncode is None:
        _kill_group(proc.pid)
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
    *,
    started: Callable[[int], None] | None = None,
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` with ``message`` on its standard input, within ``timeout`` seconds.

    The child runs in a new session unless ``popen_kwargs`` says otherwise, so
    that a timeout can kill its whole process group.

    :param started: called with the child's pid once it runs (a wire trace).
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
    out, err = bytearray(), bytearray()
    try:
        timer.start()
        if started is not None:
            started(proc.pid)
        workers = [
            gevent.spawn(_feed, proc.stdin, message),
            gevent.spawn(_collect, proc.stdout, out),
            gevent.spawn(_collect, proc.stderr, err),
        ]
        status = proc.wait()
        # The program has exited; a child it left behind may still hold its
        # output open. Wait a little for the end of that output, then end that
        # process group too, so the attempt finishes even without a timeout.
        gevent.joinall(workers, timeout=OUTPUT_GRACE_SECONDS)
        if not all(worker.dead for worker in workers):
            log.warning("delivery program %d left its output open; ending it", proc.pid)
            if own_group:
                _kill_group(proc.pid)
            gevent.joinall(workers, timeout=OUTPUT_GRACE_SECONDS)
        stdout, stderr = bytes(out), bytes(err)
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
