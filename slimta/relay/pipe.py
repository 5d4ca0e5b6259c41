"""Deliver messages by running a local program, in the manner of Postfix pipe(8).

The message (headers, then body) is streamed to the program's standard input.
Exit status 0 means delivered; anything else goes to the relay's
:meth:`~PipeRelay.raise_error`, which decides between a permanent and a transient
failure from the program's output and status.

Arguments are never given to a shell. Each argument of the configured command is
expanded separately with :meth:`str.format` and the envelope macros (``{sender}``,
``{recipient}``, ``{message_id}``, ``{client_ip}``, ``{client_host}``,
``{client_ehlo}``, ``{client_protocol}``, ``{client_auth}``), so an envelope value
can never split into several arguments. Two more rules keep an envelope value
from changing what the program is asked to do:

* A value used by the command may not contain control characters (C0 or DEL).
* An argument whose expansion starts with ``-`` although its template does not
  (``'{recipient}'`` expanding to ``'-oQ/tmp@x'``) could be read as an option, so
  it is refused. It is allowed when the argument before it is one of the
  relay's :attr:`~PipeRelay.value_options` (an option that always takes the next
  argument as its value, such as maildrop's and dovecot-lda's ``-f`` and
  ``-d``), or when it comes after a literal ``--`` argument.

A refused sender fails the whole message with ``501 5.1.7``, a refused recipient
that recipient with ``501 5.1.3``; any other refused macro gives ``501 5.5.4``.
These failures are permanent: the same envelope would be refused again.
"""

from __future__ import annotations

import logging
import re
import shlex
import string
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from slimta.relay import Relay, RelayError, RelayResult

# Running the program and building the errors live in private modules; the
# constants stay importable from here, where they have always been.
from slimta.relay._pipe_errors import MAX_REPLY_TEXT_CHARS as MAX_REPLY_TEXT_CHARS
from slimta.relay._pipe_errors import (
    as_text,
    config_error,
    internal_error,
    lda_failure,
    permanent,
    refused_macro,
    timeout_error,
    transient,
)
from slimta.relay._process import IO_CHUNK_BYTES as IO_CHUNK_BYTES
from slimta.relay._process import KILL_REAP_TIMEOUT_SECONDS as KILL_REAP_TIMEOUT_SECONDS
from slimta.relay._process import MAX_CAPTURE_BYTES as MAX_CAPTURE_BYTES
from slimta.relay._process import Deadline, run_process
from slimta.relay._process import subprocess_log as subprocess_log
from slimta.smtp.reply import Reply

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["PipeRelay", "MaildropRelay", "DovecotLdaRelay", "ProcessTrace"]

log = logging.getLogger(__name__)

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_PERMANENT_TEXT_RE = re.compile(r"5\.[0-9]{1,3}\.[0-9]{1,3}\s")
_FOLDING_RE = re.compile(r"[ \t\r\n]+")
# maildrop prefixes its messages with its argv[0]: "maildrop: " or "/usr/bin/maildrop: ".
_MAILDROP_PREFIX_RE = re.compile(r"(?:[^\s:]*/)?maildrop: ")

# Popen arguments the relay manages itself.
_RESERVED_POPEN_KWARGS = frozenset(
    ("stdin", "stdout", "stderr", "text", "universal_newlines", "encoding", "errors")
)
#: The macros an argument may use; ``str.format`` fills them per attempt.
MACRO_NAMES = (
    "sender",
    "recipient",
    "message_id",
    "client_ip",
    "client_host",
    "client_ehlo",
    "client_protocol",
    "client_auth",
)


#: A delivery-program trace, ``trace(pid, event, data)``: ``'run'`` with the
#: command line (shell-quoted), then, once the program exited, ``'stdout'`` and
#: ``'stderr'`` with what it wrote (only when it wrote something) and ``'exit'``
#: with its exit status (``b'0'``). A program that timed out or was killed has
#: only its ``'run'`` event.
ProcessTrace = Callable[[int, str, bytes], None]


