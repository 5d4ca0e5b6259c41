"""StaticSmtpRelay / StaticLmtpRelay: configuration, pooling, reuse, unix sockets."""

from __future__ import annotations

import os
import ssl
from typing import Any

import gevent
import pytest
from support.envelopes import make_envelope
from support.util import GUARD_SECONDS

from slimta.relay.pool import RelayPool
from slimta.relay.smtp.client import SmtpRelayClient
from slimta.relay.smtp.lmtpclient import LmtpRelayClient
from slimta.relay.smtp.static import StaticLmtpRelay, StaticSmtpRelay
from slimta.smtp.reply import Reply

pytestmark = pytest.mark.usefixtures("no_relay_leaks")


class _Custom(SmtpRelayClient):
    pass


def test_configuration() -> None:
    relay = StaticSmtpRelay("smart.test", 587, 4, idle_timeout=30, tls_required=True)
    assert isinstance(relay, RelayPool)
    assert (relay.host, relay.port, relay.pool_size) == ("smart.test", 587, 4)
    assert relay._client_class is SmtpRelayClient
    assert isinstance(relay._client_kwargs["context"], ssl.SSLContext)
    assert relay._client_kwargs["idle_timeout"] == 30
    client = relay.add_client()
    assert isinstance(client, SmtpRelayClient) and not client.started
    assert client.address == ("smart.test", 587)
    assert client.queue is relay.queue
    assert client.idle_timeout == 30 and client.tls_required
    assert client.context is relay._client_kwargs["context"]


def test_defaults_and_custom_class() -> None:
    context = ssl.create_default_context()
    relay = StaticSmtpRelay("smart.test", client_class=_Custom, context=context)
    assert relay.port == 25 and relay.pool_size is None
    assert isinstance(relay.add_client(), _Custom)
    assert relay._client_kwargs["context"] is context
    lmtp = StaticLmtpRelay(pool_size=2, command_timeout=3.0)
    assert (lmtp.host, lmtp.port, lmtp.pool_size) == ("localhost", 24, 2)
    client = lmtp.add_client()
    assert isinstance(client, LmtpRelayClient) and client.command_timeout == 3.0


def test_every_client_keyword_is_accepted() -> None:
    relay = StaticSmtpRelay(
        "smart.test", socket_creator=None, ehlo_as="me.test", auth_mechanism="PLAIN",
        tls_immediately=False, tls_required=False, connect_timeout=1.0, command_timeout=1.0,
        data_timeout=1.0, idle_timeout=1.0, credentials=("u", "p"), binary_encoder=None,
        allow_insecure_auth=True,
    )
    assert relay.add_client().allow_insecure_auth


def test_pool_size_bounds_connections(fault_server: Any) -> None:
    server = fault_server()
    relay = StaticSmtpRelay(*server.address, pool_size=2, ehlo_as="relay.test",
                            idle_timeout=30.0)
    try:
        with gevent.Timeout(GUARD_SECONDS):
            jobs = [gevent.spawn(relay.attempt, make_envelope(rcpts=(f"r{n}@x.test",)), 0)
                    for n in range(8)]
            gevent.joinall(jobs, raise_error=True)
            assert len(relay.pool) <= 2
    finally:
        relay.kill()
    assert all(isinstance(job.value[f"r{n}@x.test"], Reply) for n, job in enumerate(jobs))
    assert len(server.sessions) <= 2
    assert sum(len(s.messages) for s in server.sessions) == 8
    server.wait_closed()  # kill() closed the idle connections


def test_no_reuse_means_one_connection_per_message(fault_server: Any) -> None:
    server = fault_server()
    relay = StaticSmtpRelay(*server.address, pool_size=2, ehlo_as="relay.test")
    try:
        with gevent.Timeout(GUARD_SECONDS):
            for n in range(3):
                relay.attempt(make_envelope(rcpts=(f"r{n}@x.test",)), 0)
            server.wait_closed()
    finally:
        relay.kill()
    assert [len(s.messages) for s in server.sessions] == [1, 1, 1]
    assert all(s.verbs()[-1] == b"QUIT" for s in server.sessions)


def test_unix_socket_host(fault_server: Any, tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), "smtp.sock")
    server = fault_server(unix_path=path)
    relay = StaticSmtpRelay(path, pool_size=1, ehlo_as="relay.test")
    try:
        with gevent.Timeout(GUARD_SECONDS):
            result = relay.attempt(make_envelope(), 0)
            server.wait_closed()
    finally:
        relay.kill()
    assert result["rcpt@example.test"].code == "250"
    assert len(server.sessions[0].messages) == 1


def test_sink_pool_with_reuse(smtp_sink: Any) -> None:
    sink = smtp_sink()
    relay = StaticSmtpRelay(*sink.address, pool_size=5, ehlo_as="relay.test", idle_timeout=30)
    try:
        with gevent.Timeout(GUARD_SECONDS):
            jobs = [gevent.spawn(relay.attempt, make_envelope(rcpts=(f"r{n}@x.test",)), 0)
                    for n in range(25)]
            gevent.joinall(jobs, raise_error=True)
    finally:
        relay.kill()
    assert sorted(m.rcpt_to[0] for m in sink.messages()) == sorted(
        f"r{n}@x.test" for n in range(25)
    )


@pytest.mark.parametrize("relay_class", [StaticSmtpRelay, StaticLmtpRelay])
def test_kill_without_traffic(relay_class: type) -> None:
    relay = relay_class("localhost", 2525, pool_size=3)
    relay.kill()
    assert not relay.pool
