"""A private Dovecot instance: LMTP on TCP and a unix socket, plus ``dovecot-lda``.

Everything lives in one temporary directory (config, sockets, state, logs and the
users' Maildirs), so the system's Dovecot configuration is never read or touched.
The instance is shared by the whole session; the function-scoped fixtures empty the
users' mailboxes first, so each test sees only its own deliveries.

Users (passwd-file, all mapped to ``nobody``): ``alice`` and ``bob`` receive mail;
``broken`` exists but its home is not writable, so every delivery to it fails
temporarily (LMTP ``451 4.2.0`` after DATA, dovecot-lda exit 75). Any other name is
rejected at RCPT with ``550 5.1.1``; dovecot-lda exits 67 for it.
``auth_username_format = %Ln`` maps ``Alice@Example.COM`` to ``alice``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from support.util import (
    GUARD_SECONDS,
    chown_nobody,
    free_port,
    read_maildir,
    require_program,
    shared_tmpdir,
    stop_process_group,
    wait_for_path,
    wait_for_process_port,
)

__all__ = ["DovecotLda", "DovecotLmtp", "dovecot_lda", "dovecot_lmtp"]

HOST = "127.0.0.1"
#: Users who can receive mail.
MAIL_USERS = ("alice", "bob")
#: A user whose deliveries always fail temporarily (home not writable).
BROKEN_USER = "broken"
#: The password of every user (LMTP does not authenticate; kept for completeness).
PASSWORD = "secret"
#: dovecot-lda, where Debian installs it.
LDA_PATH = "/usr/lib/dovecot/dovecot-lda"

_CONFIG_TEMPLATE = """\
instance_name = {instance}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = lmtp
listen = {host}
ssl = no
first_valid_uid = 1
mail_location = maildir:{root}/mail/%n/Maildir
default_login_user = dovenull
default_internal_user = dovecot
auth_username_format = %Ln
passdb {{
  driver = passwd-file
  args = {root}/users
}}
userdb {{
  driver = passwd-file
  args = {root}/users
}}
service lmtp {{
  inet_listener lmtp {{
    address = {host}
    port = {port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
"""


@dataclass
class DovecotLmtp:
    """A running private Dovecot with LMTP listeners and per-user Maildirs."""

    host: str
    port: int
    socket_path: str
    config_path: str
    root: str
    log_path: str

    users = MAIL_USERS
    broken_user = BROKEN_USER

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of the LMTP TCP listener."""
        return (self.host, self.port)

    def maildir(self, user: str) -> str:
        """Path of ``user``'s Maildir (created by Dovecot on first delivery)."""
        return os.path.join(self.root, "mail", user, "Maildir")

    def messages(self, user: str) -> list[bytes]:
        """Messages delivered to ``user`` in this test, oldest first.

        Dovecot stores them with LF line endings and adds ``Return-Path`` and (for
        LMTP) ``Delivered-To``/``Received`` headers in front.
        """
        return read_maildir(self.maildir(user))

    def log(self) -> str:
        """Dovecot's log so far (delivery errors land here, not in replies)."""
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def reset_mailboxes(self) -> None:
        """Delete every user's Maildir so the next test starts empty.

        Safe between tests: an LMTP session opens the mailbox afresh, and Dovecot
        recreates a missing Maildir (with new indexes) on the next delivery.
        """
        for user in self.users:
            shutil.rmtree(self.maildir(user), ignore_errors=True)


@dataclass
class DovecotLda:
    """How to run ``dovecot-lda`` against the private instance.

    ``dovecot-lda`` looks users up through the running instance's auth socket, so
    it needs :class:`DovecotLmtp` alive (with the instance stopped it exits 75).
    """

    program: str
    config_path: str
    server: DovecotLmtp

    def args(self, user: str, sender: str) -> list[str]:
        """argv delivering stdin to ``user`` with envelope sender ``sender``."""
        return [self.program, "-c", self.config_path, "-d", user, "-f", sender]

    def run(self, user: str, sender: str, message: bytes) -> subprocess.CompletedProcess[bytes]:
        """Deliver ``message`` and return the finished process (exit code, output)."""
        return subprocess.run(
            self.args(user, sender),
            input=message,
            capture_output=True,
            timeout=GUARD_SECONDS,
            check=False,
        )

    def maildir(self, user: str) -> str:
        """Path of ``user``'s Maildir; the same one LMTP delivers into."""
        return self.server.maildir(user)

    def messages(self, user: str) -> list[bytes]:
        """Messages delivered to ``user`` in this test, oldest first."""
        return self.server.messages(user)


def _write_instance(root: str, port: int) -> str:
    """Write config, passwd-file and mail homes under ``root``; return the config path."""
    nobody = pwd.getpwnam("nobody")
    for sub in ("run", "state", "mail"):
        os.mkdir(os.path.join(root, sub))
    lines = []
    for user in (*MAIL_USERS, BROKEN_USER):
        home = os.path.join(root, "mail", user)
        os.mkdir(home)
        if user != BROKEN_USER:
            # Deliveries run as the passwd-file uid and must create Maildir here.
            chown_nobody(home)
        lines.append(f"{user}:{{PLAIN}}{PASSWORD}:{nobody.pw_uid}:{nobody.pw_gid}::{home}::\n")
    with open(os.path.join(root, "users"), "w", encoding="ascii") as handle:
        handle.writelines(lines)
    config_path = os.path.join(root, "dovecot.conf")
    instance = f"slimta-test-{os.getpid()}-{port}"
    with open(config_path, "w", encoding="ascii") as handle:
        handle.write(_CONFIG_TEMPLATE.format(instance=instance, root=root, host=HOST, port=port))
    return config_path


@pytest.fixture(scope="session")
def _dovecot_instance() -> Iterator[DovecotLmtp]:
    """Start one private Dovecot for the session and stop it (and its workers) after.

    It runs in the foreground (``-F``) as our child in its own process group. Teardown
    sends SIGTERM to the master, which is what ``dovecot -c CONF stop`` does, but
    waits on the child directly instead of the stop command's slower polling, then
    SIGKILLs anything left in the group.
    """
    program = require_program("dovecot")
    require_program("/usr/lib/dovecot/lmtp")
    with shared_tmpdir("slimta-dovecot-") as root:
        port = free_port(HOST)
        config_path = _write_instance(root, port)
        stderr_path = os.path.join(root, "stderr.log")
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(
                [program, "-F", "-c", config_path],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        try:
            socket_path = os.path.join(root, "run", "lmtp")
            try:
                wait_for_process_port(proc, HOST, port)
                wait_for_path(socket_path)
            except RuntimeError as exc:
                with open(stderr_path, encoding="utf-8", errors="replace") as handle:
                    raise RuntimeError(f"{exc}; dovecot said: {handle.read()}") from None
            yield DovecotLmtp(
                host=HOST,
                port=port,
                socket_path=socket_path,
                config_path=config_path,
                root=root,
                log_path=os.path.join(root, "dovecot.log"),
            )
        finally:
            stop_process_group(proc)


@pytest.fixture
def dovecot_lmtp(_dovecot_instance: DovecotLmtp) -> DovecotLmtp:
    """The session's Dovecot LMTP server, with alice's and bob's mailboxes emptied."""
    _dovecot_instance.reset_mailboxes()
    return _dovecot_instance


@pytest.fixture
def dovecot_lda(dovecot_lmtp: DovecotLmtp) -> DovecotLda:
    """``dovecot-lda`` set up to deliver into the same (emptied) Maildirs as LMTP."""
    program = require_program(LDA_PATH)
    return DovecotLda(program=program, config_path=dovecot_lmtp.config_path, server=dovecot_lmtp)