class PipeRelay(Relay):
    """Deliver by running ``args`` with the message on standard input.

    :param args: the command, one template per argument; see the module
        documentation for the macros and the rules applied to their values.
    :param timeout: seconds allowed for the whole attempt (every process it
        runs); ``None`` waits as long as the programs run. A process still
        running when the time is up is killed with its process group. Once a
        program has exited, a child it left holding its output open gets
        ``OUTPUT_GRACE_SECONDS`` (2 s) before that process group is killed too.
    :param popen_kwargs: more arguments for :class:`gevent.subprocess.Popen`,
        such as ``env`` or ``cwd``. The standard streams are managed by the relay,
        and ``shell=True`` is refused. By default the child runs in a new session
        (``start_new_session=True``) so that a timeout can kill everything it
        started.
    :param trace: a :data:`ProcessTrace` told about every program run;
        ``None``, the default, costs nothing.
    :raises ValueError: for ``shell=True`` or a standard stream in ``popen_kwargs``.
    """

    #: One process per recipient (``True``), or one per message using the first
    #: recipient for the macros (``False``).
    per_recipient = True
    #: Options whose next argument the program always takes as their value, even
    #: when it starts with ``-``; a macro there may start with ``-``.
    value_options: frozenset[str] = frozenset()

    def __init__(
        self,
        args: Sequence[str],
        timeout: float | None = None,
        *,
        trace: ProcessTrace | None = None,
        **popen_kwargs: Any,
    ):
        super().__init__()
        #: The :data:`ProcessTrace`, or ``None``.
        self.trace = trace
        if popen_kwargs.get("shell"):
            raise ValueError("PipeRelay never runs a shell")
        reserved = _RESERVED_POPEN_KWARGS.intersection(popen_kwargs)
        if reserved:
            raise ValueError(f"PipeRelay manages these itself: {sorted(reserved)}")
        popen_kwargs.pop("shell", None)
        self.args = args
        self.timeout = timeout
        self.popen_kwargs = popen_kwargs

    # -- the attempt ----------------------------------------------------------------
    def attempt(self, envelope: Envelope, attempts: int) -> RelayResult:
        """Run the program once per recipient, or once for the message.

        :returns: with :attr:`per_recipient`, a dict from each recipient to
            ``None`` (delivered) or its :class:`~slimta.relay.RelayError`;
            otherwise ``None``.
        :raises PermanentRelayError: (single mode only) the program failed for good.
        :raises TransientRelayError: (single mode only) the program failed for now,
            timed out, or could not be started.
        """
        deadline = Deadline(self.timeout)
        if self.per_recipient:
            return self._attempt_each(envelope, deadline)
        recipient = envelope.recipients[0] if envelope.recipients else ""
        self._deliver(envelope, self._flatten(envelope), recipient, deadline)
        return None

    def _attempt_each(self, envelope: Envelope, deadline: Deadline) -> RelayResult:
        results: dict[str, Reply | RelayError | None] = {}
        recipients = list(dict.fromkeys(envelope.recipients))
        try:
            message = self._flatten(envelope)
        except RelayError as exc:
            return {rcpt: exc for rcpt in recipients}
        for rcpt in recipients:
            try:
                self._deliver(envelope, message, rcpt, deadline)
            except RelayError as exc:
                results[rcpt] = exc
            else:
                results[rcpt] = None
        return results

    @staticmethod
    def _flatten(envelope: Envelope) -> tuple[bytes, bytes]:
        try:
            return envelope.flatten()
        except Exception as exc:
            raise internal_error(f"Message could not be prepared: {exc}")

    def _deliver(
        self,
        envelope: Envelope,
        message: tuple[bytes, bytes],
        recipient: str,
        deadline: Deadline,
    ) -> None:
        argv = self._build_args(self._macros(envelope, recipient))
        remaining = deadline.remaining()
        if remaining is not None and remaining <= 0:
            raise timeout_error()
        status, stdout, stderr = self._run_process(argv, message, remaining)
        if status == 0:
            return
        try:
            self.raise_error(status, stdout, stderr)
        except RelayError:
            raise
        except Exception as exc:
            log.exception("raise_error failed")
            raise internal_error(f"Delivery failed (exit status {status}): {exc}")
        raise internal_error(f"Delivery failed (exit status {status})")

    # -- macros and arguments --------------------------------------------------------
    @staticmethod
    def _macros(envelope: Envelope, recipient: str) -> dict[str, str]:
        client = envelope.client or {}
        message_id = ""
        if envelope.headers is not None:
            value = envelope.headers.get("Message-Id")
            if value is not None:
                # Folding whitespace carries no meaning in a Message-Id.
                message_id = _FOLDING_RE.sub(" ", str(value)).strip()

        def client_value(key: str) -> str:
            value = client.get(key)
            return "" if value is None else str(value)

        return {
            "sender": envelope.sender or "",
            "recipient": recipient or "",
            "message_id": message_id,
            "client_ip": client_value("ip"),
            "client_host": client_value("host"),
            "client_ehlo": client_value("name"),
            "client_protocol": client_value("protocol"),
            "client_auth": client_value("auth"),
        }

    def _build_args(self, macros: Mapping[str, str]) -> list[str]:
        """Expand every argument template, enforcing the module's safety rules."""
        argv: list[str] = []
        after_double_dash = False
        previous: str | None = None
        for template in self.args:
            fields = _field_names(template)
            for name in fields:
                if name in macros and _CONTROL_RE.search(macros[name]):
                    raise refused_macro(name, "it contains control characters")
            try:
                value = template.format_map(macros)
            except (KeyError, IndexError, ValueError, AttributeError) as exc:
                raise config_error(f"Bad argument template {template!r}: {exc!r}")
            if (
                value.startswith("-")
                and not template.startswith("-")
                and not after_double_dash
                and previous not in self.value_options
            ):
                name = next((n for n in fields if macros.get(n, "").startswith("-")), fields[0])
                raise refused_macro(name, "it starts with '-' and could be read as an option")
            argv.append(value)
            if template == "--":
                after_double_dash = True
            previous = template
        if not argv:
            raise config_error("No command to run")
        return argv

    # -- the process ----------------------------------------------------------------
    def _run_process(
        self, argv: list[str], message: tuple[bytes, bytes], timeout: float | None
    ) -> tuple[int, bytes, bytes]:
        trace = self.trace
        if trace is None:
            return run_process(argv, message, timeout, self.popen_kwargs)
        pids: list[int] = []

        def started(pid: int) -> None:
            pids.append(pid)
            trace(pid, "run", shlex.join(argv).encode("utf-8", "surrogateescape"))

        status, stdout, stderr = run_process(
            argv, message, timeout, self.popen_kwargs, started=started
        )
        pid = pids[0] if pids else 0
        for event, data in (("stdout", stdout), ("stderr", stderr)):
            if data:
                trace(pid, event, data)
        trace(pid, "exit", str(status).encode("ascii"))
        return status, stdout, stderr

    # -- failure ------------------------------------------------------------------------
    def raise_error(self, status: int, stdout: str | bytes, stderr: str | bytes) -> NoReturn:
        """Raise the error for a program that exited with a non-zero ``status``.

        **Override point.** The text is the first non-empty of the rstripped
        ``stdout``, the rstripped ``stderr`` and ``'Delivery failed'``. Text
        beginning with a ``5.X.X`` enhanced status code and whitespace gives a
        permanent ``550`` failure, anything else a transient ``450`` one; a
        leading enhanced status code becomes the reply's (its class following
        the reply code). The exit status itself is not consulted.

        :param status: the exit status (negative: killed by that signal).
        :param stdout: the captured standard output, ``bytes`` or ``str``.
        :param stderr: the captured standard error, ``bytes`` or ``str``.
        :raises PermanentRelayError: when the text starts with ``5.X.X``.
        :raises TransientRelayError: otherwise.
        """
        text = as_text(stdout).rstrip() or as_text(stderr).rstrip() or "Delivery failed"
        if _PERMANENT_TEXT_RE.match(text):
            raise permanent(text)
        raise transient(text)


