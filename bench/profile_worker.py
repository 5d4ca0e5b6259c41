"""Where slimta-relay's CPU goes in one benchmark scenario: a sampling profile.

    python bench/profile_worker.py reuse20 [--profile 2k] [--count 20000] [--top 25]
        [--tool py-spy|perf] [--py-spy PATH] [--rate 1000] [--raw FILE] [--tree DIR]
        [--memory-peer]
    python bench/profile_worker.py queue_dict|queue_disk|queue_redis [--relay-pool N] ...

Starts a postfix smtp-sink, runs ``worker_slimta.py`` (slimta-relay; for the
``queue_*`` scenarios ``worker_queue.py``, with a private redis-server for
``queue_redis``) under py-spy
(``pip install py-spy`` anywhere; give its path with ``--py-spy`` when it is not on
PATH) and prints the measured section's costs: self time by line and by function,
and inclusive time by function, each as a share of the samples. py-spy attaches when
the worker announces its clock (``BENCH_ANNOUNCE``), so imports, relay set-up and
envelope building are not sampled; nor is idle time (the hub waiting in epoll).
``--tool perf`` samples the same section with ``perf record -e cpu-clock`` instead and
prints the native split: interpreter, kernel (system calls, loopback TCP), libc, gevent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter

from run import OURS_PY, start_redis, start_sink

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
#: Frames that mark a sample as set-up work outside the clock.
SETUP = ("envelopes (", "big_envelope (", "_find_and_load")
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def short(path: str, tree: str | None = None) -> str:
    roots = [ROOT + os.sep, os.path.dirname(os.__file__) + os.sep]
    if tree:
        roots.insert(0, os.path.abspath(tree) + os.sep)
    for prefix in roots:
        if path.startswith(prefix):
            return path[len(prefix):]
    return re.sub(r".*/site-packages/", "", path)


def parse(raw: str, tree: str | None = None) -> tuple[int, Counter, Counter, Counter, Counter]:
    total = 0
    self_file: Counter = Counter()
    self_line: Counter = Counter()
    self_func: Counter = Counter()
    incl_func: Counter = Counter()
    for row in raw.splitlines():
        stack, _, count = row.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if any(mark in frame for frame in frames for mark in SETUP):
            continue
        n = int(count)
        total += n
        parsed = []
        for frame in frames:
            m = FRAME.match(frame)
            if m is None:
                parsed.append((frame, "?", "?"))
            else:
                parsed.append((m["func"], short(m["file"], tree), m["line"] or "?"))
        func, file, line = parsed[-1]
        self_file[file] += n
        self_line[f"{file}:{line} {func}"] += n
        self_func[f"{func} ({file})"] += n
        for key in {f"{f} ({fl})" for f, fl, _ in parsed}:
            incl_func[key] += n
    return total, self_file, self_line, self_func, incl_func


def show(title: str, counts: Counter, total: int, top: int) -> None:
    print(f"\n### {title}")
    print("| share | where |")
    print("|---|---|")
    for key, n in counts.most_common(top):
        print(f"| {100 * n / total:5.1f}% | `{key}` |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("scenario", choices=("reuse1", "reuse20", "noreuse20", "big",
                                             "queue_dict", "queue_disk", "queue_redis"))
    parser.add_argument("--profile", default="2k")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=int, default=1000, help="samples per second")
    parser.add_argument("--tool", choices=("py-spy", "perf"), default="py-spy",
                        help="py-spy: Python stacks; perf: native split (interpreter, "
                        "kernel, libc, gevent's C code) and the hottest native symbols")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "/tmp/pyspy/bin/py-spy")
    parser.add_argument("--raw", help="keep the profiler's output file (py-spy's collapsed "
                        "stacks, or perf.data)")
    parser.add_argument("--tree", metavar="DIR",
                        help="import slimta from DIR (e.g. a `git archive` snapshot)")
    parser.add_argument("--memory-peer", action="store_true",
                        help="reuse1/reuse20/noreuse20: worker_slimta.py --memory-peer (the "
                        "relay's own Python work, no sockets)")
    parser.add_argument("--relay-pool", type=int,
                        help="queue scenarios: worker_queue.py --relay-pool N")
    args = parser.parse_args()
    if args.tool == "py-spy" and not os.path.exists(args.py_spy):
        raise SystemExit("py-spy not found: pip install py-spy, then pass --py-spy PATH")
    if args.tool == "perf" and not shutil.which("perf"):
        raise SystemExit("perf not found (Debian: linux-perf)")
    out = args.raw or os.path.join(tempfile.mkdtemp(prefix="slimta-prof-"), "profile.out")
    env = dict(os.environ, BENCH_ANNOUNCE="0.5")
    if args.tree:
        env["PYTHONPATH"] = os.path.abspath(args.tree)
    sink, port = start_sink()
    redis_server = None
    try:
        if args.scenario.startswith("queue_"):
            store = args.scenario.split("_", 1)[1]
            cmd = [OURS_PY, "worker_queue.py", store, "--port", str(port),
                   "--count", str(args.count), "--profile", args.profile]
            if args.relay_pool is not None:
                cmd += ["--relay-pool", str(args.relay_pool)]
            if store == "redis":
                redis_server, redis_port = start_redis()
                cmd += ["--redis-port", str(redis_port)]
        else:
            cmd = [OURS_PY, "worker_slimta.py", args.scenario, "--port", str(port),
                   "--count", str(args.count), "--profile", args.profile]
            if args.memory_peer:
                cmd.append("--memory-peer")
        worker = subprocess.Popen(cmd, cwd=HERE, stdout=subprocess.PIPE, text=True,
                                  env=env)
        assert worker.stdout is not None
        lines = []
        prof = None
        for line in worker.stdout:
            lines.append(line)
            if line.strip() == "CLOCK" and prof is None:
                if args.tool == "perf":
                    tool = ["perf", "record", "-e", "cpu-clock", "-F", str(args.rate), "-g",
                            "-o", out, "-p", str(worker.pid)]
                else:
                    tool = [args.py_spy, "record", "--nonblocking", "-r", str(args.rate),
                            "-f", "raw", "--full-filenames", "-o", out, "--pid",
                            str(worker.pid)]
                prof = subprocess.Popen(tool, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        worker.wait()
        prof_err = prof.communicate(timeout=60)[1] if prof is not None else "no CLOCK line"
    finally:
        sink.kill()
        sink.wait()
        if redis_server is not None:
            redis_server.kill()
            redis_server.wait()
    result = [line for line in lines if line.startswith("RESULT ")]
    if worker.returncode or not result or not os.path.exists(out):
        sys.exit(f"profiled run failed:\n{''.join(lines)[-2000:]}\n{prof_err[-2000:]}")
    print(f"# {args.scenario}, profile {args.profile}, {args.count} messages: "
          f"{result[0][7:].strip()}")
    cpu_us = json.loads(result[0][7:])["cpu"] * 1e6 / args.count
    print(f"CPU per message: {cpu_us:.0f} us; a 1% share is {cpu_us / 100:.1f} us/message")
    if args.tool == "perf":
        for sort in ("dso", "sym"):
            report = subprocess.run(
                ["perf", "report", "-i", out, "--no-children", "--sort", sort, "-g", "none",
                 "--percent-limit", "0.3"], capture_output=True, text=True)
            rows = [r for r in report.stdout.splitlines() if r.strip() and r[0] != "#"]
            print(f"\n### perf: self time by {'shared object' if sort == 'dso' else 'symbol'}")
            print("```\n" + "\n".join(rows[: args.top]) + "\n```")
        return
    with open(out) as f:
        total, self_file, self_line, self_func, incl_func = parse(f.read(), args.tree)
    print(f"{total} samples in the measured section (py-spy, {args.rate}/s, idle excluded)")
    print("(py-spy counts a runnable-but-descheduled process as busy in its current call, so "
          "socket calls look costlier than they are: compare --tool perf)")
    show("self time by file", self_file, total, args.top)
    show("self time by line", self_line, total, args.top)
    show("self time by function", self_func, total, args.top)
    show("inclusive time by function", incl_func, total, args.top)

if __name__ == "__main__":
    main()
