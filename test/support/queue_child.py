"""A whole queue in a child process, for the crash tests to SIGKILL.

Runs ``Queue(store, StaticSmtpRelay(...))`` on a DiskStorage or a RedisStorage,
optionally enqueues messages first (each with a unique ``X-Test-Id`` header),
and exits 0 once the store is empty and no attempt is in flight. Every message
whose :meth:`~slimta.queue.Queue.enqueue` returned is logged to ``--log`` as one
JSON line (one ``os.write`` on an ``O_APPEND`` descriptor) before the next one is
enqueued, so after a kill the test knows exactly what the queue had accepted.

Usage::

    python queue_child.py --store disk:DIR | redis:HOST:PORT:PREFIX
        --relay-port PORT --log PATH [--enqueue N] [--rcpts a@x,b@y]
        [--id-prefix P] [--backoff SECONDS]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import gevent

from slimta.envelope import Envelope
from slimta.queue import Queue, QueueStorage
from slimta.relay.smtp.static import StaticSmtpRelay

# Run as a script, this file sees only its own folder; test/ makes support.* importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support.envelopes import make_envelope  # noqa: E402


def make_store(spec: str) -> QueueStorage:
    kind, _, rest = spec.partition(":")
    if kind == "disk":
        from slimta.diskstorage import DiskStorage

        return DiskStorage(os.path.join(rest, "env"), os.path.join(rest, "meta"))
    if kind == "redis":
        from slimta.redisstorage import RedisStorage

        host, port, prefix = rest.split(":", 2)
        return RedisStorage(host, int(port), prefix=prefix, socket_timeout=10.0)
    raise SystemExit(f"unknown store {spec!r}")


def crash_envelope(test_id: str, rcpts: list[str]) -> Envelope:
    """The shared envelope, with headers naming ``test_id`` (the receiver logs it)."""
    headers = (
        b"From: sender@src.test\r\n"
        b"To: " + b", ".join(r.encode() for r in rcpts) + b"\r\n"
        b"Subject: crash test " + test_id.encode() + b"\r\n"
        b"X-Test-Id: " + test_id.encode() + b"\r\n"
    )
    return make_envelope(
        sender="sender@src.test",
        rcpts=rcpts,
        headers=headers,
        body=b"line of body text\r\n" * 20,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--relay-port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--enqueue", type=int, default=0)
    parser.add_argument("--rcpts", default="rcpt@dst.test")
    parser.add_argument("--id-prefix", default="m")
    parser.add_argument("--backoff", type=float, default=0.2)
    args = parser.parse_args(argv)

    log_fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def log(**record: Any) -> None:
        record["pid"] = os.getpid()
        record["t"] = time.time()
        os.write(log_fd, json.dumps(record).encode() + b"\n")

    store = make_store(args.store)
    relay = StaticSmtpRelay(
        "127.0.0.1", args.relay_port, ehlo_as="queue-child.test", command_timeout=20.0
    )
    queue = Queue(store, relay, backoff=lambda envelope, attempts: args.backoff)
    queue.start()
    log(ev="started")
    rcpts = args.rcpts.split(",")
    for n in range(args.enqueue):
        test_id = f"{args.id_prefix}-{n}"
        [(_, result)] = queue.enqueue(crash_envelope(test_id, rcpts))
        if not isinstance(result, str):
            log(ev="refused", id=test_id, error=repr(result))
            return 3
        log(ev="enqueued", id=test_id, qid=result)
    log(ev="all-enqueued")
    while True:
        # The child's own loop, not a test synchronisation: it polls its store.
        if store.get_info()["size"] == 0 and not queue.active_ids:
            break
        gevent.sleep(0.05)
    log(ev="done")
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
