"""``str.format``-like substitution for byte strings.

Only bare ``{name}`` and ``{0}`` fields are supported (no conversions or format
specs), which is what message templates (bounce texts, for example) need.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["BytesFormat"]

# A field name is one or more ASCII word characters, as python-slimta matched it.
_FIELD_RE = re.compile(rb"\{([A-Za-z0-9_]+)\}")

_MODES = ("ignore", "remove", "strict")


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    # python-slimta called bytes(value), which made an int n into n zero bytes.
    return str(value).encode("utf-8")


class BytesFormat:
    """A bytes template with a :meth:`format` method like :meth:`str.format`.

    ``{0}``, ``{1}``... take positional arguments, ``{name}`` keyword ones.
    Values that are not bytes are written as their ``str()`` in UTF-8.

    :param template: the template.
    :param mode: what happens to a field no argument matches: ``'ignore'``
        leaves ``{field}`` as it is, ``'remove'`` drops it, ``'strict'`` raises
        :class:`KeyError` or :class:`IndexError`.
    :raises ValueError: for another ``mode``.
    """

    def __init__(self, template: bytes, mode: str = "ignore") -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, not {mode!r}")
        self.mode = mode
        #: ``(is_field, bytes)`` pieces of the template, in order.
        self.template_parts: list[tuple[int, bytes]] = []
        position = 0
        for match in _FIELD_RE.finditer(template):
            if match.start() > position:
                self.template_parts.append((0, template[position:match.start()]))
            self.template_parts.append((1, match.group(1)))
            position = match.end()
        if position < len(template):
            self.template_parts.append((0, template[position:]))

    @staticmethod
    def _lookup(name: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if name.isdigit():
            return args[int(name)]
        return kwargs[name.decode("ascii")]

    def _format(self, args: tuple[Any, ...], kwargs: dict[str, Any], mode: str) -> bytes:
        out: list[bytes] = []
        for is_field, piece in self.template_parts:
            if not is_field:
                out.append(piece)
                continue
            try:
                value = self._lookup(piece, args, kwargs)
            except (KeyError, IndexError):
                if mode == "strict":
                    raise
                if mode == "ignore":
                    out.append(b"{" + piece + b"}")
                continue
            out.append(_to_bytes(value))
        return b"".join(out)

    def format(self, *args: Any, **kwargs: Any) -> bytes:
        """The template with its fields replaced.

        :returns: the result, as bytes.
        :raises KeyError: (``'strict'`` mode) a named field has no argument.
        :raises IndexError: (``'strict'`` mode) a numbered field has no argument.
        """
        return self._format(args, kwargs, self.mode)

    def __repr__(self) -> str:
        return repr(self._format((), {}, "ignore"))
