"""Reply.from_parts, BlackholeRelay's reply and its random UUIDs, and the verb table of Server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent import socket as gsocket
from hypothesis import given, settings
from hypothesis import strategies as st
from support.smtp_wire import Wire
from support.util import GUARD_SECONDS

from slimta.envelope import Envelope
from slimta.policy import RelayPolicy
from slimta.relay.blackhole import BlackholeRelay
from slimta.smtp.reply import Reply
from slimta.smtp.server import Server

CLIENT = ("192.0.2.7", 40000)

# -- Reply.from_parts ------------------------------------------------------------------------


def test_from_parts_keeps_each_part() -> None:
    reply = Reply.from_parts("250", "2.1.0", "Sender <a@b> Ok")
    assert reply.code == "250"
    assert reply.enhanced_status_code == "2.1.0"
    assert reply.message == "2.1.0 Sender <a@b> Ok"
    assert reply.raw_message == "Sender <a@b> Ok"
    assert reply.command is None
    assert reply.address is None
    assert reply.newline_first is False
    assert str(reply) == "250 2.1.0 Sender <a@b> Ok"
    assert bytes(reply) == b"250 2.1.0 Sender <a@b> Ok"
    assert bool(reply)
    assert not reply.is_error()


def test_from_parts_encodes_non_ascii_text_as_utf8() -> None:
    reply = Reply.from_parts("250", "2.0.0", "Grüße")
    assert bytes(reply) == "250 2.0.0 Grüße".encode()


def test_text_that_looks_like_a_status_code_is_kept_whole() -> None:
    reply = Reply.from_parts("250", None, "2.1.0 x")
    assert reply.raw_message == "2.1.0 x"
    assert reply.enhanced_status_code == "2.0.0"  # the default, class digit from the code
    assert reply.message == "2.0.0 2.1.0 x"
    assert str(reply) == "250 2.0.0 2.1.0 x"
    # Built the usual way, the same text is split instead.
    assert Reply("250", "2.1.0 x").raw_message == "x"


def test_text_starting_with_an_address_is_kept_whole() -> None:
    reply = Reply.from_parts("250", "2.1.5", "<4.1.1@example.test> Ok")
    assert reply.raw_message == "<4.1.1@example.test> Ok"
    assert reply.message == "2.1.5 <4.1.1@example.test> Ok"


def test_false_suppresses_the_status_code() -> None:
    reply = Reply.from_parts("220", False, "ESMTP")
    assert reply.enhanced_status_code is None
    assert reply.message == "ESMTP"
    assert reply.raw_message == "ESMTP"
    assert str(reply) == "220 ESMTP"
    assert bytes(reply) == b"220 ESMTP"


@pytest.mark.parametrize("code", ["99", "abc", "2500", "650", "25 ", ""])
def test_an_invalid_code_is_refused(code: str) -> None:
    with pytest.raises(ValueError):
        Reply.from_parts(code, "2.0.0", "Ok")


@pytest.mark.parametrize("esc", ["9.9.9", "2.1", "3.1.0", "2.1.0 ", "x.y.z", "2.1.1000"])
def test_an_invalid_enhanced_status_code_is_refused(esc: str) -> None:
    with pytest.raises(ValueError):
        Reply.from_parts("250", esc, "Ok")


# A trailing newline must not slip through the checks: "$" would match before it,
# and the reply would carry a bare LF (b"250\n 2.0.0 Ok", b"250 2.1.0\n Ok").


def test_a_code_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ValueError):
        Reply.from_parts("250\n", "2.0.0", "Ok")


def test_an_enhanced_status_code_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ValueError):
        Reply.from_parts("250", "2.1.0\n", "Ok")
    with pytest.raises(ValueError):  # and it was not remembered as valid either
        Reply.from_parts("250", "2.1.0\n", "Ok")


def test_true_is_not_an_enhanced_status_code() -> None:
    with pytest.raises(ValueError):
        Reply.from_parts("250", True, "Ok")


def test_an_invalid_enhanced_status_code_stays_invalid_after_valid_ones() -> None:
    # Valid codes are remembered (a bounded set); a bad one is never let through.
    for _ in range(3):
        Reply.from_parts("250", "2.1.0", "Ok")
        with pytest.raises(ValueError):
            Reply.from_parts("250", "2.1", "Ok")


def test_the_class_digit_comes_from_the_code() -> None:
    # As for a Reply built the usual way (see the enhanced_status_code getter).
    assert Reply("451", "2.1.0 x").enhanced_status_code == "4.1.0"
    reply = Reply.from_parts("451", "2.1.0", "Try later")
    assert reply.enhanced_status_code == "4.1.0"
    assert reply.message == "4.1.0 Try later"
    assert str(reply) == "451 4.1.0 Try later"
    assert reply.is_error()
    assert Reply.from_parts("550", "2.1.0", "No").enhanced_status_code == "5.1.0"


def test_no_status_code_on_1xx_and_3xx_replies() -> None:
    reply = Reply.from_parts("354", None, "Start mail input; end with <CRLF>.<CRLF>")
    assert reply.enhanced_status_code is None
    assert str(reply) == "354 Start mail input; end with <CRLF>.<CRLF>"
    assert Reply.from_parts("354", "2.0.0", "Go").message == "Go"


def test_equal_to_a_reply_built_the_usual_way() -> None:
    assert Reply.from_parts("250", "2.1.5", "Ok") == Reply("250", "2.1.5 Ok")
    assert Reply.from_parts("250", None, "Ok") == Reply("250", "2.0.0 Ok")
    assert Reply.from_parts("250", "2.1.5", "Ok") != Reply("250", "2.1.0 Ok")
    assert Reply.from_parts("250", "2.1.5", "Ok") != Reply("251", "2.1.5 Ok")


def test_a_from_parts_reply_can_be_changed_and_copied() -> None:
    reply = Reply.from_parts("250", "2.1.0", "Ok")
    reply.code = "550"
    reply.message = "5.7.1 Refused"
    assert str(reply) == "550 5.7.1 Refused"
    copy = Reply(command=b"MAIL").copy(Reply.from_parts("221", "2.0.0", "Bye"))
    assert str(copy) == "221 2.0.0 Bye"
    assert copy.command == b"MAIL"


# -- BlackholeRelay ----------------------------------------------------------------------------


def blackhole_reply() -> Reply:
    envelope = Envelope("sender@example.test", ["rcpt@example.test"])
    reply = BlackholeRelay().attempt(envelope, 0)
    assert isinstance(reply, Reply)
    return reply


def test_blackhole_reply_format() -> None:
    reply = blackhole_reply()
    assert reply.code == "250"
    assert reply.enhanced_status_code == "2.0.0"
    text = reply.raw_message
    assert text is not None
    prefix = "Message Delivered; "
    assert text.startswith(prefix)
    value = text[len(prefix) :]
    assert reply.message == f"2.0.0 Message Delivered; {value}"
    assert str(reply) == f"250 2.0.0 Message Delivered; {value}"
    parsed = uuid.UUID(value)
    assert str(parsed) == value  # lower case, canonical 8-4-4-4-12 form
    assert parsed.version == 4
    assert parsed.variant == uuid.RFC_4122


def test_blackhole_replies_carry_distinct_uuids() -> None:
    values = set()
    for _ in range(200):
        text = blackhole_reply().raw_message
        assert text is not None
        values.add(text.rsplit(" ", 1)[1])
    assert len(values) == 200


def test_blackhole_runs_no_relay_policy() -> None:
    applied: list[Envelope] = []

    class Recording(RelayPolicy):
        def apply(self, envelope: Envelope) -> None:
            applied.append(envelope)

    relay = BlackholeRelay()
    relay.add_policy(Recording())
    envelope = Envelope("sender@example.test", ["rcpt@example.test"])
    reply = relay._attempt(envelope, 0)
    assert isinstance(reply, Reply)
    assert reply.code == "250"
    assert applied == []


# -- Server's verb dispatch -----------------------------------------------------------------------


class Hooks:
    """Handlers that record the hook calls the server makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def NOOP(self, reply: Reply) -> None:  # noqa: N802
        self.calls.append(("NOOP hook", None))

    def XFOO(self, reply: Reply, arg: bytes | None, server: Server) -> None:  # noqa: N802
        self.calls.append(("XFOO hook", arg))
        reply.code = "250"
        reply.message = "2.0.0 hook"


