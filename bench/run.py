"""Benchmark driver: slimta-relay against its peers, interleaved, in one run.

    python bench/run.py [SCENARIO ...] [--rounds 3] [--count 5000]

Scenarios: reuse1, reuse20, noreuse20, big, mx_cached, mx_uncached, mx_memory
(default: all). Every round runs
each implementation once, in turn, against the same postfix smtp-sink; the table
gives medians over the rounds and each peer's ratio to slimta-relay. Run
``bench/setup_peers.sh`` once first. See bench/README.md.
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
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OURS_PY = os.path.join(ROOT, ".venv", "bin", "python")
ORIG_PY = os.path.join(ROOT, ".bench", "slimta-orig", "bin", "python")
SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"

SCENARIOS = {
    "reuse1": "StaticSmtpRelay pool_size=1, reused connection",
    "reuse20": "StaticSmtpRelay pool_size=20, reused connections",
    "noreuse20": "StaticSmtpRelay pool_size=20, a connection per message",
    "big": "one 20 MB message",
    "mx_cached": "MxSmtpRelay, 100 domains already cached (vs static reuse20)",
    "mx_uncached": "MxSmtpRelay, a new domain per message, local DNS (vs static reuse20)",
    "mx_memory": "MxSmtpRelay, a new domain and MX host per message: RSS growth",
}
MX_SCENARIOS = ("mx_cached", "mx_uncached", "mx_memory")
BIG_SIZE = 20 * 1000 * 1000


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


def start_dns(distinct: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    args = [OURS_PY, os.path.join(HERE, "dns_server.py"), str(port)]
    proc = subprocess.Popen(args + (["--distinct-hosts"] if distinct else []),
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit("bench DNS server did not start")
    return proc, port


def mx_implementations(scenario: str, port: int, dns_port: int, count: int) -> dict:
    def mx(*extra: str) -> dict:
        return run_worker([OURS_PY, "worker_mx.py", scenario, "--port", str(port),
                           "--dns-port", str(dns_port), "--count", str(count), *extra])

    if scenario == "mx_memory":
        return {"slimta-relay": mx, "bare c-ares floor": lambda: mx("--bare")}
    return {
        "slimta-relay": mx,
        "static reuse20": lambda: run_worker(
            [OURS_PY, "worker_slimta.py", "reuse20", "--port", str(port), "--count",
             str(count), "--size", "2048"]),
    }


def implementations(scenario: str, port: int, count: int) -> dict:
    """name -> callable running one measurement and returning the worker's result."""
    orig_env = dict(os.environ, PYTHONPATH=os.path.join(HERE, "shim"))
    size = BIG_SIZE if scenario == "big" else 2048
    # python-slimta waits ~10 ms per reused message; fewer messages keep rounds short.
    orig_count = max(200, count // 10) if scenario == "reuse1" else count
    impls = {
        "slimta-relay": lambda: run_worker(
            [OURS_PY, "worker_slimta.py", scenario, "--port", str(port), "--count", str(count),
             "--size", str(size)]),
        "aiosmtplib": lambda: run_worker(
            [OURS_PY, "worker_aiosmtplib.py", scenario, "--port", str(port), "--count",
             str(count), "--size", str(size)]),
    }
    if scenario != "big" and os.path.exists(ORIG_PY):
        impls["python-slimta"] = lambda: run_worker(
            [ORIG_PY, "worker_slimta.py", scenario, "--port", str(port), "--count",
             str(orig_count), "--size", str(size)], env=orig_env)
    common = ["-M", "bench.example.com", "-f", "sender@example.com", "-t", "rcpt@example.com"]
    target = f"127.0.0.1:{port}"
    if scenario == "reuse1":
        impls["smtp-source"] = lambda: run_source(
            ["-d", "-s", "1", "-m", str(count), "-l", "2048", *common, target], count)
    elif scenario == "reuse20":
        impls["smtp-source"] = lambda: run_source(
            ["-d", "-s", "20", "-m", str(count), "-l", "2048", *common, target], count)
    elif scenario == "noreuse20":
        impls["smtp-source"] = lambda: run_source(
            ["-s", "20", "-m", str(count), "-l", "2048", *common, target], count)
    elif scenario == "big":
        impls["smtp-source"] = lambda: run_source(
            ["-s", "1", "-m", "1", "-l", str(BIG_SIZE), *common, target], 1)
    return impls


def to_sample(scenario: str, result: dict) -> Sample:
    if result.get("failures"):
        print(f"  warning: {result['failures']} failures", file=sys.stderr)
    if "rss_growth" in result:
        return Sample(result["messages"] / result["elapsed"],
                      result["cpu"] * 1e6 / result["messages"],
                      {"rss_mb": result["rss_growth"] / 2**20})
    if scenario == "big":
        rate = BIG_SIZE / result["elapsed"] / 1e6
        extra = {"peak_growth_mb": result.get("peak_growth", 0) / 1e6}
        return Sample(rate, result["cpu"] * 1e6, extra)
    return Sample(result["messages"] / result["elapsed"],
                  result["cpu"] * 1e6 / result["messages"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--only", nargs="*", help="implementations to run")
    parser.add_argument("--mx-memory-count", type=int, default=100000)
    args = parser.parse_args()
    sink, port = start_sink()
    try:
        for scenario in args.scenarios:
            dns = None
            if scenario in MX_SCENARIOS:
                dns, dns_port = start_dns(distinct=scenario == "mx_memory")
                count = args.mx_memory_count if scenario == "mx_memory" else args.count
                impls = mx_implementations(scenario, port, dns_port, count)
            else:
                impls = implementations(scenario, port, args.count)
            if args.only:
                impls = {k: v for k, v in impls.items() if k in args.only}
            samples: dict[str, list[Sample]] = {name: [] for name in impls}
            try:
                for rnd in range(args.rounds):
                    for name, run in impls.items():
                        samples[name].append(to_sample(scenario, run()))
                    print(f"[{scenario}] round {rnd + 1}/{args.rounds} done", file=sys.stderr)
            finally:
                if dns is not None:
                    dns.kill()
                    dns.wait()
            report(scenario, samples)
    finally:
        sink.kill()
        sink.wait()


def report(scenario: str, samples: dict[str, list[Sample]]) -> None:
    unit = "MB/s" if scenario == "big" else "msg/s"
    rounds = len(next(iter(samples.values())))
    print(f"\n## {scenario}: {SCENARIOS[scenario]}  (median of {rounds})")
    print(f"| implementation | {unit} | rounds | CPU us/msg | slimta-relay ratio |")
    print("|---|---|---|---|---|")
    ours = statistics.median(s.rate for s in samples.get("slimta-relay", [Sample(0, 0)]))
    for name, runs in samples.items():
        rate = statistics.median(s.rate for s in runs)
        cpu = statistics.median(s.cpu_us for s in runs)
        each = ", ".join(f"{s.rate:.0f}" if s.rate > 50 else f"{s.rate:.1f}" for s in runs)
        ratio = f"{ours / rate:.2f}x" if rate and name != "slimta-relay" else "-"
        extra = ""
        if scenario == "big":
            growth = statistics.median(s.extra.get("peak_growth_mb", 0) for s in runs)
            extra = f" (peak RSS growth {growth:.1f} MB)"
        if "rss_mb" in runs[0].extra:
            growth = statistics.median(s.extra["rss_mb"] for s in runs)
            extra = f" (RSS growth {growth:.1f} MiB)"
        print(f"| {name} | {rate:.1f}{extra} | {each} | {cpu:.0f} | {ratio} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
