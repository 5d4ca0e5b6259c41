"""``slimta-relay`` end to end: real servers, exit statuses, transcripts, load runs.

Most tests call :func:`slimta.cli.relay.main` in this process with captured
streams; the relay then runs in the test's hub, which also serves the in-process
WSGI server. A few run the command as a child process, to check what only a real
process shows (``python -m``, no controlling terminal).
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.aiosmtpd_server import AiosmtpdFactory
from support.dovecot import LDA_PATH, DovecotLmtp
from support.maildrop import MaildropBox
from support.smtp_sink import SmtpSinkFactory
from support.tls import TlsCert
from support.util import require_program
from support.wsgi_server import WsgiServerFactory

from slimta.cli._load import percentile
from slimta.cli._transcript import mask_secret
from slimta.cli.relay import PASSWORD_ENV, main

EX_OK, EX_USAGE, EX_UNAVAILABLE, EX_TEMPFAIL = 0, 64, 69, 75

MESSAGE = (
    b"From: Sender Name <sender@example.com>\r\n"
    b"To: alice@example.com, Bob <bob@example.com>\r\n"
    b"Cc: carol@example.com\r\n"
    b"Bcc: dave@example.com\r\n"
    b"Subject: cli test\r\n"
    b"\r\n"
    b"Hello from the command line.\r\n"
    b".leading dot\r\n"
)
ALL_RCPTS = ["alice@example.com", "bob@example.com", "carol@example.com", "dave@example.com"]


class Result:
    """What one :func:`main` call returned and printed."""

    def __init__(self, status: int, out: str, err: str) -> None:
        self.status, self.out, self.err = status, out, err

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def __repr__(self) -> str:
        return f"<status={self.status} out={self.out!r} err={self.err!r}>"


class _TtyText(io.StringIO):
    def isatty(self) -> bool:
        return True


class _TtyBytes(io.BytesIO):
    def isatty(self) -> bool:
        return True


Run = Callable[..., Result]


@pytest.fixture
def message_file(tmp_path: Path) -> str:
    path = tmp_path / "message.eml"
    path.write_bytes(MESSAGE)
    return str(path)


@pytest.fixture
def run(message_file: str) -> Run:
    """``run(*args, stdin=b'...', environ={...}, tty=False)``: call main in-process.

    Without a ``-`` or a file among ``args``, the message file is appended.
    """

    def call(
        *args: str,
        stdin: bytes | None = None,
        environ: dict[str, str] | None = None,
        tty: bool = False,
        message: bool = True,
    ) -> Result:
        argv = list(args)
        if message and stdin is None:
            argv.append(message_file)
        out = io.StringIO()
        err: io.StringIO = _TtyText() if tty else io.StringIO()
        status = main(
            argv,
            stdin=io.BytesIO(stdin if stdin is not None else b""),
            stdout=out,
            stderr=err,
            environ=environ or {},
        )
        return Result(status, out.getvalue(), err.getvalue())

    return call


def run_process(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slimta.relay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kwargs,
    )


# -- the demo --------------------------------------------------------------------
def test_demo_in_process(run: Run) -> None:
    result = run("--demo", message=False)
    assert result.status == EX_OK, result
    assert "delivered alice@receiver.example: 250 2.0.0 Ok" in result.out
    assert "delivered bob@receiver.example: 250 2.0.0 Ok" in result.out
    assert "the receiver stored 1 message(s)" in result.out
    for expected in ("S: 220 ", "C: EHLO slimta-relay.localhost", "C: DATA", "C: ..A line",
                     "C: .", "S: 221 2.0.0 Bye", "* connection closed"):  # fmt: skip
        assert expected in result.err


def test_demo_refuses_hostile_sender(run: Run) -> None:
    result = run("--demo", "--from", "a@example.com\r\nRSET", message=False)
    assert result.status == EX_UNAVAILABLE, result
    assert result.lines[1:3] == [
        "bounced alice@receiver.example: 501 5.1.7 Control character in address",
        "bounced bob@receiver.example: 501 5.1.7 Control character in address",
    ]
    assert "the receiver stored" not in result.out
    assert "C: MAIL" not in result.err


def test_demo_as_module() -> None:
    proc = run_process("--demo")
    assert proc.returncode == EX_OK, proc
    assert proc.stdout.count("delivered ") == 2
    assert "C: MAIL FROM:<demo@sender.example>" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_demo_load(run: Run) -> None:
    result = run("--demo", "--count", "30", "--concurrency", "5", message=False)
    assert result.status == EX_OK, result
    assert "30 sent, 30 delivered, 0 failed" in result.out
    assert "the receiver stored 30 message(s)" in result.out
    assert "C: " not in result.err  # no transcript unless asked for


def test_console_script_version() -> None:
    script = Path(sys.executable).with_name("slimta-relay")
    if not script.exists():
        pytest.skip("slimta-relay console script not installed next to this Python")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert proc.stdout.startswith("slimta-relay ")


# -- SMTP with smtp-sink -----------------------------------------------------------
def test_smtp_envelope_from_headers(run: Run, smtp_sink: SmtpSinkFactory) -> None:
    sink = smtp_sink()
    result = run("--via", f"smtp://{sink.host}:{sink.port}", "--ehlo", "cli.test")
    assert result.status == EX_OK, result
    assert result.lines == [f"delivered {rcpt}: 250 2.0.0 Ok" for rcpt in ALL_RCPTS]
    [message] = sink.messages()
    assert message.mail_from == "sender@example.com"
    assert message.rcpt_to == ALL_RCPTS
    assert message.helo == "cli.test"
    assert b"Bcc:" not in message.data  # never sent on
    assert b"\r\n.leading dot\r\n" in message.data


def test_smtp_explicit_envelope_from_stdin(run: Run, smtp_sink: SmtpSinkFactory) -> None:
    sink = smtp_sink()
    result = run(
        "--via", f"smtp://{sink.host}:{sink.port}", "--from", "",
        "--to", "x@example.net, y@example.net", "--to", "z@example.net", "-",
        stdin=MESSAGE,
    )  # fmt: skip
    assert result.status == EX_OK, result
    [message] = sink.messages()
    assert message.mail_from == ""
    assert message.rcpt_to == ["x@example.net", "y@example.net", "z@example.net"]


def test_smtp_transcript(run: Run, smtp_sink: SmtpSinkFactory) -> None:
    sink = smtp_sink()
    result = run("--via", f"smtp://{sink.host}:{sink.port}", "--ehlo", "cli.test", "--transcript")
    assert result.status == EX_OK, result
    err = result.err.splitlines()
    assert err[0] == f"* connected to {sink.host}:{sink.port}"
    assert err[1].startswith("S: 220 ")
    assert "C: EHLO cli.test" in err
    assert any(line.startswith("C: MAIL FROM:<sender@example.com>") for line in err)
    assert "C: RCPT TO:<dave@example.com>" in err
    assert "C: Subject: cli test" in err
    assert "C: ..leading dot" in err  # what went on the wire, dot-stuffed
    assert err[-3] == "C: QUIT" and err[-2].startswith("S: 221 ")
    assert err[-1] == "* connection closed"
    assert "Bcc" not in result.err


@pytest.mark.parametrize(
    ("flag", "status", "word", "code"),
    [("-f", EX_UNAVAILABLE, "bounced", "500 5.3.0"), ("-r", EX_TEMPFAIL, "deferred", "450 4.3.0")],
)
def test_smtp_rcpt_failures(
    run: Run, smtp_sink: SmtpSinkFactory, flag: str, status: int, word: str, code: str
) -> None:
    sink = smtp_sink(flag, "RCPT")
    result = run("--via", f"smtp://{sink.host}:{sink.port}")
    assert result.status == status, result
    assert len(result.lines) == len(ALL_RCPTS)
    for line, rcpt in zip(result.lines, ALL_RCPTS, strict=True):
        assert line.startswith(f"{word} {rcpt}: {code} ")
    assert sink.messages() == []


def test_smtp_connection_refused_is_transient(run: Run) -> None:
    from support.util import free_port

    result = run("--via", f"smtp://127.0.0.1:{free_port()}", "--to", "a@example.com")
    assert result.status == EX_TEMPFAIL, result
    assert result.lines == ["deferred a@example.com: 451 4.3.0 Connection failed"]


def test_smtp_source_ip(run: Run, smtp_sink: SmtpSinkFactory) -> None:
    sink = smtp_sink()
    result = run("--via", f"smtp://{sink.host}:{sink.port}", "--source-ip", "127.0.0.3")
    assert result.status == EX_OK, result
    dumps = [Path(sink.dump_dir, name).read_bytes() for name in os.listdir(sink.dump_dir)]
    assert any(b"127.0.0.3" in dump for dump in dumps)


def test_mx_with_forced_host(run: Run, smtp_sink: SmtpSinkFactory) -> None:
    sink = smtp_sink()
    result = run(
        "--via", "mx", "--force-mx", f"example.com={sink.host}:{sink.port}", "--transcript",
        "--to", "alice@example.com", "--to", "someone@elsewhere.invalid-tld-for-tests",
        "--force-mx", f"elsewhere.invalid-tld-for-tests={sink.host}:{sink.port}",
    )  # fmt: skip
    assert result.status == EX_OK, result
    assert len(sink.messages()) == 2  # one transaction per domain
    assert result.err.count("* connected to") == 2


def test_mx_recipient_without_domain_bounces(run: Run) -> None:
    result = run("--via", "mx", "--to", "no-domain")
    assert result.status == EX_UNAVAILABLE, result
    assert result.lines == [
        "bounced no-domain: 550 5.1.5 Recipient address has no domain: no-domain"
    ]


# -- SMTP with aiosmtpd: TLS, AUTH, mixed results -------------------------------------
@pytest.mark.parametrize(
    ("mechanism", "masked"),
    [([], ["C: AUTH LOGIN", "C: ********", "C: ********"]),
     (["--auth-mechanism", "PLAIN"], ["C: AUTH PLAIN ********"])],
)  # fmt: skip
def test_starttls_auth_transcript_is_masked(
    run: Run,
    aiosmtpd_server: AiosmtpdFactory,
    tls_cert: TlsCert,
    mechanism: list[str],
    masked: list[str],
) -> None:
    password = "s3cret-Pa55"
    server = aiosmtpd_server(starttls=True, auth=("relay-user", password))
    result = run(
        "--via", f"smtp://{server.host}:{server.port}", "--starttls", "--cafile",
        tls_cert.ca_path, "--auth", "relay-user", "--transcript", "--to", "alice@example.com",
        *mechanism, environ={PASSWORD_ENV: password},
    )  # fmt: skip
    assert result.status == EX_OK, result
    [envelope] = server.envelopes
    assert envelope.tls and envelope.auth_login == "relay-user"
    err = result.err.splitlines()
    assert "C: STARTTLS" in err
    assert "* TLS established: TLS" in result.err
    # The dialogue after the handshake is shown too, with the secrets masked.
    client_auth = [
        line for line in err[err.index("C: STARTTLS"):] if line.startswith(("C: AUTH", "C: **"))
    ]
    assert client_auth == masked
    plain = base64.b64encode(f"\0relay-user\0{password}".encode()).decode()
    for secret in (password, plain, base64.b64encode(password.encode()).decode()):
        assert secret not in result.err
        assert secret not in result.out


def test_auth_without_tls_is_refused_transiently(
    run: Run, aiosmtpd_server: AiosmtpdFactory
) -> None:
    server = aiosmtpd_server(auth=("u", "p"), auth_require_tls=False)
    result = run(
        "--via", f"smtp://{server.host}:{server.port}", "--auth", "u", "--to", "a@example.com",
        environ={PASSWORD_ENV: "p"},
    )  # fmt: skip
    assert result.status == EX_TEMPFAIL, result
    assert result.lines[0].startswith("deferred a@example.com: 454 4.7.0")
    assert server.envelopes == []
    again = run(
        "--via", f"smtp://{server.host}:{server.port}", "--auth", "u", "--to", "a@example.com",
        "--allow-insecure-auth", environ={PASSWORD_ENV: "p"},
    )  # fmt: skip
    assert again.status == EX_OK, again
    assert server.envelopes[0].auth_login == "u"


@pytest.mark.parametrize(
    ("extra", "status", "tls"),
    [(["--cafile"], EX_OK, True), (["--insecure"], EX_OK, True), ([], EX_TEMPFAIL, False)],
)
def test_smtps(
    run: Run,
    aiosmtpd_server: AiosmtpdFactory,
    tls_cert: TlsCert,
    extra: list[str],
    status: int,
    tls: bool,
) -> None:
    server = aiosmtpd_server(implicit_tls=True)
    if extra == ["--cafile"]:
        extra = ["--cafile", tls_cert.ca_path]
    result = run("--via", f"smtps://{server.host}:{server.port}", *extra, "--to", "a@example.com")
    assert result.status == status, result
    assert len(server.envelopes) == (1 if tls else 0)
    if not tls:  # the self-signed certificate is not trusted by default
        assert result.lines[0].startswith("deferred a@example.com: 421 4.7.0")


@pytest.mark.parametrize(
    ("reject", "tempfail", "status"),
    [({"bob@example.com"}, set(), EX_UNAVAILABLE), ({"bob@example.com"}, {"carol@example.com"},
     EX_TEMPFAIL)],
)  # fmt: skip
def test_per_recipient_results(
    run: Run, aiosmtpd_server: AiosmtpdFactory, reject: set[str], tempfail: set[str], status: int
) -> None:
    server = aiosmtpd_server(reject_rcpt=reject, tempfail_rcpt=tempfail)
    result = run("--via", f"smtp://{server.host}:{server.port}")
    assert result.status == status, result
    words = {line.split()[1].rstrip(":"): line.split()[0] for line in result.lines}
    assert words["alice@example.com"] == "delivered"
    assert words["bob@example.com"] == "bounced"
    assert words["carol@example.com"] == ("deferred" if tempfail else "delivered")
    assert server.envelopes[0].rcpt_tos == [r for r in ALL_RCPTS if r not in reject | tempfail]


# -- LMTP with Dovecot -----------------------------------------------------------------
def test_lmtp_unix_socket_per_recipient(run: Run, dovecot_lmtp: DovecotLmtp) -> None:
    result = run(
        "--via", f"lmtp:{dovecot_lmtp.socket_path}",
        "--to", "alice@example.com", "--to", "bob@example.com", "--to", "nobody-here@example.com",
    )  # fmt: skip
    assert result.status == EX_UNAVAILABLE, result
    assert result.lines[0].startswith("delivered alice@example.com: 250 2.0.0")
    assert result.lines[1].startswith("delivered bob@example.com: 250 2.0.0")
    assert result.lines[2].startswith("bounced nobody-here@example.com: 550 5.1.1")
    assert len(dovecot_lmtp.messages("alice")) == 1
    assert len(dovecot_lmtp.messages("bob")) == 1


def test_lmtp_tcp_transient(run: Run, dovecot_lmtp: DovecotLmtp) -> None:
    result = run(
        "--via", f"lmtp://{dovecot_lmtp.host}:{dovecot_lmtp.port}", "--transcript",
        "--to", "alice@example.com", "--to", f"{dovecot_lmtp.broken_user}@example.com",
    )  # fmt: skip
    assert result.status == EX_TEMPFAIL, result
    assert result.lines[0].startswith("delivered alice@example.com: 250")
    assert result.lines[1].startswith("deferred broken@example.com: 451 4.2.0")
    assert any(line.startswith("C: LHLO ") for line in result.err.splitlines())


# -- HTTP with the WSGI server -----------------------------------------------------------
def test_http(run: Run, wsgi_server: WsgiServerFactory) -> None:
    server = wsgi_server()
    result = run("--via", server.url + "deliver?x=1", "--ehlo", "cli.test", "--transcript")
    assert result.status == EX_OK, result
    assert result.lines == [f"delivered {rcpt}: 250 2.0.0 Ok" for rcpt in ALL_RCPTS]
    [request] = server.requests
    assert (request.path, request.query) == ("/deliver", "x=1")
    assert request.header("X-Ehlo") == "cli.test"
    recipients = [base64.b64decode(v).decode() for v in request.header_all("X-Envelope-Recipient")]
    assert recipients == ALL_RCPTS
    assert b"Bcc:" not in request.body
    err = result.err.splitlines()
    assert "C: POST /deliver?x=1 HTTP/1.1" in err
    assert "C: Subject: cli test" in err
    assert any(line.startswith("S: HTTP/1.1 200") for line in err)


@pytest.mark.parametrize(
    ("status_line", "headers", "exit_status", "line"),
    [
        ("400 Bad Request", [], EX_UNAVAILABLE, "bounced alice@example.com: 550 5.0.0"),
        ("503 Unavailable", [], EX_TEMPFAIL, "deferred alice@example.com: 450 4.0.0"),
        ("200 OK", [("X-Smtp-Reply", '550; message="5.7.1 Go away"')], EX_UNAVAILABLE,
         "bounced alice@example.com: 550 5.7.1 Go away"),
    ],
)  # fmt: skip
def test_http_failures(
    run: Run,
    wsgi_server: WsgiServerFactory,
    status_line: str,
    headers: list[tuple[str, str]],
    exit_status: int,
    line: str,
) -> None:
    server = wsgi_server()
    server.status, server.response_headers = status_line, headers
    result = run("--via", server.url, "--to", "alice@example.com")
    assert result.status == exit_status, result
    # A 2xx status carrying an error reply comes back from the relay as a Reply
    # (Compat); the command still reports it by its code, never as delivered.
    assert result.lines[0].startswith(line)


# -- local programs ----------------------------------------------------------------------
def test_maildrop(run: Run, maildrop_box: MaildropBox) -> None:
    result = run(
        "--via", f"maildrop:{maildrop_box.filter_path}", "--program", maildrop_box.program,
        "--to", "me@localhost", "--transcript",
    )  # fmt: skip
    assert result.status == EX_OK, result
    assert result.lines == ["delivered me@localhost: (no reply: delivered)"]
    [stored] = maildrop_box.messages()
    assert b"Subject: cli test" in stored and b"Bcc:" not in stored
    assert "run: " in result.err and "exit status 0" in result.err


@pytest.mark.parametrize(("code", "status"), [(75, EX_TEMPFAIL), (77, EX_UNAVAILABLE)])
def test_maildrop_failures(run: Run, maildrop_box: MaildropBox, code: int, status: int) -> None:
    result = run(
        "--via", f"maildrop:{maildrop_box.exit_filter(code)}",
        "--program", maildrop_box.program, "--to", "me@localhost",
    )  # fmt: skip
    assert result.status == status, result
    assert maildrop_box.messages() == []


def test_dovecot_lda(run: Run, dovecot_lmtp: DovecotLmtp) -> None:
    program = require_program(LDA_PATH)
    result = run(
        "--via", f"dovecot-lda:-c {dovecot_lmtp.config_path}", "--program", program,
        "--to", "alice@example.com", "--to", "nobody-here@example.com",
    )  # fmt: skip
    assert result.status == EX_UNAVAILABLE, result
    assert result.lines[0] == "delivered alice@example.com: (no reply: delivered)"
    assert result.lines[1].startswith("bounced nobody-here@example.com: 550 5.")
    assert len(dovecot_lmtp.messages("alice")) == 1


def test_pipe(run: Run, tmp_path: Path) -> None:
    script = tmp_path / "deliver.sh"
    script.write_text(
        'case "$2" in\n'
        '  full@*) echo "4.2.2 mailbox full"; exit 1 ;;\n'
        '  gone@*) echo "5.1.1 no such user"; exit 1 ;;\n'
        'esac\ncat > "$1/$2"\n'
    )
    result = run(
        "--via", f"pipe:/bin/sh {script} {tmp_path} {{recipient}}",
        "--to", "ok@example.com", "--to", "full@example.com", "--to", "gone@example.com",
    )  # fmt: skip
    assert result.status == EX_TEMPFAIL, result
    assert result.lines == [
        "delivered ok@example.com: (no reply: delivered)",
        "deferred full@example.com: 450 4.2.2 mailbox full",
        "bounced gone@example.com: 550 5.1.1 no such user",
    ]
    assert b"Subject: cli test" in (tmp_path / "ok@example.com").read_bytes()


# -- load runs -----------------------------------------------------------------------------
def test_count_and_concurrency(run: Run, smtp_sink: SmtpSinkFactory) -> None:
    sink = smtp_sink()
    result = run(
        "--via", f"smtp://{sink.host}:{sink.port}", "--to", "a@example.com",
        "--count", "20", "--concurrency", "4",
    )  # fmt: skip
    assert result.status == EX_OK, result
    assert "messages:    20 sent, 20 delivered, 0 failed" in result.lines
    assert "concurrency: 4" in result.lines
    assert any(line.startswith("throughput:") and "messages/s" in line for line in result.lines)
    assert any(line.startswith("latency:     p50 ") and "p99" in line for line in result.lines)
    assert "failures:    none" in result.lines
    assert result.err == ""  # not a terminal: no progress bar
    assert len(sink.wait_for_messages(20)) == 20


def test_count_failures_by_code_and_progress(run: Run, smtp_sink: SmtpSinkFactory) -> None:
    sink = smtp_sink("-r", "RCPT")
    result = run(
        "--via", f"smtp://{sink.host}:{sink.port}", "--to", "a@example.com",
        "--count", "6", "--concurrency", "3", tty=True,
    )  # fmt: skip
    assert result.status == EX_TEMPFAIL, result
    assert "messages:    6 sent, 0 delivered, 6 failed" in result.lines
    assert "failures:    450 x6 (recipients, by reply code)" in result.lines
    assert "\r[" in result.err and "6/6" in result.err


def test_percentile() -> None:
    values = sorted(float(v) for v in range(1, 101))
    assert [percentile(values, q) for q in (0.5, 0.9, 0.99)] == [50.0, 90.0, 99.0]
    assert percentile([], 0.5) == 0.0
    assert percentile([7.0], 0.99) == 7.0


# -- usage errors ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["--via", "bogus"],
        ["--via", "smtp://"],
        ["--via", "smtp://host:99999"],
        ["--via", "smtp://host/path"],
        ["--via", "pipe:"],
        ["--via", 'pipe:"unbalanced'],
        ["--via", "pipe:cmd {nope}"],
        ["--count", "0"],
        ["--concurrency", "many"],
        ["--connect-timeout", "-1"],
        ["--no-such-option"],
        ["--via", "http://127.0.0.1:9/", "--auth", "user"],
        ["--via", "http://127.0.0.1:9/", "--tls-required"],
        ["--via", "lmtp:/tmp/lmtp.sock", "--source-ip", "127.0.0.1"],
        ["--source-ip", "not-an-ip"],
        ["--via", "smtps://127.0.0.1", "--starttls"],
        ["--via", "maildrop", "--ehlo", "x"],
        ["--via", "smtp://127.0.0.1", "--program", "/bin/true"],
        ["--via", "smtp://127.0.0.1", "--force-mx", "a=b"],
        ["--force-mx", "no-equals-sign"],
        ["--cafile", "/nonexistent/ca.pem"],
        ["--demo", "--via", "smtp://127.0.0.1"],
    ],
)
def test_bad_arguments(run: Run, args: list[str]) -> None:
    result = run(*args, "--to", "a@example.com")
    assert result.status == EX_USAGE, result
    assert result.out == ""
    assert result.err.count("\n") == 1 and result.err.startswith("slimta-relay: error: ")


def test_unreadable_input(run: Run, tmp_path: Path) -> None:
    empty = tmp_path / "empty.eml"
    empty.write_bytes(b"\r\n")
    no_from = tmp_path / "no-from.eml"
    no_from.write_bytes(b"To: a@example.com\r\n\r\nbody\r\n")
    no_to = tmp_path / "no-to.eml"
    no_to.write_bytes(b"From: a@example.com\r\n\r\nbody\r\n")
    cases = {
        str(tmp_path / "missing.eml"): "cannot read the message",
        str(tmp_path): "cannot read the message",
        str(empty): "is empty",
        str(no_from): "no sender",
        str(no_to): "no recipients",
    }
    for path, text in cases.items():
        result = run("--via", "smtp://127.0.0.1:9", path, message=False)
        assert result.status == EX_USAGE, (path, result)
        assert result.err.startswith("slimta-relay: error: ") and text in result.err
        assert result.err.count("\n") == 1


def test_no_message_on_a_terminal(message_file: str) -> None:
    err = io.StringIO()
    status = main(["--to", "a@example.com"], stdin=_TtyBytes(), stdout=io.StringIO(), stderr=err)
    assert status == EX_USAGE
    assert "no message" in err.getvalue()


def test_auth_password_never_from_arguments(message_file: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
    # A new session has no controlling terminal, so there is no way to prompt.
    proc = run_process(
        "--via", "smtp://127.0.0.1:9", "--auth", "user", "--to", "a@example.com", message_file,
        env=env, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    assert proc.returncode == EX_USAGE, proc
    assert proc.stderr == f"slimta-relay: error: --auth needs a password: set {PASSWORD_ENV} " \
        "or run on a terminal\n"
    assert run_process("--password", "x").returncode == EX_USAGE


def test_mask_secret() -> None:
    assert mask_secret("AUTH PLAIN AHVzZXIAcHc=") == "AUTH PLAIN ********"
    assert mask_secret("dXNlcg==") == "********"
    assert mask_secret("AUTH LOGIN") == "********"  # any secret line is hidden whole
