"""Process set-up for a mail server: daemonize, redirect stdio, drop root, PID file."""

from __future__ import annotations

import grp
import os
import pwd
import sys
from types import TracebackType

__all__ = ["daemonize", "redirect_stdio", "drop_privileges", "PidFile"]


def daemonize() -> int:
    """Detach from the terminal with the usual double fork.

    The calling process and the intermediate child exit (``os._exit(0)``); the
    grandchild returns, in a new session, with ``/`` as its working directory
    and a zero umask. Standard input, output and error are left alone (see
    :func:`redirect_stdio`).

    :returns: the PID of the daemon (the process that returns).
    :raises OSError: when a fork fails (python-slimta returned ``None`` and
        carried on undetached).
    """
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    os.setsid()
    os.umask(0)
    if os.fork() > 0:
        os._exit(0)
    return os.getpid()


def redirect_stdio(
    stdout: str | None = None, stderr: str | None = None, stdin: str | None = None
) -> None:
    """Point the standard streams at files (by file descriptor).

    Output files are opened for appending (and created), the input file for
    reading; a stream given no file is pointed at :data:`os.devnull`.

    :param stdout: the file standard output appends to.
    :param stderr: the file standard error appends to.
    :param stdin: the file standard input reads from.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    targets = (
        (stdin, os.O_RDONLY, 0),
        (stdout, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 1),
        (stderr, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 2),
    )
    for path, flags, fd in targets:
        new_fd = os.open(path or os.devnull, flags, 0o644)
        try:
            os.dup2(new_fd, fd)
        finally:
            os.close(new_fd)


def _gid(group: str | int) -> int:
    try:
        return int(group)
    except ValueError:
        return grp.getgrnam(str(group)).gr_gid


def _uid(user: str | int) -> int:
    try:
        return int(user)
    except ValueError:
        return pwd.getpwnam(str(user)).pw_uid


def drop_privileges(user: str | int | None = None, group: str | int | None = None) -> None:
    """Give up root, typically once the privileged ports are open.

    The group changes first (it can no longer change once the user has), and,
    when running as root, the supplementary groups are reduced to that group
    (python-slimta kept root's, e.g. ``root`` and ``disk``).

    :param user: a user name or UID; ``None`` keeps the user.
    :param group: a group name or GID; ``None`` keeps the group.
    :raises KeyError: an unknown user or group name.
    :raises PermissionError: not allowed to change.
    """
    if group is not None and group != "":
        gid = _gid(group)
        if os.geteuid() == 0:
            os.setgroups([gid])
        os.setgid(gid)
    if user is not None and user != "":
        os.setuid(_uid(user))


class PidFile:
    """A context manager that keeps a file holding this process's PID.

    The file is written on entry and removed on exit, unless another process
    has written its own PID there in the meantime. An :class:`OSError` while
    writing it propagates before the context body runs.

    :param filename: the PID file; ``None`` or ``''`` for none at all.
    """

    def __init__(self, filename: str | None = None) -> None:
        self.filename = os.path.abspath(filename) if filename else None

    def __enter__(self) -> str | None:
        if self.filename:
            content = f"{os.getpid()}\n".encode("ascii")
            tmp = f"{self.filename}.{os.getpid()}.tmp"
            try:
                with open(tmp, "wb") as pidfile:
                    pidfile.write(content)
                os.replace(tmp, self.filename)
            except OSError:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        return self.filename

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.filename:
            return
        try:
            with open(self.filename, "rb") as pidfile:
                if pidfile.read().strip() != str(os.getpid()).encode("ascii"):
                    return
            os.unlink(self.filename)
        except OSError:
            pass
