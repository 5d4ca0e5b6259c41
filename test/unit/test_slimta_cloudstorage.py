"""slimta.cloudstorage.CloudStorage over in-memory object store and message queue fakes,
alone and under a real Queue."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from functools import partial
from typing import Any

import gevent
import pytest
from gevent.event import Event
from support import envelopes
from support.smtp_edge import cooperative_wait
from support.util import GUARD_SECONDS

from slimta.cloudstorage import CloudStorage, CloudStorageError
from slimta.envelope import Envelope
from slimta.queue import Queue, QueueError
from slimta.relay import PermanentRelayError
from slimta.smtp.reply import Reply


class MemoryObjectStore:
    """The object store interface, in a dict; envelopes are copied in and out."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[Envelope, dict[str, Any]]] = {}
        self._ids = itertools.count(1)

    def write_message(self, envelope: Envelope, timestamp: float) -> str:
        id = f"obj-{next(self._ids)}"
        self.objects[id] = (copy.deepcopy(envelope), {"timestamp": timestamp, "attempts": 0})
        return id

    def set_message_meta(self, id: str, timestamp: float | None = None,
                         attempts: int | None = None,
                         delivered_indexes: list[int] | None = None) -> None:
        meta = self.objects[id][1]
        for key, value in (("timestamp", timestamp), ("attempts", attempts),
                           ("delivered_indexes", delivered_indexes)):
            if value is not None:
                meta[key] = value

    def get_message_meta(self, id: str) -> dict[str, Any]:
        return dict(self.objects[id][1])

    def get_message(self, id: str) -> tuple[Envelope, dict[str, Any]]:
        envelope, meta = self.objects[id]
        return copy.deepcopy(envelope), dict(meta)

    def delete_message(self, id: str) -> None:
        del self.objects[id]

    def list_messages(self) -> list[tuple[float, str]]:
        return [(meta["timestamp"], id) for id, (_, meta) in self.objects.items()]


class MemoryMessageQueue:
    def __init__(self, fail: bool = False) -> None:
        self.messages: list[tuple[float, str, int]] = []
        self.deleted: list[int] = []
        self.sleeps = 0
        self.fail = fail
        self._handles = itertools.count(100)
        self.wake = Event()

    def queue_message(self, storage_id: str, timestamp: float) -> None:
        if self.fail:
            raise OSError("queue service down")
        self.messages.append((timestamp, storage_id, next(self._handles)))

    def poll(self) -> list[tuple[float, str, int]]:
        taken, self.messages = self.messages, []
        return taken

    def delete(self, handle: int) -> None:
        self.deleted.append(handle)

    def sleep(self) -> None:
        self.sleeps += 1
        self.wake.wait(0.05)
        self.wake.clear()


make_envelope = partial(envelopes.make_envelope, rcpts=(), data=b"Subject: cloud\r\n\r\nbody\r\n")


def test_write_get_meta_and_remove() -> None:
    store, mq = MemoryObjectStore(), MemoryMessageQueue()
    storage = CloudStorage(store, mq)
    id = storage.write(make_envelope(rcpts=("a@x.test",)), 1000.0)
    assert mq.messages == [(1000.0, id, 100)]
    assert list(storage.load()) == [(1000.0, id)]
    storage.set_timestamp(id, 2000.0)
    assert storage.increment_attempts(id) == 1
    assert storage.increment_attempts(id) == 2
    env, attempts = storage.get(id)
    assert (env.recipients, attempts) == (["a@x.test"], 2)
    assert b"".join(env.flatten()) == b"Subject: cloud\r\n\r\nbody\r\n"
    assert list(storage.load()) == [(2000.0, id)]
    assert storage.get_info() == {"size": 1}
    storage.remove(id)
    assert list(storage.load()) == []
    with pytest.raises(KeyError):
        storage.get(id)


def test_partial_deliveries_mark_the_right_recipients() -> None:
    storage = CloudStorage(MemoryObjectStore())
    id = storage.write(make_envelope(rcpts=("a@x", "b@x", "c@x", "d@x", "e@x")), 0.0)
    storage.set_recipients_delivered(id, [1, 3])           # b, d
    assert storage.get(id)[0].recipients == ["a@x", "c@x", "e@x"]
    storage.set_recipients_delivered(id, [1])              # c, in the reduced list
    assert storage.get(id)[0].recipients == ["a@x", "e@x"]
    storage.set_recipients_delivered(id, [0, 7])           # a; 7 is out of range
    assert storage.get(id)[0].recipients == ["e@x"]


def test_a_failed_announcement_still_stores() -> None:
    store = MemoryObjectStore()
    storage = CloudStorage(store, MemoryMessageQueue(fail=True))
    id = storage.write(make_envelope(rcpts=("a@x",)), 5.0)
    assert id in store.objects


def test_wait_yields_then_deletes_each_announcement() -> None:
    mq = MemoryMessageQueue()
    mq.messages = [(1.0, "obj-1", 7), (2.0, "obj-2", 8)]
    storage = CloudStorage(MemoryObjectStore(), mq)
    feed = storage.wait()
    assert next(feed) == (1.0, "obj-1")
    assert mq.deleted == []
    assert next(feed) == (2.0, "obj-2")
    assert mq.deleted == [7]
    assert list(feed) == []
    assert (mq.deleted, mq.sleeps) == ([7, 8], 1)


def test_wait_without_a_queue() -> None:
    with pytest.raises(NotImplementedError):
        list(CloudStorage(MemoryObjectStore()).wait())


def test_error_class() -> None:
    assert issubclass(CloudStorageError, QueueError)


class PartialRelay:
    """Delivers b@x, fails c@x for good, defers a@x once."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def _attempt(self, env: Envelope, attempts: int) -> Any:
        self.calls.append(list(env.recipients))
        result: dict[str, Any] = {}
        for rcpt in env.recipients:
            if rcpt == "c@x":
                result[rcpt] = PermanentRelayError("no", Reply("550", "5.1.1 No such user"))
            elif rcpt == "a@x" and len(self.calls) == 1:
                from slimta.relay import TransientRelayError
                result[rcpt] = TransientRelayError("later", Reply("450", "4.2.0 Later"))
            else:
                result[rcpt] = Reply("250", "2.0.0 Ok")
        return result

    def kill(self) -> None:
        pass


@pytest.fixture
def queue_over_cloud() -> Iterator[tuple[Queue, MemoryObjectStore, PartialRelay]]:
    store, relay = MemoryObjectStore(), PartialRelay()
    queue = Queue(CloudStorage(store, MemoryMessageQueue()), relay,
                  backoff=lambda env, attempts: 0.0 if attempts < 3 else None,
                  bounce_factory=lambda env, reply: None)
    queue.start()
    yield queue, store, relay
    queue.kill(block=True, timeout=GUARD_SECONDS)


def test_queue_over_cloud_storage(queue_over_cloud: Any) -> None:
    queue, store, relay = queue_over_cloud
    [(_, id)] = queue.enqueue(make_envelope(rcpts=("a@x", "b@x", "c@x")))
    assert isinstance(id, str)
    with gevent.Timeout(GUARD_SECONDS):
        cooperative_wait(lambda: id not in store.objects, "the message to be done")
    assert relay.calls == [["a@x", "b@x", "c@x"], ["a@x"]]
