"""Benchmark worker for aiosmtplib (asyncio; one SMTP client per connection).

    python bench/worker_aiosmtplib.py SCENARIO --port P --count N [--profile 2k]
        [--big-size BYTES]

The messages are the raw bytes of bench/messages.py, handed to ``sendmail()`` as they
are; ``reuse20``/``noreuse20`` run 20 concurrent clients (tasks), each sending its
share in turn, ``reuse1`` one client.
"""

from __future__ import annotations

import argparse
import asyncio
import gc

import aiosmtplib
from _common import Clock, emit, peak_rss_bytes, reset_peak_rss, rss_bytes
from messages import PROFILES, big_message, messages


async def connected(port: int) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, local_hostname="bench.example.com",
                             start_tls=False, use_tls=False, timeout=60)
    await client.connect()
    return client


async def reuse(port: int, msgs: list, connections: int) -> tuple[Clock, int]:
    clients = [await connected(port) for _ in range(connections)]
    failures = 0

    async def lane(client: aiosmtplib.SMTP, share: list) -> None:
        nonlocal failures
        for sender, rcpts, data in share:
            try:
                await client.sendmail(sender, rcpts, data)
            except Exception:
                failures += 1

    gc.collect()
    with Clock() as clock:
        await asyncio.gather(*(lane(c, msgs[i::connections]) for i, c in enumerate(clients)))
    for client in clients:
        await client.quit()
    return clock, failures


async def noreuse(port: int, msgs: list, connections: int) -> tuple[Clock, int]:
    failures = 0

    async def lane(share: list) -> None:
        nonlocal failures
        for sender, rcpts, data in share:
            try:
                await aiosmtplib.send(data, sender=sender, recipients=rcpts, hostname="127.0.0.1",
                                      port=port, local_hostname="bench.example.com",
                                      start_tls=False, use_tls=False)
            except Exception:
                failures += 1

    gc.collect()
    with Clock() as clock:
        await asyncio.gather(*(lane(msgs[i::connections]) for i in range(connections)))
    return clock, failures


async def big(port: int, profile: str, size: int) -> None:
    raw = big_message(profile, size)
    client = await connected(port)
    gc.collect()
    base = rss_bytes()
    reset_peak_rss()
    with Clock() as clock:
        await client.sendmail("sender@example.com", ["rcpt0@example.com"], raw)
    growth = max(0, peak_rss_bytes() - base)
    await client.quit()
    emit(messages=1, bytes=len(raw), elapsed=clock.elapsed, cpu=clock.cpu, peak_growth=growth,
         failures=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--profile", choices=PROFILES, default="2k")
    parser.add_argument("--big-size", type=int, default=20 * 2**20)
    args = parser.parse_args()
    if args.scenario == "big":
        asyncio.run(big(args.port, args.profile, args.big_size))
        return
    msgs = messages(args.profile, args.count)
    if args.scenario == "reuse1":
        clock, failures = asyncio.run(reuse(args.port, msgs, 1))
    elif args.scenario == "reuse20":
        clock, failures = asyncio.run(reuse(args.port, msgs, 20))
    elif args.scenario == "noreuse20":
        clock, failures = asyncio.run(noreuse(args.port, msgs, 20))
    else:
        raise SystemExit(f"unknown scenario {args.scenario}")
    emit(messages=args.count, elapsed=clock.elapsed, cpu=clock.cpu, failures=failures)


if __name__ == "__main__":
    main()
