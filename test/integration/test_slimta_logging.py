"""slimta.logging: the line format, the loggers, parseline, log_exception.

Lines are checked as python-slimta writes them (``fd:<fileno>:send data=...``),
and every record carries its line in ``record.msg`` with no ``%`` arguments, so
that a :class:`logging.Filter` reading ``record.msg`` sees it.
"""

import logging
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from slimta import logging as slog
from slimta.logging import log as slog_log
from slimta.logging import socket as slog_socket
from slimta.logging.http import HttpLogger
from slimta.logging.log import MAX_REPR_LENGTH, log_repr, logline
from slimta.logging.socket import SocketLogger
from slimta.logging.subprocess import SubprocessLogger


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def entries(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    return [(r.name, r.levelname, r.getMessage()) for r in caplog.records]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


class FakeProcess:
    pid = 42
    returncode = 3


# -- the line format ----------------------------------------------------------------


def test_logline_calls_the_log_function_with_the_line() -> None:
    got: list[str] = []
    logline(got.append, "test", "asdf", "nodata")
    logline(got.append, "test", "asdf", "withdata", two="two", one=1)
    assert got == ["test:asdf:nodata", "test:asdf:withdata one=1 two='two'"]


def test_log_repr_shortens_but_stays_a_literal() -> None:
    assert log_repr.maxstring == MAX_REPR_LENGTH == log_repr.maxother
    for value in (b"\r\n" * 500, b"\x00" * 300, b"ab\xff" * 100):
        short = log_repr.repr(value)
        assert 80 < len(short) <= MAX_REPR_LENGTH
        data = slog.parseline("t:1:x data=" + short)[3]["data"]
        assert data == value[: len(data)] and len(data) > 10
    text = log_repr.repr("é" * 1000)
    assert len(text) <= MAX_REPR_LENGTH and set(slog.parseline("t:1:x v=" + text)[3]["v"]) == {"é"}
    assert log_repr.repr([1, 2]) == "[1, 2]"


@pytest.mark.parametrize(
    "log",
    [
        lambda: slog.getSocketLogger("t.msg").recv(object(), b"100% done %s"),
        lambda: slog.getSubprocessLogger("t.msg").exit(FakeProcess()),
        lambda: slog.getHttpLogger("t.msg").request(1, "POST", "/%d", [("A", "%s")]),
        lambda: slog.getQueueStorageLogger("t.msg").update_meta("id%s", attempts=3),
        lambda: slog.getSocketLogger("t.msg").error(None, OSError(32, "Broken %s")),
    ],
)
def test_record_msg_is_the_line(records: pytest.LogCaptureFixture, log: Any) -> None:
    seen: list[Any] = []

    class Reader(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(record.msg)
            return True

    reader = Reader()
    logger = logging.getLogger("t.msg")
    logger.addFilter(reader)
    try:
        log()
    finally:
        logger.removeFilter(reader)
    (record,) = records.records
    assert not record.args
    assert record.msg == record.getMessage() == seen[0]
    # The line itself, read back whole (several of these lines hold a '%').
    assert slog.parseline(record.msg)[3]


def test_log_exception_record_msg(records: pytest.LogCaptureFixture) -> None:
    try:
        raise ValueError("50% off")
    except ValueError:
        slog.log_exception("t.exc")
    (record,) = records.records
    assert not record.args and record.msg == record.getMessage()
    assert record.msg.startswith("exception:ValueError:unhandled ")


# -- socket ------------------------------------------------------------------------------


def test_socket_lines_use_the_fileno(
    records: pytest.LogCaptureFixture, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    log = slog.getSocketLogger("t.sock")
    assert isinstance(log, SocketLogger) and log.logger is logging.getLogger("t.sock")
    log.send(a, b"MAIL FROM:<a@b>\r\n")
    log.recv(a, b"250 2.1.0 Ok\r\n")
    log.close(a)
    fd = a.fileno()
    assert lines(records) == [
        f"fd:{fd}:send data=b'MAIL FROM:<a@b>\\r\\n'",
        f"fd:{fd}:recv data=b'250 2.1.0 Ok\\r\\n'",
        f"fd:{fd}:close",
    ]
    assert slog.parseline(lines(records)[0]) == ("fd", str(fd), "send",
                                                 {"data": b"MAIL FROM:<a@b>\r\n"})


def test_socket_accept_connect_shutdown(records: pytest.LogCaptureFixture) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server_side, peer = listener.accept()
    try:
        log = slog.getSocketLogger("t.sock")
        log.accept(listener, server_side)
        log.accept(listener, server_side, ("192.0.2.1", 25))
        log.connect(client)
        log.connect(client, "given")
        log.shutdown(client, socket.SHUT_RD)
        log.shutdown(client, socket.SHUT_WR)
        log.shutdown(client, socket.SHUT_RDWR)
        lfd, sfd, cfd = listener.fileno(), server_side.fileno(), client.fileno()
        assert lines(records) == [
            f"fd:{lfd}:accept clientfd={sfd} peer={peer!r}",
            f"fd:{lfd}:accept clientfd={sfd} peer=('192.0.2.1', 25)",
            f"fd:{cfd}:connect peer={client.getpeername()!r}",
            f"fd:{cfd}:connect peer='given'",
            f"fd:{cfd}:shutdown how='read'",
            f"fd:{cfd}:shutdown how='write'",
            f"fd:{cfd}:shutdown how='both'",
        ]
    finally:
        for sock in (listener, client, server_side):
            sock.close()


def test_socket_encrypt_logs_session_stats(
    records: pytest.LogCaptureFixture, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    context = ssl.create_default_context()
    log = slog.getSocketLogger("t.sock")
    log.encrypt(a, context)
    log.encrypt(a, {"server_side": False})
    first, second = (slog.parseline(line) for line in lines(records))
    assert first[2] == "encrypt" and first[3] == context.session_stats()
    assert second[3] == {"server_side": False}


def test_socket_error_level_is_the_module_knob(
    records: pytest.LogCaptureFixture,
    pair: tuple[socket.socket, socket.socket],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, _ = pair
    log = slog.getSocketLogger("t.err")
    exc = OSError(32, "Broken pipe")
    log.error(a, exc, "testaddress")
    monkeypatch.setattr(slog_socket, "socket_error_log_level", logging.WARNING)
    log.error(a, exc)
    log.error(None, exc)
    fd = a.fileno()
    assert entries(records) == [
        ("t.err", "ERROR", f"fd:{fd}:error address='testaddress' args=(32, 'Broken pipe') "
                           "message='[Errno 32] Broken pipe'"),
        ("t.err", "WARNING", f"fd:{fd}:error args=(32, 'Broken pipe') "
                             "message='[Errno 32] Broken pipe'"),
        ("t.err", "WARNING", "fd:none:error args=(32, 'Broken pipe') "
                             "message='[Errno 32] Broken pipe'"),
    ]


def test_proxy_protocol_lines(
    records: pytest.LogCaptureFixture, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    log = slog.getSocketLogger("t.pp")
    log.proxyproto_success(a, ("198.51.100.7", 4321))
    log.proxyproto_invalid(a, ValueError("bad header"))
    log.proxyproto_local(a)
    fd = a.fileno()
    assert lines(records) == [
        f"fd:{fd}:ppsuccess peer=('198.51.100.7', 4321)",
        f"fd:{fd}:ppinvalid message='bad header'",
        f"fd:{fd}:pplocal",
    ]


def test_auth_secrets_are_masked(
    records: pytest.LogCaptureFixture, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    log = slog.getSocketLogger("t.auth")
    log.send(a, b"AUTH PLAIN AHVzZXIAc2VjcmV0\r\n")
    log.send(a, b"c2VjcmV0\r\n", secret=True)
    log.send(a, bytearray(b"AUTH LOGIN dXNlcg==\r\n"))
    text = "\n".join(lines(records))
    assert "AHVzZXIAc2VjcmV0" not in text and "c2VjcmV0" not in text
    assert "dXNlcg" not in text
    assert "AUTH PLAIN ********" in text and "AUTH LOGIN ********" in text


def test_nothing_is_formatted_when_disabled(caplog: pytest.LogCaptureFixture) -> None:
    class NoFileno:
        def fileno(self) -> int:
            raise AssertionError("formatted while disabled")

    caplog.set_level(logging.INFO)
    log = slog.getSocketLogger("t.off")
    log.send(NoFileno(), b"x")
    log.recv(NoFileno(), b"x")
    log.close(NoFileno())
    assert caplog.records == []


# -- subprocess, http, queue ---------------------------------------------------------------


def test_subprocess_lines(records: pytest.LogCaptureFixture) -> None:
    log = slog.getSubprocessLogger("t.p")
    assert isinstance(log, SubprocessLogger)
    log.popen(FakeProcess(), ["maildrop", "-f", "s"])
    log.stdio(FakeProcess(), "one", "two", "")
    log.exit(FakeProcess())
    assert lines(records) == [
        "pid:42:popen args=['maildrop', '-f', 's']",
        "pid:42:stdio stderr='' stdin='one' stdout='two'",
        "pid:42:exit returncode=3",
    ]


def test_http_lines_name_the_side(records: pytest.LogCaptureFixture) -> None:
    log = slog.getHttpLogger("t.h")
    assert isinstance(log, HttpLogger)
    conn: dict[str, str] = {}
    log.request(conn, "GET", "/test", [("Header", "value")])
    log.response(conn, "200 OK", [("Header", "value")])
    log.request(conn, "GET", "/test", [], is_client=False)
    log.response(conn, "404 Not Found", [], is_client=False)
    ident = id(conn)
    assert lines(records) == [
        f"http:{ident}:client_request headers=[('Header', 'value')] method='GET' path='/test'",
        f"http:{ident}:client_response headers=[('Header', 'value')] status='200 OK'",
        f"http:{ident}:server_request headers=[] method='GET' path='/test'",
        f"http:{ident}:server_response headers=[] status='404 Not Found'",
    ]


def test_http_wsgi_lines(records: pytest.LogCaptureFixture) -> None:
    log = slog.getHttpLogger("t.w")
    environ = {
        "REQUEST_METHOD": "post",
        "PATH_INFO": "/msg",
        "CONTENT_TYPE": "message/rfc822",
        "CONTENT_LENGTH": "12",
        "HTTP_X_ENVELOPE_SENDER": "c2VuZGVy",
        "SERVER_NAME": "not a header",
    }
    log.wsgi_request(environ)
    log.wsgi_response(environ, "200 OK", [("X-Smtp-Reply", "250; message=\"2.0.0 Ok\"")])
    request, response = (slog.parseline(line) for line in lines(records))
    assert request == ("http", str(id(environ)), "server_request", {
        "headers": [("Content-Type", "message/rfc822"), ("Content-Length", "12"),
                    ("X-Envelope-Sender", "c2VuZGVy")],
        "method": "POST",
        "path": "/msg",
    })
    assert response[2] == "server_response" and response[3]["status"] == "200 OK"


def test_queue_storage_lines(records: pytest.LogCaptureFixture) -> None:
    class Env:
        sender = "s@x.test"
        recipients = ["a@x.test", "b@x.test"]

    log = slog.getQueueStorageLogger("t.q")
    log.write("id1", Env())
    log.update_meta("id1", attempts=3)
    log.remove("id1")
    assert lines(records) == [
        "queue:id1:write recipients=['a@x.test', 'b@x.test'] sender='s@x.test'",
        "queue:id1:meta attempts=3",
        "queue:id1:remove",
    ]


# -- log_exception -----------------------------------------------------------------------


def test_log_exception(records: pytest.LogCaptureFixture) -> None:
    slog.log_exception("t.exc")  # outside except: nothing
    try:
        raise KeyError("k")
    except KeyError:
        slog.log_exception("t.exc", queue_id="abc", zzz=1)
    (record,) = records.records
    assert (record.name, record.levelname) == ("t.exc", "ERROR")
    kind, ident, op, data = slog.parseline(record.msg)
    assert (kind, ident, op) == ("exception", "KeyError", "unhandled")
    assert data["queue_id"] == "abc" and data["args"] == ("k",) and data["message"] == "'k'"
    assert list(data) == ["args", "message", "queue_id", "zzz", "traceback"]
    assert data["traceback"].startswith("Traceback (most recent call last):")
    assert data["traceback"].rstrip().endswith("KeyError: 'k'")


def test_log_exception_keeps_a_long_traceback(records: pytest.LogCaptureFixture) -> None:
    try:
        raise RuntimeError("x" * 3000)
    except RuntimeError:
        slog.log_exception("t.exc")
    traceback_text = slog.parseline(records.records[0].msg)[3]["traceback"]
    assert 3000 < len(traceback_text) <= slog.MAX_TRACEBACK_LENGTH
    assert traceback_text.rstrip().endswith("RuntimeError: " + "x" * 3000)
    try:
        raise RuntimeError("y" * 20000)
    except RuntimeError:
        slog.log_exception("t.exc")
    traceback_text = slog.parseline(records.records[1].msg)[3]["traceback"]
    assert len(repr(traceback_text)) <= slog.MAX_TRACEBACK_LENGTH
    assert traceback_text.startswith("Traceback (most recent call last):")


# -- parseline -----------------------------------------------------------------------------


def test_parseline_values() -> None:
    assert slog.parseline("test:jkl:nodata") == ("test", "jkl", "nodata", {})
    assert slog.parseline("test:jkl:withdata one=1 two='two'\r\n") == (
        "test", "jkl", "withdata", {"one": 1, "two": "two"})
    assert slog.parseline("t:1:x s='a b=c d' n=None")[3] == {"s": "a b=c d", "n": None}
    assert slog.parseline("fd:none:error args=(32, 'x')")[1:3] == ("none", "error")


def test_parseline_stops_quietly_at_a_value_it_cannot_read() -> None:
    assert slog.parseline("test:jkl:baddata one=1 two=two")[3] == {"one": 1}
    assert slog.parseline("test:jkl:baddata one=one two='two'")[3] == {}
    line = "fd:7:connect peer=<object at 0x7f> other=1"
    assert slog.parseline(line) == ("fd", "7", "connect", {})
    assert slog.parseline("t:1:x a=1 free text")[3] == {"a": 1}
    assert slog.parseline("t:1:x a='unterminated")[3] == {}
    assert slog.parseline("t:1:x a=" + "(" * 500)[3] == {}


def test_parseline_is_lenient_about_the_prefix() -> None:
    assert slog.parseline("my-type 2:id with space:op.x k=1") == (
        "my-type 2", "id with space", "op.x", {"k": 1})


@pytest.mark.parametrize("line", ["bad!", "garbage line", "a:b", ":b:c", ""])
def test_parseline_rejects_a_bad_prefix(line: str) -> None:
    with pytest.raises(ValueError):
        slog.parseline(line)


def test_round_trip_of_every_logger(records: pytest.LogCaptureFixture) -> None:
    slog.getSocketLogger("t.rt").recv(object(), b"x" * 1000)
    slog.getHttpLogger("t.rt").request(1, "POST", "/x", [("A", "b" * 500)])
    for line in lines(records):
        kind, _, op, data = slog.parseline(line)
        assert data, line
    assert slog_log.MAX_REPR_LENGTH == MAX_REPR_LENGTH