def _field_names(template: str) -> list[str]:
    """The macro names a template uses, in order (``'{a.b}'`` uses ``a``)."""
    names: list[str] = []
    try:
        for _, field, _, _ in string.Formatter().parse(template):
            if field:
                name = re.split(r"[.\[]", field, maxsplit=1)[0]
                if name not in names:
                    names.append(name)
    except ValueError:
        pass  # reported when the template is expanded
    return names


class MaildropRelay(PipeRelay):
    """Deliver with courier-maildrop, one process per message.

    Runs ``[path or 'maildrop', '-f', '{sender}'] + extra_args``; give the filter
    file (and any of its arguments) in ``extra_args``.

    :param path: the maildrop executable (default: ``maildrop`` on ``PATH``).
    :param timeout: seconds allowed for the delivery.
    :param extra_args: more arguments, appended after ``-f {sender}``.
    :param trace: as for :class:`PipeRelay`.
    """

    per_recipient = False
    value_options = frozenset(("-f",))
    #: maildrop's exit status for a temporary failure (sysexits.h ``EX_TEMPFAIL``).
    EX_TEMPFAIL = 75

    def __init__(
        self,
        path: str | None = None,
        timeout: float | None = None,
        extra_args: Sequence[str] | None = None,
        *,
        trace: ProcessTrace | None = None,
    ) -> None:
        args = [path or "maildrop", "-f", "{sender}"]
        args.extend(extra_args or [])
        super().__init__(args, timeout, trace=trace)

    def raise_error(self, status: int, stdout: str | bytes, stderr: str | bytes) -> NoReturn:
        """Raise the error for a failed maildrop run.

        The text is the output that starts with ``maildrop: `` (stdout first;
        maildrop may write its full path, ``/usr/bin/maildrop: ``), without that
        prefix; else the first non-empty of stdout and stderr; else
        ``'Delivery failed'``. :attr:`EX_TEMPFAIL` and signals (``450 4.3.0``)
        are transient; every other status is a permanent ``550``.
        """
        out, err = as_text(stdout), as_text(stderr)
        for stream in (out, err):
            match = _MAILDROP_PREFIX_RE.match(stream)
            if match:
                text = stream[match.end() :].rstrip()
                break
        else:
            text = out.strip() or err.strip()
        lda_failure(status, text or "Delivery failed", self.EX_TEMPFAIL)


