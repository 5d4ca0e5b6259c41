"""slimta.policy.forward.Forward: recipients rewritten by the first matching rule."""

from __future__ import annotations

import re

from slimta.envelope import Envelope
from slimta.policy.forward import Forward


def test_first_matching_rule_wins_in_order() -> None:
    fwd = Forward()
    fwd.add_mapping(r"^postmaster@.*$", "admin@relay.test")
    fwd.add_mapping(re.compile(r"@old\.test$"), "@new.test")
    fwd.add_mapping(r"@.*$", "@never.test")
    env = Envelope("s@x.test", ["postmaster@old.test", "bob@old.test", "eve@other.test"])
    fwd.apply(env)
    assert env.recipients == ["admin@relay.test", "bob@new.test", "eve@never.test"]
    assert [pattern.pattern for pattern, _, _ in fwd.mapping] == [
        r"^postmaster@.*$", r"@old\.test$", r"@.*$"]  # fmt: skip


def test_count_and_callable_replacement() -> None:
    fwd = Forward()
    fwd.add_mapping(r"a", "b", count=1)
    env = Envelope("s@x.test", ["aaa@x.test"])
    fwd.apply(env)
    assert env.recipients == ["baa@x.test"]
    upper = Forward()
    upper.add_mapping(r"^(\w+)@", lambda m: m.group(1).upper() + "@")
    env = Envelope("s@x.test", ["joe@x.test"])
    upper.apply(env)
    assert env.recipients == ["JOE@x.test"]


def test_a_rule_that_would_empty_the_address_is_skipped() -> None:
    fwd = Forward()
    fwd.add_mapping(r"^.*$", "")
    fwd.add_mapping(r"x\.test", "y.test")
    env = Envelope("s@x.test", ["a@x.test"])
    fwd.apply(env)
    assert env.recipients == ["a@y.test"]


def test_no_rules_no_change() -> None:
    env = Envelope("s@x.test", ["a@x.test"])
    Forward().apply(env)
    assert env.recipients == ["a@x.test"]
