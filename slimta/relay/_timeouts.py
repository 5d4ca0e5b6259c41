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
from typing import Any, Final, Union

__all__ = ["NOT_GIVEN", "NotGiven", "Timeouts", "KEYWORDS"]


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
