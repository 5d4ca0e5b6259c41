"""Per-recipient results list recipients in envelope order (issue 12, point 6).

python-slimta builds each per-recipient result from ``envelope.recipients``, so a
program may read it by position (``list(result.values())[0]``). Every producer here
must do the same, whatever order the outcomes arrived in: refused locally before
any command, refused at RCPT, answered after the data (LMTP), or merged from
several MX groups. A recipient listed twice keeps its first position.

Real receivers (aiosmtpd in SMTP and LMTP mode, the scriptable fault server, small
programs for the pipe relay) give the replies; the DNS server is the test one.
"""

from __future__ import annotations

import socket
import stat
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent.event import AsyncResult
from gevent.socket import create_connection
from support import envelopes
from support.util import GUARD_SECONDS

from slimta.envelope import Envelope
from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.relay.pipe import PipeRelay
from slimta.relay.smtp import SmtpPermanentRelayError, SmtpTransientRelayError
from slimta.relay.smtp._plan import in_envelope_order
from slimta.relay.smtp.mx import MxSmtpRelay, NoDomainError
from slimta.relay.smtp.static import StaticLmtpRelay, StaticSmtpRelay
from slimta.smtp.reply import Reply

pytestmark = pytest.mark.usefixtures("no_relay_leaks")


#: Refused before any command: aiosmtpd and the fault server do not offer SMTPUTF8.
NON_ASCII = "d\u00e9j\u00e0@x.test"


make_envelope = partial(
    envelopes.make_envelope,
    headers=b"From: sender@example.test\r\nSubject: order\r\n",
    body=b"Hello.\r\n",
)


def unique_keys(rcpts: tuple[str, ...] | list[str]) -> list[str]:
    """The envelope's recipients, each once, at its first position."""
    return list(dict.fromkeys(rcpts))


def attempt(relay: Any, envelope: Envelope) -> Any:
    try:
        with gevent.Timeout(GUARD_SECONDS, AssertionError("attempt hung")):
            return relay.attempt(envelope, 0)
    finally:
        relay.kill()


def smtp_relay(address: tuple[str, int], cls: type = StaticSmtpRelay, **kwargs: Any) -> Any:
    kwargs.setdefault("ehlo_as", "relay.test")
    kwargs.setdefault("command_timeout", 5.0)
    return cls(address[0], address[1], pool_size=1, **kwargs)


def is_reply(value: Any, code: str) -> bool:
    return isinstance(value, Reply) and value.code == code


def is_error(value: Any, cls: type, code: str, command: bytes | None = None) -> bool:
    if not isinstance(value, cls):
        return False
    return value.reply.code == code and (command is None or value.reply.command == command)


# -- the helper ----------------------------------------------------------------------


def test_in_envelope_order_keeps_first_position_and_skips_missing() -> None:
    ok, bad = Reply("250", "2.0.0 Ok"), Reply("550", "5.1.1 No")
    outcomes = {"c": bad, "a": ok, "b": None}
    ordered = in_envelope_order(["a", "b", "a", "z", "c"], outcomes)
    assert list(ordered) == ["a", "b", "c"]
    assert ordered == {"a": ok, "b": None, "c": bad}


# -- SMTP ----------------------------------------------------------------------------


def test_smtp_failures_first_in_time_listed_in_envelope_order(aiosmtpd_server: Any) -> None:
    # The local refusal happens before MAIL, the RCPT refusals before the data's
    # reply: the old mapping listed them in that order, ahead of the good ones.
    server = aiosmtpd_server(reject_rcpt={"gone@x.test"}, tempfail_rcpt={"later@x.test"})
    rcpts = ("ok1@x.test", "gone@x.test", NON_ASCII, "later@x.test", "ok2@x.test",
             "gone@x.test", "ok1@x.test")
    result = attempt(smtp_relay(server.address), make_envelope(rcpts=rcpts))
    assert list(result.keys()) == unique_keys(rcpts)
    assert list(result) == ["ok1@x.test", "gone@x.test", NON_ASCII, "later@x.test", "ok2@x.test"]
    assert is_reply(result["ok1@x.test"], "250") and is_reply(result["ok2@x.test"], "250")
    assert result["ok1@x.test"] is result["ok2@x.test"]  # the one reply to the data
    assert is_error(result["gone@x.test"], SmtpPermanentRelayError, "550", b"RCPT")
    assert is_error(result["later@x.test"], SmtpTransientRelayError, "450", b"RCPT")
    assert is_error(result[NON_ASCII], SmtpPermanentRelayError, "553", b"RCPT")
    assert list(result.values())[0] is result["ok1@x.test"]
    (received,) = server.envelopes
    assert set(received.rcpt_tos) == {"ok1@x.test", "ok2@x.test"}


