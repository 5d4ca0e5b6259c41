import pytest

from slimta.core import SlimtaError
from slimta.envelope import Envelope
from slimta.policy import RelayPolicy
from slimta.relay import PermanentRelayError, Relay, RelayError, TransientRelayError
from slimta.relay.blackhole import BlackholeRelay
from slimta.smtp.reply import Reply


def test_error_default_replies():
    perm = PermanentRelayError("bad")
    assert str(perm) == "bad" and str(perm.reply) == "550 5.0.0 bad"
    trans = TransientRelayError("later")
    assert str(trans.reply) == "450 4.0.0 later"
    assert isinstance(perm, SlimtaError)
    reply = Reply("554", "5.7.1 no")
    assert PermanentRelayError("x", reply).reply is reply


def test_bare_relay_error_needs_reply():
    with pytest.raises(TypeError):
        RelayError("x")
    assert RelayError("x", Reply("451", "4.3.0 y")).reply.code == "451"


class Recorder(RelayPolicy):
    def __init__(self, log, fail=None):
        self.log, self.fail = log, fail

    def apply(self, envelope):
        self.log.append(envelope.sender)
        if self.fail:
            raise self.fail


class Echo(Relay):
    def attempt(self, envelope, attempts):
        return Reply("250", f"2.0.0 attempt {attempts}")


def test_attempt_runs_policies_in_order():
    log = []
    relay = Echo()
    relay.add_policy(Recorder(log))
    relay.add_policy(Recorder(log))
    assert str(relay._attempt(Envelope("s@x"), 2)) == "250 2.0.0 attempt 2"
    assert log == ["s@x", "s@x"]


def test_policy_error_propagates():
    relay = Echo()
    relay.add_policy(Recorder([], PermanentRelayError("no")))
    with pytest.raises(PermanentRelayError):
        relay._attempt(Envelope(), 0)


def test_add_policy_type_check_and_base_attempt():
    relay = Relay()
    with pytest.raises(TypeError):
        relay.add_policy(object())
    with pytest.raises(NotImplementedError):
        relay.attempt(Envelope(), 0)
    relay.kill()


def test_blackhole_skips_policies():
    relay = BlackholeRelay()
    relay.add_policy(Recorder([], PermanentRelayError("no")))
    reply = relay._attempt(Envelope(), 0)
    assert reply.code == "250" and reply.message.startswith("2.0.0 Message Delivered; ")
    assert reply != relay.attempt(Envelope(), 0)  # a fresh uuid each time
