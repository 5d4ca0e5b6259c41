"""Structured DEBUG logging for sockets, subprocesses, HTTP and queue storage.

Every line has the form ``<type>:<id>:<op> key=value ...``: the keys are sorted
and each value is a Python literal (``repr``), shortened to about
:data:`slimta.logging.log.MAX_REPR_LENGTH` characters, so :func:`parseline` can
read it back. The line is the log record's ``msg`` (with no ``%`` arguments),
where a :class:`logging.Filter` finds it. Nothing is formatted unless the
underlying logger is enabled for the level.

The loggers live in :mod:`slimta.logging.socket`, :mod:`slimta.logging.subprocess`
and :mod:`slimta.logging.http`, and the line format in :mod:`slimta.logging.log`.
"""

from __future__ import annotations

import ast
import logging
import re
import sys
import traceback
from typing import Any

from slimta.logging.http import HttpLogger as HttpLogger
from slimta.logging.log import _BaseLogger, format_line, short_repr
from slimta.logging.socket import SocketLogger as SocketLogger
from slimta.logging.socket import redact as redact
from slimta.logging.subprocess import SubprocessLogger as SubprocessLogger

__all__ = [
    "getSocketLogger",
    "getSubprocessLogger",
    "getQueueStorageLogger",
    "getHttpLogger",
    "log_exception",
    "parseline",
]

#: The longest traceback text kept in an ``exception`` line.
MAX_TRACEBACK_LENGTH = 10000

# ``type:id:op``, then the data after one space. Every part but the last may
# hold anything but a colon (python-slimta reads lines the same way).
_LINE_RE = re.compile(r"^([^:]+):([^:]+):(\S+) ?")
_KEY_RE = re.compile(r"([^=]+)=")


class QueueStorageLogger(_BaseLogger):
    """Logs queue storage operations as ``queue:<id>:<op>`` lines, at DEBUG.

    :param log: the :class:`logging.Logger` to write to.
    """

    kind = "queue"

    def write(self, id: Any, envelope: Any) -> None:
        """A new envelope stored under ``id``."""
        if not self.logger.isEnabledFor(logging.DEBUG):
            return
        self.log(
            id,
            "write",
            sender=getattr(envelope, "sender", None),
            recipients=getattr(envelope, "recipients", None),
        )

    def update_meta(self, id: Any, **what: Any) -> None:
        """The stored metadata of ``id`` changed (e.g. ``attempts=3``)."""
        self.log(id, "meta", **what)

    def remove(self, id: Any) -> None:
        """``id`` left the queue, delivered or not."""
        if self.logger.isEnabledFor(logging.DEBUG):
            self.log(id, "remove")


def getSocketLogger(name: str) -> SocketLogger:  # noqa: N802 - python-slimta's name
    """A :class:`SocketLogger` writing to ``logging.getLogger(name)``."""
    return SocketLogger(logging.getLogger(name))


def getSubprocessLogger(name: str) -> SubprocessLogger:  # noqa: N802
    """A :class:`SubprocessLogger` writing to ``logging.getLogger(name)``."""
    return SubprocessLogger(logging.getLogger(name))


def getHttpLogger(name: str) -> HttpLogger:  # noqa: N802
    """An :class:`HttpLogger` writing to ``logging.getLogger(name)``."""
    return HttpLogger(logging.getLogger(name))


def getQueueStorageLogger(name: str) -> QueueStorageLogger:  # noqa: N802
    """A :class:`QueueStorageLogger` writing to ``logging.getLogger(name)``."""
    return QueueStorageLogger(logging.getLogger(name))


def log_exception(name: str, **kwargs: Any) -> None:
    """Log the exception being handled, at ERROR, with ``kwargs`` as extra fields.

    The line is ``exception:<Type>:unhandled``, then ``args``, ``message`` and
    the ``kwargs`` (sorted), then the ``traceback`` (up to
    :data:`MAX_TRACEBACK_LENGTH` characters). Call it only inside an ``except``
    block; elsewhere it does nothing.
    """
    exc_type, exc, tb = sys.exc_info()
    if exc_type is None or exc is None:
        return
    log = logging.getLogger(name)
    if not log.isEnabledFor(logging.ERROR):
        return
    data = dict(kwargs)
    data["message"] = str(exc)
    data["args"] = exc.args
    line = format_line("exception", exc_type.__name__, "unhandled", data)
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    log.error(f"{line} traceback={short_repr(text, MAX_TRACEBACK_LENGTH)}")


def parseline(line: str) -> tuple[str, str, str, dict[str, Any]]:
    """Read back a line written by one of these loggers.

    Values are read with ``ast.literal_eval``. Reading stops quietly at the
    first value that is not a literal (e.g. ``peer=<object ...>``) or text
    that is not ``key=value``: the pairs before it are returned.

    :param line: the line, with or without its line ending.
    :returns: ``(type, id, op, data)``.
    :raises ValueError: when the line does not start with ``type:id:op``.
    """
    match = _LINE_RE.match(line)
    if not match:
        raise ValueError(line)
    kind, ident, op = match.groups()
    return kind, ident, op, _parse_fields(line[match.end() :])


def _parse_fields(text: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    pos = 0
    while True:
        key_match = _KEY_RE.match(text, pos)
        if not key_match:
            return data
        start = key_match.end()
        # The value ends at the first space (or the end) where it is a literal.
        end = text.find(" ", start + 1)
        while True:
            stop = len(text) if end == -1 else end
            value = _literal(text[start:stop])
            if value is not _NOT_A_LITERAL:
                data[key_match.group(1)] = value
                break
            if end == -1:
                return data  # not a literal: the rest cannot be read either
            end = text.find(" ", end + 1)
        if end == -1:
            return data
        pos = end + 1


_NOT_A_LITERAL = object()


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_A_LITERAL
