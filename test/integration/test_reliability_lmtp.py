"""The LMTP fault matrix: every LMTP step × every fault, through a pooled StaticLmtpRelay.

As in ``test_reliability_smtp.py``: classification, time bound, recovery (the next
attempt is delivered) and no leaked descriptors or greenlets. LMTP adds the
per-recipient replies after the data (RFC 2033): a fault partway through them must
keep the replies already received (a recipient that got its 250 is delivered and
must not be sent again on retry) and fail only the rest, transiently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from support.faultserver import (
    CLOSE,
    GARBAGE,
    OVERSIZED_LINE,
    OVERSIZED_REPLY,
    RESET,
    STALL,
    FaultServer,
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

from slimta.relay.smtp.static import StaticLmtpRelay
from slimta.smtp.reply import Reply

pytestmark = pytest.mark.usefixtures("no_relay_leaks")

STALL_TIMEOUT = 0.5
LONG_TIMEOUT = 5.0
RCPTS = ("one@example.test", "two@example.test")

REPLIES: dict[str, tuple[str, str, str]] = {
    "BANNER": ("421 4.3.2 Busy", "554 5.3.2 No service", "220 split.test LMTP"),
    "LHLO": ("451 4.3.0 Later", "550 5.7.1 Not you",
             "250-fault.test\r\n250-PIPELINING\r\n250 8BITMIME"),
    "MAIL": ("451 4.3.0 Later", "550 5.7.1 Sender refused", "250 2.1.0 Ok"),
    "DATA": ("451 4.3.0 Later", "554 5.5.1 No", ""),
    "DATA_END": ("452 4.2.2 Mailbox full", "552 5.2.2 Over quota",
                 "250 2.0.0 one delivered\r\n250 2.0.0 two delivered"),
}
FAULTS = ["close", "reset", "stall", "4xx", "5xx", "garbage", "oversized_line",
          "oversized_reply", "split"]


def _action(step: str, fault: str) -> Any:
    four, five, normal = REPLIES[step]
    if step == "DATA_END" and fault in ("4xx", "5xx"):
        # One reply per recipient: both refused alike.
        text = four if fault == "4xx" else five
        return f"{text}\r\n{text}"
    return {"close": CLOSE, "reset": RESET, "stall": STALL, "4xx": four, "5xx": five,
            "garbage": GARBAGE, "oversized_line": OVERSIZED_LINE,
            "oversized_reply": OVERSIZED_REPLY, "split": Split(normal)}[fault]


@pytest.fixture
def relays() -> Iterator[list[StaticLmtpRelay]]:
    made: list[StaticLmtpRelay] = []
    yield made
    for relay in made:
        relay.kill()


def _relay(relays: list[StaticLmtpRelay], address: Any, timeout: float,
           **options: Any) -> StaticLmtpRelay:
    relay = StaticLmtpRelay(address[0], address[1], pool_size=1, ehlo_as="relay.test",
                            connect_timeout=timeout, command_timeout=timeout,
                            data_timeout=timeout, **options)
    relays.append(relay)
    return relay


def _all_delivered(outcome: Outcome) -> None:
    assert outcome.error is None, outcome.error
    assert set(outcome.result) == set(RCPTS)
    for reply in outcome.result.values():
        assert isinstance(reply, Reply) and reply.code == "250", reply


def _finish(relay: StaticLmtpRelay, server: FaultServer, timeout: float, before: Any) -> None:
    with gevent.Timeout(timeout + SLACK_SECONDS, AssertionError("relay client hung")):
        while relay.pool:
            gevent.joinall(list(relay.pool))
    server.wait_closed()
    assert_no_leaks(before)


def _cases() -> Iterator[Any]:
    for step in REPLIES:
        for fault in FAULTS:
            if step == "DATA" and fault == "split":
                continue  # the fault server reads a message only after its own 354
            yield pytest.param(step, fault, id=f"{step}-{fault}")


@pytest.mark.parametrize("step, fault", list(_cases()))
def test_fault_at_step(
    fast_fault_server: Callable[..., FaultServer], relays: list[StaticLmtpRelay],
    step: str, fault: str,
) -> None:
    server = fast_fault_server(sessions=[{step: _action(step, fault)}], lmtp=True,
                               extensions=["PIPELINING", "8BITMIME"])
    timeout = STALL_TIMEOUT if fault == "stall" else LONG_TIMEOUT
    before = resources()
    relay = _relay(relays, server.address, timeout)
    first = timed_attempt(relay, make_envelope(rcpts=RCPTS))
    four, five, _ = REPLIES[step]
    if fault == "split":
        _all_delivered(first)
    elif fault in ("4xx", "5xx"):
        text = four if fault == "4xx" else five
        code, esc = text.split()[:2]
        if step == "DATA_END":  # one outcome per recipient, each classified by its reply
            assert first.error is None
            for rcpt in RCPTS:
                assert_relay_error(first.result[rcpt], fault == "5xx", code, esc)
        else:
            assert_relay_error(first.error, fault == "5xx", code, esc)
    else:
        # Before any per-recipient reply arrived, the whole message fails.
        esc = "4.4.2" if fault == "stall" else "4.3.0"
        assert_relay_error(first.error, False, "421", esc)
    assert first.elapsed < timeout + (SLACK_SECONDS if fault == "stall" else 0)
    second = timed_attempt(relay, make_envelope(rcpts=RCPTS))
    _all_delivered(second)
    _finish(relay, server, timeout, before)


@pytest.mark.parametrize(
    "fault", ["close", "reset", "stall", "garbage", "oversized_line"]
)
def test_fault_between_per_recipient_replies(
    fast_fault_server: Callable[..., FaultServer], relays: list[StaticLmtpRelay], fault: str
) -> None:
    # The first recipient's reply arrives, then the fault: it keeps its delivery
    # (so a retry sends it no duplicate), only the second fails, transiently.
    junk = {"close": b"", "reset": b"", "stall": b"", "garbage": GARBAGE,
            "oversized_line": OVERSIZED_LINE}[fault]
    first_reply = b"250 2.0.0 one delivered\r\n"
    tail = {"close": CLOSE, "reset": RESET, "stall": STALL}.get(fault)
    # The first reply is written raw; then either junk follows it at once, or the
    # fault comes at the very next step the server reaches (IDLE).
    script: dict[str, Any] = (
        {"DATA_END": first_reply + junk} if tail is None
        else {"DATA_END": first_reply, "IDLE": tail}
    )
    server = fast_fault_server(sessions=[script], lmtp=True, extensions=["PIPELINING"])
    timeout = STALL_TIMEOUT if fault == "stall" else LONG_TIMEOUT
    before = resources()
    relay = _relay(relays, server.address, timeout)
    first = timed_attempt(relay, make_envelope(rcpts=RCPTS))
    assert first.error is None, first.error
    one, two = (first.result[r] for r in RCPTS)
    assert isinstance(one, Reply) and str(one) == "250 2.0.0 one delivered"
    esc = "4.4.2" if fault == "stall" else "4.3.0"
    assert_relay_error(two, False, "421", esc)
    assert first.elapsed < timeout + (SLACK_SECONDS if fault == "stall" else 0)
    _all_delivered(timed_attempt(relay, make_envelope(rcpts=RCPTS)))
    _finish(relay, server, timeout, before)


@pytest.mark.parametrize("fault", ["close", "reset", "4xx", "garbage", "split", "stall"])
def test_fault_at_rset_after_partial_failure(
    fast_fault_server: Callable[..., FaultServer], relays: list[StaticLmtpRelay], fault: str
) -> None:
    # One recipient refused after the data: RSET follows (Compat) and misbehaves.
    rset = {"close": CLOSE, "reset": RESET, "4xx": "421 4.3.2 Closing", "garbage": GARBAGE,
            "split": Split("250 2.0.0 Ok"), "stall": STALL}[fault]
    server = fast_fault_server(
        sessions=[{"DATA_END": ["250 2.0.0 one\r\n550 5.2.1 two disabled"], "RSET": rset}],
        lmtp=True, extensions=["PIPELINING"],
    )
    timeout = STALL_TIMEOUT if fault == "stall" else LONG_TIMEOUT
    before = resources()
    relay = _relay(relays, server.address, timeout, idle_timeout=LONG_TIMEOUT)
    first = timed_attempt(relay, make_envelope(rcpts=RCPTS))
    assert isinstance(first.result[RCPTS[0]], Reply)
    assert_relay_error(first.result[RCPTS[1]], True, "550", "5.2.1")
    second = timed_attempt(relay, make_envelope(rcpts=RCPTS))
    _all_delivered(second)
    assert second.elapsed < timeout + SLACK_SECONDS
    relay.kill()
    server.wait_closed()
    assert_no_leaks(before)
