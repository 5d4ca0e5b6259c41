"""Child processes as ``pid:<pid>:<op>`` log lines."""

from __future__ import annotations

from typing import Any

from slimta.logging.log import _BaseLogger

__all__ = ["SubprocessLogger"]


class SubprocessLogger(_BaseLogger):
    """Logs a child process's start, standard streams and exit, at DEBUG.

    :param log: the :class:`logging.Logger` to write to.
    """

    kind = "pid"

    def popen(self, process: Any, args: Any) -> None:
        """The process started with ``args``."""
        self.log(process.pid, "popen", args=args)

    def stdio(self, process: Any, stdin: Any, stdout: Any, stderr: Any) -> None:
        """What was written to the process and what it wrote back."""
        self.log(process.pid, "stdio", stdin=stdin, stdout=stdout, stderr=stderr)

    def exit(self, process: Any) -> None:
        """The process ended with ``process.returncode``."""
        self.log(process.pid, "exit", returncode=process.returncode)
