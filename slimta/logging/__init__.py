"""Structured DEBUG logging for sockets, subprocesses, HTTP and queue storage.

Every line has the form ``<type>:<id>:<op> key=value ...``: the keys are sorted
and each value is a Python literal (``repr``), shortened to about
:data:`MAX_REPR_LENGTH` characters, so :func:`parseline` can read it back.
Nothing is formatted unless the underlying logger is enabled for the level.
"""

from __future__ import annotations

import ast
import logging
import re
import sys
import traceback
from collections.abc import Mapping
from typing import Any

__all__ = [
    "getSocketLogger",
    "getSubprocessLogger",
    "getQueueStorageLogger",
    "getHttpLogger",
    "log_exception",
    "parseline",
]

#: Values whose ``repr`` is longer than this are shortened.
MAX_REPR_LENGTH = 100

_LINE_RE = re.compile(r"^([A-Za-z_]+):([^:\s]+):([A-Za-z_]+)(?: (.*))?$", re.S)
_KEY_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
_AUTH_RE = re.compile(rb"^(\s*AUTH\s+[A-Za-z0-9_-]+)\s+\S", re.I)


def _short_repr(value: Any) -> str:
    text = repr(value)
    if len(text) <= MAX_REPR_LENGTH:
        return text
    if isinstance(value, (str, bytes)):
        # Cut the value, not its repr, so the result stays a valid literal.
        cut = MAX_REPR_LENGTH
        while cut > 0:
            text = repr(value[:cut])
            if len(text) <= MAX_REPR_LENGTH:
                return text
            cut -= max(1, len(text) - MAX_REPR_LENGTH)
    return repr(text[:MAX_REPR_LENGTH])


def _format(kind: str, ident: Any, op: str, data: Mapping[str, Any]) -> str:
    parts = [f"{kind}:{ident}:{op}"]
    for key in sorted(data):
        parts.append(f"{key}={_short_repr(data[key])}")
    return " ".join(parts)


def redact(data: bytes) -> bytes:
    """Hide the secret part of a line the client writes during AUTH.

    ``AUTH PLAIN <b64>`` keeps its mechanism name; any other line is masked whole.
    """
    match = _AUTH_RE.match(data)
    if match:
        return match.group(1) + b" ********"
    return b"********" if data.strip() else data


class _Logger:
    kind = ""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log

    def _write(self, ident: Any, op: str, level: int = logging.DEBUG, **data: Any) -> None:
        if self.log.isEnabledFor(level):
            self.log.log(level, "%s", _format(self.kind, ident, op, data))


class SocketLogger(_Logger):
    """Logs socket activity as ``fd:<id>:<op>`` lines."""

    kind = "fd"
    #: The level of ``error`` lines.
    socket_error_log_level = logging.ERROR

    def send(self, sock: Any, data: bytes, secret: bool = False) -> None:
        """A write. With ``secret``, or for an ``AUTH`` command, the data is masked."""
        if not self.log.isEnabledFor(logging.DEBUG):
            return
        if secret or _AUTH_RE.match(data):
            data = redact(data)
        self._write(id(sock), "send", data=data)

    def recv(self, sock: Any, data: bytes) -> None:
        self._write(id(sock), "recv", data=data)

    def accept(self, server: Any, client: Any, address: Any = None) -> None:
        self._write(id(server), "accept", peer=address, client=id(client))

    def connect(self, sock: Any, address: Any) -> None:
        self._write(id(sock), "connect", peer=address)

    def encrypt(self, sock: Any, tls_args: Any = None) -> None:
        self._write(id(sock), "encrypt", **(dict(tls_args) if tls_args else {}))

    def shutdown(self, sock: Any, how: int) -> None:
        self._write(id(sock), "shutdown", how=how)

    def close(self, sock: Any) -> None:
        self._write(id(sock), "close")

    def error(self, sock: Any, exc: BaseException, address: Any = None) -> None:
        self._write(
            id(sock), "error", level=self.socket_error_log_level, address=address, error=str(exc)
        )


