"""A scriptable SMTP/LMTP server that misbehaves on cue, for the hostile cases.

It runs in the test's own gevent hub on ``127.0.0.1:0``. Without a script it is a
small, correct ESMTP (or LMTP) server that records what it receives. A script maps
a step to what the server does instead of its normal answer:

* steps: ``'BANNER'``, every command verb (``'EHLO'``, ``'LHLO'``, ``'STARTTLS'``,
  ``'AUTH'``, ``'MAIL'``, ``'RCPT'``, ``'DATA'``, ``'RSET'``, ``'QUIT'``...),
  ``'DATA_BODY'`` (after the 354, once the first message bytes arrived),
  ``'DATA_END'`` (after the ``.`` that ends a message) and ``'IDLE'`` (right after
  the reply to ``DATA_END``, before the next command is read);
* actions: a ``str`` reply (CRLF appended; use ``\\r\\n`` inside for multi-line), raw
  ``bytes`` written as they are, :data:`CLOSE`, :data:`RESET`, :data:`STALL`,
  :data:`GARBAGE`, :data:`OVERSIZED_LINE`, :data:`OVERSIZED_REPLY`, :class:`Split`,
  :class:`Hangup`, :class:`Hold`, ``None`` (the normal answer), or a list of these used
  one per occurrence within a session (then the normal answer again);
* ``sessions=[script0, script1, ...]`` gives each connection its own script, for
  tests where the first connection misbehaves and the next one must work.

At ``'DATA_BODY'`` a ``str`` reply is an early refusal: it is written while the
client is still sending, the rest of the message is read and dropped, and the
session goes on. :data:`STALL` there stops reading altogether (the client's
writes block) until :attr:`FaultServer.release` is set or the server stops.

The server listens on TCP (or a unix socket) once :meth:`FaultServer.start` is
called. Without starting it, :meth:`FaultServer.socket_creator` serves each
connection over a socketpair instead, for tests that need no listening socket.

After :data:`STALL`, :data:`GARBAGE`, :data:`OVERSIZED_LINE` and
:data:`OVERSIZED_REPLY` the server only reads (and drops) until the client closes,
so :attr:`Session.closed` tells a test that the client let go of its socket.
"""

from __future__ import annotations

import gc
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import gevent
import gevent.socket
import pytest
from gevent.event import Event
from gevent.server import StreamServer

__all__ = [
    "CLOSE",
    "RESET",
    "STALL",
    "GARBAGE",
    "OVERSIZED_LINE",
    "OVERSIZED_REPLY",
    "Split",
    "Hangup",
    "Hold",
    "FaultServer",
    "fault_server",
    "no_relay_leaks",
]

#: The most bytes the server buffers for one command line or one message.
MAX_SERVER_BUFFER_BYTES = 32 * 1024 * 1024


class _Fault:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<fault {self.name}>"


#: Close the connection (FIN) instead of answering.
CLOSE = _Fault("close")
#: Abort the connection (RST, via SO_LINGER 0) instead of answering.
RESET = _Fault("reset")
#: Never answer; keep reading until the client goes away.
STALL = _Fault("stall")
#: A line that is not an SMTP reply.
GARBAGE = b"this is not an SMTP reply\r\n"
#: One 100 KiB reply line, beyond any sane line bound.
OVERSIZED_LINE = b"250 " + b"x" * (100 * 1024) + b"\r\n"
#: A multi-line reply of ~200 KiB made of short lines, beyond any whole-reply bound.
OVERSIZED_REPLY = (b"250-" + b"y" * 1000 + b"\r\n") * 200 + b"250 end\r\n"
_DRAIN_AFTER = (STALL, GARBAGE, OVERSIZED_LINE, OVERSIZED_REPLY)


@dataclass(frozen=True)
class Split:
    """Write ``reply`` (plus CRLF) one byte per ``send``, yielding between them."""

    reply: str


@dataclass(frozen=True)
class Hangup:
    """Write ``reply`` (plus CRLF), then close the connection (a 421 before closing)."""

    reply: str


@dataclass(frozen=True)
class Hold:
    """Write ``reply`` (plus CRLF) only once the client's next ``MAIL`` arrived.

    For pipelining tests: a client that chains its next transaction sends ``MAIL``
    before it reads this reply. The server waits at most ``seconds`` and records
    whether the ``MAIL`` came in :attr:`Session.holds`.
    """

    reply: str
    seconds: float = 3.0


