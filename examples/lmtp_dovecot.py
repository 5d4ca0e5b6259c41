"""Deliver to Dovecot over LMTP on its unix socket, with per-recipient results.

LMTP answers once per recipient after the data, so one recipient can be delivered
while another bounces or is deferred::

    python examples/lmtp_dovecot.py --socket /var/run/dovecot/lmtp \\
        --from me@example.com --to alice@example.com --to bob@example.com
"""

from __future__ import annotations

import argparse
import sys

from slimta.envelope import Envelope
from slimta.relay import PermanentRelayError, RelayError
from slimta.relay.smtp.static import StaticLmtpRelay


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="/var/run/dovecot/lmtp", help="LMTP unix socket")
    parser.add_argument("--from", dest="sender", required=True)
    parser.add_argument("--to", action="append", required=True)
    args = parser.parse_args()

    # An absolute path as the host means a unix socket; the port is then unused.
    relay = StaticLmtpRelay(args.socket, pool_size=1, ehlo_as="lmtp-example.localhost")
    envelope = Envelope(args.sender, args.to)
    envelope.parse(
        f"From: {args.sender}\r\nTo: {', '.join(args.to)}\r\nSubject: LMTP test\r\n"
        "\r\nDelivered over LMTP, one reply per recipient.\r\n".encode()
    )
    try:
        result = relay.attempt(envelope, 0)
    except RelayError as exc:  # the whole message failed (e.g. cannot connect)
        result = dict.fromkeys(args.to, exc)
    finally:
        relay.kill()

    failed = 0
    for rcpt in args.to:
        outcome = result[rcpt]
        if isinstance(outcome, RelayError):
            failed += 1
            kind = "bounced" if isinstance(outcome, PermanentRelayError) else "deferred"
            print(f"{rcpt}: {kind}: {outcome.reply}")
        else:
            print(f"{rcpt}: delivered: {outcome}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
