"""apply_queue_policies: the one place Queue and CeleryQueue run their queue policies."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from support.envelopes import make_envelope

from slimta.envelope import Envelope
from slimta.policy import QueuePolicy, apply_queue_policies
from slimta.policy.split import RecipientSplit


class Tag(QueuePolicy):
    """Records each envelope it sees and tags it; keeps it (returns None)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[list[str]] = []

    def apply(self, envelope: Envelope) -> None:
        self.seen.append(list(envelope.recipients))
        envelope.client.setdefault("tags", []).append(self.name)


class Empty(QueuePolicy):
    def apply(self, envelope: Envelope) -> Iterable[Envelope]:
        return []


class Broken(QueuePolicy):
    def apply(self, envelope: Envelope) -> None:
        raise RuntimeError("policy bug")


def test_no_policy_keeps_the_envelope() -> None:
    env = make_envelope(rcpts=["a@x.test"])
    assert apply_queue_policies([], env) == [env]


def test_each_policy_sees_every_envelope_the_previous_ones_made() -> None:
    env = make_envelope(rcpts=["a@x.test", "b@x.test"])
    before, after = Tag("before"), Tag("after")
    out = apply_queue_policies([before, RecipientSplit(), Empty(), after], env)
    assert [e.recipients for e in out] == [["a@x.test"], ["b@x.test"]]
    assert before.seen == [["a@x.test", "b@x.test"]]
    assert after.seen == [["a@x.test"], ["b@x.test"]]  # once per split envelope, in order
    assert all(e.client["tags"] == ["before", "after"] for e in out)
    assert out[0] is not env and out[1] is not env


def test_a_failing_policy_raises_to_the_caller() -> None:
    with pytest.raises(RuntimeError, match="policy bug"):
        apply_queue_policies([Tag("t"), Broken()], make_envelope())
