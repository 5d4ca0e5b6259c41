"""A private ``redis-server`` on a loopback port (Debian package ``redis-server``).

Started once per test session with persistence off (``--save ''``, no AOF) in its
own directory; each test gets a fresh key prefix, so tests never see each
other's keys. ``RedisServer.restart_with_aof()`` is not needed here: the queue's
crash tests kill the *client* process, not Redis.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from support.util import (
    free_port,
    require_program,
    shared_tmpdir,
    stop_process_group,
    wait_for_process_port,
)

__all__ = ["RedisServer", "redis_server", "redis_prefix"]

HOST = "127.0.0.1"


@dataclass(frozen=True)
class RedisServer:
    host: str
    port: int
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole session."""
    program = require_program("redis-server")
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(shared_tmpdir("slimta-redis-"))
        port = free_port(HOST)
        args = [
            program,
            "--bind",
            HOST,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            base,
            "--daemonize",
            "no",
            "--logfile",
            os.path.join(base, "redis.log"),
        ]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        stack.callback(stop_process_group, proc)
        wait_for_process_port(proc, HOST, port)
        yield RedisServer(HOST, port, proc)


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}:"
