"""Hostile and broken input for the queue and its stores: every case ends classified, nothing lost.

A store that raises (on every call, or on one), a relay that raises something
unexpected or returns garbage, envelopes with no recipients or a null or invalid
sender, corrupt files in a DiskStorage spool and corrupt hashes in Redis. Each
test asserts what the store holds afterwards, what the relay received and which
bounces were queued. The relay is in-memory; tests wait on gevent events or on a
condition under a guard timeout, never on the clock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import gevent
import gevent.queue
import pytest
from gevent import GreenletExit
from support import envelopes
from support.util import GUARD_SECONDS

from slimta.bounce import Bounce
from slimta.diskstorage import DiskStorage
from slimta.envelope import Envelope
from slimta.queue import Queue, QueueError
from slimta.queue.dict import DictStorage
from slimta.relay import PermanentRelayError, Relay, TransientRelayError
from slimta.smtp.reply import Reply


@pytest.fixture(autouse=True)
def fast_store_retries(monkeypatch) -> None:
    # A failed store call is tried again after STORE_RETRY_SECONDS (60 s in use).
    monkeypatch.setattr("slimta.queue.STORE_RETRY_SECONDS", 0.005)


def tagged(tag: str) -> bytes:
    """The header block of this module's messages, with ``tag`` to tell them apart."""
    return b"From: sender@src.test\r\nX-Test-Id: " + tag.encode() + b"\r\n"


make_envelope = partial(
    envelopes.make_envelope,
    sender="sender@src.test",
    rcpts=["rcpt@dst.test"],
    headers=tagged("t"),
    body=b"body\r\n",
    timestamp=1_700_000_000.0,
)


def until(predicate: Callable[[], bool], what: str) -> None:
    """Let the queue's greenlets run until ``predicate`` holds (guarded)."""
    with gevent.Timeout(GUARD_SECONDS, AssertionError(f"timed out waiting for {what}")):
        while not predicate():
            gevent.sleep(0.001)


Step = Any  # a value to return, an exception to raise, or a callable(envelope)


class ScriptedRelay(Relay):
    """Answers each attempt with the next step; records what it was handed."""

    def __init__(self, *steps: Step) -> None:
        super().__init__()
        self.steps = list(steps)
        self.calls: list[tuple[str | None, list[str], bytes]] = []

    def attempt(self, envelope: Envelope, attempts: int) -> Any:
        header, body = envelope.flatten()
        self.calls.append((envelope.sender, list(envelope.recipients), header + body))
        step = self.steps.pop(0) if self.steps else None
        if callable(step) and not isinstance(step, type):
            step = step(envelope)
        if isinstance(step, BaseException):
            raise step
        return step

    def received(self) -> list[list[str]]:
        return [rcpts for _, rcpts, _ in self.calls]


class BounceSink:
    def __init__(self) -> None:
        self.bounces: list[Envelope] = []

    def enqueue(self, envelope: Envelope) -> list[tuple[Envelope, str]]:
        self.bounces.append(envelope)
        return [(envelope, f"bounce-{len(self.bounces)}")]


class FaultyStore(DictStorage):
    """A DictStorage whose methods raise while their fault count is positive.

    ``faults[name] = n`` makes the next ``n`` calls of ``name`` raise
    ``errors.get(name, OSError)``; ``n = -1`` makes every call raise.
    """

    METHODS = (
        "write",
        "set_timestamp",
        "increment_attempts",
        "set_recipients_delivered",
        "load",
        "get",
        "remove",
    )

    def __init__(self, **faults: int) -> None:
        super().__init__()
        self.faults = dict(faults)
        self.errors: dict[str, BaseException] = {}
        self.raised: list[str] = []
        self.removed: list[str] = []

    def _maybe_fail(self, name: str) -> None:
        left = self.faults.get(name, 0)
        if left:
            if left > 0:
                self.faults[name] = left - 1
            self.raised.append(name)
            raise self.errors.get(name, OSError(f"store {name} failed"))

    def write(self, envelope: Envelope, timestamp: float) -> str:
        self._maybe_fail("write")
        return super().write(envelope, timestamp)

    def set_timestamp(self, id: str, timestamp: float) -> None:
        self._maybe_fail("set_timestamp")
        super().set_timestamp(id, timestamp)

    def increment_attempts(self, id: str) -> int:
        self._maybe_fail("increment_attempts")
        return super().increment_attempts(id)

    def set_recipients_delivered(self, id: str, rcpt_indexes: Any) -> None:
        self._maybe_fail("set_recipients_delivered")
        super().set_recipients_delivered(id, rcpt_indexes)

    def load(self) -> Iterator[tuple[float, str]]:
        self._maybe_fail("load")
        return super().load()

    def get(self, id: str) -> tuple[Envelope, int]:
        self._maybe_fail("get")
        return super().get(id)

    def remove(self, id: str) -> None:
        self._maybe_fail("remove")
        super().remove(id)
        self.removed.append(id)