Action = Union[str, bytes, _Fault, Split, Hangup, Hold, None]
Script = dict[str, Union[Action, Sequence[Action]]]


@dataclass
class Session:
    """What one connection did."""

    index: int
    #: Every command line received, without its line end.
    commands: list[bytes] = field(default_factory=list)
    #: The data of each message, with the dot-stuffing undone.
    messages: list[bytes] = field(default_factory=list)
    #: The raw bytes of each DATA phase, end marker included (to check stuffing).
    raw_data: list[bytes] = field(default_factory=list)
    #: Whether STARTTLS (or implicit TLS) succeeded.
    tls: bool = False
    #: Set when the server is done with the connection (client closed, or the server did).
    closed: Event = field(default_factory=Event)
    #: For each :class:`Hold` performed: whether the next ``MAIL`` arrived in time.
    holds: list[bool] = field(default_factory=list)

    def verbs(self) -> list[bytes]:
        """The command verbs, upper-cased, in order."""
        return [line.split(b" ", 1)[0].upper() for line in self.commands]


class _Hangup(Exception):
    """The client went away, or the script ended the connection."""


class _Conn:
    def __init__(self, sock: Any, session: Session) -> None:
        self.sock = sock
        self.session = session
        self.buf = bytearray()

    def recv_more(self) -> None:
        try:
            data = self.sock.recv(65536)
        except OSError:
            raise _Hangup()
        if not data:
            raise _Hangup()
        self.buf += data
        if len(self.buf) > MAX_SERVER_BUFFER_BYTES:
            raise _Hangup()

    def read_until(self, marker: bytes) -> bytes:
        start = 0
        while True:
            idx = self.buf.find(marker, start)
            if idx >= 0:
                end = idx + len(marker)
                out = bytes(self.buf[:end])
                del self.buf[:end]
                return out
            start = max(0, len(self.buf) - len(marker) + 1)
            self.recv_more()

    def wait_for(self, marker: bytes, seconds: float) -> bool:
        """Read until ``marker`` is buffered; False if ``seconds`` pass first."""
        with gevent.Timeout(seconds, False):
            while marker not in self.buf:
                self.recv_more()
            return True
        return False

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            raise _Hangup()

    def drain(self) -> None:
        """Read and drop until the client closes."""
        self.buf.clear()
        try:
            while True:
                self.recv_more()
                self.buf.clear()
        except _Hangup:
            return


