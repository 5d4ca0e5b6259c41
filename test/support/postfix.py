"""``postfix_client``: a private Postfix instance whose SMTP client relays to a test server.

The instance lives in a temporary directory: its own ``config_directory``
(``main.cf`` and a ``master.cf`` with only the services a relay-only Postfix
needs), ``queue_directory`` and ``data_directory``. It listens on nothing but its
private unix sockets (``inet_interfaces = loopback-only`` and no ``smtpd`` in
``master.cf``), delivers nothing locally (``mydestination`` empty) and hands
every message to ``relayhost = [127.0.0.1]:PORT`` over STARTTLS
(``smtp_tls_security_level = encrypt``: no TLS, no delivery).

Messages are submitted with Postfix's own ``sendmail -C DIR`` (postdrop, then the
pickup service). The master runs in the foreground (``postfix start-fg``) under
our child; teardown runs ``postfix -c DIR stop``, stops that child's process group
and then kills, one pid at a time, any Postfix program still left in the
master's own process group (the master calls ``setsid``). The log goes to ``DIR/maillog``
(:meth:`PostfixInstance.log`), which failure messages quote.

Nothing here runs blocking calls in the gevent hub: ``sendmail`` is run through
:mod:`gevent.subprocess`, so an :class:`~slimta.edge.smtp.SmtpEdge` in the test's
hub keeps serving Postfix while the test waits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from gevent import subprocess as gsubprocess

from support.util import GUARD_SECONDS, require_program, stop_process_group, wait_until

__all__ = ["PostfixInstance", "postfix_client", "strip_postfix_received"]


#: Where Debian installs the Postfix daemons (master, pickup, smtp...).
DAEMON_DIRECTORY = "/usr/lib/postfix/sbin/"

#: The name the instance gives itself (``myhostname``): it appears in Received.
POSTFIX_HOSTNAME = "postfix.example.test"

# Only what a relay-only instance uses; no chroot (the temp dir has no copy of
# /etc, /lib...), no smtpd (nothing listens on the network), no local delivery.
_MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _main_cf(base: str, relay_port: int, ca_path: str | None) -> str:
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": os.path.join(base, "queue"),
        "data_directory": os.path.join(base, "data"),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": POSTFIX_HOSTNAME,
        "mydomain": "example.test",
        "myorigin": "$myhostname",
        "mydestination": "",
        "local_recipient_maps": "",
        "local_transport": "error:local delivery is disabled",
        "alias_maps": "",
        "alias_database": "",
        "inet_interfaces": "loopback-only",
        "inet_protocols": "ipv4",
        "relayhost": f"[127.0.0.1]:{relay_port}",
        "smtp_tls_security_level": "encrypt",
        "smtp_tls_loglevel": "1",
        "smtp_tls_CAfile": ca_path or "",
        "smtp_dns_support_level": "disabled",
        "smtputf8_enable": "yes",
        "maillog_file": os.path.join(base, "maillog"),
        "maillog_file_prefixes": base,
        # Deliver at once and retry fast: the tests wait for delivery.
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "2s",
        "smtp_connect_timeout": "10s",
        "biff": "no",
        "append_dot_mydomain": "no",
        "readme_directory": "no",
    }
    return "".join(f"{name} = {value}\n" for name, value in settings.items())


@dataclass
class PostfixInstance:
    """A running private Postfix: its config directory and how to feed it."""

    base: str
    sendmail: str
    postfix: str

    @property
    def config_dir(self) -> str:
        return os.path.join(self.base, "etc")

    def log(self) -> str:
        """The instance's mail log so far (for failure messages)."""
        try:
            with open(os.path.join(self.base, "maillog"), encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def submit(self, sender: str, recipients: list[str], data: bytes, *flags: str) -> None:
        """Run ``sendmail -C DIR -i -f SENDER -- RECIPIENTS`` with ``data`` on stdin.

        Runs through :mod:`gevent.subprocess`, so the hub keeps serving meanwhile.
        """
        cmd = [self.sendmail, "-C", self.config_dir, "-i", *flags, "-f", sender, "--", *recipients]
        proc = gsubprocess.Popen(
            cmd, stdin=gsubprocess.PIPE, stdout=gsubprocess.PIPE, stderr=gsubprocess.STDOUT
        )
        out, _ = proc.communicate(data, timeout=GUARD_SECONDS)
        if proc.returncode != 0:
            raise AssertionError(f"sendmail exited {proc.returncode}: {out!r}\n{self.log()}")

    def queue_is_empty(self) -> bool:
        """True when no message is left in the instance's queue (all delivered)."""
        queue = os.path.join(self.base, "queue")
        for sub in ("maildrop", "incoming", "active", "deferred"):
            for _root, _dirs, files in os.walk(os.path.join(queue, sub)):
                if files:
                    return False
        return True


def strip_postfix_received(data: bytes) -> tuple[bytes, bytes]:
    """Split off the one ``Received:`` field Postfix's cleanup puts on top.

    Returns ``(received_field, rest)``; the field is its first line plus every
    continuation line after it. Raises ``AssertionError`` when the data does not
    start with a Postfix ``Received:`` field.
    """
    lines = data.split(b"\r\n")
    assert lines[0].startswith(b"Received: by " + POSTFIX_HOSTNAME.encode()), data[:200]
    end = 1
    while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
        end += 1
    field = b"\r\n".join(lines[:end]) + b"\r\n"
    return field, data[len(field) :]


PostfixFactory = Callable[..., PostfixInstance]


def _master_pid(base: str) -> int | None:
    try:
        with open(os.path.join(base, "queue", "pid", "master.pid"), encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _postfix_processes(pgid: int) -> list[int]:
    """Live Postfix programs in process group ``pgid`` (the master's: it calls setsid)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            exe = os.readlink(f"/proc/{entry}/exe")
        except OSError:
            continue
        # fields: state, ppid, pgrp, ...; a zombie has no exe to read.
        if int(fields[2]) == pgid and fields[0] != "Z" and exe.startswith(DAEMON_DIRECTORY):
            found.append(int(entry))
    return found


def _stop(postfix: str, base: str, proc: subprocess.Popen[bytes]) -> None:
    """``postfix stop``, then kill whatever the master left behind, by pid."""
    config_dir = os.path.join(base, "etc")
    master = _master_pid(base)
    if proc.poll() is None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [postfix, "-c", config_dir, "stop"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=GUARD_SECONDS,
                check=False,
            )
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(GUARD_SECONDS)
    stop_process_group(proc)
    if master is not None:
        with contextlib.suppress(RuntimeError):
            wait_until(lambda: not _postfix_processes(master), "postfix to exit", 2.0)
        for pid in _postfix_processes(master):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def postfix_client() -> Iterator[PostfixFactory]:
    """Factory: ``postfix_client(relay_port, ca_path=None)`` starts one private Postfix.

    Every message it is given goes to ``[127.0.0.1]:relay_port`` over STARTTLS.
    Everything started is stopped, and its directory removed, at teardown.
    """
    postfix = require_program("postfix")
    sendmail = require_program("/usr/sbin/sendmail")
    require_program("postconf")
    with contextlib.ExitStack() as stack:

        def start(relay_port: int, ca_path: str | None = None) -> PostfixInstance:
            base = tempfile.mkdtemp(prefix="slimta-postfix-")
            stack.callback(shutil.rmtree, base, True)
            os.chmod(base, 0o755)
            config_dir = os.path.join(base, "etc")
            for sub in ("etc", "queue", "data"):
                os.mkdir(os.path.join(base, sub), 0o755)
            shutil.chown(os.path.join(base, "data"), "postfix")
            with open(os.path.join(config_dir, "main.cf"), "w", encoding="ascii") as handle:
                handle.write(_main_cf(base, relay_port, ca_path))
            with open(os.path.join(config_dir, "master.cf"), "w", encoding="ascii") as handle:
                handle.write(_MASTER_CF)
            # Creates the queue's subdirectories with Postfix's own owners and modes.
            check = subprocess.run(
                [postfix, "-c", config_dir, "check"],
                capture_output=True,
                timeout=GUARD_SECONDS,
                check=False,
            )
            if check.returncode != 0:
                raise RuntimeError(f"postfix check failed: {check.stdout!r} {check.stderr!r}")
            proc = subprocess.Popen(
                [postfix, "-c", config_dir, "start-fg"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            stack.callback(_stop, postfix, base, proc)
            instance = PostfixInstance(base=base, sendmail=sendmail, postfix=postfix)
            pickup = os.path.join(base, "queue", "public", "pickup")

            def ready() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"postfix exited {proc.returncode}:\n{instance.log()}")
                return os.path.exists(pickup) and os.path.exists(
                    os.path.join(base, "queue", "pid", "master.pid")
                )

            wait_until(ready, "the postfix master to start", GUARD_SECONDS)
            return instance

        yield start
