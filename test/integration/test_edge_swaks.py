"""swaks, a real scripted SMTP client, against SmtpEdge → Queue(DictStorage).

Plain, STARTTLS, AUTH PLAIN and LOGIN, pipelining, an oversized message and the
SMTP smuggling end-of-data look-alikes (sent raw with ``--no-data-fixup``).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import support.smtp_edge
from gevent import subprocess
from support.smtp_edge import PASSWORD, USER, EdgeUnderTest
from support.smuggling import SMUGGLED, SMUGGLING_VARIANTS
from support.util import GUARD_SECONDS, require_program

#: The fixture (not registered suite-wide by support.servers).
smtp_edge = support.smtp_edge.smtp_edge

MESSAGE = (
    b"From: Alice <a@src.test>\r\n"
    b"To: b@dst.test\r\n"
    b"Subject: swaks\r\n"
    b"\r\n"
    b"Hello from swaks.\r\n"
    b".a line that starts with a dot\r\n"
)
#: swaks ends the data with "\r\n.\r\n" even after a final CRLF: one empty line more.
STORED = MESSAGE + b"\r\n"


@pytest.fixture
def swaks(tmp_path: Any) -> Any:
    program = require_program("swaks")

    def run(edge: EdgeUnderTest, *args: str, data: bytes = MESSAGE) -> tuple[int, str]:
        path = tmp_path / "data.eml"
        path.write_bytes(data)
        host, port = edge.address
        cmd = [
            program,
            "--server",
            host,
            "--port",
            str(port),
            "--helo",
            "client.src.test",
            "--from",
            "a@src.test",
            "--timeout",
            "20",
            "--data",
            f"@{path}",
            *args,
        ]
        if "--to" not in args:
            cmd += ["--to", "b@dst.test"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "LC_ALL": "C"}
        )
        out, _ = proc.communicate(timeout=GUARD_SECONDS)
        return proc.returncode, out.decode("utf-8", "replace")

    return run


def only_message(edge: EdgeUnderTest) -> Any:
    (env,) = edge.stored()
    return env


def test_plain(smtp_edge: Any, swaks: Any) -> None:
    edge = smtp_edge()
    rc, out = swaks(edge)
    assert rc == 0, out
    assert "<-  250 2.6.0 Message accepted for delivery" in out
    env = only_message(edge)
    assert (env.sender, env.recipients) == ("a@src.test", ["b@dst.test"])
    assert b"".join(env.flatten()) == STORED
    assert env.client["protocol"] == "ESMTP"


def test_starttls(smtp_edge: Any, swaks: Any, tls_cert: Any) -> None:
    edge = smtp_edge(context=tls_cert.gevent_server_context())
    rc, out = swaks(edge, "--tls")
    assert rc == 0, out
    assert "<~  250 2.6.0 Message accepted for delivery" in out
    env = only_message(edge)
    assert env.client["protocol"] == "ESMTPS"
    assert b"".join(env.flatten()) == STORED


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_over_starttls(smtp_edge: Any, swaks: Any, tls_cert: Any, mechanism: str) -> None:
    edge = smtp_edge(context=tls_cert.gevent_server_context(), auth=True)
    rc, out = swaks(
        edge, "--tls", "--auth", mechanism, "--auth-user", USER, "--auth-password", PASSWORD
    )
    assert rc == 0, out
    assert "<~  235 2.7.0 Authentication successful" in out
    env = only_message(edge)
    assert env.client["protocol"] == "ESMTPSA"
    assert env.client["auth"] == (USER, USER)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_wrong_password(smtp_edge: Any, swaks: Any, tls_cert: Any, mechanism: str) -> None:
    edge = smtp_edge(context=tls_cert.gevent_server_context(), auth=True)
    rc, out = swaks(
        edge, "--tls", "--auth", mechanism, "--auth-user", USER, "--auth-password", "wrong"
    )
    assert rc != 0
    assert "535 5.7.8" in out
    assert edge.stored() == []


def test_auth_not_offered_in_clear(smtp_edge: Any, swaks: Any, tls_cert: Any) -> None:
    edge = smtp_edge(context=tls_cert.gevent_server_context(), auth=True)
    rc, out = swaks(edge, "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD)
    assert rc != 0
    assert "250-AUTH" not in out and "250 AUTH" not in out
    assert edge.stored() == []


def test_pipelining(smtp_edge: Any, swaks: Any) -> None:
    edge = smtp_edge()
    rc, out = swaks(edge, "--pipeline", "--to", "b@dst.test,c@reject.test,d@dst.test")
    assert rc == 0, out
    assert "<** 550 5.1.1 Unknown recipient" in out
    pipelined = " -> MAIL FROM:<a@src.test>\n -> RCPT TO:<b@dst.test>\n -> RCPT TO:<c@reject.test>"
    assert pipelined in out
    env = only_message(edge)
    assert env.recipients == ["b@dst.test", "d@dst.test"]


def test_oversized(smtp_edge: Any, swaks: Any) -> None:
    edge = smtp_edge(max_size=2000)
    big = MESSAGE + b"x" * 76 + b"\r\n"
    rc, out = swaks(edge, data=big * 100)
    assert rc != 0
    assert "<** 552 5.3.4 Message size exceeds 2000 limit" in out
    assert "<-  221" in out  # the session went on to QUIT
    assert edge.stored() == []


@pytest.mark.parametrize("variant", SMUGGLING_VARIANTS, ids=repr)
def test_smuggling_variant(smtp_edge: Any, swaks: Any, variant: bytes) -> None:
    edge = smtp_edge()
    data = b"From: a@src.test\r\nSubject: one\r\n\r\nbody" + variant + SMUGGLED + b".\r\n"
    rc, out = swaks(edge, "--no-data-fixup", data=data)
    assert rc == 0, out
    assert out.count("250 2.6.0 Message accepted") == 1
    env = only_message(edge)
    assert env.sender == "a@src.test" and env.recipients == ["b@dst.test"]
    header, body = env.flatten()
    assert b"MAIL FROM:<evil@attacker.test>" in body
    whole = header + body
    assert whole.count(b"\r") == whole.count(b"\n") == whole.count(b"\r\n")
