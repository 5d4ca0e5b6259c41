"""Drop-in details of the relay classes that code written for python-slimta relies on.

Issue 12, point 7: the resolved defaults live in the instance attributes
(``ehlo_as``, ``data_timeout``, ``socket_creator``), so a subclass that overrides
``_run()`` can use them; a connection's socket is closed once; python-slimta's
private pool hooks still exist. Checked against the fault server and a real WSGI
server.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import gevent
import gevent.socket
import pytest
from gevent.event import AsyncResult
from support.envelopes import make_envelope
from support.util import GUARD_SECONDS
from support.wsgi_server import WsgiServer

from slimta.envelope import Envelope
from slimta.relay.http import HttpRelay
from slimta.relay.pool import RelayPool, RelayPoolClient
from slimta.relay.smtp.client import SmtpRelayClient, default_socket_creator
from slimta.relay.smtp.lmtpclient import LmtpRelayClient
from slimta.relay.smtp.static import StaticSmtpRelay
from slimta.smtp.reply import Reply

pytestmark = pytest.mark.usefixtures("no_relay_leaks")


def attempt(relay: Any, envelope: Envelope) -> Any:
    try:
        with gevent.Timeout(GUARD_SECONDS, AssertionError("attempt hung")):
            return relay.attempt(envelope, 0)
    finally:
        relay.kill()


# -- SmtpRelayClient: resolved defaults ---------------------------------------------------


@pytest.mark.parametrize("cls", [SmtpRelayClient, LmtpRelayClient])
def test_defaults_are_resolved_in_the_attributes(cls: type[SmtpRelayClient]) -> None:
    client = cls(("mx.test", 25), None)
    assert client.ehlo_as == socket.getfqdn()
    assert client.socket_creator is default_socket_creator
    assert client.command_timeout == 10.0 and client.data_timeout == 10.0
    client = cls(("mx.test", 25), None, command_timeout=3.0)
    assert client.data_timeout == 3.0
    client = cls(("mx.test", 25), None, ehlo_as="", command_timeout=None)
    assert client.ehlo_as == socket.getfqdn() and client.data_timeout is None


def test_given_values_are_kept() -> None:
    def creator(address: Any) -> Any:
        raise AssertionError("not called")

    def name(address: Any) -> str:
        return "dyn.test"

    client = SmtpRelayClient(("mx.test", 25), None, socket_creator=creator, ehlo_as=name,
                             command_timeout=3.0, data_timeout=0.0)
    assert client.socket_creator is creator
    assert client.ehlo_as is name
    assert client.data_timeout == 0.0  # an explicit value, even 0, is not replaced


def test_subclass_overriding_run_uses_the_attributes(fault_server: Any) -> None:
    """A python-slimta style subclass: its own session, built from the attributes."""
    server = fault_server()
    seen: dict[str, Any] = {}

    class RawClient(SmtpRelayClient):
        def _run(self) -> None:
            result, envelope = self.poll()
            assert result is not None and envelope is not None
            seen["data_timeout"] = self.data_timeout
            sock = self.socket_creator(self.address)
            try:
                reader = sock.makefile("rb")
                banner = reader.readline()
                sock.sendall(b"HELO " + str(self.ehlo_as).encode("ascii") + b"\r\n")
                helo = reader.readline()
                sock.sendall(b"QUIT\r\n")
                reader.readline()
                reader.close()
            finally:
                sock.close()
            result.set({"banner": banner, "helo": helo})

    relay = StaticSmtpRelay(*server.address, pool_size=1, client_class=RawClient,
                            command_timeout=4.0)
    result = attempt(relay, make_envelope())
    assert result == {"banner": b"220 fault.test ESMTP\r\n", "helo": b"250 fault.test\r\n"}
    assert seen["data_timeout"] == 4.0
    assert server.sessions[0].commands == [b"HELO " + socket.getfqdn().encode(), b"QUIT"]


def test_default_socket_creator_attribute_connects_a_unix_socket(
    fault_server: Any, tmp_path: Any
) -> None:
    # Our default keeps handling paths (and address literals) as before.
    server = fault_server(unix_path=str(tmp_path / "smtp.sock"))
    client = SmtpRelayClient(server.address, None)
    sock = client.socket_creator(server.address)
    try:
        with gevent.Timeout(GUARD_SECONDS):
            assert sock.makefile("rb").readline() == b"220 fault.test ESMTP\r\n"
        assert sock.family == socket.AF_UNIX
    finally:
        sock.close()


def test_each_socket_is_closed_once(fault_server: Any) -> None:
    server = fault_server()
    closes: list[int] = []

    class CountingSocket(gevent.socket.socket):
        def close(self) -> None:
            closes.append(1)
            super().close()

    def creator(address: Any) -> Any:
        sock = CountingSocket(socket.AF_INET, socket.SOCK_STREAM)
        sock.connect(address)
        return sock

    relay = StaticSmtpRelay(*server.address, pool_size=1, ehlo_as="relay.test",
                            socket_creator=creator)
    try:
        with gevent.Timeout(GUARD_SECONDS, AssertionError("attempt hung")):
            result = relay.attempt(make_envelope(), 0)
            gevent.joinall(list(relay.pool))  # the client ends the session, then exits
    finally:
        relay.kill()
    assert result["rcpt@example.test"].code == "250"
    server.wait_closed()
    assert server.sessions[0].verbs()[-1] == b"QUIT"
    assert closes == [1]


# -- HttpRelay ----------------------------------------------------------------------


def test_http_relay_stores_the_default_ehlo(
    wsgi_server: Callable[..., WsgiServer],
) -> None:
    server = wsgi_server()
    relay = HttpRelay(server.url, timeout=5.0)
    assert relay.ehlo_as == socket.getfqdn()
    attempt(relay, make_envelope())
    assert server.requests[0].header("X-Ehlo") == socket.getfqdn()


def test_http_relay_ehlo_changed_after_construction(
    wsgi_server: Callable[..., WsgiServer],
) -> None:
    server = wsgi_server()
    relay = HttpRelay(server.url, ehlo_as="first.test", timeout=5.0)
    relay.ehlo_as = "second.test"
    attempt(relay, make_envelope())
    relay = HttpRelay(server.url, ehlo_as=lambda: "callable.test", timeout=5.0)
    assert callable(relay.ehlo_as)
    attempt(relay, make_envelope())
    assert [r.header("X-Ehlo") for r in server.requests] == ["second.test", "callable.test"]


def test_http_relay_logs_the_status_line(
    wsgi_server: Callable[..., WsgiServer], caplog: pytest.LogCaptureFixture
) -> None:
    from slimta.logging import parseline

    caplog.set_level(logging.DEBUG, logger="slimta.relay.http")
    server = wsgi_server()
    attempt(HttpRelay(server.url, ehlo_as="relay.test", timeout=5.0), make_envelope())
    lines = [parseline(r.msg) for r in caplog.records if r.name == "slimta.relay.http"
             and r.msg.startswith("http:")]
    ops = [op for _, _, op, _ in lines]
    assert ops == ["client_request", "client_response"]
    assert lines[0][3]["method"] == "POST"
    assert lines[1][3]["status"] == "200 OK"
    assert lines[0][1] == lines[1][1]  # one connection id for the pair


# -- RelayPool: python-slimta's hooks --------------------------------------------------


def test_pool_add_client_hook_starts_a_client() -> None:
    class Client(RelayPoolClient):
        def _run(self) -> None:
            result, envelope = self.poll()
            assert result is not None and envelope is not None
            result.set(Reply("250", "2.0.0 Ok"))

    class Pool(RelayPool):
        def add_client(self) -> RelayPoolClient:
            return Client(self.queue)

    pool = Pool()
    result: AsyncResult = AsyncResult()
    pool.queue.append((result, make_envelope()))
    pool._add_client()
    assert len(pool.pool) == 1
    with gevent.Timeout(GUARD_SECONDS):
        assert result.get().code == "250"
        gevent.joinall(list(pool.pool))
    gevent.sleep(0)  # the exit link runs on the next loop turn
    assert not pool.pool
    assert pool._remove_client is not None


def test_pool_client_ignores_other_queue_items() -> None:
    class Client(RelayPoolClient):
        def _run(self) -> None:
            self.seen = self.poll()

    class Pool(RelayPool):
        def add_client(self) -> RelayPoolClient:
            return Client(self.queue)

    pool = Pool()
    pool.queue.append(True)
    pool._add_client()
    (client,) = pool.pool
    with gevent.Timeout(GUARD_SECONDS):
        client.join()
    assert client.seen is True and client.successful()


# -- replies made up by the client name the server ---------------------------------------


def test_made_up_replies_carry_the_server_address(fault_server: Any) -> None:
    from support.faultserver import CLOSE, STALL

    from slimta.relay.smtp import SmtpTransientRelayError

    def fails(address: Any, **kwargs: Any) -> Any:
        relay = StaticSmtpRelay(*address, pool_size=1, ehlo_as="relay.test", **kwargs)
        with pytest.raises(SmtpTransientRelayError) as info:
            attempt(relay, make_envelope())
        return info.value.reply

    stalled = fault_server({"MAIL": STALL}, extensions=["8BITMIME"])
    reply = fails(stalled.address, command_timeout=0.3)
    assert (reply.code, reply.command, reply.address) == ("421", b"MAIL", stalled.address)
    closed = fault_server({"RCPT": CLOSE})
    reply = fails(closed.address)
    assert (reply.code, reply.address) == ("421", closed.address)
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: the connect is refused
    address = refused.getsockname()
    try:
        reply = fails(address)
    finally:
        refused.close()
    assert (reply.code, reply.command, reply.address) == ("451", b"[CONNECT]", address)
    # A reply the server sent keeps the address the connection recorded.
    busy = fault_server({"MAIL": "451 4.3.2 Busy"})
    reply = fails(busy.address)
    assert (reply.code, reply.address) == ("451", busy.address)
