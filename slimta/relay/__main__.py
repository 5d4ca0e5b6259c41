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
from typing import BinaryIO, NoReturn, TextIO

from slimta.core import __version__
from slimta.envelope import Envelope
from slimta.relay import Relay, RelayError, RelayResult
from slimta.relay._cli_demo import DemoReceiver, sample_message
from slimta.relay._cli_dest import (
    Destination,
    RelayOptions,
    UsageError,
    build_relay,
    finish,
    parse_via,
)
from slimta.relay._cli_load import run_load
from slimta.relay._cli_message import (
    EX_SOFTWARE,
    EX_USAGE,
    Outcome,
    build_envelope,
    exit_status,
    outcomes_of,
    read_message,
)
from slimta.relay._cli_transcript import SubprocessEcho, Transcript

__all__ = ["PASSWORD_ENV", "main"]

PROG = "slimta-relay"
#: The environment variable ``--auth`` reads the password from.
PASSWORD_ENV = "SLIMTA_RELAY_PASSWORD"
#: How long pooled connections stay open between messages with ``--count``.
LOAD_IDLE_TIMEOUT_SECONDS = 10.0
#: Exit status after Ctrl-C (128 + SIGINT).
EX_INTERRUPTED = 130
#: Addresses the demo uses when none are given.
DEMO_SENDER = "demo@sender.example"
DEMO_RECIPIENTS = ("alice@receiver.example", "bob@receiver.example")

_EPILOG = f"""\
destinations (--via):
  mx                          the recipient domains' MX hosts, port 25 (default)
  smtp://HOST[:PORT]          a smart host (port 25; STARTTLS used when offered)
  smtps://HOST[:PORT]         a smart host with TLS from the first byte (port 465)
  lmtp://HOST[:PORT]          an LMTP server (port 24)
  lmtp:/PATH                  an LMTP server on a unix socket
  http://URL, https://URL     an HTTP endpoint (message as the request body)
  pipe:'CMD {{sender}} {{recipient}}'
                              a program per recipient (split like a shell, never run by one)
  maildrop[:'ARGS']           courier maildrop; ARGS follow '-f SENDER' (e.g. a filter file)
  dovecot-lda[:'ARGS']        dovecot-lda per recipient; ARGS are appended (e.g. '-c CONF')

exit status: 0 all delivered, 75 some failure was transient, 69 all failures were
permanent, 64 bad arguments or input. The --auth password comes from ${PASSWORD_ENV}
or a prompt, never from the command line.
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a one-line :class:`UsageError`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _force_mx(text: str) -> tuple[str, str, int]:
    domain, sep, target = text.partition("=")
    host, _, port_text = target.rpartition(":") if ":" in target else (target, "", "25")
    try:
        port = int(port_text)
    except ValueError:
        port = 0
    if not sep or not domain or not host or not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"expected DOMAIN=HOST[:PORT], got {text!r}")
    return domain, host.strip("[]"), port


def build_parser() -> argparse.ArgumentParser:
    """The command line parser (its errors raise :class:`UsageError`)."""
    parser = _Parser(
        prog=PROG,
        description="Relay a message with slimta's relays, the way swaks or msmtp would.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("message", nargs="?", metavar="FILE",
        help="the message (RFC 5322); '-' or nothing reads standard input")
    add("--via", default="mx", metavar="DEST", help="where to relay to (default: mx)")
    add("--from", dest="sender", metavar="ADDR",
        help="envelope sender (default: the From header; '' for the null sender)")
    add("--to", action="append", default=[], metavar="ADDR",
        help="envelope recipient, repeatable or comma-separated (default: To, Cc, Bcc)")
    add("--ehlo", metavar="NAME", help="EHLO name (SMTP/LMTP) or X-Ehlo header (HTTP)")
    tls = parser.add_argument_group("TLS and authentication")
    tls.add_argument("--starttls", action="store_true",
                     help="insist on STARTTLS (by default it is used when offered)")
    tls.add_argument("--tls-required", action="store_true",
                     help="never send the message in clear")
    tls.add_argument("--insecure", action="store_true",
                     help="do not verify the server's certificate")
    tls.add_argument("--cafile", metavar="PEM", help="trust the CA certificates in PEM")
    tls.add_argument("--auth", metavar="USER",
                     help=f"authenticate as USER; password from ${PASSWORD_ENV} or a prompt")
    tls.add_argument("--auth-mechanism", metavar="MECH", help="force a SASL mechanism")
    tls.add_argument("--allow-insecure-auth", action="store_true",
                     help="allow PLAIN/LOGIN over a connection without TLS")
    net = parser.add_argument_group("routing and timeouts")
    net.add_argument("--source-ip", metavar="IP",
                     help="connect from this local address (socket_creator hook)")
    net.add_argument("--force-mx", action="append", default=[], type=_force_mx,
                     metavar="DOMAIN=HOST[:PORT]", help="with --via mx: skip DNS for DOMAIN")
    net.add_argument("--connect-timeout", type=_positive_float, default=10.0, metavar="S",
                     help="SMTP/LMTP: seconds to connect (default 10)")
    net.add_argument("--command-timeout", type=_positive_float, default=10.0, metavar="S",
                     help="SMTP/LMTP: seconds per command and reply (default 10)")
    net.add_argument("--data-timeout", type=_positive_float, metavar="S",
                     help="SMTP/LMTP: seconds to send the message and read the reply")
    net.add_argument("--timeout", type=_positive_float, default=60.0, metavar="S",
                     help="HTTP and programs: seconds per message (default 60)")
    net.add_argument("--program", metavar="PATH",
                     help="the maildrop or dovecot-lda executable")
    run = parser.add_argument_group("output and load")
    run.add_argument("--transcript", action="store_true",
                     help="print the protocol dialogue on standard error")
    run.add_argument("--count", type=_positive_int, default=1, metavar="N",
                     help="relay N copies and print a summary")
    run.add_argument("--concurrency", type=_positive_int, default=1, metavar="C",
                     help="with --count: copies in flight at once (default 1)")
    run.add_argument("--demo", action="store_true",
                     help="relay a sample message to a loopback receiver started here")
    run.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


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
        echo = SubprocessEcho(transcript) if transcript is not None else None
        load = None
        try:
            with echo or contextlib.nullcontext():
                if args.count == 1:
                    outcomes = _deliver_one(relay, envelope)
                else:
                    progress = err if _isatty(err) else None
                    load = run_load(relay, envelope, args.count, args.concurrency, progress)
                    outcomes = load.outcomes
        finally:
            if args.count == 1:
                finish(relay, args.command_timeout)
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
