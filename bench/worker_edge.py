"""Benchmark server for the edge scenarios: an SMTP server that ``smtp-source`` sends to.

    python bench/worker_edge.py slimta --port P [--dns-port D]
    python bench/worker_edge.py aiosmtpd --port P
    python bench/worker_edge.py floor --port P

``slimta``: SmtpEdge -> Queue(DictStorage) -> BlackholeRelay, with slimta-relay or
python-slimta 5.0.5, whichever the interpreter has (the API is the same). ``aiosmtpd``:
an aiosmtpd Controller whose handler keeps each message in a dict. ``floor``: a bare
gevent ``StreamServer`` that answers each command line with a fixed reply and counts the
messages, with no parsing, checks, envelope or queue: what the same exchange costs in
gevent alone (a reference, not a contender).

Both slimta edges look up the client's PTR record when it connects; ``--dns-port`` sends
those queries to bench/dns_server.py (which answers ``localhost`` at once, TTL 3600)
instead of the system's resolver, whose delays would otherwise be measured
(slimta-relay's edge waits up to 0.5 s after the banner for the answer, python-slimta's
does not wait). aiosmtpd does no lookup. smtp-source connects from one address, so
slimta-relay answers every session after the first from its PTR cache (for the TTL);
``--ptr-cache-size 0`` turns that cache off, to measure a lookup per session.

The server prints ``READY`` once it accepts connections and serves until SIGTERM; then
it prints one ``RESULT`` line with what it received (and, for the queue, what the relay
delivered). The driver (bench/run.py) times ``smtp-source`` and reads this process's
CPU time from /proc around it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

from _common import emit


def ready() -> None:
    sys.stdout.write("READY\n")
    sys.stdout.flush()


def use_dns_server(port: int) -> None:
    """Send the edge's PTR lookups to the bench DNS server on 127.0.0.1:``port``."""
    from slimta.util.dns import DNSResolver

    options = {"servers": ["127.0.0.1"], "udp_port": port, "tcp_port": port,
               "timeout": 2.0, "tries": 3}
    if hasattr(DNSResolver, "channel_options"):  # slimta-relay
        DNSResolver.channel_options = options
    else:  # python-slimta 5.0.5: a pycares channel of our own
        import pycares

        DNSResolver.channel = pycares.Channel(**options)


def run_slimta(port: int, dns_port: int | None, ptr_cache_size: int | None = None) -> None:
    import gevent
    import gevent.event

    from slimta.edge.smtp import SmtpEdge
    from slimta.queue import Queue
    from slimta.queue.dict import DictStorage
    from slimta.relay.blackhole import BlackholeRelay

    if dns_port:
        use_dns_server(dns_port)
    if ptr_cache_size is not None:
        import slimta.util.ptrlookup as ptrlookup

        if not hasattr(ptrlookup, "PTR_CACHE_SIZE"):
            sys.exit("--ptr-cache-size: this slimta has no PTR cache")
        ptrlookup.PTR_CACHE_SIZE = ptr_cache_size
    store = DictStorage()
    counts = {"received": 0, "delivered": 0}
    real_write = store.write
    real_remove = store.remove

    def write(envelope: Any, timestamp: float) -> str:
        counts["received"] += 1
        return real_write(envelope, timestamp)

    def remove(id: str) -> None:
        counts["delivered"] += 1
        real_remove(id)

    store.write = write
    store.remove = remove
    queue = Queue(store, BlackholeRelay())
    queue.start()
    edge = SmtpEdge(("127.0.0.1", port), queue, hostname="edge.example.com")
    edge.start()
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.sleep(0.1)
    ready()
    stop.wait()
    # let the last deliveries finish (BlackholeRelay answers at once)
    deadline = time.monotonic() + 5
    while counts["delivered"] < counts["received"] and time.monotonic() < deadline:
        gevent.sleep(0.01)
    edge.kill()
    queue.kill()
    emit(**counts)


def run_aiosmtpd(port: int) -> None:
    import uuid

    from aiosmtpd.controller import Controller

    class DictHandler:
        """Keeps each message in a dict, as a minimal aiosmtpd server does."""

        def __init__(self) -> None:
            self.messages: dict[str, tuple[str, list[str], bytes]] = {}

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            self.messages[uuid.uuid4().hex] = (
                envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
            return "250 2.0.0 OK"

    handler = DictHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=port,
                            server_hostname="edge.example.com")
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ready()
    while not stop.wait(0.2):
        pass
    controller.stop()
    n = len(handler.messages)
    emit(received=n, delivered=n)


def floor_handler(on_message: Any) -> Any:
    """The bare gevent handler: fixed replies, calls ``on_message()`` per message."""

    def handle(sock: Any, address: Any) -> None:
        sock.sendall(b"220 floor ESMTP\r\n")
        buf = b""
        in_data = False
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            while True:
                if in_data:
                    end = buf.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    buf = buf[end + 5:]
                    in_data = False
                    on_message()
                    sock.sendall(b"250 2.6.0 Ok\r\n")
                    continue
                end = buf.find(b"\r\n")
                if end < 0:
                    break
                verb = buf[:4].upper()
                buf = buf[end + 2:]
                if verb == b"DATA":
                    in_data = True
                    sock.sendall(b"354 Go ahead\r\n")
                elif verb == b"QUIT":
                    sock.sendall(b"221 2.0.0 Bye\r\n")
                    sock.close()
                    return
                else:
                    sock.sendall(b"250 2.0.0 Ok\r\n")
        sock.close()

    return handle


def run_floor(port: int) -> None:
    import gevent.event
    from gevent.server import StreamServer

    counts = {"received": 0}

    def count() -> None:
        counts["received"] += 1

    server = StreamServer(("127.0.0.1", port), floor_handler(count))
    server.start()
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    ready()
    stop.wait()
    server.stop()
    emit(received=counts["received"], delivered=counts["received"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("server", choices=("slimta", "aiosmtpd", "floor"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dns-port", type=int,
                        help="answer the edge's PTR lookups from bench/dns_server.py on this"
                        " port (default: the system's resolver)")
    parser.add_argument("--ptr-cache-size", type=int,
                        help="slimta-relay: the most PTR answers kept (0: a lookup per session)")
    args = parser.parse_args()
    if args.server == "slimta":
        run_slimta(args.port, args.dns_port, args.ptr_cache_size)
    elif args.server == "floor":
        run_floor(args.port)
    else:
        run_aiosmtpd(args.port)


if __name__ == "__main__":
    main()
