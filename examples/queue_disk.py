"""A small MTA core: a durable queue on disk that relays through a smart host.

Each message file given is parsed, stamped with Date, Message-ID and Received
fields (new lines at the top; every other byte is kept), split per recipient
domain, written to the spool, and delivered::

    python examples/queue_disk.py --spool /var/spool/example --host 127.0.0.1 --port 25 \\
        --from me@example.com --to you@example.net message.eml

Messages that cannot be delivered yet stay in the spool: run the script again
(with no message files) and the queue finds them and carries on. The exit status
is 0 when the spool is empty at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import gevent

from slimta.diskstorage import DiskStorage
from slimta.envelope import Envelope
from slimta.policy.headers import AddDateHeader, AddMessageIdHeader, AddReceivedHeader
from slimta.policy.split import RecipientDomainSplit
from slimta.queue import Queue, QueueError
from slimta.relay.smtp.static import StaticSmtpRelay


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spool", required=True, help="spool directory")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=25)
    parser.add_argument("--from", dest="sender", default="")
    parser.add_argument("--to", action="append", default=[])
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to let deliveries run")
    parser.add_argument("messages", nargs="*", help="message files (RFC 5322)")
    args = parser.parse_args()

    store = DiskStorage(os.path.join(args.spool, "env"), os.path.join(args.spool, "meta"))
    relay = StaticSmtpRelay(args.host, args.port, pool_size=2, ehlo_as="queue-example.localhost")
    queue = Queue(store, relay, backoff=lambda envelope, attempts: 60.0 if attempts < 3 else None)
    for policy in (AddDateHeader(), AddMessageIdHeader(), AddReceivedHeader(),
                   RecipientDomainSplit()):  # fmt: skip
        queue.add_policy(policy)
    queue.start()

    for path in args.messages:
        envelope = Envelope(args.sender, list(args.to))
        with open(path, "rb") as f:
            envelope.parse(f.read())
        envelope.receiver = "queue-example.localhost"
        for env, queue_id in queue.enqueue(envelope):
            if isinstance(queue_id, QueueError):
                print(f"{path} {env.recipients}: not queued: {queue_id}")
            else:
                print(f"{path} {env.recipients}: queued as {queue_id}")

    # Give the deliveries (and what an earlier run left in the spool) up to
    # --wait seconds; then stop, letting attempts in flight finish. Whatever is
    # still waiting for a retry stays spooled for the next run.
    deadline = time.monotonic() + args.wait
    while store.get_info()["size"] and time.monotonic() < deadline:
        gevent.sleep(0.05)
    queue.stop(timeout=args.wait)
    relay.kill()
    left = store.get_info()["size"]
    print(f"left in the spool: {left}")
    return 0 if left == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
