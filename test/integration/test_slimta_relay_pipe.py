"""Pipe relays against real maildrop, real dovecot-lda and small executable scripts.

The scripts are files run directly (``#!/bin/sh`` as the interpreter), never through
``sh -c``: the relay itself never starts a shell.
"""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import gevent
import gevent.subprocess
import pytest
from support import envelopes
from support.dovecot import DovecotLda
from support.maildrop import MaildropBox
from support.reliability import settle
from support.util import GUARD_SECONDS

from slimta.envelope import Envelope
from slimta.relay import PermanentRelayError, RelayError, TransientRelayError
from slimta.relay.pipe import MAX_CAPTURE_BYTES, DovecotLdaRelay, MaildropRelay, PipeRelay

MESSAGE = b"From: a@example.com\r\nMessage-Id: <id-1@example.com>\r\nSubject: hi\r\n\r\nbody\r\n"


make_envelope = partial(
    envelopes.make_envelope, sender="sender@example.com", rcpts=("rcpt@example.com",), data=MESSAGE
)


def attempt(relay: Any, envelope: Envelope) -> Any:
    with gevent.Timeout(GUARD_SECONDS, AssertionError("attempt() did not return")):
        return relay.attempt(envelope, 0)


def attempt_error(relay: Any, envelope: Envelope) -> RelayError:
    with gevent.Timeout(GUARD_SECONDS, AssertionError("attempt() did not return")):
        try:
            relay.attempt(envelope, 0)
        except RelayError as exc:
            return exc
    raise AssertionError("attempt() did not raise")


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie awaiting its reaper)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


