"""``slimta-relay --demo``: a tiny SMTP receiver on loopback, in this process.

The receiver is a :class:`gevent.server.StreamServer` on ``127.0.0.1`` and a
free port. It speaks just enough ESMTP for the relay (EHLO with PIPELINING,
8BITMIME, SIZE and ENHANCEDSTATUSCODES; HELO, MAIL, RCPT, DATA, RSET, NOOP,
QUIT) and keeps every message it accepts in memory, so the demo needs no mail
server and no network beyond loopback. It is a demonstration, not a server to
deploy.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass, field
from typing import Any

from gevent import socket
from gevent.server import StreamServer

__all__ = ["DemoReceiver", "ReceivedMessage", "sample_message"]

#: Longest command line read; longer ones end the session.
MAX_LINE_BYTES = 4096
#: The SIZE limit advertised.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
#: The name the receiver greets with.
DEMO_HOSTNAME = "demo-receiver.localhost"


def sample_message(sender: str, recipients: list[str]) -> bytes:
    """A small, well-formed message for the demo."""
    lines = [
        f"From: Demo Sender <{sender}>",
        "To: " + ", ".join(recipients),
        "Subject: Hello from slimta-relay",
        f"Date: {email.utils.formatdate(localtime=True)}",
        f"Message-Id: {email.utils.make_msgid(domain='slimta-relay.localhost')}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        "This message was relayed by slimta-relay to a loopback receiver",
        "that the demo started in the same process.",
        "",
        ".A line starting with a dot is dot-stuffed on the wire.",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


@dataclass
class ReceivedMessage:
    """One message the receiver accepted."""

    helo: str
    sender: str
    recipients: list[str]
    data: bytes


@dataclass
class _Session:
    helo: str = ""
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)


def _address(argument: str, prefix: str) -> str | None:
    """The address in ``FROM:<a> PARAMS`` (or ``TO:``), or None when malformed."""
    if not argument.upper().startswith(prefix):
        return None
    rest = argument[len(prefix) :].strip()
    if not rest.startswith("<") or ">" not in rest:
        return None
    return rest[1 : rest.index(">")]


class DemoReceiver:
    """The loopback SMTP receiver; use it as a context manager.

    :param host: the address to listen on.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.messages: list[ReceivedMessage] = []
        self._server = StreamServer((host, 0), self._handle)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` it listens on (once started)."""
        host, port = self._server.address[:2]
        return str(host), int(port)

    def __enter__(self) -> DemoReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.stop(timeout=1.0)

    # -- the session -------------------------------------------------------------
    def _handle(self, sock: Any, address: Any) -> None:
        # Pipelined commands get one small reply each; without TCP_NODELAY,
        # Nagle's algorithm would hold each reply back for the client's delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        try:
            self._converse(sock, reader)
        except OSError:
            pass  # the client went away
        finally:
            reader.close()
            sock.close()

    def _converse(self, sock: Any, reader: Any) -> None:
        def reply(text: str) -> None:
            sock.sendall(text.encode("utf-8") + b"\r\n")

        reply(f"220 {DEMO_HOSTNAME} ESMTP slimta-relay demo receiver")
        session = _Session()
        while True:
            line = reader.readline(MAX_LINE_BYTES + 1)
            if not line or len(line) > MAX_LINE_BYTES:
                return
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            verb, _, argument = text.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                session = _Session(helo=argument)
                reply(
                    f"250-{DEMO_HOSTNAME} greets {argument}\r\n250-PIPELINING\r\n"
                    f"250-8BITMIME\r\n250-SIZE {MAX_MESSAGE_BYTES}\r\n250 ENHANCEDSTATUSCODES"
                )
            elif verb == "HELO":
                session = _Session(helo=argument)
                reply(f"250 {DEMO_HOSTNAME}")
            elif verb == "MAIL":
                session.sender = _address(argument, "FROM:")
                session.recipients = []
                if session.sender is None:
                    reply("501 5.5.4 Syntax: MAIL FROM:<address>")
                else:
                    reply("250 2.1.0 Sender ok")
            elif verb == "RCPT":
                rcpt = _address(argument, "TO:")
                if session.sender is None:
                    reply("503 5.5.1 MAIL first")
                elif not rcpt or "@" not in rcpt:
                    reply("501 5.1.3 Bad recipient address syntax")
                else:
                    session.recipients.append(rcpt)
                    reply("250 2.1.5 Recipient ok")
            elif verb == "DATA":
                if session.sender is None or not session.recipients:
                    reply("503 5.5.1 No valid recipients")
                    continue
                reply("354 End data with <CR><LF>.<CR><LF>")
                data = self._read_data(reader)
                if data is None:
                    return
                self.messages.append(
                    ReceivedMessage(session.helo, session.sender, session.recipients, data)
                )
                reply(f"250 2.0.0 Ok: queued as demo-{len(self.messages)}")
                session = _Session(helo=session.helo)
            elif verb == "RSET":
                session = _Session(helo=session.helo)
                reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                reply("221 2.0.0 Bye")
                return
            else:
                reply("502 5.5.2 Command not implemented")

    @staticmethod
    def _read_data(reader: Any) -> bytes | None:
        """Read dot-stuffed data up to the lone ``.``; None if the client left."""
        lines: list[bytes] = []
        size = 0
        while True:
            line = reader.readline(MAX_LINE_BYTES + 1)
            if not line:
                return None
            if line in (b".\r\n", b".\n"):
                return b"".join(lines)
            if line.startswith(b"."):
                line = line[1:]
            size += len(line)
            if size <= MAX_MESSAGE_BYTES:
                lines.append(line)
