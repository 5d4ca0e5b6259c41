"""Where the edge server's CPU goes: py-spy on ``worker_edge.py`` while smtp-source sends.

    python bench/profile_edge.py [--sessions 20] [--count 4000] [--top 25]
        [--server slimta|aiosmtpd] [--py-spy PATH]

Starts bench/dns_server.py (for the PTR lookups) and the edge server (slimta-relay's
``SmtpEdge -> Queue(DictStorage) -> BlackholeRelay``, or aiosmtpd), attaches py-spy
(non-blocking, idle excluded) and runs ``smtp-source -s SESSIONS -m COUNT`` with the
2k message. Prints the same tables as bench/profile_worker.py.
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
from run import OURS_PY, SOURCE, free_port, proc_cpu, start_dns

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--server", choices=("slimta", "aiosmtpd"), default="slimta")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "/tmp/pyspy/bin/py-spy")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="slimta-prof-edge-")
    os.chmod(tmp, 0o755)
    source_file = os.path.join(tmp, "2k.eml")
    write_lf("2k", source_file)
    out = os.path.join(tmp, "profile.raw")
    dns, dns_port = start_dns(distinct=False)
    port = free_port()
    server = subprocess.Popen([OURS_PY, "worker_edge.py", args.server, "--port", str(port),
                               "--dns-port", str(dns_port)], stdout=subprocess.PIPE, text=True,
                              cwd=HERE)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "READY":
            sys.exit("server did not start")
        prof = subprocess.Popen([args.py_spy, "record", "--nonblocking", "-r", str(args.rate),
                                 "-f", "raw", "--full-filenames", "-o", out, "--pid",
                                 str(server.pid)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        cpu0 = proc_cpu(server.pid)
        t0 = time.perf_counter()
        subprocess.run([SOURCE, "-s", str(args.sessions), "-m", str(args.count), "-F",
                        source_file, "-M", "bench.example.com", "-f", "sender@example.com",
                        "-t", "rcpt0@example.com", f"127.0.0.1:{port}"], check=True)
        elapsed = time.perf_counter() - t0
        cpu = proc_cpu(server.pid) - cpu0
        server.terminate()
        server.communicate(timeout=60)
        prof.wait(timeout=60)
    finally:
        for proc in (server, dns):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(f"# {args.server}, smtp-source -s {args.sessions} -m {args.count}: "
          f"{args.count / elapsed:.0f} msg/s, server CPU {cpu * 1e6 / args.count:.0f} us/msg "
          "(under py-spy)")
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
