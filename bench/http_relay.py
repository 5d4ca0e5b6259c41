"""HTTP relay throughput against a local gevent WSGI server, keep-alive vs not.

Run by hand: ``.venv/bin/python bench/http_relay.py [--messages N] [--concurrency C]``.
Prints messages per second, the median of three rounds for each mode.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.pool
from gevent.pywsgi import WSGIServer
from messages import PROFILES, message

from slimta.envelope import Envelope
from slimta.relay.http import HttpRelay

ROUNDS = 3


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    environ["wsgi.input"].read()
    start_response("200 OK", [("X-Smtp-Reply", '250; message="2.0.0 Ok"')])
    return [b""]


def make_envelope(profile: str) -> Envelope:
    env = Envelope("sender@example.com", ["rcpt0@example.com"])
    env.parse(message(profile, 0))
    return env


def one_round(
    url: str, idle_timeout: float | None, messages: int, concurrency: int, profile: str
) -> float:
    relay = HttpRelay(
        url, pool_size=concurrency, ehlo_as="bench", timeout=30, idle_timeout=idle_timeout
    )
    env = make_envelope(profile)
    pool = gevent.pool.Pool(concurrency)
    start = time.perf_counter()
    jobs = [pool.spawn(relay.attempt, env, 0) for _ in range(messages)]
    gevent.joinall(jobs, raise_error=True)
    elapsed = time.perf_counter() - start
    relay.kill()
    return messages / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--profile", choices=PROFILES, default="2k",
                        help="message profile (bench/messages.py)")
    args = parser.parse_args()
    server = WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
    server.start()
    url = f"http://127.0.0.1:{server.server_port}/deliver"
    try:
        for label, idle in (("keep-alive", 10.0), ("no keep-alive", None)):
            rates = [
                one_round(url, idle, args.messages, args.concurrency, args.profile)
                for _ in range(ROUNDS)
            ]
            print(
                f"{label:>14}: median {statistics.median(rates):8.0f} msg/s "
                f"(rounds: {', '.join(f'{r:.0f}' for r in rates)}; "
                f"{args.messages} messages, concurrency {args.concurrency}, "
                f"profile {args.profile})"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
