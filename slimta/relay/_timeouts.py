"""The relays' timeouts as one immutable value.

The public constructors keep python-slimta's keywords (``connect_timeout``,
``command_timeout``, ``data_timeout``, ``idle_timeout``); inside, they travel as
one :class:`Timeouts`. A field may be :data:`NOT_GIVEN`, which is not the same
as ``None``: ``None`` waits forever, while "not given" lets whoever applies the
value use its own default. That is how a relay passes on only the keywords its
caller gave, and how ``data_timeout=None`` comes to mean "as long as a command".
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, Final, Union, overload

__all__ = ["NOT_GIVEN", "NotGiven", "Timeouts", "TimeoutField", "KEYWORDS"]


class NotGiven(enum.Enum):
    """The type of :data:`NOT_GIVEN`."""

    token = 0

    def __repr__(self) -> str:
        return "NOT_GIVEN"


#: A timeout the caller did not give, as opposed to ``None`` (no limit).
NOT_GIVEN: Final = NotGiven.token

Seconds = Union[float, None, NotGiven]

#: The field of :class:`Timeouts` behind each public keyword.
KEYWORDS: Final = {
    "connect_timeout": "connect",
    "command_timeout": "command",
    "data_timeout": "data",
    "idle_timeout": "idle",
}


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Seconds allowed for each phase of a relay connection.

    :param connect: opening the connection.
    :param command: each command and its reply (banner, EHLO, STARTTLS with its
        handshake, each AUTH round, MAIL, RCPT, DATA, RSET, QUIT).
    :param data: sending the message and reading its final reply or replies;
        not given means as long as ``command`` (see :attr:`data_phase`).
    :param idle: how long an open connection waits for the next message;
        ``None`` ends it after one.
    """

    connect: Seconds = NOT_GIVEN
    command: Seconds = NOT_GIVEN
    data: Seconds = NOT_GIVEN
    idle: Seconds = NOT_GIVEN

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any]) -> Timeouts:
        """The timeouts among python-slimta keywords; absent ones are not given.

        Other keys are ignored, so a relay's whole ``client_kwargs`` can be passed.
        """
        return cls(**{field: keywords[key] for key, field in KEYWORDS.items() if key in keywords})

    def keywords(self) -> dict[str, float | None]:
        """The given fields as python-slimta keywords (``{'idle_timeout': 30}``)."""
        values = {key: getattr(self, field) for key, field in KEYWORDS.items()}
        return {key: value for key, value in values.items() if value is not NOT_GIVEN}

    def clone(self, **changes: Seconds) -> Timeouts:
        """A copy with some fields changed, e.g. ``timeouts.clone(idle=None)``."""
        return dataclasses.replace(self, **changes)

    @property
    def data_phase(self) -> float | None:
        """Seconds for the message data: ``data``, or ``command`` when not given."""
        value = self.command if self.data is NOT_GIVEN else self.data
        return None if value is NOT_GIVEN else value

    def seconds(self, field: str) -> float | None:
        """One field's value, with "not given" read as ``None`` (no limit)."""
        value = getattr(self, field)
        return None if value is NOT_GIVEN else value


class TimeoutField:
    """One field of an object's :class:`Timeouts` (its ``timeouts`` attribute),
    read and written under a python-slimta attribute name (``command_timeout``).

    Reading gives seconds, or ``None`` for no limit; the ``data`` field reads
    :attr:`Timeouts.data_phase`, and setting it to ``None`` means "as long as a
    command".
    """

    def __init__(self, field: str, doc: str) -> None:
        self.field = field
        self.__doc__ = doc

    @overload
    def __get__(self, obj: None, owner: Any = None) -> TimeoutField: ...

    @overload
    def __get__(self, obj: Any, owner: Any = None) -> float | None: ...

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        timeouts: Timeouts = obj.timeouts
        return timeouts.data_phase if self.field == "data" else timeouts.seconds(self.field)

    def __set__(self, obj: Any, value: float | None) -> None:
        given: Seconds = NOT_GIVEN if value is None and self.field == "data" else value
        obj.timeouts = obj.timeouts.clone(**{self.field: given})
