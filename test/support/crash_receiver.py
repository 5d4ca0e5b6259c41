"""A small SMTP receiver, run as its own process, that logs what it accepts.

The queue crash tests kill the *sending* process, so the receiver must live
outside both the test's process and the sender's. It speaks just enough ESMTP
for :class:`~slimta.relay.smtp.static.StaticSmtpRelay` (no PIPELINING, no TLS),
waits a random delay before its final reply to DATA, and, before it writes that
final ``250``, appends one JSON line to its log::

    {"ev": "250", "id": "<X-Test-Id>", "rcpts": [...], "t": <time.time()>}

written with one ``os.write`` on an ``O_APPEND`` descriptor, so a reader never
sees half a line and the record exists before the client can have the reply.
After the reply has been handed to the kernel it logs ``{"ev": "sent", ...}``.
When the client has hung up by the end of the delay (it was killed), the message
is not accepted (``{"ev": "abandoned", ...}``), as a careful MTA would do.

A recipient whose local part starts with ``flaky`` is answered ``450`` the first
time it is seen and ``250`` afterwards (partial deliveries); one starting with
``reject`` is always answered ``550``.

Run: ``python crash_receiver.py LOG PORT_FILE [DELAY_MIN DELAY_MAX]``; the port
it listens on (127.0.0.1) is written to ``PORT_FILE`` once it accepts connections.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import socketserver
import sys
import threading
import time
from typing import Any

_TEST_ID = re.compile(rb"^X-Test-Id:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_ADDRESS = re.compile(rb"<([^>]*)>")


class _State:
    def __init__(self, log_path: str, delay: tuple[float, float]) -> None:
        self.fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.delay = delay
        self.lock = threading.Lock()
        self.seen_flaky: set[str] = set()

    def log(self, **record: Any) -> None:
        record["t"] = time.time()
        os.write(self.fd, json.dumps(record).encode("utf-8") + b"\n")


STATE: _State


class _Handler(socketserver.StreamRequestHandler):
    def reply(self, line: str) -> None:
        self.wfile.write(line.encode("ascii") + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        self.reply("220 crash-receiver ESMTP")
        sender: str | None = None
        rcpts: list[str] = []
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.reply("250-crash-receiver\r\n250 8BITMIME" if verb == b"EHLO" else "250 hi")
            elif verb == b"MAIL":
                found = _ADDRESS.search(line)
                sender = found.group(1).decode("utf-8", "replace") if found else ""
                rcpts = []
                self.reply("250 2.1.0 Ok")
            elif verb == b"RCPT":
                found = _ADDRESS.search(line)
                rcpt = found.group(1).decode("utf-8", "replace") if found else ""
                self.reply(self._rcpt(rcpt, rcpts))
            elif verb == b"DATA":
                if sender is None or not rcpts:
                    self.reply("554 5.5.1 No valid recipients")
                    continue
                self.reply("354 go ahead")
                self._data(rcpts)
                sender, rcpts = None, []
            elif verb == b"RSET":
                sender, rcpts = None, []
                self.reply("250 2.0.0 Ok")
            elif verb == b"NOOP":
                self.reply("250 2.0.0 Ok")
            elif verb == b"QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Not implemented")

    def _rcpt(self, rcpt: str, rcpts: list[str]) -> str:
        local = rcpt.split("@", 1)[0]
        if local.startswith("reject"):
            return "550 5.1.1 No such user"
        if local.startswith("flaky"):
            with STATE.lock:
                first = rcpt not in STATE.seen_flaky
                STATE.seen_flaky.add(rcpt)
            if first:
                return "450 4.2.0 Try again later"
        rcpts.append(rcpt)
        return "250 2.1.5 Ok"

    def _client_gone(self) -> bool:
        sock = self.connection
        sock.setblocking(False)
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            sock.setblocking(True)

    def _data(self, rcpts: list[str]) -> None:
        lines = []
        while True:
            line = self.rfile.readline(1 << 20)
            if not line:
                return  # the client went away: nothing accepted
            if line in (b".\r\n", b".\n"):
                break
            lines.append(line)
        message = b"".join(lines)
        found = _TEST_ID.search(message)
        test_id = found.group(1).decode("ascii", "replace") if found else None
        low, high = STATE.delay
        if high > 0:
            time.sleep(random.uniform(low, high))
        if self._client_gone():
            # Like a careful MTA: a client that hung up before the reply never
            # learns the outcome, so nothing is accepted on its behalf.
            STATE.log(ev="abandoned", id=test_id)
            return
        STATE.log(ev="250", id=test_id, rcpts=rcpts)
        try:
            self.reply("250 2.0.0 Ok: queued")
        except OSError:
            return
        STATE.log(ev="sent", id=test_id)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main(argv: list[str]) -> None:
    global STATE
    log_path, port_file = argv[0], argv[1]
    delay = (float(argv[2]), float(argv[3])) if len(argv) >= 4 else (0.0, 0.0)
    STATE = _State(log_path, delay)
    server = _Server(("127.0.0.1", 0), _Handler)
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, port_file)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
