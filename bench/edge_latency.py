"""Where one ``-s 1`` session's wall time goes: the latency of each step, per contender.

    python bench/edge_latency.py [--sessions 2000] [--rounds 3] [--contenders slimta,floor,aiosmtpd]

At one session at a time the edge's rate is set by the critical path of seven strict
round trips, not by CPU alone: work a server does after it has sent a reply overlaps the
client's turn. This starts each contender (``worker_edge.py``, server pinned to CPU 1)
and drives it from a blocking-socket client pinned to CPU 0 that does what
``smtp-source`` does (connect, HELO, MAIL, RCPT, DATA, the 2k message, QUIT), timing
each step. All servers run at once and the client takes them in turn, a block of
sessions each, so that the drift of a shared machine falls on every contender alike. It
prints the median microseconds of each step, per contender; the client is the same for
every contender, so the differences are the servers'. ``--base DIR`` adds slimta-relay
from another tree (e.g. a ``git archive`` of an older commit);
``EDGE_LATENCY_WORKER_<contender>=SCRIPT`` runs another worker script for a contender
(an instrumented copy of ``worker_edge.py``, say).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

from messages import write_lf
from run import OURS_PY, free_port, start_dns

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = ("connect+banner", "HELO", "MAIL", "RCPT", "DATA", "message", "QUIT", "close")


def session(port: int, message: bytes, out: list[list[int]]) -> None:
    clock = time.perf_counter_ns
    buf = b""
    times = []

    def reply(sock: socket.socket) -> None:
        nonlocal buf
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        _, _, buf = buf.partition(b"\r\n")

    t0 = clock()
    sock = socket.create_connection(("127.0.0.1", port))
    reply(sock)
    times.append(clock() - t0)
    for command in (b"HELO bench.example.com\r\n", b"MAIL FROM:<sender@example.com>\r\n",
                    b"RCPT TO:<rcpt0@example.com>\r\n", b"DATA\r\n", message + b".\r\n",
                    b"QUIT\r\n"):
        t0 = clock()
        sock.sendall(command)
        reply(sock)
        times.append(clock() - t0)
    t0 = clock()
    while sock.recv(65536):
        pass
    sock.close()
    times.append(clock() - t0)
    out.append(times)


def drive(port: int, message: bytes, sessions: int) -> list[list[int]]:
    out: list[list[int]] = []
    for _ in range(5):
        session(port, message, [])
    t0 = time.perf_counter()
    for _ in range(sessions):
        session(port, message, out)
    out.append([int((time.perf_counter() - t0) * 1e9 / sessions)])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--contenders", default="slimta,floor,aiosmtpd")
    parser.add_argument("--base", metavar="DIR", help="also run slimta from DIR")
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})
    path = "/tmp/edge-latency-2k.eml"
    write_lf("2k", path)
    with open(path, "rb") as f:
        message = f.read().replace(b"\n", b"\r\n")
    dns, dns_port = start_dns(distinct=False)
    names = args.contenders.split(",") + (["slimta-base"] if args.base else [])
    results: dict[str, list[list[int]]] = {name: [] for name in names}
    per_msg: dict[str, list[float]] = {name: [] for name in names}
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        # All servers run at once (an idle one costs nothing), and the client
        # takes them in turn, a block of sessions each, so that the machine's
        # drift (large on a shared VM) falls on every contender alike.
        for name in names:
            port = free_port()
            kind = "slimta" if name.startswith("slimta") else name
            worker = os.environ.get("EDGE_LATENCY_WORKER_" + kind, "worker_edge.py")
            cmd = ["taskset", "-c", "1", OURS_PY, worker, kind, "--port", str(port)]
            if kind == "slimta":
                cmd += ["--dns-port", str(dns_port)]
            env = dict(os.environ)
            if name == "slimta-base":
                env["PYTHONPATH"] = os.path.abspath(args.base)
            server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=HERE, env=env)
            servers[name] = (server, port)
            assert server.stdout is not None
            if server.stdout.readline().strip() != "READY":
                sys.exit(f"{name} did not start")
        block = max(1, args.sessions // 10)
        for _ in range(args.rounds):
            for _ in range(args.sessions // block):
                for name in names:
                    rows = drive(servers[name][1], message, block)
                    per_msg[name].append(rows.pop()[0] / 1000)
                    results[name].extend(rows)
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.communicate(timeout=30)
        dns.kill()
        dns.wait()
    print("| step (median µs) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for i, step in enumerate(STEPS):
        cells = [f"{statistics.median(r[i] for r in results[n]) / 1000:.1f}" for n in names]
        print(f"| {step} | " + " | ".join(cells) + " |")
    cells = []
    for n in names:
        total = sum(statistics.median(r[i] for r in results[n]) for i in range(len(STEPS)))
        cells.append(f"{total / 1000:.0f}")
    print("| sum of medians | " + " | ".join(cells) + " |")
    cells = [f"{statistics.median(per_msg[n]):.0f}" for n in names]
    print("| wall per session (median of blocks) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
