"""Benchmark driver: slimta-relay against its peers, interleaved, in one run.

    python bench/run.py [SCENARIO ...] [--rounds 3] [--count 5000] [--profile 2k]
        [--relay-pools N,N,...]

Scenarios: reuse1, reuse20, noreuse20, big, mx_cached, mx_uncached, mx_memory,
queue_dict, queue_disk, queue_redis, edge1, edge20 (default: all). Profiles
(bench/messages.py): 2k (default), bulk, multipart, tidy.
Every round runs each implementation once, in turn, against the same postfix
smtp-sink; the table gives medians over the rounds and slimta-relay's ratio to each
peer. Run ``bench/setup_peers.sh`` once first. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from messages import PROFILES, write_lf

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OURS_PY = os.path.join(ROOT, ".venv", "bin", "python")
ORIG_PY = os.path.join(ROOT, ".bench", "slimta-orig", "bin", "python")
SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
#: The environment of slimta-relay's workers; ``--tree DIR`` puts DIR first on PYTHONPATH.
OURS_ENV: dict[str, str] | None = None
#: ``--base DIR``: the environment of a second slimta-relay contender (edge scenarios).
BASE_ENV: dict[str, str] | None = None
#: ``--pin``: edge scenarios run the server on CPU 1 and smtp-source on CPU 0.
PIN = False

SCENARIOS = {
    "reuse1": "StaticSmtpRelay pool_size=1, reused connection",
    "reuse20": "StaticSmtpRelay pool_size=20, reused connections",
    "noreuse20": "StaticSmtpRelay pool_size=20, a connection per message",
    "big": "one 20 MiB message",
    "mx_cached": "MxSmtpRelay, 100 domains already cached (vs static reuse20)",
    "mx_uncached": "MxSmtpRelay, a new domain per message, local DNS (vs static reuse20)",
    "mx_memory": "MxSmtpRelay, a new domain and MX host per message: RSS growth",
    "queue_dict": "Queue(DictStorage, StaticSmtpRelay pool_size=20), 100 enqueuers, until delivered"
    " (vs the bare relay reuse20)",
    "queue_disk": "Queue(DiskStorage in a temp dir, StaticSmtpRelay pool_size=20), 100 enqueuers",
    "queue_redis": "Queue(RedisStorage on a private redis-server, StaticSmtpRelay pool_size=20),"
    " 100 enqueuers",
    "edge1": "smtp-source -s 1 into SmtpEdge -> Queue(DictStorage) -> BlackholeRelay"
    " (CPU: the server's)",
    "edge20": "smtp-source -s 20 into SmtpEdge -> Queue(DictStorage) -> BlackholeRelay"
    " (CPU: the server's)",
}
MX_SCENARIOS = ("mx_cached", "mx_uncached", "mx_memory")
QUEUE_SCENARIOS = ("queue_dict", "queue_disk", "queue_redis")
EDGE_SCENARIOS = {"edge1": 1, "edge20": 20}  # smtp-source -s
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
#: Per-message figures a worker may report, shown next to the rate.
EXTRA_KEYS = {"fsyncs_per_msg": "fsyncs/msg", "redis_cmds_per_msg": "Redis commands/msg",
              "redis_requests_per_msg": "Redis requests (round trips)/msg"}
BIG_SIZE = 20 * 2**20  # body bytes, as smtp-source -l counts them
#: python-slimta waits ~10 ms per reused message: fewer messages keep its rounds short.
ORIG_SHARE = {"reuse1": 10}


@dataclass
class Sample:
    rate: float  # messages/s (or MB/s for big)
    cpu_us: float  # CPU microseconds per message
    extra: dict = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sink() -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([SINK, "-u", "nobody", f"127.0.0.1:{port}", "4096"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("smtp-sink did not start")


def run_worker(cmd: list[str], env: dict | None = None) -> dict:
    if env is None and cmd[0] == OURS_PY:
        env = OURS_ENV
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=HERE)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{cmd[0:3]} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")


def run_source(args: list[str], messages: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([SOURCE, *args], check=True, capture_output=True, timeout=900)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"messages": messages, "elapsed": elapsed, "cpu": cpu, "failures": 0}


def start_redis() -> tuple[subprocess.Popen, int]:
    """A private redis-server on loopback, without persistence (no RDB, no AOF)."""
    port = free_port()
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tempfile.gettempdir()],
                            stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def proc_cpu(pid: int) -> float:
    """user + sys seconds of a running process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_edge(cmd: list[str], env: dict | None, source_args: list[str], messages: int) -> dict:
    """Start the server ``cmd``, time smtp-source against it, read the server's CPU."""
    if env is None and cmd[0] == OURS_PY:
        env = OURS_ENV
    source = [SOURCE, *source_args]
    if PIN:
        cmd = ["taskset", "-c", "1", *cmd]
        source = ["taskset", "-c", "0", *source]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=HERE)
    assert server.stdout is not None
    try:
        line = server.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"{cmd[0:3]} did not start: {line}{server.stderr.read()[-3000:]}")
        cpu0 = proc_cpu(server.pid)
        t0 = time.perf_counter()
        subprocess.run(source, check=True, capture_output=True, timeout=900)
        elapsed = time.perf_counter() - t0
        cpu = proc_cpu(server.pid) - cpu0
        server.terminate()
        out, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    for line in out.splitlines():
        if line.startswith("RESULT "):
            got = json.loads(line[7:])
            break
    else:
        raise RuntimeError(f"{cmd[0:3]} gave no result:\n{out[-2000:]}\n{err[-3000:]}")
    lost = messages - min(got["received"], got["delivered"])
    return {"messages": messages, "elapsed": elapsed, "cpu": cpu, "failures": lost}


