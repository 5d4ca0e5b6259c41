"""The ESMTP extensions a server advertises in its EHLO reply."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["Extensions"]

_SPLIT_RE = re.compile(r"\r?\n")
_LINE_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*)(?:\s+(.*?))?\s*$")


class Extensions:
    """A case-insensitive map of extension names to their optional parameter.

    Names are stored upper-case in :attr:`extensions`.
    """

    def __init__(self) -> None:
        self.extensions: dict[str, str | None] = {}

    def reset(self) -> None:
        """Forget every extension."""
        self.extensions.clear()

    def __contains__(self, ext: object) -> bool:
        if type(ext) is str:
            extensions = self.extensions
            return ext in extensions or ext.upper() in extensions
        if isinstance(ext, bytes):
            ext = ext.decode("ascii", "replace")
        return isinstance(ext, str) and ext.upper() in self.extensions

    def add(self, ext: str, param: str | None = None) -> None:
        """Record extension ``ext`` with an optional parameter."""
        self.extensions[ext.upper()] = param

    def drop(self, ext: str) -> bool:
        """Remove ``ext``.

        :returns: True if it was present.
        """
        return self.extensions.pop(ext.upper(), _MISSING) is not _MISSING

    def getparam(self, ext: str, filter: Callable[[str], Any] | None = None) -> Any:
        """The parameter of ``ext``, or ``None`` if it is missing or has none.

        :param filter: a converter such as :class:`int`; a ``ValueError`` from it
            gives ``None``.
        """
        param = self.extensions.get(ext.upper())
        if param is None or filter is None:
            return param
        try:
            return filter(param)
        except ValueError:
            return None

    def parse_string(self, string: str) -> str:
        """Parse EHLO reply text (without reply codes) into this object.

        :returns: the first line, the server's greeting.
        """
        lines = _SPLIT_RE.split(string)
        for line in lines[1:]:
            match = _LINE_RE.match(line.strip())
            if match:
                self.add(match.group(1), match.group(2) or None)
        return lines[0]

    def build_string(self, header: str) -> str:
        """Server side: ``header`` plus one line per extension, joined by CRLF.

        A parameter is written as its ``str()``. An extension whose parameter
        cannot be rendered is left out: its ``str()`` raises :class:`ValueError`
        (as :class:`~slimta.smtp.auth.AuthSession` does when no mechanism is
        usable, for example before TLS) or holds a line break.
        """
        lines = [header]
        for name, param in self.extensions.items():
            if param is None or param == "":
                lines.append(name)
                continue
            try:
                text = str(param)
            except ValueError:
                continue
            if "\r" in text or "\n" in text:
                continue
            lines.append(f"{name} {text}" if text else name)
        return "\r\n".join(lines)


_MISSING = object()
