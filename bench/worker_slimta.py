"""Benchmark worker for the python-slimta relay API.

The same script drives slimta-relay and python-slimta 5.0.5: the API is the same,
only the interpreter (and so the installed package) differs.

    python bench/worker_slimta.py SCENARIO --port P --count N [--profile 2k]
        [--consumers 100] [--big-size BYTES] [--cprofile FILE]
    python bench/worker_slimta.py reuse1|reuse20 --memory-peer --count N

``--memory-peer`` replaces the sink with an in-process SMTP peer that answers
at once, without sockets (the ``socket_creator`` returns it): what is left is
the relay's own Python work per message, with no kernel, hub wait or sink in
the figure, so it moves only when the relay's code does. It also reports the
``send()``/``recv()`` calls per message.

Load shape: like slimta's queue, ``--consumers`` greenlets (100) each take the next
envelope from the shared list and call ``relay.attempt(env, 0)``, until the list is
empty. Every envelope is built with ``Envelope.parse()`` of the profile's raw bytes
before the clock starts.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Iterator
from typing import Any

import gevent
from _common import Clock, announce, emit, peak_rss_bytes, reset_peak_rss, rss_bytes
from messages import PROFILES, big_message, messages


def envelopes(profile: str, count: int) -> list:
    from slimta.envelope import Envelope

    out = []
    for sender, rcpts, raw in messages(profile, count):
        env = Envelope(sender, rcpts)
        env.parse(raw)
        out.append(env)
    return out


class Profiler:
    """cProfile around the measured section when ``--cprofile FILE`` is given."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.prof: Any = None

    def __enter__(self) -> Profiler:
        if self.path:
            import cProfile

            self.prof = cProfile.Profile()
            self.prof.enable()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.prof is not None:
            self.prof.disable()
            self.prof.dump_stats(self.path)


#: What the in-memory peer advertises and answers: postfix smtp-sink's words.
MEMORY_PEER_EHLO = (b"250-smtp-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n"
                    b"250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 \r\n")
MEMORY_PEER_REPLIES = {
    b"EHLO": MEMORY_PEER_EHLO, b"MAIL": b"250 2.1.0 Ok\r\n", b"RCPT": b"250 2.1.5 Ok\r\n",
    b"DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n", b"RSET": b"250 2.0.0 Ok\r\n",
    b"QUIT": b"221 Bye\r\n",
}
MEMORY_PEER_UNKNOWN = b"502 5.5.2 Error: command not recognized\r\n"


class MemoryPeer:
    """A socket stand-in whose peer answers every command at once, like smtp-sink.

    ``recv`` returns the replies to everything sent so far (it never blocks: the
    relay only reads after writing). Counts the calls in class attributes.
    """

    sends = 0
    recvs = 0

    def __init__(self) -> None:
        self.out = bytearray(b"220 smtp-sink ESMTP\r\n")
        self.pending = b""
        self.in_data = False

    def send(self, data: Any) -> int:
        MemoryPeer.sends += 1
        buf = self.pending + bytes(data)
        pos = 0
        while True:
            if self.in_data:
                end = buf.find(b"\r\n.\r\n", max(pos - 2, 0))
                if end < 0:
                    break
                pos, self.in_data = end + 5, False
                self.out += b"250 2.0.0 Ok: queued\r\n"
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            verb = buf[pos : pos + 4].upper()
            self.out += MEMORY_PEER_REPLIES.get(verb, MEMORY_PEER_UNKNOWN)
            pos = end + 2
            if verb == b"DATA":
                self.in_data, pos = True, pos - 2  # the end marker may follow at once
        self.pending = buf[pos:]
        return len(data)

    def sendall(self, data: Any) -> None:
        self.send(data)

    def recv(self, size: int) -> bytes:
        MemoryPeer.recvs += 1
        data = bytes(self.out[:size])
        del self.out[:size]
        return data

    def fileno(self) -> int:
        return -1  # nothing to poll: the peer never speaks unasked

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 25)

    def close(self) -> None:
        pass


