"""Soak: many messages through a pooled StaticSmtpRelay while the server injects faults.

The fault server gives each connection a script (seeded, so a run is reproducible):
it closes the connection after 1-8 messages with a ``421`` (as real servers do
with idle or busy connections), and about 10% of connections also get one fault
(close, reset, stall, 4xx, 5xx, garbage, oversized line, split reply) at a random
step of a random transaction. The server logs, per message, whether it wrote the
final 2xx. Then the results are reconciled with that log:

* every attempt got exactly one result;
* no message is reported delivered unless the server sent its final 2xx for it;
* every message the server accepted is reported delivered or transiently failed
  (a possible duplicate), never permanently failed;
* every error carries a code and an enhanced status of the same class, and there
  are no more permanent failures than 5xx replies the server sent;
* memory stays flat (RSS growth bounded) and no descriptor or greenlet leaks.

CI runs :data:`DEFAULT_MESSAGES` messages. The full size from the issue::

    SLIMTA_SOAK_MESSAGES=100000 .venv/bin/python -m pytest test/test_soak.py -m soak -s

(``SLIMTA_SOAK_SEED`` changes the fault pattern.) The figures are printed at the end.
"""

from __future__ import annotations

import collections
import os
import random
import re
import time
from typing import Any

import gevent
import gevent.pool
import pytest
from gevent import getcurrent
from support.faultserver import (
    CLOSE,
    GARBAGE,
    OVERSIZED_LINE,
    RESET,
    STALL,
    FaultServer,
    Hangup,
    Split,
)
from support.reliability import (
    assert_no_leaks,
    make_envelope,
    resources,
    settle,
)

from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.relay.smtp.static import StaticSmtpRelay
from slimta.smtp.reply import Reply

pytestmark = [pytest.mark.soak, pytest.mark.usefixtures("no_relay_leaks")]

#: Messages per run in the default (CI) suite.
DEFAULT_MESSAGES = 5000
MESSAGES = int(os.environ.get("SLIMTA_SOAK_MESSAGES", DEFAULT_MESSAGES))
SEED = int(os.environ.get("SLIMTA_SOAK_SEED", "20240607"))
#: Share of connections that get a fault.
FAULT_RATE = 0.10
#: Concurrent connections, and attempts in flight.
POOL_SIZE = 8
IN_FLIGHT = 32
#: Every client timeout; a stall costs one of these.
TIMEOUT = 0.3
#: Allowed RSS growth between the end of the warm-up and the end of the run.
MAX_RSS_GROWTH_BYTES = 24 * 1024 * 1024

DELIVERED, TRANSIENT, PERMANENT, OTHER = 1, 2, 3, 4

_STEP_REPLIES = {
    "BANNER": ("421 4.3.2 Busy", "554 5.3.2 No service"),
    "EHLO": ("451 4.3.0 Later", "554 5.7.1 Go away"),
    "MAIL": ("451 4.3.0 Later", "550 5.7.1 Sender refused"),
    "RCPT": ("450 4.2.0 Busy", "550 5.1.1 No such user"),
    "DATA": ("451 4.3.0 Later", "554 5.5.1 No"),
    "DATA_END": ("452 4.3.1 Full", "554 5.6.0 Rejected"),
    "RSET": ("421 4.3.2 Closing", "500 5.5.2 What?"),
    "IDLE": ("421 4.4.2 Idle", "554 5.3.2 Going away"),
}
_SPLIT_OK = {"BANNER": "220 soak.test ESMTP", "MAIL": "250 2.1.0 Ok",
             "DATA_END": "250 2.0.0 Ok: queued", "RSET": "250 2.0.0 Ok"}
_TOKEN_RE = re.compile(rb"X-Soak-Id: (\d+)")


def _fault(rng: random.Random, step: str) -> Any:
    kinds = ["close", "reset", "stall", "4xx", "5xx", "garbage", "oversized"]
    if step in _SPLIT_OK:
        kinds.append("split")
    kind = rng.choice(kinds)
    four, five = _STEP_REPLIES[step]
    return kind, {"close": CLOSE, "reset": RESET, "stall": STALL, "4xx": four, "5xx": five,
                  "garbage": GARBAGE, "oversized": OVERSIZED_LINE,
                  "split": Split(_SPLIT_OK.get(step, ""))}[kind]