@pytest.fixture
def bounces() -> BounceSink:
    return BounceSink()


@pytest.fixture
def make_queue(bounces: BounceSink) -> Iterator[Callable[..., Queue]]:
    queues: list[Queue] = []

    def make(store: Any, relay: Relay, **kwargs: Any) -> Queue:
        kwargs.setdefault("bounce_queue", bounces)
        kwargs.setdefault("backoff", lambda env, attempts: 0 if attempts < 5 else None)
        queue = Queue(store, relay, **kwargs)
        queue.start()
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        queue.kill()


def idle(queue: Queue) -> bool:
    return not queue.active_ids and not queue.queued and not queue._attempts


# -- a store that raises -------------------------------------------------------


def test_a_store_that_raises_on_every_call_refuses_with_451_and_keeps_running(
    make_queue, caplog
) -> None:
    store = FaultyStore(**{name: -1 for name in FaultyStore.METHODS})
    relay = ScriptedRelay()
    with caplog.at_level(logging.ERROR, logger="slimta.queue"):
        queue = make_queue(store, relay)
        [(env, result)] = queue.enqueue(make_envelope())
        until(lambda: "load" in store.raised, "the load to be tried")
    assert isinstance(result, QueueError)
    assert result.reply is not None
    assert (result.reply.code, result.reply.enhanced_status_code) == ("451", "4.3.0")
    assert store.env_db == {} and relay.calls == [] and not queue.dead
    # Once the store works again, new messages go through.
    store.faults.clear()
    [(_, id)] = queue.enqueue(make_envelope())
    until(lambda: id in store.removed, "the delivery")
    assert relay.received() == [["rcpt@dst.test"]] and store.env_db == {}


def test_a_durable_store_error_without_a_reply_still_gets_451_4_3_0(make_queue, tmp_path) -> None:
    store = DiskStorage(str(tmp_path / "env"), str(tmp_path / "meta"), str(tmp_path / "tmp"))
    os.rmdir(tmp_path / "tmp")  # every write now fails with an OSError
    relay = ScriptedRelay()
    queue = make_queue(store, relay)
    [(_, result)] = queue.enqueue(make_envelope())
    assert isinstance(result, QueueError) and "disk storage" in str(result)
    assert result.reply is not None and str(result.reply).startswith("451 4.3.0")
    assert store.get_info()["size"] == 0 and relay.calls == []


def test_recording_a_partial_delivery_fails_then_succeeds_nothing_delivered_twice(
    make_queue, bounces
) -> None:
    store = FaultyStore(set_recipients_delivered=2)
    relay = ScriptedRelay(
        {"a@x.test": None, "b@x.test": TransientRelayError("busy", Reply("450", "4.2.0 busy"))},
        None,
    )
    queue = make_queue(store, relay)
    [(_, id)] = queue.enqueue(make_envelope(rcpts=["a@x.test", "b@x.test"]))
    until(lambda: id in store.removed, "the message to be done")
    assert store.raised == ["set_recipients_delivered"] * 2
    # The record was retried until it stuck; only then was b attempted again.
    assert relay.received() == [["a@x.test", "b@x.test"], ["b@x.test"]]
    assert bounces.bounces == [] and store.env_db == {} and idle(queue)


