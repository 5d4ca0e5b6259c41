from slimta.smtp.extensions import Extensions


def test_parse_string_returns_greeting_and_adds():
    ext = Extensions()
    header = ext.parse_string(
        "mail.example.com hello\r\nPIPELINING\r\nsize 10240000\n  8BITMIME  \r\n"
        "AUTH PLAIN LOGIN\r\n-bad line\r\n"
    )
    assert header == "mail.example.com hello"
    assert "pipelining" in ext and "SIZE" in ext and "8bitmime" in ext
    assert ext.getparam("size", int) == 10240000
    assert ext.getparam("AUTH") == "PLAIN LOGIN"
    assert "-BAD" not in ext.extensions and len(ext.extensions) == 4


def test_getparam_filter_and_missing():
    ext = Extensions()
    ext.add("size", "abc")
    assert ext.getparam("SIZE", int) is None
    assert ext.getparam("missing") is None
    ext.add("STARTTLS")
    assert ext.getparam("starttls") is None


def test_drop_reset_build():
    ext = Extensions()
    ext.add("PIPELINING")
    ext.add("SIZE", "100")
    assert ext.build_string("hi") == "hi\r\nPIPELINING\r\nSIZE 100"
    assert ext.drop("pipelining") is True
    assert ext.drop("pipelining") is False
    ext.reset()
    assert ext.extensions == {}


class _Unrenderable:
    """Like an AuthSession with no usable mechanism: str() raises ValueError."""

    def __str__(self) -> str:
        raise ValueError("No mechanisms available")


class _Renderable:
    def __str__(self) -> str:
        return "PLAIN LOGIN"


def test_build_string_skips_parameters_that_cannot_be_rendered() -> None:
    ext = Extensions()
    ext.add("8BITMIME")
    ext.add("AUTH", _Unrenderable())  # type: ignore[arg-type]
    ext.add("X-INJECT", "a\r\n250 FAKE")
    ext.add("SIZE", "1000")
    ext.add("EMPTY", "")
    assert ext.build_string("mx.test") == "mx.test\r\n8BITMIME\r\nSIZE 1000\r\nEMPTY"
    ext.add("AUTH", _Renderable())  # type: ignore[arg-type]
    assert "AUTH PLAIN LOGIN" in ext.build_string("mx.test").split("\r\n")