def _scripts(rng: random.Random, count: int) -> tuple[list[dict[str, Any]], int]:
    scripts = []
    faulty = 0
    for _ in range(count):
        per_session = rng.randint(1, 8)
        idle: list[Any] = [None] * (per_session - 1) + [Hangup("421 4.4.2 Enough for now")]
        script: dict[str, Any] = {"IDLE": idle}
        if rng.random() < FAULT_RATE:
            faulty += 1
            step = rng.choice(list(_STEP_REPLIES))
            _, action = _fault(rng, step)
            if step in ("BANNER", "EHLO"):
                script[step] = action
            elif step == "IDLE":
                idle[rng.randrange(per_session)] = action
            else:
                script[step] = [None] * rng.randrange(per_session) + [action]
        scripts.append(script)
    return scripts, faulty


class SoakServer(FaultServer):
    """Logs, per message, whether it wrote the final 2xx; keeps no message data."""

    def __init__(self, messages: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per message, preallocated so that the log does not grow during the run:
        # how many times it arrived, and how many times the final 2xx was written.
        self.received = bytearray(messages)
        self.accepted = bytearray(messages)
        self.replies_5xx = 0
        self.faults_performed: collections.Counter[str] = collections.Counter()
        self._sessions_by_greenlet: dict[Any, Any] = {}
        self._steps: dict[Any, str] = {}

    def _serve(self, conn: Any, session: Any, script: Any, used: Any) -> None:
        me = getcurrent()
        self._sessions_by_greenlet[me] = session
        try:
            super()._serve(conn, session, script, used)
        finally:
            del self._sessions_by_greenlet[me]
            self._steps.pop(me, None)
            # Keep memory flat: a finished session is only a slot in the index.
            self.sessions[session.index] = None  # type: ignore[call-overload]

    def _action(self, script: Any, used: Any, step: str) -> Any:
        self._steps[getcurrent()] = step
        action = super()._action(script, used, step)
        if action is not None and not isinstance(action, Hangup):
            self.faults_performed[step] += 1
        return action

    def _perform(self, conn: Any, action: Any, default: Any) -> None:
        me = getcurrent()
        step = self._steps.get(me)
        token = None
        if step == "DATA_END":
            session = self._sessions_by_greenlet[me]
            # No token: the lone "." a client sends to end a refused transaction.
            match = _TOKEN_RE.search(session.messages[-1])
            if match is not None:
                token = int(match.group(1))
                self.received[token] = min(self.received[token] + 1, 255)
            session.messages.clear()
            session.raw_data.clear()
            session.commands.clear()
        super()._perform(conn, action, default)  # raises when the action ends the session
        text = action.reply if isinstance(action, Split) else action
        if isinstance(text, str) and text.startswith("5"):
            self.replies_5xx += 1
        if token is not None and (action is None or (isinstance(text, str) and text[:1] == "2")):
            self.accepted[token] = min(self.accepted[token] + 1, 255)  # final 2xx written


def _rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_soak_reconciles_with_the_server_log() -> None:
    rng = random.Random(SEED)
    scripts, faulty_sessions = _scripts(rng, MESSAGES + 100)
    server = SoakServer(MESSAGES, sessions=scripts,
                        extensions=["PIPELINING", "8BITMIME", "SIZE 10000000"], nodelay=True)
    server.start()
    started = time.monotonic()
    before = resources(collect=True)
    relay = StaticSmtpRelay(*server.address, pool_size=POOL_SIZE, ehlo_as="soak.test",
                            connect_timeout=TIMEOUT, command_timeout=TIMEOUT,
                            data_timeout=TIMEOUT, idle_timeout=5.0)
    # Per message, preallocated (the bookkeeping must not show up as growth):
    # how many results it got, and the last one's kind.
    result_count = bytearray(MESSAGES)
    kind = bytearray(MESSAGES)  # DELIVERED, TRANSIENT, PERMANENT or OTHER
    misclassified: list[int] = []
    unexpected: list[BaseException] = []
    warm_up = max(MESSAGES // 10, 1)
    rss: dict[str, int] = {}

    def one(token: int) -> None:
        rcpt = f"user{token % 50}@soak.test"
        env = make_envelope(rcpts=[rcpt],
                            headers=f"X-Soak-Id: {token}\r\nSubject: soak\r\n".encode(),
                            body=b"line one\r\n.dot line\r\n" * (1 + token % 7))
        try:
            result = relay.attempt(env, 0)
        except TransientRelayError as exc:
            outcome, reply = TRANSIENT, exc.reply
        except PermanentRelayError as exc:
            outcome, reply = PERMANENT, exc.reply
        except BaseException as exc:  # anything else breaks the contract
            unexpected.append(exc)
            outcome, reply = OTHER, None
        else:
            value = result.get(rcpt) if isinstance(result, dict) else None
            if isinstance(value, Reply) and value.code == "250":
                outcome, reply = DELIVERED, None
            else:
                outcome, reply = OTHER, None
                misclassified.append(token)
        if reply is not None and (
            reply.code is None
            or reply.enhanced_status_code is None
            or reply.enhanced_status_code[0] != reply.code[0]
            or (reply.code[0] == "5") != (outcome == PERMANENT)
        ):
            misclassified.append(token)
        result_count[token] = min(result_count[token] + 1, 255)
        kind[token] = outcome

    try:
        pool = gevent.pool.Pool(IN_FLIGHT)
        for token in range(MESSAGES):
            if token == warm_up:
                pool.join()
                rss["start"] = _rss_bytes()
            pool.spawn(one, token)
        with gevent.Timeout(max(60.0, MESSAGES * 0.01), AssertionError("soak hung")):
            pool.join()
        rss["end"] = _rss_bytes()
    finally:
        relay.kill()
    settle(lambda: all(s is None or s.closed.is_set() for s in server.sessions),
           "the server's sessions to close")
    elapsed = time.monotonic() - started

    # Reconcile.
    assert unexpected == []
    one_result = [t for t in range(MESSAGES) if result_count[t] != 1]
    delivered = [t for t in range(MESSAGES) if kind[t] == DELIVERED]
    transient = [t for t in range(MESSAGES) if kind[t] == TRANSIENT]
    permanent = [t for t in range(MESSAGES) if kind[t] == PERMANENT]
    false_deliveries = [t for t in delivered if server.accepted[t] == 0]
    lost = sorted(one_result + [t for t in permanent if server.accepted[t]])
    duplicates = sum(1 for t in range(MESSAGES) if server.accepted[t] > 1)
    accepted_transient = sum(1 for t in transient if server.accepted[t])
    server.stop()
    assert_no_leaks(before)
    growth = rss["end"] - rss["start"]
    print(
        f"\nsoak: messages={MESSAGES} seed={SEED} seconds={elapsed:.1f} "
        f"sessions={len(server.sessions)} faulty_sessions_scripted={faulty_sessions} "
        f"faults_injected={sum(server.faults_performed.values())} "
        f"by_step={dict(sorted(server.faults_performed.items()))} "
        f"attempts={sum(result_count)} delivered={len(delivered)} "
        f"transient={len(transient)} permanent={len(permanent)} "
        f"server_accepted={sum(1 for t in range(MESSAGES) if server.accepted[t])} "
        f"accepted_but_transient={accepted_transient} duplicates={duplicates} "
        f"lost={len(lost)} false_deliveries={len(false_deliveries)} "
        f"misclassified={len(misclassified)} leaks=0 rss_growth_kib={growth // 1024}"
    )
    assert one_result == []
    assert false_deliveries == []
    assert lost == []
    assert misclassified == []
    assert len(permanent) <= server.replies_5xx
    assert sum(server.faults_performed.values()) > 0
    assert growth < MAX_RSS_GROWTH_BYTES, f"RSS grew by {growth // 1024} KiB"