class AppliedThenFailedStore(FaultyStore):
    """set_recipients_delivered() writes, then fails: a timeout after the write landed."""

    def set_recipients_delivered(self, id: str, rcpt_indexes: Any) -> None:
        DictStorage.set_recipients_delivered(self, id, rcpt_indexes)
        self._maybe_fail("set_recipients_delivered")


def test_a_record_that_landed_but_reported_failure_is_not_applied_twice(make_queue) -> None:
    # Indexes are relative to what is left: marking [0] twice would mark b too,
    # and b would be silently dropped.
    store = AppliedThenFailedStore(set_recipients_delivered=1)
    busy = TransientRelayError("busy", Reply("450", "4.2.0 busy"))
    relay = ScriptedRelay({"a@x.test": None, "b@x.test": busy, "c@x.test": busy}, None)
    queue = make_queue(store, relay)
    [(_, id)] = queue.enqueue(make_envelope(rcpts=["a@x.test", "b@x.test", "c@x.test"]))
    until(lambda: id in store.removed, "the message to be done")
    assert store.raised == ["set_recipients_delivered"]
    assert relay.received() == [["a@x.test", "b@x.test", "c@x.test"], ["b@x.test", "c@x.test"]]


class RefusingBounceSink(BounceSink):
    """A bounce queue whose store refuses the first ``refusals`` bounces."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals

    def enqueue(self, envelope: Envelope) -> list[tuple[Envelope, Any]]:
        if self.refusals:
            self.refusals -= 1
            return [(envelope, QueueError("store down", reply=Reply("451", "4.3.0 down")))]
        return super().enqueue(envelope)


def test_a_bounce_that_cannot_be_queued_is_never_lost(make_queue) -> None:
    bounces = RefusingBounceSink(refusals=1)
    store = FaultyStore()
    gone = PermanentRelayError("no", Reply("550", "5.1.1 Unknown"))
    relay = ScriptedRelay({"ok@x.test": None, "gone@x.test": gone}, gone)
    queue = make_queue(store, relay, bounce_queue=bounces)
    [(_, id)] = queue.enqueue(make_envelope(rcpts=["ok@x.test", "gone@x.test"]))
    until(lambda: id in store.removed, "the message to be done")
    # The failed recipient stayed in the store until its bounce was queued.
    assert relay.received() == [["ok@x.test", "gone@x.test"], ["gone@x.test"]]
    [bounce] = bounces.bounces
    assert b"Final-Recipient: rfc822; gone@x.test" in bounce.message
    assert b"ok@x.test" not in bounce.message


@pytest.mark.parametrize("method", ["get", "remove", "increment_attempts", "set_timestamp"])
def test_a_store_call_that_fails_once_is_retried_and_the_message_delivered_once(
    make_queue, bounces, method, caplog
) -> None:
    store = FaultyStore(**{method: 1})
    relay = ScriptedRelay(TransientRelayError("busy", Reply("451", "4.3.2 later")), None)
    # found by load(), read back with get()
    id = store.write(make_envelope(headers=tagged(method)), 0.0)
    with caplog.at_level(logging.ERROR, logger="slimta.queue"):
        queue = make_queue(store, relay)
        until(lambda: id in store.removed, "the message to be done")
    assert store.raised == [method]
    assert f"store {method} failed" in caplog.text
    # First attempt transient, second delivered: one delivery, nothing bounced.
    assert relay.received() == [["rcpt@dst.test"], ["rcpt@dst.test"]]
    assert bounces.bounces == [] and store.env_db == {} and store.meta_db == {}
    until(lambda: idle(queue), "the queue to settle")


def test_a_failed_remove_is_never_attempted_again_meanwhile(make_queue) -> None:
    store = FaultyStore(remove=3)
    relay = ScriptedRelay(None)
    queue = make_queue(store, relay)
    [(_, id)] = queue.enqueue(make_envelope())
    until(lambda: id in store.removed, "the removal")
    assert store.raised == ["remove"] * 3 and len(relay.calls) == 1 and idle(queue)


# -- a relay that raises or returns garbage ----------------------------------


@pytest.mark.parametrize(
    "error",
    [ValueError("relay bug"), GreenletExit(), gevent.Timeout(), KeyError("x")],
    ids=["ValueError", "GreenletExit", "gevent.Timeout", "KeyError"],
)
def test_an_unexpected_relay_exception_is_a_transient_failure(
    make_queue, bounces, error, caplog
) -> None:
    store = FaultyStore()
    relay = ScriptedRelay(error, None)
    with caplog.at_level(logging.ERROR, logger="slimta.queue"):
        queue = make_queue(store, relay)
        [(_, id)] = queue.enqueue(make_envelope())
        until(lambda: id in store.removed, "the retry to deliver it")
    assert relay.received() == [["rcpt@dst.test"], ["rcpt@dst.test"]]
    assert store.meta_db == {} and bounces.bounces == [] and not queue.dead
    assert type(error).__name__ in caplog.text


def test_the_unexpected_exception_reply_is_450_4_0_0_and_ends_in_a_bounce(
    make_queue, bounces
) -> None:
    store = FaultyStore()
    relay = ScriptedRelay(*[ValueError("relay bug")] * 3)
    queue = make_queue(store, relay, backoff=lambda env, attempts: 0 if attempts < 3 else None)
    [(_, id)] = queue.enqueue(make_envelope(rcpts=["a@x.test"]))
    until(lambda: id in store.removed, "the give-up")
    assert len(relay.calls) == 3
    [bounce] = bounces.bounces
    assert isinstance(bounce, Bounce) and bounce.recipients == ["sender@src.test"]
    assert b"Status: 4.0.0" in bounce.message
    assert b"Unhandled delivery error: relay bug (Too many retries)" in bounce.message


@pytest.mark.parametrize(
    "garbage",
    [
        [None],  # too short: b has no result
        {"a@x.test": None},  # a mapping missing b
        {"a@x.test": None, "b@x.test": 42},  # a value that means nothing
        [None, "250 OK"],
        [None, object(), None, None],  # too long, with an unknown object
    ],
    ids=["short-list", "dict-missing", "dict-int", "list-str", "long-list-object"],
)
def test_garbage_results_retry_what_they_do_not_clearly_deliver(
    make_queue, bounces, garbage
) -> None:
    store = FaultyStore()
    relay = ScriptedRelay(garbage, None)
    queue = make_queue(store, relay)
    [(_, id)] = queue.enqueue(make_envelope(rcpts=["a@x.test", "b@x.test"]))
    until(lambda: id in store.removed, "the retry")
    # a is delivered once; b (with no clear result) is retried, never dropped.
    assert relay.received() == [["a@x.test", "b@x.test"], ["b@x.test"]]
    assert bounces.bounces == [] and store.env_db == {}


def test_a_long_result_list_delivers_each_recipient_once(make_queue) -> None:
    store = FaultyStore()
    relay = ScriptedRelay([None, None, None, None])
    queue = make_queue(store, relay)
    [(_, id)] = queue.enqueue(make_envelope(rcpts=["a@x.test"]))
    until(lambda: id in store.removed, "the delivery")
    assert relay.received() == [["a@x.test"]]


def test_a_mapping_result_that_raises_is_a_transient_failure(make_queue) -> None:
    class Hostile(dict):
        def get(self, key: Any, default: Any = None) -> Any:
            raise RuntimeError("hostile mapping")

    store = FaultyStore()
    relay = ScriptedRelay(Hostile(), None)
    queue = make_queue(store, relay)
    [(_, id)] = queue.enqueue(make_envelope(rcpts=["a@x.test"]))
    until(lambda: id in store.removed, "the retry")
    assert relay.received() == [["a@x.test"], ["a@x.test"]]


def test_error_replies_returned_as_results_are_never_counted_as_delivered(
    make_queue, bounces
) -> None:
    store = FaultyStore()
    relay = ScriptedRelay(
        {
            "a@x.test": Reply("250", "2.0.0 Ok"),
            "b@x.test": Reply("550", "5.1.1 No such user"),
            "c@x.test": Reply("451", "4.3.0 Later"),
        },
        None,
    )
    queue = make_queue(store, relay)
    [(_, id)] = queue.enqueue(make_envelope(rcpts=["a@x.test", "b@x.test", "c@x.test"]))
    until(lambda: id in store.removed, "the message to be done")
    assert relay.received() == [["a@x.test", "b@x.test", "c@x.test"], ["c@x.test"]]
    [bounce] = bounces.bounces
    assert b"Final-Recipient: rfc822; b@x.test" in bounce.message
    assert b"Status: 5.1.1" in bounce.message and b"c@x.test" not in bounce.message


# -- envelopes ---------------------------------------------------------------


def test_an_envelope_with_no_recipients_is_refused_554_5_5_1(make_queue) -> None:
    store = FaultyStore()
    relay = ScriptedRelay()
    queue = make_queue(store, relay)
    env = make_envelope()
    env.recipients = []
    [(_, result)] = queue.enqueue(env)
    assert isinstance(result, QueueError) and result.reply is not None
    assert (result.reply.code, result.reply.enhanced_status_code) == ("554", "5.5.1")
    assert store.env_db == {} and relay.calls == []


@pytest.mark.parametrize("sender", ["", None, "<>"])
def test_a_failing_message_with_a_null_sender_is_never_bounced(make_queue, bounces, sender) -> None:
    store = FaultyStore()
    relay = ScriptedRelay(
        {
            "perm@x.test": PermanentRelayError("no", Reply("550", "5.1.1 Unknown")),
            "temp@x.test": TransientRelayError("later", Reply("450", "4.2.0 Later")),
        },
        TransientRelayError("later", Reply("450", "4.2.0 Later")),
    )
    queue = make_queue(store, relay, backoff=lambda env, attempts: 0 if attempts < 2 else None)
    [(_, id)] = queue.enqueue(make_envelope(rcpts=["perm@x.test", "temp@x.test"], sender=sender))
    until(lambda: id in store.removed, "the give-up")
    # Permanent failure, then too many retries: both final, neither bounced.
    assert relay.received() == [["perm@x.test", "temp@x.test"], ["temp@x.test"]]
    assert bounces.bounces == [] and store.env_db == {}


@pytest.mark.parametrize(
    "sender",
    ["not an address", "a@b.test\r\nBcc: victim@evil.test", "<unterminated@x.test", "@x.test"],
    ids=["words", "crlf-injection", "bracket", "no-local-part"],
)
def test_no_bounce_goes_to_a_sender_that_is_not_an_address(
    make_queue, bounces, sender, caplog
) -> None:
    store = FaultyStore()
    relay = ScriptedRelay(PermanentRelayError("no", Reply("550", "5.1.1 Unknown")))
    with caplog.at_level(logging.ERROR, logger="slimta.queue"):
        queue = make_queue(store, relay)
        [(_, id)] = queue.enqueue(make_envelope(rcpts=["gone@x.test"], sender=sender))
        until(lambda: id in store.removed, "the failure to be final")
    assert bounces.bounces == [] and store.env_db == {} and len(relay.calls) == 1
    assert "not a valid address" in caplog.text and "gone@x.test" in caplog.text


def test_a_bracketed_sender_is_bounced_to_the_bare_address(make_queue, bounces) -> None:
    store = FaultyStore()
    relay = ScriptedRelay(PermanentRelayError("no", Reply("550", "5.1.1 Unknown")))
    queue = make_queue(store, relay)
    [(_, id)] = queue.enqueue(make_envelope(rcpts=["gone@x.test"], sender="<someone@src.test>"))
    until(lambda: id in store.removed, "the failure")
    [bounce] = bounces.bounces
    assert bounce.sender == "" and bounce.recipients == ["someone@src.test"]
    assert b"To: <someone@src.test>" in b"".join(bounce.flatten())


# -- a message seen by load()/wait() while enqueue() is still storing it -------


class EchoingStore(DictStorage):
    """Like RedisStorage: each write is fed back through wait() before write() returns."""

    def __init__(self) -> None:
        super().__init__()
        self.feed: gevent.queue.Queue[tuple[float, str]] = gevent.queue.Queue()

    def write(self, envelope: Envelope, timestamp: float) -> str:
        id = super().write(envelope, timestamp)
        self.feed.put((timestamp, id))
        gevent.sleep(0.01)  # the reply is slower than the feed
        return id

    def wait(self) -> Iterator[tuple[float, str]]:
        yield self.feed.get()


def test_a_message_the_store_feeds_back_during_enqueue_is_attempted_once(make_queue) -> None:
    store = EchoingStore()
    relay = ScriptedRelay(*[None] * 5)
    queue = make_queue(store, relay)
    ids = [queue.enqueue(make_envelope(headers=tagged(str(n))))[0][1] for n in range(5)]
    until(lambda: store.env_db == {} and idle(queue), "the deliveries")
    assert len(relay.calls) == 5, [c[2].split(b"\r\n")[1] for c in relay.calls]
    assert all(isinstance(id, str) for id in ids)


# -- corrupt spool files and Redis hashes ------------------------------------


@pytest.fixture
def disk(tmp_path) -> DiskStorage:
    return DiskStorage(str(tmp_path / "env"), str(tmp_path / "meta"), str(tmp_path / "tmp"))


@pytest.mark.parametrize(
    "damage",
    [
        ("env", b"garbage, not an envelope"),
        ("env", b'SLIMTA-ENVELOPE 1\r\n{"recipients": ["x"], "client": 5}\r\n'),
        ("env", b'SLIMTA-ENVELOPE 1\r\n{"recipients": ["x"], "timestamp": "soon"}\r\n'),
        ("env", b"SLIMTA-ENVELOPE 9\r\n{}\r\n"),
        ("env", b""),
        ("meta", b"{not json"),
        ("meta", b'{"timestamp": 0, "attempts": "many"}'),
        ("meta", b'{"timestamp": 0, "delivered": "x", "recipients": 1}'),
        ("meta", b"[1, 2, 3]"),
    ],
    ids=[
        "env-garbage",
        "env-bad-client",
        "env-bad-timestamp",
        "env-future-version",
        "env-empty",
        "meta-not-json",
        "meta-bad-attempts",
        "meta-bad-delivered",
        "meta-list",
    ],
)
def test_a_corrupt_spool_file_is_moved_aside_and_the_rest_is_delivered(
    make_queue, disk, tmp_path, damage, caplog
) -> None:
    good = disk.write(make_envelope(rcpts=["good@x.test"], headers=tagged("good")), 0.0)
    bad = disk.write(make_envelope(rcpts=["bad@x.test"], headers=tagged("bad")), 0.0)
    kind, data = damage
    path = tmp_path / kind / f"{bad}.{kind}"
    path.write_bytes(data)
    relay = ScriptedRelay(None)
    with caplog.at_level(logging.ERROR):
        queue = make_queue(disk, relay)
        until(lambda: disk.get_info()["size"] == 0 and idle(queue), "the queue to settle")
    # The good message is delivered; the corrupt one never reaches the relay,
    # is no longer listed, and its files are kept for an operator.
    assert relay.received() == [["good@x.test"]]
    assert not (tmp_path / "meta" / f"{good}.meta").exists()
    assert (tmp_path / "meta" / f"{bad}.meta.corrupt").exists()
    assert (tmp_path / "env" / f"{bad}.env").exists()
    assert list(disk.load()) == [] and "moved aside" in caplog.text
    with pytest.raises(KeyError):
        disk.get(bad)


@pytest.fixture
def redis_store(redis_server, redis_prefix) -> Iterator[Any]:
    pytest.importorskip("redis")
    from slimta.redisstorage import RedisStorage

    store = RedisStorage(
        redis_server.host, redis_server.port, prefix=redis_prefix, socket_timeout=5.0
    )
    yield store
    keys = store.redis.keys(redis_prefix + "*")
    if keys:
        store.redis.delete(*keys)
    store.redis.close()
    store.redis.connection_pool.disconnect()


@pytest.mark.parametrize(
    "field,value",
    [
        ("envelope", b"garbage, not an envelope"),
        ("envelope", b'SLIMTA-ENVELOPE 1\r\n{"recipients": 7}\r\n'),
        ("attempts", b"many"),
        ("delivered", b"0,x"),
    ],
    ids=["envelope-garbage", "envelope-bad-meta", "attempts", "delivered"],
)
def test_a_corrupt_redis_hash_is_moved_aside_and_the_rest_is_delivered(
    make_queue, redis_store, field, value, caplog
) -> None:
    good = redis_store.write(make_envelope(rcpts=["good@x.test"], headers=tagged("good")), 0.0)
    bad = redis_store.write(make_envelope(rcpts=["bad@x.test"], headers=tagged("bad")), 0.0)
    redis_store.redis.hset(redis_store.prefix + bad, field, value)
    relay = ScriptedRelay(None)
    with caplog.at_level(logging.ERROR):
        queue = make_queue(redis_store, relay)
        until(lambda: redis_store.get_info()["size"] == 0 and idle(queue), "the queue to settle")
    assert relay.received() == [["good@x.test"]]
    r = redis_store.redis
    assert not r.exists(redis_store.prefix + good)
    # Kept, whole, under the corrupt: name, and out of the queue's listing.
    assert r.hget(redis_store.prefix + "corrupt:" + bad, field) == value
    assert not r.exists(redis_store.prefix + bad) and not r.sismember(redis_store.ids_key, bad)
    assert "moved to" in caplog.text
    with pytest.raises(KeyError):
        redis_store.get(bad)


def test_a_redis_message_with_a_bad_timestamp_is_still_delivered(make_queue, redis_store) -> None:
    id = redis_store.write(make_envelope(rcpts=["a@x.test"]), 0.0)
    redis_store.redis.hset(redis_store.prefix + id, "timestamp", b"soon")
    relay = ScriptedRelay(None)
    queue = make_queue(redis_store, relay)
    until(lambda: redis_store.get_info()["size"] == 0 and idle(queue), "the delivery")
    assert relay.received() == [["a@x.test"]]


def test_many_messages_through_redis_each_attempted_once(make_queue, redis_store) -> None:
    # RedisStorage feeds every write back through wait(): no double attempts.
    relay = ScriptedRelay()
    queue = make_queue(redis_store, relay)
    results = [
        queue.enqueue(make_envelope(rcpts=[f"r{n}@x.test"], headers=tagged(str(n))))[0][1]
        for n in range(50)
    ]
    assert all(isinstance(id, str) for id in results)
    until(lambda: redis_store.get_info()["size"] == 0 and idle(queue), "the deliveries")
    assert sorted(r[0] for r in relay.received()) == sorted(f"r{n}@x.test" for n in range(50))


def test_crash_leftovers_in_the_spool_are_cleaned_once_old(disk, tmp_path) -> None:
    kept = disk.write(make_envelope(rcpts=["a@x.test"]), 0.0)
    quarantined = disk.write(make_envelope(rcpts=["b@x.test"]), 0.0)
    disk.increment_attempts(quarantined)  # so that it has a .meta file
    (tmp_path / "meta" / f"{quarantined}.meta").rename(
        tmp_path / "meta" / f"{quarantined}.meta.corrupt"
    )
    old = 1_000_000_000
    leftovers = {
        # metadata whose envelope is gone (a crash between remove()'s unlinks)
        "orphan-meta": tmp_path / "meta" / "0123abcd.meta",
        "half-written": tmp_path / "tmp" / "4567ef.tmp",
    }
    fresh = {
        "fresh-meta": tmp_path / "meta" / "89abcdef.meta",  # perhaps a removal in progress
        "fresh-tmp": tmp_path / "tmp" / "0246.tmp",  # perhaps a write in progress
    }
    for path in [*leftovers.values(), *fresh.values()]:
        path.write_bytes(b"partial")
    for path in [*leftovers.values(), tmp_path / "env" / f"{kept}.env"]:
        os.utime(path, (old, old))
    os.utime(tmp_path / "env" / f"{quarantined}.env", (old, old))
    assert [id for _, id in disk.load()] == [kept]
    assert not any(path.exists() for path in leftovers.values())
    assert all(path.exists() for path in fresh.values())
    assert (tmp_path / "env" / f"{kept}.env").exists()  # old, but its message is queued
    assert (tmp_path / "env" / f"{quarantined}.env").exists()  # kept for a person
    assert disk.get(kept)[0].recipients == ["a@x.test"]