@pytest.fixture
def script(tmp_path: Path) -> Callable[[str], str]:
    """Write an executable ``#!/bin/sh`` script into tmp and return its path."""
    counter = iter(range(1000))

    def make(body: str) -> str:
        path = tmp_path / f"script{next(counter)}.sh"
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return str(path)

    return make


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail when a test leaves file descriptors behind."""
    # gevent creates its child-watcher eventfd on the first child: not a leak.
    gevent.subprocess.Popen(["true"]).wait()
    before = open_fds()
    yield
    leaked = open_fds() - before
    # A listed fd may be the directory handle listdir itself used; re-check.
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")} - before
    assert not leaked, f"leaked fds: {leaked}"


# -- generic PipeRelay ---------------------------------------------------------------


def test_success_macros_and_exact_stdin(
    script: Callable[[str], str], tmp_path: Path, no_leaks: None
) -> None:
    out = tmp_path / "out"
    prog = script('printf "%s\\n" "$@" >> "$OUT"; cat > "$OUT.$$"; echo "$OUT.$$" >> "$OUT"\n')
    relay = PipeRelay(
        [
            prog,
            "{sender}",
            "{recipient}",
            "--id={message_id}",
            "ip={client_ip}",
            "host={client_host}",
            "ehlo={client_ehlo}",
            "proto={client_protocol}",
            "auth={client_auth}",
        ],
        env={"OUT": str(out)},
    )
    env = make_envelope(rcpts=["one@example.com", "two@example.com", "one@example.com"])
    env.client.update({"ip": "192.0.2.1", "host": "mx.example.net", "name": "helo.example"})
    header_data, body = env.flatten()
    result = attempt(relay, env)
    assert result == {"one@example.com": None, "two@example.com": None}
    lines = out.read_text().splitlines()
    assert lines[:8] == [
        "sender@example.com",
        "one@example.com",
        "--id=<id-1@example.com>",
        "ip=192.0.2.1",
        "host=mx.example.net",
        "ehlo=helo.example",
        "proto=",
        "auth=",
    ]
    assert lines[10] == "two@example.com"
    assert Path(lines[8]).read_bytes() == header_data + body
    assert Path(lines[17]).read_bytes() == header_data + body


def test_large_message_streamed(script: Callable[[str], str], tmp_path: Path) -> None:
    out = tmp_path / "big"
    prog = script(f'cat > "{out}"\n')
    data = b"Subject: big\r\n\r\n" + os.urandom(12 * 1024 * 1024)
    env = make_envelope(data=data)
    assert attempt(PipeRelay([prog]), env) == {"rcpt@example.com": None}
    header_data, body = env.flatten()
    assert out.read_bytes() == header_data + body


@pytest.mark.parametrize(
    ("body", "kind", "reply"),
    [
        ('echo "5.1.1 No such user"; exit 1\n', PermanentRelayError, "550 5.1.1 No such user"),
        ('echo "4.2.2 Mailbox full" >&2; exit 9\n', TransientRelayError, "450 4.2.2 Mailbox full"),
        ("exit 1\n", TransientRelayError, "450 4.0.0 Delivery failed"),
        ('echo "5.1.1"; exit 1\n', TransientRelayError, "450 4.0.0 5.1.1"),
        (
            'printf "line one\\nline two\\n"; exit 1\n',
            TransientRelayError,
            "450 4.0.0 line one line two",
        ),
        ("kill -9 $$\n", TransientRelayError, "450 4.0.0 Delivery failed"),
    ],
)
def test_exit_status_and_output(
    script: Callable[[str], str], body: str, kind: type, reply: str
) -> None:
    prog = script("cat > /dev/null; " + body)
    result = attempt(PipeRelay([prog]), make_envelope())
    error = result["rcpt@example.com"]
    assert type(error) is kind
    assert isinstance(error, RelayError)
    assert str(error.reply) == reply


def test_huge_output_is_bounded_without_deadlock(
    script: Callable[[str], str], no_leaks: None
) -> None:
    # The child floods both pipes before reading stdin: only concurrent reading
    # and writing lets everyone finish.
    prog = script(
        "head -c 3000000 /dev/zero | tr '\\0' e >&2\n"
        "head -c 3000000 /dev/zero | tr '\\0' o\n"
        "cat > /dev/null\nexit 1\n"
    )
    env = make_envelope(data=b"Subject: x\r\n\r\n" + b"z" * (4 * 1024 * 1024))
    error = attempt(PipeRelay([prog], timeout=GUARD_SECONDS), env)["rcpt@example.com"]
    assert isinstance(error, TransientRelayError)
    assert str(error) == "o" * MAX_CAPTURE_BYTES
    assert len(str(error.reply)) < 1024


def test_child_not_reading_stdin(script: Callable[[str], str]) -> None:
    prog = script("exit 0\n")
    env = make_envelope(data=b"Subject: x\r\n\r\n" + b"z" * (4 * 1024 * 1024))
    assert attempt(PipeRelay([prog]), env) == {"rcpt@example.com": None}


def test_timeout_kills_process_group_and_reaps(
    script: Callable[[str], str], tmp_path: Path, no_leaks: None
) -> None:
    pids = tmp_path / "pids"
    started = tmp_path / "started"
    prog = script(
        f'echo start >> "{started}"\nsleep 1000 & echo $! >> "{pids}"; echo $$ >> "{pids}"\nwait\n'
    )
    relay = PipeRelay([prog], timeout=0.5)
    result = attempt(relay, make_envelope(rcpts=["a@example.com", "b@example.com"]))
    for rcpt in ("a@example.com", "b@example.com"):
        error = result[rcpt]
        assert isinstance(error, TransientRelayError)
        assert str(error.reply) == "450 4.4.2 Delivery timed out"
    # The timeout covers the whole attempt: the second recipient never started.
    assert started.read_text().splitlines() == ["start"]
    child_pids = [int(p) for p in pids.read_text().split()]
    assert len(child_pids) == 2
    settle(lambda: all(process_gone(pid) for pid in child_pids), "the children to die")


def test_timeout_in_single_mode_raises(script: Callable[[str], str]) -> None:
    class Single(PipeRelay):
        per_recipient = False

    prog = script("exec sleep 1000\n")
    error = attempt_error(Single([prog], timeout=0.3), make_envelope())
    assert isinstance(error, TransientRelayError)
    assert str(error.reply) == "450 4.4.2 Delivery timed out"


def test_single_mode_raises_failure(script: Callable[[str], str]) -> None:
    class Single(PipeRelay):
        per_recipient = False

    prog = script('cat >/dev/null; echo "5.7.1 Denied"; exit 1\n')
    error = attempt_error(Single([prog]), make_envelope(rcpts=["a@x.test", "b@x.test"]))
    assert isinstance(error, PermanentRelayError)
    assert str(error.reply) == "550 5.7.1 Denied"
    ok = script("cat >/dev/null\n")
    assert attempt(Single([ok]), make_envelope()) is None


def test_missing_program_is_transient(tmp_path: Path, no_leaks: None) -> None:
    relay = PipeRelay([str(tmp_path / "does-not-exist")])
    error = attempt(relay, make_envelope())["rcpt@example.com"]
    assert isinstance(error, TransientRelayError)
    assert error.reply.code == "450"
    assert error.reply.enhanced_status_code == "4.3.0"


def test_not_executable_is_transient(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_text("#!/bin/sh\n")
    error = attempt(PipeRelay([str(path)]), make_envelope())["rcpt@example.com"]
    assert isinstance(error, TransientRelayError)
    assert str(error.reply).startswith("450 4.3.0 ")


def test_killed_relay_kills_child(script: Callable[[str], str], tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    prog = script(f'echo $$ > "{pids}.tmp"; mv "{pids}.tmp" "{pids}"; exec sleep 1000\n')
    job = gevent.spawn(PipeRelay([prog]).attempt, make_envelope(), 0)
    settle(pids.exists, "the child to start")
    job.kill(block=True, timeout=GUARD_SECONDS)
    assert process_gone(int(pids.read_text()))


# -- macro safety ----------------------------------------------------------------------


@pytest.mark.parametrize("rcpt", ["-oQ/tmp/x@example.com", "--help"])
def test_recipient_that_looks_like_an_option_is_refused(
    script: Callable[[str], str], tmp_path: Path, rcpt: str
) -> None:
    ran = tmp_path / "ran"
    prog = script(f'touch "{ran}"\n')
    result = attempt(
        PipeRelay([prog, "{recipient}"]), make_envelope(rcpts=[rcpt, "ok@x.test"])
    )
    error = result[rcpt]
    assert isinstance(error, PermanentRelayError)
    assert error.reply.code == "501"
    assert error.reply.enhanced_status_code == "5.1.3"
    assert result["ok@x.test"] is None


def test_option_like_values_allowed_after_double_dash(
    script: Callable[[str], str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    prog = script(f'printf "%s\\n" "$@" > "{out}"; cat >/dev/null\n')
    result = attempt(
        PipeRelay([prog, "--", "{recipient}"]), make_envelope(rcpts=["-x@example.com"])
    )
    assert result == {"-x@example.com": None}
    assert out.read_text().splitlines() == ["--", "-x@example.com"]


def test_option_like_sender_refused_for_every_recipient(script: Callable[[str], str]) -> None:
    prog = script("cat > /dev/null\n")
    relay = PipeRelay([prog, "{sender}", "{recipient}"])
    result = attempt(relay, make_envelope(sender="-s@example.com", rcpts=["a@x.test", "b@x.test"]))
    for rcpt in ("a@x.test", "b@x.test"):
        assert isinstance(result[rcpt], PermanentRelayError)
        assert str(result[rcpt].reply).startswith("501 5.1.7 ")


@pytest.mark.parametrize(
    ("sender", "rcpt", "esc"),
    [
        ("s@example.com\r\n", "r@x.test", "5.1.7"),
        ("s@example.com", "r\x00@x.test", "5.1.3"),
        ("s@example.com", "r\x1b[31m@x.test", "5.1.3"),
        ("s@example.com", "r\x7f@x.test", "5.1.3"),
        ("s\t@example.com", "r@x.test", "5.1.7"),
    ],
)
def test_control_characters_refused(
    script: Callable[[str], str], tmp_path: Path, sender: str, rcpt: str, esc: str
) -> None:
    ran = tmp_path / "ran"
    prog = script(f'touch "{ran}"\n')
    result = attempt(
        PipeRelay([prog, "-f", "{sender}", "{recipient}"]),
        make_envelope(sender=sender, rcpts=[rcpt]),
    )
    error = result[rcpt]
    assert isinstance(error, PermanentRelayError)
    assert error.reply.code == "501"
    assert error.reply.enhanced_status_code == esc
    assert not ran.exists()


def test_unused_macros_are_not_checked(script: Callable[[str], str]) -> None:
    prog = script("cat > /dev/null\n")
    env = make_envelope()
    env.client["name"] = "evil\r\nhelo"
    assert attempt(PipeRelay([prog, "{recipient}"]), env) == {"rcpt@example.com": None}
    result = attempt(PipeRelay([prog, "{client_ehlo}"]), env)
    error = result["rcpt@example.com"]
    assert isinstance(error, PermanentRelayError)
    assert str(error.reply).startswith("501 5.5.4 ")


def test_unknown_macro_is_a_configuration_error(script: Callable[[str], str]) -> None:
    prog = script("cat > /dev/null\n")
    error = attempt(PipeRelay([prog, "{nope}"]), make_envelope())["rcpt@example.com"]
    assert isinstance(error, TransientRelayError)
    assert str(error.reply).startswith("451 4.3.5 ")


def test_shell_and_managed_streams_refused() -> None:
    with pytest.raises(ValueError):
        PipeRelay(["true"], shell=True)
    with pytest.raises(ValueError):
        PipeRelay(["true"], stdout=None)


# -- raise_error: the overridable exit-status-to-error hook ----------------------------------


@pytest.mark.parametrize("convert", [lambda s: s, lambda s: s.encode()])
def test_raise_error_accepts_str_and_bytes(convert: Callable[[str], Any]) -> None:
    relay = PipeRelay(["true"])
    with pytest.raises(PermanentRelayError) as perm:
        relay.raise_error(1, convert("5.2.2 Over quota\n"), convert(""))
    assert str(perm.value.reply) == "550 5.2.2 Over quota"
    with pytest.raises(TransientRelayError) as temp:
        relay.raise_error(1, convert(""), convert("oops\n"))
    assert str(temp.value.reply) == "450 4.0.0 oops"

    maildrop = MaildropRelay()
    with pytest.raises(TransientRelayError) as md_temp:
        maildrop.raise_error(75, convert("maildrop: Unable to deliver\n"), convert(""))
    assert str(md_temp.value.reply) == "450 4.0.0 Unable to deliver"
    with pytest.raises(PermanentRelayError) as md_perm:
        maildrop.raise_error(77, convert(""), convert("maildrop: denied"))
    assert str(md_perm.value.reply) == "550 5.0.0 denied"
    with pytest.raises(TransientRelayError) as md_sig:
        maildrop.raise_error(-signal.SIGKILL, convert(""), convert(""))
    assert str(md_sig.value.reply) == "450 4.3.0 Delivery failed"

    lda = DovecotLdaRelay()
    with pytest.raises(PermanentRelayError) as lda_perm:
        lda.raise_error(67, convert(""), convert(""))
    assert str(lda_perm.value.reply) == "550 5.1.1 LDA delivery failed"
    with pytest.raises(TransientRelayError) as lda_temp:
        lda.raise_error(75, convert("  Temporary failure \n"), convert(""))
    assert str(lda_temp.value.reply) == "450 4.0.0 Temporary failure"
    with pytest.raises(TransientRelayError) as lda_sig:
        lda.raise_error(-signal.SIGTERM, convert(""), convert("killed"))
    assert str(lda_sig.value.reply) == "450 4.3.0 killed"


def test_raise_error_override_that_returns(script: Callable[[str], str]) -> None:
    class Lenient(PipeRelay):
        def raise_error(self, status: int, stdout: Any, stderr: Any) -> Any:
            return None  # a broken override must not turn a failure into success

    prog = script("cat >/dev/null; exit 3\n")
    error = attempt(Lenient([prog]), make_envelope())["rcpt@example.com"]
    assert isinstance(error, TransientRelayError)
    assert error.reply.code == "450"


# -- maildrop ------------------------------------------------------------------------------


def test_maildrop_delivers(maildrop_box: MaildropBox, no_leaks: None) -> None:
    relay = MaildropRelay(
        maildrop_box.program, timeout=GUARD_SECONDS, extra_args=[maildrop_box.filter_path]
    )
    env = make_envelope(rcpts=["a@x.test", "b@x.test"])
    assert attempt(relay, env) is None
    header_data, body = env.flatten()
    assert maildrop_box.messages() == [header_data + body]


def test_maildrop_sender_starting_with_dash_is_an_option_value(
    maildrop_box: MaildropBox,
) -> None:
    relay = MaildropRelay(maildrop_box.program, extra_args=[maildrop_box.filter_path])
    assert attempt(relay, make_envelope(sender="-V@example.com")) is None
    assert attempt(relay, make_envelope(sender="")) is None
    assert len(maildrop_box.messages()) == 2


def test_maildrop_tempfail_is_transient(maildrop_box: MaildropBox) -> None:
    relay = MaildropRelay(maildrop_box.program, extra_args=[maildrop_box.missing_box_filter()])
    error = attempt_error(relay, make_envelope())
    assert isinstance(error, TransientRelayError)
    assert error.reply.code == "450"
    assert maildrop_box.messages() == []


def test_maildrop_missing_filter_message(maildrop_box: MaildropBox, tmp_path: Path) -> None:
    relay = MaildropRelay(maildrop_box.program, extra_args=[str(tmp_path / "none")])
    error = attempt_error(relay, make_envelope())
    assert isinstance(error, TransientRelayError)
    assert "Unable to open filter file" in str(error.reply)
    assert "maildrop:" not in str(error.reply)


def test_maildrop_other_exit_is_permanent(maildrop_box: MaildropBox) -> None:
    relay = MaildropRelay(maildrop_box.program, extra_args=[maildrop_box.exit_filter(77)])
    error = attempt_error(relay, make_envelope())
    assert isinstance(error, PermanentRelayError)
    assert error.reply.code == "550"
    assert error.reply.enhanced_status_code == "5.0.0"


def test_maildrop_control_character_sender_refused(maildrop_box: MaildropBox) -> None:
    relay = MaildropRelay(maildrop_box.program, extra_args=[maildrop_box.filter_path])
    error = attempt_error(relay, make_envelope(sender="bad\n@example.com"))
    assert isinstance(error, PermanentRelayError)
    assert str(error.reply).startswith("501 5.1.7 ")
    assert maildrop_box.messages() == []


# -- dovecot-lda ------------------------------------------------------------------------------


def test_dovecot_lda_per_recipient(dovecot_lda: DovecotLda, no_leaks: None) -> None:
    relay = DovecotLdaRelay(
        dovecot_lda.program, timeout=GUARD_SECONDS, extra_args=["-c", dovecot_lda.config_path]
    )
    env = make_envelope(rcpts=[
            "alice@example.com",
            "nosuchuser@example.com",
            "bob@example.com",
            "broken@example.com",
        ])
    result = attempt(relay, env)
    assert result["alice@example.com"] is None
    assert result["bob@example.com"] is None
    unknown = result["nosuchuser@example.com"]
    assert isinstance(unknown, PermanentRelayError)
    assert unknown.reply.code == "550"
    assert unknown.reply.enhanced_status_code == "5.1.1"
    broken = result["broken@example.com"]
    assert isinstance(broken, TransientRelayError)
    assert broken.reply.code == "450"
    for user in ("alice", "bob"):
        [stored] = dovecot_lda.messages(user)
        assert b"Subject: hi" in stored and stored.rstrip().endswith(b"body")


def test_dovecot_lda_option_like_recipient_is_an_option_value(dovecot_lda: DovecotLda) -> None:
    relay = DovecotLdaRelay(dovecot_lda.program, extra_args=["-c", dovecot_lda.config_path])
    env = make_envelope(sender="-f@example.com", rcpts=["-alice", "alice@example.com"])
    result = attempt(relay, env)
    # "-alice" reaches dovecot-lda as the value of -d: an unknown user, not an option.
    assert isinstance(result["-alice"], PermanentRelayError)
    assert result["alice@example.com"] is None
