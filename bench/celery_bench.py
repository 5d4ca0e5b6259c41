"""Messages/s through CeleryQueue (1, then 2 worker processes) vs. the same relay called directly.

Run by hand, from the repository root::

    .venv/bin/python bench/celery_bench.py [--messages 1000] [--rounds 3] [--concurrency 20]
        [--contenders direct,celery1,celery2] [--base DIR] [--profile DIR]

Each round runs the contenders one after the other (interleaved, so that a
change in the machine's load hits all of them): ``direct`` (the driver calls
``StaticSmtpRelay(pool_size=C).attempt()`` for every message, C at a time) and
``celeryN`` (N ``celery worker -P gevent -c C`` processes, relay
``pool_size=C``; the driver enqueues every message and the clock stops when the
store is empty, so enqueuing is included). ``baseN`` is ``celeryN`` with the
workers running the ``slimta`` package of the tree ``--base DIR`` (for a
before/after comparison in one run; the driver, the settings and the task name,
``attempt_delivery_bench``, are the same). A contender may end in ``@PRESET``,
one of :data:`PRESETS` (Celery settings; ``recommended`` by default), as in
``celery1@plain,celery1@recommended``. The receiver is smtp-sink, the messages
the realistic ``2k`` profile of ``bench/messages.py``.

Printed: medians over the rounds of messages/s and the ratio to ``direct``,
both end to end and while draining the backlog left when enqueuing ends (an
idle worker sleeps ``polling_interval``, 2 s here, before it polls again, which
the end-to-end figure includes once), CPU milliseconds per message by process
(driver, workers, redis-server, smtp-sink), Redis commands per message from
``INFO commandstats`` (broker and store together, the commands run by scripts
included) and Redis round trips per message (``total_reads_processed`` of
``INFO stats``: one read per request or pipeline, less the driver's polling).

``--profile DIR`` runs every Celery worker under :mod:`cProfile` from the
moment it is ready until it stops, and writes ``DIR/<contender>-<pid>.prof``.

This module is also the workers' Celery app (``celery -A celery_bench``),
configured by environment variables (``CELERY_BENCH_*``).
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
if os.environ.get("CELERY_BENCH_TREE"):  # a worker of a baseN contender
    sys.path[:0] = [HERE, os.environ["CELERY_BENCH_TREE"], ROOT]
else:
    sys.path[:0] = [HERE, ROOT]

from celery import Celery, signals  # noqa: E402

from slimta.celeryqueue import CeleryQueue  # noqa: E402
from slimta.redisstorage import RedisStorage  # noqa: E402
from slimta.relay.smtp.static import StaticSmtpRelay  # noqa: E402

#: Seconds a worker may take to start.
WORKER_READY_SECONDS = 60.0
#: Seconds between two looks at the store while the workers drain it.
POLL_SECONDS = 0.05

#: Celery settings tried, by name. ``plain`` is the first pass's; each other
#: one changes one thing, and ``recommended`` is what doc/deployment.rst gives.
PRESETS: dict[str, dict[str, Any]] = {
    "plain": {},
    "norate": {"worker_disable_rate_limits": True},
    "noremote": {"worker_enable_remote_control": False},
    "nokeyprefix": {"_db": True},
    "prefetch1": {"worker_prefetch_multiplier": 1},
    "prefetch4": {"worker_prefetch_multiplier": 4},
    "prefetch8": {"worker_prefetch_multiplier": 8},
    "noack": {"_transport": {"ack_emulation": False}},
    "noack_norate": {"_transport": {"ack_emulation": False}, "worker_disable_rate_limits": True},
    "recommended": {"_transport": {"ack_emulation": False}},
}


def make_app(
    redis_port: int, prefix: str, sink_port: int, concurrency: int,
    preset: str = "recommended", db: int = 0,
) -> tuple[Any, Any]:  # fmt: skip
    """The benchmark's Celery app and queue (the same in the driver and the workers).

    Runs are kept apart by a key prefix: with ``global_keyprefix`` for the
    broker, or (presets with ``_db``) by a Redis database of their own, ``db``.
    """
    settings = dict(PRESETS[preset])
    own_db = bool(settings.pop("_db", False))
    extra_transport = settings.pop("_transport", {})
    transport: dict[str, Any] = {
        "polling_interval": float(os.environ.get("CELERY_BENCH_POLLING", "2")),
        "max_connections": 2 * concurrency + 10,
        "visibility_timeout": 3600,
    }
    if not own_db:
        transport["global_keyprefix"] = prefix
    transport.update(extra_transport)
    app = Celery("celery_bench", broker=f"redis://127.0.0.1:{redis_port}/{db if own_db else 0}")
    app.conf.update(
        accept_content=["json"],
        task_serializer="json",
        worker_prefetch_multiplier=int(os.environ.get("CELERY_BENCH_PREFETCH", "2")),
        worker_hijack_root_logger=False,
        task_ignore_result=True,
        broker_pool_limit=2 * concurrency + 10,
        broker_transport_options=transport,
    )
    app.conf.update(settings)
    relay = StaticSmtpRelay("127.0.0.1", sink_port, pool_size=concurrency, idle_timeout=10.0)
    store = RedisStorage(port=redis_port, prefix=prefix, max_connections=concurrency + 10)
    queue = CeleryQueue(app, relay, suffix="bench", store=store, dispatch_timeout=600.0)
    return app, queue


if os.environ.get("CELERY_BENCH_REDIS_PORT"):
    app, queue = make_app(
        int(os.environ["CELERY_BENCH_REDIS_PORT"]),
        os.environ["CELERY_BENCH_PREFIX"],
        int(os.environ["CELERY_BENCH_SINK_PORT"]),
        int(os.environ["CELERY_BENCH_CONCURRENCY"]),
        os.environ.get("CELERY_BENCH_PRESET", "recommended"),
        int(os.environ.get("CELERY_BENCH_DB", "0")),
    )
    _profiler: Any = None

    @signals.worker_ready.connect
    def _ready(sender: Any = None, **_: Any) -> None:
        global _profiler
        if os.environ.get("CELERY_BENCH_PROFILE"):
            import cProfile

            _profiler = cProfile.Profile(time.process_time)  # CPU, not waiting
            _profiler.enable()
        queue.store.redis.sadd(os.environ["CELERY_BENCH_PREFIX"] + "bench:ready", os.getpid())

    @signals.worker_shutdown.connect
    def _shutdown(sender: Any = None, **_: Any) -> None:
        if _profiler is not None:
            _profiler.disable()
            name = f"{os.environ['CELERY_BENCH_CONTENDER']}-{os.getpid()}.prof"
            _profiler.dump_stats(os.path.join(os.environ["CELERY_BENCH_PROFILE"], name))


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


def _reads(redis: Any) -> int:
    return int(redis.info("stats")["total_reads_processed"])


#: The next Redis database a run without ``global_keyprefix`` uses (1 to 15).
_next_db = [0]


def run_celery(
    label: str, workers: int, tree: str | None, preset: str, redis_port: int, redis_pid: int,
    sink_port: int, sink_pid: int, concurrency: int, envelopes: list[Any],
    profile_dir: str | None,
) -> dict[str, Any]:  # fmt: skip
    """Start ``workers`` worker processes, enqueue every envelope, wait for an empty store."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    _next_db[0] = _next_db[0] % 15 + 1
    db = _next_db[0]
    _, queue = make_app(redis_port, prefix, sink_port, concurrency, preset, db)
    env = dict(os.environ)
    paths = [HERE, tree, ROOT] if tree else [HERE, ROOT]
    env.update(
        CELERY_BENCH_REDIS_PORT=str(redis_port),
        CELERY_BENCH_PREFIX=prefix,
        CELERY_BENCH_SINK_PORT=str(sink_port),
        CELERY_BENCH_CONCURRENCY=str(concurrency),
        CELERY_BENCH_PRESET=preset,
        CELERY_BENCH_DB=str(db),
        CELERY_BENCH_CONTENDER=label.replace("@", "-"),
        PYTHONPATH=os.pathsep.join([*paths, env.get("PYTHONPATH", "")]),
    )
    if tree:
        env["CELERY_BENCH_TREE"] = tree
    if profile_dir:
        env["CELERY_BENCH_PROFILE"] = profile_dir
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
    redis = queue.store.redis
    try:
        # Each worker says it is ready (consuming) in Redis.
        deadline = time.monotonic() + WORKER_READY_SECONDS
        while redis.scard(prefix + "bench:ready") < workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit("celery workers did not start; see " + " ".join(logs))
            time.sleep(0.05)
        stats0, reads0 = _commandstats(redis), _reads(redis)
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
        polls = 1
        while queue.get_info()["size"]:
            polls += 1
            time.sleep(POLL_SECONDS)
        polls += 1
        elapsed = time.perf_counter() - t0
        drain = backlog / (elapsed - enqueued) if elapsed > enqueued else 0.0
        cpu = {name: _cpu(pid) - cpu0[name] for name, pid in pids.items()}
        cpu["driver"] = _self_cpu() - driver0
        reads = _reads(redis) - reads0 - polls - 1  # the polls, and this INFO
        stats1 = _commandstats(redis)
        # SCARD, ZCARD and ZCOUNT come only from the get_info() loop above (the
        # driver's polling), which is not the queue's work.
        commands = {
            k: stats1.get(k, 0) - stats0.get(k, 0)
            for k in stats1
            if k not in ("cmdstat_scard", "cmdstat_zcard", "cmdstat_zcount", "cmdstat_info")
        }
        return {
            "elapsed": elapsed, "enqueue_elapsed": enqueued, "drain_rate": drain,
            "backlog": backlog, "cpu": cpu, "reads": reads,
            "commands": commands, "failures": failures,
        }  # fmt: skip
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if sys.exc_info()[0] is None:  # kept when something failed
            for log in logs:
                if os.path.exists(log):
                    os.remove(log)
        # What the run left: the broker's database, the store's keys.
        redis.__class__(port=redis_port, db=db).flushdb()
        for key in redis.scan_iter(match=prefix + "*", count=1000):
            redis.delete(key)


