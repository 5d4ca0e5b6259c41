"""slimta.util: IPv4-only connections and listening sockets."""

from __future__ import annotations

import os
import socket as stdlib_socket
from typing import Any

import gevent
import gevent.socket
import pytest
from support.util import GUARD_SECONDS

import slimta.util
from slimta.util import build_ipv4_socket_creator, create_connection_ipv4, create_listeners


@pytest.fixture
def listener() -> Any:
    sock = gevent.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    yield sock
    sock.close()


def test_connects_over_ipv4(listener: Any) -> None:
    port = listener.getsockname()[1]
    with gevent.Timeout(GUARD_SECONDS):
        sock = create_connection_ipv4(("localhost", port), timeout=5.0)
        peer, _ = listener.accept()
    try:
        assert sock.family == stdlib_socket.AF_INET
        assert isinstance(sock, gevent.socket.socket)
        assert peer.getpeername() == sock.getsockname()
    finally:
        sock.close()
        peer.close()


def test_source_address(listener: Any) -> None:
    port = listener.getsockname()[1]
    with gevent.Timeout(GUARD_SECONDS):
        sock = create_connection_ipv4(("127.0.0.1", port), None, ("127.0.0.1", 0))
        peer, _ = listener.accept()
    sock.close()
    peer.close()


def test_refused_raises_last_error() -> None:
    probe = stdlib_socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(ConnectionRefusedError):
        create_connection_ipv4(("127.0.0.1", port))


def test_no_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slimta.util.socket, "getaddrinfo", lambda *args: [])
    with pytest.raises(OSError, match="getaddrinfo returns an empty list"):
        create_connection_ipv4(("nowhere.test", 25))


def test_only_ipv4_results_are_asked_for(monkeypatch: pytest.MonkeyPatch, listener: Any) -> None:
    asked = []
    real = slimta.util.socket.getaddrinfo

    def spy(host: str, port: int, family: int = 0, *args: Any) -> Any:
        asked.append(family)
        return real(host, port, family, *args)

    monkeypatch.setattr(slimta.util.socket, "getaddrinfo", spy)
    sock = create_connection_ipv4(("localhost", listener.getsockname()[1]))
    sock.close()
    assert asked == [stdlib_socket.AF_INET]


def test_only_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = []
    monkeypatch.setattr(
        slimta.util.socket, "create_connection", lambda *args: plain.append(args) or "plain"
    )
    assert create_connection_ipv4(("mx.test", 587), 3.0, None, only_ports=[25]) == "plain"
    assert plain == [(("mx.test", 587), 3.0, None)]


def test_socket_creator(listener: Any) -> None:
    creator = build_ipv4_socket_creator([listener.getsockname()[1]])
    sock = creator(("localhost", listener.getsockname()[1]))  # one positional argument
    try:
        assert sock.family == stdlib_socket.AF_INET
    finally:
        sock.close()


def test_create_listeners_tcp_and_unix(tmp_path: Any) -> None:
    (tcp,) = create_listeners(("127.0.0.1", 0))
    path = os.path.join(str(tmp_path), "listen.sock")
    (unix,) = create_listeners(path)
    try:
        assert tcp.getsockname()[0] == "127.0.0.1" and tcp.getsockname()[1] > 0
        client = gevent.socket.create_connection(tcp.getsockname())
        client.close()
        assert os.path.exists(path)
    finally:
        tcp.close()
        unix.close()


def test_exports() -> None:
    assert set(slimta.util.__all__) == {
        "build_ipv4_socket_creator", "create_connection_ipv4", "create_listeners"
    }
