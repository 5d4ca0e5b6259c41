"""The SMTP fault matrix: every protocol step × every fault, through a pooled StaticSmtpRelay.

Each case runs two attempts through one relay against the scriptable fault server
(``support.faultserver``), whose first connection misbehaves at one step and whose
later connections behave. For every case it asserts:

* the classification of the faulty attempt (transient or permanent, reply code,
  enhanced status code and, where it is unambiguous, the command named);
* that the attempt returned within its timeout: a stall must end within the
  configured timeout plus :data:`~support.reliability.SLACK_SECONDS`, any other
  fault well before a (long) timeout could have fired;
* that the pool recovers: the next attempt through the same relay is delivered;
* that nothing leaks: open file descriptors and live greenlets return to what
  they were before the relay was created.

``test_slimta_relay_smtp_client.py`` already pins the exact failure→reply map for
many single cases; this file is the systematic cross product with those extra checks.
Cases that do not exist in the protocol are left out and listed in :data:`NOT_APPLICABLE`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.socket
import pytest
from gevent.event import Event
from support.faultserver import (
    CLOSE,
    GARBAGE,
    OVERSIZED_LINE,
    OVERSIZED_REPLY,
    RESET,
    STALL,
    FaultServer,
    Hangup,
    Split,
)
from support.reliability import (
    SLACK_SECONDS,
    Outcome,
    assert_no_leaks,
    assert_relay_error,
    make_envelope,
    resources,
    timed_attempt,
)

from slimta.relay.smtp.client import SmtpRelayClient
from slimta.relay.smtp.static import StaticSmtpRelay
from slimta.smtp.reply import Reply

pytestmark = pytest.mark.usefixtures("no_relay_leaks")

#: Every timeout when the fault is a stall: the attempt must end soon after it.
STALL_TIMEOUT = 0.5
#: Every timeout for the other faults: they must end without waiting for one.
LONG_TIMEOUT = 5.0

FAULTS = ["close", "reset", "stall", "4xx", "5xx", "garbage", "oversized_line",
          "oversized_reply", "split"]

#: The replies a step answers with for the ``4xx``/``5xx`` faults, and the normal
#: reply used for ``split`` (sent one byte per TCP segment).
REPLIES: dict[str, tuple[str, str, str]] = {
    "BANNER": ("421 4.3.2 Service not available", "554 5.3.2 No service here",
               "220 split.test ESMTP"),
    "EHLO": ("451 4.3.0 Try again", "554 5.7.1 Go away",
             "250-fault.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10485760"),
    "STARTTLS": ("454 4.7.0 TLS not available now", "554 5.7.0 No TLS for you", ""),
    "AUTH": ("454 4.7.0 Temporary authentication failure", "535 5.7.8 Bad credentials",
             "235 2.7.0 Authentication successful"),
    "MAIL": ("451 4.3.0 Sender check deferred", "550 5.7.1 Sender refused",
             "250 2.1.0 Ok"),
    "RCPT": ("450 4.2.0 Mailbox busy", "550 5.1.1 No such user", "250 2.1.5 Ok"),
    "DATA": ("451 4.3.0 Not now", "554 5.5.1 No valid recipients", ""),
    "DATA_END": ("452 4.3.1 Insufficient storage", "554 5.6.0 Message rejected",
                 "250 2.0.0 Ok: queued as SPLIT"),
    "RSET": ("421 4.3.2 Closing", "500 5.5.2 What?", "250 2.0.0 Ok"),
    "QUIT": ("421 4.3.2 Closing", "500 5.5.2 What?", "221 2.0.0 Bye"),
}

#: (step, fault) pairs that cannot happen, and why.
NOT_APPLICABLE = {
    ("STARTTLS", "split"): "the handshake follows the 220 at once; the server cannot split it",
    ("DATA", "split"): "the fault server reads the message only after a 354 it wrote itself",
    ("RCPT", "split"): "the fault server counts a recipient only after a 2xx it wrote itself",
}

_STEP_COMMAND = {
    "BANNER": b"[BANNER]",
    "EHLO": b"EHLO",
    "STARTTLS": b"STARTTLS",
    "AUTH": b"AUTH",
    "MAIL": b"MAIL",
    "RCPT": b"RCPT",
    "DATA": b"DATA",
    "DATA_END": b"[SEND_DATA]",
}


def _action(step: str, fault: str) -> Any:
    four, five, normal = REPLIES[step]
    return {
        "close": CLOSE,
        "reset": RESET,
        "stall": STALL,
        "4xx": four,
        "5xx": five,
        "garbage": GARBAGE,
        "oversized_line": OVERSIZED_LINE,
        "oversized_reply": OVERSIZED_REPLY,
        "split": Split(normal),
    }[fault]


@dataclass
class Case:
    """One cell of the matrix: how to set it up and what the faulty attempt must give."""

    step: str
    fault: str
    pipelining: bool = True
    server_options: dict[str, Any] = field(default_factory=dict)
    relay_options: dict[str, Any] = field(default_factory=dict)

    @property
    def timeout(self) -> float:
        return STALL_TIMEOUT if self.fault == "stall" else LONG_TIMEOUT


def _expect_failure(case: Case, outcome: Outcome) -> None:
    """The classification of the faulty attempt: transient or permanent, with a reply code
    and an enhanced status code of the same class (doc/semantics.rst)."""
    step, fault = case.step, case.fault
    four, five, _ = REPLIES[step]
    # Pipelined MAIL/RCPT/DATA are read back together while the stage is DATA.
    named = case.pipelining or step not in ("MAIL", "RCPT")
    command = _STEP_COMMAND[step] if named else None
    if step == "STARTTLS":  # tls_required: every STARTTLS failure is transient 421 4.7.0
        esc = "4.4.2" if fault == "stall" else "4.7.0"
        assert_relay_error(outcome.error, False, "421", esc, b"STARTTLS")
        return
    if fault == "stall":
        stalled = command if not (case.pipelining and step in ("MAIL", "RCPT")) else b"DATA"
        assert_relay_error(outcome.error, False, "421", "4.4.2", stalled)
    elif fault in ("close", "reset"):
        assert_relay_error(outcome.error, False, "421", "4.3.0")
    elif fault in ("garbage", "oversized_line", "oversized_reply"):
        error = assert_relay_error(outcome.error, False, "421", "4.3.0")
        assert (error.reply.raw_message or "").startswith("Bad SMTP reply"), error.reply
    else:
        text = four if fault == "4xx" else five
        code, esc = text.split()[:2]
        assert_relay_error(outcome.error, fault == "5xx", code, esc,
                           b"MAIL" if step == "MAIL" else None)
        assert outcome.error is not None
        assert outcome.error.reply.raw_message is not None
        assert outcome.error.reply.raw_message.endswith(text.split(" ", 2)[2])


def _delivered(outcome: Outcome, rcpt: str = "rcpt@example.test") -> Reply:
    assert outcome.error is None, f"expected delivery, got {outcome.error!r}"
    reply = outcome.result[rcpt]
    assert isinstance(reply, Reply) and reply.code == "250", reply
    return reply


@pytest.fixture
def relays() -> Iterator[list[StaticSmtpRelay]]:
    made: list[StaticSmtpRelay] = []
    yield made
    for relay in made:
        relay.kill()


def _relay(relays: list[StaticSmtpRelay], address: Any, timeout: float,
           **options: Any) -> StaticSmtpRelay:
    options.setdefault("ehlo_as", "relay.test")
    options.setdefault("pool_size", 1)
    relay = StaticSmtpRelay(address[0], address[1], connect_timeout=timeout,
                            command_timeout=timeout, data_timeout=timeout, **options)
    relays.append(relay)
    return relay


def _wait_clients_gone(relay: StaticSmtpRelay, timeout: float) -> None:
    """Every client greenlet ends within its last (QUIT) timeout plus slack."""
    with gevent.Timeout(timeout + SLACK_SECONDS, AssertionError("relay client hung")):
        while relay.pool:
            gevent.joinall(list(relay.pool))


def _wait_until_server_spoke(relay: StaticSmtpRelay) -> None:
    """Block until the idle client's socket is readable: the server's bytes (or FIN) are there.

    Loopback delivery is asynchronous, so without this the client's zero-wait check
    could run before they arrive (that race is tested with :class:`_NoPeek`).
    """
    (client,) = relay.pool
    assert client.socket is not None and client.client is not None
    if client.client.has_buffered_data():
        return  # it came with the last reply
    gevent.socket.wait_read(client.socket.fileno(), timeout=LONG_TIMEOUT,
                            timeout_exc=AssertionError("the server never spoke"))


def _cases() -> Iterator[Any]:
    for step in ("BANNER", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "DATA_END"):
        for fault in FAULTS:
            if (step, fault) in NOT_APPLICABLE:
                continue
            yield pytest.param(step, fault, True, id=f"{step}-{fault}")
            if step in ("MAIL", "RCPT", "DATA", "DATA_END"):
                yield pytest.param(step, fault, False, id=f"{step}-{fault}-nopipelining")


def _setup(step: str, pipelining: bool, tls_cert: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    extensions = ["8BITMIME", "SIZE 10485760"] + (["PIPELINING"] if pipelining else [])
    server: dict[str, Any] = {"extensions": extensions}
    relay: dict[str, Any] = {}
    if step == "STARTTLS":
        server["extensions"] = [*extensions, "STARTTLS"]
        server["tls_context"] = tls_cert.gevent_server_context()
        relay.update(tls_required=True, context=tls_cert.client_context())
    if step == "AUTH":
        server["extensions"] = [*extensions, "AUTH PLAIN LOGIN"]
        relay.update(credentials=("user", "secret"), allow_insecure_auth=True)
    return server, relay


@pytest.mark.parametrize("step, fault, pipelining", list(_cases()))
def test_fault_at_step(
    fast_fault_server: Callable[..., FaultServer],
    relays: list[StaticSmtpRelay],
    tls_cert: Any,
    step: str,
    fault: str,
    pipelining: bool,
) -> None:
    case = Case(step, fault, pipelining)
    server_options, relay_options = _setup(step, pipelining, tls_cert)
    server = fast_fault_server(sessions=[{step: _action(step, fault)}], **server_options)
    before = resources()
    relay = _relay(relays, server.address, case.timeout, **relay_options)

    first = timed_attempt(relay, make_envelope())
    if fault == "split":
        _delivered(first)
    else:
        _expect_failure(case, first)
        # Never a partial delivery: the body never reached the server.
        assert all(b"Hello there" not in m for m in server.sessions[0].messages) or (
            step == "DATA_END"
        )
    assert first.elapsed < case.timeout + (SLACK_SECONDS if fault == "stall" else 0), (
        f"attempt took {first.elapsed:.2f}s"
    )

    second = timed_attempt(relay, make_envelope())
    _delivered(second)
    assert second.elapsed < LONG_TIMEOUT
    assert any(b"Hello there" in m for m in server.sessions[-1].messages)

    _wait_clients_gone(relay, case.timeout)
    server.wait_closed()
    assert_no_leaks(before)


# -- connect ----------------------------------------------------------------------------


class _Connector:
    """A socket_creator whose first call misbehaves; later calls connect for real."""

    def __init__(self, target: tuple[str, int], fault: str) -> None:
        self.target = target
        self.fault = fault
        self.calls = 0
        self.never = Event()

    def __call__(self, address: tuple[str, int]) -> socket.socket:
        self.calls += 1
        if self.calls == 1:
            if self.fault == "refused":
                raise ConnectionRefusedError(111, "Connection refused")
            if self.fault == "reset":
                raise ConnectionResetError(104, "Connection reset by peer")
            if self.fault == "stall":
                self.never.wait()  # like a SYN that is never answered
            if self.fault == "unexpected":
                raise RuntimeError("resolver exploded")
        return gevent.socket.create_connection(self.target)


@pytest.mark.parametrize(
    "fault, code, esc",
    [("refused", "451", "4.3.0"), ("reset", "451", "4.3.0"), ("stall", "421", "4.4.2"),
     ("unexpected", "451", "4.3.0")],
)
def test_fault_at_connect(
    fast_fault_server: Callable[..., FaultServer], relays: list[StaticSmtpRelay],
    fault: str, code: str, esc: str,
) -> None:
    server = fast_fault_server()
    timeout = STALL_TIMEOUT if fault == "stall" else LONG_TIMEOUT
    before = resources()
    connector = _Connector(server.address, fault)
    relay = _relay(relays, ("mx.test", 25), timeout, socket_creator=connector)
    first = timed_attempt(relay, make_envelope())
    assert_relay_error(first.error, False, code, esc, b"[CONNECT]")
    assert first.elapsed < timeout + (SLACK_SECONDS if fault == "stall" else 0)
    assert server.sessions == []  # nothing reached the server
    _delivered(timed_attempt(relay, make_envelope()))
    _wait_clients_gone(relay, timeout)
    server.wait_closed()
    assert_no_leaks(before)


def test_connection_refused_for_real(relays: list[StaticSmtpRelay]) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    before = resources()
    relay = _relay(relays, ("127.0.0.1", port), LONG_TIMEOUT)
    outcome = timed_attempt(relay, make_envelope())
    assert_relay_error(outcome.error, False, "451", "4.3.0", b"[CONNECT]")
    assert outcome.elapsed < LONG_TIMEOUT
    _wait_clients_gone(relay, LONG_TIMEOUT)
    assert_no_leaks(before)


# -- message data -------------------------------------------------------------------------


#: What the server does once the first message bytes arrived after its 354. The
#: refusals are early (RFC 5321 allows none, some servers do it): the client reads
#: them as the final reply once its data is written.
DATA_FAULTS = {
    "close": CLOSE,
    "reset": RESET,
    "stall": STALL,
    "4xx": "451 4.3.0 Aborted while receiving",
    "5xx": "554 5.3.4 Message too big for system",
    "garbage": GARBAGE,
    "oversized_line": OVERSIZED_LINE,
}


#: Large enough that the fault arrives while the client is still writing.
BIG_BODY = (b"0123456789abcdef" * 63 + b"\r\n") * 2048  # 2 MiB


@pytest.mark.parametrize("fault", list(DATA_FAULTS))
def test_fault_during_message_data(
    fault_server: Callable[..., FaultServer], relays: list[StaticSmtpRelay], fault: str
) -> None:
    # The first connection misbehaves while the message is being sent; the next behaves.
    server = fault_server(sessions=[{"DATA_BODY": DATA_FAULTS[fault]}],
                          extensions=["PIPELINING", "8BITMIME"])
    timeout = STALL_TIMEOUT if fault == "stall" else LONG_TIMEOUT
    before = resources()
    relay = _relay(relays, server.address, timeout)
    first = timed_attempt(relay, make_envelope(body=BIG_BODY))
    if fault == "stall":
        assert_relay_error(first.error, False, "421", "4.4.2", b"[SEND_DATA]")
        server.release.set()
    elif fault == "4xx":
        assert_relay_error(first.error, False, "451", "4.3.0")
    elif fault == "5xx":
        assert_relay_error(first.error, True, "554", "5.3.4")
    elif fault in ("garbage", "oversized_line"):
        error = assert_relay_error(first.error, False, "421", "4.3.0")
        assert (error.reply.raw_message or "").startswith("Bad SMTP reply")
    else:
        assert_relay_error(first.error, False, "421", "4.3.0")
    assert first.elapsed < timeout + (SLACK_SECONDS if fault == "stall" else 0)
    assert server.messages == []

    second = timed_attempt(relay, make_envelope())
    _delivered(second)
    assert len(server.messages) == 1
    _wait_clients_gone(relay, timeout)
    server.wait_closed(1, LONG_TIMEOUT)
    assert_no_leaks(before)


# -- RSET and QUIT: after the result is known ------------------------------------------------


@pytest.mark.parametrize("fault", [f for f in FAULTS])
def test_fault_at_rset(
    fast_fault_server: Callable[..., FaultServer], relays: list[StaticSmtpRelay], fault: str
) -> None:
    # The first message is refused at RCPT; the RSET that follows misbehaves. The
    # refusal keeps its own (permanent) classification, and the pool moves on.
    server = fast_fault_server(sessions=[{"RCPT": ["550 5.1.1 No such user"],
                                     "RSET": _action("RSET", fault)}])
    timeout = STALL_TIMEOUT if fault == "stall" else LONG_TIMEOUT
    before = resources()
    relay = _relay(relays, server.address, timeout, idle_timeout=LONG_TIMEOUT)
    first = timed_attempt(relay, make_envelope())
    assert_relay_error(first.error, True, "550", "5.1.1", b"RCPT")
    assert first.elapsed < LONG_TIMEOUT  # the result does not wait for the RSET
    second = timed_attempt(relay, make_envelope())
    _delivered(second)
    assert second.elapsed < timeout + SLACK_SECONDS
    verbs = server.sessions[0].verbs()
    assert verbs[:5] == [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"RSET"]
    if fault in ("split",):
        assert len(server.sessions) == 1  # a good RSET keeps the connection
    else:
        assert len(server.sessions) == 2  # a bad one gives it up
        assert b"MAIL" not in verbs[5:]
    relay.kill()
    server.wait_closed()
    assert_no_leaks(before)


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_at_quit(
    fast_fault_server: Callable[..., FaultServer], relays: list[StaticSmtpRelay], fault: str
) -> None:
    server = fast_fault_server(sessions=[{"QUIT": _action("QUIT", fault)}])
    timeout = STALL_TIMEOUT if fault == "stall" else LONG_TIMEOUT
    before = resources()
    relay = _relay(relays, server.address, timeout)
    first = timed_attempt(relay, make_envelope())
    _delivered(first)  # QUIT comes after the result: whatever it gets, delivered stays
    assert first.elapsed < LONG_TIMEOUT
    _wait_clients_gone(relay, timeout)  # the client gives up on QUIT in time
    second = timed_attempt(relay, make_envelope())
    _delivered(second)
    assert [len(s.messages) for s in server.sessions] == [1, 1]
    _wait_clients_gone(relay, timeout)
    server.wait_closed()
    assert_no_leaks(before)


# -- an idle connection closed (or spoken on) by the server --------------------------------


@pytest.mark.parametrize(
    "idle",
    [
        pytest.param(CLOSE, id="close"),
        pytest.param(RESET, id="reset"),
        pytest.param(Hangup("421 4.4.2 Idle timeout"), id="421-then-close"),
        pytest.param("421 4.4.2 Idle timeout", id="421-left-open"),
        pytest.param("554 5.3.2 Going away", id="5xx-left-open"),
        pytest.param(GARBAGE, id="garbage"),
        pytest.param(OVERSIZED_LINE, id="oversized_line"),
        pytest.param(Split("421 4.4.2 Idle timeout"), id="split"),
    ],
)
def test_idle_connection_closed_by_server(
    fast_fault_server: Callable[..., FaultServer], relays: list[StaticSmtpRelay], idle: Any
) -> None:
    server = fast_fault_server(sessions=[{"IDLE": idle}])
    before = resources()
    relay = _relay(relays, server.address, LONG_TIMEOUT, idle_timeout=LONG_TIMEOUT)
    _delivered(timed_attempt(relay, make_envelope()))
    _wait_until_server_spoke(relay)
    second = timed_attempt(relay, make_envelope())
    # Transparent: the reused connection is given up and the message goes on a new one,
    # delivered once.
    _delivered(second)
    assert second.elapsed < LONG_TIMEOUT
    assert [len(s.messages) for s in server.sessions] == [1, 1]
    relay.kill()
    server.wait_closed()
    assert_no_leaks(before)


class _NoPeek(SmtpRelayClient):
    """Never sees an unsolicited reply before MAIL: the race where it arrives just after."""

    def _server_has_spoken(self) -> bool:
        return False


@pytest.mark.parametrize(
    "idle, delivered",
    [
        pytest.param("421 4.4.2 Idle timeout", True, id="421-read-as-mail-reply"),
        pytest.param(GARBAGE, False, id="garbage-read-as-mail-reply"),
        pytest.param(RESET, True, id="reset-seen-at-mail"),
    ],
)
def test_idle_fault_noticed_only_at_mail(
    fast_fault_server: Callable[..., FaultServer], relays: list[StaticSmtpRelay], idle: Any,
    delivered: bool,
) -> None:
    server = fast_fault_server(sessions=[{"IDLE": idle}])
    before = resources()
    relay = _relay(relays, server.address, LONG_TIMEOUT, idle_timeout=LONG_TIMEOUT,
                   client_class=_NoPeek)
    _delivered(timed_attempt(relay, make_envelope()))
    _wait_until_server_spoke(relay)
    second = timed_attempt(relay, make_envelope())
    if delivered:  # a 421 or a lost connection before the server saw anything: requeued
        _delivered(second)
    else:  # garbage: the stream cannot be trusted; transient, never delivered twice
        assert_relay_error(second.error, False, "421", "4.3.0")
        _delivered(timed_attempt(relay, make_envelope()))
    assert second.elapsed < LONG_TIMEOUT
    assert [len(s.messages) for s in server.sessions] == [1, 1]
    relay.kill()
    server.wait_closed()
    assert_no_leaks(before)


def test_idle_connection_that_stops_answering(
    fast_fault_server: Callable[..., FaultServer], relays: list[StaticSmtpRelay]
) -> None:
    # A stall on a reused connection cannot be told from a slow server: the message
    # fails transiently within the command timeout, and the next one gets a new connection.
    server = fast_fault_server(sessions=[{"IDLE": STALL}])
    before = resources()
    relay = _relay(relays, server.address, STALL_TIMEOUT, idle_timeout=LONG_TIMEOUT)
    _delivered(timed_attempt(relay, make_envelope()))
    second = timed_attempt(relay, make_envelope())
    assert_relay_error(second.error, False, "421", "4.4.2")
    assert second.elapsed < STALL_TIMEOUT + SLACK_SECONDS
    _delivered(timed_attempt(relay, make_envelope()))
    assert [len(s.messages) for s in server.sessions] == [1, 1]
    relay.kill()
    server.wait_closed()
    assert_no_leaks(before)


# -- many connections at once ----------------------------------------------------------------


def test_concurrent_faults_resolve_every_request(
    fast_fault_server: Callable[..., FaultServer], relays: list[StaticSmtpRelay]
) -> None:
    # Eight connections, each failing at a different step, at the same time: every
    # attempt gets exactly one result, within the stall timeout, and nothing leaks.
    scripts = [{"BANNER": CLOSE}, {"EHLO": RESET}, {"MAIL": STALL}, {"RCPT": GARBAGE},
               {"DATA": "451 4.3.0 Later"}, {"DATA_END": OVERSIZED_LINE},
               {"DATA_END": "554 5.6.0 No"}, {}]
    server = fast_fault_server(sessions=scripts)
    before = resources()
    relay = _relay(relays, server.address, STALL_TIMEOUT, pool_size=len(scripts))
    jobs = [gevent.spawn(timed_attempt, relay, make_envelope()) for _ in scripts]
    gevent.joinall(jobs, raise_error=True)
    outcomes = [job.value for job in jobs]
    assert all(o.elapsed < STALL_TIMEOUT + SLACK_SECONDS for o in outcomes)
    delivered = [o for o in outcomes if o.delivered]
    permanent = [o for o in outcomes if not o.delivered and o.error.reply.code[0] == "5"]
    assert len(delivered) == 1 and len(permanent) == 1
    for outcome in outcomes:
        if not outcome.delivered:
            assert_relay_error(outcome.error, outcome.error.reply.code[0] == "5")
    _delivered(timed_attempt(relay, make_envelope()))
    _wait_clients_gone(relay, STALL_TIMEOUT)
    server.wait_closed()
    assert_no_leaks(before)
