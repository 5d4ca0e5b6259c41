import pytest

from slimta.smtp import reply as reply_mod
from slimta.smtp.reply import Reply


def test_message_splits_enhanced_status_code():
    r = Reply("550", "5.1.1 No such user")
    assert r.code == "550"
    assert r.enhanced_status_code == "5.1.1"
    assert r.raw_message == "No such user"
    assert r.message == "5.1.1 No such user"
    assert str(r) == "550 5.1.1 No such user"
    assert bytes(r) == b"550 5.1.1 No such user"


def test_class_digit_comes_from_code():
    assert str(Reply("250", "5.1.1 x")) == "250 2.1.1 x"


def test_default_esc_and_none_for_1xx_3xx():
    assert Reply("250", "Ok").message == "2.0.0 Ok"
    assert Reply("354", "go ahead").enhanced_status_code is None
    assert Reply("354", "go ahead").message == "go ahead"
    assert Reply().enhanced_status_code is None


def test_false_esc_is_suppressed_and_survives_new_message():
    r = Reply("220", "mail.example.com ESMTP")
    r.enhanced_status_code = False
    assert r.message == "mail.example.com ESMTP"
    r.message = "other banner"
    assert r.enhanced_status_code is None
    assert str(r) == "220 other banner"


def test_message_without_esc_clears_explicit_esc():
    r = Reply("450", "4.2.1 busy")
    r.message = "later"
    assert r.enhanced_status_code == "4.0.0"


@pytest.mark.parametrize("code", ["600", "25", "abc", "2500", "099"])
def test_invalid_code(code):
    with pytest.raises(ValueError) as info:
        Reply(code)
    assert info.value.args == ("Invalid SMTP reply code", code)


def test_invalid_esc():
    r = Reply("250")
    with pytest.raises(ValueError) as info:
        r.enhanced_status_code = "2.x.1"
    assert info.value.args[0] == "Invalid ENHANCEDSTATUSCODES string"


def test_copy_returns_self_and_keeps_command():
    r = Reply(command=b"RCPT").copy(reply_mod.timed_out)
    assert r.command == b"RCPT"
    assert str(r) == "421 4.4.2 Connection timed out"
    assert r is not reply_mod.timed_out


def test_str_command_is_accepted():
    assert Reply("250", "ok", "MAIL").command == b"MAIL"


def test_dunders():
    r = Reply("250", "2.0.0 Ok")
    assert bool(r) and not bool(Reply())
    assert r == Reply("250", "Ok")
    assert r != Reply("251", "Ok")
    assert "Ok" in r and b"250" in r
    assert repr(r) == "<Reply code='250' message='2.0.0 Ok'>"
    assert r.is_error() is False
    assert Reply("421").is_error() and Reply("554").is_error()
    assert Reply().is_error() is False


@pytest.mark.parametrize(
    "name, text",
    [
        ("unknown_command", "500 5.5.2 Syntax error, command unrecognized"),
        ("unknown_parameter", "504 5.5.4 Command parameter not implemented"),
        ("bad_sequence", "503 5.5.1 Bad sequence of commands"),
        ("bad_arguments", "501 5.5.4 Syntax error in parameters or arguments"),
        ("unhandled_error", "421 4.3.0 Unhandled system error"),
        ("tls_failure", "421 4.7.0 TLS negotiation failed"),
        ("connection_failed", "451 4.3.0 Connection failed"),
        ("timed_out", "421 4.4.2 Connection timed out"),
        ("invalid_credentials", "535 5.7.8 Authentication credentials invalid"),
    ],
)
def test_predefined(name, text):
    assert str(getattr(reply_mod, name)) == text
    assert name in reply_mod.__all__


def test_timed_out_newline_first():
    assert reply_mod.timed_out.newline_first is True
    assert reply_mod.connection_failed.newline_first is False


class FakeIO:
    def __init__(self, reply=("250", "2.1.0 Sender ok")):
        self._reply = reply
        self.sent = []
        self.flushed = False
        self.address = ("127.0.0.1", 25)

    def recv_reply(self):
        return self._reply

    def send_reply(self, reply):
        self.sent.append(bytes(reply) + b"\r\n")

    def buffered_send(self, data):
        self.sent.append(data)

    def flush_send(self):
        self.flushed = True


def test_recv_and_send():
    io = FakeIO()
    r = Reply(command=b"MAIL")
    r.recv(io)
    assert (r.code, r.enhanced_status_code, r.address) == ("250", "2.1.0", ("127.0.0.1", 25))
    out = FakeIO()
    Reply().copy(reply_mod.timed_out).send(out, flush=True)
    assert out.sent == [b"\r\n", b"421 4.4.2 Connection timed out\r\n"]
    assert out.flushed
