"""The relays' Timeouts value: not given versus None, keywords in and out."""

from __future__ import annotations

import dataclasses

import pytest

from slimta.relay._timeouts import NOT_GIVEN, Timeouts
from slimta.relay.http import HttpRelay
from slimta.relay.smtp.client import SmtpRelayClient
from slimta.relay.smtp.lmtpclient import LmtpRelayClient
from slimta.relay.smtp.mx import MxSmtpRelay
from slimta.relay.smtp.static import StaticLmtpRelay, StaticSmtpRelay


def test_frozen() -> None:
    timeouts = Timeouts(1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        timeouts.connect = 2.0  # type: ignore[misc]


def test_not_given_is_not_none() -> None:
    timeouts = Timeouts(command=None)
    assert timeouts.connect is NOT_GIVEN and timeouts.command is None
    assert repr(NOT_GIVEN) == "NOT_GIVEN"
    assert timeouts.seconds("connect") is None  # applied, "not given" has no limit
    assert timeouts.keywords() == {"command_timeout": None}


def test_data_phase_falls_back_to_command() -> None:
    assert Timeouts(command=3.0).data_phase == 3.0
    assert Timeouts(command=3.0, data=0.0).data_phase == 0.0
    assert Timeouts(command=3.0, data=None).data_phase is None
    assert Timeouts().data_phase is None


def test_keywords_round_trip_ignores_other_options() -> None:
    given = {"idle_timeout": 30, "data_timeout": None, "ehlo_as": "me.test", "context": None}
    timeouts = Timeouts.from_keywords(given)
    assert timeouts == Timeouts(data=None, idle=30)
    assert timeouts.keywords() == {"data_timeout": None, "idle_timeout": 30}


def test_clone() -> None:
    base = Timeouts(connect=1.0, command=2.0)
    assert base.clone(idle=5.0) == Timeouts(1.0, 2.0, NOT_GIVEN, 5.0)
    assert base.clone(idle=5.0) is not base and base.idle is NOT_GIVEN


@pytest.mark.parametrize("cls", [SmtpRelayClient, LmtpRelayClient])
def test_client_attributes_read_and_write_the_value(cls: type[SmtpRelayClient]) -> None:
    client = cls(("mx.test", 25), None, connect_timeout=1.0, command_timeout=2.0,
                 idle_timeout=4.0)
    assert client.timeouts == Timeouts(1.0, 2.0, 2.0, 4.0)
    client.command_timeout = 5.0
    client.idle_timeout = None
    assert client.timeouts == Timeouts(1.0, 5.0, 2.0, None)
    client.data_timeout = None  # as if not given: as long as a command
    assert client.data_timeout == 5.0 and client.timeouts.data is NOT_GIVEN
    client.connect_timeout = 0.5
    assert (client.connect_timeout, client.command_timeout, client.idle_timeout) == (
        0.5, 5.0, None)


def test_static_and_mx_relays_show_the_timeouts_given() -> None:
    static = StaticSmtpRelay("mx.test", idle_timeout=30, command_timeout=5.0)
    assert static.timeouts == Timeouts(command=5.0, idle=30)
    assert static._client_kwargs["idle_timeout"] == 30  # still passed on as keywords
    client = static.add_client()
    assert client.timeouts == Timeouts(10.0, 5.0, 5.0, 30)
    assert StaticLmtpRelay().timeouts == Timeouts()
    mx = MxSmtpRelay(connect_timeout=2.0)
    assert mx.timeouts == Timeouts(connect=2.0)


def test_http_relay_keeps_its_timeouts_together() -> None:
    relay = HttpRelay("http://127.0.0.1:1/", timeout=5.0, idle_timeout=30.0)
    assert relay.timeouts == Timeouts(command=5.0, idle=30.0)
    relay.timeout = None
    assert relay.timeout is None and relay.timeouts.idle == 30.0
    relay.idle_timeout = 1.0
    assert relay.timeouts == Timeouts(command=None, idle=1.0)