def run_static(args: argparse.Namespace, pool_size: int, reuse: bool) -> None:
    from slimta.relay.smtp.static import StaticSmtpRelay

    kwargs: dict[str, Any] = {"pool_size": pool_size, "ehlo_as": "bench.example.com"}
    if reuse:
        kwargs["idle_timeout"] = 30.0
    if args.memory_peer:
        kwargs["socket_creator"] = lambda address: MemoryPeer()
    relay = StaticSmtpRelay("127.0.0.1", args.port, **kwargs)
    envs = envelopes(args.profile, args.count)
    warm = envelopes(args.profile, pool_size)
    # Warm up: open the connections (when reused) before the clock starts.
    gevent.joinall([gevent.spawn(relay.attempt, env, 0) for env in warm], raise_error=True)
    failures = 0
    pending: Iterator = iter(envs)

    def consumer() -> None:
        nonlocal failures
        for env in pending:  # the iterator is shared: each envelope is taken once
            try:
                relay.attempt(env, 0)
            except Exception as exc:  # counted, reported
                failures += 1
                if failures < 3:
                    print("failure:", exc, file=sys.stderr)

    gc.collect()
    announce()
    sends, recvs = MemoryPeer.sends, MemoryPeer.recvs
    with Profiler(args.cprofile), Clock() as clock:
        gevent.joinall([gevent.spawn(consumer) for _ in range(args.consumers)])
    extra = {}
    if args.memory_peer:
        extra = {"sends_per_msg": (MemoryPeer.sends - sends) / args.count,
                 "recvs_per_msg": (MemoryPeer.recvs - recvs) / args.count}
    try:
        relay.kill()
    except RuntimeError:  # python-slimta's kill() mutates the set it iterates
        pass
    emit(messages=args.count, elapsed=clock.elapsed, cpu=clock.cpu, failures=failures, **extra)


def big_envelope(profile: str, size: int) -> tuple[Any, int]:
    """The big envelope and its size; the raw bytes are dropped (a queue hands the
    relay the parsed envelope, not the raw bytes too)."""
    from slimta.envelope import Envelope

    env = Envelope("sender@example.com", ["rcpt0@example.com"])
    raw = big_message(profile, size)
    env.parse(raw)
    return env, len(raw)


def run_big(args: argparse.Namespace) -> None:
    from slimta.relay.smtp.static import StaticSmtpRelay

    relay = StaticSmtpRelay("127.0.0.1", args.port, pool_size=1, ehlo_as="bench.example.com",
                            data_timeout=120.0)
    env, size = big_envelope(args.profile, args.big_size)
    gc.collect()
    announce()
    base = rss_bytes()
    reset_peak_rss()
    with Profiler(args.cprofile), Clock() as clock:
        relay.attempt(env, 0)
    growth = max(0, peak_rss_bytes() - base)
    relay.kill()
    emit(messages=1, bytes=size, elapsed=clock.elapsed, cpu=clock.cpu,
         peak_growth=growth, failures=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario")
    parser.add_argument("--port", type=int, default=25)
    parser.add_argument("--memory-peer", action="store_true",
                        help="reuse1/reuse20/noreuse20: an in-process peer instead of the sink")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--profile", choices=PROFILES, default="2k")
    parser.add_argument("--consumers", type=int, default=100)
    parser.add_argument("--big-size", type=int, default=20 * 2**20)
    parser.add_argument("--cprofile", metavar="FILE")
    args = parser.parse_args()
    if args.memory_peer and args.scenario == "big":
        raise SystemExit("--memory-peer: reuse1, reuse20 or noreuse20 only")
    if args.scenario == "reuse1":
        run_static(args, 1, True)
    elif args.scenario == "reuse20":
        run_static(args, 20, True)
    elif args.scenario == "noreuse20":
        run_static(args, 20, False)
    elif args.scenario == "big":
        run_big(args)
    else:
        raise SystemExit(f"unknown scenario {args.scenario}")


if __name__ == "__main__":
    main()
