"""``haproxy``: a private HAProxy (Debian package ``haproxy``) in TCP mode that
forwards to a test server with a PROXY protocol header, as a load balancer in
front of an edge does.

The factory takes the backend ``(host, port)`` and the ``send_proxy`` keyword of
HAProxy's ``server`` line (``'send-proxy'`` for v1, ``'send-proxy-v2'`` for v2),
and returns the ``(host, port)`` HAProxy listens on. Every instance runs in the
foreground (``-db``) in its own process group and is stopped at teardown.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator

import pytest

from support.util import (
    free_port,
    require_program,
    stop_process_group,
    wait_for_process_port,
)

__all__ = ["haproxy"]

HOST = "127.0.0.1"

CONFIG = """\
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend edge_front
    bind {host}:{port}
    default_backend edge_back
backend edge_back
    server edge {backend_host}:{backend_port} {send_proxy}
"""

HaproxyFactory = Callable[..., tuple[str, int]]


@pytest.fixture
def haproxy(tmp_path: object) -> Iterator[HaproxyFactory]:
    """Factory: ``haproxy((host, port), send_proxy='send-proxy')`` -> HAProxy's address."""
    program = require_program("haproxy")
    with contextlib.ExitStack() as stack:
        count = 0

        def start(backend: tuple[str, int], send_proxy: str = "send-proxy") -> tuple[str, int]:
            nonlocal count
            count += 1
            port = free_port(HOST)
            path = os.path.join(str(tmp_path), f"haproxy-{count}.cfg")
            with open(path, "w") as conf:
                conf.write(CONFIG.format(host=HOST, port=port, backend_host=backend[0],
                                         backend_port=backend[1], send_proxy=send_proxy))
            proc = subprocess.Popen([program, "-db", "-q", "-f", path],
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            stack.callback(stop_process_group, proc)
            wait_for_process_port(proc, HOST, port)
            return (HOST, port)

        yield start