def test_smtp_failures_first_in_rcpt_order(aiosmtpd_server: Any) -> None:
    server = aiosmtpd_server(reject_rcpt={"gone@x.test"}, tempfail_rcpt={"later@x.test"})
    rcpts = ("gone@x.test", "later@x.test", "ok@x.test")
    result = attempt(smtp_relay(server.address), make_envelope(rcpts=rcpts))
    assert list(result.keys()) == list(rcpts)
    gone, later, ok = result.values()
    assert is_error(gone, SmtpPermanentRelayError, "550", b"RCPT")
    assert is_error(later, SmtpTransientRelayError, "450", b"RCPT")
    assert is_reply(ok, "250")


def test_smtp_without_pipelining(fault_server: Any) -> None:
    # One command at a time: each RCPT reply is read before the next is sent.
    server = fault_server(
        {"RCPT": [None, "450 4.2.1 Try later", "550 5.1.1 No such user", None]},
        extensions=["8BITMIME"],
    )
    rcpts = ("ok1@x.test", "later@x.test", "gone@x.test", "ok2@x.test")
    result = attempt(smtp_relay(server.address), make_envelope(rcpts=rcpts))
    assert list(result.keys()) == list(rcpts)
    assert is_reply(result["ok1@x.test"], "250") and is_reply(result["ok2@x.test"], "250")
    assert is_error(result["later@x.test"], SmtpTransientRelayError, "450", b"RCPT")
    assert is_error(result["gone@x.test"], SmtpPermanentRelayError, "550", b"RCPT")
    assert server.sessions[0].messages[0].endswith(b"Hello.\r\n")


def test_smtp_every_recipient_refused_with_mixed_classes(aiosmtpd_server: Any) -> None:
    # Nothing is sent, and no single error stands for all: a mapping comes back.
    server = aiosmtpd_server(reject_rcpt={"gone@x.test"}, tempfail_rcpt={"later@x.test"})
    rcpts = ("later@x.test", NON_ASCII, "gone@x.test")
    result = attempt(smtp_relay(server.address), make_envelope(rcpts=rcpts))
    assert list(result.keys()) == list(rcpts)
    assert is_error(result["later@x.test"], SmtpTransientRelayError, "450", b"RCPT")
    assert is_error(result[NON_ASCII], SmtpPermanentRelayError, "553", b"RCPT")
    assert is_error(result["gone@x.test"], SmtpPermanentRelayError, "550", b"RCPT")
    assert server.envelopes == []


def test_smtp_pipelined_next_transaction(fault_server: Any) -> None:
    # On a reused connection the next envelope's commands go out behind the
    # previous message; its result is ordered the same way.
    server = fault_server(reject=["gone@x.test"])
    relay = smtp_relay(server.address, idle_timeout=5.0)
    envelopes = [
        make_envelope(rcpts=("ok1@x.test", "gone@x.test", "ok2@x.test")),
        make_envelope(rcpts=("gone@x.test", NON_ASCII, "ok3@x.test", "ok1@x.test")),
        make_envelope(rcpts=(NON_ASCII, "ok2@x.test", "gone@x.test")),
    ]
    try:
        with gevent.Timeout(GUARD_SECONDS, AssertionError("attempts hung")):
            jobs = [gevent.spawn(relay.attempt, env, 0) for env in envelopes]
            gevent.joinall(jobs, raise_error=True)
    finally:
        relay.kill()
    assert len(server.sessions) == 1
    for env, job in zip(envelopes, jobs, strict=True):
        result = job.value
        assert list(result.keys()) == env.recipients
        for rcpt, value in result.items():
            if rcpt == "gone@x.test":
                assert is_error(value, SmtpPermanentRelayError, "550", b"RCPT")
            elif rcpt == NON_ASCII:
                assert is_error(value, SmtpPermanentRelayError, "553", b"RCPT")
            else:
                assert is_reply(value, "250")
    assert len(server.sessions[0].messages) == 3


