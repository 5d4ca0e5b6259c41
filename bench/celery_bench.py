"""Messages/s through CeleryQueue (1, then 2 worker processes) vs. the same relay called directly.

Run by hand, from the repository root::

    .venv/bin/python bench/celery_bench.py [--messages 1000] [--rounds 3] [--concurrency 20]

Each round runs the three contenders one after the other (interleaved, so that
a change in the machine's load hits all of them): ``direct`` (the driver calls
``StaticSmtpRelay(pool_size=C).attempt()`` for every message, C at a time),
``celery1`` and ``celery2`` (1 or 2 ``celery worker -P gevent -c C`` processes,
relay ``pool_size=C``; the driver enqueues every message and the clock stops
when the store is empty, so enqueuing is included). The receiver is smtp-sink,
the messages the realistic ``2k`` profile of ``bench/messages.py``. Printed:
medians over the rounds of messages/s and the ratio to ``direct``, both end to
end and while draining the backlog left when enqueuing ends (an idle worker
sleeps ``polling_interval``, 2 s here, before it polls again, which the end-to-end
figure includes once), CPU milliseconds per message by process (driver,
workers, redis-server, smtp-sink), and Redis commands per message from
``INFO commandstats`` (broker and store together; round trips are fewer, since
a MULTI/EXEC block is one).

This module is also the workers' Celery app (``celery -A celery_bench``),
configured by environment variables (``CELERY_BENCH_POLLING`` and
``CELERY_BENCH_PREFETCH`` change ``polling_interval`` and
``worker_prefetch_multiplier``, by default 2 and 2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

from celery import Celery  # noqa: E402

from slimta.celeryqueue import CeleryQueue  # noqa: E402
from slimta.redisstorage import RedisStorage  # noqa: E402
from slimta.relay.smtp.static import StaticSmtpRelay  # noqa: E402

#: Seconds a worker may take to start.
WORKER_READY_SECONDS = 60.0


def make_app(redis_port: int, prefix: str, sink_port: int, concurrency: int) -> tuple[Any, Any]:
    """The benchmark's Celery app and queue (the same in the driver and the workers)."""
    app = Celery("celery_bench", broker=f"redis://127.0.0.1:{redis_port}/0")
    app.conf.update(
        accept_content=["json"],
        task_serializer="json",
        worker_prefetch_multiplier=int(os.environ.get("CELERY_BENCH_PREFETCH", "2")),
        worker_hijack_root_logger=False,
        task_ignore_result=True,
        broker_pool_limit=2 * concurrency + 10,
        broker_transport_options={
            "global_keyprefix": prefix,
            "polling_interval": float(os.environ.get("CELERY_BENCH_POLLING", "2")),
            "max_connections": 2 * concurrency + 10,
            "visibility_timeout": 3600,
        },
    )
    relay = StaticSmtpRelay("127.0.0.1", sink_port, pool_size=concurrency, idle_timeout=10.0)
    store = RedisStorage(port=redis_port, prefix=prefix, max_connections=concurrency + 10)
    queue = CeleryQueue(app, relay, store=store, dispatch_timeout=600.0)
    return app, queue


if os.environ.get("CELERY_BENCH_REDIS_PORT"):
    app, queue = make_app(
        int(os.environ["CELERY_BENCH_REDIS_PORT"]),
        os.environ["CELERY_BENCH_PREFIX"],
        int(os.environ["CELERY_BENCH_SINK_PORT"]),
        int(os.environ["CELERY_BENCH_CONCURRENCY"]),
    )


def _envelopes(count: int, offset: int) -> list[Any]:
    from messages import messages

    from slimta.envelope import Envelope

    out = []
    for sender, rcpts, raw in messages("2k", offset + count)[offset:]:
        env = Envelope(sender, list(rcpts))
        env.parse(raw)
        out.append(env)
    return out


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _commandstats(redis: Any) -> dict[str, int]:
    return {name: int(stats["calls"]) for name, stats in redis.info("commandstats").items()}


def run_direct(sink_port: int, concurrency: int, envelopes: list[Any]) -> dict[str, Any]:
    """Every envelope through the relay in this process, ``concurrency`` at a time."""
    import gevent.pool

    relay = StaticSmtpRelay("127.0.0.1", sink_port, pool_size=concurrency, idle_timeout=10.0)
    pool = gevent.pool.Pool(concurrency)
    cpu0, t0 = _self_cpu(), time.perf_counter()
    results = [pool.spawn(relay.attempt, env, 0) for env in envelopes]
    pool.join()
    elapsed = time.perf_counter() - t0
    failures = sum(1 for r in results if not r.successful())
    relay.kill()
    return {"elapsed": elapsed, "cpu": {"driver": _self_cpu() - cpu0}, "failures": failures}


