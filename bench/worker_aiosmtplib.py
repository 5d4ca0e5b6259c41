"""Benchmark worker for aiosmtplib (asyncio; one SMTP client per connection).

    python bench/worker_aiosmtplib.py SCENARIO --port P --count N [--size BYTES]
"""

from __future__ import annotations

import argparse
import asyncio
import gc

import aiosmtplib
from _common import Clock, body_of, emit, peak_rss_bytes, rss_bytes


def messages(count: int, size: int) -> list[tuple[str, list[str], bytes]]:
    body = body_of(size)
    return [
        (
            "sender@example.com",
            [f"rcpt{i}@example.com"],
            b"From: sender@example.com\r\nSubject: bench %d\r\n\r\n" % i + body,
        )
        for i in range(count)
    ]


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


async def big(port: int, size: int) -> None:
    (msg,) = messages(1, size)
    client = await connected(port)
    gc.collect()
    base = rss_bytes()
    with Clock() as clock:
        await client.sendmail(*msg)
    growth = max(0, peak_rss_bytes() - base)
    await client.quit()
    emit(messages=1, bytes=size, elapsed=clock.elapsed, cpu=clock.cpu, peak_growth=growth,
         failures=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    if args.scenario == "big":
        asyncio.run(big(args.port, args.size))
        return
    msgs = messages(args.count, args.size)
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
