"""Send mail through a smart host: a pool of connections, STARTTLS and AUTH.

The password is read from the ``SMARTHOST_PASSWORD`` environment variable, never
from the command line::

    SMARTHOST_PASSWORD=secret python examples/smarthost_auth.py \\
        --host smtp.example.com --port 587 --user me@example.com \\
        --from me@example.com --to you@example.net --count 3

Every message goes over STARTTLS (``tls_required=True``), and up to
``--pool-size`` connections are opened and reused for the next messages
(``idle_timeout``). The exit status is 0 when every message was delivered.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys

import gevent

from slimta.envelope import Envelope
from slimta.relay import RelayError
from slimta.relay.smtp.static import StaticSmtpRelay


def build_envelope(sender: str, recipient: str, number: int) -> Envelope:
    envelope = Envelope(sender, [recipient])
    envelope.parse(
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: smart host test {number}\r\n"
        f"\r\nMessage number {number}, relayed through a pooled smart host.\r\n".encode()
    )
    return envelope


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=587)
    parser.add_argument("--user", required=True)
    parser.add_argument("--from", dest="sender", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--count", type=int, default=3, help="messages to send at once")
    parser.add_argument("--pool-size", type=int, default=2, help="most connections at once")
    parser.add_argument("--cafile", help="trust this CA instead of the system's")
    args = parser.parse_args()

    password = os.environ.get("SMARTHOST_PASSWORD")
    if password is None:
        parser.error("set SMARTHOST_PASSWORD")
    relay = StaticSmtpRelay(
        args.host,
        args.port,
        pool_size=args.pool_size,
        context=ssl.create_default_context(cafile=args.cafile),
        tls_required=True,
        credentials=(args.user, password),
        idle_timeout=5.0,
        connect_timeout=10.0,
        command_timeout=10.0,
    )
    envelopes = [build_envelope(args.sender, args.to, n) for n in range(1, args.count + 1)]
    # Each attempt blocks only its own greenlet: the pool shares its connections.
    jobs = [gevent.spawn(relay.attempt, envelope, 0) for envelope in envelopes]
    gevent.joinall(jobs)
    relay.kill()

    failed = 0
    for number, job in enumerate(jobs, start=1):
        if isinstance(job.exception, RelayError):
            failed += 1
            print(f"message {number}: failed: {job.exception.reply}")
        elif job.exception is not None:
            raise job.exception
        else:
            print(f"message {number}: {job.value[args.to]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