# -- LMTP ----------------------------------------------------------------------------


def test_lmtp_replies_after_data_in_envelope_order(aiosmtpd_server: Any) -> None:
    # After the data, one reply per accepted recipient arrives, after the RCPT
    # refusals and the local one were already known.
    server = aiosmtpd_server(
        lmtp=True,
        reject_rcpt={"gone@x.test"},
        lmtp_data_replies={"full@x.test": "552 5.2.2 Mailbox full",
                           "busy@x.test": "450 4.2.0 Mailbox busy"},
    )
    rcpts = ("full@x.test", "ok@x.test", "gone@x.test", NON_ASCII, "busy@x.test", "ok@x.test")
    result = attempt(smtp_relay(server.address, StaticLmtpRelay), make_envelope(rcpts=rcpts))
    assert list(result.keys()) == unique_keys(rcpts)
    assert is_error(result["full@x.test"], SmtpPermanentRelayError, "552")
    assert is_reply(result["ok@x.test"], "250")
    assert is_error(result["gone@x.test"], SmtpPermanentRelayError, "550", b"RCPT")
    assert is_error(result[NON_ASCII], SmtpPermanentRelayError, "553", b"RCPT")
    assert is_error(result["busy@x.test"], SmtpTransientRelayError, "450")


def test_lmtp_dovecot_unknown_user_first(dovecot_lmtp: Any) -> None:
    rcpts = ("nobody@x.test", "alice@example.test")
    relay = smtp_relay(dovecot_lmtp.address, StaticLmtpRelay)
    result = attempt(relay, make_envelope(rcpts=rcpts))
    assert list(result.keys()) == list(rcpts)
    assert is_error(result["nobody@x.test"], SmtpPermanentRelayError, "550", b"RCPT")
    assert is_reply(result["alice@example.test"], "250")
    assert len(dovecot_lmtp.messages("alice")) == 1


# -- MX: groups merged -----------------------------------------------------------------


class Router:
    """A socket_creator that sends each MX host name to a local server."""

    def __init__(self, routes: dict[str, tuple[str, int]]) -> None:
        self.routes = routes

    def __call__(self, address: tuple[str, int]) -> socket.socket:
        target = self.routes.get(address[0])
        if target is None:
            raise ConnectionRefusedError(111, "Connection refused")
        return create_connection(target, timeout=5)


def test_mx_merge_across_domains_in_envelope_order(
    dns_server: Any, dns_resolver: Any, fault_server: Any
) -> None:
    tag = uuid.uuid4().hex[:10]
    one, two, null = f"one-{tag}.test", f"two-{tag}.test", f"null-{tag}.test"
    dns_server.add_mx(one, 10, "mx.one.test")
    dns_server.add_mx(two, 10, "mx.two.test")
    dns_server.add_mx(null, 0, ".")
    # one: a, c and the second a (RCPT order within its group); c is deferred.
    server_one = fault_server({"RCPT": [None, "450 4.2.1 Try later", None]})
    server_two = fault_server(reject=[f"b@{two}"])
    relay = MxSmtpRelay(
        socket_creator=Router({"mx.one.test": server_one.address,
                               "mx.two.test": server_two.address}),
        ehlo_as="relay.test", connect_timeout=5.0, command_timeout=5.0,
    )
    rcpts = (f"a@{one}", f"b@{two}", f"c@{one}", "nodomain", f"d@{two}", f"e@{null}", f"a@{one}")
    result = attempt(relay, make_envelope(rcpts=rcpts))
    assert list(result.keys()) == unique_keys(rcpts)
    assert list(result) == [f"a@{one}", f"b@{two}", f"c@{one}", "nodomain", f"d@{two}", f"e@{null}"]
    assert is_reply(result[f"a@{one}"], "250")
    assert is_error(result[f"b@{two}"], SmtpPermanentRelayError, "550", b"RCPT")
    assert is_error(result[f"c@{one}"], SmtpTransientRelayError, "450", b"RCPT")
    assert isinstance(result["nodomain"], NoDomainError)
    assert is_reply(result[f"d@{two}"], "250")
    assert is_error(result[f"e@{null}"], PermanentRelayError, "556")
    assert [len(s.messages) for s in server_one.sessions + server_two.sessions] == [1, 1]


