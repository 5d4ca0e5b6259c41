"""slimta.http.wsgi.WsgiServer: a logged WSGI application served by gevent."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import gevent
import pytest
from support.util import GUARD_SECONDS

from slimta.http import HTTPConnection
from slimta.http.wsgi import WsgiServer


class Hello(WsgiServer):
    def handle(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello ", environ["PATH_INFO"].encode()]


def test_build_server_serves_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    server = Hello().build_server(("127.0.0.1", 0))
    server.start()
    try:
        caplog.set_level(logging.DEBUG, logger="slimta.http.wsgi")
        conn = HTTPConnection("127.0.0.1", server.server_port, timeout=GUARD_SECONDS)
        try:
            with gevent.Timeout(GUARD_SECONDS):
                conn.request("GET", "/there")
                response = conn.getresponse()
                assert (response.status, response.read()) == (200, b"hello /there")
        finally:
            conn.close()
    finally:
        server.stop(timeout=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "slimta.http.wsgi"]
    assert any("request" in line and "/there" in line for line in lines), lines
    assert any("response" in line and "200 OK" in line for line in lines), lines


def test_handle_is_abstract() -> None:
    with pytest.raises(NotImplementedError):
        WsgiServer().handle({}, lambda *a: None)
