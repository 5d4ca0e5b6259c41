"""The bounce helpers shared by Queue and CeleryQueue (slimta.queue.outcome)."""

from __future__ import annotations

from slimta.queue.outcome import group_by_reply, group_indexes, too_many_retries
from slimta.smtp.reply import Reply


def test_group_indexes_groups_equal_replies_in_first_seen_order() -> None:
    full = Reply("550", "5.2.2 Mailbox full")
    unknown = Reply("550", "5.1.1 No such user")
    groups = group_indexes([(3, full), (0, unknown), (5, full), (1, unknown), (2, full)])
    assert groups == [(full, [3, 5, 2]), (unknown, [0, 1])]
    # The same grouping as the recipient-name form.
    named = group_by_reply([(str(i), r) for i, r in [(3, full), (0, unknown), (5, full)]])
    assert [(r, [int(x) for x in ids]) for r, ids in named] == group_indexes(
        [(3, full), (0, unknown), (5, full)]
    )


def test_too_many_retries_keeps_code_command_and_address() -> None:
    last = Reply("451", "4.3.0 Try later", b"RCPT")
    last.address = ("mx.example.test", 25)
    bounced = too_many_retries(last)
    assert (bounced.code, bounced.message) == ("451", "4.3.0 Try later (Too many retries)")
    assert bounced.command == last.command and bounced.address == ("mx.example.test", 25)
    assert too_many_retries(Reply(command=b"DATA")).code == "450"


def test_bounce_permanent_retries_the_groups_whose_bounce_was_not_queued() -> None:
    from slimta.envelope import Envelope
    from slimta.queue.outcome import Outcome, bounce_permanent

    full = Reply("550", "5.2.2 Mailbox full")
    unknown = Reply("550", "5.1.1 No such user")
    later = Reply("451", "4.3.0 Try later")
    envelope = Envelope("s@example.test", ["a@x.test", "b@x.test", "c@x.test", "d@x.test"])
    outcome = Outcome(permanent=[(0, full), (2, unknown), (3, full)], transient=[(1, later)])
    queued: list[tuple[list[str], Reply]] = []

    def bounce(copy: Envelope, reply: Reply) -> bool:
        queued.append((copy.recipients, reply))
        return reply is full  # the "unknown" bounce cannot be queued

    bounced, transient = bounce_permanent(outcome, envelope.recipients, envelope, bounce)
    assert queued == [(["a@x.test", "d@x.test"], full), (["c@x.test"], unknown)]
    assert bounced == [0, 3]
    assert transient == [(1, later), (2, unknown)]
