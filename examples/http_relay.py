"""Hand a message to an HTTP endpoint (for example a slimta HTTP edge).

The message is the request body; the EHLO name, sender and recipients travel in
``X-Ehlo``, ``X-Envelope-Sender`` and ``X-Envelope-Recipient`` headers (the
addresses base64-encoded). An ``X-Smtp-Reply`` response header becomes the reply::

    python examples/http_relay.py --url http://127.0.0.1:8025/messages \\
        --from me@example.com --to you@example.net
"""

from __future__ import annotations

import argparse
import sys

from slimta.envelope import Envelope
from slimta.relay import RelayError
from slimta.relay.http import HttpRelay


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--from", dest="sender", required=True)
    parser.add_argument("--to", action="append", required=True)
    parser.add_argument("--ehlo", default="http-example.localhost")
    args = parser.parse_args()

    relay = HttpRelay(args.url, ehlo_as=args.ehlo, timeout=10.0)
    envelope = Envelope(args.sender, args.to)
    envelope.parse(
        f"From: {args.sender}\r\nTo: {', '.join(args.to)}\r\nSubject: HTTP test\r\n"
        "\r\nThis message travelled as an HTTP request body.\r\n".encode()
    )
    try:
        reply = relay.attempt(envelope, 0)
    except RelayError as exc:
        print(f"failed: {exc.reply}")
        return 1
    finally:
        relay.kill()
    print(f"delivered: {reply if reply is not None else '(no X-Smtp-Reply header)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
