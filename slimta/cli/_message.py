"""``slimta-relay``: reading the message, building the envelope, reading the results."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any, BinaryIO

from slimta.cli._destinations import UsageError
from slimta.envelope import Envelope
from slimta.relay import PermanentRelayError, RelayError, RelayResult
from slimta.smtp.reply import Reply

__all__ = [
    "Outcome",
    "Status",
    "build_envelope",
    "exit_status",
    "outcomes_of",
    "read_message",
]

#: sysexits.h: every recipient delivered.
EX_OK = 0
#: sysexits.h: bad arguments or unreadable input.
EX_USAGE = 64
#: sysexits.h: every failure was permanent.
EX_UNAVAILABLE = 69
#: sysexits.h: something went wrong inside slimta-relay itself.
EX_SOFTWARE = 70
#: sysexits.h: at least one failure was transient (try again later).
EX_TEMPFAIL = 75


class Status(enum.Enum):
    """What happened to one recipient."""

    DELIVERED = "delivered"
    BOUNCED = "bounced"  # a permanent failure
    DEFERRED = "deferred"  # a transient failure


@dataclass(frozen=True)
class Outcome:
    """One recipient's result: its status and the reply that explains it."""

    recipient: str
    status: Status
    reply: Reply | None

    def line(self) -> str:
        """``<status> <recipient>: <reply>``, on one line."""
        if self.reply is None:
            text = "(no reply: delivered)" if self.status is Status.DELIVERED else "(no reply)"
        else:
            text = " ".join(str(self.reply).split())
        return f"{self.status.value} {self.recipient}: {text}"


def read_message(path: str | None, stdin: BinaryIO | None) -> bytes:
    """Read the message from ``path``, or from ``stdin`` for ``-`` or no path.

    :raises UsageError: when it cannot be read, or is empty.
    """
    where = "standard input" if path in (None, "-") else path
    try:
        if path in (None, "-"):
            if stdin is None:
                raise UsageError("no standard input to read the message from")
            data = stdin.read()
        else:
            assert path is not None
            with open(path, "rb") as handle:
                data = handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read the message from {where}: {exc.strerror or exc}")
    if not data.strip():
        raise UsageError(f"the message from {where} is empty")
    return data


def _header_addresses(envelope: Envelope, names: Iterable[str]) -> list[str]:
    headers = envelope.headers
    if headers is None:
        return []
    values: list[str] = []
    for name in names:
        values.extend(str(value) for value in headers.get_all(name, []))
    return [address for _, address in getaddresses(values) if address]


def _unique(addresses: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(addresses))


def build_envelope(data: bytes, sender: str | None, recipients: Sequence[str]) -> Envelope:
    """Parse ``data`` and fill in the envelope like ``sendmail -t``.

    The sender defaults to the ``From`` address and the recipients to those of
    ``To``, ``Cc`` and ``Bcc``. ``Bcc`` headers are always removed before sending.

    :param sender: the envelope sender; ``''`` is the null sender, ``None``
        takes it from the headers.
    :param recipients: the envelope recipients; empty takes them from the headers.
    :raises UsageError: when no sender or no recipient can be found.
    """
    envelope = Envelope()
    envelope.parse(data)
    if sender is None:
        found = _header_addresses(envelope, ["From"])
        if not found:
            raise UsageError("no sender: use --from ADDRESS (or --from '' for the null sender)")
        sender = found[0]
    rcpts = _unique(recipients) or _unique(_header_addresses(envelope, ["To", "Cc", "Bcc"]))
    if not rcpts:
        raise UsageError("no recipients: use --to ADDRESS or give the message To/Cc/Bcc headers")
    if envelope.headers is not None:
        del envelope.headers["Bcc"]
    envelope.sender = sender
    envelope.recipients = rcpts
    return envelope


def _outcome(recipient: str, value: Any) -> Outcome:
    if isinstance(value, RelayError):
        status = Status.BOUNCED if isinstance(value, PermanentRelayError) else Status.DEFERRED
        return Outcome(recipient, status, value.reply)
    if isinstance(value, Reply) and value.is_error():
        # Not part of the result contract, but never report an error as delivered.
        status = Status.BOUNCED if (value.code or "").startswith("5") else Status.DEFERRED
        return Outcome(recipient, status, value)
    return Outcome(recipient, Status.DELIVERED, value if isinstance(value, Reply) else None)


def outcomes_of(recipients: Sequence[str], result: RelayResult | RelayError) -> list[Outcome]:
    """One :class:`Outcome` per recipient from what ``attempt()`` returned or raised."""
    if result is None or isinstance(result, (Reply, RelayError)):
        return [_outcome(rcpt, result) for rcpt in recipients]
    outcomes = []
    for rcpt in recipients:
        if rcpt in result:
            outcomes.append(_outcome(rcpt, result[rcpt]))
        else:
            # A relay that forgot a recipient: never claim it was delivered.
            outcomes.append(
                Outcome(rcpt, Status.DEFERRED, Reply("451", "4.3.0 No result for this recipient"))
            )
    return outcomes


def exit_status(outcomes: Iterable[Outcome]) -> int:
    """0 when all were delivered, 75 when any failure was transient, else 69."""
    statuses = {outcome.status for outcome in outcomes}
    if Status.DEFERRED in statuses:
        return EX_TEMPFAIL
    if Status.BOUNCED in statuses:
        return EX_UNAVAILABLE
    return EX_OK
