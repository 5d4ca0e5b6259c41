"""Pipe relay faults: a delivery program that crashes, is killed by a signal, floods
its output, never exits, or leaves a grandchild holding its pipes.

For each: the attempt is resolved and classified (the pipe relay's rule: transient unless the
program says ``5.x.x``; a signal is transient), it ends within ``timeout`` plus slack,
the next attempt is delivered, and afterwards no child is left running or as a
zombie and no descriptor or greenlet leaks.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent.subprocess
import pytest
from support.reliability import (
    SLACK_SECONDS,
    assert_no_leaks,
    assert_relay_error,
    make_envelope,
    resources,
    settle,
    timed_attempt,
)

from slimta.relay._process import OUTPUT_GRACE_SECONDS
from slimta.relay.pipe import MAX_CAPTURE_BYTES, DovecotLdaRelay, MaildropRelay, PipeRelay

TIMEOUT = 0.6
BIG_BODY = b"x" * 1000 + b"\r\n"


@pytest.fixture
def script(tmp_path: Path) -> Callable[[str], str]:
    counter = iter(range(1000))

    def make(body: str) -> str:
        path = tmp_path / f"prog{next(counter)}.sh"
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return str(path)

    return make


def _children() -> dict[int, str]:
    """Our direct children: pid → state letter (``Z`` for a zombie)."""
    me = os.getpid()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found[int(entry)] = fields[0]
    return found


@pytest.fixture
def clean_process() -> Any:
    # gevent's child watcher (and its descriptors) appears with the first child.
    gevent.subprocess.Popen(["true"]).wait()
    before = resources()
    children = _children()
    yield before
    settle(lambda: _children().keys() <= children.keys(), "no child left running or zombie")
    assert_no_leaks(before)


CRASHES = {
    # name: (script body, expected code, esc)
    "segfault": ("cat >/dev/null; kill -SEGV $$\n", "450", "4.0.0"),
    "sigkill": ("cat >/dev/null; kill -KILL $$\n", "450", "4.0.0"),
    "sigterm_early": ("kill -TERM $$\n", "450", "4.0.0"),
    "exit_1_silent": ("cat >/dev/null; exit 1\n", "450", "4.0.0"),
    "exit_permanent_text": ("cat >/dev/null; echo '5.1.1 no such mailbox'; exit 67\n",
                            "550", "5.1.1"),
    "exit_after_partial_read": ("head -c 10 >/dev/null; exit 3\n", "450", "4.0.0"),
    "stdout_flood_then_fail": (
        "cat >/dev/null; head -c 5000000 /dev/zero | tr '\\0' o; exit 1\n", "450", "4.0.0"),
    "stderr_flood_then_fail": (
        "head -c 5000000 /dev/zero | tr '\\0' e >&2; cat >/dev/null; exit 1\n", "450",
        "4.0.0"),
}


@pytest.mark.parametrize("crash", list(CRASHES))
def test_program_failure_is_classified_and_bounded(
    script: Callable[[str], str], clean_process: Any, crash: str
) -> None:
    body, code, esc = CRASHES[crash]
    bad = PipeRelay([script(body)], timeout=5.0)
    outcome = timed_attempt(bad, make_envelope(body=BIG_BODY * 2000))
    assert outcome.error is None  # per-recipient mode: the error is the entry
    error = assert_relay_error(outcome.result["rcpt@example.test"], code[0] == "5", code, esc)
    assert len(str(error)) <= MAX_CAPTURE_BYTES
    assert outcome.elapsed < 5.0
    good = PipeRelay([script("cat >/dev/null\n")], timeout=5.0)
    assert timed_attempt(good, make_envelope()).result == {"rcpt@example.test": None}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("exec sleep 1000\n", id="never-exits"),
        pytest.param("trap '' TERM; cat >/dev/null; while :; do :; done\n", id="ignores-term-busy"),
        pytest.param("(sleep 1000 &) ; cat >/dev/null; exit 0\n", id="grandchild-holds-pipes"),
        pytest.param("sleep 1000 </dev/null >/dev/null 2>&1 & exec sleep 1000\n",
                     id="background-child"),
    ],
)
def test_program_that_never_finishes_is_killed_and_reaped(
    script: Callable[[str], str], clean_process: Any, body: str
) -> None:
    relay = PipeRelay([script(body)], timeout=TIMEOUT)
    outcome = timed_attempt(relay, make_envelope(rcpts=["a@x.test", "b@x.test"]))
    for rcpt in ("a@x.test", "b@x.test"):
        assert_relay_error(outcome.result[rcpt], False, "450", "4.4.2")
    assert outcome.elapsed < TIMEOUT + SLACK_SECONDS, f"{outcome.elapsed:.2f}s"
    good = PipeRelay([script("cat >/dev/null\n")], timeout=5.0)
    assert timed_attempt(good, make_envelope()).result == {"rcpt@example.test": None}


def test_huge_output_on_success_is_bounded(
    script: Callable[[str], str], clean_process: Any
) -> None:
    prog = script("cat >/dev/null; head -c 20000000 /dev/zero; head -c 20000000 /dev/zero >&2\n")
    outcome = timed_attempt(PipeRelay([prog], timeout=10.0), make_envelope())
    assert outcome.result == {"rcpt@example.test": None}


class _Single(PipeRelay):
    per_recipient = False


@pytest.mark.parametrize(
    "relay_class, body, code, esc",
    [
        (MaildropRelay, "cat >/dev/null; kill -SEGV $$\n", "450", "4.3.0"),
        (MaildropRelay, "cat >/dev/null; echo 'maildrop: quota'; exit 75\n", "450", "4.0.0"),
        (MaildropRelay, "exec sleep 1000\n", "450", "4.4.2"),
        (DovecotLdaRelay, "cat >/dev/null; kill -KILL $$\n", "450", "4.3.0"),
        (DovecotLdaRelay, "exec sleep 1000\n", "450", "4.4.2"),
        (_Single, "cat >/dev/null; kill -TERM $$\n", "450", "4.0.0"),
    ],
)
def test_lda_relays_under_faults(
    script: Callable[[str], str], clean_process: Any, relay_class: Any, body: str, code: str,
    esc: str,
) -> None:
    relay = relay_class(script(body), timeout=TIMEOUT) if relay_class is not _Single else (
        _Single([script(body)], timeout=TIMEOUT))
    outcome = timed_attempt(relay, make_envelope())
    error = outcome.error if outcome.error is not None else outcome.result["rcpt@example.test"]
    assert_relay_error(error, False, code, esc)
    assert outcome.elapsed < TIMEOUT + SLACK_SECONDS


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_exited_program_whose_child_holds_the_output_ends_without_a_timeout(
    script: Callable[[str], str], clean_process: Any, tmp_path: Path
) -> None:
    # No timeout at all: the attempt must still end once the program has exited,
    # and the child it left holding stdout/stderr must not outlive it.
    pidfile = tmp_path / "grandchild.pid"
    prog = script(f"(sleep 1000 & echo $! > {pidfile}) ; cat >/dev/null; exit 0\n")
    outcome = timed_attempt(PipeRelay([prog]), make_envelope())
    assert outcome.result == {"rcpt@example.test": None}
    assert outcome.elapsed < 2 * OUTPUT_GRACE_SECONDS + SLACK_SECONDS
    grandchild = int(pidfile.read_text())
    settle(lambda: not _alive(grandchild), "the left-behind child is gone")