def run_celery(
    workers: int, redis_port: int, redis_pid: int, sink_port: int, sink_pid: int,
    concurrency: int, envelopes: list[Any],
) -> dict[str, Any]:  # fmt: skip
    """Start ``workers`` worker processes, enqueue every envelope, wait for an empty store."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    _, queue = make_app(redis_port, prefix, sink_port, concurrency)
    env = dict(os.environ)
    env.update(
        CELERY_BENCH_REDIS_PORT=str(redis_port),
        CELERY_BENCH_PREFIX=prefix,
        CELERY_BENCH_SINK_PORT=str(sink_port),
        CELERY_BENCH_CONCURRENCY=str(concurrency),
        PYTHONPATH=os.pathsep.join([HERE, ROOT, env.get("PYTHONPATH", "")]),
    )
    logs = [f"/tmp/celery-bench-{prefix[:-1]}-{n}.log" for n in range(workers)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "celery_bench",
                "worker",
                "-P",
                "gevent",
                "-c",
                str(concurrency),
                "-n",
                f"b{n}-{prefix[:-1]}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=" + os.environ.get("CELERY_BENCH_LOGLEVEL", "WARNING"),
                f"--logfile={logs[n]}",
            ],
            cwd=HERE,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        for n in range(workers)
    ]
    try:
        redis = queue.store.redis
        # Ready once each worker consumes from the queue (its sweeper lock round is
        # not needed): wait for the broker's binding plus a ping per worker.
        deadline = time.monotonic() + WORKER_READY_SECONDS
        while len(queue.celery.control.ping(timeout=0.5) or []) < workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit("celery workers did not start; see " + " ".join(logs))
        stats0 = _commandstats(redis)
        pids = {
            "redis": redis_pid,
            "sink": sink_pid,
            **{f"w{n}": p.pid for n, p in enumerate(procs)},
        }
        cpu0 = {name: _cpu(pid) for name, pid in pids.items()}
        driver0, t0 = _self_cpu(), time.perf_counter()
        failures = 0
        for envelope in envelopes:
            [(_, result)] = queue.enqueue(envelope)
            failures += not isinstance(result, str)
        enqueued = time.perf_counter() - t0
        backlog = queue.get_info()["size"]
        while queue.get_info()["size"]:
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        drain = backlog / (elapsed - enqueued) if elapsed > enqueued else 0.0
        cpu = {name: _cpu(pid) - cpu0[name] for name, pid in pids.items()}
        cpu["driver"] = _self_cpu() - driver0
        stats1 = _commandstats(redis)
        # SCARD, ZCARD and ZCOUNT come only from the get_info() loop above (the
        # driver's polling), which is not the queue's work.
        commands = {
            k: stats1.get(k, 0) - stats0.get(k, 0)
            for k in stats1
            if k not in ("cmdstat_scard", "cmdstat_zcard", "cmdstat_zcount")
        }
        return {
            "elapsed": elapsed, "enqueue_elapsed": enqueued, "drain_rate": drain,
            "backlog": backlog, "cpu": cpu,
            "commands": commands, "failures": failures,
        }  # fmt: skip
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if sys.exc_info()[0] is None:  # kept when something failed
            for log in logs:
                if os.path.exists(log):
                    os.remove(log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    from run import start_redis, start_sink

    sink, sink_port = start_sink()
    redis_proc, redis_port = start_redis()
    results: dict[str, list[dict[str, Any]]] = {"direct": [], "celery1": [], "celery2": []}
    offset = 0
    try:
        for round_ in range(args.rounds):
            for name in results:
                envelopes = _envelopes(args.messages, offset)
                offset += args.messages
                if name == "direct":
                    result = run_direct(sink_port, args.concurrency, envelopes)
                else:
                    result = run_celery(
                        int(name[-1]), redis_port, redis_proc.pid, sink_port, sink.pid,
                        args.concurrency, envelopes,
                    )  # fmt: skip
                result["rate"] = args.messages / result["elapsed"]
                result.setdefault("drain_rate", result["rate"])
                results[name].append(result)
                print(f"round {round_} {name}: {result['rate']:.0f} msg/s end to end, "
                      f"{result['drain_rate']:.0f} msg/s draining "
                      f"(backlog {result.get('backlog', '-')}), "
                      f"failures {result['failures']}", flush=True)  # fmt: skip
    finally:
        for proc in (sink, redis_proc):
            proc.terminate()
            proc.wait()
    n = args.messages
    direct = statistics.median(r["rate"] for r in results["direct"])
    print(f"\n{n} messages x {args.rounds} rounds, -c/pool_size {args.concurrency}, profile 2k")
    print("(machine shared with other jobs: compare ratios only)\n")
    print(f"{'contender':10} {'msg/s':>8} {'vs direct':>9} {'draining':>9} {'vs direct':>9}"
          "  CPU ms/msg by process")  # fmt: skip
    for name, runs in results.items():
        rate = statistics.median(r["rate"] for r in runs)
        drain = statistics.median(r["drain_rate"] for r in runs)
        keys = sorted({k for r in runs for k in r["cpu"]})
        cpu = {k: statistics.median(r["cpu"].get(k, 0.0) for r in runs) * 1000 / n for k in keys}
        cpu_text = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
        print(f"{name:10} {rate:8.0f} {rate / direct:9.2f} {drain:9.0f} {drain / direct:9.2f}"
              f"  {cpu_text}")  # fmt: skip
        if "enqueue_elapsed" in runs[0]:
            enq = statistics.median(n / r["enqueue_elapsed"] for r in runs)
            total = statistics.median(sum(r["commands"].values()) / n for r in runs)
            top = sorted(runs[-1]["commands"].items(), key=lambda kv: -kv[1])[:8]
            print(f"{'':10} enqueue {enq:.0f} msg/s; Redis commands/msg {total:.1f} "
                  f"(last round: {', '.join(f'{k[8:]} {v / n:.1f}' for k, v in top)})")  # fmt: skip


if __name__ == "__main__":
    main()