class CustomServer(Server):
    def _command_NOOP(self, arg: bytes | None) -> None:  # noqa: N802
        self.handlers.calls.append(("_command_NOOP", arg))
        self._send(Reply.from_parts("250", "2.0.0", "custom noop"))

    def _command_XFOO(self, arg: bytes | None) -> None:  # noqa: N802
        self.handlers.calls.append(("_command_XFOO", arg))
        self._send(Reply.from_parts("250", "2.0.0", f"xfoo {arg!r}"))


class GrandchildServer(CustomServer):
    """Inherits NOOP and XFOO from CustomServer; adds XBAR."""

    def _command_XBAR(self, arg: bytes | None) -> None:  # noqa: N802
        self.handlers.calls.append(("_command_XBAR", arg))
        self._send(Reply.from_parts("250", "2.0.0", "xbar"))


class Session:
    def __init__(self, wire: Wire, hooks: Hooks, greenlet: Any) -> None:
        self.wire = wire
        self.hooks = hooks
        self.greenlet = greenlet

    def outcome(self) -> Any:
        """Wait for the server to end; the exception it ended with, or None."""
        self.greenlet.join(GUARD_SECONDS)
        assert self.greenlet.ready()
        return self.greenlet.exception


@pytest.fixture
def start() -> Iterator[Any]:
    made: list[Session] = []

    def run_server(server_class: type[Server]) -> Session:
        ours, theirs = gsocket.socketpair()
        hooks = Hooks()
        server = server_class(ours, hooks, CLIENT)

        def run() -> None:
            try:
                server.handle()
            finally:
                server.io.close()

        made.append(Session(Wire(theirs), hooks, gevent.spawn(run)))
        return made[-1]

    yield run_server
    for session in made:
        session.wire.close()
        session.greenlet.kill()