def test_mx_whole_group_failure_keeps_positions(
    dns_server: Any, dns_resolver: Any, fault_server: Any
) -> None:
    # A group that fails as a whole (here: its server refuses MAIL) gives that
    # error to each of its recipients, each at its own position.
    tag = uuid.uuid4().hex[:10]
    good, down = f"good-{tag}.test", f"down-{tag}.test"
    dns_server.add_mx(good, 10, "mx.good.test")
    dns_server.add_mx(down, 10, "mx.down.test")
    good_server = fault_server()
    down_server = fault_server({"MAIL": "451 4.3.2 Not now"})
    relay = MxSmtpRelay(
        socket_creator=Router({"mx.good.test": good_server.address,
                               "mx.down.test": down_server.address}),
        ehlo_as="relay.test", connect_timeout=5.0, command_timeout=5.0,
    )
    rcpts = (f"x@{down}", f"y@{good}", f"z@{down}")
    result = attempt(relay, make_envelope(rcpts=rcpts))
    assert list(result.keys()) == list(rcpts)
    assert is_error(result[f"x@{down}"], TransientRelayError, "451", b"MAIL")
    assert result[f"x@{down}"] is result[f"z@{down}"]
    assert is_reply(result[f"y@{good}"], "250")


# -- pipe ------------------------------------------------------------------------------


@pytest.fixture
def program(tmp_path: Path) -> Callable[[str], str]:
    def make(body: str) -> str:
        path = tmp_path / f"prog-{uuid.uuid4().hex[:6]}.sh"
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return str(path)

    return make


def test_pipe_per_recipient_in_envelope_order(
    program: Callable[[str], str], tmp_path: Path
) -> None:
    log = tmp_path / "delivered"
    prog = program(
        'cat > /dev/null\n'
        'case "$1" in\n'
        '  gone@*) echo "5.1.1 No such user"; exit 1 ;;\n'
        '  later@*) echo "Mailbox busy"; exit 75 ;;\n'
        'esac\n'
        f'echo "$1" >> {log}\n'
    )
    relay = PipeRelay([prog, "{recipient}"], timeout=GUARD_SECONDS)
    rcpts = ("later@x.test", "ok1@x.test", "gone@x.test", "ok2@x.test", "later@x.test")
    with gevent.Timeout(GUARD_SECONDS, AssertionError("attempt hung")):
        result = relay.attempt(make_envelope(rcpts=rcpts), 0)
    assert list(result.keys()) == unique_keys(rcpts)
    assert result["ok1@x.test"] is None and result["ok2@x.test"] is None
    later, gone = result["later@x.test"], result["gone@x.test"]
    assert isinstance(later, TransientRelayError) and later.reply.code == "450"
    assert isinstance(gone, PermanentRelayError) and gone.reply.code == "550"
    assert str(gone) == "5.1.1 No such user"
    assert log.read_text().split() == ["ok1@x.test", "ok2@x.test"]


# -- the pool passes results through -----------------------------------------------------


def test_pool_returns_the_clients_mapping_unchanged() -> None:
    from slimta.relay.pool import RelayPool, RelayPoolClient

    mapping = {"z@x.test": None, "a@x.test": Reply("250", "2.0.0 Ok")}

    class Client(RelayPoolClient):
        def _run(self) -> None:
            result, _ = self.poll()
            assert isinstance(result, AsyncResult)
            result.set(mapping)

    class Pool(RelayPool):
        def add_client(self) -> RelayPoolClient:
            return Client(self.queue)

    pool = Pool()
    result = attempt(pool, make_envelope(rcpts=("z@x.test", "a@x.test")))
    assert result is mapping and list(result) == ["z@x.test", "a@x.test"]
