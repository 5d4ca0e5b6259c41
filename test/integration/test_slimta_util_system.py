"""slimta.util.system, each function run in a child Python process."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from support.util import wait_for_path

from slimta.util.system import PidFile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_child(code: str, timeout: float = 20.0) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, timeout=timeout, check=False)


def test_daemonize_detaches(tmp_path: Any) -> None:
    out = tmp_path / "daemon.json"
    proc = run_child(f"""
        import json, os
        from slimta.util.system import daemonize
        starter = os.getpid()
        pid = daemonize()
        umask = os.umask(0o022)
        info = dict(starter=starter, pid=pid, getpid=os.getpid(), sid=os.getsid(0),
                    pgid=os.getpgid(0), cwd=os.getcwd(), umask=umask)
        with open({str(out)!r} + ".tmp", "w") as f:
            json.dump(info, f)
        os.rename({str(out)!r} + ".tmp", {str(out)!r})
    """)
    assert proc.returncode == 0, proc.stderr
    wait_for_path(str(out))
    info = json.loads(out.read_text())
    assert info["pid"] == info["getpid"] != info["starter"]
    # In a new session, but not its leader: it cannot get a controlling terminal back.
    assert info["sid"] != info["pid"]
    assert info["sid"] != os.getsid(0)
    assert info["cwd"] == "/"
    assert info["umask"] == 0


def test_redirect_stdio(tmp_path: Any) -> None:
    stdout, stderr, stdin = tmp_path / "out", tmp_path / "err", tmp_path / "in"
    stdout.write_bytes(b"before\n")
    stdin.write_bytes(b"input line\n")
    proc = run_child(f"""
        import os, sys
        from slimta.util.system import redirect_stdio
        print("buffered", end="")
        redirect_stdio({str(stdout)!r}, {str(stderr)!r}, {str(stdin)!r})
        line = sys.stdin.readline()
        print("read:", line.strip())
        sys.stderr.write("to stderr\\n")
        os.write(1, b"raw fd 1\\n")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"buffered"   # flushed before the switch
    written = stdout.read_bytes()
    assert written.startswith(b"before\n")   # appended, not truncated
    assert sorted(written.splitlines()[1:]) == [b"raw fd 1", b"read: input line"]
    assert stderr.read_bytes() == b"to stderr\n"


def test_redirect_stdio_defaults_to_devnull() -> None:
    proc = run_child("""
        import sys
        from slimta.util.system import redirect_stdio
        redirect_stdio()
        print("gone")
        sys.stderr.write("gone too")
        assert sys.stdin.read() == ""
    """)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_drop_privileges_by_name_and_number() -> None:
    nobody = pwd.getpwnam("nobody")
    for user, group in (("nobody", str(nobody.pw_gid)), (nobody.pw_uid, nobody.pw_gid)):
        proc = run_child(f"""
            import os
            from slimta.util.system import drop_privileges
            drop_privileges({user!r}, {group!r})
            print(os.getuid(), os.geteuid(), os.getgid(), os.getegid(), sorted(os.getgroups()))
            try:
                os.setuid(0)
            except PermissionError:
                print("cannot regain root")
        """)
        assert proc.returncode == 0, proc.stderr
        uid, gid = nobody.pw_uid, nobody.pw_gid
        assert proc.stdout.decode().splitlines() == [
            f"{uid} {uid} {gid} {gid} [{gid}]", "cannot regain root"
        ]


def test_drop_privileges_unknown_user() -> None:
    proc = run_child("""
        from slimta.util.system import drop_privileges
        try:
            drop_privileges("no-such-user-xyz")
        except KeyError:
            print("KeyError")
        drop_privileges()
    """)
    assert proc.stdout == b"KeyError\n"


def test_pid_file(tmp_path: Any) -> None:
    path = tmp_path / "edge.pid"
    with PidFile(str(path)) as name:
        assert name == str(path)
        assert path.read_bytes() == f"{os.getpid()}\n".encode()
    assert not path.exists()


def test_pid_file_left_alone_when_another_process_took_it(tmp_path: Any) -> None:
    path = tmp_path / "edge.pid"
    with PidFile(str(path)):
        path.write_text("999999\n")
    assert path.read_text() == "999999\n"


def test_pid_file_none_and_error(tmp_path: Any) -> None:
    with PidFile(None) as name:
        assert name is None
    ran = []
    with pytest.raises(OSError), PidFile(str(tmp_path / "missing" / "x.pid")):
        ran.append(True)
    assert ran == []
    assert os.listdir(tmp_path) == []