def edge_implementations(scenario: str, count: int, dns_port: int, source_file: str) -> dict:
    sessions = EDGE_SCENARIOS[scenario]
    orig_env = dict(os.environ, PYTHONPATH=os.path.join(HERE, "shim"))

    def edge(python: str, server: str, env: dict | None = None) -> dict:
        port = free_port()
        cmd = [python, "worker_edge.py", server, "--port", str(port)]
        if server == "slimta":
            cmd += ["--dns-port", str(dns_port)]
        source = ["-s", str(sessions), "-m", str(count), "-F", source_file,
                  "-M", "bench.example.com", "-f", "sender@example.com",
                  "-t", "rcpt0@example.com", f"127.0.0.1:{port}"]
        return run_edge(cmd, env, source, count)

    impls = {
        "slimta-relay": lambda: edge(OURS_PY, "slimta"),
        "aiosmtpd": lambda: edge(OURS_PY, "aiosmtpd"),
        # a reference: the same exchange in a bare gevent server (bench/worker_edge.py)
        "gevent-floor": lambda: edge(OURS_PY, "floor"),
    }
    if BASE_ENV is not None:
        impls["slimta-base"] = lambda: edge(OURS_PY, "slimta", BASE_ENV)
    if os.path.exists(ORIG_PY):
        impls["python-slimta"] = lambda: edge(ORIG_PY, "slimta", orig_env)
    return impls


def queue_implementations(scenario: str, port: int, count: int, profile: str,
                          redis_port: int | None, relay_pools: list[int] | None = None) -> dict:
    store = scenario.split("_", 1)[1]
    args = [store, "--port", str(port), "--count", str(count), "--profile", profile]
    if redis_port is not None:
        args += ["--redis-port", str(redis_port)]
    impls = {"slimta-relay": lambda: run_worker([OURS_PY, "worker_queue.py", *args])}
    for size in relay_pools or ():
        impls[f"slimta-relay relay_pool={size}"] = (
            lambda size=size: run_worker([OURS_PY, "worker_queue.py", *args,
                                          "--relay-pool", str(size)]))
    if store == "dict":
        impls["bare relay reuse20"] = lambda: run_worker(
            [OURS_PY, "worker_slimta.py", "reuse20", "--port", str(port), "--count", str(count),
             "--profile", profile])
        if os.path.exists(ORIG_PY):
            orig_env = dict(os.environ, PYTHONPATH=os.path.join(HERE, "shim"))
            impls["python-slimta"] = lambda: run_worker(
                [ORIG_PY, "worker_queue.py", *args], env=orig_env)
    return impls


