"""Postfix ``smtp-sink``: a fast, real SMTP (or LMTP) server that records what it got.

The sink runs with ``-d DIR/%s.`` so that every completed transaction lands in its own
file (``-D`` would append every transaction to one file, and concurrent sessions could
interleave there). :meth:`SmtpSink.messages` parses those files back into envelopes.

Behaviour checked on Postfix 3.7 (``test_harness.py`` covers the ones marked *):

* default EHLO: PIPELINING, 8BITMIME, AUTH PLAIN LOGIN, XCLIENT, XFORWARD,
  ENHANCEDSTATUSCODES, DSN, then a last line ``250 `` with empty text; no STARTTLS,
  SIZE or SMTPUTF8. ``AUTH`` with any credentials is answered ``250 2.0.0 Ok``
  (not 235).
* ``-p`` drops PIPELINING*, ``-8`` 8BITMIME*, ``-a`` AUTH, ``-E`` ENHANCEDSTATUSCODES*,
  ``-N`` DSN, ``-C`` XCLIENT, ``-F`` XFORWARD; ``-e`` answers EHLO with 500 (HELO
  only)*; ``-P`` also greets as a PIX firewall (``220 ********``) and implies ``-e``;
  ``-L`` speaks LMTP (LHLO only; EHLO gets 500)*; ``-h NAME`` sets the hostname.
* ``-f CMD,...`` answers those commands ``500 5.3.0 Error: command failed``*; ``-r``
  answers ``450 4.3.0 Error: command failed``*; both imply ``-p``. ``-q CMD``
  disconnects without replying*, ``-Q CMD`` replies 421 and disconnects, ``-A 0``
  answers DATA with 550 before the body. ``.`` is the end-of-data command name.
* A transaction's file is created (empty) at MAIL, written as data arrives, and
  closed when its ``.`` is read, before the reply is sent; so it is complete when the
  client sees the final reply. It is dumped even when ``-f .`` or
  ``-r .`` then rejects it; a transaction that ends early (RSET, rejected RCPTs,
  ``-q``) is not dumped.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from support.inotify import CloseWatcher
from support.util import (
    chown_nobody,
    free_port,
    require_program,
    shared_tmpdir,
    stop_process_group,
    wait_for_process_port,
    wait_until,
)

__all__ = ["SinkMessage", "SmtpSink", "parse_sink_dump", "smtp_sink"]

HOST = "127.0.0.1"
#: Listen backlog handed to smtp-sink; generous for the pool tests.
LISTEN_BACKLOG = 100

#: A complete dump ends with the message's last newline plus one empty line.
_DUMP_END = b"\n\n"
#: Headers smtp-sink writes before the message; the three-line Received ends them.
_SINK_HEADER_COUNT_AFTER_RECEIVED = 2


@dataclass(frozen=True)
class SinkMessage:
    """One transaction as smtp-sink dumped it.

    ``data`` is the message as received, after dot-unstuffing and with every line
    ended by CRLF (the dump stores bare LF). smtp-sink drops bare CRs (``x\\ry`` is
    dumped as ``xy``), so only CRLF-clean messages round-trip exactly.
    ``mail_args`` and ``rcpt_args`` keep the raw parameters (``BODY=8BITMIME``,
    ``NOTIFY=NEVER``).
    """

    mail_from: str
    rcpt_to: list[str]
    data: bytes
    mail_args: list[str] = field(default_factory=list)
    rcpt_args: list[list[str]] = field(default_factory=list)
    helo: str | None = None
    protocol: str = ""


def _split_address(args: str) -> tuple[str, list[str]]:
    """Split ``<addr> PARAM=x`` into the bare address and its parameters."""
    address, _, params = args.partition(" ")
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address, params.split()


def parse_sink_dump(raw: bytes) -> SinkMessage:
    """Parse one ``-d`` dump file (see "DUMP FILE FORMAT" in ``man smtp-sink``)."""
    if not raw.endswith(_DUMP_END):
        raise ValueError(f"incomplete smtp-sink dump: {raw[-200:]!r}")
    # Drop the trailing empty line, then split into lines without their LF.
    lines = raw[: -len(_DUMP_END)].split(b"\n")
    fields: dict[str, list[str]] = {}
    index = 0
    while index < len(lines):
        name, _, value = lines[index].decode("utf-8", "surrogateescape").partition(": ")
        fields.setdefault(name, []).append(value)
        index += 1
        if name == "Received":
            index += _SINK_HEADER_COUNT_AFTER_RECEIVED
            break
    else:
        raise ValueError(f"no smtp-sink Received header in dump: {raw[:200]!r}")
    mail_from, mail_args = _split_address(fields["X-Mail-Args"][0])
    recipients = [_split_address(value) for value in fields.get("X-Rcpt-Args", [])]
    body = lines[index:]
    return SinkMessage(
        mail_from=mail_from,
        rcpt_to=[address for address, _ in recipients],
        data=b"".join(line + b"\r\n" for line in body),
        mail_args=mail_args,
        rcpt_args=[params for _, params in recipients],
        helo=fields.get("X-Helo-Args", [None])[0],
        protocol=fields["X-Client-Proto"][0],
    )


@dataclass
class SmtpSink:
    """A running smtp-sink and the directory its transactions are dumped to."""

    host: str
    port: int
    dump_dir: str
    args: list[str]
    watcher: CloseWatcher

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, as socket and relay APIs want it."""
        return (self.host, self.port)

    def messages(self) -> list[SinkMessage]:
        """Every complete transaction dumped so far, in the order they completed.

        Call it after the client has seen the final reply to its DATA: the file is
        closed before that reply. The order comes from the order the sink closed the
        files (see :mod:`support.inotify`). smtp-sink creates a transaction's file at
        MAIL and deletes it when the transaction is abandoned (RSET, a dropped
        connection), so a file that is gone or incomplete is skipped.
        """
        result = []
        for name in self.watcher.closed_names():
            try:
                with open(os.path.join(self.dump_dir, name), "rb") as handle:
                    raw = handle.read()
            except FileNotFoundError:
                continue  # abandoned transaction, deleted after closing
            if raw.endswith(_DUMP_END):
                result.append(parse_sink_dump(raw))
        return result

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[SinkMessage]:
        """Wait until at least ``count`` transactions are complete, then return them all.

        For clients that report success before the sink is known to be done (for
        example a relay that hands off to a background pool).
        """
        wait_until(
            lambda: len(self.messages()) >= count,
            f"{count} messages in {self.dump_dir}",
            timeout,
        )
        return self.messages()


