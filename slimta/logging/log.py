"""The line format every :mod:`slimta.logging` logger writes.

A line is ``<type>:<id>:<op>``, followed when there is data by
``key=value`` pairs, keys sorted, each value a Python literal (``repr``)
shortened to about :data:`MAX_REPR_LENGTH` characters. The line is the log
record's ``msg`` itself (no ``%`` arguments), so a :class:`logging.Filter`
that reads ``record.msg`` sees it whole.
"""

from __future__ import annotations

import logging
import reprlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["log_repr", "logline"]

#: Values whose ``repr`` is longer than this are shortened.
MAX_REPR_LENGTH = 100


def short_repr(value: Any, limit: int = MAX_REPR_LENGTH) -> str:
    """``repr(value)``, at most about ``limit`` characters, still a valid literal.

    A long ``str`` or ``bytes`` keeps its beginning; any other long value is
    written as the string of the beginning of its ``repr``.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, (str, bytes)):
        # Shorten the value, not its repr, so that no escape is cut in half.
        cut = min(len(value), limit)
        while cut > 0:
            text = repr(value[:cut])
            if len(text) <= limit:
                return text
            # Escapes make the repr longer than the value: shrink in proportion.
            cut = min(cut - 1, cut * limit // len(text))
    return repr(text[:limit])


class LogRepr(reprlib.Repr):
    """The :class:`reprlib.Repr` behind :data:`log_repr`.

    ``maxstring`` bounds strings and bytes, ``maxother`` everything else; unlike
    the stock :class:`reprlib.Repr`, a shortened value still parses with
    :func:`ast.literal_eval` (see :func:`slimta.logging.parseline`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = MAX_REPR_LENGTH
        self.maxother = MAX_REPR_LENGTH

    def repr(self, x: Any) -> str:
        limit = self.maxstring if isinstance(x, (str, bytes)) else self.maxother
        return short_repr(x, limit)


#: Formats each value of a log line.
log_repr = LogRepr()


def format_line(type: str, typeid: Any, operation: str, data: Mapping[str, Any]) -> str:
    """One log line: ``type:typeid:operation`` and the sorted ``key=value`` pairs."""
    head = f"{type}:{typeid}:{operation}"
    if not data:
        return head
    pairs = " ".join(f"{key}={log_repr.repr(data[key])}" for key in sorted(data))
    return f"{head} {pairs}"


def logline(log: Callable[[str], Any], type: str, typeid: Any, operation: str, **data: Any) -> None:
    """Format one line and hand it to ``log``, e.g. a logger's ``debug`` method.

    :param log: called with the line as its only argument.
    :param type: the kind of thing logged, e.g. ``'fd'`` or ``'pid'``.
    :param typeid: which one, e.g. a file descriptor or a process id.
    :param operation: what happened, e.g. ``'send'``.
    :param data: the ``key=value`` pairs.
    """
    log(format_line(type, typeid, operation, data))


class _BaseLogger:
    """Common base of the slimta loggers: one :class:`logging.Logger`, one line type."""

    #: The ``<type>`` part of every line.
    kind = ""

    def __init__(self, log: Any) -> None:
        # The parameter keeps python-slimta's name; the method log() is ours.
        #: The :class:`logging.Logger` written to.
        self.logger = log

    def log(self, typeid: Any, operation: str, **data: Any) -> None:
        """Write one DEBUG line."""
        self._write(logging.DEBUG, typeid, operation, data)

    def _write(self, level: int, typeid: Any, operation: str, data: Mapping[str, Any]) -> None:
        # Nothing is formatted unless the logger would emit the line.
        if self.logger.isEnabledFor(level):
            self.logger.log(level, format_line(self.kind, typeid, operation, data))
