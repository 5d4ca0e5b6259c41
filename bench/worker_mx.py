"""Benchmark worker for MxSmtpRelay (slimta-relay only; the MX targets are relative).

    python bench/worker_mx.py SCENARIO --port SINK --dns-port DNS --count N [--profile 2k]

Scenarios:
  mx_cached    N messages over 100 domains whose MX records were looked up before
               the clock starts.
  mx_uncached  N messages, each to a new domain (one MX lookup per message).
  mx_memory    N messages, each to a new domain with its own MX host; reports
               RSS growth. ``--bare`` instead only runs the same N MX lookups on
               a plain pycares channel, to measure c-ares' own cache (the floor).
Every MX host is routed to the sink by the socket_creator. Messages come from
bench/messages.py; like slimta's queue, ``--consumers`` greenlets (100) call
``attempt()`` concurrently.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Iterable, Iterator

import gevent
import gevent.pool
from _common import Clock, emit, rss_bytes
from gevent.socket import create_connection
from messages import PROFILES, message


def envelope(domain: str, i: int, profile: str):
    from slimta.envelope import Envelope

    env = Envelope("sender@example.com", [f"rcpt{i}@{domain}"])
    env.parse(message(profile, i))
    return env


def bare_lookups(args: argparse.Namespace) -> None:
    from slimta.util.dns import DNSResolver

    DNSResolver.channel_options = {"servers": ["127.0.0.1"], "udp_port": args.dns_port,
                                   "tcp_port": args.dns_port, "timeout": 2.0, "tries": 3}
    DNSResolver.query("warm.bench", "MX").get()
    gc.collect()
    base = rss_bytes()
    pool = gevent.pool.Pool(80)
    with Clock() as clock:
        for i in range(args.count):
            pool.spawn(lambda n: DNSResolver.query(f"m{n}.bench", "MX").get(), i)
        pool.join()
    gc.collect()
    emit(messages=args.count, elapsed=clock.elapsed, cpu=clock.cpu, failures=0,
         rss_growth=rss_bytes() - base)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dns-port", type=int, required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--bare", action="store_true")
    parser.add_argument("--profile", choices=PROFILES, default="2k")
    parser.add_argument("--consumers", type=int, default=100)
    args = parser.parse_args()
    if args.bare:
        bare_lookups(args)
        return

    from slimta.relay.smtp.mx import MxSmtpRelay
    from slimta.util.dns import DNSResolver

    DNSResolver.channel_options = {"servers": ["127.0.0.1"], "udp_port": args.dns_port,
                                   "tcp_port": args.dns_port, "timeout": 2.0, "tries": 3}
    sink = ("127.0.0.1", args.port)
    # Every mx_memory domain has its own MX host, so a connection is never reused:
    # close it after its message (idle_timeout=None) instead of keeping up to
    # relay_cache_size idle connections, which would exhaust the sink's descriptors.
    idle = None if args.scenario == "mx_memory" else 30.0
    relay = MxSmtpRelay(socket_creator=lambda address: create_connection(sink),
                        ehlo_as="bench.example.com", pool_size=20, idle_timeout=idle)
    prof = args.profile
    if args.scenario == "mx_cached":
        domains = [f"c{i}.bench" for i in range(100)]
        envs = [envelope(domains[i % 100], i, prof) for i in range(args.count)]
        warm = [envelope(d, 0, prof) for d in domains]
    elif args.scenario == "mx_uncached":
        envs = [envelope(f"u{i}.bench", i, prof) for i in range(args.count)]
        warm = [envelope(f"w{i}.bench", i, prof) for i in range(20)]
    elif args.scenario == "mx_memory":
        # Envelopes are built on the fly: a list of them built up front and then
        # freed would leave heap that hides the growth being measured.
        envs = []
        warm = [envelope(f"w{i}.bench", i, prof) for i in range(20)]
    else:
        raise SystemExit(f"unknown scenario {args.scenario}")
    gevent.joinall([gevent.spawn(relay.attempt, env, 0) for env in warm], raise_error=True)
    failures = 0

    def consume(pending: Iterator) -> None:
        nonlocal failures
        for env in pending:  # shared: each envelope is taken once
            try:
                relay.attempt(env, 0)
            except Exception as exc:
                failures += 1
                if failures < 3:
                    print("failure:", exc, file=sys.stderr)

    def drain(envs: Iterable) -> None:
        pending = iter(envs)
        gevent.joinall([gevent.spawn(consume, pending) for _ in range(args.consumers)])

    if args.scenario == "mx_memory":
        gc.collect()
        base = rss_bytes()
        with Clock() as clock:
            drain(envelope(f"u{i}.bench", i, prof) for i in range(args.count))
        gc.collect()
        growth = rss_bytes() - base
        emit(messages=args.count, elapsed=clock.elapsed, cpu=clock.cpu, failures=failures,
             rss_growth=growth, relays=len(relay._relayers), records=len(relay._mx_records))
        relay.kill()
        return
    gc.collect()
    with Clock() as clock:
        drain(envs)
    relay.kill()
    emit(messages=args.count, elapsed=clock.elapsed, cpu=clock.cpu, failures=failures)


if __name__ == "__main__":
    main()
