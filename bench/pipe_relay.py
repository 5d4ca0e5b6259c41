"""Pipe relay throughput: deliveries per second to real maildrop into a Maildir.

Run by hand: ``.venv/bin/python bench/pipe_relay.py [--messages N] [--concurrency C]``.
Prints deliveries per second, the median of three rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import gevent
import gevent.pool
from messages import PROFILES, message

from slimta.envelope import Envelope
from slimta.relay.pipe import MaildropRelay

ROUNDS = 3


def make_box(root: str) -> str:
    maildir = os.path.join(root, "Maildir")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub))
    filter_path = os.path.join(root, "deliver.filter")
    fd = os.open(filter_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f'to "{maildir}/"\n')
    return filter_path


def one_round(program: str, messages: int, concurrency: int, profile: str) -> float:
    root = tempfile.mkdtemp(prefix="slimta-bench-maildrop-")
    try:
        relay = MaildropRelay(program, timeout=30, extra_args=[make_box(root)])
        env = Envelope("sender@example.com", ["rcpt0@example.com"])
        env.parse(message(profile, 0))
        pool = gevent.pool.Pool(concurrency)
        start = time.perf_counter()
        jobs = [pool.spawn(relay.attempt, env, 0) for _ in range(messages)]
        gevent.joinall(jobs, raise_error=True)
        elapsed = time.perf_counter() - start
        delivered = len(os.listdir(os.path.join(root, "Maildir", "new")))
        if delivered != messages:
            raise SystemExit(f"only {delivered} of {messages} messages were delivered")
        return messages / elapsed
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--profile", choices=PROFILES, default="2k",
                        help="message profile (bench/messages.py)")
    parser.add_argument("--maildrop", default=shutil.which("maildrop") or "/usr/bin/maildrop")
    args = parser.parse_args()
    rates = [
        one_round(args.maildrop, args.messages, args.concurrency, args.profile)
        for _ in range(ROUNDS)
    ]
    print(
        f"maildrop: median {statistics.median(rates):7.0f} deliveries/s "
        f"(rounds: {', '.join(f'{r:.0f}' for r in rates)}; {args.messages} messages, "
        f"concurrency {args.concurrency}, profile {args.profile})"
    )


if __name__ == "__main__":
    main()
