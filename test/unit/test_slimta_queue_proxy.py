"""slimta.queue.proxy.ProxyQueue: relays inside enqueue() and reports the outcome."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import pytest
from support import envelopes

from slimta.envelope import Envelope
from slimta.queue.proxy import ProxyQueue
from slimta.relay import PermanentRelayError, Relay, TransientRelayError
from slimta.smtp.reply import Reply


class OneShot(Relay):
    def __init__(self, result: Any) -> None:
        super().__init__()
        self.result = result
        self.calls: list[tuple[list[str], int]] = []

    def attempt(self, envelope: Envelope, attempts: int) -> Any:
        self.calls.append((list(envelope.recipients), attempts))
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


make_envelope = partial(
    envelopes.make_envelope,
    sender="s@x.test",
    rcpts=["r@y.test"],
    data=b"Subject: proxied\r\n\r\nbody\r\n",
)


def test_delivered_message_gets_an_id() -> None:
    relay = OneShot(Reply("250", "2.0.0 Ok"))
    queue = ProxyQueue(relay)
    env = make_envelope()
    [(got, id)] = queue.enqueue(env)
    assert got is env and isinstance(id, str) and len(id) == 32
    assert relay.calls == [(["r@y.test"], 0)]


@pytest.mark.parametrize("error", [PermanentRelayError("no"), TransientRelayError("later")])
def test_relay_errors_are_returned(error: Exception) -> None:
    env = make_envelope()
    assert ProxyQueue(OneShot(error)).enqueue(env) == [(env, error)]


def test_unexpected_exception_is_a_transient_error(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="slimta.queue.proxy"):
        [(_, error)] = ProxyQueue(OneShot(KeyError("bug"))).enqueue(make_envelope())
    assert isinstance(error, TransientRelayError)
    assert error.reply.code == "450" and "Unhandled delivery error" in str(error.reply)
    assert "bug" in caplog.text


def test_per_recipient_results() -> None:
    perm = PermanentRelayError("no", Reply("550", "5.1.1 Unknown"))
    temp = TransientRelayError("later", Reply("451", "4.3.0 Later"))
    [(_, error)] = ProxyQueue(OneShot({"a@y.test": perm, "b@y.test": temp})).enqueue(
        make_envelope(rcpts=["a@y.test", "b@y.test"])
    )
    assert isinstance(error, TransientRelayError) and error.reply.code == "451"
    [(_, error)] = ProxyQueue(OneShot([perm, perm])).enqueue(
        make_envelope(rcpts=["a@y.test", "b@y.test"])
    )
    assert isinstance(error, PermanentRelayError) and error.reply.code == "550"


def test_partial_delivery_is_accepted_and_the_rest_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    perm = PermanentRelayError("no", Reply("550", "5.1.1 Unknown"))
    with caplog.at_level(logging.WARNING, logger="slimta.queue.proxy"):
        [(_, id)] = ProxyQueue(OneShot({"a@y.test": None, "b@y.test": perm})).enqueue(
            make_envelope(rcpts=["a@y.test", "b@y.test"])
        )
    assert isinstance(id, str)
    assert "b@y.test" in caplog.text and "5.1.1 Unknown" in caplog.text


def test_queue_interface_no_ops() -> None:
    queue = ProxyQueue(OneShot(None))
    queue.start()
    queue.flush()
    queue.kill()
    with pytest.raises(NotImplementedError):
        queue.add_policy(object())
