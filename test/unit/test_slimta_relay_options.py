"""The typed keywords the SMTP/LMTP relays pass on (``slimta.relay.options``).

The relays keep python-slimta's ``**client_kwargs``; the TypedDicts say what may
travel inside. These checks keep the types in step with the client they describe
and show that, at run time, the relays still pass keywords through unread.
"""

from __future__ import annotations

import inspect
from typing import Any

from slimta.relay.options import (
    ClientKeywords,
    ClientOptions,
    LmtpRelayOptions,
    MxRelayKeywords,
    MxRelayOptions,
)
from slimta.relay.smtp.client import SmtpRelayClient
from slimta.relay.smtp.mx import MxSmtpRelay
from slimta.relay.smtp.static import StaticLmtpRelay, StaticSmtpRelay
from slimta.util.deque import BlockingDeque


def keys(typed: Any) -> set[str]:
    return set(typed.__required_keys__) | set(typed.__optional_keys__)


def test_client_keywords_are_exactly_the_client_parameters() -> None:
    params = set(inspect.signature(SmtpRelayClient.__init__).parameters)
    assert keys(ClientKeywords) == params - {"self", "address", "queue"}
    assert keys(ClientOptions) == keys(ClientKeywords) - {"context"}
    assert not ClientKeywords.__required_keys__  # every keyword may be left out


def test_relay_options_are_the_static_relay_parameters_plus_client_options() -> None:
    static = set(inspect.signature(StaticSmtpRelay.__init__).parameters)
    lmtp = set(inspect.signature(StaticLmtpRelay.__init__).parameters)
    assert keys(LmtpRelayOptions) - keys(ClientOptions) == static - lmtp
    assert keys(MxRelayOptions) - keys(ClientOptions) == {"pool_size", "client_class"}
    assert keys(MxRelayKeywords) == keys(MxRelayOptions) | {"context"}
    # No option repeats a relay's own parameter, so none can be given twice.
    assert not keys(ClientOptions) & static
    assert not keys(LmtpRelayOptions) & lmtp
    assert not keys(MxRelayOptions) & set(inspect.signature(MxSmtpRelay.__init__).parameters)


class _Custom(SmtpRelayClient):
    def __init__(self, address: Any, queue: Any, *, flavour: str, **kwargs: Any) -> None:
        super().__init__(address, queue, **kwargs)
        self.flavour = flavour


def test_keywords_of_a_custom_client_class_still_pass_through() -> None:
    relay = StaticSmtpRelay("mx.test", 2525, client_class=_Custom, ehlo_as="relay.test",
                            idle_timeout=30, flavour="vanilla")  # type: ignore[call-arg]
    client = relay.add_client()
    try:
        assert isinstance(client, _Custom)
        assert client.flavour == "vanilla"
        assert client.ehlo_as == "relay.test"
        assert client.idle_timeout == 30
        assert client.context is relay._client_kwargs["context"]
    finally:
        client.kill()


def test_mx_relay_hands_its_options_to_each_static_relay() -> None:
    mx = MxSmtpRelay(pool_size=2, client_class=_Custom, ehlo_as="relay.test",
                     command_timeout=7.0, flavour="mint")  # type: ignore[call-arg]
    static = mx.new_static_relay("mx.example.test", 25)
    try:
        assert isinstance(static, StaticSmtpRelay)
        assert static.pool_size == 2
        client = static.add_client()
        assert isinstance(client, _Custom) and client.flavour == "mint"
        assert client.command_timeout == 7.0
        assert client.context is mx._client_kwargs["context"]
        client.kill()
    finally:
        static.kill()
        mx.kill()


def test_lmtp_relay_takes_client_class_and_context_as_options() -> None:
    relay = StaticLmtpRelay("lmtp.test", 24, 1, client_class=_Custom,
                            flavour="plain")  # type: ignore[call-arg]
    client = relay.add_client()
    try:
        assert isinstance(client, _Custom) and client.flavour == "plain"
        assert isinstance(client.address, tuple) and client.address == ("lmtp.test", 24)
        assert isinstance(client.queue, BlockingDeque)
    finally:
        client.kill()
