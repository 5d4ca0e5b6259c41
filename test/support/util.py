"""Small helpers the real-server fixtures share."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: The one guard time of the suite, in seconds: how long a single blocking step
#: (a relay attempt, a reply, a server start, a child process) may take before the
#: test fails instead of hanging. A guard only turns a hang into a failure: a
#: passing test never waits it out, and no outcome is asserted against it, so it is
#: generous. It covers the slowest single step in the suite (a delivery through a
#: real daemon such as Postfix or Dovecot) on a shared 2-core machine running
#: several suites at once. A step that genuinely takes longer (spamd loading its
#: rules) uses a documented multiple of it.
GUARD_SECONDS = 20.0

#: Extra places Debian installs the daemons we drive.
SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/lib/dovecot", "/usr/bin"]
)


def require_program(name: str) -> str:
    """Return the path of ``name`` or skip (fail under ``CI=true``) when it is missing."""
    path = name if os.path.isabs(name) and os.access(name, os.X_OK) else None
    path = path or shutil.which(name, path=SEARCH_PATH)
    if path is None:
        message = f"{name} is not installed (run scripts/test.sh to install it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """Pick a currently free TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until ``host:port`` accepts a TCP connection, or raise after ``timeout``.

    This polls ``connect`` rather than sleeping a fixed time: it returns as soon as
    the server is listening, and fails loudly if it never does.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            last = exc
            time.sleep(0.02)
    raise RuntimeError(f"server on {host}:{port} did not start: {last}")


def wait_for_path(path: str, timeout: float = 10.0) -> None:
    """Block until ``path`` exists, or raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{path} did not appear within {timeout}s")


def wait_until(
    predicate: Callable[[], bool], what: str, timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until it is true, or raise naming ``what`` after ``timeout``.

    For conditions with no event to wait on (a file written by another process, a
    child that must exit): it returns as soon as the condition holds, so it is not a
    fixed sleep, and the guard turns a hang into a clear failure.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_for_process_port(
    proc: subprocess.Popen[bytes], host: str, port: int, timeout: float = 10.0
) -> None:
    """Wait until the child ``proc`` listens on ``host:port``; fail fast if it exits first.

    A daemon that cannot bind (port taken, bad config) exits at once; reporting that
    beats waiting out the whole timeout and blaming the port.
    """

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(ready, f"{host}:{port} to accept connections", timeout)


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Stop a child started with ``start_new_session=True`` and everything it forked.

    SIGTERM goes to the leader first so a daemon can shut down cleanly; whatever is
    left in its process group afterwards (workers the leader did not reap in time)
    gets SIGKILL. The leader is always waited for, so no zombie or ResourceWarning
    is left behind.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@contextlib.contextmanager
def shared_tmpdir(prefix: str) -> Iterator[str]:
    """Yield a fresh directory that unprivileged daemon users can traverse.

    pytest's ``tmp_path`` lives under a 0700 root-owned tree, which ``nobody`` (the
    user smtp-sink, dovecot and maildrop deliveries run as) cannot enter. This makes
    a 0755 directory directly under the system temp dir and removes it afterwards.
    """
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        os.chmod(path, 0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def chown_nobody(path: str) -> None:
    """Give ``path`` to ``nobody:nogroup`` (the uid the daemons drop to)."""
    entry = pwd.getpwnam("nobody")
    os.chown(path, entry.pw_uid, entry.pw_gid)


def read_maildir(path: str) -> list[bytes]:
    """Return the messages in the Maildir at ``path`` (``new/`` and ``cur/``), oldest first.

    Ordered by modification time, then by name: Maildir names start with the
    delivery time, but only in whole seconds.
    """
    found: list[tuple[int, str, str]] = []
    for sub in ("new", "cur"):
        folder = os.path.join(path, sub)
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            full = os.path.join(folder, name)
            found.append((os.stat(full).st_mtime_ns, name, full))
    messages = []
    for _, _, full in sorted(found):
        with open(full, "rb") as handle:
            messages.append(handle.read())
    return messages
