"""Instructions per SMTP session, counted by callgrind: a repeatable measure of edge CPU.

    python bench/edge_instructions.py [--contenders slimta,noqueue,floor] [--base DIR]

On a shared 2-core machine two runs of bench/run.py's edge scenarios can differ by 10% or
more, so a change worth 3% cannot be seen there. This counts the instructions one
session costs instead, which repeats to within about 0.5%: each contender serves
sessions in-process over gevent socket pairs, driven by a client greenlet that sends what
``smtp-source`` sends (HELO, MAIL, RCPT, DATA with the ``2k`` message, QUIT, one
connection per message), under ``valgrind --tool=callgrind``. Two runs, of 100 and 300
measured sessions after the same warm-up, are subtracted, so start-up costs drop out.
The client's own instructions are in every count, the same for each contender.

Contenders:

* ``slimta``: ``SmtpEdge.handle`` with ``Queue(DictStorage)`` and ``BlackholeRelay``
  (``--base DIR``: the same from another tree, e.g. a ``git archive`` of an older commit);
* ``noqueue``: the same edge handing each envelope to a no-op instead of the queue;
* ``floor``: the bare gevent handler of ``worker_edge.py floor`` (fixed replies, no
  parsing), what the exchange costs in gevent alone.

Kernel work (the system calls) is not counted: see ``profile_edge.py --syscalls``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

from messages import write_lf

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")


def client(sock: object, message: bytes) -> None:
    """What smtp-source does on one connection: wait for each reply, no pipelining."""
    buf = b""

    def reply() -> bytes:
        nonlocal buf
        while b"\r\n" not in buf:
            buf += sock.recv(65536)  # type: ignore[attr-defined]
        line, _, buf = buf.partition(b"\r\n")
        return line

    reply()
    for command in (b"HELO bench.example.com\r\n", b"MAIL FROM:<sender@example.com>\r\n",
                    b"RCPT TO:<rcpt0@example.com>\r\n", b"DATA\r\n"):
        sock.sendall(command)  # type: ignore[attr-defined]
        reply()
    sock.sendall(message + b".\r\n")  # type: ignore[attr-defined]
    reply()
    sock.sendall(b"QUIT\r\n")  # type: ignore[attr-defined]
    reply()
    sock.close()  # type: ignore[attr-defined]


def serve(contender: str, message_file: str, sessions: int) -> None:
    """Run in the measured process: warm up, then serve ``sessions`` sessions."""
    import gevent
    import gevent.socket

    with open(message_file, "rb") as f:
        message = f.read().replace(b"\n", b"\r\n")
    if contender == "floor":
        from worker_edge import floor_handler

        handle = floor_handler(lambda: None)
    else:
        from slimta.edge.smtp import SmtpEdge
        from slimta.queue import Queue
        from slimta.queue.dict import DictStorage
        from slimta.relay.blackhole import BlackholeRelay

        queue = Queue(DictStorage(), BlackholeRelay())
        queue.start()
        edge = SmtpEdge(None, queue, hostname="edge.example.com")
        if contender == "noqueue":
            edge.handoff = lambda envelope: [(envelope, "id")]  # type: ignore[method-assign]
        handle = edge.handle

    def one() -> None:
        ours, theirs = gevent.socket.socketpair()
        peer = gevent.spawn(client, theirs, message)
        handle(ours, None)  # no address: no PTR lookup
        peer.join()

    for _ in range(200 + sessions):
        one()


def count(contender: str, sessions: int, message_file: str, tree: str | None) -> int:
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = tree
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", PYTHON,
         os.path.abspath(__file__), "--serve", contender, "--sessions", str(sessions),
         "--message", message_file],
        capture_output=True, text=True, env=env, cwd=HERE, check=True)
    match = re.search(r"Collected : (\d+)", out.stderr)
    if match is None:
        raise RuntimeError(out.stderr[-2000:])
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--contenders", default="slimta,noqueue,floor")
    parser.add_argument("--base", metavar="DIR", help="also count slimta from DIR")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--sessions", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--message", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.message, args.sessions)
        return
    tmp = tempfile.mkdtemp(prefix="slimta-ir-")
    message_file = os.path.join(tmp, "2k.eml")
    write_lf("2k", message_file)
    runs: list[tuple[str, str, str | None]] = [
        (name, name, None) for name in args.contenders.split(",")]
    if args.base:
        runs.append(("slimta-base", "slimta", os.path.abspath(args.base)))
    print("| contender | instructions per session |")
    print("|---|---|")
    for label, contender, tree in runs:
        few = count(contender, 100, message_file, tree)
        many = count(contender, 300, message_file, tree)
        print(f"| {label} | {(many - few) / 200 / 1000:,.0f} K |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