SmtpSinkFactory = Callable[..., SmtpSink]


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSinkFactory]:
    """Factory: ``smtp_sink(*extra_args)`` starts one smtp-sink per call.

    ``extra_args`` go straight to smtp-sink, e.g. ``smtp_sink("-f", "RCPT")`` to
    reject every RCPT with 5xx, ``smtp_sink("-p")`` to hide PIPELINING or
    ``smtp_sink("-L")`` for LMTP. Every sink started is stopped, and its dump
    directory removed, at teardown.
    """
    program = require_program("smtp-sink")
    with contextlib.ExitStack() as stack:

        def start(*extra_args: str) -> SmtpSink:
            base = stack.enter_context(shared_tmpdir("slimta-sink-"))
            dump_dir = os.path.join(base, "dump")
            os.mkdir(dump_dir)
            # The sink opens its dump files only after dropping to nobody.
            chown_nobody(dump_dir)
            watcher = CloseWatcher(dump_dir)
            stack.callback(watcher.close)
            port = free_port(HOST)
            args = [
                program,
                "-u",
                "nobody",
                "-d",
                os.path.join(dump_dir, "%Y%m%d%H%M%S."),
                *extra_args,
                f"{HOST}:{port}",
                str(LISTEN_BACKLOG),
            ]
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
            stack.callback(stop_process_group, proc)
            wait_for_process_port(proc, HOST, port)
            return SmtpSink(host=HOST, port=port, dump_dir=dump_dir, args=args, watcher=watcher)

        yield start
