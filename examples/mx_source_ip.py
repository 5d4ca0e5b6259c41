"""Deliver by MX lookup, choosing the source address of every connection.

``MxSmtpRelay`` opens its connections through ``socket_creator``: here it binds
each one to an address picked from ``--source-ip`` (give several to spread the
load over a pool of addresses)::

    python examples/mx_source_ip.py --source-ip 192.0.2.10 --source-ip 192.0.2.11 \\
        --from me@example.com --to you@example.net

``--force-mx DOMAIN=HOST:PORT`` skips DNS for one domain, which is handy for
trying it against a local test server.
"""

from __future__ import annotations

import argparse
import random
import sys

from gevent import socket

from slimta.envelope import Envelope
from slimta.relay import RelayError
from slimta.relay.smtp.mx import MxSmtpRelay


def make_socket_creator(source_ips: list[str]):
    def socket_creator(address: tuple[str, int]) -> socket.socket:
        source = random.choice(source_ips)
        return socket.create_connection(address, source_address=(source, 0))

    return socket_creator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-ip", action="append", required=True)
    parser.add_argument("--from", dest="sender", required=True)
    parser.add_argument("--to", action="append", required=True)
    parser.add_argument("--force-mx", action="append", default=[], metavar="DOMAIN=HOST:PORT")
    args = parser.parse_args()

    relay = MxSmtpRelay(socket_creator=make_socket_creator(args.source_ip))
    for rule in args.force_mx:
        domain, _, target = rule.partition("=")
        host, _, port = target.rpartition(":")
        relay.force_mx(domain, host, int(port))

    envelope = Envelope(args.sender, args.to)
    envelope.parse(
        f"From: {args.sender}\r\nTo: {', '.join(args.to)}\r\nSubject: MX test\r\n"
        "\r\nDelivered straight to the recipient domain's MX host.\r\n".encode()
    )
    try:
        result = relay.attempt(envelope, 0)
    except RelayError as exc:
        result = dict.fromkeys(args.to, exc)
    finally:
        relay.kill()

    failed = 0
    for rcpt in args.to:
        outcome = result[rcpt]
        if isinstance(outcome, RelayError):
            failed += 1
            print(f"{rcpt}: failed: {outcome.reply}")
        else:
            print(f"{rcpt}: {outcome}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
