"""slimta.policy.split: one envelope per recipient, or per recipient domain."""

from __future__ import annotations

from functools import partial

from support import envelopes

from slimta.policy.split import RecipientDomainSplit, RecipientSplit

RAW = b"Subject: split\r\nX-Foo:bar\r\n\r\nbody\r\n"


make_envelope = partial(
    envelopes.make_envelope,
    sender="s@src.test",
    rcpts=(),
    data=RAW,
    timestamp=12.0,
    client={"name": "client.test"},
    receiver="mx.test",
)


def test_recipient_split() -> None:
    env = make_envelope(rcpts=("a@x.test", "b@y.test", "c@x.test"))
    parts = RecipientSplit().apply(env)
    assert parts is not None
    assert [p.recipients for p in parts] == [["a@x.test"], ["b@y.test"], ["c@x.test"]]
    for part in parts:
        assert part is not env and part.headers is not env.headers
        assert b"".join(part.flatten()) == RAW
        assert (part.sender, part.client, part.receiver, part.timestamp) == (
            "s@src.test", {"name": "client.test"}, "mx.test", 12.0)  # fmt: skip
    parts[0].prepend_header("X-Only", "first")
    assert b"".join(env.flatten()) == RAW
    assert RecipientSplit().apply(make_envelope(rcpts=("a@x.test",))) is None
    assert RecipientSplit().apply(make_envelope()) is None


def test_recipient_domain_split_groups_by_domain_without_case() -> None:
    rcpts = ("a@X.test", "b@y.test", "c@x.TEST", "nodomain", "trailing@", "d@y.test")
    env = make_envelope(rcpts=rcpts)
    parts = RecipientDomainSplit().apply(env)
    assert parts is not None
    assert [p.recipients for p in parts] == [
        ["a@X.test", "c@x.TEST"],
        ["b@y.test", "d@y.test"],
        ["nodomain"],
        ["trailing@"],
    ]
    assert all(b"".join(p.flatten()) == RAW for p in parts)


def test_recipient_domain_split_leaves_single_domain_alone() -> None:
    assert RecipientDomainSplit().apply(make_envelope(rcpts=("a@x.test", "b@X.TEST"))) is None
    assert RecipientDomainSplit().apply(make_envelope(rcpts=("nodomain",))) is None
    assert RecipientDomainSplit().apply(make_envelope()) is None
