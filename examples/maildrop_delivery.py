"""Deliver locally with courier maildrop, as an MDA would.

maildrop reads the message on standard input; ``-f`` carries the envelope sender
and the filter file decides where the message goes. Exit status 75 from maildrop
is a temporary failure, anything else non-zero a permanent one::

    python examples/maildrop_delivery.py --filter ~/.mailfilter \\
        --from me@example.com --to me@localhost
"""

from __future__ import annotations

import argparse
import sys

from slimta.envelope import Envelope
from slimta.relay import PermanentRelayError, RelayError
from slimta.relay.pipe import MaildropRelay


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maildrop", default="maildrop", help="the maildrop executable")
    parser.add_argument("--filter", help="the filter file (default: maildrop's own)")
    parser.add_argument("--from", dest="sender", required=True)
    parser.add_argument("--to", required=True)
    args = parser.parse_args()

    relay = MaildropRelay(
        path=args.maildrop,
        timeout=30.0,
        extra_args=[args.filter] if args.filter else None,
    )
    envelope = Envelope(args.sender, [args.to])
    envelope.parse(
        f"From: {args.sender}\r\nTo: {args.to}\r\nSubject: maildrop test\r\n"
        "\r\nDelivered by maildrop.\r\n".encode()
    )
    try:
        relay.attempt(envelope, 0)  # one maildrop run per message; None means delivered
    except RelayError as exc:
        kind = "bounced" if isinstance(exc, PermanentRelayError) else "deferred"
        print(f"{kind}: {exc.reply}")
        return 1
    print("delivered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