class FaultServer:
    """The server. Use the :func:`fault_server` fixture to get one.

    :param script: the script for every connection (see the module docstring).
    :param sessions: one script per connection, in connection order; connections
        beyond the list use ``script``.
    :param extensions: the EHLO/LHLO keywords advertised.
    :param lmtp: speak LMTP (one reply per accepted recipient after the data).
    :param tls_context: a server context; enables STARTTLS (advertise it in
        ``extensions``) and, with ``implicit_tls``, TLS on connect.
    :param reject: recipients refused at RCPT with ``550 5.1.1``.
    :param unix_path: listen on this unix socket instead of TCP.
    :param nodelay: turn Nagle's algorithm off on every accepted TCP connection.
        The server answers pipelined commands with one small write each; with
        Nagle on, the second write waits for the client's delayed ACK (40 ms on
        Linux), which is pure waiting in a test that runs thousands of transactions.
    """

    def __init__(
        self,
        script: Script | None = None,
        *,
        sessions: Sequence[Script] = (),
        extensions: Sequence[str] = ("PIPELINING", "8BITMIME", "SIZE 10485760"),
        lmtp: bool = False,
        tls_context: Any = None,
        implicit_tls: bool = False,
        reject: Sequence[str] = (),
        unix_path: str | None = None,
        nodelay: bool = False,
    ) -> None:
        self.script = dict(script or {})
        self.session_scripts = [dict(s) for s in sessions]
        self.extensions = list(extensions)
        self.lmtp = lmtp
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.reject = {r.lower() for r in reject}
        self.sessions: list[Session] = []
        self.unix_path = unix_path
        self.nodelay = nodelay
        #: Set to let every :data:`STALL` at ``'DATA_BODY'`` go (stopping sets it too).
        self.release = Event()
        #: Set once a first message was read completely, on any connection.
        self.message_seen = Event()
        self._server: StreamServer | None = None
        self._peers: list[gevent.Greenlet] = []

    @property
    def address(self) -> tuple[str, int]:
        """``('127.0.0.1', port)``, or ``(unix_path, 0)``, once started."""
        if self.unix_path is not None:
            return self.unix_path, 0
        assert self._server is not None, "the server was not started"
        return "127.0.0.1", int(self._server.server_port)

    def start(self) -> FaultServer:
        """Listen (TCP on ``127.0.0.1``, or ``unix_path``) and serve every connection."""
        listener: Any = ("127.0.0.1", 0)
        if self.unix_path is not None:
            listener = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(self.unix_path)
            listener.listen(16)
        self._server = StreamServer(listener, self._handle)
        self._server.start()
        return self

    def socket_creator(self, address: Any) -> Any:
        """A relay's ``socket_creator``: serve this connection over a socketpair.

        The returned socket is the client's end; the server runs its script on the
        other end in a greenlet that :meth:`stop` ends. ``address`` is ignored.
        """
        client_end, server_end = gevent.socket.socketpair()
        self._peers.append(gevent.spawn(self._handle, server_end, address))
        return client_end

    def stop(self) -> None:
        """Stop listening and end every session still running."""
        self.release.set()
        if self._server is not None:
            self._server.stop(timeout=2)
        gevent.killall(self._peers, timeout=2)

    @property
    def messages(self) -> list[bytes]:
        """Every message received (dot-stuffing undone), over all sessions, in order."""
        return [message for session in self.sessions for message in session.messages]

    def wait_closed(self, count: int | None = None, timeout: float = 5.0) -> None:
        """Wait until ``count`` sessions (default: all so far) were closed by either side."""
        with gevent.Timeout(timeout, AssertionError("sessions were not closed in time")):
            for session in list(self.sessions)[:count]:
                session.closed.wait()

    # -- connection handling -------------------------------------------------------
    def _handle(self, sock: Any, _address: Any) -> None:
        if self.nodelay and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = Session(len(self.sessions))
        self.sessions.append(session)
        script = (
            self.session_scripts[session.index]
            if session.index < len(self.session_scripts)
            else self.script
        )
        used: dict[str, int] = {}
        conn = _Conn(sock, session)
        try:
            if self.implicit_tls and self.tls_context is not None:
                conn.sock = self.tls_context.wrap_socket(sock, server_side=True)
                session.tls = True
            self._serve(conn, session, script, used)
        except _Hangup:
            pass
        finally:
            try:
                conn.sock.close()
            finally:
                sock.close()
                session.closed.set()

    def _action(self, script: Script, used: dict[str, int], step: str) -> Action:
        entry = script.get(step)
        if isinstance(entry, (list, tuple)):
            n = used.get(step, 0)
            used[step] = n + 1
            return entry[n] if n < len(entry) else None
        return entry  # type: ignore[return-value]

    def _perform(self, conn: _Conn, action: Action, default: Callable[[], None]) -> None:
        if action is None:
            default()
        elif isinstance(action, str):
            conn.send(action.encode("utf-8") + b"\r\n")
        elif isinstance(action, Split):
            for byte in action.reply.encode("utf-8") + b"\r\n":
                conn.send(bytes([byte]))
                gevent.sleep(0)
        elif isinstance(action, Hangup):
            conn.send(action.reply.encode("utf-8") + b"\r\n")
            raise _Hangup()
        elif isinstance(action, Hold):
            conn.session.holds.append(conn.wait_for(b"MAIL FROM", action.seconds))
            conn.send(action.reply.encode("utf-8") + b"\r\n")
        elif action is CLOSE:
            raise _Hangup()
        elif action is RESET:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raise _Hangup()
        elif action is STALL:
            conn.drain()
            raise _Hangup()
        else:
            assert isinstance(action, bytes)
            conn.send(action)
            if action in _DRAIN_AFTER:
                conn.drain()
                raise _Hangup()

    def _data_body(self, conn: _Conn, action: Action) -> bool:
        """Perform the ``'DATA_BODY'`` action; True after an early refusal."""
        if action is None:
            return False
        if not conn.buf:
            conn.recv_more()  # some message bytes are in flight
        if action is STALL:
            self.release.wait()  # read nothing more: the client's writes block
            raise _Hangup()
        self._perform(conn, action, lambda: None)
        return True

    def _serve(self, conn: _Conn, session: Session, script: Script, used: dict[str, int]) -> None:
        def reply(text: str) -> Callable[[], None]:
            return lambda: conn.send(text.encode("utf-8") + b"\r\n")

        hello = "LHLO" if self.lmtp else "EHLO"
        self._perform(conn, self._action(script, used, "BANNER"), reply("220 fault.test ESMTP"))
        sender: bytes | None = None
        rcpts: list[bytes] = []
        while True:
            line = conn.read_until(b"\n").rstrip(b"\r\n")
            session.commands.append(line)
            verb = line.split(b" ", 1)[0].upper().decode("ascii", "replace")
            action = self._action(script, used, verb)
            if verb == hello:
                lines = ["fault.test", *self.extensions]
                text = "\r\n".join(
                    f"250{'-' if i < len(lines) - 1 else ' '}{x}" for i, x in enumerate(lines)
                )
                self._perform(conn, action, reply(text))
            elif verb == "HELO" and not self.lmtp:
                self._perform(conn, action, reply("250 fault.test"))
            elif verb == "STARTTLS":
                self._perform(conn, action, reply("220 2.0.0 Ready to start TLS"))
                starts = action is None or (isinstance(action, str) and action.startswith("220"))
                if self.tls_context is not None and starts:
                    conn.sock = self.tls_context.wrap_socket(conn.sock, server_side=True)
                    session.tls = True
            elif verb == "AUTH":
                self._perform(conn, action, reply("235 2.7.0 Authentication successful"))
            elif verb == "MAIL":
                sender, rcpts = line, []
                self._perform(conn, action, reply("250 2.1.0 Ok"))
            elif verb == "RCPT":
                address = line.partition(b"<")[2].partition(b">")[0]
                if action is None and address.decode("utf-8", "replace").lower() in self.reject:
                    action = "550 5.1.1 No such user"
                if action is None or (isinstance(action, str) and action.startswith("2")):
                    rcpts.append(address)
                self._perform(conn, action, reply("250 2.1.5 Ok"))
            elif verb == "DATA":
                if action is None and (sender is None or not rcpts):
                    action = "554 5.5.1 No valid recipients"
                self._perform(conn, action, reply("354 End data with <CR><LF>.<CR><LF>"))
                if action is not None and not (isinstance(action, str) and action[:3] == "354"):
                    continue
                refused = self._data_body(conn, self._action(script, used, "DATA_BODY"))
                raw = b""
                while not (raw == b".\r\n" or raw.endswith(b"\r\n.\r\n")):
                    raw += conn.read_until(b"\n")
                if refused:  # the early reply was the final one; the session goes on
                    sender, rcpts = None, []
                    continue
                session.raw_data.append(raw)
                data_lines = raw[:-3].split(b"\r\n")
                session.messages.append(
                    b"\r\n".join(x[1:] if x.startswith(b".") else x for x in data_lines)
                )
                self.message_seen.set()
                end = self._action(script, used, "DATA_END")
                if self.lmtp:
                    count = len(rcpts)
                    self._perform(
                        conn, end, reply("\r\n".join(["250 2.0.0 Delivered"] * count))
                    )
                else:
                    self._perform(conn, end, reply("250 2.0.0 Ok: queued"))
                sender, rcpts = None, []
                self._perform(conn, self._action(script, used, "IDLE"), lambda: None)
            elif verb == "RSET":
                sender, rcpts = None, []
                self._perform(conn, action, reply("250 2.0.0 Ok"))
            elif verb == "NOOP":
                self._perform(conn, action, reply("250 2.0.0 Ok"))
            elif verb == "QUIT":
                self._perform(conn, action, reply("221 2.0.0 Bye"))
                return
            else:
                self._perform(conn, action, reply("500 5.5.2 Command unrecognized"))


@pytest.fixture
def no_relay_leaks() -> Iterator[None]:
    """After the test: no relay client greenlet alive, none holding a socket.

    Use with ``pytestmark = pytest.mark.usefixtures("no_relay_leaks")``.
    """
    yield
    from slimta.relay.pool import RelayPoolClient

    gc.collect()
    leaked = [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, RelayPoolClient)
        and (not obj.dead or getattr(obj, "socket", None) is not None)
    ]
    assert leaked == [], f"relay clients still alive or connected: {leaked}"


@pytest.fixture
def fault_server() -> Iterator[Callable[..., FaultServer]]:
    """Factory: ``fault_server(script=None, **options)`` starts a :class:`FaultServer`.

    Every server started is stopped when the test ends.
    """
    started: list[FaultServer] = []

    def start(script: Script | None = None, **options: Any) -> FaultServer:
        server = FaultServer(script, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
