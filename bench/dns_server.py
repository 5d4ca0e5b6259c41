"""A wildcard DNS server for the MX benchmarks (run by bench/run.py as a subprocess).

    python bench/dns_server.py PORT [--distinct-hosts]

Every name under ``.bench`` has ``MX 10 mx.bench`` (or, with ``--distinct-hosts``,
``MX 10 mx.<name>``) and every ``mx.*`` name has ``A 127.0.0.1``; TTL 3600. Every
``in-addr.arpa`` name has ``PTR localhost`` (the edge scenarios' reverse lookups).
UDP only, one thread: dnslib builds the packets.
"""

from __future__ import annotations

import socket
import sys

from dnslib import MX, PTR, QTYPE, RCODE, RR, A, DNSRecord


def main() -> None:
    port = int(sys.argv[1])
    distinct = "--distinct-hosts" in sys.argv
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            query = DNSRecord.parse(data)
        except Exception:
            continue
        reply = query.reply()
        qname = str(query.q.qname).rstrip(".").lower()
        qtype = QTYPE[query.q.qtype]
        if qname.endswith(".in-addr.arpa"):
            if qtype == "PTR":
                reply.add_answer(RR(query.q.qname, QTYPE.PTR, rdata=PTR("localhost"), ttl=3600))
        elif not qname.endswith(".bench"):
            reply.header.rcode = RCODE.NXDOMAIN
        elif qname.startswith("mx."):
            if qtype == "A":
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("127.0.0.1"), ttl=3600))
        elif qtype == "MX":
            host = f"mx.{qname}" if distinct else "mx.bench"
            reply.add_answer(RR(query.q.qname, QTYPE.MX, rdata=MX(host, 10), ttl=3600))
        sock.sendto(reply.pack(), peer)


if __name__ == "__main__":
    main()