def test_a_subclass_override_and_a_new_verb_are_dispatched(start: Any) -> None:
    s = start(CustomServer)
    s.wire.send(b"EHLO client.test\r\nNOOP\r\nXFOO bar\r\nxfoo\r\nQUIT\r\n")
    replies = s.wire.replies(6)
    assert [code for code, _ in replies] == ["220", "250", "250", "250", "250", "221"]
    assert replies[2] == ("250", "2.0.0 custom noop")
    assert replies[3] == ("250", "2.0.0 xfoo b'bar'")
    assert replies[4] == ("250", "2.0.0 xfoo None")
    assert s.outcome() is None
    # The subclass's methods ran; the hooks behind the base NOOP and the
    # custom-command path were not reached.
    assert s.hooks.calls == [
        ("_command_NOOP", None),
        ("_command_XFOO", b"bar"),
        ("_command_XFOO", None),
    ]


def test_a_grandchild_inherits_the_overrides_and_adds_its_own(start: Any) -> None:
    s = start(GrandchildServer)
    s.wire.send(b"EHLO client.test\r\nNOOP\r\nXFOO\r\nXBAR\r\nQUIT\r\n")
    replies = s.wire.replies(6)
    assert replies[2] == ("250", "2.0.0 custom noop")
    assert replies[3] == ("250", "2.0.0 xfoo None")
    assert replies[4] == ("250", "2.0.0 xbar")
    assert replies[5][0] == "221"
    assert s.outcome() is None
    assert [name for name, _ in s.hooks.calls] == [
        "_command_NOOP",
        "_command_XFOO",
        "_command_XBAR",
    ]


def test_the_base_server_keeps_its_own_table(start: Any) -> None:
    s = start(Server)
    s.wire.send(b"EHLO client.test\r\nNOOP\r\nXFOO bar\r\nXBAR\r\nQUIT\r\n")
    replies = s.wire.replies(6)
    assert replies[2] == ("250", "2.0.0 Ok")  # the standard NOOP
    assert replies[3] == ("250", "2.0.0 hook")  # XFOO goes to the handlers' hook
    assert replies[4][0] == "500"  # no XBAR here
    assert replies[5][0] == "221"
    assert s.outcome() is None
    assert s.hooks.calls == [("NOOP hook", None), ("XFOO hook", b"bar")]


