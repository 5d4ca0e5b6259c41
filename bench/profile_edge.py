"""Where the edge server's CPU goes: py-spy on ``worker_edge.py`` while smtp-source sends.

    python bench/profile_edge.py [--sessions 20] [--count 4000] [--top 25]
        [--server slimta|aiosmtpd] [--py-spy PATH] [--syscalls] [--gil] [--ptr-cache-size N]

Starts bench/dns_server.py (for the PTR lookups) and the edge server (slimta-relay's
``SmtpEdge -> Queue(DictStorage) -> BlackholeRelay``, or aiosmtpd), attaches py-spy
(non-blocking, idle excluded) and runs ``smtp-source -s SESSIONS -m COUNT`` with the
2k message. Prints the server's user and system CPU per message, then the same
tables as bench/profile_worker.py.

``--syscalls`` attaches ``strace -c -f`` instead of py-spy and prints the system
calls per message (strace slows the server down: read the counts, not the rate).
``--gil`` passes py-spy's ``--gil``: only samples taken while the interpreter holds
the GIL count, so time inside ``send``/``recv`` and time the process sat preempted
(on a loaded machine py-spy's wall-clock samples put ~60% in ``send``) drop out.
``--ptr-cache-size 0`` runs slimta-relay without its PTR cache (see worker_edge.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from messages import write_lf
from profile_worker import parse, show
from run import OURS_PY, SOURCE, free_port, start_dns

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a running process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def show_syscalls(path: str, count: int, top: int) -> None:
    """The ``strace -c`` summary in ``path`` as calls (and errors) per message."""
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 5 or not parts[3].isdigit() or parts[-1] == "total":
                continue
            errors = int(parts[4]) if len(parts) == 6 else 0
            rows.append((int(parts[3]), errors, parts[-1]))
    rows.sort(reverse=True)
    print("\n### system calls per message (strace -c -f)")
    print("| calls/msg | errors/msg | syscall |")
    print("|---|---|---|")
    for calls, errors, name in rows[:top]:
        print(f"| {calls / count:.2f} | {errors / count:.2f} | {name} |")
    total = sum(calls for calls, _, _ in rows)
    print(f"| {total / count:.2f} | | (all) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--server", choices=("slimta", "aiosmtpd", "floor"), default="slimta")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "/tmp/pyspy/bin/py-spy")
    parser.add_argument("--syscalls", action="store_true",
                        help="count system calls with strace instead of sampling with py-spy")
    parser.add_argument("--ptr-cache-size", type=int,
                        help="slimta-relay's PTR cache size (0: a lookup per session)")
    parser.add_argument("--gil", action="store_true",
                        help="py-spy samples only while the interpreter holds the GIL: Python"
                        " CPU time, without system calls or time the process was preempted")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="slimta-prof-edge-")
    os.chmod(tmp, 0o755)
    source_file = os.path.join(tmp, "2k.eml")
    write_lf("2k", source_file)
    out = os.path.join(tmp, "profile.raw")
    dns, dns_port = start_dns(distinct=False)
    port = free_port()
    cmd = [OURS_PY, "worker_edge.py", args.server, "--port", str(port)]
    if args.server == "slimta":
        cmd += ["--dns-port", str(dns_port)]
        if args.ptr_cache_size is not None:
            cmd += ["--ptr-cache-size", str(args.ptr_cache_size)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=HERE)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "READY":
            sys.exit("server did not start")
        if args.syscalls:
            tracer = ["strace", "-c", "-f", "-o", out, "-p", str(server.pid)]
        else:
            tracer = [args.py_spy, "record", "--nonblocking", "-r", str(args.rate), "-f", "raw",
                      "--full-filenames", "-o", out, "--pid", str(server.pid)]
            if args.gil:
                tracer.append("--gil")
        prof = subprocess.Popen(tracer, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        user0, sys0 = cpu_split(server.pid)
        t0 = time.perf_counter()
        subprocess.run([SOURCE, "-s", str(args.sessions), "-m", str(args.count), "-F",
                        source_file, "-M", "bench.example.com", "-f", "sender@example.com",
                        "-t", "rcpt0@example.com", f"127.0.0.1:{port}"], check=True)
        elapsed = time.perf_counter() - t0
        user1, sys1 = cpu_split(server.pid)
        if args.syscalls:
            prof.terminate()  # strace writes its summary when it detaches
        server.terminate()
        server.communicate(timeout=60)
        prof.wait(timeout=60)
    finally:
        for proc in (server, dns):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    tool = "strace" if args.syscalls else "py-spy"
    per_msg = 1e6 / args.count
    print(f"# {args.server}, smtp-source -s {args.sessions} -m {args.count}: "
          f"{args.count / elapsed:.0f} msg/s, server CPU {(user1 - user0) * per_msg:.0f} us/msg"
          f" user + {(sys1 - sys0) * per_msg:.0f} us/msg system (under {tool})")
    if args.syscalls:
        show_syscalls(out, args.count, args.top)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    with open(out) as f:
        total, self_file, self_line, self_func, incl_func = parse(f.read())
    print(f"{total} samples (py-spy, {args.rate}/s, idle excluded)")
    show("self time by file", self_file, total, args.top)
    show("self time by line", self_line, total, args.top)
    show("self time by function", self_func, total, args.top)
    show("inclusive time by function", incl_func, total, args.top)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
