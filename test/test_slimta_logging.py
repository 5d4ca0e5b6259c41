import logging

import pytest

from slimta import logging as slog


@pytest.fixture
def records(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def lines(caplog):
    return [r.getMessage() for r in caplog.records]


def test_socket_logger_round_trip(records):
    log = slog.getSocketLogger("t.sock")
    sock = object()
    log.send(sock, b"MAIL FROM:<a@b>\r\n")
    log.recv(sock, b"250 2.1.0 Ok\r\n")
    kind, ident, op, data = slog.parseline(lines(records)[0])
    assert (kind, ident, op) == ("fd", str(id(sock)), "send")
    assert data == {"data": b"MAIL FROM:<a@b>\r\n"}
    assert slog.parseline(lines(records)[1])[3] == {"data": b"250 2.1.0 Ok\r\n"}


def test_auth_secrets_are_masked(records):
    log = slog.getSocketLogger("t.auth")
    log.send(1, b"AUTH PLAIN AHVzZXIAc2VjcmV0\r\n")
    log.send(1, b"c2VjcmV0\r\n", secret=True)
    text = "\n".join(lines(records))
    assert "AHVzZXIAc2VjcmV0" not in text and "c2VjcmV0" not in text
    assert "AUTH PLAIN ********" in text


def test_long_values_are_cut_but_parse(records):
    log = slog.getSocketLogger("t.long")
    log.recv(1, b"x" * 1000)
    data = slog.parseline(lines(records)[0])[3]["data"]
    assert data == b"x" * len(data) and 80 < len(data) < 100


def test_subprocess_http_queue(records):
    class P:
        pid = 42
        returncode = 0

    slog.getSubprocessLogger("t.p").popen(P(), ["maildrop", "-f", "s"])
    slog.getSubprocessLogger("t.p").exit(P())
    slog.getHttpLogger("t.h").request(1, "POST", "/x", [("A", "b")])
    slog.getQueueStorageLogger("t.q").update_meta("id1", attempts=3)
    parsed = [slog.parseline(line) for line in lines(records)]
    assert parsed[0] == ("pid", "42", "popen", {"args": ["maildrop", "-f", "s"]})
    assert parsed[1][3] == {"returncode": 0}
    assert parsed[2][2] == "request" and parsed[2][3]["method"] == "POST"
    assert parsed[3] == ("queue", "id1", "meta", {"attempts": 3})


def test_log_exception(records):
    slog.log_exception("t.exc")  # outside except: nothing
    try:
        raise KeyError("k")
    except KeyError:
        slog.log_exception("t.exc", queue_id="abc")
    (line,) = lines(records)
    kind, ident, op, data = slog.parseline(line)
    assert (kind, ident, op) == ("exception", "KeyError", "unhandled")
    assert data["queue_id"] == "abc" and data["args"] == ("k",)


def test_parseline_rejects_bad_prefix():
    with pytest.raises(ValueError):
        slog.parseline("garbage line")