class DovecotLdaRelay(PipeRelay):
    """Deliver with Dovecot's ``dovecot-lda``, one process per recipient.

    Runs ``[path or 'dovecot-lda', '-f', '{sender}', '-d', '{recipient}'] +
    extra_args``; for a private configuration pass ``extra_args=['-c', CONF]``.

    :param path: the dovecot-lda executable (Debian: ``/usr/lib/dovecot/dovecot-lda``).
    :param timeout: seconds allowed for the whole attempt.
    :param extra_args: more arguments, appended at the end.
    :param trace: as for :class:`PipeRelay`.
    """

    value_options = frozenset(("-f", "-d"))
    #: dovecot-lda's exit status for a temporary failure (``EX_TEMPFAIL``).
    EX_TEMPFAIL = 75

    def __init__(
        self,
        path: str | None = None,
        timeout: float | None = None,
        extra_args: Sequence[str] | None = None,
        *,
        trace: ProcessTrace | None = None,
    ) -> None:
        args = [path or "dovecot-lda", "-f", "{sender}", "-d", "{recipient}"]
        args.extend(extra_args or [])
        super().__init__(args, timeout, trace=trace)

    def raise_error(self, status: int, stdout: str | bytes, stderr: str | bytes) -> NoReturn:
        """Raise the error for a failed dovecot-lda run.

        The text is the first non-empty of the stripped stdout, the stripped
        stderr and ``'LDA delivery failed'``. :attr:`EX_TEMPFAIL` and signals
        (``450 4.3.0``) are transient; every other status is a permanent ``550``
        (``5.1.1`` for ``EX_NOUSER``, 67, when the output has no code of its own).
        """
        text = as_text(stdout).strip() or as_text(stderr).strip() or "LDA delivery failed"
        lda_failure(status, text, self.EX_TEMPFAIL)
