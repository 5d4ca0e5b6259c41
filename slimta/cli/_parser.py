"""``slimta-relay``'s command line: the options, their checks, and the help text."""

from __future__ import annotations

import argparse
from typing import NoReturn

from slimta.cli._destinations import UsageError
from slimta.core import __version__

__all__ = ["PASSWORD_ENV", "PROG", "build_parser"]

PROG = "slimta-relay"
#: The environment variable ``--auth`` reads the password from.
PASSWORD_ENV = "SLIMTA_RELAY_PASSWORD"

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
    """The command line parser (its errors raise ``UsageError``)."""
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
