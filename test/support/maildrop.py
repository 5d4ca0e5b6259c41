"""A Maildir plus maildrop filter files, for the maildrop delivery tests.

maildrop reads its rules from the filter file given as its first argument. It refuses
a filter that group or others may write, so the files here are 0600. Verified exits:

* ``to "BOX/"`` into an existing Maildir: 0, message stored byte for byte (CRLF kept).
* ``to`` a directory that does not exist, or a filter file that does not exist: 75
  (EX_TEMPFAIL).
* ``EXITCODE=77`` then ``exit`` in the filter: 77 (or any code chosen that way).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from support.util import GUARD_SECONDS, read_maildir, require_program, shared_tmpdir

__all__ = ["MaildropBox", "maildrop_box"]


@dataclass
class MaildropBox:
    """A Maildir and a filter file that delivers into it.

    :attr:`filter_path` delivers to :attr:`maildir`. :meth:`write_filter` makes more
    filters (say, one that sets ``EXITCODE``) next to it.
    """

    program: str
    root: str
    maildir: str
    filter_path: str

    def write_filter(self, name: str, text: str) -> str:
        """Write a 0600 filter file called ``name`` containing ``text``; return its path."""
        path = os.path.join(self.root, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        return path

    def exit_filter(self, code: int) -> str:
        """A filter that delivers nothing and makes maildrop exit with ``code``."""
        return self.write_filter(f"exit-{code}.filter", f"EXITCODE={code}\nexit\n")

    def missing_box_filter(self) -> str:
        """A filter delivering into a Maildir that does not exist (maildrop exits 75)."""
        missing = os.path.join(self.root, "no-such-box") + "/"
        return self.write_filter("missing-box.filter", f'to "{missing}"\n')

    def args(self, sender: str, filter_path: str | None = None) -> list[str]:
        """argv delivering stdin through ``filter_path`` (default: into :attr:`maildir`)."""
        return [self.program, filter_path or self.filter_path, "-f", sender]

    def run(
        self, message: bytes, sender: str, filter_path: str | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run maildrop on ``message`` and return the finished process."""
        return subprocess.run(
            self.args(sender, filter_path),
            input=message,
            capture_output=True,
            timeout=GUARD_SECONDS,
            check=False,
        )

    def messages(self) -> list[bytes]:
        """Messages delivered into :attr:`maildir`, oldest first."""
        return read_maildir(self.maildir)


@pytest.fixture
def maildrop_box() -> Iterator[MaildropBox]:
    """A fresh Maildir (``cur``/``new``/``tmp``) with a 0600 ``to "BOX/"`` filter file."""
    program = require_program("maildrop")
    with shared_tmpdir("slimta-maildrop-") as root:
        maildir = os.path.join(root, "Maildir")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(maildir, sub))
        box = MaildropBox(program=program, root=root, maildir=maildir, filter_path="")
        box.filter_path = box.write_filter("deliver.filter", f'to "{maildir}/"\n')
        yield box
