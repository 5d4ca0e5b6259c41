"""slimta.relay.smtp: the SMTP error classes and their factory."""

from __future__ import annotations

import pytest

from slimta.relay import PermanentRelayError, RelayError, TransientRelayError
from slimta.relay.smtp import SmtpPermanentRelayError, SmtpRelayError, SmtpTransientRelayError
from slimta.smtp.reply import Reply


def test_message_and_reply() -> None:
    reply = Reply("550", "5.1.1 No such user", b"RCPT")
    error = SmtpPermanentRelayError(reply)
    assert str(error) == "Permanent failure on RCPT: 550 5.1.1 No such user"
    assert error.reply is reply
    assert isinstance(error, (SmtpRelayError, PermanentRelayError, RelayError))


def test_unknown_command() -> None:
    error = SmtpTransientRelayError(Reply("451", "4.3.0 Oops"))
    assert str(error) == "Transient failure on [unknown command]: 451 4.3.0 Oops"
    assert isinstance(error, TransientRelayError)


def test_str_command_is_accepted() -> None:
    error = SmtpRelayError("Custom", Reply("421", "4.4.2 Slow", "[CONNECT]"))
    assert str(error) == "Custom failure on [CONNECT]: 421 4.4.2 Slow"


@pytest.mark.parametrize(
    "code, cls",
    [("550", SmtpPermanentRelayError), ("554", SmtpPermanentRelayError),
     ("450", SmtpTransientRelayError), ("421", SmtpTransientRelayError),
     ("250", SmtpTransientRelayError)],
)
def test_factory(code: str, cls: type) -> None:
    reply = Reply(code, "text")
    error = SmtpRelayError.factory(reply)
    assert type(error) is cls and error.reply is reply


def test_export() -> None:
    import slimta.relay.smtp as module

    assert module.__all__ == ["SmtpRelayError"]
