"""Benchmark worker for the python-slimta relay API.

The same script drives slimta-relay and python-slimta 5.0.5: the API is the same,
only the interpreter (and so the installed package) differs.

    python bench/worker_slimta.py SCENARIO --port P --count N [--size BYTES]
"""

from __future__ import annotations

import argparse
import gc
import sys

import gevent
import gevent.pool
from _common import Clock, body_of, emit, peak_rss_bytes, rss_bytes


def envelopes(count: int, size: int) -> list:
    from slimta.envelope import Envelope

    body = body_of(size)
    out = []
    for i in range(count):
        env = Envelope("sender@example.com", [f"rcpt{i}@example.com"])
        env.parse(b"From: sender@example.com\r\nSubject: bench %d\r\n\r\n" % i + body)
        out.append(env)
    return out


def run_static(args: argparse.Namespace, pool_size: int, reuse: bool) -> None:
    from slimta.relay.smtp.static import StaticSmtpRelay

    kwargs = {"pool_size": pool_size, "ehlo_as": "bench.example.com"}
    if reuse:
        kwargs["idle_timeout"] = 30.0
    relay = StaticSmtpRelay("127.0.0.1", args.port, **kwargs)
    envs = envelopes(args.count, args.size)
    warm = envelopes(pool_size, args.size)
    # Warm up: open the connections (when reused) before the clock starts.
    gevent.joinall([gevent.spawn(relay.attempt, env, 0) for env in warm], raise_error=True)
    failures = 0
    concurrency = max(pool_size * 4, 8)
    workers = gevent.pool.Pool(concurrency)

    def one(env: object) -> None:
        nonlocal failures
        try:
            relay.attempt(env, 0)
        except Exception as exc:  # counted, reported
            failures += 1
            if failures < 3:
                print("failure:", exc, file=sys.stderr)

    gc.collect()
    with Clock() as clock:
        for env in envs:
            workers.spawn(one, env)
        workers.join()
    try:
        relay.kill()
    except RuntimeError:  # python-slimta's kill() mutates the set it iterates
        pass
    emit(messages=args.count, elapsed=clock.elapsed, cpu=clock.cpu, failures=failures)


def run_big(args: argparse.Namespace) -> None:
    from slimta.relay.smtp.static import StaticSmtpRelay

    relay = StaticSmtpRelay("127.0.0.1", args.port, pool_size=1, ehlo_as="bench.example.com",
                            data_timeout=120.0)
    (env,) = envelopes(1, args.size)
    gc.collect()
    base = rss_bytes()
    with Clock() as clock:
        relay.attempt(env, 0)
    growth = max(0, peak_rss_bytes() - base)
    relay.kill()
    emit(messages=1, bytes=args.size, elapsed=clock.elapsed, cpu=clock.cpu,
         peak_growth=growth, failures=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    if args.scenario == "reuse1":
        run_static(args, 1, True)
    elif args.scenario == "reuse20":
        run_static(args, 20, True)
    elif args.scenario == "noreuse20":
        run_static(args, 20, False)
    elif args.scenario == "big":
        run_big(args)
    else:
        raise SystemExit(f"unknown scenario {args.scenario}")


if __name__ == "__main__":
    main()
