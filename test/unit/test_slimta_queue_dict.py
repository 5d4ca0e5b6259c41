"""slimta.queue.dict.DictStorage over dicts and over shelve files."""

from __future__ import annotations

import logging
import shelve
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import gevent
import pytest
from support import envelopes
from support.util import GUARD_SECONDS

from slimta.envelope import Envelope
from slimta.queue import Queue, QueueStorage
from slimta.queue.dict import DictStorage
from slimta.relay import Relay, TransientRelayError

RAW = b"From: a@x.test\r\nSubject:  two  spaces\r\nX-Folded: one\r\n\ttwo\r\n\r\nbody\r\n"


make_envelope = partial(
    envelopes.make_envelope,
    sender="a@x.test",
    rcpts=["b@y.test"],
    data=RAW,
    timestamp=1_700_000_000.0,
)


def test_dict_round_trip_and_metadata(caplog: pytest.LogCaptureFixture) -> None:
    store = DictStorage()
    assert isinstance(store, QueueStorage)
    env = make_envelope(rcpts=["b@y.test", "c@y.test", "d@y.test"])
    with caplog.at_level(logging.DEBUG, logger="slimta.queue.dict"):
        id = store.write(env, 100.0)
        assert store.get(id) == (env, 0)
        assert list(store.load()) == [(100.0, id)]
        assert store.increment_attempts(id) == 1
        assert store.increment_attempts(id) == 2
        store.set_timestamp(id, 200.0)
        assert store.meta_db[id] == {"timestamp": 200.0, "attempts": 2}
        store.set_recipients_delivered(id, [0, 2])
        got, attempts = store.get(id)
        assert got.recipients == ["c@y.test"] and attempts == 2
        assert store.get_info() == {"size": 1, "meta_size": 1}
        store.remove(id)
        store.remove(id)  # a second remove is harmless
    assert store.get_info() == {"size": 0, "meta_size": 0}
    with pytest.raises(KeyError):
        store.get(id)
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0].startswith(f"queue:{id}:write ")
    assert f"queue:{id}:meta attempts=1" in lines
    assert f"queue:{id}:meta delivered_indexes=[0, 2]" in lines
    assert lines[-1] == f"queue:{id}:remove"


def test_given_dicts_are_used_and_ids_are_unique() -> None:
    env_db: dict[str, Envelope] = {}
    meta_db: dict[str, dict[str, float]] = {}
    store = DictStorage(env_db, meta_db)
    ids = {store.write(make_envelope(), 0.0) for _ in range(50)}
    assert len(ids) == 50 and set(env_db) == ids and set(meta_db) == ids


def test_wait_is_not_implemented() -> None:
    with pytest.raises(NotImplementedError):
        DictStorage().wait()


@pytest.fixture
def shelves(tmp_path: Path) -> Iterator[tuple[str, str]]:
    yield str(tmp_path / "env"), str(tmp_path / "meta")


def test_shelve_keeps_bytes_and_delivered_recipients_across_reopen(
    shelves: tuple[str, str],
) -> None:
    env_path, meta_path = shelves
    with shelve.open(env_path) as env_db, shelve.open(meta_path) as meta_db:
        store = DictStorage(env_db, meta_db)
        id = store.write(make_envelope(rcpts=["b@y.test", "c@y.test", "d@y.test"]), 5.0)
        store.set_recipients_delivered(id, [1])
        store.increment_attempts(id)
    with shelve.open(env_path) as env_db, shelve.open(meta_path) as meta_db:
        store = DictStorage(env_db, meta_db)
        assert list(store.load()) == [(5.0, id)]
        env, attempts = store.get(id)
        assert env.recipients == ["b@y.test", "d@y.test"] and attempts == 1
        assert b"".join(env.flatten()) == RAW
        # Indexes refer to the envelope as get() returned it.
        store.set_recipients_delivered(id, [1])
    with shelve.open(env_path) as env_db, shelve.open(meta_path) as meta_db:
        assert DictStorage(env_db, meta_db).get(id)[0].recipients == ["b@y.test"]


class PartialThenCrash(Relay):
    """Delivers the first recipient, defers the second, then "crashes" the queue."""

    def attempt(self, envelope: Envelope, attempts: int) -> dict[str, object]:
        return {"b@y.test": None, "c@y.test": TransientRelayError("later")}


class Recorder(Relay):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[str]] = []

    def attempt(self, envelope: Envelope, attempts: int) -> None:
        self.seen.append(list(envelope.recipients))


def test_shelve_partial_delivery_is_never_delivered_again_after_restart(
    shelves: tuple[str, str],
) -> None:
    env_path, meta_path = shelves
    with shelve.open(env_path) as env_db, shelve.open(meta_path) as meta_db:
        queue = Queue(DictStorage(env_db, meta_db), PartialThenCrash(), backoff=lambda e, a: 3600)
        queue.enqueue(make_envelope(rcpts=["b@y.test", "c@y.test"]))
        assert queue._attempts.join(timeout=GUARD_SECONDS)
        queue.kill()
    recorder = Recorder()
    with shelve.open(env_path) as env_db, shelve.open(meta_path) as meta_db:
        queue = Queue(DictStorage(env_db, meta_db), recorder)
        queue.start()
        try:
            queue._load_all()
            queue.flush()
            with gevent.Timeout(GUARD_SECONDS):
                while not recorder.seen:
                    gevent.idle()
            assert queue._attempts.join(timeout=GUARD_SECONDS)
        finally:
            queue.kill()
        assert recorder.seen == [["c@y.test"]]
        assert len(env_db) == 0 and len(meta_db) == 0
