"""Throughput of StaticSmtpRelay against postfix smtp-sink (run by hand).

Usage::

    .venv/bin/python bench/static_smtp.py [--messages N] [--rounds R] [--sink PATH]

It starts its own ``smtp-sink -u nobody 127.0.0.1:<port>`` (run as root, or pass
``--sink-user``), then delivers 2 KB messages in three configurations and prints
messages per second, the median of ``--rounds`` rounds:

* ``pool_size=1`` with reuse (``idle_timeout`` set): one connection for everything;
* ``pool_size=20`` with reuse: twenty connections, twenty callers;
* ``pool_size=20`` without reuse (``idle_timeout=None``): a connection per message.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import gevent
from gevent.pool import Pool

from slimta.envelope import Envelope
from slimta.relay.smtp.static import StaticSmtpRelay

#: Size of the body of each message, in bytes.
BODY_BYTES = 2048
#: Callers kept busy at once in the pooled configurations.
CONCURRENCY = 20


def make_envelope(n: int) -> Envelope:
    env = Envelope("bench@example.test", [f"rcpt{n % 50}@example.test"])
    line = b"x" * 76 + b"\r\n"
    body = (line * (BODY_BYTES // len(line) + 1))[:BODY_BYTES - 2] + b"\r\n"
    env.parse(b"From: bench@example.test\r\nSubject: bench " + str(n).encode() + b"\r\n\r\n" + body)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sink(program: str, user: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [program, "-u", user, f"127.0.0.1:{port}", "1000"], start_new_session=True
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("smtp-sink did not start")
            time.sleep(0.05)


def one_round(port: int, messages: int, pool_size: int, idle_timeout: float | None,
              callers: int) -> float:
    relay = StaticSmtpRelay("127.0.0.1", port, pool_size=pool_size, ehlo_as="bench.test",
                            idle_timeout=idle_timeout)
    envelopes = [make_envelope(n) for n in range(messages)]
    for env in envelopes:
        env.flatten()  # headers are cached; time the relay, not the email package
    failures = []

    def send(env: Envelope) -> None:
        try:
            relay.attempt(env, 0)
        except Exception as exc:  # counted, not fatal: the rate would be meaningless
            failures.append(exc)

    group = Pool(callers)
    start = time.perf_counter()
    for env in envelopes:
        group.spawn(send, env)
    group.join()
    elapsed = time.perf_counter() - start
    relay.kill()
    if failures:
        raise SystemExit(f"{len(failures)} failures, first: {failures[0]!r}")
    return messages / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sink", default=shutil.which("smtp-sink", path="/usr/sbin:/usr/bin")
                        or "/usr/sbin/smtp-sink")
    parser.add_argument("--sink-user", default="nobody")
    args = parser.parse_args()

    proc, port = start_sink(args.sink, args.sink_user)
    configs: list[tuple[str, Callable[[], float]]] = [
        ("pool_size=1, reuse (idle_timeout=30)",
         lambda: one_round(port, args.messages, 1, 30.0, CONCURRENCY)),
        ("pool_size=20, reuse (idle_timeout=30)",
         lambda: one_round(port, args.messages, 20, 30.0, CONCURRENCY)),
        ("pool_size=20, no reuse (idle_timeout=None)",
         lambda: one_round(port, args.messages, 20, None, CONCURRENCY)),
    ]
    try:
        print(f"smtp-sink on 127.0.0.1:{port}; {args.messages} x {BODY_BYTES} B messages, "
              f"median of {args.rounds} rounds; python {sys.version.split()[0]}, "
              f"gevent {gevent.__version__}")
        for name, run in configs:
            rates = [run() for _ in range(args.rounds)]
            print(f"{name:45s} {statistics.median(rates):9.0f} msg/s   "
                  f"(rounds: {', '.join(f'{r:.0f}' for r in rates)})")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()


if __name__ == "__main__":
    main()
