"""Benchmark worker: ``Queue(store, StaticSmtpRelay)`` to smtp-sink, until the store is empty.

The same script drives slimta-relay and python-slimta 5.0.5 (same API, other interpreter).

    python bench/worker_queue.py STORE --port P --count N [--profile 2k]
        [--enqueuers 100] [--pool-size 20] [--relay-pool N] [--redis-port R]
        [--cprofile FILE]

STORE is ``dict`` (DictStorage), ``disk`` (DiskStorage in a temporary directory) or
``redis`` (RedisStorage on ``127.0.0.1:R``, flushed first). ``--enqueuers`` greenlets
(100) each take the next envelope from the shared list and call ``queue.enqueue()``;
the clock stops when the store has removed the last message, i.e. when every message
was delivered. The relay's connections are opened before the clock, as in
``worker_slimta.py``. For ``disk`` the result counts ``os.fsync`` calls; for ``redis``
the commands Redis executed (``INFO commandstats``) and the requests the client sent
(each pipeline or transaction is one request and one round trip). redis-py 7+ caps a
connection pool at 100 and raises ``Too many connections`` past it, which 100
enqueuers reach: ``--redis-max-connections`` (1000) raises the cap; 0 leaves it.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.event
from _common import Clock, announce, emit
from messages import PROFILES
from worker_slimta import Profiler, envelopes

#: ``next()`` of an itertools.count is atomic under the GIL: safe from DiskStorage's threads.
_fsyncs = itertools.count()
_requests = itertools.count()


def count_fsyncs() -> None:
    real = os.fsync

    def fsync(fd: Any) -> None:
        next(_fsyncs)
        real(fd)

    os.fsync = fsync


def count_redis_requests() -> None:
    """Count what the client writes to Redis: one call per command or pipeline."""
    import redis

    real = redis.Connection.send_packed_command

    def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
        next(_requests)
        real(self, command, check_health)

    redis.Connection.send_packed_command = send_packed_command  # type: ignore[method-assign]


def redis_calls(client: Any) -> int:
    """Commands Redis has executed so far (the sum of INFO commandstats' calls)."""
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


def make_store(kind: str, args: argparse.Namespace, tmp: str) -> Any:
    if kind == "dict":
        from slimta.queue.dict import DictStorage

        return DictStorage()
    if kind == "disk":
        from slimta.diskstorage import DiskStorage

        env_dir = os.path.join(tmp, "env")
        meta_dir = os.path.join(tmp, "meta")
        os.makedirs(env_dir)
        os.makedirs(meta_dir)
        return DiskStorage(env_dir, meta_dir)
    if kind == "redis":
        from slimta.redisstorage import RedisStorage

        store = RedisStorage("127.0.0.1", args.redis_port, prefix="bench:")
        if args.redis_max_connections:
            # redis-py >= 7 caps a pool at 100 connections and raises past that;
            # 100 enqueuers + the queue's own store calls need more.
            store.redis.connection_pool.max_connections = args.redis_max_connections
        return store
    raise SystemExit(f"unknown store {kind}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", choices=("dict", "disk", "redis"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--profile", choices=PROFILES, default="2k")
    parser.add_argument("--enqueuers", type=int, default=100)
    parser.add_argument("--pool-size", type=int, default=20)
    parser.add_argument("--relay-pool", type=int,
                        help="Queue(relay_pool=N): at most N attempts at once (default: the "
                        "queue's own, 4 x --pool-size)")
    parser.add_argument("--redis-port", type=int)
    parser.add_argument("--redis-max-connections", type=int, default=1000,
                        help="raise redis-py's connection pool cap (0: leave it)")
    parser.add_argument("--cprofile", metavar="FILE")
    args = parser.parse_args()

    from slimta.queue import Queue
    from slimta.relay.smtp.static import StaticSmtpRelay

    if args.store == "disk":
        count_fsyncs()
    admin = None
    if args.store == "redis":
        import redis

        count_redis_requests()
        admin = redis.Redis(host="127.0.0.1", port=args.redis_port)
        admin.flushall()
    tmp = tempfile.mkdtemp(prefix="slimta-bench-queue-")
    try:
        relay = StaticSmtpRelay("127.0.0.1", args.port, pool_size=args.pool_size,
                                idle_timeout=30.0, ehlo_as="bench.example.com")
        store = make_store(args.store, args, tmp)
        envs = envelopes(args.profile, args.count)
        warm = envelopes(args.profile, args.pool_size)
        # Open the relay's connections before the clock (as worker_slimta.py does).
        gevent.joinall([gevent.spawn(relay.attempt, env, 0) for env in warm], raise_error=True)

        done = gevent.event.Event()
        removed = 0
        real_remove = store.remove

        def remove(id: str) -> None:
            nonlocal removed
            real_remove(id)
            removed += 1
            if removed >= args.count:
                done.set()

        store.remove = remove  # the queue calls it once a message is delivered
        queue = Queue(store, relay, relay_pool=args.relay_pool)
        queue.start()
        gevent.sleep(0.05)  # let the queue load the (empty) store and start waiting
        failures = 0
        pending: Iterator = iter(envs)

        def enqueuer() -> None:
            nonlocal failures
            for env in pending:  # shared iterator: each envelope is taken once
                for _, result in queue.enqueue(env):
                    if isinstance(result, BaseException):
                        failures += 1
                        if failures < 3:
                            print("enqueue failure:", result, file=sys.stderr)

        gc.collect()
        calls0 = redis_calls(admin) if admin is not None else 0
        fsyncs0 = next(_fsyncs)
        requests0 = next(_requests)
        announce()
        with Profiler(args.cprofile), Clock() as clock:
            gevent.joinall([gevent.spawn(enqueuer) for _ in range(args.enqueuers)])
            delivered = done.wait(timeout=300)
        fsyncs = next(_fsyncs) - fsyncs0 - 1
        requests = next(_requests) - requests0 - 1
        extra: dict[str, float] = {}
        if args.store == "disk":
            extra["fsyncs_per_msg"] = fsyncs / args.count
        if admin is not None:
            # minus the INFO that took the first reading (counted in the second)
            extra["redis_cmds_per_msg"] = (redis_calls(admin) - calls0 - 1) / args.count
            extra["redis_requests_per_msg"] = requests / args.count
        if not delivered:
            failures += args.count - removed
            print(f"only {removed} of {args.count} delivered", file=sys.stderr)
        queue.kill()
        try:
            relay.kill()
        except RuntimeError:  # python-slimta's kill() mutates the set it iterates
            pass
        emit(messages=args.count, elapsed=clock.elapsed, cpu=clock.cpu, failures=failures,
             **extra)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
