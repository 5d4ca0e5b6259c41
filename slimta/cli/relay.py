"""``slimta-relay``: relay one message (or many copies) with any relay of the library.

Run it as ``slimta-relay`` or ``python -m slimta.relay``; ``--help`` lists the
options and ``doc/cli.rst`` explains them. Exit statuses follow sysexits.h:
0 when every recipient was delivered, 75 (``EX_TEMPFAIL``) when any failure was
transient, 69 (``EX_UNAVAILABLE``) when every failure was permanent, and 64
(``EX_USAGE``) for bad arguments or unreadable input.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import BinaryIO, TextIO

from slimta.cli._demo import DemoReceiver, sample_message
from slimta.cli._destinations import Destination, RelayOptions, UsageError, build_relay, parse_via
from slimta.cli._load import run_load
from slimta.cli._message import (
    EX_SOFTWARE,
    EX_USAGE,
    Outcome,
    build_envelope,
    exit_status,
    outcomes_of,
    read_message,
)
from slimta.cli._parser import PASSWORD_ENV, PROG, build_parser
from slimta.cli._transcript import Transcript
from slimta.envelope import Envelope
from slimta.relay import Relay, RelayError, RelayResult

__all__ = ["PASSWORD_ENV", "main"]

#: How long pooled connections stay open between messages with ``--count``.
LOAD_IDLE_TIMEOUT_SECONDS = 10.0
#: Exit status after Ctrl-C (128 + SIGINT).
EX_INTERRUPTED = 130
#: Addresses the demo uses when none are given.
DEMO_SENDER = "demo@sender.example"
DEMO_RECIPIENTS = ("alice@receiver.example", "bob@receiver.example")


def _password(user: str, environ: Mapping[str, str]) -> str:
    password = environ.get(PASSWORD_ENV)
    if password is not None:
        return password
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        raise UsageError(f"--auth needs a password: set {PASSWORD_ENV} or run on a terminal")
    try:
        return getpass.getpass(f"Password for {user}: ")
    except (EOFError, KeyboardInterrupt):
        raise UsageError("no password given")


def _relay_options(
    args: argparse.Namespace, environ: Mapping[str, str], transcript: Transcript | None
) -> RelayOptions:
    credentials = None
    if args.auth is not None:
        credentials = (args.auth, _password(args.auth, environ))
    load = args.count > 1
    return RelayOptions(
        ehlo=args.ehlo,
        starttls=args.starttls,
        tls_required=args.tls_required,
        insecure=args.insecure,
        cafile=args.cafile,
        credentials=credentials,
        auth_mechanism=args.auth_mechanism,
        allow_insecure_auth=args.allow_insecure_auth,
        source_ip=args.source_ip,
        force_mx=list(args.force_mx),
        connect_timeout=args.connect_timeout,
        command_timeout=args.command_timeout,
        data_timeout=args.data_timeout,
        timeout=args.timeout,
        program=args.program,
        pool_size=args.concurrency if load else 1,
        idle_timeout=LOAD_IDLE_TIMEOUT_SECONDS if load else None,
        transcript=transcript,
    )


def _recipients(values: Sequence[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@contextlib.contextmanager
def _demo(args: argparse.Namespace, out: TextIO) -> Iterator[DemoReceiver | None]:
    if not args.demo:
        yield None
        return
    if args.via != "mx" or args.message is not None:
        raise UsageError("--demo picks its own destination and message")
    with DemoReceiver() as receiver:
        host, port = receiver.address
        args.via = f"smtp://{host}:{port}"
        args.ehlo = args.ehlo or "slimta-relay.localhost"
        args.transcript = args.transcript or args.count == 1
        _say(out, f"demo: loopback SMTP receiver listening on {host}:{port}")
        yield receiver


def _deliver_one(relay: Relay, envelope: Envelope) -> list[Outcome]:
    result: RelayResult | RelayError
    try:
        result = relay.attempt(envelope, 0)
    except RelayError as exc:
        result = exc
    return outcomes_of(list(envelope.recipients), result)


def _run(
    argv: Sequence[str] | None,
    stdin: BinaryIO | None,
    out: TextIO,
    err: TextIO,
    environ: Mapping[str, str],
) -> int:
    args = build_parser().parse_args(argv)
    with _demo(args, out) as receiver:
        dest: Destination = parse_via(args.via)
        if receiver is not None:
            data = sample_message(DEMO_SENDER, list(DEMO_RECIPIENTS))
        else:
            if args.message is None and stdin is not None and _isatty(stdin):
                raise UsageError("no message: give a FILE or pipe one in (or try --demo)")
            data = read_message(args.message, stdin)
        envelope = build_envelope(data, args.sender, _recipients(args.to))
        transcript = Transcript(err, numbered=args.count > 1) if args.transcript else None
        relay = build_relay(dest, _relay_options(args, environ, transcript))
        load = None
        try:
            if args.count == 1:
                outcomes = _deliver_one(relay, envelope)
            else:
                progress = err if _isatty(err) else None
                load = run_load(relay, envelope, args.count, args.concurrency, progress)
                outcomes = load.outcomes
        finally:
            if args.count == 1:
                relay.close(args.command_timeout)  # let the connection QUIT
            else:
                relay.kill()  # the pooled connections are idle by now
        if load is None:
            for outcome in outcomes:
                _say(out, outcome.line())
        else:
            _say(out, "\n".join(load.summary()))
        if receiver is not None:
            for message in receiver.messages[:1]:
                rcpts = ", ".join(f"<{rcpt}>" for rcpt in message.recipients)
                _say(
                    out,
                    f"demo: the receiver stored {len(receiver.messages)} message(s); the first "
                    f"is {len(message.data)} bytes from <{message.sender}> to {rcpts}",
                )
    return exit_status(outcomes)


def _say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


def _isatty(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (OSError, ValueError):
        return False


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: BinaryIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run ``slimta-relay``; return the exit status.

    :param argv: the arguments, without the program name (default: ``sys.argv[1:]``).
    :param stdin: where ``-`` reads the message (default: ``sys.stdin.buffer``).
    :param stdout: where results go (default: ``sys.stdout``).
    :param stderr: where errors, the transcript and the progress bar go.
    :param environ: where ``--auth`` looks for :data:`PASSWORD_ENV` (default: ``os.environ``).
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    if stdin is None and sys.stdin is not None:
        stdin = sys.stdin.buffer
    try:
        return _run(argv, stdin, out, err, os.environ if environ is None else environ)
    except UsageError as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return EX_USAGE
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return EX_INTERRUPTED
    except Exception as exc:  # a bug: still one line, never a traceback
        err.write(f"{PROG}: internal error: {type(exc).__name__}: {exc}\n")
        return EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