def test_methods_patched_in_later_are_dispatched(
    start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in python-slimta, the method is looked up when the command arrives:
    one patched onto the class (mock.patch.object) or added to it later counts."""

    def patched_noop(self: Server, arg: bytes | None) -> None:
        self.handlers.calls.append(("patched NOOP", arg))
        self._send(Reply.from_parts("250", "2.0.0", "patched"))

    def added_xbaz(self: Server, arg: bytes | None) -> None:
        self.handlers.calls.append(("added XBAZ", arg))
        self._send(Reply.from_parts("250", "2.0.0", "baz"))

    monkeypatch.setattr(CustomServer, "_command_NOOP", patched_noop)
    monkeypatch.setattr(CustomServer, "_command_XBAZ", added_xbaz, raising=False)
    s = start(CustomServer)
    s.wire.send(b"EHLO client.test\r\nNOOP\r\nXBAZ 1\r\nCUSTOM\r\nQUIT\r\n")
    replies = s.wire.replies(6)
    assert replies[2] == ("250", "2.0.0 patched")
    assert replies[3] == ("250", "2.0.0 baz")
    assert replies[4][0] == "500"  # _command_custom is not the verb CUSTOM
    assert replies[5][0] == "221"
    assert s.hooks.calls == [("patched NOOP", None), ("added XBAZ", b"1")]


@pytest.mark.parametrize(
    ("reply", "wire"),
    [
        (Reply("250", "2.1.0 Sender <a@b> Ok"), b"250 2.1.0 Sender <a@b> Ok\r\n"),
        (Reply("250", "Ok"), b"250 2.0.0 Ok\r\n"),  # the default class code
        (Reply("550", "5.7.1 No"), b"550 5.7.1 No\r\n"),
        (Reply("451", "2.1.0 wrong class"), b"451 4.1.0 wrong class\r\n"),
        (Reply("354", "Go ahead"), b"354 Go ahead\r\n"),  # 3xx: no status code
        (Reply("220", "host ESMTP"), b"220 2.0.0 host ESMTP\r\n"),
        (Reply("250", "hello\nPIPELINING\r\nSIZE 10"),
         b"250-2.0.0 hello\r\n250-2.0.0 PIPELINING\r\n250 2.0.0 SIZE 10\r\n"),
        (Reply("250", "caf\u00e9"), "250 2.0.0 caf\u00e9\r\n".encode()),
        (Reply("250"), b"250 2.0.0 \r\n"),
        (Reply(), b" \r\n"),
    ],
)
def test_to_wire_writes_what_a_server_sends(reply: Reply, wire: bytes) -> None:
    assert reply.to_wire() == wire


def test_to_wire_leaves_out_a_suppressed_status_code() -> None:
    reply = Reply("250", "2.1.0 Ok")
    reply.enhanced_status_code = False
    assert reply.to_wire() == b"250 Ok\r\n"
    multi = Reply.from_parts("250", False, "one\ntwo")
    assert multi.to_wire() == b"250-one\r\n250 two\r\n"


def _reference_wire(reply: Reply) -> bytes:
    """What a server sends, written out the long way: one line per text line."""
    code = reply.code or ""
    esc = reply.enhanced_status_code
    lines = (reply.raw_message or "").splitlines() or [""]
    out = b""
    for i, line in enumerate(lines):
        sep = " " if i == len(lines) - 1 else "-"
        out += f"{code}{sep}{esc + ' ' if esc else ''}{line}\r\n".encode()
    return out


@settings(max_examples=300, deadline=None)
@given(
    code=st.sampled_from(["250", "354", "451", "550", "220", "100"]),
    text=st.text(
        alphabet=st.sampled_from(["a", " ", "\t", "\n", "\r", "\x0b", "\x1c", "\x85",
                                  "\u2028", "\u00e9", "<", "5", ".", "\x00"]),
        max_size=12,
    ),
    esc=st.sampled_from([None, False, "2.1.0", "5.7.1"]),
)
def test_to_wire_agrees_with_one_line_per_text_line(
    code: str, text: str, esc: str | bool | None
) -> None:
    reply = Reply.from_parts(code, esc, text)
    assert reply.to_wire() == _reference_wire(reply)