def start_dns(distinct: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    args = [OURS_PY, os.path.join(HERE, "dns_server.py"), str(port)]
    proc = subprocess.Popen(args + (["--distinct-hosts"] if distinct else []),
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit("bench DNS server did not start")
    return proc, port


def mx_implementations(scenario: str, port: int, dns_port: int, count: int,
                       profile: str) -> dict:
    def mx(*extra: str) -> dict:
        return run_worker([OURS_PY, "worker_mx.py", scenario, "--port", str(port),
                           "--dns-port", str(dns_port), "--count", str(count),
                           "--profile", profile, *extra])

    if scenario == "mx_memory":
        return {"slimta-relay": mx, "bare c-ares floor": lambda: mx("--bare")}
    return {
        "slimta-relay": mx,
        "static reuse20": lambda: run_worker(
            [OURS_PY, "worker_slimta.py", "reuse20", "--port", str(port), "--count",
             str(count), "--profile", profile]),
    }


def implementations(scenario: str, port: int, count: int, profile: str,
                    source_file: str) -> dict:
    """name -> callable running one measurement and returning the worker's result."""
    orig_env = dict(os.environ, PYTHONPATH=os.path.join(HERE, "shim"))
    orig_count = max(200, count // ORIG_SHARE.get(scenario, 1))
    worker_args = [scenario, "--port", str(port), "--profile", profile, "--big-size",
                   str(BIG_SIZE)]
    impls = {
        "slimta-relay": lambda: run_worker(
            [OURS_PY, "worker_slimta.py", *worker_args, "--count", str(count)]),
        "aiosmtplib": lambda: run_worker(
            [OURS_PY, "worker_aiosmtplib.py", *worker_args, "--count", str(count)]),
    }
    if BASE_ENV is not None:
        impls["slimta-base"] = lambda: run_worker(
            [OURS_PY, "worker_slimta.py", *worker_args, "--count", str(count)], env=BASE_ENV)
    if scenario != "big" and os.path.exists(ORIG_PY):
        impls["python-slimta"] = lambda: run_worker(
            [ORIG_PY, "worker_slimta.py", *worker_args, "--count", str(orig_count)],
            env=orig_env)
    common = ["-M", "bench.example.com", "-f", "sender@example.com", "-t", "rcpt0@example.com"]
    # -F sends the profile's message 0 as it is (each line + CRLF, dot-stuffed).
    payload = ["-F", source_file]
    target = f"127.0.0.1:{port}"
    if scenario == "reuse1":
        impls["smtp-source"] = lambda: run_source(
            ["-d", "-s", "1", "-m", str(count), *payload, *common, target], count)
    elif scenario == "reuse20":
        impls["smtp-source"] = lambda: run_source(
            ["-d", "-s", "20", "-m", str(count), *payload, *common, target], count)
    elif scenario == "noreuse20":
        impls["smtp-source"] = lambda: run_source(
            ["-s", "20", "-m", str(count), *payload, *common, target], count)
    elif scenario == "big":
        impls["smtp-source"] = lambda: dict(run_source(
            ["-s", "1", "-m", "1", "-l", str(BIG_SIZE), *common, target], 1), bytes=BIG_SIZE)
    return impls


def to_sample(scenario: str, result: dict) -> Sample:
    if result.get("failures"):
        print(f"  warning: {result['failures']} failures", file=sys.stderr)
    if "rss_growth" in result:
        return Sample(result["messages"] / result["elapsed"],
                      result["cpu"] * 1e6 / result["messages"],
                      {"rss_mb": result["rss_growth"] / 2**20})
    if scenario == "big":
        size = result.get("bytes", BIG_SIZE)
        rate = size / result["elapsed"] / 1e6
        extra = {"size_mb": size / 1e6}
        if "peak_growth" in result:  # smtp-source's is not measured
            extra["peak_growth_mb"] = result["peak_growth"] / 1e6
        return Sample(rate, result["cpu"] * 1e6, extra)
    extra = {key: result[key] for key in EXTRA_KEYS if key in result}
    return Sample(result["messages"] / result["elapsed"],
                  result["cpu"] * 1e6 / result["messages"], extra)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--profile", choices=PROFILES, default="2k",
                        help="message profile from bench/messages.py (default 2k)")
    parser.add_argument("--only", nargs="*", help="implementations to run")
    parser.add_argument("--mx-memory-count", type=int, default=100000)
    parser.add_argument("--relay-pools", type=lambda text: [int(n) for n in text.split(",")],
                        metavar="N,N,...", help="queue scenarios: also run slimta-relay with "
                        "Queue(relay_pool=N) for each N (the default bound is 4 x pool_size)")
    parser.add_argument("--tree", metavar="DIR",
                        help="import slimta from DIR (e.g. a `git archive` snapshot of a commit)"
                        " instead of the working tree")
    parser.add_argument("--base", metavar="DIR",
                        help="edge and relay scenarios: also run slimta from DIR as"
                        " 'slimta-base' (e.g. a `git archive` snapshot of the previous"
                        " commit), interleaved")
    parser.add_argument("--pin", action="store_true",
                        help="edge scenarios: pin the server to CPU 1 and smtp-source to CPU 0"
                        " (less run-to-run variance on a shared 2-core machine)")
    args = parser.parse_args()
    if args.pin:
        global PIN
        PIN = True
    def tree_env(path: str) -> dict[str, str]:
        tree = os.path.abspath(path)
        if not os.path.isdir(os.path.join(tree, "slimta")):
            parser.error(f"{tree} has no slimta/ package")
        return dict(os.environ, PYTHONPATH=tree)

    if args.base:
        global BASE_ENV
        BASE_ENV = tree_env(args.base)
    if args.tree:
        global OURS_ENV
        OURS_ENV = tree_env(args.tree)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    tmp = tempfile.mkdtemp(prefix="slimta-bench-")
    source_file = os.path.join(tmp, f"{args.profile}.eml")
    size = write_lf(args.profile, source_file)
    os.chmod(tmp, 0o755)
    print(f"# profile {args.profile}: {size}-byte messages, {args.count} per run, "
          f"{args.rounds} rounds, interleaved; slimta from {args.tree or ROOT}")
    sink, port = start_sink()
    results: dict[str, dict[str, Sample]] = {}
    try:
        for scenario in args.scenarios:
            dns = None
            redis = None
            if scenario in MX_SCENARIOS:
                dns, dns_port = start_dns(distinct=scenario == "mx_memory")
                count = args.mx_memory_count if scenario == "mx_memory" else args.count
                impls = mx_implementations(scenario, port, dns_port, count, args.profile)
            elif scenario in EDGE_SCENARIOS:
                dns, dns_port = start_dns(distinct=False)
                impls = edge_implementations(scenario, args.count, dns_port, source_file)
            elif scenario in QUEUE_SCENARIOS:
                redis_port = None
                if scenario == "queue_redis":
                    redis, redis_port = start_redis()
                impls = queue_implementations(scenario, port, args.count, args.profile,
                                              redis_port, args.relay_pools)
            else:
                impls = implementations(scenario, port, args.count, args.profile, source_file)
            if args.only:
                impls = {k: v for k, v in impls.items() if k in args.only}
            samples: dict[str, list[Sample]] = {name: [] for name in impls}
            try:
                for rnd in range(args.rounds):
                    for name, run in impls.items():
                        samples[name].append(to_sample(scenario, run()))
                    print(f"[{scenario}] round {rnd + 1}/{args.rounds} done", file=sys.stderr)
            finally:
                for helper in (dns, redis):
                    if helper is not None:
                        helper.kill()
                        helper.wait()
            results[scenario] = report(scenario, samples)
    finally:
        sink.kill()
        sink.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    targets(results)


def median_sample(runs: list[Sample]) -> Sample:
    extra = {key: statistics.median(s.extra[key] for s in runs) for key in runs[0].extra}
    return Sample(statistics.median(s.rate for s in runs),
                  statistics.median(s.cpu_us for s in runs), extra)


def report(scenario: str, samples: dict[str, list[Sample]]) -> dict[str, Sample]:
    unit = "MB/s" if scenario == "big" else "msg/s"
    rounds = len(next(iter(samples.values())))
    print(f"\n## {scenario}: {SCENARIOS[scenario]}  (median of {rounds})")
    print(f"| implementation | {unit} | rounds | CPU us/msg | slimta-relay ratio |")
    print("|---|---|---|---|---|")
    medians = {name: median_sample(runs) for name, runs in samples.items()}
    ours = medians["slimta-relay"].rate if "slimta-relay" in medians else 0.0
    for name, runs in samples.items():
        med = medians[name]
        each = ", ".join(f"{s.rate:.0f}" if s.rate > 50 else f"{s.rate:.1f}" for s in runs)
        ratio = f"{ours / med.rate:.2f}x" if med.rate and name != "slimta-relay" else "-"
        if ratio != "-" and "slimta-relay" in samples and len(runs) > 1:
            # Each round's own ratio: drift of a shared machine hits both alike.
            per_round = [o.rate / s.rate for o, s in zip(samples["slimta-relay"], runs, strict=True)
                         if s.rate]
            if per_round:
                ratio += (f" (rounds {', '.join(f'{r:.2f}' for r in per_round)};"
                          f" median {statistics.median(per_round):.2f}x)")
        extra = ""
        if scenario == "big":
            if "peak_growth_mb" in med.extra:
                growth = med.extra["peak_growth_mb"]
                size = med.extra["size_mb"]
                extra = f" (peak RSS growth {growth:.1f} MB = {growth / size:.2f}x the message)"
        if "rss_mb" in med.extra:
            extra = f" (RSS growth {med.extra['rss_mb']:.1f} MiB)"
        shown = [f"{med.extra[key]:.2f} {label}" for key, label in EXTRA_KEYS.items()
                 if key in med.extra]
        if shown:
            extra = f" ({', '.join(shown)})"
        print(f"| {name} | {med.rate:.1f}{extra} | {each} | {med.cpu_us:.0f} | {ratio} |")
    sys.stdout.flush()
    return medians


def targets(results: dict[str, dict[str, Sample]]) -> None:
    """Issues 12-14's targets, checked against this run's medians (for the measured scenarios)."""
    lines = []

    def check(label: str, value: float, goal: float, at_most: bool = False, fmt: str = ".2f"
              ) -> None:
        met = value <= goal if at_most else value >= goal
        sign = "<=" if at_most else ">="
        lines.append(f"- {label}: {value:{fmt}} (target {sign} {goal:{fmt}}) "
                     f"{'MET' if met else 'MISSED'}")

    def ratio(scenario: str, peer: str) -> float | None:
        got = results.get(scenario, {})
        if "slimta-relay" not in got or peer not in got or not got[peer].rate:
            return None
        return got["slimta-relay"].rate / got[peer].rate

    r20 = results.get("reuse20", {})
    if "slimta-relay" in r20:
        check("reuse20 CPU us/msg", r20["slimta-relay"].cpu_us, 90, at_most=True, fmt=".0f")
    for peer, goal in (("python-slimta", 4.0), ("aiosmtplib", 2.5)):
        value = ratio("reuse20", peer)
        if value is not None:
            check(f"reuse20 vs {peer}", value, goal)
    value = ratio("reuse1", "smtp-source")
    if value is not None:
        check("reuse1 vs smtp-source -d -s 1", value, 1.5)
    value = ratio("big", "smtp-source")
    if value is not None:
        check("big MB/s vs smtp-source", value, 0.9)
        ours = results["big"]["slimta-relay"].extra
        check("big peak RSS growth / message size",
              ours["peak_growth_mb"] / ours["size_mb"], 1.5, at_most=True)
    value = ratio("queue_dict", "bare relay reuse20")
    if value is not None:
        check("queue_dict Queue(DictStorage) / bare relay reuse20 (issue 13)", value, 0.8)
    for scenario in EDGE_SCENARIOS:
        for peer, goal in (("aiosmtpd", 2.0), ("python-slimta", 1.5)):
            value = ratio(scenario, peer)
            if value is not None:
                check(f"{scenario} vs {peer} (issue 14)", value, goal)
    if lines:
        print("\n## targets (issues 12-14)\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
