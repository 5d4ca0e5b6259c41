"""Every script in ``examples/`` runs against a real server and delivers.

Each example is a separate process. The servers are real: aiosmtpd with STARTTLS
and AUTH, Postfix smtp-sink, Dovecot LMTP on its unix socket, maildrop, and the
gevent WSGI server. That last one runs in this test's own hub, so the example is
started with :mod:`gevent.subprocess` and waited for cooperatively, which keeps
the hub (and the server) running meanwhile.
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import gevent.subprocess
import pytest
from support.aiosmtpd_server import AiosmtpdFactory
from support.dovecot import DovecotLmtp
from support.maildrop import MaildropBox
from support.smtp_sink import SmtpSinkFactory
from support.tls import TlsCert
from support.util import GUARD_SECONDS
from support.wsgi_server import WsgiServerFactory

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``examples/<name>`` with ``args``; return its exit status and output.

    Uses :mod:`gevent.subprocess`, so servers living in this process's hub keep
    serving while we wait.
    """
    proc = gevent.subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), *args],
        stdout=gevent.subprocess.PIPE,
        stderr=gevent.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    output, _ = proc.communicate(timeout=GUARD_SECONDS)
    return proc.returncode, output.decode("utf-8", "replace")


def test_every_example_is_tested() -> None:
    tested = {
        "smarthost_auth.py",
        "mx_source_ip.py",
        "lmtp_dovecot.py",
        "http_relay.py",
        "maildrop_delivery.py",
        "queue_disk.py",
    }
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


def test_smarthost_auth(aiosmtpd_server: AiosmtpdFactory, tls_cert: TlsCert) -> None:
    server = aiosmtpd_server(starttls=True, auth=("relay-user", "relay-pass"))
    status, output = run_example(
        "smarthost_auth.py",
        "--host", server.host, "--port", str(server.port), "--user", "relay-user",
        "--from", "me@example.com", "--to", "you@example.net",
        "--count", "3", "--pool-size", "2", "--cafile", tls_cert.ca_path,
        env={"SMARTHOST_PASSWORD": "relay-pass"},
    )  # fmt: skip
    assert status == 0, output
    assert output.count(": 250 ") == 3
    assert len(server.envelopes) == 3
    for envelope in server.envelopes:
        assert envelope.tls and envelope.auth_login == "relay-user"
        assert envelope.rcpt_tos == ["you@example.net"]
    subjects = sorted(e.content.split(b"Subject: ")[1].split(b"\r\n")[0] for e in server.envelopes)
    assert subjects == [b"smart host test 1", b"smart host test 2", b"smart host test 3"]


def test_smarthost_auth_wrong_password(
    aiosmtpd_server: AiosmtpdFactory, tls_cert: TlsCert
) -> None:
    server = aiosmtpd_server(starttls=True, auth=("relay-user", "relay-pass"))
    status, output = run_example(
        "smarthost_auth.py",
        "--host", server.host, "--port", str(server.port), "--user", "relay-user",
        "--from", "me@example.com", "--to", "you@example.net", "--count", "1",
        "--cafile", tls_cert.ca_path,
        env={"SMARTHOST_PASSWORD": "wrong"},
    )  # fmt: skip
    assert status == 1
    assert "failed: 535" in output
    assert server.envelopes == []


def test_mx_source_ip(smtp_sink: SmtpSinkFactory) -> None:
    sink = smtp_sink()
    status, output = run_example(
        "mx_source_ip.py",
        "--source-ip", "127.0.0.2",
        "--from", "me@example.com", "--to", "you@mx-example.test",
        "--force-mx", f"mx-example.test={sink.host}:{sink.port}",
    )  # fmt: skip
    assert status == 0, output
    assert "you@mx-example.test: 250" in output
    [message] = sink.messages()
    assert message.rcpt_to == ["you@mx-example.test"]
    # smtp-sink records the peer address in its dump: the socket_creator bound it.
    dumps = [Path(sink.dump_dir, name).read_bytes() for name in os.listdir(sink.dump_dir)]
    assert any(b"127.0.0.2" in dump for dump in dumps)


def test_lmtp_dovecot(dovecot_lmtp: DovecotLmtp) -> None:
    status, output = run_example(
        "lmtp_dovecot.py",
        "--socket", dovecot_lmtp.socket_path, "--from", "me@example.com",
        "--to", "alice@example.com", "--to", "nobody-here@example.com",
    )  # fmt: skip
    assert status == 1, output  # one recipient bounced
    assert "alice@example.com: delivered: 250" in output
    assert "nobody-here@example.com: bounced: 550" in output
    [message] = dovecot_lmtp.messages("alice")
    assert b"Subject: LMTP test" in message


def test_http_relay(wsgi_server: WsgiServerFactory) -> None:
    server = wsgi_server()
    status, output = run_example(
        "http_relay.py",
        "--url", server.url + "messages?via=example",
        "--from", "me@example.com", "--to", "you@example.net",
    )  # fmt: skip
    assert status == 0, output
    assert "delivered: 250 2.0.0 Ok" in output
    [request] = server.requests
    assert (request.method, request.path, request.query) == ("POST", "/messages", "via=example")
    assert request.header("X-Envelope-Sender") == base64.b64encode(b"me@example.com").decode()
    assert request.header_all("X-Envelope-Recipient") == [
        base64.b64encode(b"you@example.net").decode()
    ]
    assert b"Subject: HTTP test" in request.body


def test_maildrop_delivery(maildrop_box: MaildropBox) -> None:
    status, output = run_example(
        "maildrop_delivery.py",
        "--maildrop", maildrop_box.program, "--filter", maildrop_box.filter_path,
        "--from", "me@example.com", "--to", "me@localhost",
    )  # fmt: skip
    assert status == 0, output
    [message] = maildrop_box.messages()
    assert b"Subject: maildrop test" in message


@pytest.mark.parametrize(("code", "word"), [(75, "deferred: 450"), (77, "bounced: 550")])
def test_maildrop_delivery_failure(maildrop_box: MaildropBox, code: int, word: str) -> None:
    status, output = run_example(
        "maildrop_delivery.py",
        "--maildrop", maildrop_box.program, "--filter", maildrop_box.exit_filter(code),
        "--from", "me@example.com", "--to", "me@localhost",
    )  # fmt: skip
    assert status == 1
    assert word in output
    assert maildrop_box.messages() == []


def test_queue_disk(smtp_sink: SmtpSinkFactory, tmp_path: Path) -> None:
    sink = smtp_sink()
    message = tmp_path / "message.eml"
    raw = (
        b"From:  Me <me@example.com>\r\nTo: you@example.net\r\nSubject: queued\r\n"
        b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--\r\n"
    )
    message.write_bytes(raw)
    spool = tmp_path / "spool"
    status, output = run_example(
        "queue_disk.py", "--spool", str(spool), "--host", sink.host, "--port", str(sink.port),
        "--from", "me@example.com", "--to", "you@example.net", str(message),
    )  # fmt: skip
    assert status == 0, output
    assert "queued as" in output and "left in the spool: 0" in output
    [received] = sink.messages()
    assert received.mail_from == "me@example.com" and received.rcpt_to == ["you@example.net"]
    # Three new fields on top; the message itself arrives byte for byte.
    head, _, rest = received.data.partition(b"From:  Me")
    assert head.startswith(b"Received: ") and b"\r\nDate: " in head
    assert b"\r\nMessage-Id: " in head or b"\r\nMessage-ID: " in head
    assert b"From:  Me" + rest == raw
    assert os.listdir(spool / "meta") == [] and os.listdir(spool / "env") == []