class SubprocessLogger(_Logger):
    """Logs child processes as ``pid:<pid>:<op>`` lines."""

    kind = "pid"

    def popen(self, process: Any, args: Any) -> None:
        self._write(process.pid, "popen", args=args)

    def stdio(self, process: Any, stdin: Any, stdout: Any, stderr: Any) -> None:
        self._write(process.pid, "stdio", stdin=stdin, stdout=stdout, stderr=stderr)

    def exit(self, process: Any) -> None:
        self._write(process.pid, "exit", returncode=process.returncode)


class HttpLogger(_Logger):
    """Logs HTTP exchanges as ``http:<id>:<op>`` lines."""

    kind = "http"

    def request(
        self, conn: Any, method: str, path: str, headers: Any, is_client: bool = True
    ) -> None:
        self._write(
            id(conn), "request", method=method, path=path, headers=headers, is_client=is_client
        )

    def response(self, conn: Any, status: Any, headers: Any, is_client: bool = True) -> None:
        self._write(id(conn), "response", status=status, headers=headers, is_client=is_client)

    def wsgi_request(self, environ: Mapping[str, Any]) -> None:
        self._write(
            id(environ),
            "request",
            method=environ.get("REQUEST_METHOD"),
            path=environ.get("PATH_INFO"),
            headers=[(k, v) for k, v in environ.items() if k.startswith("HTTP_")],
            is_client=False,
        )

    def wsgi_response(self, environ: Mapping[str, Any], status: Any, headers: Any) -> None:
        self._write(id(environ), "response", status=status, headers=headers, is_client=False)


class QueueStorageLogger(_Logger):
    """Logs queue storage operations as ``queue:<id>:<op>`` lines."""

    kind = "queue"

    def write(self, id: Any, envelope: Any) -> None:
        self._write(
            id,
            "write",
            sender=getattr(envelope, "sender", None),
            recipients=getattr(envelope, "recipients", None),
        )

    def update_meta(self, id: Any, **what: Any) -> None:
        self._write(id, "meta", **what)

    def remove(self, id: Any) -> None:
        self._write(id, "remove")


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

    Call it only inside an ``except`` block; elsewhere it does nothing.
    """
    exc_type, exc, tb = sys.exc_info()
    if exc_type is None:
        return
    log = logging.getLogger(name)
    if not log.isEnabledFor(logging.ERROR):
        return
    data = dict(kwargs)
    data["args"] = getattr(exc, "args", ())
    data["message"] = str(exc)
    data["traceback"] = "".join(traceback.format_exception(exc_type, exc, tb))
    log.error("%s", _format("exception", exc_type.__name__, "unhandled", data))


def parseline(line: str) -> tuple[str, str, str, dict[str, Any]]:
    """Read back a line written by one of these loggers.

    :returns: ``(type, id, op, data)``, with each value evaluated as a literal.
    :raises ValueError: when the line does not start with ``type:id:op``.
    """
    match = _LINE_RE.match(line.rstrip("\r\n"))
    if not match:
        raise ValueError("Invalid log line: " + line)
    kind, ident, op, rest = match.groups()
    return kind, ident, op, _parse_fields(rest or "")


def _parse_fields(text: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    pos = 0
    while pos < len(text):
        key_match = _KEY_RE.match(text, pos)
        if not key_match:
            raise ValueError("Invalid log fields: " + text)
        start = key_match.end()
        # The value runs up to the next " key=" at which it parses as a literal.
        for boundary in _candidate_ends(text, start):
            try:
                value = ast.literal_eval(text[start:boundary])
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
            data[key_match.group(1)] = value
            pos = boundary + 1
            break
        else:
            raise ValueError("Invalid log value: " + text[start:])
    return data


def _candidate_ends(text: str, start: int) -> list[int]:
    ends = [m.start() for m in re.finditer(r" (?=[A-Za-z_][A-Za-z0-9_]*=)", text[start:])]
    return [start + end for end in ends] + [len(text)]
