"""``spamd``: a private SpamAssassin daemon on a loopback port (Debian packages
``spamassassin`` and ``spamd``).

Started once per session with its own site configuration directory (network
tests, Bayes, auto-learning off: only local rules such as
GTUBE decide), no per-user configuration, one child, and a helper home directory
of its own, so nothing outside its temporary directory is read for settings or
written to.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from support.util import (
    GUARD_SECONDS,
    chown_nobody,
    free_port,
    require_program,
    shared_tmpdir,
    stop_process_group,
    wait_for_process_port,
)

__all__ = ["GTUBE", "SpamdServer", "spamd"]

HOST = "127.0.0.1"
#: spamd compiles its whole rule set before it listens: the slowest start in the suite,
#: several times any other single step on a loaded machine, so it gets five guard times.
START_TIMEOUT_SECONDS = 5 * GUARD_SECONDS
#: The Generic Test for Unsolicited Bulk Email: every SpamAssassin scores it as spam.
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

LOCAL_CF = """\
use_bayes 0
bayes_auto_learn 0
skip_rbl_checks 1
dns_available no
use_razor2 0
use_pyzor 0
required_score 5.0
"""


@dataclass(frozen=True)
class SpamdServer:
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: str

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


@pytest.fixture(scope="session")
def spamd() -> Iterator[SpamdServer]:
    """One spamd for the whole session, on a free loopback port."""
    program = require_program("spamd")
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(shared_tmpdir("slimta-spamd-"))
        site = os.path.join(base, "site")
        home = os.path.join(base, "home")
        os.mkdir(site)
        os.mkdir(home)
        with open(os.path.join(site, "local.cf"), "w") as conf:
            conf.write(LOCAL_CF)
        # init.pre loads the standard plugins; keep the packaged one if there is one.
        for name in ("init.pre", "v310.pre", "v312.pre", "v320.pre", "v330.pre", "v340.pre",
                     "v341.pre", "v342.pre", "v343.pre", "v400.pre", "v401.pre"):
            packaged = os.path.join("/etc/spamassassin", name)
            if os.path.exists(packaged):
                with open(packaged) as src, open(os.path.join(site, name), "w") as dst:
                    dst.write(src.read())
        chown_nobody(home)
        log_path = os.path.join(base, "spamd.log")
        port = free_port(HOST)
        args = [
            program,
            f"--listen={HOST}:{port}",
            f"--allowed-ips={HOST}",
            f"--siteconfigpath={site}",
            "--local",
            "--nouser-config",
            f"--helper-home-dir={home}",
            "--max-children=1",
            "--min-children=1",
            f"--pidfile={os.path.join(base, 'spamd.pid')}",
            f"--syslog={log_path}",
        ]
        if os.geteuid() == 0:
            args.append("--username=nobody")
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        stack.callback(stop_process_group, proc)
        wait_for_process_port(proc, HOST, port, timeout=START_TIMEOUT_SECONDS)
        yield SpamdServer(HOST, port, proc, log_path)
