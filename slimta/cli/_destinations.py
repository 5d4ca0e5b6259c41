"""``slimta-relay --via``: parse a destination and build the relay for it.

Every destination maps to one relay of the library:

========================================  =============================================
``--via``                                 relay
========================================  =============================================
``mx`` (default)                          :class:`~slimta.relay.smtp.mx.MxSmtpRelay`
``smtp://host[:port]`` (25)               :class:`~slimta.relay.smtp.static.StaticSmtpRelay`
``smtps://host[:port]`` (465)             the same, with ``tls_immediately=True``
``lmtp://host[:port]`` (24), ``lmtp:/p``  :class:`~slimta.relay.smtp.static.StaticLmtpRelay`
``http://...``, ``https://...``           :class:`~slimta.relay.http.HttpRelay`
``pipe:'command {sender} {recipient}'``   :class:`~slimta.relay.pipe.PipeRelay`
``maildrop[:'ARGS']``                     :class:`~slimta.relay.pipe.MaildropRelay`
``dovecot-lda[:'ARGS']``                  :class:`~slimta.relay.pipe.DovecotLdaRelay`
========================================  =============================================
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import ssl
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gevent import socket

from slimta.cli._transcript import Transcript
from slimta.relay import Relay
from slimta.relay.http import HttpRelay
from slimta.relay.pipe import MACRO_NAMES, DovecotLdaRelay, MaildropRelay, PipeRelay
from slimta.relay.smtp.mx import MxSmtpRelay
from slimta.relay.smtp.static import StaticLmtpRelay, StaticSmtpRelay

__all__ = ["Destination", "RelayOptions", "UsageError", "build_relay", "parse_via"]

#: The macros a ``pipe:`` command may use (see :class:`~slimta.relay.pipe.PipeRelay`).
PIPE_MACROS = frozenset(MACRO_NAMES)
#: Where Debian installs dovecot-lda, which is not on ``PATH``.
DOVECOT_LDA_FALLBACK = "/usr/lib/dovecot/dovecot-lda"

_DEFAULT_PORTS = {"smtp": 25, "smtps": 465, "lmtp": 24}
_SMTP_KINDS = frozenset(("mx", "smtp", "smtps", "lmtp"))
_PROGRAM_KINDS = frozenset(("pipe", "maildrop", "dovecot-lda"))


class UsageError(Exception):
    """A bad argument or unreadable input: one line for the user, exit status 64."""


@dataclass(frozen=True)
class Destination:
    """A parsed ``--via`` value.

    :param kind: ``mx``, ``smtp``, ``smtps``, ``lmtp``, ``http``, ``pipe``,
        ``maildrop`` or ``dovecot-lda``.
    :param host: host name, address or unix-socket path (SMTP and LMTP).
    :param port: TCP port (SMTP and LMTP over TCP).
    :param url: the full URL (HTTP).
    :param args: the command (``pipe``) or the extra arguments (maildrop, dovecot-lda).
    """

    kind: str
    host: str = ""
    port: int = 0
    url: str = ""
    args: tuple[str, ...] = ()

    @property
    def unix_socket(self) -> bool:
        """True for ``lmtp:/path``."""
        return self.host.startswith("/")

    def describe(self) -> str:
        """A short human description, for messages."""
        if self.kind in ("smtp", "smtps", "lmtp"):
            if self.unix_socket:
                return f"{self.kind}:{self.host}"
            return f"{self.kind}://{self.host}:{self.port}"
        if self.kind == "http":
            return self.url
        if self.args:
            return f"{self.kind}:{shlex.join(self.args)}"
        return self.kind


@dataclass
class RelayOptions:
    """Everything besides the destination that shapes the relay."""

    ehlo: str | None = None
    starttls: bool = False
    tls_required: bool = False
    insecure: bool = False
    cafile: str | None = None
    credentials: tuple[str, str] | None = None
    auth_mechanism: str | None = None
    allow_insecure_auth: bool = False
    source_ip: str | None = None
    force_mx: list[tuple[str, str, int]] = field(default_factory=list)
    connect_timeout: float = 10.0
    command_timeout: float = 10.0
    data_timeout: float | None = None
    timeout: float | None = 60.0
    program: str | None = None
    pool_size: int = 1
    idle_timeout: float | None = None
    transcript: Transcript | None = None


def _split(text: str, what: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise UsageError(f"cannot split {what}: {exc}")


def _host_port(value: str, kind: str) -> tuple[str, int]:
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        port = parts.port or _DEFAULT_PORTS[kind]
    except ValueError as exc:
        raise UsageError(f"bad --via {value!r}: {exc}")
    if not host:
        raise UsageError(f"bad --via {value!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise UsageError(f"bad --via {value!r}: expected {kind}://host[:port]")
    return host, port


def parse_via(value: str) -> Destination:
    """Parse a ``--via`` value.

    :raises UsageError: when it does not name a destination.
    """
    scheme, sep, rest = value.partition(":")
    kind = scheme.lower()
    if kind == "mx" and not sep:
        return Destination("mx")
    if kind in ("smtp", "smtps") and rest.startswith("//"):
        host, port = _host_port(value, kind)
        return Destination(kind, host=host, port=port)
    if kind == "lmtp" and rest.startswith("//"):
        host, port = _host_port(value, kind)
        return Destination(kind, host=host, port=port)
    if kind == "lmtp" and rest.startswith("/"):
        return Destination(kind, host=rest)
    if kind in ("http", "https") and rest.startswith("//"):
        if not urlsplit(value).hostname:
            raise UsageError(f"bad --via {value!r}: no host")
        return Destination("http", url=value)
    if kind == "pipe" and sep:
        args = _split(rest, "the pipe command")
        if not args:
            raise UsageError("pipe: needs a command, e.g. pipe:'deliver -f {sender} {recipient}'")
        for arg in args:
            _check_macros(arg)
        return Destination("pipe", args=args)
    if kind in ("maildrop", "dovecot-lda"):
        return Destination(kind, args=_split(rest, f"the {kind} arguments") if sep else ())
    raise UsageError(
        f"unknown --via {value!r}: use mx, smtp://, smtps://, lmtp://, lmtp:/path, "
        "http(s)://, pipe:'command', maildrop or dovecot-lda"
    )


def _check_macros(arg: str) -> None:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(arg) if name is not None]
    except ValueError as exc:
        raise UsageError(f"bad pipe argument {arg!r}: {exc}")
    for name in names:
        if name not in PIPE_MACROS:
            known = ", ".join("{" + macro + "}" for macro in sorted(PIPE_MACROS))
            raise UsageError(f"unknown macro {{{name}}} in pipe command; known: {known}")


def check_options(dest: Destination, opts: RelayOptions) -> None:
    """Refuse options that mean nothing for ``dest``.

    :raises UsageError: naming the first such option.
    """
    smtp = dest.kind in _SMTP_KINDS
    unusable: list[str] = []
    if not smtp:
        for flag, given in (
            ("--starttls", opts.starttls),
            ("--auth", opts.credentials is not None),
            ("--source-ip", opts.source_ip is not None),
        ):
            if given:
                unusable.append(flag)
    if dest.kind in _PROGRAM_KINDS:
        for flag, given in (
            ("--tls-required", opts.tls_required),
            ("--insecure", opts.insecure),
            ("--cafile", opts.cafile is not None),
            ("--ehlo", opts.ehlo is not None),
        ):
            if given:
                unusable.append(flag)
    if unusable:
        raise UsageError(f"{unusable[0]} does not apply to --via {dest.kind}")
    if opts.program is not None and dest.kind not in ("maildrop", "dovecot-lda"):
        raise UsageError("--program applies to --via maildrop and --via dovecot-lda only")
    if opts.force_mx and dest.kind != "mx":
        raise UsageError("--force-mx applies to --via mx only")
    if dest.kind == "smtps" and opts.starttls:
        raise UsageError("--starttls does not apply to smtps:// (TLS from the first byte)")
    if dest.kind == "http" and opts.tls_required and not dest.url.lower().startswith("https:"):
        raise UsageError("--tls-required needs an https:// URL")
    if opts.source_ip is not None:
        if dest.unix_socket:
            raise UsageError("--source-ip does not apply to a unix socket")
        try:
            ipaddress.ip_address(opts.source_ip)
        except ValueError:
            raise UsageError(f"--source-ip {opts.source_ip!r} is not an IP address")


def tls_context(opts: RelayOptions) -> ssl.SSLContext:
    """The TLS context for ``--cafile`` and ``--insecure``."""
    try:
        context = ssl.create_default_context(cafile=opts.cafile)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load --cafile {opts.cafile}: {exc}")
    if opts.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def source_ip_creator(source_ip: str) -> Callable[[tuple[str, int]], socket.socket]:
    """A ``socket_creator`` that binds every connection to ``source_ip``."""

    def socket_creator(address: tuple[str, int]) -> socket.socket:
        return socket.create_connection(address, source_address=(source_ip, 0))

    return socket_creator


def _smtp_kwargs(dest: Destination, opts: RelayOptions) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "pool_size": opts.pool_size,
        "idle_timeout": opts.idle_timeout,
        "connect_timeout": opts.connect_timeout,
        "command_timeout": opts.command_timeout,
        "data_timeout": opts.data_timeout,
        "tls_required": opts.tls_required or opts.starttls or dest.kind == "smtps",
        "tls_immediately": dest.kind == "smtps",
        "allow_insecure_auth": opts.allow_insecure_auth,
    }
    if opts.ehlo is not None:
        kwargs["ehlo_as"] = opts.ehlo
    if opts.credentials is not None:
        kwargs["credentials"] = opts.credentials
    if opts.auth_mechanism is not None:
        kwargs["auth_mechanism"] = opts.auth_mechanism
    if opts.source_ip is not None:
        kwargs["socket_creator"] = source_ip_creator(opts.source_ip)
    if opts.transcript is not None:
        kwargs["trace"] = opts.transcript.smtp_trace
    return kwargs


def _program(kind: str, given: str | None) -> str:
    if given is not None:
        return given
    found = shutil.which(kind)
    if found is None and kind == "dovecot-lda" and os.access(DOVECOT_LDA_FALLBACK, os.X_OK):
        return DOVECOT_LDA_FALLBACK
    return found or kind


def build_relay(dest: Destination, opts: RelayOptions) -> Relay:
    """Build the relay for ``dest``.

    :raises UsageError: for options that do not fit the destination.
    """
    check_options(dest, opts)
    if dest.kind in _SMTP_KINDS:
        kwargs = _smtp_kwargs(dest, opts)
        context = tls_context(opts)
        if dest.kind == "mx":
            mx = MxSmtpRelay(context, **kwargs)
            for domain, host, port in opts.force_mx:
                mx.force_mx(domain, host, port)
            return mx
        if dest.kind == "lmtp":
            return StaticLmtpRelay(dest.host, dest.port, context=context, **kwargs)
        return StaticSmtpRelay(dest.host, dest.port, context=context, **kwargs)
    if dest.kind == "http":
        http_args: dict[str, Any] = {
            "pool_size": opts.pool_size,
            "context": tls_context(opts),
            "ehlo_as": opts.ehlo,
            "timeout": opts.timeout,
            "idle_timeout": opts.idle_timeout,
        }
        transcript = opts.transcript
        http_trace = transcript.http_trace if transcript is not None else None
        return HttpRelay(dest.url, **http_args, trace=http_trace)
    trace = opts.transcript.process_trace if opts.transcript is not None else None
    if dest.kind == "maildrop":
        program = _program("maildrop", opts.program)
        return MaildropRelay(program, opts.timeout, list(dest.args), trace=trace)
    if dest.kind == "dovecot-lda":
        program = _program("dovecot-lda", opts.program)
        return DovecotLdaRelay(program, opts.timeout, list(dest.args), trace=trace)
    return PipeRelay(list(dest.args), opts.timeout, trace=trace)