def _parse(name: str) -> tuple[int, bool, str]:
    """``celeryN[@preset]`` or ``baseN[@preset]``: (workers, base tree?, preset)."""
    kind, _, preset = name.partition("@")
    preset = preset or "recommended"
    if preset not in PRESETS:
        raise SystemExit(f"unknown preset {preset!r}; one of {', '.join(PRESETS)}")
    for head in ("celery", "base"):
        if kind.startswith(head) and kind[len(head) :].isdigit():
            return int(kind[len(head) :]), head == "base", preset
    raise SystemExit(f"unknown contender {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--contenders", default="direct,celery1,celery2")
    parser.add_argument("--base", help="a tree whose slimta the baseN workers run")
    parser.add_argument("--profile", help="write the workers' cProfile data here")
    args = parser.parse_args()
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    for name in names:
        if name != "direct" and _parse(name)[1] and not args.base:
            raise SystemExit(f"{name} needs --base DIR")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    from run import start_redis, start_sink

    sink, sink_port = start_sink()
    redis_proc, redis_port = start_redis()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    offset = 0
    try:
        for round_ in range(args.rounds):
            for name in results:
                envelopes = _envelopes(args.messages, offset)
                offset += args.messages
                if name == "direct":
                    result = run_direct(sink_port, args.concurrency, envelopes)
                else:
                    workers, base, preset = _parse(name)
                    result = run_celery(
                        name, workers, os.path.abspath(args.base) if base else None, preset,
                        redis_port, redis_proc.pid, sink_port, sink.pid, args.concurrency,
                        envelopes, args.profile and os.path.abspath(args.profile),
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
    reference = "direct" if "direct" in results else names[0]
    direct = statistics.median(r["rate"] for r in results[reference])
    print(f"\n{n} messages x {args.rounds} rounds, -c/pool_size {args.concurrency}, profile 2k")
    print("(machine shared with other jobs: compare ratios only)\n")
    print(f"{'contender':22} {'msg/s':>7} {'vs ' + reference:>10} {'draining':>9} "
          f"{'vs ' + reference:>10}  CPU ms/msg by process")  # fmt: skip
    for name, runs in results.items():
        rate = statistics.median(r["rate"] for r in runs)
        drain = statistics.median(r["drain_rate"] for r in runs)
        keys = sorted({k for r in runs for k in r["cpu"]})
        cpu = {k: statistics.median(r["cpu"].get(k, 0.0) for r in runs) * 1000 / n for k in keys}
        cpu_text = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
        print(f"{name:22} {rate:7.0f} {rate / direct:10.2f} {drain:9.0f} {drain / direct:10.2f}"
              f"  {cpu_text}")  # fmt: skip
        if "enqueue_elapsed" in runs[0]:
            enq = statistics.median(n / r["enqueue_elapsed"] for r in runs)
            total = statistics.median(sum(r["commands"].values()) / n for r in runs)
            trips = statistics.median(r["reads"] / n for r in runs)
            top = sorted(runs[-1]["commands"].items(), key=lambda kv: -kv[1])[:9]
            print(f"{'':22} enqueue {enq:.0f} msg/s; Redis round trips/msg {trips:.1f}, "
                  f"commands/msg {total:.1f} "
                  f"(last round: {', '.join(f'{k[8:]} {v / n:.1f}' for k, v in top)})")  # fmt: skip


if __name__ == "__main__":
    main()
